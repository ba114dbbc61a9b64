//! Failure paths of the layout download against a stand-in registry that serves corrupt data
//! (the registry client's own checks are tested in `shoal-registry-client`).

use std::path::Path;

use shoal_core::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::RegistryClient;
use crate::Error;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Serves `body` with status 200 to every request on a loopback port (one request per
/// connection), standing in for a registry that returns corrupt data.
async fn serve_body(body: &'static [u8]) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body).await;
        }
    });
    format!("http://{addr}")
}

fn layout_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("blobs/sha256"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_blob_whose_bytes_do_not_match_its_digest_is_rejected_and_not_kept() {
    let client = RegistryClient::new(&serve_body(b"hello").await).expect("client");
    let dest = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dest.path().join("blobs/sha256")).expect("mkdir");
    let wanted = Digest::of(b"world");
    let err = client
        .pull_blob("repo", &wanted, 5, dest.path(), &|_| {})
        .await
        .expect_err("corrupt blob must fail");
    assert!(
        matches!(err, Error::DigestMismatch { expected, actual }
            if expected == wanted && actual == Digest::of(b"hello")),
        "{err}"
    );
    assert!(layout_files(dest.path()).is_empty());
}

#[tokio::test]
async fn a_blob_of_the_wrong_length_is_rejected() {
    let client = RegistryClient::new(&serve_body(b"hello").await).expect("client");
    let dest = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dest.path().join("blobs/sha256")).expect("mkdir");
    let digest = Digest::of(b"hello");
    let err = client
        .pull_blob("repo", &digest, 4, dest.path(), &|_| {})
        .await
        .expect_err("over-long blob must fail");
    assert!(
        matches!(
            err,
            Error::SizeMismatch {
                expected: 4,
                actual: 5,
                ..
            }
        ),
        "{err}"
    );
    assert!(layout_files(dest.path()).is_empty());
}

#[test]
fn a_bare_host_port_means_plain_http() {
    let client = RegistryClient::new("127.0.0.1:5000").expect("client");
    assert_eq!(client.base_url().as_str(), "http://127.0.0.1:5000/");
}
