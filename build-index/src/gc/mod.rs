//! Garbage collection of blobs: mark every blob reachable from a tag or a recorded manifest of
//! any repository (`mark`), then sweep the rest from every origin's store and from the backend
//! (`sweep`), logging each swept blob (`tombstones`). Runs every `gc.interval` and on demand
//! (`POST /v1/gc`); `DELETE /v1/blobs/{digest}` deletes one unreferenced blob through the same
//! reference check and delete path. The race with pushes and how it is closed: `docs/gc.md`.

mod mark;
mod sweep;
mod tombstones;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use futures::{StreamExt, stream};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use shoal_api::gc::{BlobDeleted, GcReport};
use shoal_core::{Digest, ErrorCode};
use shoal_service::CancellationToken;
use tokio::sync::{Mutex, OwnedRwLockReadGuard, RwLock};
use tracing::{info, warn};

use crate::error::Error;
use crate::tags::TagStore;
use crate::verify::Origins;

pub use tombstones::Tombstones;

/// Unreferenced blobs swept at once: each is a few small requests to every origin, so a few in
/// flight hide the round trips without crowding the origins' request queues.
const SWEEP_CONCURRENCY: usize = 8;

/// The longest `gc.grace`: origins remember touches for 24 h, and a run's window is its grace
/// plus the time since its mark began.
const MAX_GRACE: Duration = Duration::from_secs(12 * 3600);

/// `gc:` in the build-index config.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// Time between scheduled runs; absent (the default): only on demand.
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// A blob uploaded, stored or touched by a manifest PUT less than this long before a run's
    /// mark began is never swept; a manifest PUT that takes longer than this between checking
    /// its blobs and recording the manifest fails (503) instead of recording.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// The tombstone log: one JSON line per swept blob.
    pub tombstones: PathBuf,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval: None,
            grace: Duration::from_secs(3600),
            tombstones: PathBuf::from("shoal-data/build-index/gc-tombstones.jsonl"),
        }
    }
}

impl GcConfig {
    /// `Err((field, reason))` for a value that parses but cannot work.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.interval.is_some_and(|interval| interval.is_zero()) {
            return Err((
                "gc.interval",
                "must be above zero (leave it out: no schedule)".into(),
            ));
        }
        if self.grace > MAX_GRACE {
            return Err((
                "gc.grace",
                format!(
                    "at most {}h: origins remember touches for 24h",
                    MAX_GRACE.as_secs() / 3600
                ),
            ));
        }
        Ok(())
    }
}

