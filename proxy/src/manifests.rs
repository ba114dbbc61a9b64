//! `/v2/<name>/manifests/<reference>`: manifests are stored as blobs on their owning origin and
//! tags live in the build-index. A push is accepted only when every blob and child manifest it
//! references exists, so a tag never points at something unpullable.
//!
//! Deleting removes tags only: blobs, manifests included, stay in the content-addressed store
//! (shared across repositories). Garbage collection of unreferenced blobs is not implemented.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;
use shoal_api::ApiError;
use shoal_api::wire::DOCKER_CONTENT_DIGEST;
use shoal_core::{Digest, ErrorCode, MAX_MANIFEST_SIZE, Manifest, Name, Reference, Tag};
use shoal_registry_server::{RegistryError, StoredManifest};

use crate::state::AppState;

/// Concurrent origin stats while checking a pushed manifest's references: enough to hide
/// round trips for images with dozens of layers without flooding the origins.
const STAT_CONCURRENCY: usize = 16;
/// Concurrent tag lookups while deleting a manifest by digest.
const UNTAG_CONCURRENCY: usize = 8;

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

/// `PUT`: validates, stores the manifest blob, then points the tag at it.
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
    let digest = Digest::of(&bytes);
    if let Reference::Digest(expected) = reference
        && *expected != digest
    {
        return Err(RegistryError::new(
            ErrorCode::DigestInvalid,
            format!("manifest digest is {digest}, not {expected}"),
        ));
    }
    check_references(state, name, &manifest).await?;
    state
        .upstreams
        .put_blob(&digest, name, None, reqwest::Body::from(bytes))
        .await?;
    if let Reference::Tag(tag) = reference {
        state
            .upstreams
            .build_index()
            .put_tag(name, tag, &digest)
            .await?;
    }
    state.metrics.manifests_put.inc();
    let headers = [
        (LOCATION.as_str(), format!("/v2/{name}/manifests/{digest}")),
        (DOCKER_CONTENT_DIGEST, digest.to_string()),
    ];
    Ok((StatusCode::CREATED, headers).into_response())
}

/// `DELETE`: by tag removes that tag; by digest removes every tag of the repository pointing
/// at the manifest.
pub async fn delete(
    state: &AppState,
    name: &Name,
    reference: &Reference,
) -> Result<Response, RegistryError> {
    match reference {
        Reference::Tag(tag) => {
            if !state.upstreams.build_index().delete_tag(name, tag).await? {
                return Err(RegistryError::manifest_unknown(reference));
            }
        }
        Reference::Digest(digest) => {
            let stored = state
                .upstreams
                .read_blob(digest, |origin| async move {
                    origin.stat_blob(digest, Some(name)).await
                })
                .await?;
            if stored.is_none() {
                return Err(RegistryError::manifest_unknown(reference));
            }
            untag(state, name, digest).await?;
        }
    }
    Ok(StatusCode::ACCEPTED.into_response())
}

/// The digest `reference` names; `None` for an unknown tag.
async fn resolve(
    state: &AppState,
    name: &Name,
    reference: &Reference,
) -> Result<Option<Digest>, RegistryError> {
    match reference {
        Reference::Digest(digest) => Ok(Some(*digest)),
        Reference::Tag(tag) => Ok(state.upstreams.build_index().get_tag(name, tag).await?),
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

/// Deletes each of `name`'s tags that points at `digest`. A tag re-pointed between the lookup
/// and the delete is deleted anyway; the build-index has no compare-and-delete.
async fn untag(state: &AppState, name: &Name, digest: &Digest) -> Result<(), RegistryError> {
    let build_index = state.upstreams.build_index();
    let tags = all_tags(state, name).await?;
    futures::stream::iter(tags)
        .map(|tag| async move {
            if build_index.get_tag(name, &tag).await? == Some(*digest) {
                build_index.delete_tag(name, &tag).await?;
            }
            Ok::<_, ApiError>(())
        })
        .buffer_unordered(UNTAG_CONCURRENCY)
        .try_collect::<()>()
        .await?;
    Ok(())
}

/// Every tag of `name`, page by page.
async fn all_tags(state: &AppState, name: &Name) -> Result<Vec<Tag>, RegistryError> {
    let mut tags = Vec::new();
    let mut last: Option<String> = None;
    loop {
        let Some(page) = state
            .upstreams
            .build_index()
            .list_tags(name, None, last.as_deref())
            .await?
        else {
            return Ok(tags);
        };
        // Tags the build-index holds were validated on the way in; skip any that are not.
        tags.extend(page.items.iter().filter_map(|tag| Tag::parse(tag).ok()));
        match page.next_last {
            // Pages are sorted, so a cursor that does not move forward would loop forever.
            Some(next) if last.as_ref().is_none_or(|previous| next > *previous) => {
                last = Some(next);
            }
            _ => return Ok(tags),
        }
    }
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
