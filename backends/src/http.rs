//! A read-only backend that fetches blobs from any HTTP server through a URL template such as
//! `https://mirror.example/blobs/{digest}`: `stat` is a HEAD, `get` a (ranged) GET streamed as
//! it arrives. Writes, deletes and listings are refused with [`BackendError::Unsupported`].

use std::fmt;
use std::io;
use std::ops::Range;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use reqwest::{Client, StatusCode, header};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shoal_core::Algorithm;

use super::{BLOBS_PREFIX, Backend, BackendError};
use crate::ByteStream;

/// A URL with placeholders filled from a backend key: `{key}` (the whole key), and for blob keys
/// (`blobs/<algorithm>/<hex>`) `{hex}` (the digest's hex) and `{digest}` (`<algorithm>:<hex>`).
#[derive(Clone, PartialEq, Eq)]
pub struct UrlTemplate(String);

/// Why a URL template was rejected.
#[derive(Debug, thiserror::Error)]
pub enum UrlTemplateError {
    #[error("URL template must start with http:// or https://")]
    Scheme,
    #[error("unknown placeholder {{{0}}} (known: {{key}}, {{hex}}, {{digest}})")]
    Placeholder(String),
    #[error("unbalanced '{{' or '}}'")]
    Unbalanced,
}

impl UrlTemplate {
    /// Checks the scheme and that every `{…}` names a known placeholder.
    pub fn parse(template: &str) -> Result<UrlTemplate, UrlTemplateError> {
        if !(template.starts_with("http://") || template.starts_with("https://")) {
            return Err(UrlTemplateError::Scheme);
        }
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if rest[..open].contains('}') {
                return Err(UrlTemplateError::Unbalanced);
            }
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or(UrlTemplateError::Unbalanced)?;
            let name = &after[..close];
            if !matches!(name, "key" | "hex" | "digest") {
                return Err(UrlTemplateError::Placeholder(name.to_owned()));
            }
            rest = &after[close + 1..];
        }
        if rest.contains('}') {
            return Err(UrlTemplateError::Unbalanced);
        }
        Ok(UrlTemplate(template.to_owned()))
    }

    /// The URL for `key`, or `None` when the template needs a digest and `key` is not a blob
    /// key (a blob-only mirror holds no tags).
    pub fn expand(&self, key: &str) -> Option<String> {
        let blob = key
            .strip_prefix(BLOBS_PREFIX)
            .and_then(|path| path.split_once('/'))
            .filter(|(algorithm, hex)| {
                Algorithm::ALL.iter().any(|a| a.as_str() == *algorithm)
                    && !hex.is_empty()
                    && hex.bytes().all(|b| b.is_ascii_hexdigit())
            });
        let needs_digest = self.0.contains("{hex}") || self.0.contains("{digest}");
        if needs_digest && blob.is_none() {
            return None;
        }
        let (algorithm, hex) = blob.unwrap_or_default();
        Some(
            self.0
                .replace("{key}", key)
                .replace("{hex}", hex)
                .replace("{digest}", &format!("{algorithm}:{hex}")),
        )
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UrlTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl<'de> Deserialize<'de> for UrlTemplate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        UrlTemplate::parse(&text)
            .map_err(|e| serde::de::Error::custom(format!("invalid URL template {text:?}: {e}")))
    }
}

impl Serialize for UrlTemplate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Reads blobs from an HTTP server; never writes.
#[derive(Debug, Clone)]
pub struct HttpBackend {
    template: UrlTemplate,
    client: Client,
}

impl HttpBackend {
    /// A backend reading from the URLs `template` produces.
    pub fn new(template: UrlTemplate) -> Result<HttpBackend, BackendError> {
        let client = shoal_http_client::builder()
            .build()
            .map_err(|e| BackendError::Remote {
                operation: "build HTTP client for",
                url: template.as_str().to_owned(),
                reason: e.to_string(),
            })?;
        Ok(HttpBackend { template, client })
    }

    fn unsupported(operation: &'static str) -> BackendError {
        BackendError::Unsupported {
            backend: "http (read-only)",
            operation,
        }
    }
}

fn remote(operation: &'static str, url: &str, reason: impl fmt::Display) -> BackendError {
    BackendError::Remote {
        operation,
        url: url.to_owned(),
        reason: reason.to_string(),
    }
}

