//! Partial blobs: downloads in progress, assembled piece by piece in any order.
//!
//! Layout under the store root: `partial/<hex>/data` (preallocated to the blob's length, its disk
//! blocks reserved where the filesystem can) and `partial/<hex>/bitfield` (which pieces are
//! verified and durable). A piece is checked against its metainfo hash *before* it is written and
//! only written pieces can be read. The bitfield file is rewritten by [`PartialBlob::sync`] (the
//! engine calls it about once a second, not per piece: an fsync per piece would tie the download
//! to the disk), always after an fsync of the data it claims — so after a crash or restart,
//! reopening the partial resumes from pieces that were verified and written, losing at most the
//! ones since the last sync.
//!
//! Each piece is verified against the blob's sha256 chain (see [`Metainfo`]): once every piece
//! is in, the blob hashes to its digest, with no pass over it at commit — unless the digest is a
//! sha512 one, which the chain does not prove: commit hashes such a blob once more.
//! [`PartialBlob::commit`] renames the data into `blobs/`.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use bytes::Bytes;
use shoal_core::{Algorithm, Bitfield, Digest, Metainfo};
use tokio::sync::{Mutex as AsyncMutex, watch};

use super::metainfo::metainfo_of_file;
use super::{BlobStore, Layout, StoreError};
use crate::ByteStream;
use crate::fsutil::{self, FileRange, IoContext};
use shoal_core::lock;

const DATA_FILE: &str = "data";
const BITFIELD_FILE: &str = "bitfield";

impl Layout {
    pub(super) fn partials_dir(&self) -> PathBuf {
        self.root.join("partial")
    }

    fn partial_dir(&self, digest: &Digest) -> PathBuf {
        self.partials_dir().join(digest.hex())
    }
}

/// Open partial blobs by digest, so that every caller of [`BlobStore::partial`] for one digest
/// shares one in-memory bitfield and one writer (two independent handles on the same files
/// could overwrite each other's bitfield).
pub(super) type OpenPartials = std::sync::Mutex<HashMap<Digest, Weak<Inner>>>;

impl BlobStore {
    /// Opens the partial download of `digest` described by `metainfo`, creating it (preallocated,
    /// empty bitfield) or resuming it from the pieces a previous run verified and wrote. Handles
    /// for one digest share their state; clones are cheap.
    pub async fn partial(
        &self,
        digest: &Digest,
        metainfo: &Metainfo,
    ) -> Result<PartialBlob, StoreError> {
        if metainfo.digest() != *digest {
            return Err(StoreError::MetainfoMismatch {
                digest: *digest,
                metainfo_digest: metainfo.digest(),
            });
        }
        // Serialise opens of one digest: the slow part (file I/O) runs under an async lock so a
        // second opener waits and then finds the first one's handle.
        let _guard = self.partial_open.lock().await;
        if let Some(inner) = lock(&self.partials).get(digest).and_then(Weak::upgrade) {
            return Ok(PartialBlob { inner });
        }
        let inner = Arc::new(Inner::open(&self.layout, metainfo.clone()).await?);
        let mut partials = lock(&self.partials);
        partials.retain(|_, weak| weak.strong_count() > 0);
        partials.insert(*digest, Arc::downgrade(&inner));
        Ok(PartialBlob { inner })
    }
}

/// One download in progress found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPartial {
    pub digest: Digest,
    /// The blob's whole length: what the download will occupy once complete.
    pub length: u64,
    /// When a piece was last recorded (the bitfield file's modification time).
    pub touched: SystemTime,
    /// Whether a handle on it is open, i.e. a download or a reader is using it right now.
    pub open: bool,
}

