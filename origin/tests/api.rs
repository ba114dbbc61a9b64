//! The origin HTTP API of `docs/internal-api.md`, exercised against an in-process origin.

mod common;

use bytes::Bytes;
use common::{TestOrigin, blob, files_under, wait_for};
use reqwest::{Body, StatusCode, header};
use shoal_core::{Digest, MetainfoBuilder, Name};

async fn error_code(resp: reqwest::Response) -> String {
    let body: serde_json::Value = resp.json().await.expect("json error body");
    body["code"].as_str().expect("code").to_owned()
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing {name}"))
        .to_str()
        .expect("ascii header")
}

/// A body sent with chunked transfer encoding, in uneven pieces.
fn chunked(data: &[u8]) -> Body {
    let pieces: Vec<Result<Bytes, std::io::Error>> = data
        .chunks(70_001)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Body::wrap_stream(futures::stream::iter(pieces))
}

async fn start_upload(origin: &TestOrigin) -> String {
    let resp = origin
        .http
        .post(origin.url("/uploads?namespace=library%2Falpine"))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let id = header(&resp, "upload-id").to_owned();
    assert_eq!(header(&resp, "location"), format!("/uploads/{id}"));
    assert_eq!(header(&resp, "upload-offset"), "0");
    id
}

#[tokio::test]
async fn chunked_upload_commits_and_is_written_back() {
    let origin = TestOrigin::start().await;
    let data = blob(3 * 1024 * 1024 + 5, 1);
    let digest = Digest::of(&data);
    let id = start_upload(&origin).await;
    let upload = origin.url(&format!("/uploads/{id}?namespace=library%2Falpine"));

    let (first, rest) = data.split_at(1000);
    let (second, last) = rest.split_at(rest.len() - 10);
    let resp = origin
        .http
        .patch(&upload)
        .header("upload-offset", "0")
        .body(first.to_vec())
        .send()
        .await
        .expect("patch");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&resp, "upload-offset"), "1000");
    // A multi-MiB chunked body: request bodies stream, no size limit applies.
    let resp = origin
        .http
        .patch(&upload)
        .header("upload-offset", "1000")
        .body(chunked(second))
        .send()
        .await
        .expect("patch");
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let offset = (data.len() - 10).to_string();
    assert_eq!(header(&resp, "upload-offset"), offset);

    let resp = origin.http.get(&upload).send().await.expect("status");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "upload-offset"), offset);

    let resp = origin
        .http
        .put(format!("{upload}&digest={digest}"))
        .body(last.to_vec())
        .send()
        .await
        .expect("commit");
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "docker-content-digest"), digest.to_string());

    let got = origin
        .http
        .get(origin.url(&format!("/blobs/{digest}")))
        .send()
        .await
        .expect("get");
    assert_eq!(got.status(), StatusCode::OK);
    assert_eq!(got.bytes().await.expect("body"), data);

    let backend_copy = origin.backend_blob(&digest);
    wait_for("write-back", || {
        std::fs::read(&backend_copy).is_ok_and(|b| b == data)
    })
    .await;
    assert_eq!(
        origin.metric("shoal_origin_uploads_committed_total").await,
        Some(1.0)
    );
    assert!(
        origin
            .metric("shoal_origin_blob_bytes_served_total")
            .await
            .is_some_and(|n| n >= data.len() as f64)
    );
    origin
        .wait_metric("shoal_origin_writeback_completed_total", 1.0)
        .await;
    assert_eq!(
        origin.metric("shoal_origin_writeback_queue_depth").await,
        Some(0.0)
    );
    assert!(files_under(&origin.store_dir("uploads")).is_empty());
    origin.stop().await;
}

#[tokio::test]
async fn chunk_at_the_wrong_offset_is_refused_with_the_actual_offset() {
    let origin = TestOrigin::start().await;
    let id = start_upload(&origin).await;
    let upload = origin.url(&format!("/uploads/{id}?namespace=library%2Falpine"));
    origin
        .http
        .patch(&upload)
        .body("abc")
        .send()
        .await
        .expect("patch");
    let resp = origin
        .http
        .patch(&upload)
        .header("upload-offset", "5")
        .body("junk")
        .send()
        .await
        .expect("patch");
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&resp, "upload-offset"), "3");
    assert_eq!(error_code(resp).await, "RANGE_INVALID");
    let resp = origin
        .http
        .patch(&upload)
        .header("upload-offset", "three")
        .body("junk")
        .send()
        .await
        .expect("patch");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let alpine = Name::parse("library/alpine").expect("name");
    assert_eq!(
        origin
            .api()
            .upload_status(&id, Some(&alpine))
            .await
            .expect("status"),
        3
    );
    origin.stop().await;
}

