//! Bad input at the proxy gets the distribution spec's status and JSON error code, never a 500,
//! and changes nothing on disk: every case snapshots the origin's data dir and the backend before
//! and after.

use std::future::Future;

use anyhow::{Result, ensure};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use shoal_core::Digest;
use shoal_tests::raw_http;
use shoal_tests::snapshot::{diff, snapshot};
use shoal_tests::v2::{Registry, expect_error, header, status_and_code};
use shoal_tests::{Cluster, ClusterOptions};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

async fn setup() -> Result<(Cluster, Registry)> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let registry = Registry::new(&cluster.proxy_url())?;
    Ok((cluster, registry))
}

/// Runs `case` and fails if it changed any file under the origin's data dir or the backend.
async fn changes_nothing<F, Fut>(cluster: &Cluster, name: &str, case: F) -> Result<()>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let dirs = [cluster.origin_data_dir(), cluster.backend_dir()];
    let dirs = [dirs[0].as_path(), dirs[1].as_path()];
    // Blobs pushed as set-up are still being written back to the backend; let that finish so
    // only the case's own effects show. Waiting again afterwards lets anything the case wrongly
    // queued reach the backend, where the snapshot sees it.
    cluster.wait_for_writeback().await?;
    let before = snapshot(&dirs)?;
    case().await?;
    cluster.wait_for_writeback().await?;
    let after = snapshot(&dirs)?;
    ensure!(
        before == after,
        "{name}: rejected input changed files on disk:\n{}",
        diff(&before, &after)
    );
    Ok(())
}

