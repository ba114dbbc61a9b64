//! The S3 backend against a real S3-compatible server: moto's server, which
//! `scripts/install-deps` installs into `~/.cache/shoal/moto-venv` (override with
//! `SHOAL_MOTO_SERVER`). Each test starts its own server on a free port and kills it after.

use super::*;
use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use shoal_core::Digest;
use tokio::process::{Child, Command};

/// moto imports its whole AWS model on start; a loaded CI machine needs a while.
const START_DEADLINE: Duration = Duration::from_secs(60);

struct Moto {
    endpoint: String,
    _child: Child,
}

fn moto_server() -> PathBuf {
    if let Some(path) = std::env::var_os("SHOAL_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    PathBuf::from(home).join(".cache/shoal/moto-venv/bin/moto_server")
}

/// Starts moto on a free port and creates `bucket`.
async fn moto(bucket: &str) -> Moto {
    let server = moto_server();
    assert!(
        server.is_file(),
        "{} is missing: run scripts/install-deps",
        server.display()
    );
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let child = Command::new(&server)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start moto_server");
    let endpoint = format!("http://127.0.0.1:{port}");
    let client = shoal_http_client::builder().build().expect("client");
    let deadline = Instant::now() + START_DEADLINE;
    // Creating the bucket doubles as the readiness probe.
    loop {
        match client.put(format!("{endpoint}/{bucket}")).send().await {
            Ok(response) if response.status().is_success() => break,
            Ok(response) => panic!("creating bucket: {}", response.status()),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("moto did not start within {START_DEADLINE:?}: {e}"),
        }
    }
    Moto {
        endpoint,
        _child: child,
    }
}

fn config(moto: &Moto, bucket: &str, prefix: Option<&str>) -> S3Config {
    S3Config {
        bucket: bucket.to_owned(),
        region: Some("us-east-1".to_owned()),
        endpoint: Some(moto.endpoint.clone()),
        access_key_id: Some("shoal-test".to_owned()),
        secret_access_key: Some("shoal-test-secret".to_owned()),
        prefix: prefix.map(str::to_owned),
        allow_http: true,
    }
}

fn body(data: Vec<u8>, chunk: usize) -> ByteStream {
    let chunks: Vec<io::Result<Bytes>> = data
        .chunks(chunk)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(chunks).boxed()
}

async fn read_all(stream: ByteStream) -> Vec<u8> {
    let chunks: Vec<Bytes> = stream.try_collect().await.expect("stream");
    chunks.concat()
}

#[tokio::test]
async fn put_get_stat_list_delete_against_a_real_s3_server() {
    let moto = moto("shoal").await;
    let backend = S3Backend::new(&config(&moto, "shoal", Some("cluster-a/"))).expect("backend");
    let key = "blobs/sha256/abc";
    assert_eq!(backend.stat(key).await.expect("stat"), None);
    assert!(backend.get(key, None).await.expect("get").is_none());

    backend
        .put(key, body(b"hello world".to_vec(), 3), Some(11))
        .await
        .expect("put");
    assert_eq!(backend.stat(key).await.expect("stat"), Some(11));
    let whole = backend.get(key, None).await.expect("get").expect("present");
    assert_eq!(read_all(whole).await, b"hello world");
    let part = backend
        .get(key, Some(6..100))
        .await
        .expect("get")
        .expect("present");
    assert_eq!(read_all(part).await, b"world");
    let inner = backend
        .get(key, Some(2..4))
        .await
        .expect("get")
        .expect("present");
    assert_eq!(read_all(inner).await, b"ll");
    let empty = backend
        .get(key, Some(11..11))
        .await
        .expect("get")
        .expect("present");
    assert!(read_all(empty).await.is_empty());
    assert!(matches!(
        backend.get(key, Some(12..20)).await,
        Err(BackendError::RangeNotSatisfiable { len: 11, .. })
    ));

    for tag in ["repositories/a/_tags/v1", "repositories/a/_tags/v2"] {
        backend
            .put(tag, body(b"sha256:x".to_vec(), 8), None)
            .await
            .expect("put tag");
    }
    backend
        .put("repositories/ab/_tags/v1", body(b"y".to_vec(), 1), None)
        .await
        .expect("put tag");
    assert_eq!(
        backend.list("repositories/a/").await.expect("list"),
        ["repositories/a/_tags/v1", "repositories/a/_tags/v2"]
    );
    // A prefix may end inside a component; keys come back without the configured prefix.
    assert_eq!(backend.list("repositories/a").await.expect("list").len(), 3);
    assert_eq!(backend.list("").await.expect("list").len(), 4);

    // The configured prefix really is where objects live: a prefix-less view sees it.
    let raw = S3Backend::new(&config(&moto, "shoal", None)).expect("backend");
    assert_eq!(
        raw.stat("cluster-a/blobs/sha256/abc").await.expect("stat"),
        Some(11)
    );

    assert!(backend.delete(key).await.expect("delete"));
    assert!(!backend.delete(key).await.expect("delete again"));
    assert_eq!(backend.stat(key).await.expect("stat"), None);
}

#[tokio::test]
async fn large_blobs_stream_up_in_parts_and_read_back_intact() {
    let moto = moto("big").await;
    let backend = S3Backend::new(&config(&moto, "big", None)).expect("backend");
    // Two and a half parts: exercises the switch to multipart and a short last part.
    let data: Vec<u8> = (0..PART_SIZE * 5 / 2).map(|i| (i % 253) as u8).collect();
    let digest = Digest::of(&data);
    let key = crate::blob_key(&digest);
    let len = data.len() as u64;
    backend
        .put(&key, body(data.clone(), 64 * 1024), Some(len))
        .await
        .expect("put");
    assert_eq!(backend.stat(&key).await.expect("stat"), Some(len));
    let got = read_all(
        backend
            .get(&key, None)
            .await
            .expect("get")
            .expect("present"),
    )
    .await;
    assert_eq!(Digest::of(&got), digest);
    let start = PART_SIZE as u64 - 10;
    let across = backend
        .get(&key, Some(start..start + 20))
        .await
        .expect("get")
        .expect("present");
    assert_eq!(
        read_all(across).await,
        &data[PART_SIZE - 10..PART_SIZE + 10]
    );
}

#[tokio::test]
async fn failed_puts_leave_no_object() {
    let moto = moto("fail").await;
    let backend = S3Backend::new(&config(&moto, "fail", None)).expect("backend");
    assert!(matches!(
        backend
            .put("small", body(b"abc".to_vec(), 3), Some(4))
            .await,
        Err(BackendError::LengthMismatch {
            expected: 4,
            actual: 3,
            ..
        })
    ));
    let big = vec![7u8; PART_SIZE + 1];
    assert!(matches!(
        backend.put("big", body(big, 1024 * 1024), Some(1)).await,
        Err(BackendError::LengthMismatch { .. })
    ));
    let broken: ByteStream = futures::stream::iter([
        Ok(Bytes::from(vec![1u8; PART_SIZE])),
        Err(io::Error::other("client went away")),
    ])
    .boxed();
    assert!(matches!(
        backend.put("broken", broken, None).await,
        Err(BackendError::Body { .. })
    ));
    assert!(backend.list("").await.expect("list").is_empty());
    assert!(matches!(
        backend.stat("a//b").await,
        Err(BackendError::InvalidKey { .. })
    ));
}
