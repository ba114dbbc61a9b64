//! `POST /preheat` with `{"repository": "team/app", "digest": "sha256:…"}`: fetches an image
//! into this agent's cache before anyone pulls it, so the pull is served from local disk. The
//! proxy calls it on the agents it picks after a push. The manifest, then its config and layers,
//! come through the p2p engine exactly as in a pull (pieces from peers and origins, each
//! verified); an index preheats only the image for this agent's own platform.
//!
//! It requires `preheat.secret` (the proxy's, in the same header): 401 without it, 403 when the
//! agent has none configured (one request makes it fetch a whole image, so no secret means off).
//!
//! The answer comes once everything is in the store: 200 with a summary, 400 for a bad request
//! (nothing fetched), 404 for an unknown manifest, 502 when a blob could not be fetched, 503
//! when the engine or the store failed.

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use shoal_core::{
    Digest, MAX_MANIFEST_SIZE, Manifest, ManifestError, ManifestWalk, Name, TooManyManifests,
};
use shoal_p2p::P2pError;
use shoal_service::RouteLabel;

use crate::manifests;
use crate::metrics::PreheatResult;
use crate::state::AppState;

/// Blobs fetched at once: enough to overlap the small config with the layers and keep a few
/// downloads busy, few enough that a preheat does not crowd out the node's own pulls.
const BLOB_CONCURRENCY: usize = 4;
/// An index of indexes is legal but rare; this bounds the walk over a malicious one.
const MAX_MANIFESTS: usize = 16;
/// The engine hands out a blob's last byte before it has re-hashed the whole blob and moved it
/// into the store; the answer waits for that (a few seconds for a GiB layer).
const COMMIT_WAIT: Duration = Duration::from_secs(120);
/// How often the store is checked for the committed blob meanwhile.
const COMMIT_POLL: Duration = Duration::from_millis(20);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PreheatRequest {
    repository: String,
    digest: String,
}

/// What a successful preheat did.
#[derive(Debug, Default, Serialize)]
struct Summary {
    /// `os/architecture` the images were chosen for.
    platform: String,
    /// Image manifests preheated (more than one only for an index of several matching images).
    images: usize,
    /// Blobs now in the store: the manifests read, and the configs and layers of the images.
    blobs: usize,
    /// Their total size.
    bytes: u64,
    /// How many of them were not in the store yet.
    fetched: usize,
}