#[tokio::test]
async fn commit_with_the_wrong_digest_discards_the_upload() {
    let origin = TestOrigin::start().await;
    let id = start_upload(&origin).await;
    let upload = origin.url(&format!("/uploads/{id}?namespace=library%2Falpine"));
    origin
        .http
        .patch(&upload)
        .body("real bytes")
        .send()
        .await
        .expect("patch");
    let claimed = Digest::of(b"other bytes");
    let resp = origin
        .http
        .put(format!("{upload}&digest={claimed}"))
        .send()
        .await
        .expect("commit");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "DIGEST_INVALID");

    let resp = origin.http.get(&upload).send().await.expect("status");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "BLOB_UPLOAD_UNKNOWN");
    let head = origin
        .http
        .head(origin.url(&format!("/blobs/{claimed}")))
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), StatusCode::NOT_FOUND);
    assert!(files_under(&origin.store_dir("uploads")).is_empty());
    assert!(files_under(&origin.store_dir("blobs")).is_empty());
    assert_eq!(
        origin
            .metric(r#"shoal_origin_digest_mismatch_total{source="upload"}"#)
            .await,
        Some(1.0)
    );

    // A monolithic PUT with the wrong bytes is refused the same way.
    let resp = origin
        .http
        .put(origin.url(&format!("/blobs/{claimed}")))
        .body("not these")
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "DIGEST_INVALID");
    assert!(files_under(&origin.store_dir("blobs")).is_empty());
    origin.stop().await;
}

#[tokio::test]
async fn ranges_heads_and_monolithic_puts() {
    let origin = TestOrigin::start().await;
    let data = blob(100_000, 2);
    let digest = Digest::of(&data);
    let url = origin.url(&format!("/blobs/{digest}"));
    for _ in 0..2 {
        // Idempotent: the second PUT of a present blob is also 201.
        let resp = origin
            .http
            .put(&url)
            .body(chunked(&data))
            .send()
            .await
            .expect("put");
        assert_eq!(resp.status(), StatusCode::CREATED);
    }

    let resp = origin.http.head(&url).send().await.expect("head");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-length"), "100000");
    assert_eq!(header(&resp, "docker-content-digest"), digest.to_string());

    let resp = origin
        .http
        .get(&url)
        .header(header::RANGE, "bytes=10-19")
        .send()
        .await
        .expect("range");
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&resp, "content-range"), "bytes 10-19/100000");
    assert_eq!(header(&resp, "content-length"), "10");
    assert_eq!(header(&resp, "accept-ranges"), "bytes");
    assert_eq!(resp.bytes().await.expect("body"), data[10..20]);

    let resp = origin
        .http
        .get(&url)
        .header(header::RANGE, "bytes=-5")
        .send()
        .await
        .expect("suffix");
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.expect("body"), data[99_995..]);

    let resp = origin
        .http
        .get(&url)
        .header(header::RANGE, "bytes=100000-")
        .send()
        .await
        .expect("unsatisfiable");
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&resp, "content-range"), "bytes */100000");
    assert_eq!(error_code(resp).await, "RANGE_INVALID");

    let resp = origin
        .http
        .get(&url)
        .header(header::RANGE, "pages=1-2")
        .send()
        .await
        .expect("malformed");
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    let missing = origin.url(&format!("/blobs/{}", Digest::of(b"missing")));
    let resp = origin.http.get(&missing).send().await.expect("get");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");
    let resp = origin.http.head(&missing).send().await.expect("head");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    origin.stop().await;
}

#[tokio::test]
async fn metainfo_is_served_and_stored_beside_the_blob() {
    let origin = TestOrigin::start().await;
    let data = blob(700_000, 3);
    let digest = Digest::of(&data);
    let ns = Name::parse("team/app").expect("name");
    let api = origin.api();
    api.put_blob(&digest, Some(&ns), data.clone().into())
        .await
        .expect("put");

    let mut builder = MetainfoBuilder::new(data.len() as u64);
    builder.update(&data);
    let expected = builder.finish().expect("metainfo");
    let got = api.metainfo(&digest, Some(&ns)).await.expect("metainfo");
    assert_eq!(got, Some(expected));
    let beside = origin.store_blob(&digest).with_file_name("metainfo.json");
    assert!(beside.exists());

    let unknown = Digest::of(b"unknown");
    let resp = origin
        .http
        .get(origin.url(&format!("/blobs/{unknown}/metainfo")))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_code(resp).await, "BLOB_UNKNOWN");
    origin.stop().await;
}