impl BlobStore {
    /// Every download in progress, open or abandoned, in no particular order.
    pub async fn list_partials(&self) -> Result<Vec<StoredPartial>, StoreError> {
        let root = self.layout.partials_dir();
        let mut found = Vec::new();
        let mut entries = match tokio::fs::read_dir(&root).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(e).ctx("list", &root)?,
        };
        while let Some(entry) = entries.next_entry().await.ctx("list", &root)? {
            let Some(digest) = entry
                .file_name()
                .to_str()
                .and_then(|hex| Digest::from_key_hex(hex).ok())
            else {
                continue;
            };
            let (data, bitfield) = (
                entry.path().join(DATA_FILE),
                entry.path().join(BITFIELD_FILE),
            );
            let (Some(data), Some(bitfield)) = (metadata(&data).await?, metadata(&bitfield).await?)
            else {
                // Being created or removed right now.
                continue;
            };
            let open = lock(&self.partials)
                .get(&digest)
                .is_some_and(|weak| weak.strong_count() > 0);
            found.push(StoredPartial {
                digest,
                length: data.len(),
                touched: bitfield.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                open,
            });
        }
        Ok(found)
    }

    /// Removes an abandoned download. Returns false, removing nothing, when it is absent or a
    /// handle on it is open (its pieces are being written or read).
    pub async fn delete_partial(&self, digest: &Digest) -> Result<bool, StoreError> {
        // Holding the open lock keeps anyone from reopening it while it goes.
        let _guard = self.partial_open.lock().await;
        if lock(&self.partials)
            .get(digest)
            .is_some_and(|weak| weak.strong_count() > 0)
        {
            return Ok(false);
        }
        let dir = self.layout.partial_dir(digest);
        let doomed = self.layout.new_tmp_path(&digest.hex());
        match tokio::fs::rename(&dir, &doomed).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).ctx("rename away", &dir)?,
        }
        tokio::fs::remove_dir_all(&doomed)
            .await
            .ctx("remove", &doomed)?;
        Ok(true)
    }
}

async fn metadata(path: &Path) -> Result<Option<std::fs::Metadata>, StoreError> {
    match tokio::fs::metadata(path).await {
        Ok(meta) => Ok(Some(meta)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).ctx("stat", path)?,
    }
}

/// A blob being downloaded piece by piece. Cheap to clone; all clones share one state.
#[derive(Debug, Clone)]
pub struct PartialBlob {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    layout: Layout,
    metainfo: Metainfo,
    dir: PathBuf,
    data_path: PathBuf,
    bitfield_path: PathBuf,
    /// Positional reads and writes (`pread`/`pwrite`) need no shared cursor, so concurrent
    /// piece writes and reads use one handle. The handle stays valid after commit renames the
    /// file into `blobs/`, so readers that started on the partial keep reading.
    data: Arc<std::fs::File>,
    bitfield: std::fs::File,
    /// Verified, written pieces (readable now). The sender also lets downloaders and servers
    /// wait for pieces.
    have: watch::Sender<Bitfield>,
    /// The pieces the bitfield file claims; the lock serialises syncs and commit.
    durable: AsyncMutex<Bitfield>,
    /// Bytes of verified pieces found on disk when this partial was opened.
    resumed_bytes: u64,
}

impl Inner {
    async fn open(layout: &Layout, metainfo: Metainfo) -> Result<Inner, StoreError> {
        let digest = metainfo.digest();
        let dir = layout.partial_dir(&digest);
        let data_path = dir.join(DATA_FILE);
        let bitfield_path = dir.join(BITFIELD_FILE);
        fsutil::create_dir_durable(&layout.partials_dir()).await?;
        fsutil::create_dir_durable(&dir).await?;
        let pieces = piece_count(&metainfo);
        let length = metainfo.length();
        let (data, bitfield, have) = {
            let (data_path, bitfield_path) = (data_path.clone(), bitfield_path.clone());
            blocking(move || open_files(&data_path, &bitfield_path, length, pieces)).await?
        };
        let resumed_bytes = have
            .ones()
            .filter_map(|piece| metainfo.piece_range(piece as usize))
            .map(|range| range.end - range.start)
            .sum();
        if resumed_bytes > 0 {
            tracing::info!(%digest, pieces = have.count(), resumed_bytes, "resuming partial download");
        }
        Ok(Inner {
            layout: layout.clone(),
            metainfo,
            dir,
            data_path,
            bitfield_path,
            data: Arc::new(data),
            bitfield,
            durable: AsyncMutex::new(have.clone()),
            have: watch::Sender::new(have),
            resumed_bytes,
        })
    }
}

