//! `/v2/<name>/manifests/<reference>`: manifests are stored as blobs on their owning origin;
//! tags, and the record of each manifest pushed into a repository, live in the build-index. A
//! push is accepted only when every blob and child manifest it references exists, so a tag
//! never points at something unpullable. A manifest is served by digest only in a repository
//! holding its record.
//!
//! Deleting by digest removes the record and every tag pointing at it; by tag, that tag. The
//! bytes stay in the content-addressed store (shared across repositories): garbage collection
//! is not implemented.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;
use shoal_api::ApiError;
use shoal_api::wire::DOCKER_CONTENT_DIGEST;
use shoal_core::{Digest, ErrorCode, MAX_MANIFEST_SIZE, Manifest, Name, Reference};
use shoal_registry_server::{RegistryError, StoredManifest};

use crate::state::AppState;

/// Answers a manifest PUT that carries a `subject` (OCI distribution spec 1.1).
const OCI_SUBJECT: http::HeaderName = http::HeaderName::from_static("oci-subject");
/// Concurrent origin stats while checking a pushed manifest's references: enough to hide
/// round trips for images with dozens of layers without flooding the origins.
const STAT_CONCURRENCY: usize = 16;

/// `GET` and `HEAD`: the stored manifest, `None` when the reference or the blob is unknown.
pub async fn get(
    state: &AppState,
    name: &Name,
    reference: &Reference,
) -> Result<Option<StoredManifest>, RegistryError> {
    let Some(digest) = resolve(state, name, reference).await? else {
        return Ok(None);
    };
    let fetched = state
        .upstreams
        .read_blob(&digest, |origin| async move {
            origin
                .get_small_blob(&digest, Some(name), MAX_MANIFEST_SIZE)
                .await
        })
        .await;
    match fetched {
        Ok(bytes) => Ok(bytes.map(|bytes| StoredManifest { digest, bytes })),
        // Too large to be a manifest: whatever it is, it cannot be served as one.
        Err(ApiError::TooLarge { .. }) => Ok(None),
        Err(error) => Err(error.into()),
    }
}

