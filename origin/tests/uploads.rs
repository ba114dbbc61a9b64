//! Upload sessions under misuse: bounds per client and in total (429), sessions bound to their
//! repository, failed commits that close their session, chunks whose declared span does not
//! match, chunks for a cancelled session (answered, not reset), and idle sessions that hold no
//! file descriptor.

mod common;

use std::net::IpAddr;
use std::path::Path;

use common::{TestOrigin, files_under};
use futures::StreamExt;
use reqwest::StatusCode;
use shoal_core::Cidr;
use shoal_core::{Digest, Name};
use shoal_origin::UploadsConfig;

async fn error_code(resp: reqwest::Response) -> String {
    let body: serde_json::Value = resp.json().await.expect("json error body");
    body["code"].as_str().expect("code").to_owned()
}

fn name(text: &str) -> Name {
    Name::parse(text).expect("name")
}

/// A client whose connections come from `addr` (any 127.0.0.0/8 address is loopback on Linux).
fn client_from(addr: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(addr.parse::<IpAddr>().expect("address"))
        .build()
        .expect("client")
}

async fn start_from(
    origin: &TestOrigin,
    http: &reqwest::Client,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = http.post(origin.url("/uploads?namespace=team%2Fapp"));
    for (header, value) in extra {
        request = request.header(*header, *value);
    }
    request.send().await.expect("post")
}

fn limited(total: usize, per_client: usize, trusted: &[&str]) -> UploadsConfig {
    UploadsConfig {
        max_sessions: total,
        max_sessions_per_client: per_client,
        trusted_forwarders: trusted
            .iter()
            .map(|t| t.parse::<Cidr>().expect("cidr"))
            .collect(),
        ..UploadsConfig::default()
    }
}

#[tokio::test]
async fn sessions_are_bounded_per_client_and_in_total_with_429() {
    let origin = TestOrigin::start_with(limited(7, 3, &["127.0.0.1"])).await;
    let flood = client_from("127.0.0.2");
    for _ in 0..3 {
        assert_eq!(
            start_from(&origin, &flood, &[]).await.status(),
            StatusCode::ACCEPTED
        );
    }
    let refused = start_from(&origin, &flood, &[]).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(refused).await, "TOOMANYREQUESTS");
    // 127.0.0.2 is not a trusted forwarder: naming another client changes nothing.
    let spoofed = start_from(&origin, &flood, &[("shoal-client-addr", "10.9.9.9")]).await;
    assert_eq!(spoofed.status(), StatusCode::TOO_MANY_REQUESTS);

    // A trusted forwarder (the proxy) opens sessions for the clients it names, each bounded.
    let proxy = client_from("127.0.0.1");
    for _ in 0..3 {
        let resp = start_from(&origin, &proxy, &[("shoal-client-addr", "10.0.0.1")]).await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
    }
    let resp = start_from(&origin, &proxy, &[("shoal-client-addr", "10.0.0.1")]).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let resp = start_from(&origin, &proxy, &[("shoal-client-addr", "10.0.0.2")]).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    // The total bound (7) is reached: any other client is refused too.
    let resp = start_from(&origin, &proxy, &[("shoal-client-addr", "10.0.0.3")]).await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(files_under(&origin.store_dir("uploads")).len(), 7);
    assert_eq!(
        origin.metric("shoal_origin_upload_sessions").await,
        Some(7.0)
    );
    assert_eq!(
        origin
            .metric("shoal_origin_upload_sessions_refused_total{scope=\"client\"}")
            .await,
        Some(3.0)
    );
    assert_eq!(
        origin
            .metric("shoal_origin_upload_sessions_refused_total{scope=\"total\"}")
            .await,
        Some(1.0)
    );
    origin.stop().await;
}

#[tokio::test]
async fn a_session_answers_only_through_its_own_repository() {
    let origin = TestOrigin::start().await;
    let api = origin.api();
    let (team, other) = (name("team/app"), name("other/app"));
    let id = api.start_upload(Some(&team), None).await.expect("start");
    api.patch_upload(&id, Some(&team), Some(0), None, b"abc".to_vec().into())
        .await
        .expect("patch");
    let digest = Digest::of(b"abcdef");
    for wrong in [Some(&other), None] {
        let err = api
            .patch_upload(&id, wrong, None, None, b"def".to_vec().into())
            .await
            .expect_err("patch through another repository");
        assert!(err.is(shoal_core::ErrorCode::BlobUploadUnknown), "{err}");
        let err = api.upload_status(&id, wrong).await.expect_err("status");
        assert!(err.is(shoal_core::ErrorCode::BlobUploadUnknown), "{err}");
        let err = api
            .commit_upload(&id, &digest, wrong, Some(b"def".to_vec().into()))
            .await
            .expect_err("commit");
        assert!(err.is(shoal_core::ErrorCode::BlobUploadUnknown), "{err}");
        let err = api.cancel_upload(&id, wrong).await.expect_err("cancel");
        assert!(err.is(shoal_core::ErrorCode::BlobUploadUnknown), "{err}");
    }
    // Nothing changed: the session still holds its 3 bytes and commits in its repository.
    assert_eq!(
        api.upload_status(&id, Some(&team)).await.expect("status"),
        3
    );
    api.commit_upload(&id, &digest, Some(&team), Some(b"def".to_vec().into()))
        .await
        .expect("commit");
    assert_eq!(api.stat_blob(&digest, None).await.expect("stat"), Some(6));
    origin.stop().await;
}

