//! Shoal's one Registry V2 client, for pushes and pulls against any registry (the CNCF
//! registry, Harbor, a Shoal proxy): the registry backend, tag replication and `shoal-client`'s
//! push/pull tooling all speak through it.
//!
//! It owns the requests and their answers: authentication (anonymous, basic, or bearer tokens
//! from the `WWW-Authenticate` realm, cached per scope), blob `HEAD`/`GET` (streamed, ranged),
//! uploads (streamed monolithic `PUT`, chunked `PATCH`, cross-repository mount), manifests
//! (`GET`/`HEAD`/`PUT`/`DELETE` with every manifest media type accepted) and paginated tag and
//! catalog lists. Blob bytes are streamed both ways, never held whole. What to do with the bytes
//! (verifying a layout, slicing ranges a registry ignored, progress bars) is the caller's.

mod auth;
mod blobs;
mod error;
mod list;
mod manifests;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, LOCATION};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};

use self::auth::{Auth, Scope};

pub use blobs::{Blob, Mount, Upload};
pub use error::Error;
pub use manifests::{FetchedManifest, ManifestHead};

/// How long a token server may take to answer, when the caller does not say.
const DEFAULT_TOKEN_TIMEOUT: Duration = Duration::from_secs(30);

/// A username and password: sent as HTTP basic auth when a registry asks for it, or to the
/// token server of a bearer-auth registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How a [`RegistryClient`] authenticates.
#[derive(Debug, Clone)]
pub struct Options {
    /// Anonymous when `None`; the scheme is learnt from the registry's first 401, so an
    /// anonymous registry never sees the credentials.
    pub credentials: Option<Credentials>,
    /// Time allowed for one token request, start to end.
    pub token_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            credentials: None,
            token_timeout: DEFAULT_TOKEN_TIMEOUT,
        }
    }
}

#[derive(Debug)]
struct Shared {
    /// The registry's base URL, ending in `/` so paths join below it.
    base: Url,
    http: reqwest::Client,
    auth: Auth,
    token_timeout: Duration,
}

/// A client bound to one registry. Cloning is cheap and shares the token cache.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    shared: Arc<Shared>,
}

impl RegistryClient {
    /// An anonymous client for the registry at `base_url` (`http://` or `https://`, without
    /// `/v2/`), sending through `http` (whose timeouts and TLS settings apply). Makes no request.
    pub fn new(base_url: &str, http: reqwest::Client) -> Result<Self, Error> {
        Self::with_options(base_url, http, Options::default())
    }

    /// Like [`RegistryClient::new`], authenticating as `options` says.
    pub fn with_options(
        base_url: &str,
        http: reqwest::Client,
        options: Options,
    ) -> Result<Self, Error> {
        let bad = |reason: &str| Error::BadUrl {
            url: base_url.to_owned(),
            reason: reason.to_owned(),
        };
        let mut base = Url::parse(base_url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(bad("the registry URL must start with http:// or https://"));
        }
        if base.cannot_be_a_base() {
            return Err(bad("not a base URL"));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(RegistryClient {
            shared: Arc::new(Shared {
                base,
                http,
                auth: Auth::new(options.credentials),
                token_timeout: options.token_timeout,
            }),
        })
    }

    /// The registry's base URL (ending in `/`).
    pub fn base_url(&self) -> &Url {
        &self.shared.base
    }

    /// `<base>/v2/<path>`.
    fn url(&self, path: &str) -> Result<Url, Error> {
        let path = format!("v2/{path}");
        self.shared.base.join(&path).map_err(|e| Error::BadUrl {
            url: format!("{}{path}", self.shared.base),
            reason: e.to_string(),
        })
    }

    /// Sends a request without a streamed body, answering one authentication challenge: the
    /// request is built again by `build` with what the challenge taught.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        scope: &Scope,
        build: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, Error> {
        let shared = &self.shared;
        let mut retried = false;
        loop {
            let request = build(shared.http.request(method.clone(), url.clone()));
            let response =
                shared
                    .auth
                    .authorize(request, scope)
                    .send()
                    .await
                    .map_err(|source| Error::Transport {
                        method: method.clone(),
                        url: url.to_string(),
                        source,
                    })?;
            if response.status() != StatusCode::UNAUTHORIZED || retried {
                return Ok(response);
            }
            let learnt = shared
                .auth
                .challenged(&shared.http, &response, scope, shared.token_timeout)
                .await?;
            if !learnt {
                return Ok(response);
            }
            retried = true;
        }
    }

    /// Sends a request whose body cannot be sent twice (a stream) with what authentication
    /// has already taught: the caller answered any challenge with a bodiless request first.
    async fn send_once(
        &self,
        method: Method,
        url: &Url,
        scope: &Scope,
        request: RequestBuilder,
    ) -> Result<Response, Error> {
        self.shared
            .auth
            .authorize(request, scope)
            .send()
            .await
            .map_err(|source| Error::Transport {
                method,
                url: url.to_string(),
                source,
            })
    }
}

/// The absolute URL in a response's `Location` header (a relative one resolves against the
/// request URL, as HTTP says).
fn location(request_url: &Url, headers: &HeaderMap) -> Result<Url, Error> {
    let bad = |reason: String| Error::BadResponse {
        context: format!("upload at {request_url}"),
        reason,
    };
    let value = headers
        .get(LOCATION)
        .ok_or_else(|| bad("no Location header".to_owned()))?
        .to_str()
        .map_err(|e| bad(format!("Location is not text: {e}")))?;
    request_url
        .join(value)
        .map_err(|e| bad(format!("Location {value:?}: {e}")))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(reqwest::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    fn http() -> reqwest::Client {
        shoal_http_client::builder().build().expect("client")
    }

    #[test]
    fn paths_join_below_the_base_url_with_or_without_a_trailing_slash() {
        for base in ["http://127.0.0.1:5000", "http://127.0.0.1:5000/"] {
            let client = RegistryClient::new(base, http()).expect("client");
            assert_eq!(client.base_url().as_str(), "http://127.0.0.1:5000/");
            let url = client.url("a/b/blobs/uploads/").expect("url");
            assert_eq!(url.as_str(), "http://127.0.0.1:5000/v2/a/b/blobs/uploads/");
        }
        let prefixed = RegistryClient::new("https://h/mirror", http()).expect("client");
        assert_eq!(
            prefixed.url("_catalog").expect("url").as_str(),
            "https://h/mirror/v2/_catalog"
        );
    }

    #[test]
    fn urls_without_an_http_scheme_are_refused() {
        for bad in ["127.0.0.1:5000", "ftp://h/", "not a url"] {
            assert!(
                matches!(RegistryClient::new(bad, http()), Err(Error::BadUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn relative_locations_resolve_against_the_request() {
        let request = Url::parse("http://h/v2/a/blobs/uploads/").expect("url");
        let mut headers = HeaderMap::new();
        headers.insert(
            LOCATION,
            "/v2/a/blobs/uploads/x?_state=1".parse().expect("value"),
        );
        assert_eq!(
            location(&request, &headers).expect("location").as_str(),
            "http://h/v2/a/blobs/uploads/x?_state=1"
        );
        headers.insert(LOCATION, "https://other/up/1".parse().expect("value"));
        assert_eq!(
            location(&request, &headers).expect("location").as_str(),
            "https://other/up/1"
        );
        assert!(location(&request, &HeaderMap::new()).is_err());
    }

    #[test]
    fn credentials_never_print_the_password() {
        let credentials = Credentials {
            username: "u".to_owned(),
            password: "secret".to_owned(),
        };
        assert!(!format!("{credentials:?}").contains("secret"));
    }
}
