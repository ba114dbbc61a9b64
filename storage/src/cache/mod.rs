//! A blob store as a bounded cache: the agent's disk cache and an origin's store in front of
//! its backend both run this. It remembers when each blob was last read and who is reading it
//! (a [`ReadGuard`] held by every response stream), and a sweeper deletes what the [`policy`]
//! picks: idle blobs past their TTL (when there is one), then least-recently-used idle blobs
//! while the store is above the high watermark. Downloads in progress count against the budget
//! at their full length (that is what they will take); one nobody has touched for the TTL
//! (abandoned by a crash or a client that went away) is deleted like an expired blob.
//!
//! The cache's owner may [`Pins`] blobs the policy must pass over (an origin's blobs that are
//! not yet in its backend), and has the last word on each blob before it is deleted. A blob is
//! deleted with [`BlobStore::delete`], so a reader that opened it before keeps its file.

mod percent;
mod policy;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use shoal_core::Digest;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{BlobStore, StoreError, StoredPartial};
use shoal_core::lock;

pub use percent::Percent;
pub use policy::{Budget, Entry, Walk};

/// Any error a [`Pins`] check reports; the sweep logs it.
pub type PinError = Box<dyn std::error::Error + Send + Sync>;

/// Sweeps run at least this often, so TTL expiry, blobs committed without a read (seeding,
/// prefetch, pushes) and pins that lapsed are noticed without a request; and at most this
/// often, so a busy store is not listed after every response.
const MAX_SWEEP_PERIOD: Duration = Duration::from_secs(30);
const MIN_SWEEP_GAP: Duration = Duration::from_millis(200);

/// What the cache's owner knows that the store does not: blobs that must stay whatever the
/// policy says.
pub trait Pins: Send + Sync + std::fmt::Debug + 'static {
    /// The blobs that must stay right now. Read once per sweep, before the policy runs, so it
    /// must be cheap (in memory).
    fn pinned(&self) -> HashSet<Digest>;

    /// The last word on a blob the policy picked, just before it is deleted: `Ok(false)` keeps
    /// it (and the policy picks another). An error ends the sweep: nothing more is evicted
    /// until the next one.
    fn may_evict(
        &self,
        digest: &Digest,
        length: u64,
    ) -> impl Future<Output = Result<bool, PinError>> + Send;
}

/// No pins: whatever the policy picks goes (the agent's cache, whose blobs all exist elsewhere).
#[derive(Debug, Clone, Copy, Default)]
pub struct Unpinned;

impl Pins for Unpinned {
    fn pinned(&self) -> HashSet<Digest> {
        HashSet::new()
    }

    async fn may_evict(&self, _: &Digest, _: u64) -> Result<bool, PinError> {
        Ok(true)
    }
}

/// The cache's numbers; the component registers them ([`CacheMetrics::register`]).
#[derive(Debug, Clone, Default)]
pub struct CacheMetrics {
    /// Bytes of complete blobs and downloads in progress after the last sweep.
    pub bytes: Gauge,
    /// Bytes of those blobs the owner's pins kept at the last sweep.
    pub pinned_bytes: Gauge,
    pub evictions: Counter,
    pub evicted_bytes: Counter,
}

impl CacheMetrics {
    /// Registers the bytes held and evicted as `cache_bytes`, `cache_evictions` and
    /// `cache_evicted_bytes` in the component's (prefixed) registry; pinned bytes only mean
    /// something with pins, so their owner registers them.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "cache_bytes",
            "Bytes of complete blobs (and downloads in progress) in the store after the last sweep",
            self.bytes.clone(),
        );
        registry.register(
            "cache_evictions",
            "Blobs evicted from the store",
            self.evictions.clone(),
        );
        registry.register(
            "cache_evicted_bytes",
            "Bytes of blobs evicted from the store",
            self.evicted_bytes.clone(),
        );
    }
}

/// A complete blob in the cache, as an operator lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedBlob {
    pub digest: Digest,
    pub length: u64,
    /// The last read (since start-up; before, the commit time stands in for it).
    pub last_used: SystemTime,
    /// Responses streaming it right now.
    pub readers: usize,
}

/// What [`Cache::evict`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    Evicted,
    /// The store holds no such complete blob.
    Absent,
    /// Being read or pinned: left where it is.
    Held,
}

/// What the cache knows about a blob beyond the store's listing.
#[derive(Debug, Clone, Copy)]
struct Usage {
    last_used: Instant,
    readers: usize,
}

/// Budget enforcement over a blob store. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Cache<P: Pins = Unpinned> {
    store: Arc<BlobStore>,
    budget: Budget,
    pins: P,
    usage: Mutex<HashMap<Digest, Usage>>,
    wake: Notify,
    metrics: CacheMetrics,
}

impl<P: Pins> Cache<P> {
    pub fn new(store: Arc<BlobStore>, budget: Budget, pins: P, metrics: CacheMetrics) -> Self {
        Cache {
            store,
            budget,
            pins,
            usage: Mutex::default(),
            wake: Notify::new(),
            metrics,
        }
    }

