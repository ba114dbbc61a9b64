use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use shoal_core::{Digest, MetainfoBuilder};

use super::*;

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add((i / 251) as u8) ^ seed)
        .collect()
}

fn stream_of(chunks: Vec<Vec<u8>>) -> ByteStream {
    futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from(c)))).boxed()
}

async fn read_all(stream: ByteStream) -> Vec<u8> {
    let chunks: Vec<Bytes> = stream.try_collect().await.expect("read stream");
    chunks.concat()
}

/// Every file (not directory) under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// Every byte of committed blob `digest`.
pub(super) async fn read_blob(store: &BlobStore, digest: &Digest) -> Vec<u8> {
    let file = store
        .open_blob(digest)
        .await
        .expect("open")
        .expect("present");
    read_all(file.stream(0..u64::MAX)).await
}

async fn open_store() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = BlobStore::open(dir.path()).await.expect("open store");
    (dir, store)
}

#[tokio::test]
async fn upload_in_uneven_chunks_then_commit() {
    let (dir, store) = open_store().await;
    let data = blob(300_000, 1);
    let digest = Digest::of(&data);
    let id = store
        .start_upload(UploadOwner::default())
        .await
        .expect("start");
    assert_eq!(store.upload_offset(&id).await.expect("offset"), 0);

    let mut offset = 0;
    for size in [1, 999, 70_000, 3, 200_000, 28_997] {
        let chunk = data[offset..offset + size].to_vec();
        // Each chunk itself arrives split unevenly, as network reads do.
        let parts = vec![chunk[..size / 2].to_vec(), chunk[size / 2..].to_vec()];
        let new = store
            .append_upload(&id, Some(offset as u64), stream_of(parts))
            .await
            .expect("append");
        offset += size;
        assert_eq!(new, offset as u64);
    }
    assert_eq!(offset, data.len());
    assert_eq!(
        store.commit_upload(&id, &digest).await.expect("commit"),
        300_000
    );

    assert_eq!(store.stat(&digest).await.expect("stat"), Some(300_000));
    let file = store
        .open_blob(&digest)
        .await
        .expect("open")
        .expect("present");
    assert_eq!(file.len(), 300_000);
    assert_eq!(read_all(file.stream(0..300_000)).await, data);
    assert!(files_under(&dir.path().join("uploads")).is_empty());
    assert!(matches!(
        store.upload_offset(&id).await,
        Err(StoreError::UploadUnknown { .. })
    ));
}

