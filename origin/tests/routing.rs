//! Namespace → backend routing through a real origin: pushes to two repositories land in the
//! two backends their routes name, and pull-through reads from the routed backend.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use shoal_backends::{BackendConfig, NamespacePattern, RouteConfig, blob_key};
use shoal_core::Digest;
use shoal_origin::{Listeners, OriginConfig, WriteBackConfig};
use shoal_service::CancellationToken;
use tokio::net::TcpListener;

struct Origin {
    addr: SocketAddr,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An origin whose `team-a/…` repositories go to `<dir>/a` and `team-b/…` to `<dir>/b`.
async fn start(dir: &Path) -> Origin {
    let route = |pattern: &str, sub: &str| RouteConfig {
        namespace: NamespacePattern::new(pattern).expect("regex"),
        backend: BackendConfig::Filesystem {
            root: dir.join(sub),
        },
    };
    let config = OriginConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        data_dir: dir.join("origin"),
        backends: vec![route("team-a/.*", "a"), route("team-b/.*", "b")],
        writeback: WriteBackConfig {
            retry_initial: Duration::from_millis(20),
            retry_max: Duration::from_millis(200),
            replica_delay: Duration::from_millis(100),
        },
        ..OriginConfig::default()
    };
    let http = TcpListener::bind(config.listen).await.expect("bind");
    let addr = http.local_addr().expect("addr");
    let peer = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let shutdown = CancellationToken::new();
    tokio::spawn(shoal_origin::run(
        config,
        Listeners { http, peer },
        shutdown.clone(),
    ));
    let origin = Origin {
        addr,
        http: shoal_service::client::builder().build().expect("client"),
        shutdown,
    };
    wait_for("the origin to become healthy", || async {
        let response = origin.http.get(origin.url("/health")).send().await;
        response.is_ok_and(|r| r.status().is_success())
    })
    .await;
    origin
}

impl Origin {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

async fn wait_for<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn each_repository_writes_back_to_its_routed_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = start(dir.path()).await;
    let (a, b) = (b"layer of team a".as_slice(), b"layer of team b".as_slice());
    for (data, repo) in [(a, "team-a%2Fapp"), (b, "team-b%2Fapp")] {
        let digest = Digest::of(data);
        let response = origin
            .http
            .put(origin.url(&format!("/blobs/{digest}?namespace={repo}")))
            .body(data.to_vec())
            .send()
            .await
            .expect("put");
        assert_eq!(response.status(), StatusCode::CREATED, "{repo}");
    }
    let in_backend = |sub: &str, data: &[u8]| {
        dir.path()
            .join(sub)
            .join(blob_key(&Digest::of(data)))
            .is_file()
    };
    wait_for("both write-backs", || async {
        in_backend("a", a) && in_backend("b", b)
    })
    .await;
    assert!(
        !in_backend("b", a),
        "team-a's blob leaked into team-b's backend"
    );
    assert!(
        !in_backend("a", b),
        "team-b's blob leaked into team-a's backend"
    );
}

#[tokio::test]
async fn pull_through_reads_the_routed_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = start(dir.path()).await;
    let data = b"only in team b's backend";
    let digest = Digest::of(data);
    let path = dir.path().join("b").join(blob_key(&digest));
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, data).expect("seed backend b");

    let get = |query: &'static str| {
        let url = origin.url(&format!("/blobs/{digest}{query}"));
        let http = origin.http.clone();
        async move { http.get(url).send().await.expect("get") }
    };
    // Routed to team-a's backend, which lacks it.
    assert_eq!(
        get("?namespace=team-a%2Fapp").await.status(),
        StatusCode::NOT_FOUND
    );
    let routed = get("?namespace=team-b%2Fapp").await;
    assert_eq!(routed.status(), StatusCode::OK);
    assert_eq!(routed.bytes().await.expect("body").as_ref(), data);
}

#[tokio::test]
async fn a_read_without_namespace_searches_every_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let origin = start(dir.path()).await;
    let data = b"somewhere in some backend";
    let digest = Digest::of(data);
    let path = dir.path().join("b").join(blob_key(&digest));
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, data).expect("seed backend b");
    let head = origin
        .http
        .head(origin.url(&format!("/blobs/{digest}")))
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), StatusCode::OK);
    let get = origin
        .http
        .get(origin.url(&format!("/blobs/{digest}")))
        .send()
        .await
        .expect("get");
    assert_eq!(get.status(), StatusCode::OK);
    assert_eq!(get.bytes().await.expect("body").as_ref(), data);
}