#[tokio::test]
async fn typed_client_roundtrip() {
    let origin = TestOrigin::start().await;
    let api = origin.api();
    let data = blob(300_000, 4);
    let digest = Digest::of(&data);
    let ns = Name::parse("library/busybox").expect("name");
    let id = api.start_upload(Some(&ns), None).await.expect("start");
    let n = api
        .patch_upload(
            &id,
            Some(&ns),
            Some(0),
            None,
            data[..200_000].to_vec().into(),
        )
        .await
        .expect("patch");
    assert_eq!(n, 200_000);
    assert_eq!(
        api.upload_status(&id, Some(&ns)).await.expect("status"),
        200_000
    );
    api.commit_upload(
        &id,
        &digest,
        Some(&ns),
        Some(data[200_000..].to_vec().into()),
    )
    .await
    .expect("commit");
    assert_eq!(
        api.stat_blob(&digest, Some(&ns)).await.expect("stat"),
        Some(300_000)
    );
    let resp = api
        .get_blob(&digest, Some(&ns), Some("bytes=0-9"))
        .await
        .expect("get");
    assert_eq!(resp.bytes().await.expect("body"), data[..10]);

    let id = api.start_upload(None, None).await.expect("start");
    api.cancel_upload(&id, None).await.expect("cancel");
    let err = api.upload_status(&id, None).await.expect_err("cancelled");
    assert!(err.is(shoal_core::ErrorCode::BlobUploadUnknown), "{err}");
    origin.stop().await;
}

#[tokio::test]
async fn blob_only_in_the_backend_is_pulled_through() {
    let origin = TestOrigin::start().await;
    let data = blob(1_234_567, 5);
    let digest = Digest::of(&data);
    origin.put_in_backend(&digest, &data);
    let url = origin.url(&format!("/blobs/{digest}"));

    let resp = origin.http.head(&url).send().await.expect("head");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-length"), "1234567");
    assert!(
        !origin.store_blob(&digest).exists(),
        "HEAD must not download"
    );

    let resp = origin.http.get(&url).send().await.expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-length"), "1234567");
    assert_eq!(resp.bytes().await.expect("body"), data);
    // The last chunk is only released after the blob is verified and stored.
    assert_eq!(
        std::fs::read(origin.store_blob(&digest)).expect("stored"),
        data
    );
    assert_eq!(
        origin.metric("shoal_origin_pullthrough_total").await,
        Some(1.0)
    );

    // A range of a blob only the backend has: stored whole first, then the range is served.
    let other = blob(50_000, 6);
    let other_digest = Digest::of(&other);
    origin.put_in_backend(&other_digest, &other);
    let resp = origin
        .http
        .get(origin.url(&format!("/blobs/{other_digest}")))
        .header(header::RANGE, "bytes=49990-")
        .send()
        .await
        .expect("range");
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.expect("body"), other[49_990..]);
    assert!(origin.store_blob(&other_digest).exists());

    // Metainfo of a backend-only blob pulls it in too (preheat).
    let third = blob(10_000, 7);
    let third_digest = Digest::of(&third);
    origin.put_in_backend(&third_digest, &third);
    let metainfo = origin
        .api()
        .metainfo(&third_digest, None)
        .await
        .expect("metainfo");
    assert_eq!(metainfo.map(|m| m.length()), Some(10_000));
    assert!(origin.store_blob(&third_digest).exists());
    origin.stop().await;
}

