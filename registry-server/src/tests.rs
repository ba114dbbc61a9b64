//! The shared layer end to end over HTTP requests (`tower::ServiceExt::oneshot`), with a
//! read-only backend that records what it was asked.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use shoal_core::{ByteRange, Digest, Name, Reference};
use shoal_service::RouteLabel;
use tower::ServiceExt;

use crate::{Query, RegistryBackend, RegistryError, StoredManifest, router};

const MANIFEST: &[u8] =
    br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
const BLOB: &[u8] = b"layer bytes";

/// Serves one manifest (also under the tag `v1`) and one blob; maps `?ns=mirror` to the
/// `mirror/` prefix.
#[derive(Clone, Default)]
struct Fake {
    calls: Arc<Mutex<Vec<String>>>,
}

impl Fake {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }
}

#[async_trait]
impl RegistryBackend for Fake {
    fn repository(&self, name: Name, query: &Query) -> Result<Name, RegistryError> {
        match query.get("ns") {
            Some("mirror") => Ok(Name::parse(&format!("mirror/{name}"))?),
            _ => Ok(name),
        }
    }

    async fn manifest(
        &self,
        name: &Name,
        reference: &Reference,
    ) -> Result<Option<StoredManifest>, RegistryError> {
        self.record(format!("manifest {name} {reference}"));
        let digest = Digest::of(MANIFEST);
        let known = match reference {
            Reference::Digest(asked) => *asked == digest,
            Reference::Tag(tag) => tag.as_str() == "v1",
        };
        Ok(known.then(|| StoredManifest {
            digest,
            bytes: Bytes::from_static(MANIFEST),
        }))
    }

    async fn get_blob(
        &self,
        name: &Name,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<Option<Response>, RegistryError> {
        self.record(format!("get_blob {name} {digest} {range:?}"));
        if *digest != Digest::of(BLOB) {
            return Ok(None);
        }
        let response = Response::builder()
            .header(CONTENT_LENGTH, BLOB.len())
            .body(Body::from(BLOB))
            .map_err(RegistryError::unavailable)?;
        Ok(Some(response))
    }

    async fn blob_length(
        &self,
        name: &Name,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        self.record(format!("blob_length {name} {digest}"));
        Ok((*digest == Digest::of(BLOB)).then_some(BLOB.len() as u64))
    }
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    label: &'static str,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// The spec error code of an error answer.
    fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .expect("an error body")
            .to_owned()
    }
}

async fn send(app: &Router, method: Method, uri: &str, range: Option<&str>) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(range) = range {
        request = request.header(http::header::RANGE, range);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let label = response
        .extensions()
        .get::<RouteLabel>()
        .expect("every answer is labelled")
        .0;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(headers["docker-distribution-api-version"], "registry/2.0");
    Answer {
        status,
        headers,
        label,
        body,
    }
}

#[tokio::test]
async fn the_version_check_answers_an_empty_object() {
    let app = router(Fake::default());
    for method in [Method::GET, Method::HEAD] {
        for path in ["/v2", "/v2/"] {
            let answer = send(&app, method.clone(), path, None).await;
            assert_eq!(answer.status, StatusCode::OK, "{method} {path}");
            assert_eq!(answer.label, "base");
            if method == Method::GET {
                assert_eq!(answer.json(), serde_json::json!({}));
            }
        }
    }
}

#[tokio::test]
async fn manifests_are_served_by_tag_and_digest_with_their_headers() {
    let fake = Fake::default();
    let app = router(fake.clone());
    let digest = Digest::of(MANIFEST);
    for (method, path, label) in [
        (
            Method::GET,
            "/v2/team/app/manifests/v1".to_owned(),
            "manifest_get",
        ),
        (
            Method::HEAD,
            format!("/v2/team/app/manifests/{digest}"),
            "manifest_head",
        ),
    ] {
        let answer = send(&app, method.clone(), &path, None).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert_eq!(answer.label, label);
        assert_eq!(
            answer.headers[CONTENT_TYPE],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(
            answer.headers["docker-content-digest"],
            digest.to_string().as_str()
        );
        assert_eq!(
            answer.headers[CONTENT_LENGTH],
            MANIFEST.len().to_string().as_str()
        );
        if method == Method::GET {
            assert_eq!(answer.body, MANIFEST);
        }
    }
    let answer = send(&app, Method::GET, "/v2/team/app/manifests/v2", None).await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.code(), "MANIFEST_UNKNOWN");
    assert_eq!(answer.label, "manifest_get");
}