#[tokio::test]
async fn digest_mismatch_discards_the_upload_and_stores_nothing() {
    let (dir, store) = open_store().await;
    let id = store
        .start_upload(UploadOwner::default())
        .await
        .expect("start");
    store
        .append_upload(&id, None, stream_of(vec![b"real bytes".to_vec()]))
        .await
        .expect("append");
    let claimed = Digest::of(b"other bytes");
    match store.commit_upload(&id, &claimed).await {
        Err(StoreError::DigestMismatch { expected, actual }) => {
            assert_eq!(expected, claimed);
            assert_eq!(actual, Digest::of(b"real bytes"));
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert!(files_under(&dir.path().join("blobs")).is_empty());
    assert!(files_under(&dir.path().join("uploads")).is_empty());
    assert_eq!(store.stat(&claimed).await.expect("stat"), None);
    assert!(matches!(
        store.commit_upload(&id, &Digest::of(b"real bytes")).await,
        Err(StoreError::UploadUnknown { .. })
    ));
}

#[tokio::test]
async fn offset_mismatch_changes_nothing() {
    let (_dir, store) = open_store().await;
    let id = store
        .start_upload(UploadOwner::default())
        .await
        .expect("start");
    store
        .append_upload(&id, Some(0), stream_of(vec![b"hello ".to_vec()]))
        .await
        .expect("append");
    let err = store
        .append_upload(&id, Some(3), stream_of(vec![b"junk".to_vec()]))
        .await;
    assert!(matches!(
        err,
        Err(StoreError::OffsetMismatch {
            expected: 3,
            actual: 6
        })
    ));
    assert_eq!(store.upload_offset(&id).await.expect("offset"), 6);
    store
        .append_upload(&id, Some(6), stream_of(vec![b"world".to_vec()]))
        .await
        .expect("append");
    let digest = Digest::of(b"hello world");
    assert_eq!(store.commit_upload(&id, &digest).await.expect("commit"), 11);
}

#[tokio::test]
async fn failing_body_keeps_the_whole_chunks_received() {
    let (_dir, store) = open_store().await;
    let id = store
        .start_upload(UploadOwner::default())
        .await
        .expect("start");
    let body: ByteStream = futures::stream::iter([
        Ok(Bytes::from_static(b"abc")),
        Err(io::Error::other("client went away")),
    ])
    .boxed();
    let err = store.append_upload(&id, None, body).await;
    assert!(matches!(err, Err(StoreError::Body { .. })));
    assert_eq!(store.upload_offset(&id).await.expect("offset"), 3);
    store
        .append_upload(&id, Some(3), stream_of(vec![b"def".to_vec()]))
        .await
        .expect("resume");
    let len = store
        .commit_upload(&id, &Digest::of(b"abcdef"))
        .await
        .expect("commit");
    assert_eq!(len, 6);
}

#[tokio::test]
async fn cancel_and_unknown_uploads() {
    let (dir, store) = open_store().await;
    let id = store
        .start_upload(UploadOwner::default())
        .await
        .expect("start");
    store
        .append_upload(&id, None, stream_of(vec![b"x".to_vec()]))
        .await
        .expect("append");
    store.cancel_upload(&id).await.expect("cancel");
    assert!(files_under(&dir.path().join("uploads")).is_empty());
    assert!(matches!(
        store.cancel_upload(&id).await,
        Err(StoreError::UploadUnknown { .. })
    ));
    assert!(matches!(
        UploadId::parse("../../etc/passwd"),
        Err(StoreError::UploadUnknown { .. })
    ));
    let never_started = UploadId::parse("0b7d5e0e-2f57-4c43-9a6e-0f5d1c9b8a77").expect("uuid");
    assert!(matches!(
        store
            .append_upload(&never_started, None, stream_of(vec![]))
            .await,
        Err(StoreError::UploadUnknown { .. })
    ));
}

#[tokio::test]
async fn reopen_after_a_crash_discards_half_written_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = blob(10_000, 2);
    let digest = Digest::of(&data);
    {
        let store = BlobStore::open(dir.path()).await.expect("open");
        let id = store
            .start_upload(UploadOwner::default())
            .await
            .expect("start");
        store
            .append_upload(&id, None, stream_of(vec![data[..5000].to_vec()]))
            .await
            .expect("append");
        let mut writer = store.writer(digest).await.expect("writer");
        writer.write(&data[..4000]).await.expect("write");
        // Simulate the crash: the process dies without committing or cleaning up.
        std::mem::forget(writer);
        std::mem::forget(store);
    }
    std::fs::create_dir(dir.path().join("tmp/stray-dir")).expect("mkdir");
    assert!(!files_under(&dir.path().join("uploads")).is_empty());
    assert!(!files_under(&dir.path().join("tmp")).is_empty());

    let store = BlobStore::open(dir.path()).await.expect("reopen");
    assert!(files_under(&dir.path().join("uploads")).is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path().join("tmp"))
            .expect("tmp")
            .count(),
        0
    );
    assert!(files_under(&dir.path().join("blobs")).is_empty());
    assert_eq!(store.stat(&digest).await.expect("stat"), None);
}

#[tokio::test]
async fn writer_verifies_and_cleans_up() {
    let (dir, store) = open_store().await;
    let data = blob(1000, 3);
    let digest = Digest::of(&data);

    let mut wrong = store.writer(digest).await.expect("writer");
    wrong.write(&data[..999]).await.expect("write");
    assert!(matches!(
        wrong.commit().await,
        Err(StoreError::DigestMismatch { .. })
    ));

    let mut dropped = store.writer(digest).await.expect("writer");
    dropped.write(&data).await.expect("write");
    drop(dropped);
    assert!(files_under(&dir.path().join("tmp")).is_empty());
    assert!(files_under(&dir.path().join("blobs")).is_empty());

    let mut writer = store.writer(digest).await.expect("writer");
    for chunk in data.chunks(333) {
        writer.write(chunk).await.expect("write");
    }
    assert_eq!(writer.written(), 1000);
    assert_eq!(writer.commit().await.expect("commit"), 1000);
    // Storing it again is a no-op that still succeeds.
    let again = store
        .put(&digest, stream_of(vec![data.clone()]))
        .await
        .expect("put again");
    assert_eq!(again, 1000);
    let mut blob_files = files_under(&dir.path().join("blobs"));
    blob_files.sort();
    let blob_dir = format!("sha256/{}/{}", &digest.hex()[..2], digest.hex());
    assert_eq!(blob_files.len(), 2, "{blob_files:?}");
    assert!(blob_files[0].ends_with(format!("{blob_dir}/data")));
    assert!(blob_files[1].ends_with(format!("{blob_dir}/metainfo.json")));
    assert!(files_under(&dir.path().join("tmp")).is_empty());
}

