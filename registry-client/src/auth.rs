//! Registry authentication: anonymous, HTTP basic, and bearer tokens fetched from the realm a
//! `WWW-Authenticate: Bearer realm=…,service=…,scope=…` challenge names, cached per scope until
//! shortly before they expire. The scheme is learnt from the registry's first 401, so an
//! anonymous registry never sees the credentials.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use reqwest::{Client, Method, RequestBuilder, Response, StatusCode, Url, header};
use serde::Deserialize;
use tokio::time::Instant;

use crate::Credentials;
use crate::error::{Error, unexpected};

/// A token is dropped this long before the registry would reject it, so that a request sent
/// just before expiry does not arrive just after.
const TOKEN_MARGIN: Duration = Duration::from_secs(10);
/// What the token spec says to assume when a token server gives no `expires_in`.
const DEFAULT_TOKEN_LIFETIME: u64 = 60;

/// The access one request needs, as token scopes separated by spaces:
/// `repository:<name>:pull,push`, `registry:catalog:*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Scope(String);

impl Scope {
    pub(crate) fn repository(name: &str, actions: &str) -> Scope {
        Scope(format!("repository:{name}:{actions}"))
    }

    pub(crate) fn catalog() -> Scope {
        Scope("registry:catalog:*".to_owned())
    }

    /// This access and `other`'s (a mount reads the source repository too).
    pub(crate) fn and(self, other: Scope) -> Scope {
        Scope(format!("{} {}", self.0, other.0))
    }
}

/// The scheme a registry asked for in its `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

#[derive(Default)]
struct State {
    /// Set once the registry asked for basic auth: later requests carry it up front.
    basic: bool,
    tokens: HashMap<Scope, (String, Instant)>,
}

/// Credentials and what the registry has told us about how to use them.
pub(crate) struct Auth {
    credentials: Option<Credentials>,
    state: Mutex<State>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the password or tokens.
        f.debug_struct("Auth")
            .field(
                "username",
                &self.credentials.as_ref().map(|c| c.username.as_str()),
            )
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl Auth {
    pub(crate) fn new(credentials: Option<Credentials>) -> Auth {
        Auth {
            credentials,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, so a poisoned lock is usable.
        shoal_core::lock(&self.state)
    }

    /// Adds what we already know to send: a cached token for `scope`, or basic credentials.
    pub(crate) fn authorize(&self, request: RequestBuilder, scope: &Scope) -> RequestBuilder {
        let state = self.state();
        if let Some((token, expires)) = state.tokens.get(scope)
            && *expires > Instant::now()
        {
            return request.bearer_auth(token);
        }
        match &self.credentials {
            Some(credentials) if state.basic => {
                request.basic_auth(&credentials.username, Some(&credentials.password))
            }
            _ => request,
        }
    }

    /// Answers a 401: learns the scheme from its challenge and, for bearer, fetches a token for
    /// `scope`. Returns `Ok(false)` when nothing new can be tried (the caller reports the 401).
    pub(crate) async fn challenged(
        &self,
        client: &Client,
        response: &Response,
        scope: &Scope,
        timeout: Duration,
    ) -> Result<bool, Error> {
        let Some(challenge) = response
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .find_map(parse_challenge)
        else {
            return Ok(false);
        };
        match challenge {
            Challenge::Basic => {
                let mut state = self.state();
                // Already sent basic credentials and still refused: they are wrong.
                if self.credentials.is_none() || state.basic {
                    return Ok(false);
                }
                state.basic = true;
                Ok(true)
            }
            Challenge::Bearer {
                realm,
                service,
                scope: wanted,
            } => {
                // The registry's own scope names exactly what this request needs.
                let asked = wanted.as_deref().unwrap_or(&scope.0);
                let (token, lifetime) = self
                    .fetch_token(client, &realm, service.as_deref(), asked, timeout)
                    .await?;
                let expires = Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN);
                self.state().tokens.insert(scope.clone(), (token, expires));
                Ok(true)
            }
        }
    }

    async fn fetch_token(
        &self,
        client: &Client,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        timeout: Duration,
    ) -> Result<(String, Duration), Error> {
        let failed = |reason: String| Error::Token {
            realm: realm.to_owned(),
            reason,
        };
        let mut url = Url::parse(realm)
            .map_err(|e| failed(format!("the challenge's realm is not a URL: {e}")))?;
        {
            let mut query = url.query_pairs_mut();
            // One parameter per scope, as the token spec asks.
            for scope in scope.split_whitespace() {
                query.append_pair("scope", scope);
            }
            if let Some(service) = service {
                query.append_pair("service", service);
            }
        }
        let mut request = client.get(url.clone()).timeout(timeout);
        if let Some(credentials) = &self.credentials {
            request = request.basic_auth(&credentials.username, Some(&credentials.password));
        }
        let response = request.send().await.map_err(|e| failed(e.to_string()))?;
        if response.status() == StatusCode::UNAUTHORIZED
            || response.status() == StatusCode::FORBIDDEN
        {
            let refused = unexpected(Method::GET, &url, response).await;
            return Err(failed(format!(
                "the token server refused the configured credentials: {refused}"
            )));
        }
        if !response.status().is_success() {
            return Err(failed(
                unexpected(Method::GET, &url, response).await.to_string(),
            ));
        }
        let body: TokenResponse = response
            .json()
            .await
            .map_err(|e| failed(format!("unreadable token response: {e}")))?;
        let token = body
            .token
            .or(body.access_token)
            .ok_or_else(|| failed("the token response holds no token".to_owned()))?;
        let lifetime = Duration::from_secs(body.expires_in.unwrap_or(DEFAULT_TOKEN_LIFETIME));
        Ok((token, lifetime))
    }
}

/// Parses one `WWW-Authenticate` value: `Basic realm="…"` or `Bearer realm="…",service="…"`.
fn parse_challenge(value: &str) -> Option<Challenge> {
    let (scheme, params) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(params);
    let get = |name: &str| {
        params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.clone())
    };
    Some(Challenge::Bearer {
        realm: get("realm")?,
        service: get("service"),
        scope: get("scope"),
    })
}

