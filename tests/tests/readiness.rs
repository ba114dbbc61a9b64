//! Readiness over real processes: each component's `GET /readyz` turns 503 naming the
//! dependency that stopped answering (JSON `{"ready":false,"failed":{…}}`) while `GET /livez`
//! stays 200, and is 200 again once the dependency is back. The agent's is tested in
//! agent/tests/probes.rs.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use shoal_tests::configs;
use shoal_tests::ports::free_loopback_addr;
use shoal_tests::process::{POLL_INTERVAL, Process, ProcessSpec, wait_until_ready};
use shoal_tests::{Cluster, ClusterOptions, Component};

const DEADLINE: Duration = Duration::from_secs(45);
/// Longer than a readiness answer is reused (`shoal_service::ready::REUSE`), so the next probe
/// runs the checks again.
const PAST_REUSE: Duration = Duration::from_millis(1500);

fn client() -> Result<reqwest::Client> {
    Ok(shoal_service::client::builder()
        .timeout(Duration::from_secs(5))
        .build()?)
}

async fn readyz(http: &reqwest::Client, addr: SocketAddr) -> Result<(u16, Value)> {
    let response = http.get(format!("http://{addr}/readyz")).send().await?;
    let status = response.status().as_u16();
    let body = response.text().await?;
    let report = serde_json::from_str(&body).with_context(|| format!("/readyz body {body:?}"))?;
    Ok((status, report))
}

