//! Client for the build-index tag API (`docs/internal-api.md`, "Build-index HTTP API").

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use reqwest::{StatusCode, header};
use serde::Deserialize;
use shoal_core::{Addresses, Digest, ManifestRecord, Name, Referrer, Tag};
use shoal_membership::HealthConfig;

use crate::error::ApiError;
use crate::transport::{check_from, read_limited, send_to, stops_answering};
use crate::wire::encode;

const SERVICE: &str = "build-index";
/// Tag and catalog pages are small JSON documents; bounded so a broken server cannot exhaust memory.
const PAGE_LIMIT: usize = 16 * 1024 * 1024;

/// One page of a sorted listing, and the last entry to continue after when more remain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<String>,
    pub next_last: Option<String>,
}

/// The build-index's HTTP API, on one replica or several sharing a tag backend. Each request
/// goes to the replica that answered last; one that fails in transport or hangs (see `send`)
/// passes the request on to the next replica at once. Cheap to clone; clones share which
/// replica answered last.
#[derive(Debug, Clone)]
pub struct BuildIndexClient {
    http: reqwest::Client,
    /// Each replica's base URL, in the order written.
    bases: Arc<[String]>,
    /// The index in `bases` of the replica that answered last.
    current: Arc<AtomicUsize>,
}

impl BuildIndexClient {
    /// Each of `addrs` is `host:port` or a full `http://…` base URL.
    pub fn new(http: reqwest::Client, addrs: &Addresses) -> Self {
        Self {
            http,
            bases: addrs
                .as_slice()
                .iter()
                .map(|addr| shoal_http_client::base_url(addr, false))
                .collect(),
            current: Arc::default(),
        }
    }