/// `PUT`: validates, stores the manifest blob, then records it in the repository: by tag, the
/// build-index records it with the tag; by digest, on its own.
pub async fn put(
    state: &AppState,
    name: &Name,
    reference: &Reference,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, RegistryError> {
    let bytes = read_manifest(headers, body).await?;
    let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let manifest = Manifest::parse(&bytes, content_type)
        .map_err(|error| RegistryError::new(ErrorCode::ManifestInvalid, error.to_string()))?;
    // By digest, the manifest is named with that digest's algorithm (sha256 or sha512).
    let digest = reference.digest_of(&bytes);
    if let Reference::Digest(expected) = reference
        && *expected != digest
    {
        return Err(RegistryError::new(
            ErrorCode::DigestInvalid,
            format!("manifest digest is {digest}, not {expected}"),
        ));
    }
    state.manifest_urls.check(&manifest)?;
    check_references(state, name, &manifest).await?;
    state
        .upstreams
        .put_blob(&digest, name, None, reqwest::Body::from(bytes))
        .await?;
    let build_index = state.upstreams.build_index();
    match reference {
        Reference::Tag(tag) => build_index.put_tag(name, tag, &digest).await?,
        Reference::Digest(_) => build_index.put_manifest(name, &digest).await?,
    }
    state.metrics.manifests_put.inc();
    let headers = [
        (LOCATION.as_str(), format!("/v2/{name}/manifests/{digest}")),
        (DOCKER_CONTENT_DIGEST, digest.to_string()),
    ];
    let mut response = (StatusCode::CREATED, headers).into_response();
    // OCI 1.1: the registry lists the manifest among its subject's referrers.
    if let Some(subject) = manifest.subject()
        && let Ok(value) = http::HeaderValue::from_str(&subject.digest.to_string())
    {
        response.headers_mut().insert(OCI_SUBJECT, value);
    }
    Ok(response)
}

/// `DELETE`: by tag removes that tag; by digest removes the manifest's record in the repository
/// and every tag of it pointing at the manifest.
pub async fn delete(
    state: &AppState,
    name: &Name,
    reference: &Reference,
) -> Result<Response, RegistryError> {
    let build_index = state.upstreams.build_index();
    let found = match reference {
        Reference::Tag(tag) => build_index.delete_tag(name, tag).await?,
        Reference::Digest(digest) => build_index.delete_manifest(name, digest).await?.is_some(),
    };
    if !found {
        return Err(RegistryError::manifest_unknown(reference));
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

/// The digest `reference` names in `name`; `None` for an unknown tag or a manifest the
/// repository has no record of.
async fn resolve(
    state: &AppState,
    name: &Name,
    reference: &Reference,
) -> Result<Option<Digest>, RegistryError> {
    let build_index = state.upstreams.build_index();
    match reference {
        Reference::Digest(digest) => {
            let record = build_index.manifest(name, digest).await?;
            Ok(record.map(|_| *digest))
        }
        Reference::Tag(tag) => Ok(build_index.get_tag(name, tag).await?),
    }
}

/// Reads the request body, refusing more than [`MAX_MANIFEST_SIZE`] bytes before buffering them.
async fn read_manifest(headers: &HeaderMap, body: Body) -> Result<bytes::Bytes, RegistryError> {
    let too_large = || {
        RegistryError::new(
            ErrorCode::ManifestInvalid,
            format!("manifest is larger than {MAX_MANIFEST_SIZE} bytes"),
        )
    };
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_MANIFEST_SIZE as u64) {
        return Err(too_large());
    }
    match Limited::new(body, MAX_MANIFEST_SIZE).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(too_large()),
        Err(error) => Err(RegistryError::new(
            ErrorCode::ManifestInvalid,
            format!("reading the manifest failed: {error}"),
        )),
    }
}

/// Every blob and child manifest must exist on its owning origin with the size the descriptor
/// claims; clients check sizes on pull, so a wrong one would make the image unpullable.
/// Non-distributable layers are not checked: clients fetch them from their URLs.
async fn check_references(
    state: &AppState,
    name: &Name,
    manifest: &Manifest,
) -> Result<(), RegistryError> {
    let referenced: BTreeSet<(Digest, u64)> = manifest
        .blobs()
        .chain(manifest.children())
        .map(|descriptor| (descriptor.digest, descriptor.size))
        .collect();
    let mut stats = futures::stream::iter(referenced)
        .map(|(digest, size)| async move {
            let stored = state
                .upstreams
                .read_blob(&digest, |origin| async move {
                    origin.stat_blob(&digest, Some(name)).await
                })
                .await;
            (digest, size, stored)
        })
        .buffer_unordered(STAT_CONCURRENCY);
    while let Some((digest, size, stored)) = stats.next().await {
        match stored? {
            None => {
                return Err(RegistryError::new(
                    ErrorCode::ManifestBlobUnknown,
                    format!("referenced blob {digest} is unknown"),
                )
                .with_detail(json!({ "digest": digest.to_string() })));
            }
            Some(length) if length != size => {
                return Err(RegistryError::new(
                    ErrorCode::ManifestInvalid,
                    format!("descriptor of {digest} says {size} bytes, the blob has {length}"),
                )
                .with_detail(json!({ "digest": digest.to_string() })));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[tokio::test]
    async fn manifests_up_to_the_limit_are_read_whole() {
        let body = vec![b' '; MAX_MANIFEST_SIZE];
        let read = read_manifest(&HeaderMap::new(), Body::from(body.clone()))
            .await
            .unwrap();
        assert_eq!(read, body);
    }

    #[tokio::test]
    async fn oversized_manifests_are_refused() {
        // Streamed without a length: refused once the limit is crossed.
        let body = Body::from(vec![b' '; MAX_MANIFEST_SIZE + 1]);
        let error = read_manifest(&HeaderMap::new(), body).await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::ManifestInvalid);
        // With a declared length: refused before reading anything.
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_LENGTH, HeaderValue::from_static("4194305"));
        let error = read_manifest(&headers, Body::empty()).await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::ManifestInvalid);
        assert!(error.to_string().contains("larger than"), "{error}");
    }
}
