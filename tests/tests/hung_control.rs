//! A hung build-index or tracker (the process stopped with SIGSTOP: its kernel still accepts
//! connections, nothing answers) fails pushes and pulls within seconds with 503, so that
//! clients and runtimes retry or fall back to their upstream, instead of holding them without
//! end; once it runs again, both work. An agent pulls again what it pulled lately while the
//! build-index is away.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::json;
use shoal_client::Image;
use shoal_core::rendezvous;
use shoal_tests::images::{generate, image_spec};
use shoal_tests::swarm::{pull_through_agent_and_check, push};
use shoal_tests::{Cluster, ClusterOptions, Component};

const MIB: u64 = 1 << 20;

/// Far above what a hung component now costs (1 s, then a health probe or an HTTP/2 ping of
/// up to 2 s: about 3 s), for a debug build on a loaded machine, and below what it cost before:
/// without end for the build-index, 20 s (the peers' HTTP/2 pings) for the tracker.
const FAILS_WITHIN: Duration = Duration::from_secs(15);

/// Runs `work`, which must fail within [`FAILS_WITHIN`] with an error that names a 503.
async fn fails_fast<T>(what: &str, work: impl Future<Output = Result<T>>) -> Result<()> {
    let started = Instant::now();
    let outcome = tokio::time::timeout(FAILS_WITHIN, work)
        .await
        .with_context(|| format!("{what} was held past {FAILS_WITHIN:?}"))?;
    let error = match outcome {
        Ok(_) => anyhow::bail!("{what} succeeded with the component hung"),
        Err(error) => format!("{error:#}"),
    };
    eprintln!("{what}: failed after {:?}: {error}", started.elapsed());
    ensure!(
        error.contains("503"),
        "{what} failed without a 503: {error}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_build_index_fails_pushes_and_new_pulls_fast_until_it_runs_again() -> Result<()> {
    // Resolved references expire at once, so the pull beside the hung build-index below is
    // answered from an expired one.
    let cluster = Cluster::start(ClusterOptions {
        agent_overrides: json!({"tag_cache_ttl": "1ms"}),
        ..ClusterOptions::with_agents(1)
    })
    .await?;
    let work = tempfile::tempdir()?;
    let (at, dir) = (&cluster, work.path());
    let pull = move |repo: &'static str, image: &Image, dest: &str| {
        let dest = dir.join(dest);
        let image = image.clone();
        async move { pull_through_agent_and_check(at, 0, &image, repo, "v1", &dest).await }
    };
    let image = generate(
        &work.path().join("first"),
        image_spec(vec![3 * MIB, 100 * 1024], 0x4b1, "v1"),
    )
    .await?;
    push(&cluster, &image, "hung/index", "v1").await?;
    push(&cluster, &image, "hung/other", "v1").await?;
    pull("hung/index", &image, "before").await?;
    let second = generate(
        &work.path().join("second"),
        image_spec(vec![2 * MIB], 0x4b2, "v2"),
    )
    .await?;

    let stopped = cluster.hang([Component::BuildIndex])?;
    // What the agent resolved lately keeps its last answer, and its bytes are in its cache.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let again = Instant::now();
    pull("hung/index", &image, "again").await?;
    eprintln!(
        "pulling again beside the hung build-index: {:?}",
        again.elapsed()
    );
    // Within the agent's away window the last answer comes without asking (tags.rs).
    let third = Instant::now();
    pull("hung/index", &image, "third").await?;
    eprintln!(
        "and once more, within the away window: {:?}",
        third.elapsed()
    );
    fails_fast(
        "a pull of a tag the agent never resolved",
        pull("hung/other", &image, "other"),
    )
    .await?;
    fails_fast("a push", push(&cluster, &second, "hung/index", "v2")).await?;
    drop(stopped);

    push(&cluster, &second, "hung/index", "v2").await?;
    pull("hung/other", &image, "other-after").await?;
    pull_through_agent_and_check(
        &cluster,
        0,
        &second,
        "hung/index",
        "v2",
        &work.path().join("second-after"),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_tracker_fails_pulls_fast_until_it_runs_again() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::with_agents(1)).await?;
    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("first"),
        image_spec(vec![3 * MIB, 100 * 1024], 0x4b3, "v1"),
    )
    .await?;
    push(&cluster, &image, "hung/tracker", "v1").await?;

    let stopped = cluster.hang([Component::Tracker])?;
    fails_fast(
        "a pull through the agent",
        pull_through_agent_and_check(
            &cluster,
            0,
            &image,
            "hung/tracker",
            "v1",
            &work.path().join("p0"),
        ),
    )
    .await?;
    drop(stopped);

    pull_through_agent_and_check(
        &cluster,
        0,
        &image,
        "hung/tracker",
        "v1",
        &work.path().join("p1"),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_trackers_pulls_go_on_while_one_is_hung() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        trackers: 2,
        ..ClusterOptions::with_agents(2)
    })
    .await?;
    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("image"),
        image_spec(vec![3 * MIB, 2 * MIB, 100 * 1024], 0x7a2, "v1"),
    )
    .await?;
    push(&cluster, &image, "hung/trackers", "v1").await?;

    // The agents list both trackers; each blob asks first the one its rendezvous order puts
    // first. Stop the first tracker of the largest layer, so that layer's pull must go on at
    // the other.
    let addrs: Vec<String> = (0..2)
        .map(|i| cluster.addr(Component::tracker(i)).to_string())
        .collect();
    let (layer, _) = image.layers[0];
    let first = rendezvous::rank(&layer, &addrs)[0];
    let hung = Component::tracker(addrs.iter().position(|a| a == first).expect("ranked"));
    let stopped = cluster.hang([hung])?;
    for agent in 0..2 {
        pull_through_agent_and_check(
            &cluster,
            agent,
            &image,
            "hung/trackers",
            "v1",
            &work.path().join(format!("p{agent}")),
        )
        .await
        .with_context(|| format!("pulling through agent {agent} with {hung} hung"))?;
        let failovers = cluster
            .metric(Component::Agent(agent), "shoal_p2p_tracker_failovers_total")
            .await?
            .unwrap_or(0.0);
        ensure!(
            failovers >= 1.0,
            "agent {agent} never went on to the other tracker ({failovers})"
        );
    }
    drop(stopped);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_build_index_replicas_pushes_and_first_pulls_go_on_while_one_is_hung() -> Result<()>
{
    let cluster = Cluster::start(ClusterOptions {
        build_indexes: 2,
        ..ClusterOptions::with_agents(1)
    })
    .await?;
    let work = tempfile::tempdir()?;
    let first = generate(
        &work.path().join("first"),
        image_spec(vec![3 * MIB, 100 * 1024], 0x7b1, "v1"),
    )
    .await?;
    let second = generate(
        &work.path().join("second"),
        image_spec(vec![2 * MIB], 0x7b2, "v2"),
    )
    .await?;
    // Pushed while both run: the proxy's requests go to the first replica.
    push(&cluster, &first, "hung/replicas", "v1").await?;

    // The replica every client asked so far stops answering. The other shares its tag
    // backend: a tag this agent never resolved pulls, and a push goes on, both at the other.
    let stopped = cluster.hang([Component::BuildIndex])?;
    let started = Instant::now();
    pull_through_agent_and_check(
        &cluster,
        0,
        &first,
        "hung/replicas",
        "v1",
        &work.path().join("p1"),
    )
    .await
    .context("a first pull of a tag with one replica hung")?;
    eprintln!("first pull beside a hung replica: {:?}", started.elapsed());
    push(&cluster, &second, "hung/replicas", "v2")
        .await
        .context("a push with one replica hung")?;
    pull_through_agent_and_check(
        &cluster,
        0,
        &second,
        "hung/replicas",
        "v2",
        &work.path().join("p2"),
    )
    .await?;
    drop(stopped);
    Ok(())
}