/// Opens (creating) the data and bitfield files and reads the bitfield. A bitfield of the wrong
/// size or a data file of the wrong length means the files are not from this metainfo (or were
/// damaged): start over rather than trust them.
fn open_files(
    data_path: &Path,
    bitfield_path: &Path,
    length: u64,
    pieces: u32,
) -> Result<(std::fs::File, std::fs::File, Bitfield), StoreError> {
    let data = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(data_path)
        .ctx("open", data_path)?;
    let bitfield = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(bitfield_path)
        .ctx("open", bitfield_path)?;
    let stored = std::fs::read(bitfield_path).ctx("read", bitfield_path)?;
    // Readers follow the download closely and would trigger readahead into the sparse part of
    // the file: the kernel then zero-fills page-cache pages for holes that pieces overwrite a
    // moment later (a third of an agent's CPU in a 1 GiB pull, docs/BENCHMARKS.md).
    nix::fcntl::posix_fadvise(
        &data,
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_RANDOM,
    )
    .map_err(io::Error::from)
    .ctx("advise", data_path)?;
    let data_len = data.metadata().ctx("stat", data_path)?.len();
    let have = match Bitfield::from_bytes(pieces, &stored) {
        Ok(have) if data_len == length => have,
        _ => {
            if !stored.is_empty() {
                tracing::warn!(path = %bitfield_path.display(), "partial download does not match its metainfo; starting over");
            }
            // Bitfield first: once it is all zeros, no stale data can be claimed by it.
            let empty = Bitfield::new(pieces);
            bitfield.set_len(0).ctx("truncate", bitfield_path)?;
            bitfield
                .write_all_at(empty.as_bytes(), 0)
                .ctx("write", bitfield_path)?;
            bitfield.sync_all().ctx("fsync", bitfield_path)?;
            // Full length at once: pieces land at their offsets in any order.
            data.set_len(length).ctx("preallocate", data_path)?;
            // And the blocks for all of them: a disk without room for the blob fails the
            // download here, with the reason, not piece by piece midway, where each failed write
            // would look like the sending peer's fault.
            if let Err(e) = fsutil::reserve(&data, length) {
                // What was reserved before the refusal goes back; the next open starts over.
                data.set_len(0).ctx("release", data_path)?;
                return Err(e).ctx("reserve disk space for", data_path)?;
            }
            empty
        }
    };
    Ok((data, bitfield, have))
}

fn piece_count(metainfo: &Metainfo) -> u32 {
    // Metainfo bounds the piece count by MAX_PIECES (4096), far below u32::MAX.
    u32::try_from(metainfo.piece_count()).unwrap_or(u32::MAX)
}

/// Runs blocking file I/O off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| io::Error::other(e.to_string()))
        .ctx("run file task for", Path::new("partial"))?
}

impl PartialBlob {
    /// The metainfo this partial blob is assembled against.
    pub fn metainfo(&self) -> &Metainfo {
        &self.inner.metainfo
    }

    /// The verified pieces right now.
    pub fn bitfield(&self) -> Bitfield {
        self.inner.have.borrow().clone()
    }

    /// A watch of the verified pieces, updated after each piece is durable.
    pub fn subscribe(&self) -> watch::Receiver<Bitfield> {
        self.inner.have.subscribe()
    }

    /// Whether every piece is verified and written.
    pub fn is_complete(&self) -> bool {
        self.inner.have.borrow().is_complete()
    }

    /// Bytes of verified pieces that were already on disk when this partial was opened.
    pub fn resumed_bytes(&self) -> u64 {
        self.inner.resumed_bytes
    }

