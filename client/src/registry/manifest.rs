//! Manifest transfer: `PUT` with the manifest's media type, `GET` with every supported media type
//! accepted, digests checked both ways.

use futures::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, Response, StatusCode, Url};
use shoal_core::{Digest, MAX_MANIFEST_SIZE, Manifest, MediaType};

use super::{RegistryClient, header_digest, registry_error};
use crate::error::Error;

/// A manifest as the registry served it.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub digest: Digest,
    /// The registry's `Content-Type`.
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl RegistryClient {
    /// `PUT` a manifest under `reference` (tag or digest) with its media type; returns the
    /// digest the registry reports, checked against the bytes sent.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, Error> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
        let request = self
            .http
            .put(url.clone())
            .header(CONTENT_TYPE, media_type)
            .body(bytes.to_vec());
        let response = self.send(request, Method::PUT, &url).await?;
        if response.status() != StatusCode::CREATED {
            return Err(registry_error(Method::PUT, &url, response).await);
        }
        let expected = Digest::of(bytes);
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

    /// `GET` a manifest by tag or digest, accepting OCI and Docker schema 2 manifests and
    /// indexes. The bytes are checked against the requested digest or `Docker-Content-Digest`.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<FetchedManifest, Error> {
        let url = self.url(&format!("v2/{repo}/manifests/{reference}"))?;
        let request = self.http.get(url.clone()).header(ACCEPT, manifest_accept());
        let response = self.send(request, Method::GET, &url).await?;
        if response.status() != StatusCode::OK {
            return Err(registry_error(Method::GET, &url, response).await);
        }
        let media_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
            .ok_or_else(|| Error::BadResponse {
                context: format!("GET {url}"),
                reason: "no Content-Type on a manifest".to_owned(),
            })?;
        let reported = header_digest(response.headers(), &url)?;
        let bytes = read_capped(response, &url).await?;
        let digest = Digest::of(&bytes);
        let requested = Digest::parse(reference).ok();
        for expected in [requested, reported].into_iter().flatten() {
            if expected != digest {
                return Err(Error::DigestMismatch {
                    expected,
                    actual: digest,
                });
            }
        }
        Ok(FetchedManifest {
            digest,
            media_type,
            bytes,
        })
    }
}

pub(crate) fn parse_manifest(
    fetched: &FetchedManifest,
    reference: &str,
) -> Result<Manifest, Error> {
    Manifest::parse(&fetched.bytes, Some(&fetched.media_type)).map_err(|source| {
        Error::BadManifest {
            reference: reference.to_owned(),
            source,
        }
    })
}

/// Reads a manifest body, refusing more than [`MAX_MANIFEST_SIZE`].
async fn read_capped(response: Response, url: &Url) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::new();
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
    Ok(bytes)
}

/// Every manifest media type this client can pull, as an `Accept` value.
fn manifest_accept() -> String {
    [
        MediaType::OciManifest,
        MediaType::OciIndex,
        MediaType::DockerManifest,
        MediaType::DockerManifestList,
    ]
    .map(MediaType::as_str)
    .join(", ")
}