#[tokio::test]
async fn blobs_carry_the_blob_headers_and_their_range() {
    let fake = Fake::default();
    let app = router(fake.clone());
    let digest = Digest::of(BLOB);
    let path = format!("/v2/a/b/c/blobs/{digest}");
    let answer = send(&app, Method::GET, &path, Some("bytes=2-")).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.label, "blob_get");
    assert_eq!(answer.body, BLOB);
    assert_eq!(
        answer.headers["docker-content-digest"],
        digest.to_string().as_str()
    );
    assert_eq!(answer.headers[ACCEPT_RANGES], "bytes");
    assert_eq!(answer.headers[CONTENT_TYPE], "application/octet-stream");
    assert_eq!(
        fake.calls(),
        [format!("get_blob a/b/c {digest} Some(From(2))")]
    );

    let answer = send(&app, Method::HEAD, &path, None).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.label, "blob_head");
    assert_eq!(
        answer.headers[CONTENT_LENGTH],
        BLOB.len().to_string().as_str()
    );
    assert_eq!(answer.headers[ACCEPT_RANGES], "bytes");
}

#[tokio::test]
async fn malformed_ranges_are_refused_before_the_backend_is_asked() {
    let fake = Fake::default();
    let app = router(fake.clone());
    let path = format!("/v2/a/blobs/{}", Digest::of(BLOB));
    for range in ["bytes=5-1", "bytes=0-1,3-4", "lines=1-2"] {
        let answer = send(&app, Method::GET, &path, Some(range)).await;
        assert_eq!(answer.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(answer.code(), "RANGE_INVALID");
        assert!(answer.headers.get(CONTENT_RANGE).is_none());
    }
    assert!(fake.calls().is_empty());
}

#[tokio::test]
async fn absent_blobs_are_blob_unknown_with_the_digest() {
    let app = router(Fake::default());
    let digest = Digest::of(b"nowhere");
    for method in [Method::GET, Method::HEAD] {
        let answer = send(&app, method.clone(), &format!("/v2/a/blobs/{digest}"), None).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND, "{method}");
        if method == Method::GET {
            assert_eq!(answer.code(), "BLOB_UNKNOWN");
            assert_eq!(
                answer.json()["errors"][0]["detail"]["digest"],
                digest.to_string()
            );
        }
    }
}

#[tokio::test]
async fn the_backend_names_the_repository() {
    let fake = Fake::default();
    let app = router(fake.clone());
    let digest = Digest::of(BLOB);
    send(
        &app,
        Method::HEAD,
        &format!("/v2/team/app/blobs/{digest}?ns=mirror"),
        None,
    )
    .await;
    send(
        &app,
        Method::GET,
        "/v2/team/app/manifests/v1?x=1&ns=other",
        None,
    )
    .await;
    assert_eq!(
        fake.calls(),
        [
            format!("blob_length mirror/team/app {digest}"),
            "manifest team/app v1".to_owned(),
        ]
    );
}

#[tokio::test]
async fn operations_the_backend_does_not_serve_are_unsupported() {
    let fake = Fake::default();
    let app = router(fake.clone());
    let id = "0f9e2c1a-7b3d-4c5e-8f60-1a2b3c4d5e6f";
    for (method, path) in [
        (Method::GET, "/v2/_catalog".to_owned()),
        (Method::GET, "/v2/a/tags/list".to_owned()),
        (Method::PUT, "/v2/a/manifests/v1".to_owned()),
        (Method::DELETE, "/v2/a/manifests/v1".to_owned()),
        (Method::POST, "/v2/a/blobs/uploads/".to_owned()),
        (Method::PATCH, format!("/v2/a/blobs/uploads/{id}")),
        (Method::PUT, format!("/v2/a/blobs/uploads/{id}")),
        (Method::GET, format!("/v2/a/blobs/uploads/{id}")),
        (Method::DELETE, format!("/v2/a/blobs/uploads/{id}")),
        // Methods no route has.
        (Method::POST, "/v2/".to_owned()),
        (Method::DELETE, format!("/v2/a/blobs/{}", Digest::of(BLOB))),
    ] {
        let answer = send(&app, method.clone(), &path, None).await;
        assert_eq!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(answer.code(), "UNSUPPORTED", "{method} {path}");
        assert_eq!(answer.label, "v2_unsupported", "{method} {path}");
    }
    assert!(fake.calls().is_empty());
}

#[tokio::test]
async fn invalid_paths_answer_their_spec_code() {
    let app = router(Fake::default());
    for (path, status, code) in [
        ("/v2/library/ubuntu", StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        ("/v2/a/tags/list/", StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
        (
            "/v2/UPPER/manifests/v1",
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            "/v2/a/blobs/sha256:abc",
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            "/v2/a/manifests/-bad",
            StatusCode::BAD_REQUEST,
            "TAG_INVALID",
        ),
        (
            "/v2/a/blobs/uploads/no.dots",
            StatusCode::NOT_FOUND,
            "BLOB_UPLOAD_UNKNOWN",
        ),
    ] {
        let answer = send(&app, Method::GET, path, None).await;
        assert_eq!(answer.status, status, "{path}");
        assert_eq!(answer.code(), code, "{path}");
        assert_eq!(answer.label, "v2_invalid_path", "{path}");
    }
}
