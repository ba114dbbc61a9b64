//! Auth through the router: challenges, refusals and the requests that reach the backend.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use shoal_core::{ByteRange, Digest, Name, Reference};
use tower::ServiceExt;

use super::token::tests::{ISSUER, Issuer, SERVICE};
use super::*;
use crate::{Query, RegistryBackend, StoredManifest, router_with_auth};

/// Knows nothing, records every call that reaches it, accepts uploads.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Recorder {
    fn calls(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

#[async_trait]
impl RegistryBackend for Recorder {
    async fn manifest(
        &self,
        name: &Name,
        _reference: &Reference,
    ) -> Result<Option<StoredManifest>, RegistryError> {
        self.0.lock().unwrap().push(format!("manifest {name}"));
        Ok(None)
    }

    async fn get_blob(
        &self,
        _name: &Name,
        _digest: &Digest,
        _range: Option<ByteRange>,
    ) -> Result<Option<Response>, RegistryError> {
        Ok(None)
    }

    async fn blob_length(&self, _: &Name, _: &Digest) -> Result<Option<u64>, RegistryError> {
        Ok(None)
    }

    async fn start_upload(
        &self,
        name: &Name,
        query: &Query,
        _client: Option<std::net::IpAddr>,
        _body: Body,
    ) -> Result<Response, RegistryError> {
        self.0.lock().unwrap().push(format!(
            "upload {name} from={:?} mount={:?}",
            query.get("from"),
            query.get("mount")
        ));
        Ok(StatusCode::ACCEPTED.into_response())
    }
}

struct Answer {
    status: StatusCode,
    challenge: Option<String>,
    code: Option<String>,
}

async fn send(app: &Router, method: Method, uri: &str, authorization: Option<&str>) -> Answer {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(value) = authorization {
        request = request.header(AUTHORIZATION, value);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let challenge = response
        .headers()
        .get(WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let code = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|body| body["errors"][0]["code"].as_str().map(str::to_owned));
    Answer {
        status,
        challenge,
        code,
    }
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

fn htpasswd_line(user: &str, password: &str) -> String {
    let hash = bcrypt::hash_with_result(password, 4)
        .unwrap()
        .format_for_version(bcrypt::Version::TwoY);
    format!("{user}:{hash}\n")
}

fn htpasswd_app(recorder: &Recorder) -> Router {
    let config: AuthConfig = serde_json::from_value(json!({
        "htpasswd": {"path": "unused"},
        "groups": {"ci": ["jenkins"]},
        "rules": [
            {"repository": "public/.*", "anonymous_pull": true, "push": ["@ci"]},
            {"repository": "prod/.*", "pull": ["@ci"], "push": ["@ci"]},
        ],
    }))
    .unwrap();
    let text = htpasswd_line("jenkins", "ci-pass") + &htpasswd_line("carol", "c-pass");
    let auth = Auth::from_text(&config, &text).unwrap();
    router_with_auth(recorder.clone(), Some(auth))
}

#[tokio::test]
async fn htpasswd_logins_are_checked_and_challenged() {
    let recorder = Recorder::default();
    let app = htpasswd_app(&recorder);
    let answer = send(&app, Method::GET, "/v2/", None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.code.as_deref(), Some("UNAUTHORIZED"));
    assert_eq!(answer.challenge.as_deref(), Some("Basic realm=\"shoal\""));

    let ok = send(&app, Method::GET, "/v2/", Some(&basic("carol", "c-pass"))).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.challenge, None);

    for wrong in [
        basic("carol", "wrong"),
        basic("nobody", "c-pass"),
        "Basic !!!".to_owned(),
        "Bearer some.jwt.token".to_owned(),
    ] {
        let answer = send(&app, Method::GET, "/v2/", Some(&wrong)).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{wrong}");
        assert_eq!(answer.challenge.as_deref(), Some("Basic realm=\"shoal\""));
    }
    assert!(recorder.calls().is_empty());
}

#[tokio::test]
async fn htpasswd_rules_decide_per_repository() {
    let recorder = Recorder::default();
    let app = htpasswd_app(&recorder);
    let (carol, jenkins) = (basic("carol", "c-pass"), basic("jenkins", "ci-pass"));
    // Public: anonymous pulls reach the backend; anonymous pushes are challenged; carol is
    // known but may not push.
    let pulled = send(&app, Method::GET, "/v2/public/app/manifests/v1", None).await;
    assert_eq!(pulled.code.as_deref(), Some("MANIFEST_UNKNOWN"));
    let push = "/v2/public/app/blobs/uploads/";
    let anonymous = send(&app, Method::POST, push, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert!(anonymous.challenge.is_some());
    let denied = send(&app, Method::POST, push, Some(&carol)).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert_eq!(denied.code.as_deref(), Some("DENIED"));
    assert_eq!(denied.challenge, None);
    let pushed = send(&app, Method::POST, push, Some(&jenkins)).await;
    assert_eq!(pushed.status, StatusCode::ACCEPTED);
    // Private: no anonymous pull, carol denied, ci allowed.
    let manifest = "/v2/prod/app/manifests/v1";
    assert_eq!(
        send(&app, Method::GET, manifest, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let denied = send(&app, Method::HEAD, manifest, Some(&carol)).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let pulled = send(&app, Method::GET, manifest, Some(&jenkins)).await;
    assert_eq!(pulled.code.as_deref(), Some("MANIFEST_UNKNOWN"));
    assert_eq!(
        recorder.calls(),
        [
            "manifest public/app",
            "upload public/app from=None mount=None",
            "manifest prod/app",
        ]
    );
    // The catalog needs a login.
    assert_eq!(
        send(&app, Method::GET, "/v2/_catalog", None).await.status,
        StatusCode::UNAUTHORIZED
    );
}

fn token_app(recorder: &Recorder, issuer: &Issuer) -> Router {
    let config: AuthConfig = serde_json::from_value(json!({
        "token": {"realm": "http://127.0.0.1:1/token", "service": SERVICE, "issuer": ISSUER,
                  "root_cert_bundle": "unused"},
        "rules": [{"repository": "public/.*", "anonymous_pull": true}],
    }))
    .unwrap();
    let auth = Auth::from_text(&config, &issuer.cert_pem).unwrap();
    router_with_auth(recorder.clone(), Some(auth))
}

fn bearer(issuer: &Issuer, access: Value, overrides: Value) -> String {
    format!("Bearer {}", issuer.token(access, overrides))
}

#[tokio::test]
async fn tokens_are_challenged_with_realm_service_and_scope() {
    let (recorder, issuer) = (Recorder::default(), Issuer::new());
    let app = token_app(&recorder, &issuer);
    let realm = "Bearer realm=\"http://127.0.0.1:1/token\",service=\"shoal-test\"";
    let answer = send(&app, Method::GET, "/v2/", None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.challenge.as_deref(), Some(realm));
    let answer = send(&app, Method::POST, "/v2/team/app/blobs/uploads/", None).await;
    assert_eq!(
        answer.challenge.unwrap(),
        format!("{realm},scope=\"repository:team/app:pull,push\"")
    );
    // docker login: a token with no access at all still logs in.
    let empty = bearer(&issuer, json!([]), json!({}));
    assert_eq!(
        send(&app, Method::GET, "/v2/", Some(&empty)).await.status,
        StatusCode::OK
    );
    // Public repositories need no token to pull.
    let pulled = send(&app, Method::GET, "/v2/public/app/manifests/v1", None).await;
    assert_eq!(pulled.code.as_deref(), Some("MANIFEST_UNKNOWN"));
}

#[tokio::test]
async fn token_scopes_decide_and_bad_tokens_are_invalid() {
    let (recorder, issuer) = (Recorder::default(), Issuer::new());
    let app = token_app(&recorder, &issuer);
    let pull_only = bearer(
        &issuer,
        json!([{"type": "repository", "name": "team/app", "actions": ["pull"]}]),
        json!({}),
    );
    let pulled = send(
        &app,
        Method::GET,
        "/v2/team/app/manifests/v1",
        Some(&pull_only),
    )
    .await;
    assert_eq!(pulled.code.as_deref(), Some("MANIFEST_UNKNOWN"));
    let pushed = send(
        &app,
        Method::POST,
        "/v2/team/app/blobs/uploads/",
        Some(&pull_only),
    )
    .await;
    assert_eq!(pushed.status, StatusCode::FORBIDDEN);
    assert_eq!(pushed.code.as_deref(), Some("DENIED"));
    let other = send(
        &app,
        Method::GET,
        "/v2/team/other/manifests/v1",
        Some(&pull_only),
    )
    .await;
    assert_eq!(other.code.as_deref(), Some("DENIED"));
    let catalog = send(&app, Method::GET, "/v2/_catalog", Some(&pull_only)).await;
    assert_eq!(catalog.code.as_deref(), Some("DENIED"));

    let now = jsonwebtoken::get_current_timestamp();
    let expired = bearer(
        &issuer,
        json!([{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}]),
        json!({"exp": now - 3600}),
    );
    let stranger = Issuer::new();
    let foreign = bearer(&stranger, json!([]), json!({}));
    for token in [
        expired,
        foreign,
        "Bearer garbage".to_owned(),
        basic("a", "b"),
    ] {
        let answer = send(
            &app,
            Method::POST,
            "/v2/team/app/blobs/uploads/",
            Some(&token),
        )
        .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{token}");
        assert_eq!(answer.code.as_deref(), Some("UNAUTHORIZED"));
        assert!(
            answer
                .challenge
                .unwrap()
                .contains("scope=\"repository:team/app:pull,push\"")
        );
    }
    assert_eq!(recorder.calls(), ["manifest team/app"]);
}

#[tokio::test]
async fn mounts_from_unreadable_repositories_become_plain_uploads() {
    let (recorder, issuer) = (Recorder::default(), Issuer::new());
    let app = token_app(&recorder, &issuer);
    let digest = Digest::of(b"x");
    let token = bearer(
        &issuer,
        json!([{"type": "repository", "name": "team/b", "actions": ["pull", "push"]},
               {"type": "repository", "name": "team/readable", "actions": ["pull"]}]),
        json!({}),
    );
    for from in ["team/secret", "team/readable", "public/app", "NOT A NAME"] {
        let uri = format!(
            "/v2/team/b/blobs/uploads/?mount={digest}&from={}",
            from.replace(' ', "+")
        );
        let answer = send(&app, Method::POST, &uri, Some(&token)).await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{from}");
    }
    assert_eq!(
        recorder.calls(),
        [
            "upload team/b from=None mount=None".to_owned(),
            format!("upload team/b from=Some(\"team/readable\") mount=Some(\"{digest}\")"),
            format!("upload team/b from=Some(\"public/app\") mount=Some(\"{digest}\")"),
            "upload team/b from=None mount=None".to_owned(),
        ]
    );
}

#[test]
fn configs_name_what_is_wrong() {
    let bad = |config: Value, text: &str, field: &str| {
        let config: AuthConfig = serde_json::from_value(config).unwrap();
        let error = Auth::from_text(&config, text).unwrap_err().to_string();
        assert!(error.contains(field), "{field}: {error}");
    };
    let token = json!({"realm": "r", "service": "s", "issuer": "i", "root_cert_bundle": "b"});
    let cert = Issuer::new().cert_pem;
    bad(json!({}), "", "`auth`: set exactly one");
    bad(
        json!({"htpasswd": {"path": "p"}, "token": token}),
        "",
        "`auth`: set exactly one",
    );
    bad(
        json!({"htpasswd": {"path": "p"}}),
        "alice:plain",
        "auth.htpasswd.path",
    );
    bad(
        json!({"token": token}),
        "not pem",
        "auth.token.root_cert_bundle",
    );
    bad(
        json!({"token": {"realm": "", "service": "s", "issuer": "i", "root_cert_bundle": "b"}}),
        &cert,
        "auth.token.realm",
    );
    bad(
        json!({"token": token, "rules": [{"repository": "a", "push": ["x"]}]}),
        &cert,
        "auth.rules[0].push",
    );
    bad(
        json!({"token": token, "groups": {"g": ["x"]}}),
        &cert,
        "auth.groups",
    );
    let keys = |extra: Value| {
        let mut token = json!({"realm": "r", "service": "s", "issuer": "i"});
        token
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({ "token": token })
    };
    for both_or_none in [json!({"root_cert_bundle": "b", "jwks": "k"}), json!({})] {
        bad(
            keys(both_or_none),
            &cert,
            "`auth.token`: set exactly one of",
        );
    }
    bad(keys(json!({"jwks": "k"})), &cert, "auth.token.jwks");

    let error = Auth::load(
        &serde_json::from_value(json!({"htpasswd": {"path": "/nonexistent/htpasswd"}})).unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("auth.htpasswd.path") && error.contains("/nonexistent/htpasswd"));
}

/// An edited htpasswd file takes effect without a restart: a removed user (even one whose
/// password was just verified) is refused, a new one admitted; a broken edit keeps the last
/// good file.
#[tokio::test]
async fn an_edited_htpasswd_file_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    std::fs::write(&path, htpasswd_line("alice", "a-pass")).unwrap();
    let config: AuthConfig =
        serde_json::from_value(json!({"htpasswd": {"path": path.display().to_string()}})).unwrap();
    let auth = Auth::load(&config).unwrap();
    let login = |user: &str, password: &str| {
        let mut headers = http::HeaderMap::new();
        headers.insert(AUTHORIZATION, basic(user, password).parse().unwrap());
        headers
    };
    let who = |caller: Result<Caller, RegistryError>| match caller {
        Ok(Caller::User(user)) => Some(user),
        _ => None,
    };
    let alice = login("alice", "a-pass");
    let bob = login("bob", "b-pass");
    assert_eq!(
        who(auth.authenticate(&alice, &Required::Login).await).as_deref(),
        Some("alice")
    );
    assert_eq!(who(auth.authenticate(&bob, &Required::Login).await), None);

    std::fs::write(&path, htpasswd_line("bob", "b-pass")).unwrap();
    auth.check_file_now();
    assert_eq!(
        who(auth.authenticate(&bob, &Required::Login).await).as_deref(),
        Some("bob")
    );
    assert_eq!(who(auth.authenticate(&alice, &Required::Login).await), None);

    std::fs::write(&path, "bob:plain-text-password\n").unwrap();
    auth.check_file_now();
    assert_eq!(
        who(auth.authenticate(&bob, &Required::Login).await).as_deref(),
        Some("bob"),
        "a file that does not load keeps the previous one"
    );
}
