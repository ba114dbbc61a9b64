//! The proxy follows a DNS change of the origin ring: real origin and proxy processes on
//! 127.0.0.1-3 (one port, as pods behind a headless Service), a dnsmasq answering for the ring's
//! name, and pushes and pulls through the proxy's Registry V2 API as the records change.

#[path = "../../origin/tests/common/dnsmasq.rs"]
mod dnsmasq;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use dnsmasq::Dnsmasq;
use reqwest::StatusCode;
use serde_json::json;
use shoal_core::Digest;
use shoal_tests::process::{Process, ProcessSpec, wait_until_ready};
use shoal_tests::v2::Registry;
use shoal_tests::{binaries, configs};

const NAME: &str = "origin.shoal.test";
const MEMBERS: &str = "shoal_membership_members{group=\"origins\"}";
const DEADLINE: Duration = Duration::from_secs(30);

fn hosts(last_octets: &[u8]) -> String {
    last_octets
        .iter()
        .map(|o| format!("127.0.0.{o} {NAME}\n"))
        .collect()
}

fn loopback(last: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), port)
}

/// A port free on 127.0.0.1, .2 and .3 alike.
fn shared_port() -> Result<u16> {
    for _ in 0..20 {
        let first = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = first.local_addr()?.port();
        if (2..=3).all(|last| std::net::TcpListener::bind(loopback(last, port)).is_ok()) {
            return Ok(port);
        }
    }
    anyhow::bail!("no port free on all of 127.0.0.1-3")
}

fn start(dir: &Path, name: &str, binary: &str, config: &serde_json::Value) -> Result<Process> {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, configs::to_yaml(config)?)?;
    Process::spawn(ProcessSpec {
        name: name.to_owned(),
        program: binaries::path(binary),
        args: vec!["--config".into(), path.display().to_string()],
        env: vec![("RUST_LOG".into(), "info".into())],
        log: dir.join(format!("{name}.log")),
    })
}

/// A lone origin on `addr` with a backend of its own, so a blob is found only where it was
/// pushed.
async fn origin(dir: &Path, i: u8, addr: SocketAddr) -> Result<Process> {
    let data = dir.join(format!("origin-{i}"));
    let backend = configs::filesystem_backend(&data.join("backend"));
    let peer = shoal_tests::ports::free_loopback_addr()?;
    let config = configs::origin(addr, peer, &data.join("data"), &backend);
    let mut process = start(dir, &format!("origin-{i}"), "shoal-origin", &config)?;
    wait_until_ready(&mut process, &format!("http://{addr}/health"), DEADLINE).await?;
    Ok(process)
}

/// Whether the origin at `addr` holds `digest` (its own store or backend).
async fn holds(http: &reqwest::Client, addr: SocketAddr, digest: &Digest) -> Result<bool> {
    let response = http
        .head(format!("http://{addr}/blobs/{digest}"))
        .send()
        .await?;
    Ok(response.status() == StatusCode::OK)
}

async fn members_metric(http: &reqwest::Client, proxy: SocketAddr) -> Result<Option<f64>> {
    let text = http
        .get(format!("http://{proxy}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|line| line.strip_prefix(MEMBERS))
        .and_then(|value| value.trim().parse().ok()))
}

async fn wait_for_members(http: &reqwest::Client, proxy: SocketAddr, count: f64) -> Result<()> {
    let start = Instant::now();
    while members_metric(http, proxy).await? != Some(count) {
        ensure!(
            start.elapsed() < DEADLINE,
            "the proxy never saw {count} origins"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn blob_status(registry: &Registry, digest: &Digest) -> Result<StatusCode> {
    let url = registry.url(&format!("v2/dns/app/blobs/{digest}"));
    Ok(registry.http.get(url).send().await?.status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_follows_dns_changes_of_the_origin_ring() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let dns = Dnsmasq::start(dir.path(), &hosts(&[1]));
    let port = shared_port()?;
    let addrs = [loopback(1, port), loopback(2, port), loopback(3, port)];
    let mut processes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        processes.push(origin(dir.path(), i as u8, *addr).await?);
    }
    let proxy = shoal_tests::ports::free_loopback_addr()?;
    let nowhere = shoal_tests::ports::free_loopback_addr()?;
    let mut config = configs::proxy(proxy, &[], &[nowhere]);
    configs::merge(
        &mut config,
        json!({
            "origins": {
                "dns": {
                    "name": NAME,
                    "port": port,
                    "interval": "100ms",
                    "nameserver": dns.addr().to_string(),
                },
                "health": {"interval": "100ms"},
            },
            // Every member owns every blob, so reads try them all: the lone origins do not
            // replicate, and a blob is wherever its session was.
            "replicas": 3,
            "preheat": {"state_dir": dir.path().join("preheat").display().to_string()},
        }),
    );
    let mut proxy_process = start(dir.path(), "proxy", "shoal-proxy", &config)?;
    wait_until_ready(
        &mut proxy_process,
        &format!("http://{proxy}/health"),
        DEADLINE,
    )
    .await?;
    let registry = Registry::new(&format!("http://{proxy}/"))?;
    let http = &registry.http;
    wait_for_members(http, proxy, 1.0).await?;

    // One record: every upload session and every blob lives on origin 1.
    let first = registry.push_blob("dns/app", b"first blob").await?;
    ensure!(
        holds(http, addrs[0], &first).await?,
        "origin 1 holds the blob"
    );
    ensure!(blob_status(&registry, &first).await? == StatusCode::OK);

    // Two more records: sessions spread over all three origins, and each session's later
    // requests reach the origin its handle names, whichever it is.
    dns.set_hosts(&hosts(&[1, 2, 3]));
    wait_for_members(http, proxy, 3.0).await?;
    let mut pushed = Vec::new();
    for i in 0..6u8 {
        let digest = registry.push_blob("dns/app", &[b'x', i]).await?;
        ensure!(blob_status(&registry, &digest).await? == StatusCode::OK);
        pushed.push(digest);
    }
    let mut used = [false; 3];
    for digest in &pushed {
        for (i, addr) in addrs.iter().enumerate() {
            used[i] |= holds(http, *addr, digest).await?;
        }
    }
    ensure!(
        used == [true; 3],
        "sessions did not reach every origin: {used:?}"
    );

    // Origin 1 leaves the records: the proxy stops sending anything to it (its blob is no
    // longer found through the proxy), and new pushes land on the others.
    dns.set_hosts(&hosts(&[2, 3]));
    wait_for_members(http, proxy, 2.0).await?;
    ensure!(blob_status(&registry, &first).await? == StatusCode::NOT_FOUND);
    let last = registry.push_blob("dns/app", b"last blob").await?;
    ensure!(
        !holds(http, addrs[0], &last).await?,
        "origin 1 left the ring"
    );
    ensure!(blob_status(&registry, &last).await? == StatusCode::OK);

    // Every process this test started is gone once it ends.
    let pids: Vec<u32> = std::iter::once(&proxy_process)
        .chain(&processes)
        .filter_map(Process::pid)
        .collect();
    drop(proxy_process);
    drop(processes);
    for pid in pids {
        ensure!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} outlived the test"
        );
    }
    Ok(())
}