#[tokio::test]
async fn concurrent_readers_see_the_right_bytes() {
    let (_dir, store) = open_store().await;
    let data = blob(1_500_000, 4);
    let digest = Digest::of(&data);
    store
        .put(
            &digest,
            stream_of(data.chunks(100_000).map(<[u8]>::to_vec).collect()),
        )
        .await
        .expect("put");
    let store = Arc::new(store);
    let data = Arc::new(data);
    let readers = (0..8u64).map(|i| {
        let (store, data) = (store.clone(), data.clone());
        tokio::spawn(async move {
            let start = i * 150_000;
            let end = start + 300_001;
            let file = store
                .open_blob(&digest)
                .await
                .expect("open")
                .expect("present");
            let got = read_all(file.stream(start..end)).await;
            assert_eq!(got, data[start as usize..end as usize]);
        })
    });
    for reader in futures::future::join_all(readers).await {
        reader.expect("reader task");
    }
    // Ranges are clamped to the blob.
    let file = store
        .open_blob(&digest)
        .await
        .expect("open")
        .expect("present");
    assert_eq!(read_all(file.stream(1_499_990..2_000_000)).await.len(), 10);
}

#[tokio::test]
async fn truncated_blob_ends_the_stream_with_an_error() {
    let (dir, store) = open_store().await;
    let data = blob(600_000, 5);
    let digest = Digest::of(&data);
    store
        .put(&digest, stream_of(vec![data]))
        .await
        .expect("put");
    let file = store
        .open_blob(&digest)
        .await
        .expect("open")
        .expect("present");
    let path = dir.path().join(format!(
        "blobs/sha256/{}/{}/data",
        &digest.hex()[..2],
        digest.hex()
    ));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(300_000))
        .expect("truncate");
    let result: io::Result<Vec<Bytes>> = file.stream(0..600_000).try_collect().await;
    assert_eq!(
        result.expect_err("short read").kind(),
        io::ErrorKind::UnexpectedEof
    );
}

#[tokio::test]
async fn metainfo_is_written_at_commit_or_computed_once_on_demand() {
    let (dir, store) = open_store().await;
    // Crosses several piece boundaries (256 KiB pieces at this size) and ends mid-piece.
    let data = blob(3 * 1024 * 1024 + 12_345, 6);
    let digest = Digest::of(&data);
    store
        .put(&digest, stream_of(vec![data.clone()]))
        .await
        .expect("put");

    let mut builder = MetainfoBuilder::new(data.len() as u64);
    builder.update(&data);
    let expected = builder.finish().expect("metainfo");
    let stored = dir.path().join(format!(
        "blobs/sha256/{}/{}/metainfo.json",
        &digest.hex()[..2],
        digest.hex()
    ));
    // Commit wrote it: serving never hashes.
    assert_eq!(
        std::fs::read(&stored).expect("metainfo.json"),
        expected.to_json()
    );
    assert_eq!(
        store.metainfo(&digest).await.expect("metainfo"),
        Some(expected.clone())
    );
    assert_eq!(store.metainfo_computations(), 0);

    // A blob stored without it (an older version's store): concurrent first callers share
    // one computation, which is stored.
    std::fs::remove_file(&stored).expect("remove metainfo.json");
    let store = Arc::new(BlobStore::open(dir.path()).await.expect("reopen"));
    let callers = (0..8).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { store.metainfo(&digest).await })
    });
    for result in futures::future::join_all(callers).await {
        let metainfo = result.expect("task").expect("metainfo").expect("present");
        assert_eq!(metainfo, expected);
    }
    assert_eq!(store.metainfo_computations(), 1);
    assert_eq!(
        std::fs::read(&stored).expect("metainfo.json"),
        expected.to_json()
    );
    assert_eq!(
        store.metainfo(&digest).await.expect("metainfo"),
        Some(expected)
    );
    assert_eq!(store.metainfo_computations(), 1);
    assert!(store.metainfo_flights.lock().expect("lock").is_empty());
    assert_eq!(
        store
            .metainfo(&Digest::of(b"absent"))
            .await
            .expect("metainfo"),
        None
    );
}

