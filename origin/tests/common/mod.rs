//! Starts an origin in process on `127.0.0.1:0` with a per-test temporary data dir and
//! filesystem backend, and offers small helpers to talk to it.
// Each test binary (api, ring, seeding) uses its own subset of these helpers.
#![allow(dead_code)]

pub mod dnsmasq;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_backends::BackendConfig;
use shoal_core::Digest;
use shoal_origin::{ClusterConfig, Listeners, OriginConfig, UploadsConfig, WriteBackConfig};
use shoal_service::CancellationToken;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub struct TestOrigin {
    pub addr: SocketAddr,
    /// The gRPC `Peer` service.
    pub peer_addr: SocketAddr,
    pub http: reqwest::Client,
    dir: tempfile::TempDir,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestOrigin {
    pub async fn start() -> TestOrigin {
        TestOrigin::start_with(UploadsConfig::default()).await
    }

    pub async fn start_with(uploads: UploadsConfig) -> TestOrigin {
        let http = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        TestOrigin::start_on(http, |config| config.uploads = uploads).await
    }

    /// `n` origins forming one ring with `replicas` owners per blob and the given write quorum.
    pub async fn start_ring(n: usize, replicas: usize, write_quorum: usize) -> Vec<TestOrigin> {
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
        }
        let origins: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().expect("addr").to_string())
            .collect();
        let mut ring = Vec::new();
        for (http, advertise) in listeners.into_iter().zip(&origins) {
            let cluster = ClusterConfig {
                origins: origins.clone().into(),
                advertise: advertise.clone(),
                replicas,
                write_quorum,
            };
            ring.push(TestOrigin::start_on(http, |config| config.cluster = cluster).await);
        }
        ring
    }

    /// Starts an origin serving on `http`, with the test defaults changed by `edit`.
    pub async fn start_on(http: TcpListener, edit: impl FnOnce(&mut OriginConfig)) -> TestOrigin {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = OriginConfig {
            listen: http.local_addr().expect("addr"),
            data_dir: dir.path().join("origin"),
            backend: BackendConfig::Filesystem {
                root: dir.path().join("backend"),
            },
            writeback: WriteBackConfig {
                retry_initial: Duration::from_millis(20),
                retry_max: Duration::from_millis(200),
                replica_delay: Duration::from_millis(100),
            },
            ..OriginConfig::default()
        };
        edit(&mut config);
        let addr = config.listen;
        let peer = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let peer_addr = peer.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(shoal_origin::run(
            config,
            Listeners { http, peer },
            shutdown.clone(),
        ));
        let client = shoal_service::client::builder().build().expect("client");
        let origin = TestOrigin {
            addr,
            peer_addr,
            http: client,
            dir,
            shutdown,
            task,
        };
        origin.wait_healthy().await;
        origin
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(resp) = self.http.get(self.url("/health")).send().await
                && resp.status().is_success()
            {
                return;
            }
            assert!(Instant::now() < deadline, "origin did not become healthy");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn api(&self) -> shoal_api::OriginClient {
        shoal_api::OriginClient::new(self.http.clone(), &self.addr.to_string())
    }

    pub fn backend_dir(&self) -> PathBuf {
        self.dir.path().join("backend")
    }

    pub fn backend_blob(&self, digest: &Digest) -> PathBuf {
        self.backend_dir().join("blobs/sha256").join(digest.hex())
    }

    /// Puts a blob straight into the backend directory, as if another origin had written it.
    pub fn put_in_backend(&self, digest: &Digest, bytes: &[u8]) {
        let path = self.backend_blob(digest);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, bytes).expect("write backend blob");
    }

    pub fn store_blob(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.dir
            .path()
            .join("origin/store/blobs/sha256")
            .join(&hex[..2])
            .join(&hex)
            .join("data")
    }

    pub fn store_dir(&self, sub: &str) -> PathBuf {
        self.dir.path().join("origin/store").join(sub)
    }

    /// The value of a metric sample line (name plus labels exactly as printed).
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("metrics text");
        text.lines().find_map(|line| {
            let value = line.strip_prefix(sample)?.strip_prefix(' ')?;
            value.split(' ').next()?.parse().ok()
        })
    }

    /// Waits until a metric sample reaches `value`.
    pub async fn wait_metric(&self, sample: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.metric(sample).await != Some(value) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {sample} = {value}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Cancels the origin and checks that `run` returns cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("run returns after shutdown")
            .expect("run task");
        result.expect("run succeeded");
    }
}

/// Deterministic test bytes.
pub fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(37).wrapping_add((i >> 9) as u8) ^ seed)
        .collect()
}

/// Waits for `condition` to hold, failing the test after a deadline.
pub async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every regular file under `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}