/// Why a collection or a blob delete failed, or refused.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(
        "a manifest PUT took {elapsed:?} between checking its blobs and recording, longer than gc.grace ({grace:?}): retry the push"
    )]
    GraceExceeded { elapsed: Duration, grace: Duration },
    #[error("invalid garbage-collection query: {0}")]
    Query(String),
    #[error("a garbage collection is already running")]
    Busy,
    #[error(
        "blob {blob} is referenced by manifest {manifest} of repository {repository}: delete the manifest first"
    )]
    Referenced {
        blob: Digest,
        manifest: Digest,
        repository: String,
    },
    #[error("blob {0} is unknown")]
    BlobUnknown(Digest),
    #[error("blob {digest} is kept: {reason}")]
    Kept { digest: Digest, reason: String },
    #[error(
        "manifest {digest} recorded in {repository} cannot be read, so what it references is unknown; nothing was swept: {reason}"
    )]
    Unreadable {
        repository: String,
        digest: Digest,
        reason: String,
    },
    #[error("reading the tags and manifest records failed; nothing was swept: {0}")]
    Records(String),
    #[error("origin {origin} did not answer; nothing was swept: {reason}")]
    OriginDown { origin: String, reason: String },
    #[error("writing the tombstone log {path}: {source}")]
    Tombstone {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl GcError {
    pub fn code(&self) -> ErrorCode {
        match self {
            GcError::Referenced { .. } | GcError::Kept { .. } => ErrorCode::Denied,
            GcError::BlobUnknown(_) => ErrorCode::BlobUnknown,
            // No spec code fits a bad query; SIZE_INVALID is the 400 the paging errors use.
            GcError::Query(_) => ErrorCode::SizeInvalid,
            GcError::GraceExceeded { .. }
            | GcError::Busy
            | GcError::Unreadable { .. }
            | GcError::Records(_)
            | GcError::OriginDown { .. }
            | GcError::Tombstone { .. } => ErrorCode::Unavailable,
        }
    }
}

/// Orders record writes against the start of a mark: every manifest PUT holds a [`Pass`] from
/// the touches of its blobs to its last record write, and a mark begins only once the passes
/// taken before it are returned. So a record written by this build-index is either seen by the
/// mark, or its touches came after the mark began (within the grace window the origins check).
#[derive(Debug, Clone)]
pub struct Gate {
    lock: Arc<RwLock<()>>,
    grace: Duration,
}

/// A manifest PUT's hold on the [`Gate`].
pub struct Pass {
    _held: OwnedRwLockReadGuard<()>,
    touching: Instant,
    grace: Duration,
}

impl Gate {
    pub fn new(grace: Duration) -> Gate {
        Gate {
            lock: Arc::default(),
            grace,
        }
    }

    /// Taken before a manifest PUT touches its blobs.
    pub async fn enter(&self) -> Pass {
        let held = self.lock.clone().read_owned().await;
        Pass {
            _held: held,
            touching: Instant::now(),
            grace: self.grace,
        }
    }

    /// The start of a mark: once every pass taken before it is returned.
    async fn mark_start(&self) -> Instant {
        let _writers_done = self.lock.write().await;
        Instant::now()
    }
}

impl Pass {
    /// Called just before recording: a record must land within `gc.grace` of its touches, or
    /// a run on another build-index replica could have swept a blob it references.
    pub fn check(&self) -> Result<(), GcError> {
        let elapsed = self.touching.elapsed();
        if elapsed > self.grace {
            return Err(GcError::GraceExceeded {
                elapsed,
                grace: self.grace,
            });
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LocationLabels {
    location: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// `shoal_build_index_gc_*`.
#[derive(Clone, Debug, Default)]
struct GcMetrics {
    swept: Counter,
    reclaimed: Family<LocationLabels, Counter>,
    runs: Family<ResultLabels, Counter>,
}

impl GcMetrics {
    fn register(registry: &mut Registry) -> GcMetrics {
        let metrics = GcMetrics::default();
        registry.register(
            "build_index_gc_blobs_swept",
            "Blobs garbage collection removed (runs and blob deletes)",
            metrics.swept.clone(),
        );
        registry.register(
            "build_index_gc_reclaimed_bytes",
            "Bytes garbage collection removed, from the backend or from origin stores (each copy counted)",
            metrics.reclaimed.clone(),
        );
        registry.register(
            "build_index_gc_runs",
            "Collection runs by result (swept, dry_run, failed)",
            metrics.runs.clone(),
        );
        metrics
    }

    fn swept(&self, deleted: shoal_api::gc::Deleted) {
        self.swept.inc();
        for (location, bytes) in [("backend", deleted.backend), ("origins", deleted.store)] {
            self.reclaimed
                .get_or_create(&LocationLabels { location })
                .inc_by(bytes);
        }
    }

    fn run(&self, result: &'static str) {
        self.runs.get_or_create(&ResultLabels { result }).inc();
    }
}

/// Runs collections, one at a time.
pub struct Collector {
    tags: TagStore,
    origins: Arc<Origins>,
    gate: Gate,
    tombstones: Tombstones,
    metrics: GcMetrics,
    running: Mutex<()>,
}

impl Collector {
    pub fn new(
        tags: TagStore,
        origins: Arc<Origins>,
        config: &GcConfig,
        registry: &mut Registry,
    ) -> Collector {
        Collector {
            tags,
            gate: origins.gate.clone(),
            origins,
            tombstones: Tombstones::new(config.tombstones.clone()),
            metrics: GcMetrics::register(registry),
            running: Mutex::new(()),
        }
    }

    /// One run: mark, then sweep every unreferenced blob (with `dry_run`, only report them).
    pub async fn collect(&self, dry_run: bool) -> Result<GcReport, GcError> {
        let _running = self.running.try_lock().map_err(|_| GcError::Busy)?;
        let collected = self.collect_locked(dry_run).await;
        match &collected {
            Ok(report) => {
                self.metrics.run(if dry_run { "dry_run" } else { "swept" });
                info!(
                    run = report.run,
                    dry_run,
                    swept = report.swept.len(),
                    bytes = report.bytes,
                    kept = report.kept.len(),
                    "garbage collection done"
                );
            }
            Err(error) => {
                self.metrics.run("failed");
                warn!(%error, "garbage collection failed");
            }
        }
        collected
    }

    async fn collect_locked(&self, dry_run: bool) -> Result<GcReport, GcError> {
        let sweep = self.start_sweep(dry_run, "unreferenced").await?;
        let marked = mark::mark(&self.tags, &self.origins).await?;
        let found = sweep.found().await?;
        let mut report = GcReport {
            run: sweep.run.clone(),
            dry_run,
            manifests: marked.manifests,
            marked: marked.blobs.len(),
            found: found.len(),
            swept: Vec::new(),
            kept: Vec::new(),
            bytes: 0,
        };
        let unmarked: Vec<Digest> = found
            .into_keys()
            .filter(|digest| !marked.blobs.contains_key(digest))
            .collect();
        let sweep = &sweep;
        let mut outcomes = stream::iter(unmarked)
            .map(|digest| async move { sweep.sweep(&digest).await })
            .buffered(SWEEP_CONCURRENCY);
        while let Some(outcome) = outcomes.next().await {
            match outcome {
                Ok(Some(swept)) => {
                    report.bytes += swept.size;
                    report.swept.push(swept);
                }
                // Gone since it was listed.
                Ok(None) => {}
                Err(kept) => report.kept.push(kept),
            }
        }
        Ok(report)
    }

    /// Deletes one blob, refused while a tag or recorded manifest of any repository references
    /// it, or while it is within its grace period.
    pub async fn delete_blob(&self, digest: Digest) -> Result<BlobDeleted, GcError> {
        let _running = self.running.lock().await;
        let sweep = self.start_sweep(false, "blob delete").await?;
        let marked = mark::mark(&self.tags, &self.origins).await?;
        if let Some(reference) = marked.blobs.get(&digest) {
            return Err(GcError::Referenced {
                blob: digest,
                manifest: reference.manifest,
                repository: reference.repository.to_string(),
            });
        }
        let swept = sweep
            .sweep(&digest)
            .await
            .map_err(|kept| GcError::Kept {
                digest,
                reason: kept.reason,
            })?
            .ok_or(GcError::BlobUnknown(digest))?;
        Ok(BlobDeleted {
            digest,
            size: swept.size,
        })
    }

    /// Begins a run: its id, and the start of its mark (after every record write in flight).
    async fn start_sweep(
        &self,
        dry_run: bool,
        reason: &'static str,
    ) -> Result<sweep::Sweep<'_>, GcError> {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let run = format!(
            "{}-{}-{}",
            now.as_millis(),
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        let mark_start = self.gate.mark_start().await;
        Ok(sweep::Sweep {
            run,
            dry_run,
            reason,
            mark_start,
            grace: self.gate.grace,
            cluster: self.origins.cluster(),
            tombstones: &self.tombstones,
            metrics: &self.metrics,
        })
    }

    /// Runs a collection every `interval` (the first one interval after start) until shutdown;
    /// a run in progress at shutdown is cut short (what it swept stays logged).
    pub async fn schedule(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticks.tick() => {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        _ = self.collect(false) => {}
                    }
                }
            }
        }
    }
}

/// `POST /v1/gc?dry_run=` and `DELETE /v1/blobs/{digest}`.
/// The proxy's blob DELETE.
pub fn router(collector: Arc<Collector>) -> Router {
    Router::new()
        .route("/v1/blobs/{digest}", delete(delete_blob))
        .with_state(collector)
}

/// Runs on demand (`shoal gc`): an admin route.
pub fn admin_router(collector: Arc<Collector>) -> Router {
    Router::new()
        .route("/v1/gc", post(collect))
        .with_state(collector)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CollectQuery {
    #[serde(default)]
    dry_run: bool,
}

async fn collect(
    State(collector): State<Arc<Collector>>,
    query: Result<Query<CollectQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let Query(query) = query.map_err(|e| GcError::Query(e.body_text()))?;
    let report = collector.collect(query.dry_run).await?;
    Ok(axum::Json(report).into_response())
}

async fn delete_blob(
    State(collector): State<Arc<Collector>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, Error> {
    let Path(digest) = path.map_err(|e| Error::PathInvalid(e.body_text()))?;
    let digest = Digest::parse(&digest).map_err(|e| Error::Digest(e.to_string()))?;
    let deleted = collector.delete_blob(digest).await?;
    Ok((StatusCode::ACCEPTED, axum::Json(deleted)).into_response())
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[test]
    fn a_mark_starts_only_once_the_record_writes_in_flight_are_done() {
        let gate = Gate::new(Duration::from_secs(60));
        let pass = gate.enter().now_or_never().expect("no mark holds the gate");
        assert!(
            gate.mark_start().now_or_never().is_none(),
            "a PUT is recording"
        );
        pass.check().expect("within the grace period");
        drop(pass);
        assert!(gate.mark_start().now_or_never().is_some());
    }

    #[test]
    fn a_record_later_than_the_grace_period_after_its_touches_is_refused() {
        let gate = Gate::new(Duration::ZERO);
        let pass = gate.enter().now_or_never().expect("no mark holds the gate");
        std::thread::sleep(Duration::from_millis(2));
        assert!(matches!(pass.check(), Err(GcError::GraceExceeded { .. })));
    }

    #[test]
    fn config_values_that_cannot_work_are_refused_by_field() {
        assert!(GcConfig::default().validate().is_ok());
        let zero = GcConfig {
            interval: Some(Duration::ZERO),
            ..GcConfig::default()
        };
        assert_eq!(zero.validate().unwrap_err().0, "gc.interval");
        let long = GcConfig {
            grace: Duration::from_secs(13 * 3600),
            ..GcConfig::default()
        };
        assert_eq!(long.validate().unwrap_err().0, "gc.grace");
    }
}
