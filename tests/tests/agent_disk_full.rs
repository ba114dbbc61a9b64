//! Acceptance: an agent whose disk has no room for a blob refuses the pull at once, with 503 and
//! the reason, before any body byte and without blaming the peer that would have sent it (nothing
//! blacklisted); once space is freed the same pull succeeds, verified. The agent's data dir is a
//! real small filesystem (a tmpfs with `size=`).

use std::time::Duration;

use anyhow::{Result, ensure};
use serde_json::json;
use shoal_core::Digest;
use shoal_tests::pattern::Pattern;
use shoal_tests::small_disk::SmallDisk;
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
    let disk = SmallDisk::mount(DISK)?;
    let data_dir = disk.path().join("agent");
    std::fs::create_dir(&data_dir)?;
    let cluster = Cluster::start(ClusterOptions {
        agents: 1,
        agent_overrides: json!({"data_dir": data_dir.display().to_string()}),
        ..ClusterOptions::default()
    })
    .await?;
    let blob = Pattern::new(28, BLOB).range(0, BLOB);
    let registry = Registry::new(&cluster.proxy_url())?;
    let digest = registry.push_blob("disk/full", &blob).await?;
    ensure!(digest == Digest::of(&blob), "pushed {digest}");
    disk.fill_leaving(LEFT_FREE)?;

    let url = format!("{}/v2/disk/full/blobs/{digest}", cluster.agent_url(0));
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
    let blacklisted = cluster
        .metric_sum(Component::Agent(0), "p2p_peers_blacklisted", &[])
        .await?;
    ensure!(
        blacklisted == 0.0,
        "{blacklisted} peers blamed for a full disk"
    );

    disk.free()?;
    let response = tokio::time::timeout(PATIENCE, client.get(&url).send()).await??;
    ensure!(
        response.status() == 200,
        "after freeing: {}",
        response.status()
    );
    let body = tokio::time::timeout(PATIENCE, response.bytes()).await??;
    ensure!(
        Digest::of(&body) == digest,
        "after freeing the agent served {} bytes that are not the blob",
        body.len()
    );
    Ok(())
}
