//! The agent's disk cache: the p2p engine keeps complete blobs in a [`BlobStore`]; this module
//! keeps that store within its byte budget. It remembers when each blob was last used and who is
//! reading it (a [`ReadGuard`] held by every response stream), and a sweeper deletes what the
//! [`policy`] picks: idle blobs past their TTL, then least-recently-used idle blobs while the
//! store is above the high watermark. Downloads in progress count against the budget at their
//! full length (that is what they will take); one nobody has touched for the TTL (abandoned by
//! a crash or a client that went away) is deleted like an expired blob.

mod policy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use shoal_core::Digest;
use shoal_service::CancellationToken;
use shoal_storage::{BlobStore, StoreError, StoredPartial};
use tokio::sync::Notify;

use crate::config::CacheConfig;

pub use policy::{Budget, Entry, evictions};

/// Sweeps run at least this often, so TTL expiry and blobs the engine committed on its own
/// (seeding, prefetch) are noticed without a request; and at most this often, so a busy agent
/// does not list its store after every response.
const MAX_SWEEP_PERIOD: Duration = Duration::from_secs(30);
const MIN_SWEEP_GAP: Duration = Duration::from_millis(200);

/// The cache's numbers, registered by the agent's metrics module.
#[derive(Debug, Clone, Default)]
pub struct CacheMetrics {
    /// Bytes of complete blobs and downloads in progress after the last sweep.
    pub bytes: Gauge,
    pub evictions: Counter,
    pub evicted_bytes: Counter,
}

/// What the cache knows about a blob beyond the store's listing.
#[derive(Debug, Clone, Copy)]
struct Usage {
    last_used: Instant,
    readers: usize,
}

/// Budget enforcement over a blob store. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Cache {
    store: Arc<BlobStore>,
    budget: Budget,
    usage: Mutex<HashMap<Digest, Usage>>,
    wake: Notify,
    metrics: CacheMetrics,
}

impl Cache {
    pub fn new(store: Arc<BlobStore>, config: &CacheConfig, metrics: CacheMetrics) -> Cache {
        let capacity = config.capacity.as_u64();
        Cache {
            store,
            budget: Budget {
                high: config.high_watermark.of(capacity),
                low: config.low_watermark.of(capacity),
                ttl: config.ttl,
            },
            usage: Mutex::default(),
            wake: Notify::new(),
            metrics,
        }
    }

    /// Marks `digest` as being read until the guard is dropped. Take it before asking the
    /// engine for the blob, so it cannot be evicted between the lookup and the last byte.
    pub fn reader(self: &Arc<Self>, digest: Digest) -> ReadGuard {
        let now = Instant::now();
        lock(&self.usage)
            .entry(digest)
            .and_modify(|usage| {
                usage.readers += 1;
                usage.last_used = now;
            })
            .or_insert(Usage {
                last_used: now,
                readers: 1,
            });
        ReadGuard {
            cache: Arc::clone(self),
            digest,
        }
    }

    /// Deletes what the policy picks right now. Returns the number of blobs evicted.
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        let stored = self.store.list_blobs().await?;
        // A download whose blob is listed too is committing right now: count the blob only.
        let downloads: Vec<StoredPartial> = self
            .store
            .list_partials()
            .await?
            .into_iter()
            .filter(|p| !stored.iter().any(|b| b.digest == p.digest))
            .collect();
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut entries: Vec<Entry> = {
            let mut usage = lock(&self.usage);
            // Forget deleted blobs, but keep those being read: they may still be downloading.
            usage.retain(|digest, u| u.readers > 0 || stored.iter().any(|b| b.digest == *digest));
            stored
                .iter()
                .map(|blob| {
                    let usage = usage.entry(blob.digest).or_insert_with(|| Usage {
                        // Unknown since start-up: its commit time is the best guess at its last use.
                        last_used: age_to_instant(now, wall, blob.committed),
                        readers: 0,
                    });
                    Entry {
                        digest: blob.digest,
                        length: blob.length,
                        last_used: usage.last_used,
                        readers: usage.readers,
                    }
                })
                .collect()
        };
        entries.extend(downloads.iter().map(|partial| Entry {
            digest: partial.digest,
            length: partial.length,
            last_used: age_to_instant(now, wall, partial.touched),
            // An open download is being written or read: never evicted.
            readers: usize::from(partial.open),
        }));
        let mut total: u64 = entries.iter().map(|e| e.length).sum();
        let doomed = evictions(&entries, now, self.budget);
        let mut evicted = 0;
        for digest in doomed {
            // A response may have started reading it since the listing.
            if lock(&self.usage)
                .get(&digest)
                .is_some_and(|u| u.readers > 0)
            {
                continue;
            }
            let length = entries
                .iter()
                .find(|e| e.digest == digest)
                .map_or(0, |e| e.length);
            let deleted = if downloads.iter().any(|p| p.digest == digest) {
                self.store.delete_partial(&digest).await?
            } else {
                self.store.delete(&digest).await?
            };
            if deleted {
                lock(&self.usage).remove(&digest);
                total = total.saturating_sub(length);
                evicted += 1;
                self.metrics.evictions.inc();
                self.metrics.evicted_bytes.inc_by(length);
                tracing::debug!(%digest, length, "evicted from the cache");
            }
        }
        self.metrics
            .bytes
            .set(i64::try_from(total).unwrap_or(i64::MAX));
        Ok(evicted)
    }

    /// Sweeps after every finished read (coalesced) and periodically, until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let period = (self.budget.ttl / 4).clamp(MIN_SWEEP_GAP, MAX_SWEEP_PERIOD);
        loop {
            match self.sweep().await {
                Ok(0) => {}
                Ok(evicted) => tracing::info!(evicted, "cache over budget or expired: evicted"),
                Err(error) => tracing::warn!(%error, "cache sweep failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(period) => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(MIN_SWEEP_GAP) => {}
            }
        }
    }

    fn release(&self, digest: &Digest) {
        if let Some(usage) = lock(&self.usage).get_mut(digest) {
            usage.readers = usage.readers.saturating_sub(1);
            usage.last_used = Instant::now();
        }
        // A finished read may have added a freshly downloaded blob: check the budget.
        self.wake.notify_one();
    }
}

/// Keeps a blob from being evicted while a response streams it; updates its last use on drop.
#[derive(Debug)]
pub struct ReadGuard {
    cache: Arc<Cache>,
    digest: Digest,
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        self.cache.release(&self.digest);
    }
}

/// The monotonic instant corresponding to wall-clock time `then`; a time in the future (clock
/// skew) is taken as `now`. On Linux an `Instant` may lie before boot, so the subtraction only
/// fails for absurd ages, which are then treated as `now` too.
fn age_to_instant(now: Instant, wall: SystemTime, then: SystemTime) -> Instant {
    let age = wall.duration_since(then).unwrap_or_default();
    now.checked_sub(age).unwrap_or(now)
}

/// The map stays consistent under a panic: every critical section is one lookup or update.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