    /// Garbage collection's calls to the build-index.
    pub fn gc(&self) -> crate::gc::BuildIndexGc {
        crate::gc::BuildIndexGc {
            client: self.clone(),
        }
    }

    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The base URL of the replica that answered last.
    pub(crate) fn current_base(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed)]
    }

    /// Points `tag` at `digest`. The build-index refuses tags whose manifest or blobs are missing.
    pub async fn put_tag(&self, name: &Name, tag: &Tag, digest: &Digest) -> Result<(), ApiError> {
        let request = |base: &str| {
            self.http
                .put(tag_url(base, name, tag))
                .header(header::CONTENT_TYPE, "text/plain")
                .body(digest.to_string())
        };
        check(self.send(request).await?).await.map(drop)
    }

    /// The digest `tag` points at, or `None`.
    pub async fn get_tag(&self, name: &Name, tag: &Tag) -> Result<Option<Digest>, ApiError> {
        let resp = self
            .send(|base| self.http.get(tag_url(base, name, tag)))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = read_limited(SERVICE, check(resp).await?, 1024).await?;
        let text = std::str::from_utf8(&body).map_err(|_| protocol("tag body is not UTF-8"))?;
        Digest::parse(text.trim())
            .map(Some)
            .map_err(|e| protocol(&format!("bad digest in tag body: {e}")))
    }

    /// Removes a tag; `false` when it did not exist.
    pub async fn delete_tag(&self, name: &Name, tag: &Tag) -> Result<bool, ApiError> {
        let resp = self
            .send(|base| self.http.delete(tag_url(base, name, tag)))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        check(resp).await.map(|_| true)
    }

    /// Records the manifest `digest` as pushed into `name`. The build-index refuses it when the
    /// manifest or anything it references is missing.
    pub async fn put_manifest(&self, name: &Name, digest: &Digest) -> Result<(), ApiError> {
        let request = |base: &str| self.http.put(manifest_url(base, name, digest));
        check(self.send(request).await?).await.map(drop)
    }

    /// The record of manifest `digest` in `name`, or `None` when it was never pushed there or
    /// was deleted.
    pub async fn manifest(
        &self,
        name: &Name,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, ApiError> {
        let resp = self
            .send(|base| self.http.get(manifest_url(base, name, digest)))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = read_limited(SERVICE, check(resp).await?, 64 * 1024).await?;
        parse_json(&body).map(Some)
    }

    /// Deletes manifest `digest` from `name`: its record and every tag pointing at it. Returns
    /// the tags removed; `None` when the repository has neither.
    pub async fn delete_manifest(
        &self,
        name: &Name,
        digest: &Digest,
    ) -> Result<Option<Vec<String>>, ApiError> {
        #[derive(Deserialize)]
        struct Untagged {
            untagged: Vec<String>,
        }
        let resp = self
            .send(|base| self.http.delete(manifest_url(base, name, digest)))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = read_limited(SERVICE, check(resp).await?, PAGE_LIMIT).await?;
        parse_json::<Untagged>(&body).map(|u| Some(u.untagged))
    }

    /// The manifests of `name` whose `subject` is `digest` (OCI 1.1 referrers).
    pub async fn referrers(&self, name: &Name, digest: &Digest) -> Result<Vec<Referrer>, ApiError> {
        #[derive(Deserialize)]
        struct Referrers {
            manifests: Vec<Referrer>,
        }
        let url = |base: &str| {
            format!(
                "{base}/v1/repositories/{}/referrers/{digest}",
                encode(name.as_str())
            )
        };
        let resp = self.send(|base| self.http.get(url(base))).await?;
        let body = read_limited(SERVICE, check(resp).await?, PAGE_LIMIT).await?;
        parse_json::<Referrers>(&body).map(|r| r.manifests)
    }

    /// A page of `name`'s tags in lexical order after `last`; `None` when the repository has no tags.
    pub async fn list_tags(
        &self,
        name: &Name,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<Option<Page>, ApiError> {
        #[derive(Deserialize)]
        struct Tags {
            tags: Vec<String>,
        }
        let url = |base: &str| format!("{base}/v1/repositories/{}/tags", encode(name.as_str()));
        let resp = self
            .send(|base| self.http.get(paged(url(base), n, last)))
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let (body, next_last) = page_body(resp).await?;
        let tags: Tags = parse_json(&body)?;
        Ok(Some(Page {
            items: tags.tags,
            next_last,
        }))
    }

    /// A page of repository names in lexical order after `last`.
    pub async fn list_repositories(
        &self,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<Page, ApiError> {
        #[derive(Deserialize)]
        struct Repositories {
            repositories: Vec<String>,
        }
        let url = |base: &str| paged(format!("{base}/v1/repositories"), n, last);
        let resp = self.send(|base| self.http.get(url(base))).await?;
        let (body, next_last) = page_body(resp).await?;
        let repos: Repositories = parse_json(&body)?;
        Ok(Page {
            items: repos.repositories,
            next_last,
        })
    }

    /// Sends the request `request` makes for a replica's base URL, to the replica that
    /// answered last, then to each next one while a replica gives no answer: the request fails
    /// in transport, or the replica has not answered for a second and then fails a health probe
    /// ([`ApiError::Unresponsive`]; a hung replica, a stopped process whose kernel still accepts
    /// connections, would otherwise hold pushes and pulls without end, as these requests carry
    /// no overall timeout). Every request here may be sent twice: puts and deletes name their
    /// target. The last replica's failure is the error when none answers.
    pub(crate) async fn send(
        &self,
        request: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ApiError> {
        let timeout = HealthConfig::default().timeout;
        let first = self.current.load(Ordering::Relaxed);
        let mut failure = None;
        for at in (0..self.bases.len()).map(|k| (first + k) % self.bases.len()) {
            let base = &self.bases[at];
            let hung = stops_answering(|| shoal_membership::probe(&self.http, base, timeout));
            let sent = tokio::select! {
                sent = send_to(SERVICE, request(base)) => sent,
                () = hung => Err(ApiError::Unresponsive { service: SERVICE.into() }),
            };
            match sent {
                Err(error @ (ApiError::Transport { .. } | ApiError::Unresponsive { .. })) => {
                    if self.bases.len() > 1 {
                        tracing::warn!(replica = %base, error = %shoal_core::chain(&error), "build-index replica gave no answer; asking the next");
                    }
                    failure = Some(error);
                }
                answered => {
                    self.current.store(at, Ordering::Relaxed);
                    return answered;
                }
            }
        }
        Err(failure.expect("there is at least one replica"))
    }
}

fn manifest_url(base: &str, name: &Name, digest: &Digest) -> String {
    format!(
        "{base}/v1/repositories/{}/manifests/{digest}",
        encode(name.as_str())
    )
}

fn tag_url(base: &str, name: &Name, tag: &Tag) -> String {
    format!(
        "{base}/v1/repositories/{}/tags/{}",
        encode(name.as_str()),
        encode(tag.as_str())
    )
}

fn paged(url: String, n: Option<usize>, last: Option<&str>) -> String {
    let mut query = Vec::new();
    if let Some(n) = n {
        query.push(format!("n={n}"));
    }
    if let Some(last) = last {
        query.push(format!("last={}", encode(last)));
    }
    if query.is_empty() {
        url
    } else {
        format!("{url}?{}", query.join("&"))
    }
}

/// Reads a listing page and the `last` value of its `Link: <…?n=N&last=X>; rel="next"` header, if any.
async fn page_body(resp: reqwest::Response) -> Result<(bytes::Bytes, Option<String>), ApiError> {
    let resp = check(resp).await?;
    let next_last = resp
        .headers()
        .get(header::LINK)
        .and_then(|v| v.to_str().ok())
        .and_then(next_last_from_link);
    let body = read_limited(SERVICE, resp, PAGE_LIMIT).await?;
    Ok((body, next_last))
}

/// Extracts the decoded `last` query value from a `Link` header pointing at the next page.
pub fn next_last_from_link(link: &str) -> Option<String> {
    let target = link.split_once('<')?.1.split_once('>')?.0;
    let query = target.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let value = pair.strip_prefix("last=")?;
        percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .ok()
            .map(|v| v.into_owned())
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| protocol(&format!("bad JSON: {e}")))
}

fn protocol(reason: &str) -> ApiError {
    ApiError::Protocol {
        service: SERVICE.into(),
        reason: reason.into(),
    }
}

async fn check(resp: reqwest::Response) -> Result<reqwest::Response, ApiError> {
    check_from(SERVICE, resp).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_last_is_read_from_a_link_header() {
        let link = r#"</v1/repositories/a%2Fb/tags?n=2&last=v1.0>; rel="next""#;
        assert_eq!(next_last_from_link(link).as_deref(), Some("v1.0"));
        assert_eq!(
            next_last_from_link(r#"</v1/repositories?last=lib%2Fx&n=5>; rel="next""#).as_deref(),
            Some("lib/x")
        );
        assert_eq!(next_last_from_link("garbage"), None);
    }

    #[test]
    fn paged_urls_encode_last() {
        assert_eq!(paged("u".into(), None, None), "u");
        assert_eq!(paged("u".into(), Some(3), Some("a/b")), "u?n=3&last=a%2Fb");
    }
}
