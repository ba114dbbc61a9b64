//! Acceptance: the agent's own disk failing is never blamed on a peer.
//!
//! - An agent whose disk has no room for a blob refuses the pull at once, with 503 and the
//!   reason, before any body byte and without blaming the peer that would have sent it (nothing
//!   blacklisted); once space is freed the same pull succeeds, verified. The data dir is a real
//!   small tmpfs with `size=`.
//! - A piece write failing midway (the partial file made immutable on a real ext4 disk, so
//!   every further write is refused with `EPERM`) ends the download at once with the reason in
//!   the agent's log; no peer is blacklisted, and once the disk takes writes again the same pull
//!   resumes and is served verified.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;
use shoal_core::Digest;
use shoal_tests::pattern::Pattern;
use shoal_tests::small_disk::SmallDisk;
use shoal_tests::swarm::wait_until;
use shoal_tests::v2::{Registry, http};
use shoal_tests::{Cluster, ClusterOptions, Component};

/// Room for the agent's own files and the blob once the filler is gone.
const DISK: u64 = 16 * 1024 * 1024;
/// 16 pieces of 256 KiB: the first few would fit in what is left free, the rest not.
const BLOB: u64 = 4 * 1024 * 1024;
const LEFT_FREE: u64 = 1024 * 1024;
/// Far longer than a refusal takes; a pull that stalls on failing piece writes runs into it.
const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn an_agent_without_room_for_a_blob_refuses_it_at_once_and_pulls_it_once_freed() -> Result<()>
{
    // Dropped after the cluster (declared first), so the agent is gone before the unmount.
    let disk = SmallDisk::tmpfs(DISK)?;
    let (cluster, digest, url) = start_with_blob(&disk, json!({}), 28, BLOB, "disk/full").await?;
    disk.fill_leaving(LEFT_FREE)?;

    let client = http();
    let response = tokio::time::timeout(PATIENCE, client.get(&url).send()).await??;
    let status = response.status();
    let body: serde_json::Value = tokio::time::timeout(PATIENCE, response.json()).await??;
    let (code, message) = (&body["errors"][0]["code"], &body["errors"][0]["message"]);
    ensure!(
        status == 503
            && code == "UNAVAILABLE"
            && message
                .as_str()
                .is_some_and(|m| m.contains("No space left on device")),
        "a blob the agent's disk cannot hold: {status} {body}"
    );
    ensure_nobody_blamed(&cluster, "a full disk").await?;

    disk.free()?;
    pull_verified(&client, &url, &digest, "after freeing").await
}

/// A cluster of one agent whose data dir is on `disk`, with `p2p` settings, and a blob of `size`
/// pattern bytes (`seed`) pushed to `repo`; its digest and URL at the agent.
async fn start_with_blob(
    disk: &SmallDisk,
    p2p: serde_json::Value,
    seed: u64,
    size: u64,
    repo: &str,
) -> Result<(Cluster, Digest, String)> {
    let data_dir = disk.path().join("agent");
    std::fs::create_dir(&data_dir)?;
    let cluster = Cluster::start(ClusterOptions {
        agents: 1,
        agent_overrides: json!({"data_dir": data_dir.display().to_string(), "p2p": p2p}),
        ..ClusterOptions::default()
    })
    .await?;
    let blob = Pattern::new(seed, size).range(0, size);
    let registry = Registry::new(&cluster.proxy_url())?;
    let digest = registry.push_blob(repo, &blob).await?;
    ensure!(digest == Digest::of(&blob), "pushed {digest}");
    let url = format!("{}/v2/{repo}/blobs/{digest}", cluster.agent_url(0));
    Ok((cluster, digest, url))
}

/// Fails when the agent blacklisted any peer for `what`.
async fn ensure_nobody_blamed(cluster: &Cluster, what: &str) -> Result<()> {
    let blacklisted = cluster
        .metric_sum(Component::Agent(0), "p2p_peers_blacklisted", &[])
        .await?;
    ensure!(blacklisted == 0.0, "{blacklisted} peers blamed for {what}");
    Ok(())
}

/// Pulls `url` and checks that it is answered 200 with exactly the blob `digest`.
async fn pull_verified(
    client: &reqwest::Client,
    url: &str,
    digest: &Digest,
    when: &str,
) -> Result<()> {
    let response = tokio::time::timeout(PATIENCE, client.get(url).send()).await??;
    ensure!(response.status() == 200, "{when}: {}", response.status());
    let body = tokio::time::timeout(PATIENCE, response.bytes()).await??;
    ensure!(
        Digest::of(&body) == *digest,
        "{when} the agent served {} bytes that are not the blob",
        body.len()
    );
    Ok(())
}

const MIB: u64 = 1024 * 1024;
/// 64 pieces of 256 KiB at the agent's 2 MiB/s: about 8 s, so the fault lands mid-download.
const SLOW_BLOB: u64 = 16 * MIB;

#[tokio::test]
async fn a_piece_write_failing_on_the_agents_disk_ends_the_pull_with_the_reason_and_blames_no_peer()
-> Result<()> {
    // Dropped after the cluster (declared first), so the agent is gone before the unmount.
    let disk = SmallDisk::ext4(64 * MIB)?;
    let p2p = json!({"ingress_rate": "2MiB"});
    let (cluster, digest, url) = start_with_blob(&disk, p2p, 29, SLOW_BLOB, "disk/fault").await?;
    let client = http();
    let pull = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let response = client.get(&url).send().await?;
            let status = response.status();
            anyhow::Ok((status, response.bytes().await))
        })
    };
    wait_until(
        &cluster,
        PATIENCE,
        "the agent has verified a piece",
        async || {
            Ok(cluster
                .metric_sum(Component::Agent(0), "p2p_pieces_received_total", &[])
                .await?
                > 0.0)
        },
    )
    .await?;
    let partial = partial_data(disk.path(), &digest)?;
    disk.set_immutable(&partial, true)?;

    let (status, body) = tokio::time::timeout(PATIENCE, pull)
        .await
        .context("the pull still runs although the agent cannot write its pieces")???;
    ensure!(
        !(status == 200 && body.as_ref().is_ok_and(|b| b.len() as u64 == SLOW_BLOB)),
        "the pull succeeded although the agent could not write its pieces"
    );
    let log = std::fs::read_to_string(cluster.log_path(Component::Agent(0)))?;
    ensure!(
        log.lines().any(
            |line| line.contains("download failed") && line.contains("Operation not permitted")
        ),
        "the agent's log does not say why the download failed:\n{}",
        cluster.log_tails()
    );
    ensure_nobody_blamed(&cluster, "the agent's own write failures").await?;

    disk.set_immutable(&partial, false)?;
    pull_verified(&client, &url, &digest, "after the disk takes writes again").await
}

/// The data file of `digest`'s partial download, wherever under `root` the store keeps it.
fn partial_data(root: &Path, digest: &Digest) -> Result<PathBuf> {
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.ends_with(Path::new("partial").join(digest.hex()).join("data")) {
                return Ok(path);
            }
            if path.is_dir() {
                dirs.push(path);
            }
        }
    }
    anyhow::bail!("no partial download of {digest} under {}", root.display())
}