    /// Marks `digest` as being read until the guard is dropped. Take it before looking the
    /// blob up, so it cannot be evicted between the lookup and the last byte.
    pub fn reader(self: &Arc<Self>, digest: Digest) -> ReadGuard<P> {
        self.used(digest, 1);
        ReadGuard {
            cache: Arc::clone(self),
            digest,
        }
    }

    /// Records a read that holds nothing open once it returns (one piece of a blob).
    pub fn touch(&self, digest: Digest) {
        self.used(digest, 0);
    }

    /// Asks for a sweep soon (coalesced): the store just gained a blob.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn used(&self, digest: Digest, readers: usize) {
        let now = Instant::now();
        lock(&self.usage)
            .entry(digest)
            .and_modify(|usage| {
                usage.readers += readers;
                usage.last_used = now;
            })
            .or_insert(Usage {
                last_used: now,
                readers,
            });
    }

    fn is_read(&self, digest: &Digest) -> bool {
        lock(&self.usage).get(digest).is_some_and(|u| u.readers > 0)
    }

    /// Every complete blob with its length and last use, in digest order.
    pub async fn blobs(&self) -> Result<Vec<CachedBlob>, StoreError> {
        let mut stored = self.store.list_blobs().await?;
        stored.sort_by_key(|blob| blob.digest);
        let (now, wall) = (Instant::now(), SystemTime::now());
        let usage = lock(&self.usage);
        Ok(stored
            .into_iter()
            .map(|blob| {
                let used = usage.get(&blob.digest);
                let last_used = used.map_or(blob.committed, |u| {
                    wall.checked_sub(now.duration_since(u.last_used))
                        .unwrap_or(wall)
                });
                CachedBlob {
                    digest: blob.digest,
                    length: blob.length,
                    last_used,
                    readers: used.map_or(0, |u| u.readers),
                }
            })
            .collect())
    }

    /// Evicts `digest` now, as a sweep would, unless it is being read or pinned.
    pub async fn evict(&self, digest: &Digest) -> Result<Eviction, StoreError> {
        if self.is_read(digest) || self.pins.pinned().contains(digest) {
            return Ok(Eviction::Held);
        }
        let Some(length) = self.store.stat(digest).await? else {
            return Ok(Eviction::Absent);
        };
        if !self.store.delete(digest).await? {
            return Ok(Eviction::Absent);
        }
        lock(&self.usage).remove(digest);
        self.metrics.evictions.inc();
        self.metrics.evicted_bytes.inc_by(length);
        tracing::info!(%digest, length, "evicted on request");
        Ok(Eviction::Evicted)
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
        let pinned = self.pins.pinned();
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
                        pinned: pinned.contains(&blob.digest),
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
            pinned: false,
        }));
        let mut evicted = 0;
        let mut kept: u64 = 0;
        let mut walk = Walk::new(&entries, now, self.budget);
        while let Some((digest, length)) = walk.next() {
            // A response may have started reading it since the listing.
            if self.is_read(&digest) {
                continue;
            }
            let download = downloads.iter().any(|p| p.digest == digest);
            if !download {
                match self.pins.may_evict(&digest, length).await {
                    Ok(true) => {}
                    Ok(false) => {
                        kept += length;
                        continue;
                    }
                    Err(error) => {
                        tracing::warn!(%digest, %error, "cannot tell whether a blob may be evicted: nothing more goes until the next sweep");
                        break;
                    }
                }
            }
            let deleted = if download {
                self.store.delete_partial(&digest).await?
            } else {
                self.store.delete(&digest).await?
            };
            // Gone either way: a blob deleted meanwhile no longer takes room.
            walk.gone(length);
            if deleted {
                lock(&self.usage).remove(&digest);
                evicted += 1;
                self.metrics.evictions.inc();
                self.metrics.evicted_bytes.inc_by(length);
                tracing::debug!(%digest, length, "evicted from the store");
            }
        }
        let pinned: u64 = entries.iter().filter(|e| e.pinned).map(|e| e.length).sum();
        self.metrics.bytes.set(gauge(walk.total()));
        self.metrics.pinned_bytes.set(gauge(pinned + kept));
        Ok(evicted)
    }

    /// Sweeps after every finished read and [`Cache::wake`] (coalesced) and periodically,
    /// until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let period = self.budget.ttl.map_or(MAX_SWEEP_PERIOD, |ttl| {
            (ttl / 4).clamp(MIN_SWEEP_GAP, MAX_SWEEP_PERIOD)
        });
        loop {
            match self.sweep().await {
                Ok(0) => {}
                Ok(evicted) => tracing::info!(evicted, "store over budget or expired: evicted"),
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
pub struct ReadGuard<P: Pins = Unpinned> {
    cache: Arc<Cache<P>>,
    digest: Digest,
}

impl<P: Pins> Drop for ReadGuard<P> {
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

fn gauge(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
