//! The on-disk content-addressed blob store.
//!
//! Layout under the store root:
//! - `blobs/<algorithm>/<first 2 hex>/<hex>/data` — committed blob bytes (`sha256` or `sha512`),
//!   immutable once renamed in;
//! - `blobs/<algorithm>/<first 2 hex>/<hex>/metainfo.json` — the blob's metainfo, computed when
//!   the blob is committed (or on first request for blobs stored without it);
//! - `partial/<hex>/{data,bitfield}` — downloads in progress, kept across restarts so they
//!   resume (see [`PartialBlob`]; the hex's length names the algorithm);
//! - `uploads/<uuid>` — bytes of upload sessions in progress (session state lives in memory; the
//!   file is open only while a request appends to it);
//! - `tmp/` — temporary files of [`BlobWriter`]s and metainfo writes.
//!
//! A blob only appears under `blobs/` after its digest was verified and its bytes fsynced, so a
//! reader never sees a partial blob. Uploads and temporary files do not survive a restart:
//! [`BlobStore::open`] clears `uploads/` and `tmp/`, so a crash mid-write leaves nothing behind.

mod catalog;
mod error;
mod metainfo;
mod partial;
mod upload;
mod writer;

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use shoal_core::{Algorithm, Digest, Metainfo, lock};
use tokio::sync::OnceCell;

use crate::ByteStream;
use crate::fsutil::{self, FileRange, IoContext};

pub use catalog::StoredBlob;
pub use error::StoreError;
pub use partial::{PartialBlob, StoredPartial};
pub use upload::{UploadId, UploadLimits, UploadOwner};
pub use writer::BlobWriter;

const BLOB_FILE: &str = "data";
const METAINFO_FILE: &str = "metainfo.json";
/// Metainfo documents kept in memory (each at most ~130 KB of hashes, typically a few KB).
const METAINFO_CACHE: std::num::NonZeroUsize = std::num::NonZeroUsize::new(1024).unwrap();
/// Committed blobs kept open: the blobs a swarm is pulling at once, a small share of the
/// process's file descriptors.
const OPEN_FILES: std::num::NonZeroUsize = std::num::NonZeroUsize::new(64).unwrap();

/// Paths inside the store root. Every path is built from a parsed [`Digest`] or [`UploadId`],
/// never from request text.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    root: PathBuf,
}

impl Layout {
    fn digests_dir(&self, algorithm: Algorithm) -> PathBuf {
        self.root.join("blobs").join(algorithm.as_str())
    }

    fn uploads_dir(&self) -> PathBuf {
        self.root.join("uploads")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn shard_dir(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.digests_dir(digest.algorithm()).join(&hex[..2])
    }

    fn blob_dir(&self, digest: &Digest) -> PathBuf {
        self.shard_dir(digest).join(digest.hex())
    }

    fn data_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir(digest).join(BLOB_FILE)
    }

    fn metainfo_path(&self, digest: &Digest) -> PathBuf {
        self.blob_dir(digest).join(METAINFO_FILE)
    }

    fn upload_path(&self, id: &UploadId) -> PathBuf {
        self.uploads_dir().join(id.to_string())
    }

    fn new_tmp_path(&self, hint: &str) -> PathBuf {
        self.tmp_dir().join(fsutil::temp_name(hint))
    }
}

/// A content-addressed blob store on local disk. Cheap to share behind an `Arc`; all methods
/// take `&self` and may be called concurrently.
#[derive(Debug)]
pub struct BlobStore {
    layout: Layout,
    /// Upload sessions in progress. Each has its own async mutex so chunks of one upload apply
    /// in order while different uploads proceed in parallel.
    uploads: Mutex<upload::Sessions>,
    /// Metainfo computations in flight, so concurrent callers for one digest share one pass.
    metainfo_flights: Mutex<HashMap<Digest, Arc<OnceCell<Option<Metainfo>>>>>,
    /// Recently used metainfo: every piece request needs it, and parsing thousands of hashes
    /// from JSON per piece would cost more than serving the piece.
    metainfo_cache: Mutex<lru::LruCache<Digest, Metainfo>>,
    /// Recently opened committed blobs: a peer asks for every piece separately, and opening
    /// the file each time is a blocking-pool hop (a thread wake-up) per piece.
    open_files: Mutex<OpenFiles>,
    /// Partial downloads with a live handle, and the lock that serialises opening them.
    partials: partial::OpenPartials,
    partial_open: tokio::sync::Mutex<()>,
    /// Metainfo computed on demand (a blob committed without it); 0 on the serving path of
    /// blobs this store committed.
    metainfo_computations: std::sync::atomic::AtomicU64,
}

