//! The listener limits over real sockets on loopback: header-read and idle timeouts, the
//! connection limit, long transfers that outlive the timeouts, and graceful shutdown.

use std::time::Duration;

use axum::routing::{get, post};
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::*;

/// Far above any delay the server should add; only a server that never acts reaches it.
const MARGIN: Duration = Duration::from_secs(5);

/// Small limits, so the tests run in seconds.
const LIMITS: ListenerLimits = ListenerLimits {
    header_read_timeout: Duration::from_secs(1),
    idle_timeout: Duration::from_secs(2),
    max_connections: 50,
};

/// How long `/slow` and `/silent` take: longer than both timeouts of [`LIMITS`].
const SLOW: Duration = Duration::from_secs(3);

struct Server {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<io::Result<()>>,
}

impl Server {
    async fn start(limits: ListenerLimits) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(crate::http::serve_with(
            listener,
            None,
            app(),
            limits,
            shutdown.clone(),
        ));
        Self {
            addr,
            shutdown,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }
}

fn app() -> Router {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        // Six chunks spread over `SLOW`, like a blob streaming from a slow disk.
        .route(
            "/slow",
            get(|| async {
                let chunks = futures::stream::iter(0..6u8).then(|i| async move {
                    tokio::time::sleep(SLOW / 6).await;
                    Ok::<_, io::Error>(Bytes::from(vec![i; 1000]))
                });
                Body::from_stream(chunks)
            }),
        )
        // Nothing at all flows for `SLOW`, like a gRPC stream waiting for its next message.
        .route(
            "/silent",
            get(|| async {
                let chunks = futures::stream::iter(0..2u8).then(|i| async move {
                    if i == 1 {
                        tokio::time::sleep(SLOW).await;
                    }
                    Ok::<_, io::Error>(Bytes::from(vec![i; 10]))
                });
                Body::from_stream(chunks)
            }),
        )
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
}

/// A status and body read from an HTTP/1.1 response with a `Content-Length`.
async fn read_response(stream: &mut TcpStream) -> (u16, String) {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |value| value.trim().parse().unwrap());
            if received.len() >= end + 4 + length {
                let status = head[9..12].parse().unwrap();
                let body = String::from_utf8_lossy(&received[end + 4..end + 4 + length]);
                return (status, body.into_owned());
            }
        }
        let read = tokio::time::timeout(MARGIN, stream.read(&mut buf))
            .await
            .expect("a response within the deadline")
            .unwrap();
        assert!(read > 0, "closed mid-response: {received:?}");
        received.extend_from_slice(&buf[..read]);
    }
}

async fn get_on(stream: &mut TcpStream, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_response(stream).await
}

/// Reads (and discards) until the server closes `stream`; the time that took, or `None` if it
/// stayed open past `deadline`.
async fn closed_within(stream: &mut TcpStream, deadline: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    let closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(deadline, closed)
        .await
        .ok()
        .map(|()| start.elapsed())
}

#[tokio::test]
async fn silent_new_connections_are_closed_after_the_header_read_timeout() {
    let server = Server::start(LIMITS).await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(server.connect().await);
    }
    let closing = silent.iter_mut().map(|stream| async move {
        closed_within(stream, LIMITS.header_read_timeout + MARGIN).await
    });
    for (i, closed) in futures::future::join_all(closing)
        .await
        .into_iter()
        .enumerate()
    {
        assert!(closed.is_some(), "silent connection {i} is still open");
    }
    // The slots are free again.
    let mut stream = server.connect().await;
    assert_eq!(get_on(&mut stream, "/health").await, (200, "ok".to_owned()));
}

