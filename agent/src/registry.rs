//! The agent's side of the shared Registry V2 layer: the read API only; every write answers
//! 405 UNSUPPORTED there. Requests read the repository containerd's `?ns=` maps to (`namespace`).
//!
//! A blob GET streams from the p2p engine: from the local store, or in order as its pieces
//! arrive from peers while it downloads, `Range` included. A HEAD never starts a download: the
//! local store or the tracker's metainfo answers. A blob that exists nowhere is a prompt 404, so
//! runtimes fall back to their upstream. A tag, or a manifest asked for by digest, is resolved
//! through the build-index (cached for `tag_cache_ttl`, so a deleted manifest is served for at
//! most that long); the manifest itself is a blob like any other (`manifests`).

use std::time::Instant;

use async_trait::async_trait;
use axum::body::Body;
use axum::response::Response;
use futures::StreamExt;
use http::StatusCode;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE};
use shoal_core::{ByteRange, Digest, Name, Reference, Referrer};
use shoal_p2p::P2pError;
use shoal_registry_server::{Query, RegistryBackend, RegistryError, StoredManifest};

use crate::manifests;
use crate::metrics::{AgentMetrics, BlobResult};
use crate::state::AppState;

#[async_trait]
impl RegistryBackend for AppState {
    fn repository(&self, name: Name, query: &Query) -> Result<Name, RegistryError> {
        Ok(self.namespaces.resolve(name, query.get("ns"))?)
    }

    async fn manifest(
        &self,
        name: &Name,
        reference: &Reference,
    ) -> Result<Option<StoredManifest>, RegistryError> {
        let Some(digest) = self.tags.resolve(name, reference).await? else {
            return Ok(None);
        };
        let bytes = manifests::read(self, name, &digest).await?;
        Ok(bytes.map(|bytes| StoredManifest { digest, bytes }))
    }

    /// Read from the build-index on every request, as the proxy does.
    async fn referrers(
        &self,
        name: &Name,
        digest: &Digest,
    ) -> Result<Vec<Referrer>, RegistryError> {
        Ok(self.tags.referrers(name, digest).await?)
    }

    async fn get_blob(
        &self,
        name: &Name,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<Option<Response>, RegistryError> {
        let arrived = Instant::now();
        let hit = is_local(self, digest).await;
        // Taken before the lookup so the cache cannot evict the blob under this response.
        let guard = self.cache.reader(*digest);
        let blob = match self.engine.fetch(digest, Some(name)).await {
            Ok(blob) => blob,
            Err(error) => return engine_error(&self.metrics, error),
        };
        self.metrics.blob_request(if hit {
            BlobResult::Hit
        } else {
            BlobResult::Miss
        });
        let length = blob.length();
        let (status, span) = match range {
            None => (StatusCode::OK, 0..length),
            Some(range) => match range.resolve(length) {
                Ok(span) => (StatusCode::PARTIAL_CONTENT, span),
                Err(_) => return Err(RegistryError::range_unsatisfiable(length)),
            },
        };
        let mut response = Response::builder()
            .status(status)
            .header(CONTENT_LENGTH, span.end - span.start);
        if status == StatusCode::PARTIAL_CONTENT {
            let last = span.end - 1;
            response = response.header(
                CONTENT_RANGE,
                format!("bytes {}-{last}/{length}", span.start),
            );
        }
        // The guard lives as long as the body stream: until the last byte is sent or the client
        // goes away.
        let mut first_byte = Some(self.metrics.clone());
        let body = blob.stream(span).map(move |chunk| {
            let _reading = &guard;
            if let Some(metrics) = first_byte.take() {
                metrics.blob_first_byte(arrived.elapsed());
            }
            chunk
        });
        response
            .body(Body::from_stream(body))
            .map(Some)
            .map_err(RegistryError::unavailable)
    }

    async fn blob_length(
        &self,
        name: &Name,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        match self.store.stat(digest).await {
            Ok(Some(length)) => {
                self.metrics.blob_request(BlobResult::Hit);
                Ok(Some(length))
            }
            Ok(None) => match self.engine.metainfo(digest, Some(name)).await {
                Ok(metainfo) => {
                    self.metrics.blob_request(BlobResult::Miss);
                    Ok(Some(metainfo.length()))
                }
                Err(error) => engine_error(&self.metrics, error),
            },
            Err(error) => {
                self.metrics.blob_request(BlobResult::Error);
                Err(RegistryError::unavailable(error))
            }
        }
    }
}

async fn is_local(state: &AppState, digest: &Digest) -> bool {
    matches!(state.store.stat(digest).await, Ok(Some(_)))
}

/// Counts the failure and maps it: absent everywhere is `None` (404), anything else 503.
fn engine_error<T>(metrics: &AgentMetrics, error: P2pError) -> Result<Option<T>, RegistryError> {
    if matches!(error, P2pError::NotFound { .. }) {
        metrics.blob_request(BlobResult::NotFound);
        Ok(None)
    } else {
        metrics.blob_request(BlobResult::Error);
        Err(RegistryError::unavailable(error))
    }
}
