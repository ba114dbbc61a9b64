//! The sweep of one run: which blobs exist (every origin's store, the backend), and the removal
//! of one unreferenced blob from all of them (`docs/gc.md`, "The sweep of one blob"):
//!
//! 1. every origin of the ring condemns it, each only if it was not touched within the run's
//!    window (grace + time since the mark began + the condemnation's timeout); one refusal
//!    or silence and the blob is kept (the condemnations taken are released);
//! 2. every origin deletes its copy and drops its queued write-back and replica pushes, the
//!    first origin last, and that one deletes the backend's copy too;
//! 3. the tombstone is logged, and the condemnations released.
//!
//! While condemned, a touch of the blob fails everywhere, so no manifest can be recorded with
//! it between steps 1 and 3.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use shoal_api::OriginCluster;
use shoal_api::gc::{
    CONDEMN_TIMEOUT, CondemnRequest, Condemned, Deleted, KeptBlob, OriginGc, SweptBlob,
};
use shoal_core::Digest;
use tracing::warn;

use super::tombstones::{Tombstone, Tombstones};
use super::{GcError, GcMetrics};

pub struct Sweep<'a> {
    pub run: String,
    pub dry_run: bool,
    pub reason: &'static str,
    pub mark_start: Instant,
    pub grace: Duration,
    pub cluster: &'a OriginCluster,
    pub tombstones: &'a Tombstones,
    pub metrics: &'a GcMetrics,
}

impl Sweep<'_> {
    /// Every member of the ring, in membership order.
    fn members(&self) -> Vec<(String, OriginGc)> {
        let snapshot = self.cluster.snapshot();
        snapshot
            .members()
            .iter()
            .filter_map(|addr| Some((addr.clone(), self.cluster.member(addr)?.gc())))
            .collect()
    }

    /// Every blob some origin's store or the backend holds, with its largest length found.
    /// Every origin must answer: a store that cannot be listed could hold anything.
    pub async fn found(&self) -> Result<BTreeMap<Digest, u64>, GcError> {
        let members = self.members();
        let mut found = BTreeMap::new();
        let mut add = |blobs: Vec<shoal_api::gc::ListedBlob>| {
            for blob in blobs {
                let size = found.entry(blob.digest).or_insert(0);
                *size = (*size).max(blob.size);
            }
        };
        for (addr, origin) in &members {
            add(origin.store_blobs().await.map_err(|e| down(addr, &e))?);
        }
        // The origins share the backend: one listing is enough.
        let Some((addr, origin)) = members.first() else {
            return Err(GcError::OriginDown {
                origin: "(none)".into(),
                reason: "the ring has no member".into(),
            });
        };
        add(origin.backend_blobs().await.map_err(|e| down(addr, &e))?);
        Ok(found)
    }

    /// Sweeps one unreferenced blob; `Ok(None)` when no origin and no backend holds it (nothing
    /// is deleted or logged), `Err` when it is kept, and why.
    pub async fn sweep(&self, digest: &Digest) -> Result<Option<SweptBlob>, KeptBlob> {
        let kept = |reason: String| KeptBlob {
            digest: *digest,
            reason,
        };
        let members = self.members();
        if members.is_empty() {
            return Err(kept("the ring has no member".into()));
        }
        let window = self.mark_start.elapsed() + self.grace + CONDEMN_TIMEOUT;
        let request = CondemnRequest {
            run: self.run.clone(),
            untouched_for_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            dry_run: self.dry_run,
        };
        let mut condemned = Vec::new();
        // The largest copy found; `None` while no copy is (a blob may be 0 bytes long).
        let mut size: Option<u64> = None;
        for (addr, origin) in &members {
            match origin.condemn(digest, &request).await {
                Ok(Condemned::Condemned { store, backend }) => {
                    condemned.push(origin);
                    size = size.max(store).max(backend);
                }
                Ok(Condemned::Kept { reason }) => {
                    self.release(digest, &condemned).await;
                    return Err(kept(format!("origin {addr}: {reason}")));
                }
                Err(error) => {
                    self.release(digest, &condemned).await;
                    return Err(kept(format!("origin {addr} did not answer: {error}")));
                }
            }
        }
        let Some(size) = size else {
            self.release(digest, &condemned).await;
            return Ok(None);
        };
        if self.dry_run {
            return Ok(Some(SweptBlob {
                digest: *digest,
                size,
            }));
        }
        let deleted = self.delete(digest, &members).await;
        self.release(digest, &condemned).await;
        let deleted = deleted.map_err(kept)?;
        let tombstone = Tombstone::new(*digest, size, &self.run, self.reason);
        if let Err(error) = self.tombstones.append(&tombstone).await {
            // The blob is gone either way; the log line is what went missing.
            warn!(%digest, %error, "tombstone not logged");
        }
        self.metrics.swept(deleted);
        Ok(Some(SweptBlob {
            digest: *digest,
            size,
        }))
    }

    /// Deletes every origin's copy, the first member's last with the backend's copy.
    async fn delete(
        &self,
        digest: &Digest,
        members: &[(String, OriginGc)],
    ) -> Result<Deleted, String> {
        let mut total = Deleted::default();
        for (i, (addr, origin)) in members.iter().enumerate().rev() {
            let deleted = origin
                .delete(digest, &self.run, i == 0)
                .await
                .map_err(|e| format!("origin {addr} refused or failed the delete: {e}"))?;
            total.store += deleted.store;
            total.backend += deleted.backend;
        }
        Ok(total)
    }

    async fn release(&self, digest: &Digest, condemned: &[&OriginGc]) {
        if self.dry_run {
            return;
        }
        for origin in condemned {
            if let Err(error) = origin.release(digest, &self.run).await {
                // Its lease ends the condemnation on its own.
                warn!(%digest, %error, "releasing a condemned blob failed");
            }
        }
    }
}

fn down(addr: &str, error: &shoal_api::ApiError) -> GcError {
    GcError::OriginDown {
        origin: addr.to_owned(),
        reason: error.to_string(),
    }
}
