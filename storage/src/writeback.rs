//! The durable write-back queue: every blob committed on an origin must reach the backend, even
//! across crashes and backend outages.
//!
//! [`WriteBack::enqueue`] writes a marker file `<hex>.json` (digest, namespace, enqueue time)
//! durably before returning, so a 201 to the client implies the copy will happen. The worker
//! ([`WriteBack::run`]) uploads pending blobs from the store to the backend, a few at a time,
//! retries failures with exponential backoff per item (one failing blob never holds up others),
//! and deletes the marker once the backend has the blob. On restart [`WriteBack::open`] reloads
//! the markers and the worker picks up where it left off.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use shoal_core::{Digest, Name};
use tokio::sync::Notify;
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, BackendError, BackendRouter, blob_key};
use crate::fsutil::{self, IoContext};
use crate::store::{BlobStore, StoreError};

/// Uploads in flight at once: a few parallel streams keep a backend link busy and hide
/// per-request latency, without one origin flooding a shared backend after an outage.
const MAX_CONCURRENT_UPLOADS: usize = 4;

const MARKER_SUFFIX: &str = ".json";

/// How long to wait before retrying a failed upload: `initial`, doubling per failure, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The delay after the `failures`-th consecutive failure (1-based).
    fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// A snapshot of the queue for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteBackStats {
    /// Blobs waiting to reach the backend (including uploads in progress).
    pub depth: usize,
    /// How long the oldest pending blob has been waiting.
    pub oldest_age: Option<Duration>,
    /// Blobs written back since this process started.
    pub completed: u64,
    /// Failed upload attempts since this process started.
    pub failures: u64,
}

/// The marker file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Marker {
    digest: Digest,
    /// The repository the blob was pushed to, for backends that route by namespace.
    namespace: Option<Name>,
    /// Milliseconds since the Unix epoch; wall-clock so that ages survive restarts.
    enqueued_at_ms: u64,
}

#[derive(Debug)]
struct Item {
    marker: Marker,
    failures: u32,
    not_before: Instant,
    running: bool,
}

/// The durable write-back queue. See the module docs.
#[derive(Debug)]
pub struct WriteBack {
    dir: PathBuf,
    retry: RetryPolicy,
    items: Mutex<HashMap<Digest, Item>>,
    wake: Notify,
    completed: AtomicU64,
    failures: AtomicU64,
}

impl WriteBack {
    /// Opens (creating if needed) the queue directory and loads its pending markers.
    pub async fn open(dir: impl Into<PathBuf>) -> Result<WriteBack, StoreError> {
        let dir = dir.into();
        tokio::fs::create_dir_all(&dir)
            .await
            .ctx("create directory", &dir)?;
        let mut items = HashMap::new();
        let mut entries = tokio::fs::read_dir(&dir).await.ctx("list", &dir)?;
        while let Some(entry) = entries.next_entry().await.ctx("list", &dir)? {
            let path = entry.path();
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if name.ends_with(".tmp") {
                // A marker write interrupted by a crash: its enqueue never returned success.
                tokio::fs::remove_file(&path).await.ctx("remove", &path)?;
            } else if let Some(hex) = name.strip_suffix(MARKER_SUFFIX)
                && let Some(marker) = load_marker(&path, hex).await?
            {
                let item = Item {
                    marker,
                    failures: 0,
                    not_before: Instant::now(),
                    running: false,
                };
                items.insert(item.marker.digest, item);
            }
        }
        if !items.is_empty() {
            tracing::info!(pending = items.len(), dir = %dir.display(), "resuming write-back");
        }
        Ok(WriteBack {
            dir,
            retry: RetryPolicy::default(),
            items: Mutex::new(items),
            wake: Notify::new(),
            completed: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        })
    }

