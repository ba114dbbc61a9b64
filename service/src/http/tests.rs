//! End-to-end tests of the common routes and the metrics middleware over real sockets.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Path;
use axum::response::IntoResponse;
use axum::routing::{any, post};
use bytes::Bytes;
use futures::StreamExt;
use tokio::task::JoinHandle;

use super::*;
use crate::metrics::MetricsBuilder;

const MIB: usize = 1024 * 1024;
const CHUNK: usize = 64 * 1024;

struct Server {
    base: String,
    shutdown: CancellationToken,
    task: JoinHandle<io::Result<()>>,
    client: reqwest::Client,
}

impl Server {
    async fn start(app: Router) -> Self {
        let metrics = MetricsBuilder::new("test").build();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            with_common_routes(app, metrics),
            shutdown.clone(),
        ));
        Self {
            base: format!("http://{addr}"),
            shutdown,
            task,
            client: crate::client::builder().build().unwrap(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    async fn scrape(&self) -> String {
        self.get("/metrics").await.text().await.unwrap()
    }

    /// Polls `/metrics` until the sample `series` (name and labels) has `value`, failing after
    /// a deadline. Polling covers the instant between a client reading the last byte and the
    /// server dropping the response body.
    async fn wait_for_sample(&self, series: &str, value: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.scrape().await;
            let found = sample(&text, series);
            if found == Some(value) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} is {found:?}, expected {value}; metrics:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The integer value of `series` (e.g. `shoal_x_total{route="/a"}`) in an OpenMetrics text.
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().unwrap())
}

fn app() -> Router {
    Router::new()
        .route(
            "/items/{id}",
            get(|Path(id): Path<u32>| async move { format!("item {id}") }),
        )
        // Reads the request body as a stream (as blob uploads do) and answers its length.
        .route(
            "/upload",
            post(|body: Body| async move {
                let mut stream = body.into_data_stream();
                let mut total = 0;
                while let Some(chunk) = stream.next().await {
                    total += chunk.unwrap().len();
                }
                total.to_string()
            }),
        )
        // Answers without reading the body, as a refused upload chunk is.
        .route(
            "/refuse",
            post(|| async { (http::StatusCode::NOT_FOUND, "no such upload") }),
        )
        // Streams a 3 MiB body with no Content-Length, as blob downloads do.
        .route(
            "/download",
            get(|| async {
                let chunks =
                    (0..3 * MIB / CHUNK).map(|_| Ok::<_, io::Error>(Bytes::from(vec![1u8; CHUNK])));
                Body::from_stream(futures::stream::iter(chunks))
            }),
        )
        // Catch-alls whose handlers name the route themselves, like the Registry V2 proxy.
        .route(
            "/manifests/{*rest}",
            any(|| async {
                let mut response = "manifest".into_response();
                response.extensions_mut().insert(RouteLabel("v2_manifest"));
                response
            }),
        )
        .route(
            "/v2/{*rest}",
            any(|| async { (RouteLabel("v2_blob"), "blob") }),
        )
}