    /// Verifies `chunks` (the piece's bytes, in order) as piece `index` and, when they match,
    /// writes them and makes the piece readable. Returns `false` when the piece was already held
    /// (nothing changes). A wrong length or hash is [`StoreError::PieceMismatch`] and writes
    /// nothing. Durability comes with the next [`PartialBlob::sync`].
    pub async fn write_piece(&self, index: u32, chunks: Vec<Bytes>) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let digest = inner.metainfo.digest();
        let Some(range) = inner.metainfo.piece_range(index as usize) else {
            return Err(StoreError::PieceOutOfRange {
                digest,
                index,
                pieces: piece_count(&inner.metainfo),
            });
        };
        if inner.have.borrow().get(index) {
            return Ok(false);
        }
        let this = self.clone();
        // Hashing a multi-MiB piece takes milliseconds: keep it and the write off the workers.
        blocking(move || {
            let inner = &this.inner;
            if !inner.metainfo.verify_piece(index as usize, &chunks) {
                return Err(StoreError::PieceMismatch { digest, index });
            }
            let mut offset = range.start;
            for chunk in &chunks {
                inner
                    .data
                    .write_all_at(chunk, offset)
                    .ctx("write", &inner.data_path)?;
                offset += chunk.len() as u64;
            }
            Ok(())
        })
        .await?;
        Ok(inner.have.send_if_modified(|have| have.set(index)))
    }

    /// Makes the written pieces durable: fsync the data, then record them in the bitfield file.
    /// Cheap when nothing changed since the last sync.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut durable = inner.durable.lock().await;
        let now = inner.have.borrow().clone();
        if now == *durable {
            // Nothing new since the last sync, or committed (commit records every piece).
            return Ok(());
        }
        let data = inner.data.clone();
        let data_path = inner.data_path.clone();
        let bitfield = inner
            .bitfield
            .try_clone()
            .ctx("open", &inner.bitfield_path)?;
        let bitfield_path = inner.bitfield_path.clone();
        let bytes = now.as_bytes().to_vec();
        blocking(move || {
            // The data must be durable before a bit claims it, or a crash could resume with a
            // bit set over bytes that never reached the disk.
            data.sync_data().ctx("fsync", &data_path)?;
            // Rewritten in place: bits only ever go from 0 to 1 and each claims fsynced data,
            // so even a torn write leaves a bitfield whose every set bit is true.
            bitfield
                .write_all_at(&bytes, 0)
                .ctx("write", &bitfield_path)?;
            bitfield.sync_data().ctx("fsync", &bitfield_path)?;
            Ok(())
        })
        .await?;
        *durable = now;
        Ok(())
    }

    /// Streams the bytes of `range` (clamped to the blob). Every piece the range touches must
    /// be verified, otherwise [`StoreError::PieceUnavailable`].
    pub fn read(&self, range: Range<u64>) -> Result<ByteStream, StoreError> {
        Ok(self.verified_range(range)?.stream())
    }

    /// `range` of the data file (clamped to the blob), to stream or to send whole. Every piece
    /// the range touches must be verified, otherwise [`StoreError::PieceUnavailable`].
    pub fn verified_range(&self, range: Range<u64>) -> Result<FileRange, StoreError> {
        let inner = &self.inner;
        let length = inner.metainfo.length();
        let end = range.end.min(length);
        let start = range.start.min(end);
        if start < end {
            let piece_length = inner.metainfo.piece_length();
            let first = start / piece_length;
            let last = (end - 1) / piece_length;
            let have = inner.have.borrow();
            if let Some(missing) = (first..=last).find(|&p| !have.get(p as u32)) {
                return Err(StoreError::PieceUnavailable {
                    digest: inner.metainfo.digest(),
                    index: missing as u32,
                });
            }
        }
        Ok(FileRange {
            file: inner.data.clone(),
            path: inner.data_path.clone(),
            range: start..end,
        })
    }

    /// Checks every piece is in — each verified against the blob's sha256 chain, so the blob is
    /// its digest — and moves it into `blobs/` (with its metainfo beside it), removing the partial
    /// directory. Returns the blob length. Readers of this partial keep reading from the same
    /// (renamed) file.
    pub async fn commit(&self) -> Result<u64, StoreError> {
        let inner = &self.inner;
        let digest = inner.metainfo.digest();
        // Hold the sync lock: no bitfield sync may race the rename.
        let mut durable = inner.durable.lock().await;
        let have = inner.have.borrow().clone();
        let missing = have.zeros().count();
        if missing > 0 {
            return Err(StoreError::Incomplete { digest, missing });
        }
        let target = inner.layout.data_path(&digest);
        if tokio::fs::try_exists(&target).await.ctx("stat", &target)? {
            // Content-addressed: a committed copy (from this handle or another path) has the
            // same bytes; only the partial files remain to clean up.
            self.remove_dir().await?;
            *durable = have;
            return Ok(inner.metainfo.length());
        }
        if digest.algorithm() != Algorithm::Sha256 {
            let actual = metainfo_of_file(&inner.data_path, digest.algorithm())
                .await?
                .digest();
            if actual != digest {
                // Every piece matched a chain for other bytes: the metainfo lied. Start over.
                self.remove_dir().await?;
                return Err(StoreError::DigestMismatch {
                    expected: digest,
                    actual,
                });
            }
        }
        let data = inner.data.clone();
        let data_path = inner.data_path.clone();
        blocking(move || Ok(data.sync_all().ctx("fsync", &data_path)?)).await?;
        fsutil::create_dir_durable(&inner.layout.shard_dir(&digest)).await?;
        let blob_dir = inner.layout.blob_dir(&digest);
        fsutil::create_dir_durable(&blob_dir).await?;
        // Metainfo first: a blob visible under `blobs/` then never needs it recomputed.
        let tmp = inner.layout.new_tmp_path("metainfo");
        fsutil::write_atomic(
            tmp,
            &inner.layout.metainfo_path(&digest),
            &inner.metainfo.to_json(),
        )
        .await?;
        tokio::fs::rename(&inner.data_path, &target)
            .await
            .ctx("rename into place", &target)?;
        fsutil::fsync_dir(&blob_dir).await?;
        self.remove_dir().await?;
        // Nothing is left for a sync to record.
        *durable = have;
        Ok(inner.metainfo.length())
    }

    async fn remove_dir(&self) -> Result<(), StoreError> {
        let dir = &self.inner.dir;
        match tokio::fs::remove_dir_all(dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).ctx("remove", dir)?,
        }
    }
}

#[cfg(test)]
mod tests;
