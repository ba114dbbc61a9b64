//! The pinning rule against a real store, write-back queue and filesystem backend.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use shoal_backends::BackendConfig;
use shoal_storage::BlobStore;
use shoal_storage::cache::{Budget, CacheMetrics, Percent};
use tokio_util::sync::CancellationToken;

use super::*;

struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<BlobStore>,
    writeback: Arc<WriteBack>,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path().join("store"))
            .await
            .expect("store");
        let writeback = WriteBack::open(dir.path().join("writeback"))
            .await
            .expect("queue");
        Fixture {
            dir,
            store: Arc::new(store),
            writeback: Arc::new(writeback),
        }
    }

    fn backends(&self, root: &Path) -> Arc<BackendRouter> {
        let config = BackendConfig::Filesystem {
            root: root.to_owned(),
        };
        Arc::new(BackendRouter::from_config(&config, &[]).expect("backend"))
    }

    /// A cache of 400 bytes evicting above 360 down to 200, over the backend at `root`.
    fn cache(&self, root: &Path, metrics: &CacheMetrics) -> Arc<StoreCache> {
        let pins = BackendPins {
            writeback: self.writeback.clone(),
            replication: None,
            backends: self.backends(root),
        };
        let budget = Budget::new(400, Percent(90), Percent(50), None);
        Arc::new(Cache::new(
            self.store.clone(),
            budget,
            pins,
            metrics.clone(),
        ))
    }

    /// A 100-byte blob of `fill` committed to the store.
    async fn blob(&self, fill: u8) -> Digest {
        let data = Bytes::from(vec![fill; 100]);
        let digest = Digest::of(&data);
        let body = futures::stream::once(async move { Ok(data) }).boxed();
        self.store.put(&digest, body).await.expect("put");
        digest
    }

    /// Copies a stored blob into the backend at `root`, as a finished write-back leaves it.
    async fn write_back(&self, root: &Path, digest: &Digest) {
        let file = self.store.open_blob(digest).await.unwrap().unwrap();
        let len = file.len();
        let backend = self.backends(root).route(None).expect("route");
        backend
            .put(&blob_key(digest), file.stream(0..len), Some(len))
            .await
            .expect("backend put");
    }

    async fn present(&self, digests: &[Digest]) -> Vec<bool> {
        let mut found = Vec::new();
        for digest in digests {
            found.push(self.store.stat(digest).await.unwrap().is_some());
        }
        found
    }
}

#[tokio::test]
async fn only_blobs_the_backend_holds_are_evicted_and_the_next_least_recently_read_go_instead() {
    let fx = Fixture::new().await;
    let backend = fx.dir.path().join("backend");
    let metrics = CacheMetrics::default();
    let cache = fx.cache(&backend, &metrics);
    // Read in this order, so A is the least recently read and D the most.
    let (a, b, c, d) = (
        fx.blob(1).await,
        fx.blob(2).await,
        fx.blob(3).await,
        fx.blob(4).await,
    );
    for digest in [a, b, c, d] {
        cache.touch(digest);
    }
    fx.write_back(&backend, &a).await;
    fx.write_back(&backend, &d).await;
    // B's write-back is queued (its worker is not running: the backend is "down" for it).
    fx.writeback.enqueue(&b, None).await.expect("enqueue");
    // C is in neither: committed a moment ago, its write-back not queued yet.

    // 400 bytes > 360: 200 must go. A goes, B is pinned, C is not in the backend, so D goes.
    assert_eq!(cache.sweep().await.expect("sweep"), 2);
    assert_eq!(fx.present(&[a, b, c, d]).await, [false, true, true, false]);
    assert_eq!(metrics.evictions.get(), 2);
    assert_eq!(metrics.evicted_bytes.get(), 200);
    assert_eq!(metrics.bytes.get(), 200);
    assert_eq!(metrics.pinned_bytes.get(), 200);

    // Once B's write-back is done it may go like any other blob.
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(fx.writeback.clone().run(
        fx.store.clone(),
        (*fx.backends(&backend)).clone(),
        shutdown.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fx.writeback.is_pending(&b) {
        assert!(tokio::time::Instant::now() < deadline, "write-back of B");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    worker.await.expect("worker");
    let mut newer = Vec::new();
    for fill in [5, 6] {
        let digest = fx.blob(fill).await;
        cache.touch(digest);
        fx.write_back(&backend, &digest).await;
        newer.push(digest);
    }
    // 400 bytes again: B (now the least recently read that may go) goes, C stays, so 5 goes.
    assert_eq!(cache.sweep().await.expect("sweep"), 2);
    assert_eq!(
        fx.present(&[b, c, newer[0], newer[1]]).await,
        [false, true, false, true]
    );
    assert_eq!(metrics.pinned_bytes.get(), 100, "C alone");
}

#[tokio::test]
async fn nothing_is_evicted_while_the_backend_cannot_be_reached() {
    let fx = Fixture::new().await;
    let backend = fx.dir.path().join("backend");
    let metrics = CacheMetrics::default();
    let cache = fx.cache(&backend, &metrics);
    // The backend's root replaced by a regular file: every lookup fails (not "absent").
    std::fs::remove_dir_all(&backend).expect("remove the backend");
    std::fs::write(&backend, b"").expect("file");
    let blobs = [
        fx.blob(1).await,
        fx.blob(2).await,
        fx.blob(3).await,
        fx.blob(4).await,
    ];
    fx.writeback
        .enqueue(&blobs[0], None)
        .await
        .expect("enqueue");
    assert_eq!(
        cache
            .sweep()
            .await
            .expect("a failed lookup is no failed sweep"),
        0
    );
    assert_eq!(fx.present(&blobs).await, [true; 4]);
    assert_eq!(metrics.bytes.get(), 400);
    assert_eq!(metrics.pinned_bytes.get(), 100, "the queued write-back");
}

#[tokio::test]
async fn a_blob_read_by_a_response_stays_and_an_open_file_outlives_its_eviction() {
    let fx = Fixture::new().await;
    let backend = fx.dir.path().join("backend");
    let cache = fx.cache(&backend, &CacheMetrics::default());
    let blobs = [
        fx.blob(1).await,
        fx.blob(2).await,
        fx.blob(3).await,
        fx.blob(4).await,
    ];
    for digest in &blobs {
        fx.write_back(&backend, digest).await;
    }
    // A response started reading blob 1 first (the least recently read), then the others were
    // read in order; a piece read in flight holds the file of blob 0.
    let reading = cache.reader(blobs[1]);
    for digest in [blobs[0], blobs[2], blobs[3]] {
        cache.touch(digest);
    }
    let file = fx.store.open_blob(&blobs[0]).await.unwrap().unwrap();
    assert_eq!(cache.sweep().await.expect("sweep"), 2);
    assert_eq!(fx.present(&blobs).await, [false, true, false, true]);
    drop(reading);
    let bytes: Vec<u8> = file
        .stream(0..100)
        .map(|chunk| chunk.unwrap().to_vec())
        .concat()
        .await;
    assert_eq!(
        bytes,
        vec![1; 100],
        "the evicted blob's open file still reads whole"
    );
}
