//! The build-index HTTP API end to end: a real `run` on a temp backend directory, checking tags
//! against in-memory test doubles of the origin.

mod support;

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::LINK;
use shoal_api::ApiError;
use shoal_core::{Digest, ErrorCode, Name, Tag};
use support::{
    BuildIndex, FakeOrigin, OCI_INDEX, OCI_MANIFEST, error_code, http_client, image_manifest,
    index_manifest, push_image, send,
};

fn name(s: &str) -> Name {
    Name::parse(s).expect("valid name")
}

fn tag(s: &str) -> Tag {
    Tag::parse(s).expect("valid tag")
}

/// The Registry V2 code of a failed client call.
fn remote_code(result: Result<(), ApiError>) -> ErrorCode {
    match result {
        Err(error @ ApiError::Remote { .. }) => error.code(),
        other => panic!("expected a remote error, got {other:?}"),
    }
}

async fn setup() -> (tempfile::TempDir, FakeOrigin, BuildIndex) {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = FakeOrigin::start().await;
    let index = BuildIndex::start(dir.path(), vec![origin.addr.to_string()]).await;
    (dir, origin, index)
}

#[tokio::test]
async fn a_tag_points_at_its_manifest_once_put() {
    let (_dir, origin, index) = setup().await;
    let manifest = Digest::of(&push_image(&origin, "app"));
    let (repo, latest) = (name("library/app"), tag("latest"));

    assert_eq!(index.client.get_tag(&repo, &latest).await.unwrap(), None);
    index
        .client
        .put_tag(&repo, &latest, &manifest)
        .await
        .unwrap();
    assert_eq!(
        index.client.get_tag(&repo, &latest).await.unwrap(),
        Some(manifest)
    );

    // Re-pointing a tag replaces the digest.
    let other = Digest::of(&push_image(&origin, "app v2"));
    index.client.put_tag(&repo, &latest, &other).await.unwrap();
    assert_eq!(
        index.client.get_tag(&repo, &latest).await.unwrap(),
        Some(other)
    );

    let (status, _, metrics) = send(http_client().get(index.url("/metrics"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics.contains("shoal_build_index_tags_put_total 2\n"),
        "{metrics}"
    );
    index.stop().await;
}

/// The value of an unlabelled metric sample on the build-index's `/metrics`.
async fn metric(index: &BuildIndex, sample: &str) -> Option<f64> {
    let (_, _, text) = send(http_client().get(index.url("/metrics"))).await;
    text.lines().find_map(|line| {
        let value = line.strip_prefix(sample)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

/// Polls `sample` until `holds` accepts its value; fails the test after a deadline.
async fn wait_metric(index: &BuildIndex, sample: &str, holds: impl Fn(f64) -> bool) {
    // Pending tags are retried after 1 s, 2 s, 4 s… (with jitter): a few retries fit easily.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let value = metric(index, sample).await;
        if value.is_some_and(&holds) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting on {sample} (last {value:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn tags_kept_during_a_backend_outage_are_counted_by_the_pending_tags_metrics() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = FakeOrigin::start().await;
    let root = dir.path().join("backend");
    let index = BuildIndex::start_with(&root, vec![origin.addr.to_string()], |config| {
        config.pending_dir = Some(dir.path().join("pending"));
    })
    .await;
    for sample in [
        "shoal_build_index_tag_writeback_pending",
        "shoal_build_index_tag_writeback_written_total",
        "shoal_build_index_tag_writeback_failures_total",
    ] {
        assert_eq!(metric(&index, sample).await, Some(0.0), "{sample}");
    }

    // The backend's root turns into a file: every tag write fails, so the tag is kept pending.
    std::fs::remove_dir_all(&root).expect("remove backend");
    std::fs::write(&root, b"not a directory").expect("block backend");
    let manifest = Digest::of(&push_image(&origin, "app"));
    let (repo, latest) = (name("team/app"), tag("latest"));
    index
        .client
        .put_tag(&repo, &latest, &manifest)
        .await
        .expect("accepted while the backend is down");
    // The tag and the record of its manifest.
    assert_eq!(
        metric(&index, "shoal_build_index_tag_writeback_pending").await,
        Some(2.0)
    );
    wait_metric(
        &index,
        "shoal_build_index_tag_writeback_failures_total",
        |failures| failures >= 1.0,
    )
    .await;

    std::fs::remove_file(&root).expect("unblock backend");
    shoal_backends::FilesystemBackend::new(&root).expect("restore backend");
    wait_metric(
        &index,
        "shoal_build_index_tag_writeback_written_total",
        |written| written == 2.0,
    )
    .await;
    assert_eq!(
        metric(&index, "shoal_build_index_tag_writeback_pending").await,
        Some(0.0)
    );
    let written = std::fs::read_to_string(root.join(shoal_backends::tag_key(&repo, &latest)));
    assert_eq!(written.expect("in the backend"), manifest.to_string());
    let record = index
        .client
        .manifest(&repo, &manifest)
        .await
        .expect("record");
    assert_eq!(record.expect("recorded").media_type, OCI_MANIFEST);
    index.stop().await;
}

#[tokio::test]
async fn a_manifest_missing_from_the_origins_is_unknown_and_not_tagged() {
    let (_dir, _origin, index) = setup().await;
    let (repo, latest) = (name("app"), tag("latest"));
    let absent = Digest::of(b"never pushed");
    let result = index.client.put_tag(&repo, &latest, &absent).await;
    assert_eq!(remote_code(result), ErrorCode::ManifestUnknown);
    assert_eq!(index.client.get_tag(&repo, &latest).await.unwrap(), None);
    index.stop().await;
}

#[tokio::test]
async fn a_missing_blob_is_named_and_the_tag_refused() {
    let (_dir, origin, index) = setup().await;
    let config = b"{}".to_vec();
    let layer = b"layer that was never uploaded".to_vec();
    origin.put(config.clone());
    let manifest = origin.put(image_manifest(&config, &[&layer]));
    let (repo, latest) = (name("app"), tag("latest"));

    let result = index.client.put_tag(&repo, &latest, &manifest).await;
    let Err(ApiError::Remote {
        status,
        code,
        message,
        ..
    }) = result
    else {
        panic!("expected a refusal, got {result:?}");
    };
    assert_eq!(status, 400);
    assert_eq!(code, Some(ErrorCode::ManifestBlobUnknown));
    assert!(
        message.contains(&Digest::of(&layer).to_string()),
        "{message}"
    );
    assert_eq!(index.client.get_tag(&repo, &latest).await.unwrap(), None);

    // A missing config blob is refused the same way.
    origin.put(layer.clone());
    origin.remove(&Digest::of(&config));
    let result = index.client.put_tag(&repo, &latest, &manifest).await;
    assert_eq!(remote_code(result), ErrorCode::ManifestBlobUnknown);

    let (_, _, metrics) = send(http_client().get(index.url("/metrics"))).await;
    assert!(
        metrics
            .contains("shoal_build_index_tag_rejected_total{code=\"MANIFEST_BLOB_UNKNOWN\"} 2\n"),
        "{metrics}"
    );
    index.stop().await;
}

#[tokio::test]
async fn a_blob_whose_size_differs_from_its_descriptor_is_refused() {
    let (_dir, origin, index) = setup().await;
    let config = b"{}".to_vec();
    let layer = b"twelve bytes".to_vec();
    origin.put(config.clone());
    origin.put(layer.clone());
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&image_manifest(&config, &[&layer])).unwrap();
    manifest["layers"][0]["size"] = 13.into();
    let manifest = origin.put(serde_json::to_vec(&manifest).unwrap());
    let result = index
        .client
        .put_tag(&name("app"), &tag("v1"), &manifest)
        .await;
    assert_eq!(remote_code(result), ErrorCode::ManifestInvalid);
    index.stop().await;
}

#[tokio::test]
async fn an_index_needs_every_child_and_every_child_blob() {
    let (_dir, origin, index) = setup().await;
    let (repo, multi) = (name("multi/arch"), tag("1.0"));
    let amd64 = push_image(&origin, "amd64");
    let arm64 = push_image(&origin, "arm64");
    let arm64_digest = Digest::of(&arm64);

    // One child manifest missing: refused, naming the child.
    origin.remove(&arm64_digest);
    let list = origin.put(index_manifest(&[&amd64, &arm64]));
    let result = index.client.put_tag(&repo, &multi, &list).await;
    let Err(ApiError::Remote { code, message, .. }) = result else {
        panic!("expected a refusal, got {result:?}");
    };
    assert_eq!(code, Some(ErrorCode::ManifestBlobUnknown));
    assert!(message.contains(&arm64_digest.to_string()), "{message}");

    // The child is back but one of its layers is not.
    origin.put(arm64.clone());
    let arm64_layer = Digest::of(b"layer b of arm64");
    origin.remove(&arm64_layer);
    let result = index.client.put_tag(&repo, &multi, &list).await;
    let Err(ApiError::Remote { code, message, .. }) = result else {
        panic!("expected a refusal, got {result:?}");
    };
    assert_eq!(code, Some(ErrorCode::ManifestBlobUnknown));
    assert!(message.contains(&arm64_layer.to_string()), "{message}");

    // Complete: accepted.
    origin.put(b"layer b of arm64".to_vec());
    index.client.put_tag(&repo, &multi, &list).await.unwrap();
    assert_eq!(
        index.client.get_tag(&repo, &multi).await.unwrap(),
        Some(list)
    );
    index.stop().await;
}

#[tokio::test]
async fn an_index_with_a_malformed_child_is_invalid() {
    let (_dir, origin, index) = setup().await;
    let child = b"{\"schemaVersion\": 2}".to_vec();
    origin.put(child.clone());
    let list = origin.put(index_manifest(&[&child]));
    let result = index.client.put_tag(&name("app"), &tag("v1"), &list).await;
    assert_eq!(remote_code(result), ErrorCode::ManifestInvalid);
    index.stop().await;
}

#[tokio::test]
async fn a_malformed_manifest_is_invalid() {
    let (_dir, origin, index) = setup().await;
    for body in [
        b"not json at all".to_vec(),
        b"{\"schemaVersion\": 1}".to_vec(),
        format!("{{\"schemaVersion\":2,\"mediaType\":\"{OCI_INDEX}\"}}").into_bytes(),
    ] {
        let digest = origin.put(body);
        let result = index
            .client
            .put_tag(&name("app"), &tag("v1"), &digest)
            .await;
        assert_eq!(remote_code(result), ErrorCode::ManifestInvalid);
    }
    index.stop().await;
}

#[tokio::test]
async fn tags_are_listed_sorted_in_pages_linked_to_the_next() {
    let (_dir, origin, index) = setup().await;
    let manifest = Digest::of(&push_image(&origin, "app"));
    let repo = name("library/app");
    for t in ["v3", "latest", "v1", "v2", "edge"] {
        index
            .client
            .put_tag(&repo, &tag(t), &manifest)
            .await
            .unwrap();
    }
    let http = http_client();

    let (status, headers, body) =
        send(http.get(index.url("/v1/repositories/library%2Fapp/tags"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get(LINK).is_none());
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"name": "library/app", "tags": ["edge", "latest", "v1", "v2", "v3"]})
    );

    let (status, headers, body) =
        send(http.get(index.url("/v1/repositories/library%2Fapp/tags?n=2&last=latest"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers.get(LINK).and_then(|v| v.to_str().ok()),
        Some("</v1/repositories/library%2Fapp/tags?n=2&last=v2>; rel=\"next\"")
    );
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["tags"], serde_json::json!(["v1", "v2"]));

    // Following the links with the typed client walks every tag exactly once.
    let mut seen = Vec::new();
    let mut last = None;
    loop {
        let page = index
            .client
            .list_tags(&repo, Some(2), last.as_deref())
            .await
            .unwrap()
            .expect("repository has tags");
        seen.extend(page.items);
        match page.next_last {
            Some(next) => last = Some(next),
            None => break,
        }
    }
    assert_eq!(seen, ["edge", "latest", "v1", "v2", "v3"]);

    // A repository without tags is unknown.
    assert_eq!(
        index
            .client
            .list_tags(&name("library/other"), None, None)
            .await
            .unwrap(),
        None
    );
    let (status, _, body) =
        send(http.get(index.url("/v1/repositories/library%2Fother/tags"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), ErrorCode::NameUnknown);

    // A malformed page size is refused.
    let (status, _, body) =
        send(http.get(index.url("/v1/repositories/library%2Fapp/tags?n=-1"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), ErrorCode::SizeInvalid);
    index.stop().await;
}

#[tokio::test]
async fn the_catalog_lists_each_tagged_repository_once_in_order() {
    let (_dir, origin, index) = setup().await;
    let manifest = Digest::of(&push_image(&origin, "app"));
    // Nested names and names sharing a prefix: key order and name order differ here.
    for (repo, t) in [
        ("a/b", "x"),
        ("a", "x"),
        ("a", "y"),
        ("a-b", "x"),
        ("library/ubuntu", "x"),
    ] {
        index
            .client
            .put_tag(&name(repo), &tag(t), &manifest)
            .await
            .unwrap();
    }
    let all = index.client.list_repositories(None, None).await.unwrap();
    assert_eq!(all.items, ["a", "a-b", "a/b", "library/ubuntu"]);
    assert_eq!(all.next_last, None);

    let (status, headers, body) = send(http_client().get(index.url("/v1/repositories?n=3"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers.get(LINK).and_then(|v| v.to_str().ok()),
        Some("</v1/repositories?n=3&last=a%2Fb>; rel=\"next\"")
    );
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"repositories": ["a", "a-b", "a/b"]})
    );

    let rest = index
        .client
        .list_repositories(Some(3), Some("a/b"))
        .await
        .unwrap();
    assert_eq!(rest.items, ["library/ubuntu"]);
    assert_eq!(rest.next_last, None);
    index.stop().await;
}

#[tokio::test]
async fn an_empty_catalog_is_an_empty_list() {
    let (_dir, _origin, index) = setup().await;
    let page = index.client.list_repositories(None, None).await.unwrap();
    assert!(page.items.is_empty());
    index.stop().await;
}

#[tokio::test]
async fn deleting_a_tag_removes_it_once() {
    let (_dir, origin, index) = setup().await;
    let manifest = Digest::of(&push_image(&origin, "app"));
    let (repo, latest) = (name("app"), tag("latest"));
    index
        .client
        .put_tag(&repo, &latest, &manifest)
        .await
        .unwrap();

    let (status, _, _) =
        send(http_client().delete(index.url("/v1/repositories/app/tags/latest"))).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(index.client.get_tag(&repo, &latest).await.unwrap(), None);

    let (status, _, body) =
        send(http_client().delete(index.url("/v1/repositories/app/tags/latest"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), ErrorCode::ManifestUnknown);
    assert!(!index.client.delete_tag(&repo, &latest).await.unwrap());

    // The repository had only that tag, so it is gone from listings too.
    assert_eq!(
        index.client.list_tags(&repo, None, None).await.unwrap(),
        None
    );
    assert!(
        index
            .client
            .list_repositories(None, None)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    index.stop().await;
}

#[tokio::test]
async fn tags_survive_a_restart_on_the_same_backend() {
    let dir = tempfile::tempdir().unwrap();
    let origin = FakeOrigin::start().await;
    let manifest = Digest::of(&push_image(&origin, "app"));
    let (repo, latest) = (name("library/app"), tag("latest"));

    let index = BuildIndex::start(dir.path(), vec![origin.addr.to_string()]).await;
    index
        .client
        .put_tag(&repo, &latest, &manifest)
        .await
        .unwrap();
    index.stop().await;

    let index = BuildIndex::start(dir.path(), vec![origin.addr.to_string()]).await;
    assert_eq!(
        index.client.get_tag(&repo, &latest).await.unwrap(),
        Some(manifest)
    );
    assert_eq!(
        index
            .client
            .list_repositories(None, None)
            .await
            .unwrap()
            .items,
        ["library/app"]
    );
    index.stop().await;
}

#[tokio::test]
async fn malformed_names_tags_and_digests_get_their_codes() {
    let (dir, origin, index) = setup().await;
    let manifest = Digest::of(&push_image(&origin, "app")).to_string();
    let http = http_client();
    let cases = [
        (
            "/v1/repositories/Library/tags/latest",
            manifest.clone(),
            ErrorCode::NameInvalid,
        ),
        (
            "/v1/repositories/a%2F..%2Fb/tags/latest",
            manifest.clone(),
            ErrorCode::NameInvalid,
        ),
        (
            "/v1/repositories/a%2F/tags/latest",
            manifest.clone(),
            ErrorCode::NameInvalid,
        ),
        (
            "/v1/repositories/%FF/tags/latest",
            manifest.clone(),
            ErrorCode::NameInvalid,
        ),
        (
            "/v1/repositories/app/tags/-latest",
            manifest.clone(),
            ErrorCode::TagInvalid,
        ),
        (
            "/v1/repositories/app/tags/a%2Fb",
            manifest.clone(),
            ErrorCode::TagInvalid,
        ),
        (
            "/v1/repositories/app/tags/latest",
            "sha256:not-hex".to_owned(),
            ErrorCode::DigestInvalid,
        ),
        (
            "/v1/repositories/app/tags/latest",
            "md5:abc".to_owned(),
            ErrorCode::DigestInvalid,
        ),
        (
            "/v1/repositories/app/tags/latest",
            String::new(),
            ErrorCode::DigestInvalid,
        ),
        (
            "/v1/repositories/app/tags/latest",
            "x".repeat(2048),
            ErrorCode::DigestInvalid,
        ),
    ];
    for (path, body, expected) in cases {
        let (status, _, text) = send(http.put(index.url(path)).body(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {text}");
        assert_eq!(error_code(&text), expected, "{path}");
    }
    // Reads validate the same way.
    let (status, _, text) = send(http.get(index.url("/v1/repositories/Library/tags/latest"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&text), ErrorCode::NameInvalid);

    // Nothing was written by any refused request.
    assert!(!dir.path().join("repositories").exists());
    let (_, _, metrics) = send(http.get(index.url("/metrics"))).await;
    assert!(
        metrics.contains("shoal_build_index_tag_rejected_total{code=\"DIGEST_INVALID\"} 4\n"),
        "{metrics}"
    );
    index.stop().await;
}

#[tokio::test]
async fn an_encoded_slash_keeps_the_repository_in_one_segment() {
    let (dir, origin, index) = setup().await;
    let manifest = Digest::of(&push_image(&origin, "ubuntu"));
    let http = http_client();
    let (status, _, text) = send(
        http.put(index.url("/v1/repositories/library%2Fubuntu/tags/22.04"))
            .body(manifest.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");

    // Stored under the decoded name, holding the digest text.
    let key = dir.path().join("repositories/library/ubuntu/_tags/22.04");
    assert_eq!(std::fs::read_to_string(key).unwrap(), manifest.to_string());

    let (status, headers, text) =
        send(http.get(index.url("/v1/repositories/library%2Fubuntu/tags/22.04"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(text, manifest.to_string());
    assert_eq!(
        headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("text/plain")
    );
    // An unencoded slash is a different path, not this repository.
    let (status, _, _) =
        send(http.get(index.url("/v1/repositories/library/ubuntu/tags/22.04"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    index.stop().await;
}

#[tokio::test]
async fn an_unreachable_origin_makes_tag_writes_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    // A port that was just free: nothing listens there.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let index = BuildIndex::start(dir.path(), vec![addr]).await;
    let result = index
        .client
        .put_tag(&name("app"), &tag("v1"), &Digest::of(b"manifest"))
        .await;
    let Err(ApiError::Remote {
        status,
        code,
        message,
        ..
    }) = result
    else {
        panic!("expected a refusal, got {result:?}");
    };
    assert_eq!(status, 503);
    assert_eq!(code, Some(ErrorCode::Unavailable));
    // The cause an operator needs is in the message, not just "error sending request".
    assert!(message.to_lowercase().contains("connect"), "{message}");
    index.stop().await;
}

#[tokio::test]
async fn each_digest_is_checked_on_the_origin_that_owns_it() {
    let dir = tempfile::tempdir().unwrap();
    let origins = [
        FakeOrigin::start().await,
        FakeOrigin::start().await,
        FakeOrigin::start().await,
    ];
    let addrs: Vec<String> = origins.iter().map(|o| o.addr.to_string()).collect();
    // Place every blob only on its rendezvous owner.
    let place = |bytes: Vec<u8>| {
        let digest = Digest::of(&bytes);
        let owner = shoal_core::rendezvous::owners(&digest, &addrs, 1)[0];
        let i = addrs.iter().position(|a| a == owner).unwrap();
        origins[i].put(bytes)
    };
    let mut layers = Vec::new();
    for i in 0..20 {
        layers.push(format!("layer {i}").into_bytes());
    }
    let config = b"{}".to_vec();
    place(config.clone());
    for layer in &layers {
        place(layer.clone());
    }
    let layer_refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
    let manifest = place(image_manifest(&config, &layer_refs));

    let index = BuildIndex::start(dir.path(), addrs.clone()).await;
    index
        .client
        .put_tag(&name("app"), &tag("v1"), &manifest)
        .await
        .unwrap();
    index.stop().await;
}

#[tokio::test]
async fn nested_indexes_are_followed_to_a_bounded_depth() {
    let (_dir, origin, index) = setup().await;
    // index → index → image: followed, and a missing layer at the bottom is still found.
    let image = push_image(&origin, "nested");
    let inner = index_manifest(&[&image]);
    origin.put(inner.clone());
    let outer = origin.put(index_manifest(&[&inner]));
    index
        .client
        .put_tag(&name("app"), &tag("nested"), &outer)
        .await
        .unwrap();
    let layer = Digest::of(b"layer a of nested");
    origin.remove(&layer);
    let result = index
        .client
        .put_tag(&name("app"), &tag("nested"), &outer)
        .await;
    assert_eq!(remote_code(result), ErrorCode::ManifestBlobUnknown);

    // A chain of indexes deeper than the limit is refused rather than walked.
    let mut chain = push_image(&origin, "deep");
    for _ in 0..6 {
        chain = index_manifest(&[&chain]);
        origin.put(chain.clone());
    }
    let result = index
        .client
        .put_tag(&name("app"), &tag("deep"), &Digest::of(&chain))
        .await;
    assert_eq!(remote_code(result), ErrorCode::ManifestInvalid);
    index.stop().await;
}