/// Why a preheat failed; each variant knows its status.
#[derive(Debug, thiserror::Error)]
enum PreheatError {
    #[error("{0}")]
    BadRequest(String),
    #[error("manifest {digest} is unknown")]
    ManifestUnknown { digest: Digest },
    #[error("{digest} is not a manifest: {source}")]
    NotAManifest {
        digest: Digest,
        #[source]
        source: ManifestError,
    },
    #[error(transparent)]
    TooManyManifests(#[from] TooManyManifests),
    #[error("blob {digest} is unknown to the tracker")]
    BlobUnknown { digest: Digest },
    #[error("fetching {digest} failed: {reason}")]
    Fetch { digest: Digest, reason: String },
    #[error("blob {digest} was fetched but did not reach the store within {COMMIT_WAIT:?}")]
    NotCommitted { digest: Digest },
    #[error("{0}")]
    Unavailable(String),
}

impl PreheatError {
    fn status(&self) -> StatusCode {
        match self {
            PreheatError::BadRequest(_) => StatusCode::BAD_REQUEST,
            PreheatError::ManifestUnknown { .. } | PreheatError::NotAManifest { .. } => {
                StatusCode::NOT_FOUND
            }
            PreheatError::TooManyManifests(_) => StatusCode::UNPROCESSABLE_ENTITY,
            PreheatError::BlobUnknown { .. }
            | PreheatError::Fetch { .. }
            | PreheatError::NotCommitted { .. } => StatusCode::BAD_GATEWAY,
            PreheatError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn result(&self) -> PreheatResult {
        match self {
            PreheatError::BadRequest(_) => PreheatResult::BadRequest,
            PreheatError::ManifestUnknown { .. } | PreheatError::NotAManifest { .. } => {
                PreheatResult::NotFound
            }
            _ => PreheatResult::Failed,
        }
    }

    /// A failure of the engine while fetching `digest`: absent everywhere, the swarm failing to
    /// deliver, or this agent's own tracker connection or store.
    fn engine(digest: Digest, error: P2pError) -> PreheatError {
        match error {
            P2pError::NotFound { .. } => PreheatError::BlobUnknown { digest },
            P2pError::DownloadFailed { reason, .. } => PreheatError::Fetch { digest, reason },
            other => PreheatError::Unavailable(format!("fetching {digest}: {other}")),
        }
    }
}

/// `POST /preheat`.
pub async fn handle(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let authorized = match &state.preheat_secret {
        Some(secret) => secret
            .check(&headers)
            .map_err(|wrong| (StatusCode::UNAUTHORIZED, wrong.to_string())),
        None => Err((
            StatusCode::FORBIDDEN,
            "POST /preheat is off: it needs `preheat.secret` in the agent's config".to_owned(),
        )),
    };
    if let Err((status, message)) = authorized {
        state.metrics.preheat_request(PreheatResult::Unauthorized);
        let response = (status, axum::Json(json!({ "error": message })));
        return (RouteLabel("preheat"), response).into_response();
    }
    let outcome = match parse(&body) {
        Ok((name, digest)) => preheat(&state, &name, digest).await,
        Err(error) => Err(error),
    };
    let response = match outcome {
        Ok(summary) => {
            state.metrics.preheat_request(PreheatResult::Ok);
            axum::Json(summary).into_response()
        }
        Err(error) => {
            state.metrics.preheat_request(error.result());
            tracing::warn!(%error, "preheat failed");
            (
                error.status(),
                axum::Json(json!({ "error": error.to_string() })),
            )
                .into_response()
        }
    };
    (RouteLabel("preheat"), response).into_response()
}

/// The repository and manifest digest of a request body; nothing is fetched before both parse.
fn parse(body: &[u8]) -> Result<(Name, Digest), PreheatError> {
    let request: PreheatRequest = serde_json::from_slice(body).map_err(|error| {
        PreheatError::BadRequest(format!(
            "expected {{\"repository\": \"name\", \"digest\": \"sha256:…\"}}: {error}"
        ))
    })?;
    let name = Name::parse(&request.repository).map_err(|error| {
        PreheatError::BadRequest(format!("repository {:?}: {error}", request.repository))
    })?;
    let digest = Digest::parse(&request.digest).map_err(|error| {
        PreheatError::BadRequest(format!("digest {:?}: {error}", request.digest))
    })?;
    Ok((name, digest))
}

/// This agent's platform in OCI names (`linux/amd64`): Rust calls the architectures by their
/// LLVM names, OCI by Go's.
fn platform() -> (&'static str, &'static str) {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    ("linux", architecture)
}

async fn preheat(state: &AppState, name: &Name, top: Digest) -> Result<Summary, PreheatError> {
    let (os, architecture) = platform();
    let mut summary = Summary {
        platform: format!("{os}/{architecture}"),
        ..Summary::default()
    };
    // Every blob to hold with its size: the manifests read, then configs and layers.
    let mut blobs: Vec<(Digest, u64)> = Vec::new();
    let mut walk = ManifestWalk::new(top, MAX_MANIFESTS);
    while let Some(digest) = walk.next_manifest() {
        let (manifest, size) = read_manifest(state, name, digest).await?;
        blobs.push((digest, size));
        if manifest.media_type().is_index() {
            walk.queue(manifest.children_for(os, architecture).map(|d| d.digest))?;
        } else {
            summary.images += 1;
            for blob in manifest.blobs() {
                if !blobs.iter().any(|(d, _)| *d == blob.digest) {
                    blobs.push((blob.digest, blob.size));
                }
            }
        }
    }
    // Manifests are already local (reading one downloads it) but maybe not yet committed;
    // fetching them again waits for that.
    let digests: Vec<Digest> = blobs.iter().map(|(d, _)| *d).collect();
    let fetched: Vec<bool> = futures::stream::iter(digests)
        .map(|digest| fetch_blob(state, name, digest))
        .buffer_unordered(BLOB_CONCURRENCY)
        .try_collect()
        .await?;
    summary.blobs = blobs.len();
    summary.bytes = blobs.iter().map(|(_, size)| size).sum();
    summary.fetched = fetched.into_iter().filter(|&f| f).count();
    tracing::info!(repository = %name, digest = %top, ?summary, "preheated");
    Ok(summary)
}

/// The manifest and its size in bytes.
async fn read_manifest(
    state: &AppState,
    name: &Name,
    digest: Digest,
) -> Result<(Manifest, u64), PreheatError> {
    // A digest naming a layer is no manifest: refuse it before downloading gigabytes. The
    // metainfo is cached, so the fetch below does not ask the tracker again.
    match state.engine.metainfo(&digest, Some(name)).await {
        Ok(metainfo) if metainfo.length() > MAX_MANIFEST_SIZE as u64 => {
            return Err(PreheatError::ManifestUnknown { digest });
        }
        Ok(_) => {}
        Err(P2pError::NotFound { .. }) => return Err(PreheatError::ManifestUnknown { digest }),
        Err(error) => {
            return Err(PreheatError::Unavailable(format!(
                "looking up manifest {digest}: {error}"
            )));
        }
    }
    let bytes = manifests::read(state, name, &digest)
        .await
        .map_err(|error| PreheatError::Unavailable(format!("reading manifest {digest}: {error}")))?
        .ok_or(PreheatError::ManifestUnknown { digest })?;
    let manifest = Manifest::parse(&bytes, None)
        .map_err(|source| PreheatError::NotAManifest { digest, source })?;
    Ok((manifest, bytes.len() as u64))
}

/// Brings `digest` into the store through the engine; true when it was not there yet.
async fn fetch_blob(state: &AppState, name: &Name, digest: Digest) -> Result<bool, PreheatError> {
    let unavailable = |error: shoal_storage::StoreError| {
        PreheatError::Unavailable(format!("the store failed on {digest}: {error}"))
    };
    // Held until the blob is committed, so the cache cannot evict it under the preheat.
    let _reading = state.cache.reader(digest);
    if state
        .store
        .stat(&digest)
        .await
        .map_err(unavailable)?
        .is_some()
    {
        return Ok(false);
    }
    let blob = state
        .engine
        .fetch(&digest, Some(name))
        .await
        .map_err(|error| PreheatError::engine(digest, error))?;
    // Reading every byte waits for every piece to arrive and be verified.
    let mut bytes = blob.stream(0..blob.length());
    while let Some(chunk) = bytes.next().await {
        chunk.map_err(|error| PreheatError::Fetch {
            digest,
            reason: error.to_string(),
        })?;
    }
    let deadline = tokio::time::Instant::now() + COMMIT_WAIT;
    while state
        .store
        .stat(&digest)
        .await
        .map_err(unavailable)?
        .is_none()
    {
        if tokio::time::Instant::now() >= deadline {
            return Err(PreheatError::NotCommitted { digest });
        }
        tokio::time::sleep(COMMIT_POLL).await;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_bodies_are_refused_before_anything_is_fetched() {
        let digest = Digest::of(b"m").to_string();
        for (body, reason) in [
            (b"{not json".to_vec(), "expected"),
            (
                br#"{"repository": "a/b"}"#.to_vec(),
                "missing field `digest`",
            ),
            (
                format!(r#"{{"repository": "a/b", "digest": "{digest}", "x": 1}}"#).into_bytes(),
                "unknown field",
            ),
            (
                format!(r#"{{"repository": "UPPER", "digest": "{digest}"}}"#).into_bytes(),
                "repository \"UPPER\"",
            ),
            (
                br#"{"repository": "a/b", "digest": "sha256:00"}"#.to_vec(),
                "digest \"sha256:00\"",
            ),
        ] {
            let error = parse(&body).unwrap_err();
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
            assert!(error.to_string().contains(reason), "{error}");
        }
        let (name, parsed) =
            parse(format!(r#"{{"repository": "a/b", "digest": "{digest}"}}"#).as_bytes()).unwrap();
        assert_eq!((name.as_str(), parsed.to_string()), ("a/b", digest));
    }

    #[test]
    fn the_platform_uses_oci_architecture_names() {
        let (os, architecture) = platform();
        assert_eq!(os, "linux");
        assert_ne!(architecture, "x86_64");
        assert_ne!(architecture, "aarch64");
    }
}
