//! Manifests, for manifest requests and preheat: a blob like any other, fetched through the p2p
//! engine and read whole (manifests are bounded by [`MAX_MANIFEST_SIZE`]).

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use shoal_core::{Digest, MAX_MANIFEST_SIZE, Name};
use shoal_p2p::P2pError;
use shoal_registry_server::RegistryError;

use crate::state::AppState;

/// The blob's bytes when it exists and is small enough to be a manifest.
pub async fn read(
    state: &AppState,
    name: &Name,
    digest: &Digest,
) -> Result<Option<Bytes>, RegistryError> {
    let _reading = state.cache.reader(*digest);
    let blob = match state.engine.fetch(digest, Some(name)).await {
        Ok(blob) => blob,
        Err(P2pError::NotFound { .. }) => return Ok(None),
        Err(error) => return Err(RegistryError::unavailable(error)),
    };
    let length = blob.length();
    if length > MAX_MANIFEST_SIZE as u64 {
        return Ok(None);
    }
    let mut bytes = BytesMut::with_capacity(length as usize);
    let mut stream = blob.stream(0..length);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(RegistryError::unavailable)?;
        if bytes.len() + chunk.len() > MAX_MANIFEST_SIZE {
            return Ok(None);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Some(bytes.freeze()))
}