/// The total length from a `Content-Range: bytes */<len>` (or `bytes a-b/<len>`) header.
pub(super) fn total_length(response: &reqwest::Response) -> Option<u64> {
    let value = response
        .headers()
        .get(header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    value.rsplit('/').next()?.parse().ok()
}

#[async_trait]
impl Backend for HttpBackend {
    async fn stat(&self, key: &str) -> Result<Option<u64>, BackendError> {
        let Some(url) = self.template.expand(key) else {
            return Ok(None);
        };
        let response = self
            .client
            .head(&url)
            .send()
            .await
            .map_err(|e| remote("HEAD", &url, e))?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::OK => {
                let length = response
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| remote("HEAD", &url, "no valid Content-Length"))?;
                Ok(Some(length))
            }
            status => Err(remote("HEAD", &url, format!("status {status}"))),
        }
    }

    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<ByteStream>, BackendError> {
        let Some(url) = self.template.expand(key) else {
            return Ok(None);
        };
        let mut request = self.client.get(&url);
        if let Some(range) = &range {
            // HTTP cannot ask for zero bytes: answer an empty range from the object's length.
            if range.end <= range.start {
                let Some(len) = self.stat(key).await? else {
                    return Ok(None);
                };
                if range.start > len {
                    return Err(BackendError::RangeNotSatisfiable {
                        key: key.to_owned(),
                        start: range.start,
                        len,
                    });
                }
                return Ok(Some(futures::stream::empty().boxed()));
            }
            request = request.header(
                header::RANGE,
                format!("bytes={}-{}", range.start, range.end - 1),
            );
        }
        let response = request.send().await.map_err(|e| remote("GET", &url, e))?;
        match (response.status(), &range) {
            (StatusCode::NOT_FOUND, _) => return Ok(None),
            (StatusCode::OK, None) | (StatusCode::PARTIAL_CONTENT, Some(_)) => {}
            (StatusCode::RANGE_NOT_SATISFIABLE, Some(range)) => {
                let len = total_length(&response).unwrap_or_default();
                // A range starting exactly at the end is an empty read, not an error.
                if range.start == len {
                    return Ok(Some(futures::stream::empty().boxed()));
                }
                return Err(BackendError::RangeNotSatisfiable {
                    key: key.to_owned(),
                    start: range.start,
                    len,
                });
            }
            (StatusCode::OK, Some(range)) if range.start > 0 => {
                return Err(remote("GET", &url, "server ignored the Range header"));
            }
            // A range from 0 answered with the whole object: take the requested prefix.
            (StatusCode::OK, Some(_)) => {}
            (status, _) => return Err(remote("GET", &url, format!("status {status}"))),
        }
        let limit = match (&range, response.status()) {
            (Some(range), StatusCode::OK) => Some(range.end),
            _ => None,
        };
        let body = response.bytes_stream().map_err(io::Error::other);
        Ok(Some(match limit {
            Some(limit) => take_bytes(body.boxed(), limit),
            None => body.boxed(),
        }))
    }

    async fn put(
        &self,
        _key: &str,
        _body: ByteStream,
        _length: Option<u64>,
    ) -> Result<(), BackendError> {
        Err(HttpBackend::unsupported("put"))
    }

    async fn delete(&self, _key: &str) -> Result<bool, BackendError> {
        Err(HttpBackend::unsupported("delete"))
    }

    async fn list(&self, _prefix: &str) -> Result<Vec<String>, BackendError> {
        Err(HttpBackend::unsupported("list"))
    }
}

/// The first `limit` bytes of `stream`.
pub(super) fn take_bytes(stream: ByteStream, limit: u64) -> ByteStream {
    futures::stream::unfold((stream, limit), |(mut stream, left)| async move {
        if left == 0 {
            return None;
        }
        let chunk = match stream.next().await? {
            Ok(chunk) => chunk,
            Err(e) => return Some((Err(e), (stream, 0))),
        };
        let keep = usize::try_from(left).map_or(chunk.len(), |left| left.min(chunk.len()));
        Some((Ok(chunk.slice(..keep)), (stream, left - keep as u64)))
    })
    .boxed()
}

#[cfg(test)]
mod tests;
