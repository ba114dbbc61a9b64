//! Manifests: `GET`/`HEAD` with every manifest media type accepted (without it a registry may
//! refuse or convert), `PUT` with the manifest's own media type, digests checked both ways;
//! and `DELETE` of manifests and blobs.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap};
use reqwest::{Method, StatusCode, Url};
use shoal_core::{Digest, MAX_MANIFEST_SIZE, MediaType, Name, Reference};

use crate::auth::Scope;
use crate::error::{Error, unexpected};
use crate::{RegistryClient, content_length};

/// What a `HEAD` of a manifest tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestHead {
    pub len: u64,
    /// The registry's `Docker-Content-Digest`, when it sent one.
    pub digest: Option<Digest>,
}

/// A manifest as the registry served it, checked against the digest asked for and the one
/// the registry reported.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub digest: Digest,
    /// The registry's `Content-Type`, without parameters.
    pub media_type: Option<String>,
    pub bytes: Bytes,
}

impl RegistryClient {
    /// `HEAD` a manifest by tag or digest; `None` on 404.
    pub async fn head_manifest(
        &self,
        repo: &Name,
        reference: &Reference,
    ) -> Result<Option<ManifestHead>, Error> {
        let url = self.url(&format!("{repo}/manifests/{reference}"))?;
        let scope = Scope::repository(repo.as_str(), "pull");
        let response = self
            .send(Method::HEAD, &url, &scope, |r| r.header(ACCEPT, accept()))
            .await?;
        match response.status() {
            StatusCode::OK => {
                let len = content_length(response.headers()).ok_or_else(|| Error::BadResponse {
                    context: format!("HEAD {url}"),
                    reason: "no valid Content-Length".to_owned(),
                })?;
                let digest = header_digest(response.headers(), &url)?;
                Ok(Some(ManifestHead { len, digest }))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(unexpected(Method::HEAD, &url, response).await),
        }
    }

    /// `GET` a manifest by tag or digest (at most [`MAX_MANIFEST_SIZE`] bytes); `None` on 404.
    pub async fn get_manifest(
        &self,
        repo: &Name,
        reference: &Reference,
    ) -> Result<Option<FetchedManifest>, Error> {
        let url = self.url(&format!("{repo}/manifests/{reference}"))?;
        let scope = Scope::repository(repo.as_str(), "pull");
        let response = self
            .send(Method::GET, &url, &scope, |r| r.header(ACCEPT, accept()))
            .await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(unexpected(Method::GET, &url, response).await),
        }
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
        let reported = header_digest(response.headers(), &url)?;
        let bytes = read_capped(response, &url).await?;
        let requested = match reference {
            Reference::Digest(digest) => Some(*digest),
            Reference::Tag(_) => None,
        };
        // Each digest is checked with its own algorithm (sha256 or sha512).
        for expected in [requested, reported].into_iter().flatten() {
            let actual = expected.algorithm().digest(&bytes);
            if expected != actual {
                return Err(Error::DigestMismatch { expected, actual });
            }
        }
        let digest = requested
            .or(reported)
            .unwrap_or_else(|| reference.digest_of(&bytes));
        Ok(Some(FetchedManifest {
            digest,
            media_type,
            bytes,
        }))
    }

    /// `PUT` a manifest under `reference` with its media type; returns its digest, checked
    /// against the one the registry reports.
    pub async fn put_manifest(
        &self,
        repo: &Name,
        reference: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<Digest, Error> {
        let url = self.url(&format!("{repo}/manifests/{reference}"))?;
        let scope = Scope::repository(repo.as_str(), "pull,push");
        let response = self
            .send(Method::PUT, &url, &scope, |r| {
                r.header(CONTENT_TYPE, media_type).body(bytes.clone())
            })
            .await?;
        if !matches!(response.status(), StatusCode::CREATED | StatusCode::OK) {
            return Err(unexpected(Method::PUT, &url, response).await);
        }
        let expected = reference.digest_of(&bytes);
        if let Some(reported) = header_digest(response.headers(), &url)?
            && reported != expected
        {
            return Err(Error::DigestMismatch {
                expected,
                actual: reported,
            });
        }
        Ok(expected)
    }

    /// `DELETE` a manifest (by digest, or a tag where the registry allows it): `false` when
    /// it was not there. A registry with deletes disabled answers [`Error::Status`] 405.
    pub async fn delete_manifest(&self, repo: &Name, reference: &Reference) -> Result<bool, Error> {
        self.delete(repo, &format!("{repo}/manifests/{reference}"))
            .await
    }

    /// `DELETE` a blob: `false` when it was not there.
    pub async fn delete_blob(&self, repo: &Name, digest: &Digest) -> Result<bool, Error> {
        self.delete(repo, &format!("{repo}/blobs/{digest}")).await
    }

    async fn delete(&self, repo: &Name, path: &str) -> Result<bool, Error> {
        let url = self.url(path)?;
        let scope = Scope::repository(repo.as_str(), "delete");
        let response = self.send(Method::DELETE, &url, &scope, |r| r).await?;
        match response.status() {
            StatusCode::ACCEPTED | StatusCode::OK | StatusCode::NO_CONTENT => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(unexpected(Method::DELETE, &url, response).await),
        }
    }
}

/// Every manifest media type, as an `Accept` value.
fn accept() -> String {
    [
        MediaType::OciManifest,
        MediaType::OciIndex,
        MediaType::DockerManifest,
        MediaType::DockerManifestList,
    ]
    .map(MediaType::as_str)
    .join(", ")
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

/// Reads a manifest body, refusing more than [`MAX_MANIFEST_SIZE`].
async fn read_capped(response: reqwest::Response, url: &Url) -> Result<Bytes, Error> {
    let mut bytes = BytesMut::new();
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|source| Error::Transport {
            method: Method::GET,
            url: url.to_string(),
            source,
        })?;
        if bytes.len() + chunk.len() > MAX_MANIFEST_SIZE {
            return Err(Error::BadResponse {
                context: format!("GET {url}"),
                reason: format!("manifest larger than {MAX_MANIFEST_SIZE} bytes"),
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes.freeze())
}
