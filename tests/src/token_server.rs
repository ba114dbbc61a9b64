//! A registry token server (the Docker Registry token spec) for tests: `GET /token` checks HTTP
//! Basic credentials against its users, grants each requested repository scope the actions that
//! user may do, and answers an ES256 JWT whose `x5c` header carries its self-signed
//! certificate. The CNCF registry and Shoal's proxy both trust that certificate as their root
//! bundle. [`TokenServer::sign`] makes tokens by hand (expired ones, say).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A user of the token server and the repository actions it grants them (`*` grants the
/// catalog too).
#[derive(Debug, Clone)]
pub struct TokenUser {
    pub name: String,
    pub password: String,
    pub actions: Vec<String>,
}

impl TokenUser {
    pub fn new(name: &str, password: &str, actions: &[&str]) -> TokenUser {
        TokenUser {
            name: name.to_owned(),
            password: password.to_owned(),
            actions: actions.iter().map(|a| (*a).to_owned()).collect(),
        }
    }
}

/// A running token server; stops when dropped.
pub struct TokenServer {
    addr: SocketAddr,
    cert_pem: String,
    issuer: Arc<Issuer>,
    shutdown: CancellationToken,
}

struct Issuer {
    key: EcdsaKeyPair,
    /// The certificate's DER, base64 (standard), for the JWT's `x5c` header.
    x5c: String,
    /// `iss` of every token.
    name: String,
    /// `aud` of every token.
    service: String,
    users: Vec<TokenUser>,
    /// Token requests per `scope` parameter.
    requests: Mutex<HashMap<String, usize>>,
}

impl TokenServer {
    /// Starts on a free loopback port, issuing tokens as `issuer` for `service`.
    pub async fn start(issuer: &str, service: &str, users: Vec<TokenUser>) -> Result<TokenServer> {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert =
            rcgen::CertificateParams::new(vec![issuer.to_owned()])?.self_signed(&key_pair)?;
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &key_pair.serialize_der(),
            &SystemRandom::new(),
        )
        .map_err(|e| anyhow::anyhow!("loading the issuer key: {e}"))?;
        let issuer = Arc::new(Issuer {
            key,
            x5c: STANDARD.encode(cert.der()),
            name: issuer.to_owned(),
            service: service.to_owned(),
            users,
            requests: Mutex::new(HashMap::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .route("/token", axum::routing::get(issue))
            .with_state(issuer.clone());
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                eprintln!("token server: {e}");
            }
        });
        Ok(TokenServer {
            addr,
            cert_pem: cert.pem(),
            issuer,
            shutdown,
        })
    }

    /// The realm clients are sent to: `http://ADDR/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The self-signed certificate tokens are signed with (the registry's root bundle).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The signing key as a JSON Web Key Set (one P-256 key, `kid` = `kid`), for a registry
    /// configured with `auth.token.jwks` instead of the root bundle.
    pub fn jwks(&self, kid: &str) -> Value {
        // An uncompressed P-256 point: 0x04, then X and Y, 32 bytes each.
        let point = ring::signature::KeyPair::public_key(&self.issuer.key).as_ref();
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }]})
    }

    /// Token requests made with this `scope` parameter.
    pub fn requests_for(&self, scope: &str) -> usize {
        let requests = self.issuer.requests.lock().expect("requests lock");
        requests.get(scope).copied().unwrap_or_default()
    }

    /// A token for `subject` granting `access`, valid from `nbf` to `exp` (seconds since the
    /// epoch), signed like every token this server issues.
    pub fn sign(&self, subject: &str, access: Value, nbf: u64, exp: u64) -> Result<String> {
        self.issuer.sign(subject, access, nbf, exp)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

impl Issuer {
    fn sign(&self, subject: &str, access: Value, nbf: u64, exp: u64) -> Result<String> {
        let header = json!({"typ": "JWT", "alg": "ES256", "x5c": [self.x5c]});
        let claims = json!({
            "iss": self.name, "sub": subject, "aud": self.service, "exp": exp, "nbf": nbf,
            "iat": nbf, "jti": format!("{nbf}-{subject}-{access}"), "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|e| anyhow::anyhow!("signing a token: {e}"))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }

    /// The user whose Basic credentials `headers` carry.
    fn user(&self, headers: &HeaderMap) -> Option<&TokenUser> {
        let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let decoded = STANDARD.decode(value.strip_prefix("Basic ")?).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (name, password) = decoded.split_once(':')?;
        self.users
            .iter()
            .find(|user| user.name == name && user.password == password)
    }
}

async fn issue(
    State(issuer): State<Arc<Issuer>>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let Some(user) = issuer.user(&headers) else {
        return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
    };
    // Several scopes come as repeated `scope` parameters or space-separated in one.
    let scope = query
        .iter()
        .filter(|(name, _)| name == "scope")
        .map(|(_, value)| value.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    *issuer
        .requests
        .lock()
        .expect("requests lock")
        .entry(scope.clone())
        .or_default() += 1;
    let access: Vec<Value> = shoal_registry_server::auth::Scope::parse_list(&scope)
        .into_iter()
        .map(|asked| {
            let granted: Vec<&String> = asked
                .actions
                .iter()
                .filter(|action| user.actions.iter().any(|a| a == *action || a == "*"))
                .collect();
            json!({"type": asked.kind, "name": asked.name, "actions": granted})
        })
        .collect();
    let now = now();
    match issuer.sign(&user.name, Value::from(access), now - 10, now + 300) {
        Ok(token) => axum::Json(json!({"token": token, "access_token": token, "expires_in": 300}))
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
