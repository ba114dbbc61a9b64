//! A small Registry V2 client: push an image layout (chunked, streamed uploads) and pull an image
//! into a layout (streamed downloads, sha256 verified on the fly). Used by `shoal devcluster
//! --demo`, the integration tests and the benches; real clients (docker, skopeo) are tested
//! separately.
//!
//! This module owns the client, its URL and response handling; the push path, the pull path and
//! manifest transfer live in the submodules.

mod manifest;
mod pull;
mod push;
#[cfg(test)]
mod tests;

use reqwest::header::{CONTENT_LENGTH, HeaderMap, LOCATION};
use reqwest::{Method, Response, StatusCode, Url};
use shoal_core::Digest;

use crate::error::Error;

pub use manifest::FetchedManifest;
pub use pull::PulledImage;

/// One progress event for one blob; enough to drive a progress bar per blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Transfer of `digest` (`total` bytes) begins.
    Started { digest: Digest, total: u64 },
    /// `done` of `total` bytes have been sent or received so far.
    Advanced {
        digest: Digest,
        done: u64,
        total: u64,
    },
    /// The blob is complete; `skipped` when the registry (push) or the destination (pull)
    /// already had it and no bytes moved.
    Finished {
        digest: Digest,
        total: u64,
        skipped: bool,
    },
}

/// A Registry V2 client bound to one registry.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    base: Url,
}

impl RegistryClient {
    /// A client for the registry at `base_url` (`http://127.0.0.1:15000`; a bare `host:port`
    /// means plain HTTP).
    pub fn new(base_url: &str) -> Result<Self, Error> {
        let http = shoal_service::client::builder()
            .build()
            .map_err(Error::HttpClient)?;
        Self::with_http_client(base_url, http)
    }

    /// Like [`RegistryClient::new`] with a caller-configured `reqwest::Client`.
    pub fn with_http_client(base_url: &str, http: reqwest::Client) -> Result<Self, Error> {
        let with_scheme = if base_url.contains("://") {
            base_url.to_owned()
        } else {
            format!("http://{base_url}")
        };
        let base = Url::parse(&with_scheme).map_err(|e| Error::BadUrl {
            url: base_url.to_owned(),
            reason: e.to_string(),
        })?;
        if base.cannot_be_a_base() {
            return Err(Error::BadUrl {
                url: base_url.to_owned(),
                reason: "not a base URL".to_owned(),
            });
        }
        Ok(RegistryClient { http, base })
    }

    /// The registry's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// `HEAD` a blob: its size when the registry has it, `None` on 404.
    pub async fn blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>, Error> {
        let url = self.url(&format!("v2/{repo}/blobs/{digest}"))?;
        let response = self
            .send(self.http.head(url.clone()), Method::HEAD, &url)
            .await?;
        match response.status() {
            StatusCode::OK => Ok(Some(content_length(response.headers()).ok_or_else(
                || Error::BadResponse {
                    context: format!("HEAD {url}"),
                    reason: "no Content-Length".to_owned(),
                },
            )?)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(registry_error(Method::HEAD, &url, response).await),
        }
    }

    fn url(&self, path: &str) -> Result<Url, Error> {
        self.base.join(path).map_err(|e| Error::BadUrl {
            url: format!("{}{path}", self.base),
            reason: e.to_string(),
        })
    }

    /// The absolute URL in a response's `Location` header (relative ones resolve against the
    /// request URL, as HTTP says).
    fn location(&self, request_url: &Url, headers: &HeaderMap) -> Result<Url, Error> {
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

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        method: Method,
        url: &Url,
    ) -> Result<Response, Error> {
        request.send().await.map_err(|source| Error::Transport {
            method,
            url: url.to_string(),
            source,
        })
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The `Docker-Content-Digest` header, if present; a present but malformed one is an error.
fn header_digest(headers: &HeaderMap, url: &Url) -> Result<Option<Digest>, Error> {
    let Some(value) = headers.get("docker-content-digest") else {
        return Ok(None);
    };
    let parsed = value
        .to_str()
        .ok()
        .and_then(|text| Digest::parse(text).ok());
    parsed.map(Some).ok_or_else(|| Error::BadResponse {
        context: url.to_string(),
        reason: format!("malformed Docker-Content-Digest {value:?}"),
    })
}

/// Builds [`Error::Registry`] from an unexpected response, pulling the first error code and
/// message out of the spec's `{"errors":[{"code","message"}]}` body when there is one.
async fn registry_error(method: Method, url: &Url, response: Response) -> Error {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: String,
        #[serde(default)]
        message: String,
    }

    let status = response.status();
    // Error bodies are small; a failure to read one only loses the message.
    let text = response.text().await.unwrap_or_default();
    let (code, message) = match serde_json::from_str::<Body>(&text) {
        Ok(body) => match body.errors.into_iter().next() {
            Some(entry) => (Some(entry.code), entry.message),
            None => (None, text),
        },
        Err(_) => (None, text.chars().take(200).collect()),
    };
    Error::Registry {
        method,
        url: url.to_string(),
        status,
        code,
        message,
    }
}