/// A chunk sent to a session that is gone is answered 404, not cut off: the origin reads the
/// refused body before it answers, so the sender (a proxy forwarding a client's chunk) gets the
/// answer instead of a reset connection.
#[tokio::test]
async fn a_chunk_for_a_cancelled_session_is_answered_not_reset() {
    let origin = TestOrigin::start().await;
    let api = origin.api();
    let team = name("team/app");
    let id = api.start_upload(Some(&team), None).await.expect("start");
    api.cancel_upload(&id, Some(&team)).await.expect("cancel");
    // Sent in parts as a forwarding proxy sends them, so the origin answers (and, without
    // reading the rest, closes) while the sender is still writing.
    let chunk = vec![7u8; 1 << 20];
    let trickled = |chunk: &Vec<u8>| {
        let parts: Vec<bytes::Bytes> = chunk
            .chunks(64 << 10)
            .map(bytes::Bytes::copy_from_slice)
            .collect();
        reqwest::Body::wrap_stream(futures::stream::iter(parts).then(|part| async move {
            tokio::task::yield_now().await;
            Ok::<_, std::io::Error>(part)
        }))
    };
    for round in 0..20 {
        let err = api
            .patch_upload(&id, Some(&team), None, None, trickled(&chunk))
            .await
            .expect_err("patch of a cancelled session");
        assert!(
            err.is(shoal_core::ErrorCode::BlobUploadUnknown),
            "round {round}: {err}"
        );
        let err = api
            .commit_upload(
                &id,
                &Digest::of(&chunk),
                Some(&team),
                Some(trickled(&chunk)),
            )
            .await
            .expect_err("commit of a cancelled session");
        assert!(
            err.is(shoal_core::ErrorCode::BlobUploadUnknown),
            "round {round}: {err}"
        );
    }
    origin.stop().await;
}

#[tokio::test]
async fn a_commit_with_an_unusable_digest_closes_its_session() {
    let origin = TestOrigin::start().await;
    let team = name("team/app");
    let sha384 = format!("sha384:{}", "ab".repeat(48));
    for digest in ["garbage", "sha256:nothex", sha384.as_str(), ""] {
        let id = origin
            .api()
            .start_upload(Some(&team), None)
            .await
            .expect("start");
        let query = if digest.is_empty() {
            String::new()
        } else {
            format!("&digest={digest}")
        };
        let resp = origin
            .http
            .put(origin.url(&format!("/uploads/{id}?namespace=team%2Fapp{query}")))
            .body("final chunk")
            .send()
            .await
            .expect("commit");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{digest:?}");
        assert_eq!(error_code(resp).await, "DIGEST_INVALID", "{digest:?}");
        let err = origin
            .api()
            .upload_status(&id, Some(&team))
            .await
            .expect_err("the session is closed");
        assert!(
            err.is(shoal_core::ErrorCode::BlobUploadUnknown),
            "{digest:?}: {err}"
        );
    }
    assert!(files_under(&origin.store_dir("uploads")).is_empty());
    assert_eq!(
        origin.metric("shoal_origin_upload_sessions").await,
        Some(0.0)
    );
    origin.stop().await;
}

#[tokio::test]
async fn a_chunk_that_does_not_fill_its_declared_span_is_416_and_appends_nothing() {
    let origin = TestOrigin::start().await;
    let api = origin.api();
    let team = name("team/app");
    let id = api.start_upload(Some(&team), None).await.expect("start");
    api.patch_upload(
        &id,
        Some(&team),
        Some(0),
        Some(10),
        b"0123456789".to_vec().into(),
    )
    .await
    .expect("an exact chunk");
    let upload = origin.url(&format!("/uploads/{id}?namespace=team%2Fapp"));
    // (offset, declared length, body): short, long, and starting past the end.
    let cases: [(u64, u64, &[u8]); 3] = [(10, 10, b"abc"), (10, 2, b"abc"), (20, 3, b"abc")];
    for (offset, length, body) in cases {
        // Streamed, so no Content-Length tells the server the length up front.
        let body = reqwest::Body::wrap_stream(futures::stream::iter([Ok::<_, std::io::Error>(
            bytes::Bytes::from_static(body),
        )]));
        let resp = origin
            .http
            .patch(&upload)
            .header("upload-offset", offset)
            .header("chunk-length", length)
            .body(body)
            .send()
            .await
            .expect("patch");
        assert_eq!(
            resp.status(),
            StatusCode::RANGE_NOT_SATISFIABLE,
            "{offset} {length}"
        );
        assert_eq!(error_code(resp).await, "RANGE_INVALID");
        assert_eq!(
            api.upload_status(&id, Some(&team)).await.expect("status"),
            10
        );
    }
    let digest = Digest::of(b"0123456789abc");
    api.commit_upload(&id, &digest, Some(&team), Some(b"abc".to_vec().into()))
        .await
        .expect("the running digest saw none of the refused bytes");
    origin.stop().await;
}

/// Descriptors this process holds open on files under `dir`.
fn open_fds_under(dir: &Path) -> usize {
    let dir = dir.canonicalize().expect("canonical dir");
    std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .count()
}

#[tokio::test]
async fn idle_sessions_hold_no_file_descriptor() {
    let origin = TestOrigin::start().await;
    let api = origin.api();
    let team = name("team/app");
    for _ in 0..50 {
        let id = api.start_upload(Some(&team), None).await.expect("start");
        api.patch_upload(&id, Some(&team), Some(0), None, vec![7u8; 100_000].into())
            .await
            .expect("patch");
    }
    let uploads = origin.store_dir("uploads");
    assert_eq!(files_under(&uploads).len(), 50);
    assert_eq!(open_fds_under(&uploads), 0);
    origin.stop().await;
}
