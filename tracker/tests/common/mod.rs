//! Trackers for the tests: one in this process on `127.0.0.1:0`, or the real `shoal-tracker`
//! binary as a child process (when its own memory is what a test measures).
// Each test binary (tracker, limits) uses its own subset of these helpers.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use shoal_core::Digest;
use shoal_proto::v1::tracker_client::TrackerClient;
use shoal_proto::v1::{AnnounceRequest, PeerInfo};
use shoal_service::CancellationToken;
use shoal_tracker::{Listeners, TrackerConfig};
use tokio::net::TcpListener;
use tonic::transport::Channel;

/// A tracker serving in this process; stopped on drop.
pub struct Tracker {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Tracker {
    pub async fn start(config: TrackerConfig) -> Tracker {
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = grpc.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        tokio::spawn(async move {
            if let Err(error) = shoal_tracker::run(config, Listeners { grpc }, token).await {
                panic!("tracker failed: {error:#}");
            }
        });
        Tracker { addr, shutdown }
    }

    pub async fn client(&self) -> TrackerClient<Channel> {
        client(self.addr).await
    }

    pub async fn http_get(&self, path: &str) -> (StatusCode, String) {
        http_get(self.addr, path).await
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The `shoal-tracker` binary running `config` (YAML) on a free loopback port; killed on drop.
pub struct TrackerProcess {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl TrackerProcess {
    /// Starts the binary and waits until `/health` answers. `config` must not set `listen`.
    pub async fn start(config: &str) -> TrackerProcess {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let path = dir.path().join("tracker.yaml");
        std::fs::write(&path, format!("listen: {addr}\n{config}")).expect("write the config");
        let child = Command::new(env!("CARGO_BIN_EXE_shoal-tracker"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start shoal-tracker");
        let mut process = TrackerProcess {
            addr,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let http = shoal_service::client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("HTTP client");
        loop {
            let health = http.get(format!("http://{addr}/health")).send().await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return process;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("shoal-tracker exited at start: {status}");
            }
            assert!(Instant::now() < deadline, "shoal-tracker did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn client(&self) -> TrackerClient<Channel> {
        client(self.addr).await
    }

    pub async fn http_get(&self, path: &str) -> (StatusCode, String) {
        http_get(self.addr, path).await
    }

    /// The process's resident set size in bytes, from `/proc/<pid>/status`.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read the tracker's /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kib * 1024
    }
}

impl Drop for TrackerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn client(addr: SocketAddr) -> TrackerClient<Channel> {
    TrackerClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the tracker")
}

async fn http_get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let client = shoal_service::client::builder()
        .build()
        .expect("HTTP client");
    let response = client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .expect("HTTP request");
    let status = response.status();
    (status, response.text().await.expect("body"))
}

/// An announce of `digest` by peer `id` serving at `<id>.agents:16001`.
pub fn announce(digest: &Digest, id: &str, complete: bool) -> AnnounceRequest {
    AnnounceRequest {
        digest: digest.to_string(),
        namespace: "library/alpine".into(),
        peer: Some(PeerInfo {
            peer_id: id.into(),
            addr: format!("{id}.agents:16001"),
            origin: false,
            complete,
        }),
        progress: None,
    }
}

/// The value of the OpenMetrics sample `name` (with its labels, exactly as exposed).
pub fn metric(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(name)?.strip_prefix(' ')?;
        value.split(' ').next()?.parse().ok()
    })
}