/// `key="value", key=value` pairs; quoted values may contain commas (scopes do) and `\"`.
fn parse_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut rest = text.trim();
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_owned();
        let after = &rest[eq + 1..];
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_owned(), &after[end..])
        };
        params.push((key, value));
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_with_quoted_commas() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="http://127.0.0.1:9/token",service="reg",scope="repository:a/b:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:9/token".to_owned(),
                service: Some("reg".to_owned()),
                scope: Some("repository:a/b:pull,push".to_owned()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(r#"bearer service=reg, realm="https://auth/t""#),
            Some(Challenge::Bearer {
                realm: "https://auth/t".to_owned(),
                service: Some("reg".to_owned()),
                scope: None,
            })
        );
        assert_eq!(parse_challenge(r#"Bearer service="reg""#), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }

    #[test]
    fn authorize_sends_cached_tokens_and_learnt_basic_only() {
        let client = shoal_http_client::builder().build().expect("client");
        let auth = Auth::new(Some(Credentials {
            username: "u".to_owned(),
            password: "p".to_owned(),
        }));
        let scope = Scope::repository("a", "pull");
        let header_of = |request: RequestBuilder| {
            request
                .build()
                .expect("request")
                .headers()
                .get(header::AUTHORIZATION)
                .map(|v| v.to_str().expect("ascii").to_owned())
        };
        assert_eq!(
            header_of(auth.authorize(client.get("http://x/"), &scope)),
            None
        );
        auth.state().basic = true;
        assert!(
            header_of(auth.authorize(client.get("http://x/"), &scope))
                .expect("basic")
                .starts_with("Basic ")
        );
        let later = Instant::now() + Duration::from_secs(60);
        auth.state()
            .tokens
            .insert(scope.clone(), ("tok".to_owned(), later));
        assert_eq!(
            header_of(auth.authorize(client.get("http://x/"), &scope)),
            Some("Bearer tok".to_owned())
        );
        let expired = Instant::now() - Duration::from_secs(1);
        auth.state()
            .tokens
            .insert(scope.clone(), ("old".to_owned(), expired));
        assert!(
            header_of(auth.authorize(client.get("http://x/"), &scope))
                .expect("basic")
                .starts_with("Basic ")
        );
    }
}
