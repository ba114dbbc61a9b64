//! The origin's side of garbage collection (the build-index runs the collection; the protocol
//! and the race it closes are in `docs/gc.md`). An origin remembers when each blob was last
//! touched (a manifest about to be recorded with it, an upload or replica committing it), and
//! lets a collection run condemn, delete and release a blob:
//!
//! - condemning succeeds only when the blob was not touched within the window the run names
//!   (its grace period plus the time since its mark began), and only when this origin has been
//!   up for that long, since touches live in memory;
//! - while a blob is condemned, a touch of it fails (the manifest PUT gets BLOB_UNKNOWN), so a
//!   manifest can never be recorded with a blob a sweep is deleting;
//! - a delete removes the store's copy, the blob's queued write-back and replica pushes and,
//!   when asked, the backends' copies; only the run that condemned the blob may delete it.
//!
//! Every decision is taken under one lock over the touch and condemnation tables, so a touch
//! and a condemnation of one digest are ordered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use shoal_api::gc::{CondemnRequest, Condemned, Deleted, ListedBlob};
use shoal_backends::{BLOBS_PREFIX, BackendError, blob_key, parse_blob_key};
use shoal_core::{Digest, ErrorCode};

use crate::Origin;
use crate::errors::ApiError;
use crate::extract::{DigestParam, Params};

/// How long a condemnation holds without its run deleting or releasing the blob: a run that
/// died mid-sweep does not block pushes of the blob for longer than this.
const CONDEMNATION_LEASE: Duration = Duration::from_secs(600);
/// Touches older than this are forgotten: a run whose window is longer cannot condemn anything
/// (the build-index keeps `gc.grace` well below it).
pub(crate) const TOUCH_MEMORY: Duration = Duration::from_secs(24 * 3600);
/// The touch table is pruned of forgotten touches once it holds this many more entries than
/// after the last pruning.
const PRUNE_EVERY: usize = 4096;

/// Touch times and condemnations, one table of each.
#[derive(Debug)]
pub(crate) struct Touches {
    /// When this origin started: touches before it are unknown.
    started: Instant,
    tables: Mutex<Tables>,
}

#[derive(Debug, Default)]
struct Tables {
    touched: HashMap<Digest, Instant>,
    condemned: HashMap<Digest, Condemnation>,
    pruned_at_len: usize,
}

#[derive(Debug)]
struct Condemnation {
    run: String,
    until: Instant,
    /// A commit of the blob came in while it was condemned: the run may not delete it, and its
    /// write-back is queued again when the condemnation ends.
    committed: bool,
}

impl Default for Touches {
    fn default() -> Self {
        Touches {
            started: Instant::now(),
            tables: Mutex::default(),
        }
    }
}

