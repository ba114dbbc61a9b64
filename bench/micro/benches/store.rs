//! The blob store's two hot paths: an upload of 256 MiB (one append of a 1 MiB-chunk stream,
//! then commit: sha256 check, fsync, rename) and a streamed read of a committed blob.
//! The store lives under `$TMPDIR`. Baselines (in `bench/micro.sh`, same filesystem):
//! `dd bs=1M conv=fsync` writing 256 MiB, and `dd` reading that file back to /dev/null.

use divan::Bencher;
use divan::counter::BytesCount;
use futures::StreamExt;
use shoal_microbench::{MIB, RepeatedBlob};
use shoal_storage::BlobStore;
use tempfile::TempDir;
use tokio::runtime::Runtime;

const CHUNK: usize = MIB;
const CHUNKS: usize = 256;

fn main() {
    divan::main();
}

/// A store in a fresh temporary directory and the runtime that drives it.
struct Fixture {
    runtime: Runtime,
    store: BlobStore,
    blob: RepeatedBlob,
    _dir: TempDir,
}

fn fixture() -> Fixture {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    let dir = tempfile::tempdir().expect("create a temporary directory under $TMPDIR");
    let store = runtime
        .block_on(BlobStore::open(dir.path().join("store")))
        .expect("open the store");
    Fixture {
        runtime,
        store,
        blob: RepeatedBlob::new(CHUNK, CHUNKS, 2),
        _dir: dir,
    }
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn upload_append_commit(bencher: Bencher) {
    let f = fixture();
    let digest = f.blob.digest();
    bencher
        .counter(BytesCount::new(f.blob.len()))
        // The previous sample's blob is removed outside the timed region.
        .with_inputs(|| {
            f.runtime
                .block_on(f.store.delete(&digest))
                .expect("delete the previous sample's blob");
        })
        .bench_local_values(|()| {
            f.runtime.block_on(async {
                let id = f
                    .store
                    .start_upload(shoal_storage::UploadOwner::default())
                    .await
                    .expect("start the upload");
                f.store
                    .append_upload(&id, Some(0), f.blob.stream())
                    .await
                    .expect("append the blob");
                f.store
                    .commit_upload(&id, &digest)
                    .await
                    .expect("commit the upload")
            })
        });
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn blob_file_stream(bencher: Bencher) {
    let f = fixture();
    let digest = f.blob.digest();
    let length = f.blob.len();
    f.runtime
        .block_on(f.store.put(&digest, f.blob.stream()))
        .expect("store the blob");
    bencher.counter(BytesCount::new(length)).bench_local(|| {
        f.runtime.block_on(async {
            let file = f
                .store
                .open_blob(&digest)
                .await
                .expect("open the blob")
                .expect("the blob was stored");
            let mut stream = file.stream(0..length);
            let mut read = 0;
            while let Some(chunk) = stream.next().await {
                read += chunk.expect("read a chunk").len() as u64;
            }
            assert_eq!(read, length, "the stream ended early");
        })
    });
}
