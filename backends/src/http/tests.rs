//! The HTTP backend against a real axum server serving a directory (tower-http's `ServeDir`,
//! which answers HEAD and Range like a static mirror does).

use super::*;
use bytes::Bytes;
use shoal_core::Digest;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

struct Mirror {
    addr: SocketAddr,
    dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves `<dir>/<name>` at `/blobs/<name>` and answers 500 under `/broken/`.
async fn mirror() -> Mirror {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = axum::Router::new()
        .nest_service("/blobs", tower_http::services::ServeDir::new(dir.path()))
        .route(
            "/broken/{name}",
            axum::routing::get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Mirror { addr, dir, stop }
}

fn http_backend(template: &str) -> HttpBackend {
    HttpBackend::new(UrlTemplate::parse(template).expect("template")).expect("backend")
}

async fn read_all(stream: ByteStream) -> Vec<u8> {
    let chunks: Vec<Bytes> = stream.try_collect().await.expect("stream");
    chunks.concat()
}

#[test]
fn templates_are_checked_when_parsed() {
    assert!(matches!(
        UrlTemplate::parse("ftp://x/{hex}"),
        Err(UrlTemplateError::Scheme)
    ));
    assert!(matches!(
        UrlTemplate::parse("http://x/{namespace}/{hex}"),
        Err(UrlTemplateError::Placeholder(p)) if p == "namespace"
    ));
    for unbalanced in ["http://x/{hex", "http://x/hex}", "http://x/}{hex}"] {
        assert!(
            matches!(
                UrlTemplate::parse(unbalanced),
                Err(UrlTemplateError::Unbalanced)
            ),
            "{unbalanced}"
        );
    }
    let err = serde_json::from_str::<UrlTemplate>(r#""http://x/{oops}""#).expect_err("bad");
    assert!(
        err.to_string().contains("unknown placeholder {oops}"),
        "{err}"
    );
}

#[test]
fn templates_expand_blob_keys_and_refuse_digests_for_other_keys() {
    let digest = UrlTemplate::parse("https://m/v1/{digest}").expect("template");
    assert_eq!(
        digest.expand("blobs/sha256/ab12").as_deref(),
        Some("https://m/v1/sha256:ab12")
    );
    assert_eq!(digest.expand("repositories/a/_tags/v1"), None);
    assert_eq!(digest.expand("blobs/sha256/not-hex"), None);
    assert_eq!(
        digest.expand("blobs/sha512/cd34").as_deref(),
        Some("https://m/v1/sha512:cd34")
    );
    assert_eq!(digest.expand("blobs/sha384/cd34"), None);
    let key = UrlTemplate::parse("http://m/{key}").expect("template");
    assert_eq!(
        key.expand("repositories/a/_tags/v1").as_deref(),
        Some("http://m/repositories/a/_tags/v1")
    );
}

#[tokio::test]
async fn reads_blobs_whole_and_by_range_with_head_for_stat() {
    let mirror = mirror().await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let digest = Digest::of(&data);
    std::fs::write(mirror.dir.path().join(digest.hex()), &data).expect("write");
    let backend = http_backend(&format!("http://{}/blobs/{{hex}}", mirror.addr));
    let key = crate::blob_key(&digest);

    assert_eq!(backend.stat(&key).await.expect("stat"), Some(100_000));
    let whole = backend
        .get(&key, None)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(read_all(whole).await, data);
    let part = backend
        .get(&key, Some(1000..2000))
        .await
        .expect("get")
        .expect("present");
    assert_eq!(read_all(part).await, &data[1000..2000]);
    // Clamped to the end, like every backend.
    let tail = backend
        .get(&key, Some(99_990..200_000))
        .await
        .expect("get")
        .expect("present");
    assert_eq!(read_all(tail).await, &data[99_990..]);
    let empty = backend
        .get(&key, Some(100_000..100_000))
        .await
        .expect("get")
        .expect("present");
    assert!(read_all(empty).await.is_empty());
    assert!(matches!(
        backend.get(&key, Some(100_001..100_010)).await,
        Err(BackendError::RangeNotSatisfiable { len: 100_000, .. })
    ));

    let absent = crate::blob_key(&Digest::of(b"absent"));
    assert_eq!(backend.stat(&absent).await.expect("stat"), None);
    assert!(backend.get(&absent, None).await.expect("get").is_none());
    // A blob-only template holds no tags.
    assert_eq!(
        backend.stat("repositories/a/_tags/v1").await.expect("stat"),
        None
    );
}

#[tokio::test]
async fn writes_are_refused_and_server_errors_surface() {
    let mirror = mirror().await;
    let backend = http_backend(&format!("http://{}/broken/{{digest}}", mirror.addr));
    let key = crate::blob_key(&Digest::of(b"x"));
    assert!(matches!(
        backend
            .put(&key, futures::stream::empty().boxed(), None)
            .await,
        Err(BackendError::Unsupported {
            operation: "put",
            ..
        })
    ));
    assert!(matches!(
        backend.delete(&key).await,
        Err(BackendError::Unsupported {
            operation: "delete",
            ..
        })
    ));
    assert!(matches!(
        backend.list("blobs/").await,
        Err(BackendError::Unsupported {
            operation: "list",
            ..
        })
    ));
    let err = backend
        .get(&key, None)
        .await
        .err()
        .expect("500 is an error");
    assert!(err.to_string().contains("500"), "{err}");
    assert!(matches!(err, BackendError::Remote { .. }));

    // A port with nothing behind it: connection errors are remote errors, not absence.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let unreachable = http_backend(&format!("http://127.0.0.1:{port}/{{key}}"));
    assert!(matches!(
        unreachable.stat("blobs/sha256/00").await,
        Err(BackendError::Remote { .. })
    ));
}

#[tokio::test]
async fn take_bytes_stops_at_the_limit() {
    let stream: ByteStream = futures::stream::iter(
        [b"abc".as_slice(), b"defg", b"hij"].map(|c| Ok(Bytes::copy_from_slice(c))),
    )
    .boxed();
    assert_eq!(read_all(take_bytes(stream, 5)).await, b"abcde");
}
