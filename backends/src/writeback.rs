//! The durable write-back queue: every blob committed on an origin must reach the backend, even
//! across crashes and backend outages. A `shoal_jobs` queue of blob write-back jobs.
//!
//! [`WriteBack::enqueue`] writes a marker file `<hex>.json` (digest, namespace, enqueue time)
//! durably before returning, so a 201 to the client implies the copy will happen. The worker
//! ([`WriteBack::run`]) uploads pending blobs from the store to the backend, a few at a time,
//! retries failures with the queue's backoff per item (one failing blob never holds up others),
//! and deletes the marker once the backend has the blob. On restart [`WriteBack::open`] reloads
//! the markers and the worker picks up where it left off.
//!
//! It lives with the backends rather than the store or the origin: it reads from a [`BlobStore`]
//! and writes to a [`Backend`](crate::Backend), and this crate is the one that already sees both
//! (backends build on `shoal-storage`, never the reverse), so the store stays free of remote
//! clients and the origin only wires the queue up.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use shoal_core::{Digest, Name};
use shoal_jobs::{Failure, Job, JobsError, Queue};
use shoal_storage::{BlobStore, StoreError};
use tokio_util::sync::CancellationToken;

use crate::{BackendError, BackendRouter, blob_key};

pub use shoal_jobs::RetryPolicy;

/// Uploads in flight at once: a few parallel streams keep a backend link busy and hide
/// per-request latency, without one origin flooding a shared backend after an outage.
const MAX_CONCURRENT_UPLOADS: usize = 4;

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Marker {
    digest: Digest,
    /// The repository the blob was pushed to, for backends that route by namespace.
    namespace: Option<Name>,
    /// Milliseconds since the Unix epoch. Only written, for markers read by older versions:
    /// the queue ages a job by its marker file.
    enqueued_at_ms: u64,
}

/// Copying one blob from the store to the backend its namespace routes to.
#[derive(Debug)]
struct BlobWriteBack {
    store: Arc<BlobStore>,
    backends: BackendRouter,
}

impl Job for BlobWriteBack {
    type Payload = Marker;
    const NAME: &'static str = "write-back";

    fn key(marker: &Marker) -> String {
        marker.digest.hex()
    }

    /// An unreadable marker named for a digest still gets its blob written back.
    fn rebuild(hex: &str) -> Option<Marker> {
        let digest = Digest::from_key_hex(hex).ok()?;
        Some(Marker {
            digest,
            namespace: None,
            enqueued_at_ms: now_ms(),
        })
    }

    /// Every failure is retried: a blob missing from the store stays visible in the queue
    /// metrics until an operator restores it, and an unroutable namespace until the config
    /// routes it.
    async fn run(&self, marker: &Marker) -> Result<(), Failure> {
        self.write_back(marker).await.map_err(Failure::retry)
    }
}

impl BlobWriteBack {
    /// Copies one blob to the backend unless it is already there.
    async fn write_back(&self, marker: &Marker) -> Result<(), WriteBackError> {
        let digest = &marker.digest;
        let backend = self.backends.route(marker.namespace.as_ref())?;
        let key = blob_key(digest);
        let file = self
            .store
            .open_blob(digest)
            .await?
            .ok_or(WriteBackError::Missing)?;
        let len = file.len();
        if backend.stat(&key).await? == Some(len) {
            tracing::debug!(%digest, "backend already has the blob");
        } else {
            backend.put(&key, file.stream(0..len), Some(len)).await?;
        }
        Ok(())
    }
}

/// Why one write-back attempt failed.
#[derive(Debug, thiserror::Error)]
enum WriteBackError {
    #[error("the blob is missing from the local store")]
    Missing,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// The durable write-back queue. See the module docs.
#[derive(Debug)]
pub struct WriteBack {
    queue: Arc<Queue<BlobWriteBack>>,
}

impl WriteBack {
    /// Opens (creating if needed) the queue directory and loads its pending markers.
    pub async fn open(dir: impl Into<std::path::PathBuf>) -> Result<WriteBack, JobsError> {
        let queue = Queue::open(dir, RetryPolicy::default(), MAX_CONCURRENT_UPLOADS).await?;
        Ok(WriteBack {
            queue: Arc::new(queue),
        })
    }

    /// Replaces the default retry policy (before the worker starts).
    pub fn with_retry(self, retry: RetryPolicy) -> WriteBack {
        let queue = Arc::into_inner(self.queue).expect("the queue is not shared before it runs");
        WriteBack {
            queue: Arc::new(queue.with_policy(retry)),
        }
    }

    /// Queues `digest` for upload to the backend. Returns once the marker is durable on disk.
    /// Queueing a digest that is already pending does nothing.
    pub async fn enqueue(
        &self,
        digest: &Digest,
        namespace: Option<&Name>,
    ) -> Result<(), JobsError> {
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
    ) -> Result<(), JobsError> {
        if self.is_pending(digest) {
            return Ok(());
        }
        let marker = Marker {
            digest: *digest,
            namespace: namespace.cloned(),
            enqueued_at_ms: now_ms(),
        };
        self.queue.enqueue_after(marker, delay).await
    }

    /// Drops the queued write-back of `digest` (garbage collection is deleting it); `false`
    /// when none was queued. An upload in flight finishes.
    pub async fn remove(&self, digest: &Digest) -> Result<bool, JobsError> {
        self.queue.remove(&digest.hex()).await
    }

    /// Whether `digest` still has to reach the backend (eviction must keep such blobs).
    pub fn is_pending(&self, digest: &Digest) -> bool {
        self.queue.contains(&digest.hex())
    }

    /// Every blob that still has to reach the backend, in no particular order.
    pub fn pending(&self) -> Vec<Digest> {
        self.queue
            .payloads()
            .into_iter()
            .map(|marker| marker.digest)
            .collect()
    }

    /// The queue's current depth, age and counters.
    pub fn stats(&self) -> WriteBackStats {
        let stats = self.queue.stats();
        WriteBackStats {
            depth: stats.queued + stats.running,
            oldest_age: stats
                .oldest
                .map(|at| SystemTime::now().duration_since(at).unwrap_or_default()),
            completed: stats.succeeded,
            // Write-backs never fail for good: every failed attempt is a retry.
            failures: stats.retries + stats.failed,
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
        let job = BlobWriteBack {
            store,
            backends: backends.into(),
        };
        self.queue.clone().run(Arc::new(job), shutdown).await;
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
    use std::io;
    use std::ops::Range;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::time::Instant;

    use async_trait::async_trait;
    use bytes::Bytes;
    use futures::StreamExt;

    use super::*;
    use crate::ByteStream;
    use crate::{Backend, FilesystemBackend};

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
                min_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(40),
                max_attempts: None,
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
        use crate::{BackendConfig, NamespacePattern, RouteConfig};
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
        use crate::{BackendConfig, NamespacePattern, RouteConfig};
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