    /// Replaces the default retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> WriteBack {
        self.retry = retry;
        self
    }

    fn items(&self) -> MutexGuard<'_, HashMap<Digest, Item>> {
        // Every critical section leaves the map consistent, so a poisoned lock is still usable.
        self.items.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn marker_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}{MARKER_SUFFIX}", digest.hex()))
    }

    /// Queues `digest` for upload to the backend. Returns once the marker is durable on disk.
    /// Queueing a digest that is already pending does nothing.
    pub async fn enqueue(
        &self,
        digest: &Digest,
        namespace: Option<&Name>,
    ) -> Result<(), StoreError> {
        self.enqueue_after(digest, namespace, Duration::ZERO).await
    }

    /// Like [`WriteBack::enqueue`], but the first attempt waits `delay`. Replicas use it so the
    /// origin that committed the blob uploads it first and they find it there with a stat,
    /// rather than every owner uploading the same bytes at once. The delay is not persisted: a
    /// marker found after a restart is attempted at once.
    pub async fn enqueue_after(
        &self,
        digest: &Digest,
        namespace: Option<&Name>,
        delay: Duration,
    ) -> Result<(), StoreError> {
        if self.is_pending(digest) {
            return Ok(());
        }
        let marker = Marker {
            digest: *digest,
            namespace: namespace.cloned(),
            enqueued_at_ms: now_ms(),
        };
        let json = serde_json::to_vec(&marker).map_err(io::Error::other);
        let target = self.marker_path(digest);
        let json = json.ctx("encode", &target)?;
        let tmp = self.dir.join(fsutil::temp_name(&digest.hex()));
        fsutil::write_atomic(tmp, &target, &json).await?;
        self.items().entry(*digest).or_insert(Item {
            marker,
            failures: 0,
            not_before: Instant::now() + delay,
            running: false,
        });
        self.wake.notify_one();
        Ok(())
    }

    /// Whether `digest` still has to reach the backend (eviction must keep such blobs).
    pub fn is_pending(&self, digest: &Digest) -> bool {
        self.items().contains_key(digest)
    }

    /// The queue's current depth, age and counters.
    pub fn stats(&self) -> WriteBackStats {
        let items = self.items();
        let oldest_ms = items.values().map(|i| i.marker.enqueued_at_ms).min();
        WriteBackStats {
            depth: items.len(),
            oldest_age: oldest_ms.map(|ms| Duration::from_millis(now_ms().saturating_sub(ms))),
            completed: self.completed.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// Uploads pending blobs until `shutdown` is cancelled, each to the backend its push's
    /// namespace routes to (a single backend converts into a catch-all router). At shutdown no
    /// new upload starts and this returns once the uploads in flight have ended, so a SIGTERM
    /// does not cut a write-back that is about to finish. A caller that stops waiting (drops this
    /// future at its shutdown deadline) abandons them; their markers stay, so they are redone
    /// after the restart.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<BlobStore>,
        backends: impl Into<BackendRouter>,
        shutdown: CancellationToken,
    ) {
        let backends = Arc::new(backends.into());
        let mut tasks = JoinSet::new();
        let mut running: HashMap<Id, Digest> = HashMap::new();
        loop {
            let (due, next_due) = self.take_due(MAX_CONCURRENT_UPLOADS - running.len());
            for (digest, namespace) in due {
                let (this, store, backends) = (self.clone(), store.clone(), backends.clone());
                let handle = tasks.spawn(async move {
                    let backend = backends.route(namespace.as_ref())?;
                    this.write_back(&store, &*backend, &digest).await
                });
                running.insert(handle.id(), digest);
            }
            let timer = async {
                match next_due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = timer => {}
                Some(joined) = tasks.join_next_with_id() => self.settle(joined, &mut running),
            }
        }
        if !running.is_empty() {
            let digests: Vec<String> = running.values().map(Digest::to_string).collect();
            tracing::info!(?digests, "shutdown: finishing the write-backs in flight");
        }
        while let Some(joined) = tasks.join_next_with_id().await {
            self.settle(joined, &mut running);
        }
    }

    /// Records how one upload task ended.
    fn settle(
        &self,
        joined: Result<(Id, Result<(), Failure>), tokio::task::JoinError>,
        running: &mut HashMap<Id, Digest>,
    ) {
        let (id, result) = match joined {
            Ok((id, result)) => (id, result),
            Err(e) => (e.id(), Err(Failure::Panicked(e.to_string()))),
        };
        if let Some(digest) = running.remove(&id) {
            self.finish(digest, result);
        }
    }

    /// Marks up to `slots` due items as running (oldest first) and returns them with their
    /// namespaces, together with the earliest time a waiting item becomes due.
    fn take_due(&self, slots: usize) -> (Vec<(Digest, Option<Name>)>, Option<Instant>) {
        let now = Instant::now();
        let mut items = self.items();
        let mut due: Vec<(u64, Digest)> = items
            .values()
            .filter(|i| !i.running && i.not_before <= now)
            .map(|i| (i.marker.enqueued_at_ms, i.marker.digest))
            .collect();
        due.sort();
        due.truncate(slots);
        let mut taken = Vec::with_capacity(due.len());
        for (_, digest) in &due {
            if let Some(item) = items.get_mut(digest) {
                item.running = true;
                taken.push((*digest, item.marker.namespace.clone()));
            }
        }
        let next_due = items
            .values()
            .filter(|i| !i.running && i.not_before > now)
            .map(|i| i.not_before)
            .min();
        (taken, next_due)
    }

    fn finish(&self, digest: Digest, result: Result<(), Failure>) {
        match result {
            Ok(()) => {
                self.items().remove(&digest);
                self.completed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%digest, "written back");
            }
            Err(error) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                let mut items = self.items();
                if let Some(item) = items.get_mut(&digest) {
                    item.failures += 1;
                    item.running = false;
                    let delay = self.retry.delay(item.failures);
                    item.not_before = Instant::now() + delay;
                    tracing::warn!(%digest, %error, failures = item.failures, retry_in = ?delay, "write-back failed");
                }
            }
        }
    }

    /// Copies one blob to the backend (unless it is already there) and deletes its marker.
    async fn write_back(
        &self,
        store: &BlobStore,
        backend: &dyn Backend,
        digest: &Digest,
    ) -> Result<(), Failure> {
        let key = blob_key(digest);
        // A blob missing from the store is retried rather than dropped: its marker stays visible
        // in the queue metrics until an operator restores the blob.
        let file = store.open_blob(digest).await?.ok_or(Failure::Missing)?;
        let len = file.len();
        if backend.stat(&key).await? == Some(len) {
            tracing::debug!(%digest, "backend already has the blob");
        } else {
            backend.put(&key, file.stream(0..len), Some(len)).await?;
        }
        // No directory fsync needed: a marker resurrected by a crash only costs a stat.
        let marker = self.marker_path(digest);
        match tokio::fs::remove_file(&marker).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e)
                .ctx("remove", &marker)
                .map_err(|e| Failure::Store(e.into())),
        }
    }
}