#[tokio::test]
async fn a_commit_with_the_wrong_digest_is_digest_invalid_and_discards_the_upload() -> Result<()> {
    let (cluster, registry) = setup().await?;
    changes_nothing(&cluster, "wrong digest", || async {
        let url = registry.start_upload("bad/digest").await?;
        let mut commit = url.clone();
        commit
            .query_pairs_mut()
            .append_pair("digest", &Digest::of(b"other bytes").to_string());
        let response = registry
            .http
            .put(commit)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(b"these bytes".to_vec())
            .send()
            .await?;
        expect_error(response, 400, "DIGEST_INVALID").await?;
        let response = registry
            .http
            .head(registry.url(&format!(
                "v2/bad/digest/blobs/{}",
                Digest::of(b"these bytes")
            )))
            .send()
            .await?;
        ensure!(
            response.status() == StatusCode::NOT_FOUND,
            "a blob failing its digest check must not be stored: HEAD {}",
            response.status()
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn malformed_repository_names_are_name_invalid() -> Result<()> {
    let (cluster, _registry) = setup().await?;
    let long = format!("a/{}", "b".repeat(298));
    let names = ["../etc", "a/../../etc", "UPPER/case", long.as_str()];
    for name in names {
        changes_nothing(&cluster, name, || async {
            // Raw bytes on the socket: an HTTP library would resolve the `..` segments itself.
            for (method, target) in [
                ("POST", format!("/v2/{name}/blobs/uploads/")),
                ("GET", format!("/v2/{name}/manifests/latest")),
                ("GET", format!("/v2/{name}/tags/list")),
            ] {
                let response = raw_http::request(cluster.proxy_addr(), method, &target).await?;
                ensure!(
                    response.status == 400
                        && response.error_code().as_deref() == Some("NAME_INVALID"),
                    "{method} {target}: expected 400 NAME_INVALID, got {} {:?}",
                    response.status,
                    String::from_utf8_lossy(&response.body)
                );
            }
            Ok(())
        })
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_manifest_referencing_a_missing_blob_is_manifest_blob_unknown() -> Result<()> {
    let (cluster, registry) = setup().await?;
    let config_bytes = br#"{"architecture":"amd64","os":"linux"}"#;
    let config = registry.push_blob("bad/manifest", config_bytes).await?;
    let missing = Digest::of(b"a layer nobody pushed");
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_MANIFEST}\",\"config\":{{\"mediaType\":\
         \"application/vnd.oci.image.config.v1+json\",\"size\":{},\"digest\":\"{config}\"}},\
         \"layers\":[{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"size\":21,\
         \"digest\":\"{missing}\"}}]}}",
        config_bytes.len()
    );
    changes_nothing(&cluster, "missing blob", || async {
        let response = registry
            .http
            .put(registry.url("v2/bad/manifest/manifests/v1"))
            .header(CONTENT_TYPE, OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await?;
        expect_error(response, 400, "MANIFEST_BLOB_UNKNOWN").await?;
        let response = registry
            .http
            .get(registry.url("v2/bad/manifest/manifests/v1"))
            .send()
            .await?;
        expect_error(response, 404, "MANIFEST_UNKNOWN").await
    })
    .await
}

#[tokio::test]
async fn a_malformed_manifest_is_manifest_invalid() -> Result<()> {
    let (cluster, registry) = setup().await?;
    let bodies = [
        "{not json",
        "[]",
        r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
        r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"x","size":1,"digest":"sha256:nothex"},"layers":[]}"#,
    ];
    for body in bodies {
        changes_nothing(&cluster, body, || async {
            let response = registry
                .http
                .put(registry.url("v2/bad/malformed/manifests/v1"))
                .header(CONTENT_TYPE, OCI_MANIFEST)
                .body(body)
                .send()
                .await?;
            expect_error(response, 400, "MANIFEST_INVALID").await
        })
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn an_unknown_upload_id_is_blob_upload_unknown() -> Result<()> {
    let (cluster, registry) = setup().await?;
    changes_nothing(&cluster, "unknown upload", || async {
        for id in ["3f2504e0-4f89-11d3-9a0c-0305e82c3301", "not-an-upload-id"] {
            let url = registry.url(&format!("v2/bad/uploads/blobs/uploads/{id}"));
            let mut commit = url.clone();
            commit
                .query_pairs_mut()
                .append_pair("digest", &Digest::of(b"x").to_string());
            let requests = [
                registry.http.get(url.clone()),
                registry
                    .http
                    .patch(url.clone())
                    .header(CONTENT_RANGE, "0-0")
                    .header(CONTENT_LENGTH, 1)
                    .body("x"),
                registry.http.put(commit).body("x"),
                registry.http.delete(url.clone()),
            ];
            for request in requests {
                expect_error(request.send().await?, 404, "BLOB_UPLOAD_UNKNOWN").await?;
            }
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn an_out_of_order_chunk_is_range_not_satisfiable() -> Result<()> {
    let (_cluster, registry) = setup().await?;
    let url = registry.start_upload("bad/order").await?;
    let response = registry
        .http
        .patch(url)
        .header(CONTENT_RANGE, "0-99")
        .header(CONTENT_LENGTH, 100)
        .body(vec![1u8; 100])
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::ACCEPTED,
        "first chunk: {}",
        response.status()
    );
    let url = registry.location(&response)?;

    // A gap: bytes 100..199 were never sent.
    let response = registry
        .http
        .patch(url.clone())
        .header(CONTENT_RANGE, "200-299")
        .header(CONTENT_LENGTH, 100)
        .body(vec![2u8; 100])
        .send()
        .await?;
    let (status, code) = status_and_code(response).await;
    ensure!(
        status == StatusCode::RANGE_NOT_SATISFIABLE,
        "out-of-order chunk: expected 416, got {status} {code:?}"
    );

    // The session is intact at its old offset.
    let response = registry.http.get(url).send().await?;
    ensure!(
        response.status() == StatusCode::NO_CONTENT,
        "status: {}",
        response.status()
    );
    ensure!(
        header(&response, "range") == "0-99",
        "Range {:?}",
        header(&response, "range")
    );
    Ok(())
}

#[tokio::test]
async fn a_range_past_the_end_of_a_blob_is_range_not_satisfiable() -> Result<()> {
    let (_cluster, registry) = setup().await?;
    let bytes = vec![7u8; 1000];
    let digest = registry.push_blob("bad/range", &bytes).await?;
    let url = registry.url(&format!("v2/bad/range/blobs/{digest}"));
    for range in ["bytes=1000-1010", "bytes=1000-", "bytes=5000-"] {
        let response = registry
            .http
            .get(url.clone())
            .header(RANGE, range)
            .send()
            .await?;
        let (status, code) = status_and_code(response).await;
        ensure!(
            status == StatusCode::RANGE_NOT_SATISFIABLE,
            "{range}: expected 416, got {status} {code:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn unsupported_and_garbage_digests_are_digest_invalid_never_a_server_error() -> Result<()> {
    let (cluster, registry) = setup().await?;
    let sha384 = format!("sha384:{}", "ab".repeat(48));
    let digests = [
        sha384.as_str(),
        "sha256:short",
        "sha256:ZZZZ5ac0e2fba38f1f8b77f3f6c0a87ee0ae6db9c3bdc1e4a0b1d5c2e7e8f9a0",
        "not-a-digest",
        "sha256:",
    ];
    changes_nothing(&cluster, "bad digests", || async {
        for digest in digests {
            let blob = registry.url(&format!("v2/bad/digests/blobs/{digest}"));
            expect_error(
                registry.http.get(blob.clone()).send().await?,
                400,
                "DIGEST_INVALID",
            )
            .await?;
            // HEAD answers carry no body, so only the status can be checked.
            let head = registry.http.head(blob).send().await?;
            ensure!(
                head.status() == StatusCode::BAD_REQUEST,
                "HEAD blob {digest}: expected 400, got {}",
                head.status()
            );

            let session = registry.start_upload("bad/digests").await?;
            let mut commit = session.clone();
            commit.query_pairs_mut().append_pair("digest", digest);
            let response = registry.http.put(commit).body("abc").send().await?;
            expect_error(response, 400, "DIGEST_INVALID").await?;
            // Clean up the session (if the bad commit left it open) so the disk snapshot
            // compares like with like.
            let cancel = registry.http.delete(session).send().await?;
            ensure!(
                cancel.status() == StatusCode::NO_CONTENT
                    || cancel.status() == StatusCode::NOT_FOUND,
                "cancelling the session: {}",
                cancel.status()
            );
        }
        Ok(())
    })
    .await
}