impl BlobStore {
    /// Opens (creating if needed) the store at `root` and discards leftovers of interrupted
    /// uploads and writes.
    pub async fn open(root: impl Into<PathBuf>) -> Result<BlobStore, StoreError> {
        let layout = Layout { root: root.into() };
        // `partial/` is not cleared: its pieces are verified and durable, and resume downloads.
        let digests_dirs = Algorithm::ALL.map(|algorithm| layout.digests_dir(algorithm));
        for dir in digests_dirs.into_iter().chain([
            layout.partials_dir(),
            layout.uploads_dir(),
            layout.tmp_dir(),
        ]) {
            tokio::fs::create_dir_all(&dir)
                .await
                .ctx("create directory", &dir)?;
        }
        for dir in [layout.uploads_dir(), layout.tmp_dir()] {
            let removed = fsutil::clear_dir(&dir).await?;
            if removed > 0 {
                tracing::info!(dir = %dir.display(), removed, "discarded leftovers of interrupted writes");
            }
        }
        Ok(BlobStore {
            layout,
            uploads: Mutex::default(),
            metainfo_flights: Mutex::default(),
            metainfo_cache: Mutex::new(lru::LruCache::new(METAINFO_CACHE)),
            open_files: Mutex::new(OpenFiles {
                files: lru::LruCache::new(OPEN_FILES),
                deletions: 0,
            }),
            partials: Mutex::default(),
            partial_open: tokio::sync::Mutex::default(),
            metainfo_computations: Default::default(),
        })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.layout.root
    }

    /// The length of a committed blob, or `None` when the store does not have it.
    pub async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        let path = self.layout.data_path(digest);
        match tokio::fs::metadata(&path).await {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("stat", &path)?,
        }
    }

    /// Opens a committed blob for reading, or `None` when the store does not have it.
    pub async fn open_blob(&self, digest: &Digest) -> Result<Option<BlobFile>, StoreError> {
        let deletions = {
            let mut open = lock(&self.open_files);
            if let Some(file) = open.files.get(digest) {
                return Ok(Some(file.clone()));
            }
            open.deletions
        };
        let path = self.layout.data_path(digest);
        // Open and stat in one blocking-pool hop.
        let opened = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                let file = std::fs::File::open(path)?;
                let len = file.metadata()?.len();
                Ok::<_, io::Error>((file, len))
            })
            .await
        };
        let opened = opened
            .map_err(|e| io::Error::other(e.to_string()))
            .ctx("open", &path)?;
        match opened {
            Ok((file, len)) => {
                let file = BlobFile {
                    file: Arc::new(file),
                    path,
                    len,
                };
                let mut open = lock(&self.open_files);
                // A delete since we looked may have removed what we opened: not kept then.
                if open.deletions == deletions {
                    open.files.put(*digest, file.clone());
                }
                Ok(Some(file))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).ctx("open", &path)?,
        }
    }

    /// Drops `digest` from the open files once its file is gone, so it is never served again
    /// and its space is freed when the readers in progress finish.
    fn forget_open_file(&self, digest: &Digest) {
        let mut open = lock(&self.open_files);
        open.deletions += 1;
        open.files.pop(digest);
    }
}

/// The open-file cache of committed blobs, and a count of deletes: a file opened while a delete
/// ran is not cached (it may be the deleted one).
#[derive(Debug)]
struct OpenFiles {
    files: lru::LruCache<Digest, BlobFile>,
    deletions: u64,
}

/// An open committed blob. The file handle stays valid even if the blob is removed meanwhile.
#[derive(Debug, Clone)]
pub struct BlobFile {
    file: Arc<std::fs::File>,
    path: PathBuf,
    len: u64,
}

impl BlobFile {
    /// The blob's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the blob has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Streams the bytes in `range` (clamped to the blob) in bounded chunks.
    pub fn stream(self, range: Range<u64>) -> ByteStream {
        self.range(range).stream()
    }

    /// `range` of the blob (clamped to it), to stream or to send whole.
    pub fn range(self, range: Range<u64>) -> FileRange {
        let end = range.end.min(self.len);
        FileRange {
            file: self.file,
            path: self.path,
            range: range.start.min(end)..end,
        }
    }
}

#[cfg(test)]
mod tests;