#[tokio::test]
async fn metainfo_of_a_corrupted_blob_is_an_error() {
    let (dir, store) = open_store().await;
    let data = blob(1000, 7);
    let digest = Digest::of(&data);
    store
        .put(&digest, stream_of(vec![data]))
        .await
        .expect("put");
    let path = dir.path().join(format!(
        "blobs/sha256/{}/{}/data",
        &digest.hex()[..2],
        digest.hex()
    ));
    std::fs::write(&path, vec![0u8; 1000]).expect("corrupt");
    // Computed on demand (as for a blob stored without metainfo), the corruption shows.
    std::fs::remove_file(path.with_file_name("metainfo.json")).expect("remove metainfo");
    assert!(matches!(
        store.metainfo(&digest).await,
        Err(StoreError::Corrupt { .. })
    ));
    assert!(!path.with_file_name("metainfo.json").exists());
}

#[tokio::test]
async fn idle_uploads_expire_but_active_ones_stay() {
    let (dir, store) = open_store().await;
    let idle = store
        .start_upload(UploadOwner::default())
        .await
        .expect("start");
    store
        .append_upload(&idle, None, stream_of(vec![b"abandoned".to_vec()]))
        .await
        .expect("append");
    assert_eq!(
        store.expire_uploads(std::time::Duration::from_secs(3600)),
        0
    );
    assert_eq!(store.upload_offset(&idle).await.expect("offset"), 9);

    // A session whose request is still streaming is never expired.
    let busy = store
        .start_upload(UploadOwner::default())
        .await
        .expect("start");
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(1);
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed();
    let store = Arc::new(store);
    let append = tokio::spawn({
        let store = store.clone();
        async move { store.append_upload(&busy, None, body).await }
    });
    tx.send(Ok(Bytes::from_static(b"live")))
        .await
        .expect("send");
    // Wait until the append holds the session (its first chunk was consumed).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while files_under(&dir.path().join("uploads"))
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum::<u64>()
        < 13
    {
        assert!(std::time::Instant::now() < deadline, "append did not start");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    assert_eq!(store.expire_uploads(std::time::Duration::ZERO), 1);
    assert!(matches!(
        store.upload_offset(&idle).await,
        Err(StoreError::UploadUnknown { .. })
    ));
    drop(tx);
    assert_eq!(append.await.expect("task").expect("append"), 4);
    assert_eq!(store.upload_offset(&busy).await.expect("offset"), 4);
    assert_eq!(files_under(&dir.path().join("uploads")).len(), 1);
}

/// Descriptors this process holds open on files under `dir`.
fn open_fds_under(dir: &Path) -> usize {
    let dir = dir.canonicalize().expect("canonical dir");
    std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .count()
}

#[tokio::test]
async fn idle_upload_sessions_hold_no_file_descriptor() {
    let (dir, store) = open_store().await;
    let uploads = dir.path().join("uploads");
    let data = blob(100_000, 7);
    let mut ids = Vec::new();
    for _ in 0..20 {
        let id = store
            .start_upload(UploadOwner::default())
            .await
            .expect("start");
        store
            .append_upload(&id, Some(0), stream_of(vec![data[..60_000].to_vec()]))
            .await
            .expect("append");
        ids.push(id);
    }
    assert_eq!(open_fds_under(&uploads), 0, "idle sessions keep files open");
    // A chunk after the file was closed continues exactly where the session ended, and the
    // running digest spans both requests.
    for id in &ids {
        store
            .append_upload(id, Some(60_000), stream_of(vec![data[60_000..].to_vec()]))
            .await
            .expect("append");
    }
    assert_eq!(open_fds_under(&uploads), 0);
    for id in &ids {
        assert_eq!(
            store
                .commit_upload(id, &Digest::of(&data))
                .await
                .expect("commit"),
            100_000
        );
    }
    let blob = store
        .open_blob(&Digest::of(&data))
        .await
        .expect("open")
        .expect("present");
    assert_eq!(read_all(blob.stream(0..100_000)).await, data);
}

fn from(client: &str) -> UploadOwner {
    UploadOwner {
        client: Some(client.parse().expect("address")),
        repository: None,
    }
}

#[tokio::test]
async fn open_sessions_are_bounded_per_client_and_in_total() {
    let (dir, store) = open_store().await;
    store.set_upload_limits(UploadLimits {
        total: 5,
        per_client: 2,
    });
    let a1 = store.start_upload(from("10.0.0.1")).await.expect("a1");
    store.start_upload(from("10.0.0.1")).await.expect("a2");
    let refused = store.start_upload(from("10.0.0.1")).await;
    assert!(
        matches!(
            refused,
            Err(StoreError::TooManyUploads {
                scope: "client",
                limit: 2
            })
        ),
        "{refused:?}"
    );
    // IPv4-mapped IPv6 is the same client; other addresses of one IPv6 /64 are one client too.
    assert!(store.start_upload(from("::ffff:10.0.0.1")).await.is_err());
    store.start_upload(from("2001:db8::1")).await.expect("v6 1");
    store.start_upload(from("2001:db8::2")).await.expect("v6 2");
    assert!(store.start_upload(from("2001:db8::ffff:3")).await.is_err());
    store.start_upload(from("10.0.0.2")).await.expect("b1");
    let full = store.start_upload(from("10.0.0.3")).await;
    assert!(
        matches!(
            full,
            Err(StoreError::TooManyUploads {
                scope: "total",
                limit: 5
            })
        ),
        "{full:?}"
    );
    // Refused starts created nothing.
    assert_eq!(files_under(&dir.path().join("uploads")).len(), 5);
    assert_eq!(store.open_uploads(), 5);

    // Every way a session ends gives its place back.
    store.cancel_upload(&a1).await.expect("cancel");
    let a3 = store
        .start_upload(from("10.0.0.1"))
        .await
        .expect("a3 after cancel");
    assert!(store.commit_upload(&a3, &Digest::of(b"x")).await.is_err());
    let a4 = store
        .start_upload(from("10.0.0.1"))
        .await
        .expect("a4 after failed commit");
    store
        .commit_upload(&a4, &Digest::of(b""))
        .await
        .expect("commit");
    store
        .start_upload(from("10.0.0.1"))
        .await
        .expect("a5 after commit");
    assert_eq!(store.expire_uploads(std::time::Duration::ZERO), 5);
    assert_eq!(store.open_uploads(), 0);
    store
        .start_upload(from("10.0.0.1"))
        .await
        .expect("after expiry");
    store
        .start_upload(from("10.0.0.1"))
        .await
        .expect("after expiry");
}

#[tokio::test]
async fn sessions_are_bound_to_their_repository() {
    let (_dir, store) = open_store().await;
    let team = shoal_core::Name::parse("team/app").unwrap();
    let other = shoal_core::Name::parse("other/app").unwrap();
    let id = store
        .start_upload(UploadOwner {
            client: None,
            repository: Some(team.clone()),
        })
        .await
        .expect("start");
    store
        .check_upload(&id, Some(&team))
        .expect("own repository");
    for wrong in [Some(&other), None] {
        assert!(matches!(
            store.check_upload(&id, wrong),
            Err(StoreError::UploadUnknown { .. })
        ));
    }
    let unbound = store
        .start_upload(UploadOwner::default())
        .await
        .expect("start");
    store.check_upload(&unbound, None).expect("unbound");
    assert!(store.check_upload(&unbound, Some(&team)).is_err());
}

#[tokio::test]
async fn a_chunk_of_the_wrong_length_or_offset_appends_nothing() {
    let (_dir, store) = open_store().await;
    let id = store
        .start_upload(UploadOwner::default())
        .await
        .expect("start");
    assert_eq!(
        store
            .append_upload_chunk(&id, 0, 6, stream_of(vec![b"hel".to_vec(), b"lo ".to_vec()]))
            .await
            .expect("exact chunk"),
        6
    );
    // Starts past the end.
    assert!(matches!(
        store
            .append_upload_chunk(&id, 10, 3, stream_of(vec![b"abc".to_vec()]))
            .await,
        Err(StoreError::OffsetMismatch {
            expected: 10,
            actual: 6
        })
    ));
    // Shorter than declared.
    assert!(matches!(
        store
            .append_upload_chunk(&id, 6, 10, stream_of(vec![b"wor".to_vec()]))
            .await,
        Err(StoreError::ChunkLengthMismatch {
            expected: 10,
            actual: 3
        })
    ));
    // Longer than declared: refused at the first byte too many.
    assert!(matches!(
        store
            .append_upload_chunk(&id, 6, 2, stream_of(vec![b"w".to_vec(), b"orld".to_vec()]))
            .await,
        Err(StoreError::ChunkLengthMismatch { expected: 2, .. })
    ));
    // Broken off midway.
    let broken = futures::stream::iter(vec![
        Ok(Bytes::from_static(b"wo")),
        Err(io::Error::other("client went away")),
    ])
    .boxed();
    assert!(matches!(
        store.append_upload_chunk(&id, 6, 5, broken).await,
        Err(StoreError::Body { .. })
    ));
    assert_eq!(store.upload_offset(&id).await.expect("offset"), 6);
    store
        .append_upload_chunk(&id, 6, 5, stream_of(vec![b"world".to_vec()]))
        .await
        .expect("the right chunk");
    // The running digest never saw the refused bytes.
    assert_eq!(
        store
            .commit_upload(&id, &Digest::of(b"hello world"))
            .await
            .expect("commit"),
        11
    );
}

#[tokio::test]
async fn sha512_blobs_upload_verify_and_list_under_their_algorithm() {
    let (dir, store) = open_store().await;
    let data = blob(600_000, 9);
    let digest = shoal_core::Algorithm::Sha512.digest(&data);
    // A chunked upload names its digest only at the end.
    let id = store
        .start_upload(UploadOwner::default())
        .await
        .expect("start");
    for chunk in data.chunks(250_000) {
        store
            .append_upload(&id, None, stream_of(vec![chunk.to_vec()]))
            .await
            .expect("append");
    }
    let wrong = shoal_core::Algorithm::Sha512.digest(b"other bytes");
    let id_wrong = store
        .start_upload(UploadOwner::default())
        .await
        .expect("start");
    store
        .append_upload(&id_wrong, None, stream_of(vec![data.clone()]))
        .await
        .expect("append");
    assert!(matches!(
        store.commit_upload(&id_wrong, &wrong).await,
        Err(StoreError::DigestMismatch { expected, actual }) if expected == wrong && actual == digest
    ));
    assert_eq!(store.stat(&wrong).await.expect("stat"), None);
    assert_eq!(
        store.commit_upload(&id, &digest).await.expect("commit"),
        data.len() as u64
    );
    assert_eq!(read_blob(&store, &digest).await, data);
    let metainfo = store
        .metainfo(&digest)
        .await
        .expect("metainfo")
        .expect("present");
    assert_eq!(metainfo.digest(), digest);
    assert_eq!(
        metainfo.piece_hash(metainfo.piece_count() - 1),
        Some(&Digest::of(&data)),
        "pieces stay a sha256 chain"
    );
    assert!(
        dir.path()
            .join("blobs/sha512")
            .join(&digest.hex()[..2])
            .join(digest.hex())
            .join("data")
            .is_file()
    );
    // The same bytes under their sha256 are another blob; both are listed.
    let short = Digest::of(&data);
    store
        .put(&short, stream_of(vec![data.clone()]))
        .await
        .expect("put sha256");
    let mut listed: Vec<Digest> = store
        .list_blobs()
        .await
        .expect("list")
        .into_iter()
        .map(|b| b.digest)
        .collect();
    listed.sort();
    let mut expected = vec![short, digest];
    expected.sort();
    assert_eq!(listed, expected);
    assert!(files_under(&dir.path().join("uploads")).is_empty());
}
