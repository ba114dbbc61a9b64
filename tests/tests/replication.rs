//! Cross-cluster replication end to end, with real binaries: cluster A's build-index copies tags
//! of repositories matching its rule to cluster B's proxy, so they become pullable through B's
//! agent; a changed tag follows, and so do the tagged manifest's referrers; other repositories
//! stay home; a job survives SIGKILL of A's build-index while B is unreachable; and an invalid
//! rule stops the binary naming the field.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;
use shoal_client::{Image, RegistryClient};
use shoal_tests::images::{generate, image_spec};
use shoal_tests::ports::free_loopback_addr;
use shoal_tests::swarm::{ensure_same_image, pull_through_agent, push, wait_until};
use shoal_tests::v2::Registry;
use shoal_tests::{Cluster, ClusterOptions, Component, binaries};

const MIB: u64 = 1 << 20;
/// Generous for debug builds on a loaded 2-core machine; a replication normally takes well under
/// a second, plus B's agent caching the old tag for up to its `tag_cache_ttl` (5 s).
const DEADLINE: Duration = Duration::from_secs(90);
/// A debug binary rejects its config in well under a second; leave room for load.
const START_DEADLINE: Duration = Duration::from_secs(30);

async fn image(dir: &Path, seed: u64, tag: &str) -> Result<Image> {
    generate(dir, image_spec(vec![MIB + 7, 64 * 1024], seed, tag)).await
}

/// Waits until B's agent serves `repo:tag` as `image`, then checks every byte of it.
async fn wait_for_image_in(
    b: &Cluster,
    image: &Image,
    repo: &str,
    tag: &str,
    work: &Path,
) -> Result<()> {
    let agent = RegistryClient::new(&b.agent_url(0))?;
    wait_until(
        b,
        DEADLINE,
        &format!("B's agent serves {repo}:{tag} as {}", image.manifest_digest),
        async || {
            // Absent (or not yet the new digest) until the replication lands.
            Ok(agent
                .get_manifest(repo, tag)
                .await
                .is_ok_and(|m| m.digest == image.manifest_digest))
        },
    )
    .await?;
    let dest = tempfile::tempdir_in(work)?;
    let pulled = pull_through_agent(b, 0, repo, tag, &dest.path().join("pulled")).await?;
    ensure_same_image(image, &pulled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_matching_a_rule_reach_the_remote_cluster_and_survive_a_build_index_kill() -> Result<()>
{
    let work = tempfile::tempdir()?;
    let queue = work.path().join("replication-queue");
    let mut b = Cluster::start(ClusterOptions::with_agents(1)).await?;
    let mut a = Cluster::start(ClusterOptions {
        build_index_overrides: json!({"replication": {
            "queue_dir": queue,
            // Short retries so B's proxy coming back is noticed within seconds.
            "retry_initial": "200ms",
            "retry_max": "1s",
            "rules": [{"repository": "repl/.*", "remotes": [b.proxy_url()]}],
        }}),
        ..ClusterOptions::default()
    })
    .await?;

    let first = image(&work.path().join("first"), 0x4e9_0001, "v1").await?;
    push(&a, &first, "other/app", "v1").await?;
    push(&a, &first, "repl/app", "v1").await?;
    wait_for_image_in(&b, &first, "repl/app", "v1", work.path()).await?;

    // The same tag now names another image: B follows.
    let second = image(&work.path().join("second"), 0x4e9_0002, "v1").await?;
    push(&a, &second, "repl/app", "v1").await?;
    wait_for_image_in(&b, &second, "repl/app", "v1", work.path()).await?;
    let replicated = a
        .metric_sum(
            Component::BuildIndex,
            "build_index_replication_replicated_total",
            &[],
        )
        .await?;
    ensure!(
        replicated >= 2.0,
        "A counts {replicated} replicated tags, expected both pushes"
    );

    // `other/app` was queued (if at all) before both `repl/app` pushes, so it would be there.
    let proxy_b = RegistryClient::new(&b.proxy_url())?;
    ensure!(
        proxy_b.get_manifest("other/app", "v1").await.is_err(),
        "other/app:v1 matches no rule but reached cluster B"
    );

    // B's proxy is down, so the v2 job cannot finish before A's build-index is killed.
    b.kill(Component::Proxy)?;
    let third = image(&work.path().join("third"), 0x4e9_0003, "v2").await?;
    push(&a, &third, "repl/app", "v2").await?;
    a.kill(Component::BuildIndex)?;
    let pending = std::fs::read_dir(&queue)
        .with_context(|| format!("reading {}", queue.display()))?
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "json"))
        })
        .count();
    ensure!(
        pending == 1,
        "{pending} jobs queued on disk after the kill, expected v2's"
    );
    a.restart(Component::BuildIndex).await?;
    b.restart(Component::Proxy).await?;
    wait_for_image_in(&b, &third, "repl/app", "v2", work.path()).await?;
    wait_until(&a, DEADLINE, "A's replication queue is empty", async || {
        Ok(a.metric_sum(
            Component::BuildIndex,
            "build_index_replication_pending",
            &[],
        )
        .await?
            == 0.0)
    })
    .await?;

    a.stop_all()?;
    b.stop_all()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_referrers_of_a_replicated_tag_follow_it_to_the_remote_cluster() -> Result<()> {
    let work = tempfile::tempdir()?;
    let b = Cluster::start(ClusterOptions::default()).await?;
    let a = Cluster::start(ClusterOptions {
        build_index_overrides: json!({"replication": {
            "queue_dir": work.path().join("replication-queue"),
            "retry_initial": "200ms",
            "retry_max": "1s",
            "rules": [{"repository": "repl/.*", "remotes": [b.proxy_url()]}],
        }}),
        ..ClusterOptions::default()
    })
    .await?;
    let (a_proxy, b_proxy) = (
        Registry::new(&a.proxy_url())?,
        Registry::new(&b.proxy_url())?,
    );
    let repo = "repl/signed";
    let image = image(&work.path().join("image"), 0x4e9_0010, "v1").await?;
    push(&a, &image, repo, "v1").await?;
    let (subject, subject_size) = (image.manifest_digest, image.manifest_bytes.len() as u64);
    let signature = a_proxy
        .push_artifact(
            repo,
            "application/vnd.example.signature",
            b"signed",
            subject,
            subject_size,
        )
        .await?;

    // Pushing the tag again queues it again: this time its referrer goes along.
    let media_type = image.manifest_media_type().as_str();
    a_proxy
        .put_manifest(repo, "v1", media_type, &image.manifest_bytes)
        .await?;
    wait_until(&b, DEADLINE, "B lists the signature", async || {
        Ok(b_proxy.referrers(repo, subject, None).await? == [signature])
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn an_invalid_rule_regex_stops_the_build_index_naming_the_field() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("build-index.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: {}\nbackend:\n  filesystem:\n    root: {}\nreplication:\n  queue_dir: {}\n  rules:\n    - repository: 'repl/('\n      remotes: ['http://127.0.0.1:1']\n",
            free_loopback_addr()?,
            dir.path().join("backend").display(),
            dir.path().join("queue").display(),
        ),
    )?;
    let mut command = tokio::process::Command::new(binaries::path("shoal-build-index"));
    command.arg("--config").arg(&config).kill_on_drop(true);
    let output = tokio::time::timeout(START_DEADLINE, command.output())
        .await
        .context("the build-index kept running with an invalid rule")??;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    ensure!(
        !output.status.success(),
        "an invalid rule was accepted:\n{printed}"
    );
    ensure!(
        printed.contains("replication.rules[0].repository"),
        "the error does not name the field:\n{printed}"
    );
    Ok(())
}