#[tokio::test]
async fn slowloris_connections_are_closed_after_the_header_read_timeout() {
    let server = Server::start(LIMITS).await;
    let slowloris = (0..10).map(|_| async {
        let mut stream = server.connect().await;
        let start = Instant::now();
        stream.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 1024];
        let mut line = 0;
        loop {
            line += 1;
            // One header line every 300 ms, never the blank line that ends them.
            let header = format!("X-Line-{line}: {}\r\n", "a".repeat(20));
            if stream.write_all(header.as_bytes()).await.is_err() {
                return;
            }
            let read = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf));
            if let Ok(Ok(0) | Err(_)) = read.await {
                return;
            }
            assert!(
                start.elapsed() < LIMITS.header_read_timeout + MARGIN,
                "a slowloris connection is still open"
            );
        }
    });
    futures::future::join_all(slowloris).await;

    // A request that stalls midway on a kept-alive connection is cut off the same way.
    let mut stream = server.connect().await;
    assert_eq!(get_on(&mut stream, "/health").await.0, 200);
    stream.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
    assert!(
        closed_within(&mut stream, LIMITS.header_read_timeout + MARGIN)
            .await
            .is_some(),
        "a stalled second request kept its connection open"
    );
}

#[tokio::test]
async fn keep_alive_connections_are_closed_after_the_idle_timeout_not_the_header_timeout() {
    let server = Server::start(LIMITS).await;
    let mut stream = server.connect().await;
    assert_eq!(get_on(&mut stream, "/health").await.0, 200);
    // Idle between requests, the shorter header timeout does not apply...
    tokio::time::sleep(LIMITS.header_read_timeout + Duration::from_millis(500)).await;
    assert_eq!(get_on(&mut stream, "/health").await.0, 200);
    // ...but the idle timeout does.
    assert!(
        closed_within(&mut stream, LIMITS.idle_timeout + MARGIN)
            .await
            .is_some(),
        "an idle keep-alive connection is still open"
    );
}

/// Reads HTTP/2 frames until the server closes the connection; returns the frame types seen,
/// or `None` if it stayed open past `deadline`.
async fn h2_frames_until_closed(stream: &mut TcpStream, deadline: Duration) -> Option<Vec<u8>> {
    let mut types = Vec::new();
    let read = async {
        let mut header = [0u8; 9];
        loop {
            if stream.read_exact(&mut header).await.is_err() {
                return;
            }
            let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            types.push(header[3]);
            let mut payload = vec![0; length];
            if stream.read_exact(&mut payload).await.is_err() {
                return;
            }
        }
    };
    tokio::time::timeout(deadline, read).await.ok()?;
    Some(types)
}

#[tokio::test]
async fn idle_http2_connections_get_a_goaway_and_are_closed() {
    const GOAWAY: u8 = 7;
    let server = Server::start(LIMITS).await;
    let mut stream = server.connect().await;
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // An empty SETTINGS frame, then silence: no stream is ever opened.
    stream
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    // The header timeout no longer applies once the preface is in; the idle timeout does, plus
    // the grace a closing connection gets to answer the GOAWAY's ping.
    let frames = h2_frames_until_closed(&mut stream, LIMITS.idle_timeout + MARGIN * 2)
        .await
        .expect("an idle HTTP/2 connection is still open");
    assert!(frames.contains(&GOAWAY), "frames: {frames:?}");
}

