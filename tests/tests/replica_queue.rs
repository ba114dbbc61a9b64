//! Replication to an owner that was down, with real binaries: the origin that committed a blob
//! keeps the push it could not make on its durable queue, so a SIGKILL and restart of that
//! origin does not lose it, and the owner gets the blob once it is back.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use reqwest::StatusCode;
use shoal_core::Digest;
use shoal_tests::pattern::Pattern;
use shoal_tests::swarm::wait_until;
use shoal_tests::{Cluster, ClusterOptions, Component};

/// Generous for debug builds on a loaded 2-core machine: the queue retries a down owner after
/// 1 s, 2 s, 4 s… (with jitter), and the owner needs a moment to start.
const DEADLINE: Duration = Duration::from_secs(90);

/// Replica pushes queued on disk under an origin's data dir.
fn queued_pushes(data_dir: &Path) -> Result<usize> {
    let dir = data_dir.join("replication");
    let entries = std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut markers = 0;
    for entry in entries {
        if entry?.path().extension().is_some_and(|x| x == "json") {
            markers += 1;
        }
    }
    Ok(markers)
}

/// The blob from origin `i`'s store alone (`?replica=true` never fills in); `None` when absent.
async fn stored(cluster: &Cluster, i: usize, digest: &Digest) -> Result<Option<Vec<u8>>> {
    let url = format!(
        "http://{}/blobs/{digest}?replica=true",
        cluster.origin_addr_at(i)
    );
    let response = reqwest::get(&url)
        .await
        .with_context(|| format!("GET {url}"))?;
    match response.status() {
        StatusCode::OK => Ok(Some(response.bytes().await?.to_vec())),
        StatusCode::NOT_FOUND => Ok(None),
        status => anyhow::bail!("GET {url}: {status}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_missed_by_a_down_owner_survives_sigkill_of_the_pushing_origin() -> Result<()> {
    // Three origins, R = 3 and W = 2: every origin owns every blob.
    let mut cluster = Cluster::start(ClusterOptions {
        origins: 3,
        ..ClusterOptions::default()
    })
    .await?;
    let (holder, peer, down) = (0, 1, 2);
    cluster.kill(Component::origin(down))?;

    let pattern = Pattern::new(0x5e_9001, 3 << 20);
    let bytes = pattern.range(0, pattern.len);
    let digest = Digest::of(&bytes);
    let url = format!(
        "http://{}/blobs/{digest}?namespace=ring%2Fapp",
        cluster.origin_addr_at(holder)
    );
    let response = reqwest::Client::new()
        .put(&url)
        .body(bytes.clone())
        .send()
        .await
        .with_context(|| format!("PUT {url}"))?;
    ensure!(
        response.status() == StatusCode::CREATED,
        "PUT {url}: {}",
        response.status()
    );
    ensure!(
        stored(&cluster, peer, &digest).await?.as_ref() == Some(&bytes),
        "the commit was acknowledged before the write quorum held the blob"
    );

    // No graceful shutdown: the push to the down owner must already be on disk.
    cluster.kill(Component::origin(holder))?;
    let queued = queued_pushes(&cluster.origin_data_dir_at(holder))?;
    ensure!(
        queued == 1,
        "{queued} replica pushes queued on disk after the kill, expected the down owner's"
    );

    cluster.restart(Component::origin(holder)).await?;
    cluster.restart(Component::origin(down)).await?;
    wait_until(
        &cluster,
        DEADLINE,
        "the owner that was down stores the blob",
        async || Ok(stored(&cluster, down, &digest).await?.is_some()),
    )
    .await?;
    ensure!(
        stored(&cluster, down, &digest).await?.as_ref() == Some(&bytes),
        "the owner that was down holds other bytes"
    );
    let holder_component = Component::origin(holder);
    wait_until(
        &cluster,
        DEADLINE,
        "the pushing origin's replication queue is empty",
        async || {
            let pending = cluster
                .metric(holder_component, "origin_replication_pending")
                .await?;
            Ok(pending == Some(0.0))
        },
    )
    .await?;
    let replicated = cluster
        .metric(holder_component, "origin_replication_replicated_total")
        .await?;
    ensure!(
        replicated == Some(1.0),
        "the restarted origin counts {replicated:?} queued pushes done, expected 1"
    );
    ensure!(
        queued_pushes(&cluster.origin_data_dir_at(holder))? == 0,
        "a replica push marker outlived its push"
    );
    cluster.stop_all()?;
    Ok(())
}