#[tokio::test]
async fn health_answers_ok_with_a_content_length() {
    let server = Server::start(app()).await;
    let response = server.get("/health").await;
    assert_eq!(response.status(), 200);
    // The counting wrapper forwards the size hint, so sized bodies are not sent chunked.
    assert_eq!(response.content_length(), Some(2));
    assert_eq!(response.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn metrics_are_served_as_openmetrics() {
    let server = Server::start(app()).await;
    let response = server.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()[CONTENT_TYPE],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    assert!(
        text.contains("shoal_build_info{component=\"test\""),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[tokio::test]
async fn requests_are_counted_by_route_method_and_status() {
    let server = Server::start(app()).await;
    for path in [
        "/items/1",
        "/items/2",
        "/items/nan",
        "/nowhere",
        "/v2/a/b/blobs/x",
    ] {
        server.get(path).await.bytes().await.unwrap();
    }
    server
        .client
        .delete(server.url("/manifests/a/latest"))
        .send()
        .await
        .unwrap();

    let text = server.scrape().await;
    let count = |series: &str| sample(&text, series);
    assert_eq!(
        count(r#"shoal_http_requests_total{route="/items/{id}",method="GET",status="200"}"#),
        Some(2)
    );
    // Path extraction rejects `nan`; the request is still labelled with its route.
    assert_eq!(
        count(r#"shoal_http_requests_total{route="/items/{id}",method="GET",status="400"}"#),
        Some(1)
    );
    assert_eq!(
        count(r#"shoal_http_requests_total{route="unmatched",method="GET",status="404"}"#),
        Some(1)
    );
    assert_eq!(
        count(r#"shoal_http_requests_total{route="v2_blob",method="GET",status="200"}"#),
        Some(1)
    );
    assert_eq!(
        count(r#"shoal_http_requests_total{route="v2_manifest",method="DELETE",status="200"}"#),
        Some(1)
    );
    assert!(!text.contains("/v2/{*rest}"), "{text}");
    server
        .wait_for_sample(
            r#"shoal_http_request_duration_seconds_count{route="/items/{id}",method="GET"}"#,
            3,
        )
        .await;
}

#[tokio::test]
async fn unknown_methods_share_one_label() {
    let server = Server::start(app()).await;
    let method = http::Method::from_bytes(b"BREW").unwrap();
    server
        .client
        .request(method, server.url("/v2/pot"))
        .send()
        .await
        .unwrap();
    let text = server.scrape().await;
    assert_eq!(
        sample(
            &text,
            r#"shoal_http_requests_total{route="v2_blob",method="OTHER",status="200"}"#
        ),
        Some(1),
        "{text}"
    );
}

#[tokio::test]
async fn streamed_request_and_response_bytes_are_counted_exactly() {
    let server = Server::start(app()).await;

    // A chunked upload: a stream body has no Content-Length, so only counting frames works.
    let chunks = (0..5 * MIB / CHUNK).map(|_| Ok::<_, io::Error>(vec![2u8; CHUNK]));
    let response = server
        .client
        .post(server.url("/upload"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), (5 * MIB).to_string());

    let response = server.get("/download").await;
    assert_eq!(response.content_length(), None);
    let mut downloaded = 0;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        downloaded += chunk.unwrap().len();
    }
    assert_eq!(downloaded, 3 * MIB);

    server
        .wait_for_sample(
            r#"shoal_http_request_bytes_total{route="/upload"}"#,
            (5 * MIB) as u64,
        )
        .await;
    server
        .wait_for_sample(
            r#"shoal_http_response_bytes_total{route="/download"}"#,
            (3 * MIB) as u64,
        )
        .await;
    // The upload's response was its length in decimal: 7 bytes.
    server
        .wait_for_sample(r#"shoal_http_response_bytes_total{route="/upload"}"#, 7)
        .await;
    server
        .wait_for_sample(r#"shoal_http_request_bytes_total{route="/download"}"#, 0)
        .await;
    server
        .wait_for_sample(
            r#"shoal_http_request_duration_seconds_count{route="/download",method="GET"}"#,
            1,
        )
        .await;
}

/// A body the handler answered without reading is read before the answer: the sender, still
/// writing when the answer comes (a proxy forwards a client's chunk as it arrives), gets the
/// answer, not a reset connection. Without the drain, most rounds here ended in a reset.
#[tokio::test]
async fn a_body_answered_unread_is_read_so_the_sender_gets_the_answer() {
    let server = Server::start(app()).await;
    const ROUNDS: usize = 20;
    for round in 0..ROUNDS {
        let parts = (0..MIB / CHUNK).map(|_| Bytes::from(vec![3u8; CHUNK]));
        let trickled = futures::stream::iter(parts).then(|part| async move {
            tokio::task::yield_now().await;
            Ok::<_, io::Error>(part)
        });
        let response = server
            .client
            .post(server.url("/refuse"))
            .body(reqwest::Body::wrap_stream(trickled))
            .send()
            .await
            .unwrap_or_else(|error| panic!("round {round}: {error:?}"));
        assert_eq!(response.status(), 404, "round {round}");
        assert_eq!(response.text().await.unwrap(), "no such upload");
    }
    server
        .wait_for_sample(
            r#"shoal_http_request_bytes_total{route="/refuse"}"#,
            (ROUNDS * MIB) as u64,
        )
        .await;
}

#[tokio::test]
async fn serve_returns_after_the_token_is_cancelled() {
    let server = Server::start(app()).await;
    assert_eq!(server.get("/health").await.status(), 200);
    server.shutdown.cancel();
    let Server {
        task, client, base, ..
    } = server;
    let result = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("serve returned within the deadline")
        .expect("serve task did not panic");
    result.expect("serve ended without error");
    assert!(
        client.get(format!("{base}/health")).send().await.is_err(),
        "listener closed after shutdown"
    );
}

/// The source allow list admits clients by address; `/health` and `/metrics`, added after it,
/// stay open.
#[tokio::test]
async fn the_source_allow_list_admits_listed_addresses_only() {
    let routes = || Router::new().route("/v2/", axum::routing::get(|| async { "{}" }));
    let elsewhere = ["10.0.0.0/8".parse().unwrap()];
    let refused = Server::start(with_source_allow_list(routes(), &elsewhere)).await;
    let response = refused.get("/v2/").await;
    assert_eq!(response.status(), 403);
    let body = response.text().await.unwrap();
    assert!(
        body.contains("DENIED") && body.contains("127.0.0.1"),
        "{body}"
    );
    assert_eq!(refused.get("/health").await.status(), 200);

    let loopback = ["127.0.0.1".parse().unwrap()];
    let admitted = Server::start(with_source_allow_list(routes(), &loopback)).await;
    assert_eq!(admitted.get("/v2/").await.status(), 200);
    let open = Server::start(with_source_allow_list(routes(), &[])).await;
    assert_eq!(open.get("/v2/").await.status(), 200);
}

/// What a handler logs carries the request's route, method and path (span fields).
#[tokio::test]
async fn handler_logs_carry_the_route_and_path() {
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);
    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let app = Router::new().route(
        "/blobs/{digest}",
        get(|| async {
            tracing::warn!("backend unavailable");
            "ok"
        }),
    );
    let server = Server::start(app).await;
    assert_eq!(server.get("/blobs/sha256:abc").await.status(), 200);
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = logs
        .lines()
        .find(|line| line.contains("backend unavailable"))
        .unwrap_or_else(|| panic!("no warning in {logs}"));
    for field in [
        r#"route="/blobs/{digest}""#,
        r#"method="GET""#,
        r#"path="/blobs/sha256:abc""#,
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
}
