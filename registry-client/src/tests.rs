//! The client against stand-in registries that answer what a real one would, or worse. The
//! CNCF registry itself (anonymous, basic, token auth) drives it in `tests/tests/registry_*.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use shoal_core::{Digest, Name, Reference};

use crate::{Credentials, Error, Mount, Options, RegistryClient};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn name(s: &str) -> Name {
    Name::parse(s).expect("name")
}

/// Serves `app` on a loopback port; returns its base URL.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn client(base: &str, credentials: Option<Credentials>) -> RegistryClient {
    let http = shoal_http_client::builder().build().expect("http");
    let options = Options {
        credentials,
        ..Options::default()
    };
    RegistryClient::with_options(base, http, options).expect("client")
}

#[tokio::test]
async fn a_manifest_that_does_not_hash_to_the_requested_digest_is_rejected() {
    let app = axum::Router::new().route(
        "/v2/repo/manifests/{reference}",
        get(|| async { ([(header::CONTENT_TYPE, OCI_MANIFEST)], "{}") }),
    );
    let registry = client(&serve(app).await, None);
    let wanted = Digest::of(b"something else");
    let err = registry
        .get_manifest(&name("repo"), &Reference::Digest(wanted))
        .await
        .expect_err("mismatching manifest must fail");
    assert!(
        matches!(err, Error::DigestMismatch { expected, .. } if expected == wanted),
        "{err}"
    );
}

#[tokio::test]
async fn lists_follow_relative_next_links_to_the_last_page() {
    async fn catalog(Query(query): Query<HashMap<String, String>>) -> Response {
        match query.get("last").map(String::as_str) {
            None => (
                [(header::LINK, r#"</v2/_catalog?last=b&n=2>; rel="next""#)],
                axum::Json(serde_json::json!({"repositories": ["a", "b"]})),
            )
                .into_response(),
            Some("b") => axum::Json(serde_json::json!({"repositories": ["c"]})).into_response(),
            Some(_) => StatusCode::BAD_REQUEST.into_response(),
        }
    }
    let app = axum::Router::new()
        .route("/v2/_catalog", get(catalog))
        .route(
            "/v2/gone/tags/list",
            get(|| async { StatusCode::NOT_FOUND }),
        );
    let registry = client(&serve(app).await, None);
    assert_eq!(registry.catalog().await.expect("catalog"), ["a", "b", "c"]);
    assert_eq!(registry.tags(&name("gone")).await.expect("tags"), None);
}

/// A registry that wants bearer tokens from its own `/token` realm, and counts token requests
/// by their scope parameters.
#[derive(Clone, Default)]
struct TokenRealm {
    issued: Arc<Mutex<Vec<Vec<String>>>>,
    base: Arc<Mutex<String>>,
}

async fn token(
    State(realm): State<TokenRealm>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
) -> Response {
    if headers.get(header::AUTHORIZATION).is_none() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let scopes = url_scopes(&query.unwrap_or_default());
    realm.issued.lock().expect("issued").push(scopes);
    axum::Json(serde_json::json!({"token": "tok", "expires_in": 300})).into_response()
}

fn url_scopes(query: &str) -> Vec<String> {
    let url = reqwest::Url::parse(&format!("http://x/?{query}")).expect("query");
    url.query_pairs()
        .filter(|(key, _)| key == "scope")
        .map(|(_, value)| value.into_owned())
        .collect()
}

async fn guarded(State(realm): State<TokenRealm>, headers: HeaderMap) -> Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v == "Bearer tok");
    if authorized {
        return (StatusCode::CREATED, [(header::LOCATION, "/v2/a/blobs/x")]).into_response();
    }
    let challenge = format!(
        r#"Bearer realm="{}/token",service="test""#,
        realm.base.lock().expect("base")
    );
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, challenge)],
    )
        .into_response()
}

#[tokio::test]
async fn bearer_tokens_are_fetched_once_per_scope_and_a_mount_asks_for_both_repositories() {
    let realm = TokenRealm::default();
    let app = axum::Router::new()
        .route("/token", get(token))
        .route("/v2/a/blobs/uploads/", post(guarded))
        .route("/v2/a/blobs/{digest}", axum::routing::head(guarded))
        .with_state(realm.clone());
    let base = serve(app).await;
    *realm.base.lock().expect("base") = base.clone();
    let credentials = Credentials {
        username: "u".to_owned(),
        password: "p".to_owned(),
    };
    let registry = client(&base, Some(credentials));
    let digest = Digest::of(b"blob");
    for _ in 0..3 {
        // 201 is not a HEAD answer the client expects, but it proves the request got through.
        let err = registry
            .head_blob(&name("a"), &digest)
            .await
            .expect_err("201");
        assert_eq!(err.status(), Some(StatusCode::CREATED), "{err}");
    }
    let mounted = registry
        .mount_blob(&name("a"), &digest, &name("b"))
        .await
        .expect("mount");
    assert!(matches!(mounted, Mount::Mounted));
    assert_eq!(
        *realm.issued.lock().expect("issued"),
        [
            vec!["repository:a:pull".to_owned()],
            vec![
                "repository:a:pull,push".to_owned(),
                "repository:b:pull".to_owned()
            ],
        ]
    );
}

#[tokio::test]
async fn a_refused_request_says_so_with_the_registry_error_codes() {
    let app = axum::Router::new().route(
        "/v2/a/blobs/uploads/",
        post(|| async {
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({"errors": [
                    {"code": "UNAUTHORIZED", "message": "authentication required"}
                ]})),
            )
        }),
    );
    let registry = client(&serve(app).await, None);
    let err = registry
        .start_upload(&name("a"))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Some("UNAUTHORIZED"));
    let message = err.to_string();
    assert!(
        message.contains("refused access") && message.contains("401"),
        "{message}"
    );
}