#[tokio::test]
async fn transfers_longer_than_both_timeouts_complete() {
    let server = Server::start(LIMITS).await;
    let http1 = crate::client::builder().http1_only().build().unwrap();
    let http2 = crate::client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let server = &server;
    let slow = |client: reqwest::Client| async move {
        let response = client.get(server.url("/slow")).send().await.unwrap();
        let expected: Vec<u8> = (0..6u8).flat_map(|i| vec![i; 1000]).collect();
        assert_eq!(
            response.bytes().await.unwrap().as_ref(),
            expected.as_slice()
        );
    };
    let silent = |client: reqwest::Client| async move {
        let response = client.get(server.url("/silent")).send().await.unwrap();
        let expected = [[0u8; 10], [1u8; 10]].concat();
        assert_eq!(
            response.bytes().await.unwrap().as_ref(),
            expected.as_slice()
        );
    };
    // An upload whose body trickles in over `SLOW`.
    let upload = |client: reqwest::Client| async move {
        let chunks = futures::stream::iter(0..6).then(|_| async {
            tokio::time::sleep(SLOW / 6).await;
            Ok::<_, io::Error>(vec![7u8; 1000])
        });
        let response = client
            .post(server.url("/upload"))
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap();
        assert_eq!(response.text().await.unwrap(), "6000");
    };
    // All at once: on HTTP/2 they share one connection, which must stay open throughout.
    tokio::join!(
        slow(http1.clone()),
        silent(http1.clone()),
        upload(http1),
        slow(http2.clone()),
        silent(http2.clone()),
        upload(http2),
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503_until_one_is_released() {
    let limits = ListenerLimits {
        max_connections: 5,
        idle_timeout: Duration::from_secs(60),
        header_read_timeout: Duration::from_secs(60),
    };
    let server = Server::start(limits).await;
    let mut held = Vec::new();
    for _ in 0..limits.max_connections {
        let mut stream = server.connect().await;
        // Answered, so certainly accepted and counted.
        assert_eq!(get_on(&mut stream, "/health").await.0, 200);
        held.push(stream);
    }

    let mut over = server.connect().await;
    let (status, body) = get_on(&mut over, "/health").await;
    assert_eq!(status, 503);
    assert!(body.contains("UNAVAILABLE"), "{body}");
    assert!(
        closed_within(&mut over, MARGIN).await.is_some(),
        "a refused connection stays open"
    );
    let http2 = crate::client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let refused = http2.get(server.url("/health")).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()[RETRY_AFTER], "1");

    // Connections already served keep working.
    assert_eq!(get_on(&mut held[0], "/health").await.0, 200);

    // Once one closes, a new connection is served again.
    drop(held.pop());
    let deadline = Instant::now() + MARGIN;
    loop {
        let mut stream = server.connect().await;
        let (status, _) = get_on(&mut stream, "/health").await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "still refused after a release");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish() {
    let server = Server::start(LIMITS).await;
    let client = crate::client::builder().build().unwrap();
    let slow = client.get(server.url("/slow")).send().await.unwrap();
    server.shutdown.cancel();
    let body = slow.bytes().await.unwrap();
    assert_eq!(body.len(), 6000);
    tokio::time::timeout(MARGIN, server.task)
        .await
        .expect("serve returned after the request finished")
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[test]
fn a_repeating_warning_is_logged_once_per_interval_with_the_count_held_back() {
    let start = Instant::now();
    let mut throttle = Throttle::default();
    assert_eq!(throttle.allow(start), Some(0));
    assert_eq!(throttle.allow(start), None);
    assert_eq!(throttle.allow(start + WARNING_INTERVAL / 2), None);
    assert_eq!(throttle.allow(start + WARNING_INTERVAL), Some(2));
    assert_eq!(throttle.allow(start + WARNING_INTERVAL), None);
}

/// A raw protocol beside HTTP on one port: connections that open with its magic are handed
/// to it (here, it answers "raw" and the idle timeout it was given), any other is HTTP, a
/// wrong magic or silence past the header-read timeout is closed.
#[tokio::test]
async fn a_raw_protocol_is_told_from_http_by_its_magic() {
    const MAGIC: &[u8] = b"\0TEST-RAW\n";
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let raw = RawProtocol::new(MAGIC, |mut stream, idle, _| {
        Box::pin(async move {
            let answer = format!("raw {}s", idle.as_secs());
            let _ = stream.write_all(answer.as_bytes()).await;
        })
    });
    let task = tokio::spawn(run(
        listener,
        None,
        app(),
        Some(raw),
        LIMITS,
        shutdown.clone(),
    ));

    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(MAGIC).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "raw 2s");

    let mut http = TcpStream::connect(addr).await.unwrap();
    http.write_all(b"GET /health HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    http.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok"), "{response}");

    let mut wrong = TcpStream::connect(addr).await.unwrap();
    wrong.write_all(b"\0TEST-RAX\n").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(MARGIN, wrong.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?} {rest:?}");

    let mut silent = TcpStream::connect(addr).await.unwrap();
    let read = tokio::time::timeout(
        LIMITS.header_read_timeout + MARGIN,
        silent.read_to_end(&mut rest),
    )
    .await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");

    shutdown.cancel();
    task.await.unwrap().unwrap();
}

#[test]
#[should_panic(expected = "must not start like HTTP or TLS")]
fn a_raw_protocol_that_starts_like_http_is_refused() {
    RawProtocol::new(b"GET-LIKE", |_, _, _| Box::pin(async {}));
}