impl Touches {
    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables
            .lock()
            .expect("the touch tables' lock is never poisoned")
    }

    /// Notes that a manifest is about to reference `digest`; `false` while it is condemned.
    fn touch(&self, digest: Digest) -> bool {
        let now = Instant::now();
        let mut state = self.tables();
        if state.condemned(&digest, now).is_some() {
            return false;
        }
        state.touch(digest, now);
        true
    }

    /// Notes that `digest` was just committed here (an upload, a replica, a PUT): a touch that
    /// always succeeds, and that keeps a condemned blob from being deleted by its run.
    pub(crate) fn committed(&self, digest: Digest) {
        let now = Instant::now();
        let mut state = self.tables();
        if let Some(condemnation) = state.condemned.get_mut(&digest) {
            condemnation.committed = true;
        }
        state.touch(digest, now);
    }

    /// Condemns `digest` for `request.run` unless it was touched within the window; a dry run
    /// only answers whether it would. `Err` names why it is kept.
    fn condemn(&self, digest: Digest, request: &CondemnRequest) -> Result<(), String> {
        let window = Duration::from_millis(request.untouched_for_ms);
        let now = Instant::now();
        let up = now.duration_since(self.started);
        if up < window {
            return Err(format!(
                "this origin started {}s ago, within the {}s window: touches before its start are unknown",
                up.as_secs(),
                window.as_secs()
            ));
        }
        if window > TOUCH_MEMORY {
            return Err(format!(
                "the {}s window is longer than the {}s touches are remembered",
                window.as_secs(),
                TOUCH_MEMORY.as_secs()
            ));
        }
        let mut state = self.tables();
        if let Some(at) = state.touched.get(&digest) {
            let age = now.duration_since(*at);
            if age < window {
                return Err(format!(
                    "touched {}s ago, within the {}s window",
                    age.as_secs(),
                    window.as_secs()
                ));
            }
        }
        if let Some(other) = state.condemned(&digest, now) {
            return Err(format!("being swept by run {}", other.run));
        }
        if !request.dry_run {
            state.condemned.insert(
                digest,
                Condemnation {
                    run: request.run.clone(),
                    until: now + CONDEMNATION_LEASE,
                    committed: false,
                },
            );
        }
        Ok(())
    }

    /// Whether `run` still holds `digest` condemned, with no commit since.
    fn may_delete(&self, digest: &Digest, run: &str) -> Result<(), String> {
        let mut state = self.tables();
        match state.condemned(digest, Instant::now()) {
            Some(c) if c.run == run && !c.committed => Ok(()),
            Some(c) if c.run == run => Err("committed again while condemned".into()),
            Some(c) => Err(format!("condemned by run {}, not {run}", c.run)),
            None => Err(format!("not condemned by run {run} (or its lease ran out)")),
        }
    }

    /// Ends `run`'s condemnation of `digest`; `true` when a commit came in meanwhile.
    fn release(&self, digest: &Digest, run: &str) -> bool {
        let mut state = self.tables();
        match state.condemned.get(digest) {
            Some(c) if c.run == run => state.condemned.remove(digest).is_some_and(|c| c.committed),
            _ => false,
        }
    }
}

impl Tables {
    fn touch(&mut self, digest: Digest, now: Instant) {
        self.touched.insert(digest, now);
        if self.touched.len() >= self.pruned_at_len + PRUNE_EVERY {
            self.touched
                .retain(|_, at| now.duration_since(*at) < TOUCH_MEMORY);
            self.condemned.retain(|_, c| c.until > now);
            self.pruned_at_len = self.touched.len();
        }
    }

    /// The live condemnation of `digest`; an expired one is dropped.
    fn condemned(&mut self, digest: &Digest, now: Instant) -> Option<&Condemnation> {
        if self.condemned.get(digest).is_some_and(|c| c.until <= now) {
            self.condemned.remove(digest);
        }
        self.condemned.get(digest)
    }
}

/// `POST /blobs/{digest}/touch?namespace=`: `{"digest","size"}` from the store or the backend,
/// as `HEAD` finds it, after noting the touch; 404 when absent or condemned.
pub(crate) async fn touch(
    State(origin): State<Arc<Origin>>,
    DigestParam(digest): DigestParam,
    params: Params,
) -> Result<Response, ApiError> {
    if !origin.touches.touch(digest) {
        return Err(ApiError::new(
            ErrorCode::BlobUnknown,
            format!("blob {digest} is being garbage-collected"),
        ));
    }
    let size = crate::blobs::length(&origin, &digest, params.namespace.as_ref())
        .await?
        .ok_or_else(|| ApiError::blob_unknown(&digest))?;
    Ok(Json(ListedBlob { digest, size }).into_response())
}

/// `GET /gc/store`: every blob committed in the store.
pub(crate) async fn store_blobs(State(origin): State<Arc<Origin>>) -> Result<Response, ApiError> {
    let blobs = origin.store.list_blobs().await?;
    let listed: Vec<ListedBlob> = blobs
        .into_iter()
        .map(|blob| ListedBlob {
            digest: blob.digest,
            size: blob.length,
        })
        .collect();
    Ok(Json(listed).into_response())
}