#[tokio::test]
async fn corrupt_backend_blob_fails_the_stream_and_stores_nothing() {
    let origin = TestOrigin::start().await;
    // Over one 1 MiB read of the backend: the headers go before the last byte is checked.
    let data = blob(2_600_000, 8);
    let digest = Digest::of(&data);
    let mut corrupt = data.clone();
    corrupt[2_599_999] ^= 0xff;
    origin.put_in_backend(&digest, &corrupt);

    let resp = origin
        .http
        .get(origin.url(&format!("/blobs/{digest}")))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.bytes().await;
    match body {
        Err(_) => {}
        Ok(bytes) => panic!("a corrupt blob was delivered whole ({} bytes)", bytes.len()),
    }
    assert!(!origin.store_blob(&digest).exists());
    assert!(files_under(&origin.store_dir("tmp")).is_empty());
    assert_eq!(
        origin
            .metric(r#"shoal_origin_digest_mismatch_total{source="backend"}"#)
            .await,
        Some(1.0)
    );

    // A blob of one read is verified before the headers: an error response.
    let small = blob(600_000, 9);
    let small_digest = Digest::of(&small);
    let mut corrupt = small.clone();
    corrupt[599_999] ^= 0xff;
    origin.put_in_backend(&small_digest, &corrupt);
    let resp = origin
        .http
        .get(origin.url(&format!("/blobs/{small_digest}")))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(resp).await, "UNAVAILABLE");
    assert!(!origin.store_blob(&small_digest).exists());

    // With a Range the blob is fetched first, so the failure is a proper error response.
    let resp = origin
        .http
        .get(origin.url(&format!("/blobs/{digest}")))
        .header(header::RANGE, "bytes=0-9")
        .send()
        .await
        .expect("range");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_code(resp).await, "UNAVAILABLE");
    assert!(!origin.store_blob(&digest).exists());
    origin.stop().await;
}

#[tokio::test]
async fn garbage_in_paths_and_queries_is_a_client_error() {
    let origin = TestOrigin::start().await;
    for path in [
        "/blobs/sha256:xyz",
        "/blobs/notadigest/metainfo",
        "/blobs/md5:d41d8cd98f00b204e9800998ecf8427e",
        "/blobs/sha256:%2e%2e%2f%2e%2e",
    ] {
        let resp = origin.http.get(origin.url(path)).send().await.expect("get");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(error_code(resp).await, "DIGEST_INVALID", "{path}");
    }
    let resp = origin
        .http
        .put(origin.url("/blobs/sha256:XYZ"))
        .body("x")
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    for path in ["/uploads/garbage", "/uploads/..%2F..%2Fetc"] {
        let resp = origin
            .http
            .patch(origin.url(path))
            .body("x")
            .send()
            .await
            .expect("patch");
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error_code(resp).await, "BLOB_UPLOAD_UNKNOWN");
    }

    let digest = Digest::of(b"x");
    let resp = origin
        .http
        .get(origin.url(&format!("/blobs/{digest}?namespace=UPPER%2Fcase")))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "NAME_INVALID");

    // A commit with a malformed digest discards the upload.
    let id = start_upload(&origin).await;
    let resp = origin
        .http
        .put(origin.url(&format!(
            "/uploads/{id}?digest=sha256:nothex&namespace=library%2Falpine"
        )))
        .send()
        .await
        .expect("commit");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_code(resp).await, "DIGEST_INVALID");
    let resp = origin
        .http
        .get(origin.url(&format!("/uploads/{id}?namespace=library%2Falpine")))
        .send()
        .await
        .expect("status");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    origin.stop().await;
}

#[tokio::test]
async fn abandoned_uploads_are_discarded() {
    let origin = TestOrigin::start_with(shoal_origin::UploadsConfig {
        idle_timeout: std::time::Duration::from_millis(100),
        ..Default::default()
    })
    .await;
    let id = start_upload(&origin).await;
    let upload = origin.url(&format!("/uploads/{id}?namespace=library%2Falpine"));
    origin
        .http
        .patch(&upload)
        .body("partial")
        .send()
        .await
        .expect("patch");
    let uploads = origin.store_dir("uploads");
    wait_for("the idle upload to be discarded", || {
        files_under(&uploads).is_empty()
    })
    .await;
    let resp = origin.http.get(&upload).send().await.expect("status");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    origin.stop().await;
}

#[tokio::test]
async fn origin_metrics_are_exposed() {
    let origin = TestOrigin::start().await;
    for sample in [
        "shoal_origin_blob_bytes_served_total",
        "shoal_origin_uploads_committed_total",
        "shoal_origin_pullthrough_total",
        "shoal_origin_writeback_queue_depth",
        "shoal_origin_writeback_oldest_age_seconds",
        "shoal_origin_writeback_completed_total",
        "shoal_origin_writeback_failures_total",
    ] {
        assert_eq!(origin.metric(sample).await, Some(0.0), "{sample}");
    }
    origin.stop().await;
}

#[test]
fn binary_prints_help() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal-origin"))
        .arg("--help")
        .output()
        .expect("run shoal-origin --help");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--config"), "{text}");
    assert!(text.contains("origin"), "{text}");
}