/// Why one write-back attempt failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("the blob is missing from the local store")]
    Missing,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("upload task panicked: {0}")]
    Panicked(String),
}

/// Reads a marker; an unreadable one is rebuilt from its file name (`<hex>.json`) so that the
/// blob is still written back. Files whose name is not a digest are ignored.
async fn load_marker(path: &Path, hex: &str) -> Result<Option<Marker>, StoreError> {
    let bytes = tokio::fs::read(path).await.ctx("read", path)?;
    match serde_json::from_slice::<Marker>(&bytes) {
        Ok(marker) if marker.digest.hex() == hex => Ok(Some(marker)),
        parsed => {
            let Ok(digest) = Digest::parse(&format!("sha256:{hex}")) else {
                tracing::warn!(path = %path.display(), "ignoring unexpected file in write-back queue");
                return Ok(None);
            };
            tracing::warn!(path = %path.display(), error = ?parsed.err(), "unreadable write-back marker; rebuilt from its name");
            Ok(Some(Marker {
                digest,
                namespace: None,
                enqueued_at_ms: now_ms(),
            }))
        }
    }
}

fn now_ms() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::ops::Range;
    use std::sync::atomic::AtomicUsize;

    use async_trait::async_trait;
    use bytes::Bytes;
    use futures::StreamExt;

    use super::*;
    use crate::ByteStream;
    use crate::backend::FilesystemBackend;

    /// A filesystem backend whose first `failing_puts` puts fail.
    #[derive(Debug)]
    struct FlakyBackend {
        inner: FilesystemBackend,
        failing_puts: AtomicUsize,
        puts: AtomicUsize,
    }

    #[async_trait]
    impl Backend for FlakyBackend {
        async fn stat(&self, key: &str) -> Result<Option<u64>, BackendError> {
            self.inner.stat(key).await
        }
        async fn get(
            &self,
            key: &str,
            range: Option<Range<u64>>,
        ) -> Result<Option<ByteStream>, BackendError> {
            self.inner.get(key, range).await
        }
        async fn put(
            &self,
            key: &str,
            body: ByteStream,
            length: Option<u64>,
        ) -> Result<(), BackendError> {
            self.puts.fetch_add(1, Ordering::SeqCst);
            let fail = self
                .failing_puts
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if fail {
                return Err(BackendError::Body {
                    key: key.to_owned(),
                    source: io::Error::other("injected failure"),
                });
            }
            self.inner.put(key, body, length).await
        }
        async fn delete(&self, key: &str) -> Result<bool, BackendError> {
            self.inner.delete(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
            self.inner.list(prefix).await
        }
    }

    struct Fixture {
        dir: tempfile::TempDir,
        store: Arc<BlobStore>,
        backend: Arc<FlakyBackend>,
    }

    impl Fixture {
        async fn new(failing_puts: usize) -> Fixture {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = BlobStore::open(dir.path().join("store"))
                .await
                .expect("store");
            let inner = FilesystemBackend::new(dir.path().join("backend")).expect("backend");
            let backend = FlakyBackend {
                inner,
                failing_puts: AtomicUsize::new(failing_puts),
                puts: AtomicUsize::new(0),
            };
            Fixture {
                dir,
                store: Arc::new(store),
                backend: Arc::new(backend),
            }
        }

        fn queue_dir(&self) -> PathBuf {
            self.dir.path().join("writeback")
        }

        async fn queue(&self) -> Arc<WriteBack> {
            let fast = RetryPolicy {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(40),
            };
            let queue = WriteBack::open(self.queue_dir()).await.expect("open queue");
            Arc::new(queue.with_retry(fast))
        }

        async fn add_blob(&self, data: &'static [u8]) -> Digest {
            let digest = Digest::of(data);
            let body = futures::stream::once(async move { Ok(Bytes::from_static(data)) }).boxed();
            self.store.put(&digest, body).await.expect("put");
            digest
        }

        fn start(
            &self,
            queue: &Arc<WriteBack>,
        ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
            let token = CancellationToken::new();
            let backend: Arc<dyn Backend> = self.backend.clone();
            let worker = tokio::spawn(queue.clone().run(
                self.store.clone(),
                backend,
                token.clone(),
            ));
            (token, worker)
        }
    }

    async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn each_blob_goes_to_the_backend_its_namespace_routes_to() {
        use crate::backend::{BackendConfig, NamespacePattern, RouteConfig};
        let fx = Fixture::new(0).await;
        let route = |pattern: &str, sub: &str| RouteConfig {
            namespace: NamespacePattern::new(pattern).expect("regex"),
            backend: BackendConfig::Filesystem {
                root: fx.dir.path().join(sub),
            },
        };
        let router = BackendRouter::from_config(
            &BackendConfig::default(),
            &[route("team-a/.*", "a"), route("team-b/.*", "b")],
        )
        .expect("router");
        let (a, b) = (fx.add_blob(b"for a").await, fx.add_blob(b"for b").await);
        let queue = fx.queue().await;
        let team_a = Name::parse("team-a/app").expect("name");
        let team_b = Name::parse("team-b/app").expect("name");
        queue.enqueue(&a, Some(&team_a)).await.expect("enqueue");
        queue.enqueue(&b, Some(&team_b)).await.expect("enqueue");
        let token = CancellationToken::new();
        let worker = tokio::spawn(queue.clone().run(fx.store.clone(), router, token.clone()));
        wait_for("both write-backs", || queue.stats().depth == 0).await;
        token.cancel();
        worker.await.expect("worker");
        let exists =
            |sub: &str, digest: &Digest| fx.dir.path().join(sub).join(blob_key(digest)).is_file();
        assert!(exists("a", &a) && !exists("b", &a));
        assert!(exists("b", &b) && !exists("a", &b));
    }

    #[tokio::test]
    async fn a_blob_no_route_matches_stays_queued() {
        use crate::backend::{BackendConfig, NamespacePattern, RouteConfig};
        let fx = Fixture::new(0).await;
        let only_a = RouteConfig {
            namespace: NamespacePattern::new("team-a/.*").expect("regex"),
            backend: BackendConfig::Filesystem {
                root: fx.dir.path().join("a"),
            },
        };
        let router =
            BackendRouter::from_config(&BackendConfig::default(), &[only_a]).expect("router");
        let digest = fx.add_blob(b"unroutable").await;
        let queue = fx.queue().await;
        let other = Name::parse("team-z/app").expect("name");
        queue.enqueue(&digest, Some(&other)).await.expect("enqueue");
        let token = CancellationToken::new();
        let worker = tokio::spawn(queue.clone().run(fx.store.clone(), router, token.clone()));
        wait_for("a failed attempt", || queue.stats().failures >= 2).await;
        token.cancel();
        worker.await.expect("worker");
        assert!(queue.is_pending(&digest));
    }

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        let policy = RetryPolicy::default();
        let delays: Vec<u64> = (1..=10).map(|n| policy.delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert_eq!(policy.delay(u32::MAX), Duration::from_secs(300));
    }

    #[tokio::test]
    async fn pending_marker_survives_reopen_and_completes_after_restart() {
        let fx = Fixture::new(0).await;
        let digest = fx.add_blob(b"layer bytes").await;
        let name = Name::parse("library/alpine").expect("name");
        {
            let queue = fx.queue().await;
            queue.enqueue(&digest, Some(&name)).await.expect("enqueue");
            queue
                .enqueue(&digest, Some(&name))
                .await
                .expect("enqueue is idempotent");
            assert_eq!(queue.stats().depth, 1);
            // The process stops before the worker ever runs.
        }
        let marker = fx.queue_dir().join(format!("{}.json", digest.hex()));
        let saved: Marker =
            serde_json::from_slice(&std::fs::read(&marker).expect("marker")).expect("marker json");
        assert_eq!(saved.namespace, Some(name));

        let queue = fx.queue().await;
        assert!(queue.is_pending(&digest));
        assert!(queue.stats().oldest_age.is_some());
        let (token, worker) = fx.start(&queue);
        wait_for("write-back", || !queue.is_pending(&digest)).await;
        let key = blob_key(&digest);
        assert_eq!(fx.backend.stat(&key).await.expect("stat"), Some(11));
        assert!(!marker.exists());
        let stats = queue.stats();
        assert_eq!((stats.depth, stats.completed, stats.failures), (0, 1, 0));
        assert_eq!(stats.oldest_age, None);
        token.cancel();
        worker.await.expect("worker");
    }

    #[tokio::test]
    async fn failed_uploads_are_retried_with_backoff() {
        let fx = Fixture::new(2).await;
        let queue = fx.queue().await;
        let (token, worker) = fx.start(&queue);
        let digest = fx.add_blob(b"flaky").await;
        queue.enqueue(&digest, None).await.expect("enqueue");
        wait_for("write-back", || queue.stats().completed == 1).await;
        assert_eq!(queue.stats().failures, 2);
        assert_eq!(fx.backend.puts.load(Ordering::SeqCst), 3);
        assert_eq!(
            fx.backend.stat(&blob_key(&digest)).await.expect("stat"),
            Some(5)
        );
        token.cancel();
        worker.await.expect("worker");
    }

    #[tokio::test]
    async fn a_delayed_blob_waits_while_others_go_ahead() {
        let fx = Fixture::new(0).await;
        let queue = fx.queue().await;
        let (token, worker) = fx.start(&queue);
        let later = fx.add_blob(b"replica copy").await;
        let now = fx.add_blob(b"committed here").await;
        queue
            .enqueue_after(&later, None, Duration::from_secs(3600))
            .await
            .expect("enqueue");
        queue.enqueue(&now, None).await.expect("enqueue");
        wait_for("write-back", || queue.stats().completed == 1).await;
        assert!(queue.is_pending(&later) && !queue.is_pending(&now));
        assert_eq!(
            fx.backend.stat(&blob_key(&later)).await.expect("stat"),
            None
        );
        token.cancel();
        worker.await.expect("worker");
        // After a restart the delay is gone: the marker is attempted at once.
        let reopened = fx.queue().await;
        let (token, worker) = fx.start(&reopened);
        wait_for("write-back after restart", || {
            reopened.stats().completed == 1
        })
        .await;
        assert_eq!(
            fx.backend.stat(&blob_key(&later)).await.expect("stat"),
            Some(12)
        );
        token.cancel();
        worker.await.expect("worker");
    }

    #[tokio::test]
    async fn blobs_the_backend_already_has_are_not_uploaded_again() {
        let fx = Fixture::new(0).await;
        let digest = fx.add_blob(b"already there").await;
        let file = fx
            .store
            .open_blob(&digest)
            .await
            .expect("open")
            .expect("present");
        fx.backend
            .inner
            .put(&blob_key(&digest), file.stream(0..13), Some(13))
            .await
            .expect("seed backend");
        let queue = fx.queue().await;
        let (token, worker) = fx.start(&queue);
        queue.enqueue(&digest, None).await.expect("enqueue");
        wait_for("write-back", || queue.stats().completed == 1).await;
        assert_eq!(fx.backend.puts.load(Ordering::SeqCst), 0);
        token.cancel();
        worker.await.expect("worker");
    }

    #[tokio::test]
    async fn a_failing_item_does_not_block_others() {
        let fx = Fixture::new(0).await;
        let queue = fx.queue().await;
        let (token, worker) = fx.start(&queue);
        // Never stored locally, so every attempt fails.
        let missing = Digest::of(b"not in the store");
        queue.enqueue(&missing, None).await.expect("enqueue");
        wait_for("a failure", || queue.stats().failures >= 1).await;
        let good = fx.add_blob(b"good").await;
        queue.enqueue(&good, None).await.expect("enqueue");
        wait_for("the good blob", || !queue.is_pending(&good)).await;
        wait_for("retries of the bad blob", || queue.stats().failures >= 3).await;
        assert!(queue.is_pending(&missing));
        assert_eq!(queue.stats().depth, 1);
        token.cancel();
        worker.await.expect("worker");
    }

    #[tokio::test]
    async fn open_discards_interrupted_marker_writes_and_rebuilds_unreadable_markers() {
        let fx = Fixture::new(0).await;
        let dir = fx.queue_dir();
        std::fs::create_dir_all(&dir).expect("mkdir");
        let digest = Digest::of(b"x");
        std::fs::write(dir.join("abc.1234.tmp"), b"{").expect("tmp");
        std::fs::write(dir.join(format!("{}.json", digest.hex())), b"garbage").expect("marker");
        std::fs::write(dir.join("README.json"), b"{}").expect("stray");
        let queue = fx.queue().await;
        assert!(queue.is_pending(&digest));
        assert_eq!(queue.stats().depth, 1);
        assert!(!dir.join("abc.1234.tmp").exists());
    }

    /// A filesystem backend whose puts wait for a permit.
    #[derive(Debug)]
    struct GatedBackend {
        inner: FilesystemBackend,
        puts_started: AtomicUsize,
        gate: tokio::sync::Semaphore,
    }

    #[async_trait]
    impl Backend for GatedBackend {
        async fn stat(&self, key: &str) -> Result<Option<u64>, BackendError> {
            self.inner.stat(key).await
        }
        async fn get(
            &self,
            key: &str,
            range: Option<Range<u64>>,
        ) -> Result<Option<ByteStream>, BackendError> {
            self.inner.get(key, range).await
        }
        async fn put(
            &self,
            key: &str,
            body: ByteStream,
            length: Option<u64>,
        ) -> Result<(), BackendError> {
            self.puts_started.fetch_add(1, Ordering::SeqCst);
            let _permit = self.gate.acquire().await.expect("gate open");
            self.inner.put(key, body, length).await
        }
        async fn delete(&self, key: &str) -> Result<bool, BackendError> {
            self.inner.delete(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
            self.inner.list(prefix).await
        }
    }

    #[tokio::test]
    async fn shutdown_lets_the_uploads_in_flight_finish() {
        let fx = Fixture::new(0).await;
        let digest = fx.add_blob(b"in flight at shutdown").await;
        let queue = fx.queue().await;
        queue.enqueue(&digest, None).await.expect("enqueue");
        let backend = Arc::new(GatedBackend {
            inner: FilesystemBackend::new(fx.dir.path().join("gated")).expect("backend"),
            puts_started: AtomicUsize::new(0),
            gate: tokio::sync::Semaphore::new(0),
        });
        let token = CancellationToken::new();
        let routed: Arc<dyn Backend> = backend.clone();
        let worker = tokio::spawn(queue.clone().run(fx.store.clone(), routed, token.clone()));
        wait_for("the upload to start", || {
            backend.puts_started.load(Ordering::SeqCst) == 1
        })
        .await;

        token.cancel();
        // The worker cannot end while the put waits; give it every chance to (wrongly) return.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(
            !worker.is_finished(),
            "the worker returned with an upload in flight"
        );
        backend.gate.add_permits(1);
        worker.await.expect("worker");
        assert!(!queue.is_pending(&digest));
        assert!(
            !fx.queue_dir()
                .join(format!("{}.json", digest.hex()))
                .exists()
        );
        assert_eq!(
            backend.stat(&blob_key(&digest)).await.expect("stat"),
            Some(21)
        );
        assert_eq!(
            backend.puts_started.load(Ordering::SeqCst),
            1,
            "no new upload starts after shutdown"
        );
    }
}