/// Polls `addr`'s `/readyz` until it answers `status` (200 or 503), returning the report.
async fn wait_readyz(http: &reqwest::Client, addr: SocketAddr, status: u16) -> Result<Value> {
    let start = Instant::now();
    loop {
        let last = readyz(http, addr).await;
        if let Ok((answered, report)) = &last
            && *answered == status
        {
            ensure!(
                report["ready"] == (status == 200),
                "{addr} answered {status} with {report}"
            );
            return Ok(report.clone());
        }
        if start.elapsed() > DEADLINE {
            bail!("{addr}/readyz did not answer {status} within {DEADLINE:?}: last {last:?}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// `/readyz` turns 503 with exactly the checks `failed` failing, while `/livez` stays 200.
async fn wait_unready(http: &reqwest::Client, addr: SocketAddr, failed: &[&str]) -> Result<Value> {
    let report = wait_readyz(http, addr, 503).await?;
    let names: Vec<&str> = report["failed"]
        .as_object()
        .context("failed")?
        .keys()
        .map(String::as_str)
        .collect();
    ensure!(
        names == failed,
        "{addr}: expected {failed:?} to fail: {report}"
    );
    let live = http.get(format!("http://{addr}/livez")).send().await?;
    ensure!(
        live.status() == 200,
        "{addr}/livez answered {}",
        live.status()
    );
    Ok(report)
}

#[tokio::test]
async fn proxy_is_ready_while_the_build_index_and_an_origin_answer() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let http = client()?;
    let proxy = cluster.addr(Component::Proxy);
    wait_readyz(&http, proxy, 200).await?;

    cluster.kill(Component::BuildIndex)?;
    let report = wait_unready(&http, proxy, &["build-index"]).await?;
    let reason = report["failed"]["build-index"].as_str().unwrap_or_default();
    ensure!(
        reason.contains(&cluster.build_index_addr().to_string()),
        "{report}"
    );
    cluster.restart(Component::BuildIndex).await?;
    wait_readyz(&http, proxy, 200).await?;

    cluster.kill(Component::Origin)?;
    wait_unready(&http, proxy, &["origins"]).await?;
    cluster.restart(Component::Origin).await?;
    wait_readyz(&http, proxy, 200).await?;
    Ok(())
}

/// Renames `path` aside (to `<path>.away`) until [`restore`].
fn set_aside(path: &Path) -> Result<()> {
    std::fs::rename(path, path.with_extension("away"))
        .with_context(|| format!("renaming {}", path.display()))
}

fn restore(path: &Path) -> Result<()> {
    std::fs::rename(path.with_extension("away"), path)
        .with_context(|| format!("restoring {}", path.display()))
}

#[tokio::test]
async fn origin_and_build_index_are_ready_while_writes_can_land() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let http = client()?;
    let origin = cluster.addr(Component::Origin);
    let build_index = cluster.addr(Component::BuildIndex);
    wait_readyz(&http, origin, 200).await?;
    wait_readyz(&http, build_index, 200).await?;

    // The origin's blob store is gone: not ready, naming it.
    let store = cluster.origin_data_dir().join("store");
    set_aside(&store)?;
    let report = wait_unready(&http, origin, &["store"]).await?;
    ensure!(
        report["failed"]["store"]
            .as_str()
            .is_some_and(|why| why.contains("not writable")),
        "{report}"
    );
    restore(&store)?;
    wait_readyz(&http, origin, 200).await?;

    // The shared filesystem backend fails (a file where its root directory was): both stay
    // ready, their queues (write-back, pending tags) taking the writes.
    let backend = cluster.backend_dir();
    set_aside(&backend)?;
    std::fs::write(&backend, b"not a directory")?;
    tokio::time::sleep(PAST_REUSE).await;
    for addr in [origin, build_index] {
        let (status, report) = readyz(&http, addr).await?;
        ensure!(status == 200, "{addr}: backend down, queue up: {report}");
    }
    // Without their queues they cannot take a write: not ready, naming the backend and the
    // queue.
    let writeback = cluster.origin_data_dir().join("writeback");
    let pending = cluster.dir().join("build-index-pending");
    set_aside(&writeback)?;
    set_aside(&pending)?;
    for addr in [origin, build_index] {
        let report = wait_unready(&http, addr, &["backend"]).await?;
        let reason = report["failed"]["backend"].as_str().unwrap_or_default();
        ensure!(reason.contains("and the queue"), "{addr}: {report}");
    }
    restore(&writeback)?;
    restore(&pending)?;
    std::fs::remove_file(&backend)?;
    restore(&backend)?;
    wait_readyz(&http, origin, 200).await?;
    wait_readyz(&http, build_index, 200).await?;
    Ok(())
}

/// Waits until `addr` accepts connections (`redis-server` just started).
async fn wait_listening(addr: SocketAddr) -> Result<()> {
    let start = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        ensure!(start.elapsed() < DEADLINE, "nothing listens on {addr}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Ok(())
}

#[tokio::test]
async fn tracker_is_ready_while_its_redis_and_an_origin_answer() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let http = client()?;
    let dir = tempfile::tempdir()?;
    let redis_addr = free_loopback_addr()?;
    let mut redis = Process::spawn(shoal_tests::redis::spec(dir.path(), redis_addr))?;
    wait_listening(redis_addr).await?;

    let tracker = free_loopback_addr()?;
    // A cluster without agents runs no origin peer service; readiness asks only its HTTP.
    let origin_peer = free_loopback_addr()?;
    let mut config = configs::tracker(tracker, &[(cluster.origin_addr(), origin_peer)]);
    configs::merge(
        &mut config,
        json!({"store": {"redis": {"url": format!("redis://{redis_addr}")}}}),
    );
    let config_path = dir.path().join("tracker.yaml");
    std::fs::write(&config_path, configs::to_yaml(&config)?)?;
    let mut tracker_process = Process::spawn(ProcessSpec {
        name: "shoal-tracker".to_owned(),
        program: shoal_tests::binaries::path("shoal-tracker"),
        args: vec!["--config".to_owned(), config_path.display().to_string()],
        env: vec![("RUST_LOG".to_owned(), "info".to_owned())],
        log: dir.path().join("tracker.log"),
    })?;
    let ready = format!("http://{tracker}/readyz");
    wait_until_ready(&mut tracker_process, &ready, DEADLINE).await?;

    redis.kill()?;
    wait_unready(&http, tracker, &["peer-store"]).await?;
    let mut redis = Process::spawn(shoal_tests::redis::spec(dir.path(), redis_addr))?;
    wait_readyz(&http, tracker, 200).await?;

    cluster.kill(Component::Origin)?;
    let report = wait_unready(&http, tracker, &["origins"]).await?;
    ensure!(
        report["failed"]["origins"] == "none of 1 known origins is healthy",
        "{report}"
    );
    cluster.restart(Component::Origin).await?;
    wait_readyz(&http, tracker, 200).await?;

    tracker_process.kill()?;
    redis.kill()?;
    Ok(())
}