/// `GET /gc/backend`: every blob under `blobs/<algorithm>/` in each backend that lists keys
/// (a registry or HTTP backend lists none).
pub(crate) async fn backend_blobs(State(origin): State<Arc<Origin>>) -> Result<Response, ApiError> {
    let mut listed = Vec::new();
    for backend in origin.backends.backends() {
        let keys = match backend.list(BLOBS_PREFIX).await {
            Ok(keys) => keys,
            Err(BackendError::Unsupported { .. }) => continue,
            Err(error) => return Err(error.into()),
        };
        for key in keys {
            let Some(digest) = parse_blob_key(&key) else {
                continue;
            };
            if let Some(size) = backend.stat(&key).await? {
                listed.push(ListedBlob { digest, size });
            }
        }
    }
    Ok(Json(listed).into_response())
}

/// `POST /gc/blobs/{digest}/condemn` with a [`CondemnRequest`] body: a [`Condemned`] answer.
pub(crate) async fn condemn(
    State(origin): State<Arc<Origin>>,
    DigestParam(digest): DigestParam,
    request: Result<Json<CondemnRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) =
        request.map_err(|e| ApiError::new(ErrorCode::NameInvalid, e.body_text()))?;
    if let Err(reason) = origin.touches.condemn(digest, &request) {
        return Ok(Json(Condemned::Kept { reason }).into_response());
    }
    let sizes = async {
        let store = origin.store.stat(&digest).await?;
        let backend = origin.backends.locate(None, &blob_key(&digest)).await?;
        Ok::<_, ApiError>((store, backend.map(|(_, len)| len)))
    };
    match sizes.await {
        Ok((store, backend)) => Ok(Json(Condemned::Condemned { store, backend }).into_response()),
        Err(error) => {
            // The run cannot size the blob, so it deletes nothing: let it go at once.
            if !request.dry_run {
                origin.touches.release(&digest, &request.run);
            }
            Err(error)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunQuery {
    run: String,
    #[serde(default)]
    backend: bool,
}

type RunParam = Result<Query<RunQuery>, axum::extract::rejection::QueryRejection>;

fn run_query(query: RunParam) -> Result<RunQuery, ApiError> {
    query
        .map(|Query(query)| query)
        .map_err(|e| ApiError::new(ErrorCode::NameInvalid, e.body_text()))
}

/// `DELETE /gc/blobs/{digest}?run=&backend=`: deletes a blob `run` condemned; 403 DENIED when
/// it does not hold it (so nothing is deleted).
pub(crate) async fn delete(
    State(origin): State<Arc<Origin>>,
    DigestParam(digest): DigestParam,
    query: RunParam,
) -> Result<Response, ApiError> {
    let query = run_query(query)?;
    origin
        .touches
        .may_delete(&digest, &query.run)
        .map_err(|reason| ApiError::new(ErrorCode::Denied, format!("{digest}: {reason}")))?;
    // The queues first: neither may copy the blob anywhere once it is gone here.
    origin.writeback.remove(&digest).await?;
    if let Some(ring) = &origin.ring {
        ring.drop_pushes(&digest).await?;
    }
    let mut deleted = Deleted {
        store: origin.store.stat(&digest).await?.unwrap_or(0),
        backend: 0,
    };
    origin.store.delete(&digest).await?;
    if query.backend {
        let key = blob_key(&digest);
        for backend in origin.backends.backends() {
            let Some(len) = backend.stat(&key).await? else {
                continue;
            };
            match backend.delete(&key).await {
                Ok(_) => deleted.backend += len,
                Err(error @ BackendError::Unsupported { .. }) => {
                    tracing::warn!(%digest, %error, "a backend cannot delete: its copy stays");
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
    tracing::info!(%digest, run = query.run, store = deleted.store, backend = deleted.backend, "blob garbage-collected");
    Ok(Json(deleted).into_response())
}

/// `DELETE /gc/blobs/{digest}/condemn?run=`: ends the condemnation. A blob committed again
/// meanwhile has its write-back queued again, in case the run deleted the backend's copy after
/// the commit's own write-back had run.
pub(crate) async fn release(
    State(origin): State<Arc<Origin>>,
    DigestParam(digest): DigestParam,
    query: RunParam,
) -> Result<Response, ApiError> {
    let query = run_query(query)?;
    if origin.touches.release(&digest, &query.run) && origin.store.stat(&digest).await?.is_some() {
        origin.writeback.enqueue(&digest, None).await?;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Touch tables of an origin that has been up for an hour.
    fn up_an_hour() -> Touches {
        Touches {
            started: Instant::now() - Duration::from_secs(3600),
            tables: Mutex::default(),
        }
    }

    fn request(run: &str, window: Duration, dry_run: bool) -> CondemnRequest {
        CondemnRequest {
            run: run.into(),
            untouched_for_ms: window.as_millis() as u64,
            dry_run,
        }
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn a_blob_touched_within_the_window_is_kept_and_an_untouched_one_condemned() {
        let touches = up_an_hour();
        let (touched, untouched) = (Digest::of(b"touched"), Digest::of(b"untouched"));
        assert!(touches.touch(touched));
        let kept = touches.condemn(touched, &request("r1", MINUTE, false));
        assert!(kept.is_err_and(|reason| reason.contains("touched")));
        touches
            .condemn(untouched, &request("r1", MINUTE, false))
            .expect("never touched: condemned");
        // A commit counts as a touch too.
        let committed = Digest::of(b"committed");
        touches.committed(committed);
        assert!(
            touches
                .condemn(committed, &request("r1", MINUTE, false))
                .is_err()
        );
    }

    #[test]
    fn a_condemned_blob_refuses_touches_until_released_by_its_run() {
        let touches = up_an_hour();
        let digest = Digest::of(b"blob");
        touches
            .condemn(digest, &request("r1", MINUTE, false))
            .expect("condemned");
        assert!(!touches.touch(digest), "a touch of a condemned blob fails");
        let other = touches.condemn(digest, &request("r2", MINUTE, false));
        assert!(other.is_err_and(|reason| reason.contains("r1")));
        assert!(
            touches.may_delete(&digest, "r2").is_err(),
            "only its run deletes"
        );
        touches
            .may_delete(&digest, "r1")
            .expect("its run may delete");
        assert!(
            !touches.release(&digest, "r2"),
            "another run cannot release it"
        );
        assert!(!touches.touch(digest));
        touches.release(&digest, "r1");
        assert!(touches.touch(digest), "released");
    }

    #[test]
    fn a_commit_while_condemned_stops_the_delete_and_is_reported_on_release() {
        let touches = up_an_hour();
        let digest = Digest::of(b"blob");
        touches
            .condemn(digest, &request("r1", MINUTE, false))
            .expect("condemned");
        touches.committed(digest);
        assert!(touches.may_delete(&digest, "r1").is_err());
        assert!(touches.release(&digest, "r1"), "the commit is reported");
    }

    #[test]
    fn a_dry_run_condemns_nothing() {
        let touches = up_an_hour();
        let digest = Digest::of(b"blob");
        touches
            .condemn(digest, &request("r1", MINUTE, true))
            .expect("would condemn");
        assert!(touches.touch(digest));
        assert!(touches.may_delete(&digest, "r1").is_err());
    }

    #[test]
    fn an_origin_up_for_less_than_the_window_condemns_nothing() {
        let touches = Touches::default();
        let refused = touches.condemn(Digest::of(b"blob"), &request("r1", MINUTE, false));
        assert!(refused.is_err_and(|reason| reason.contains("started")));
        let too_long = up_an_hour().condemn(
            Digest::of(b"blob"),
            &request("r1", TOUCH_MEMORY + MINUTE, false),
        );
        assert!(too_long.is_err());
    }
}
