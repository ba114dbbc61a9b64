//! `GET` and `HEAD /v2/<name>/manifests/<reference>`. A tag is resolved through the build-index
//! (cached briefly); the manifest itself is a blob like any other, fetched through the p2p
//! engine and read whole (manifests are bounded by [`MAX_MANIFEST_SIZE`]). Its own bytes decide
//! the media type. HEAD answers the same headers without the body, which docker needs for the
//! digest of a tag.

use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use shoal_api::wire::DOCKER_CONTENT_DIGEST;
use shoal_core::{Digest, MAX_MANIFEST_SIZE, Manifest, Name, Reference};
use shoal_p2p::P2pError;

use crate::errors::AgentError;
use crate::routes::AppState;

/// The manifest with `Content-Type`, `Docker-Content-Digest` and `Content-Length`. The HTTP
/// layer drops the body of a HEAD and keeps its headers.
pub async fn get(
    state: &AppState,
    name: &Name,
    reference: &Reference,
) -> Result<Response, AgentError> {
    let digest = match reference {
        Reference::Digest(digest) => *digest,
        Reference::Tag(tag) => state
            .tags
            .resolve(name, tag)
            .await?
            .ok_or_else(|| AgentError::manifest_unknown(reference))?,
    };
    let bytes = read(state, name, &digest)
        .await?
        .ok_or_else(|| AgentError::manifest_unknown(reference))?;
    // A digest naming a layer (or anything else) is no manifest.
    let manifest =
        Manifest::parse(&bytes, None).map_err(|_| AgentError::manifest_unknown(reference))?;
    let headers = [
        (
            CONTENT_TYPE.as_str(),
            manifest.media_type().as_str().to_owned(),
        ),
        (DOCKER_CONTENT_DIGEST, digest.to_string()),
        (CONTENT_LENGTH.as_str(), bytes.len().to_string()),
    ];
    Ok((headers, bytes).into_response())
}

/// The blob's bytes when it exists and is small enough to be a manifest.
pub async fn read(
    state: &AppState,
    name: &Name,
    digest: &Digest,
) -> Result<Option<Bytes>, AgentError> {
    let _reading = state.cache.reader(*digest);
    let blob = match state.engine.fetch(digest, Some(name)).await {
        Ok(blob) => blob,
        Err(P2pError::NotFound { .. }) => return Ok(None),
        Err(error) => return Err(AgentError::unavailable(error)),
    };
    let length = blob.length();
    if length > MAX_MANIFEST_SIZE as u64 {
        return Ok(None);
    }
    let mut bytes = BytesMut::with_capacity(length as usize);
    let mut stream = blob.stream(0..length);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(AgentError::unavailable)?;
        if bytes.len() + chunk.len() > MAX_MANIFEST_SIZE {
            return Ok(None);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Some(bytes.freeze()))
}
