//! Partial blobs: downloads in progress, assembled piece by piece in any order.
//!
//! Layout under the store root: `partial/<hex>/data` (preallocated to the blob's length) and
//! `partial/<hex>/bitfield` (which pieces are verified and durable). A piece is checked against
//! its metainfo hash *before* it is written and only written pieces can be read. The bitfield
//! file is rewritten by [`PartialBlob::sync`] (the engine calls it about once a second, not per
//! piece: an fsync per piece would tie the download to the disk), always after an fsync of the
//! data it claims — so after a crash or restart, reopening the partial resumes from pieces that
//! were verified and written, losing at most the ones since the last sync.
//!
//! The whole blob's sha256 is computed as pieces land: the verified prefix is hashed from the
//! bytes in hand, pieces that arrive ahead of it are kept in memory (within a budget) or re-read
//! from disk when the prefix reaches them. [`PartialBlob::verify`] finishes that digest and
//! [`PartialBlob::commit`] renames the data into `blobs/`.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use bytes::Bytes;
use shoal_core::{Bitfield, Digest, Digester, Metainfo};
use tokio::sync::{Mutex as AsyncMutex, watch};

use super::{BlobStore, Layout, StoreError, lock};
use crate::ByteStream;
use crate::fsutil::{self, IoContext, READ_CHUNK};

const DATA_FILE: &str = "data";
const BITFIELD_FILE: &str = "bitfield";
/// Bytes of pieces that arrived ahead of the hashed prefix kept in memory per download; beyond
/// it they are re-read from the page cache when the prefix reaches them.
const AHEAD_BUDGET: u64 = 16 * 1024 * 1024;

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
                .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok())
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
    /// The running digest of the verified prefix.
    prefix: std::sync::Mutex<Prefix>,
    /// Bytes of verified pieces found on disk when this partial was opened.
    resumed_bytes: u64,
    /// Bytes read back from disk to compute the blob's digest.
    reread_bytes: AtomicU64,
}

/// The blob's sha256 over pieces `0..next`, and the written pieces past it.
#[derive(Debug)]
struct Prefix {
    digester: Digester,
    next: u32,
    /// Written pieces past `next`, with their bytes while within [`AHEAD_BUDGET`].
    ahead: BTreeMap<u32, Option<Vec<Bytes>>>,
    ahead_bytes: u64,
    /// The digest once every piece is hashed.
    done: Option<Digest>,
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
        let prefix = Prefix {
            digester: Digester::new(),
            next: 0,
            // Resumed pieces are hashed from disk when the prefix reaches them.
            ahead: have.ones().map(|piece| (piece, None)).collect(),
            ahead_bytes: 0,
            done: None,
        };
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
            prefix: std::sync::Mutex::new(prefix),
            resumed_bytes,
            reread_bytes: AtomicU64::new(0),
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
            // Sparse preallocation: pieces land at their offsets in any order.
            data.set_len(length).ctx("preallocate", data_path)?;
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

    /// Bytes read back from disk so far to compute the blob's digest (pieces that arrived
    /// ahead of the hashed prefix beyond the in-memory budget, or were resumed).
    pub fn reread_bytes(&self) -> u64 {
        self.inner.reread_bytes.load(Ordering::Relaxed)
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
            let length: u64 = chunks.iter().map(|c| c.len() as u64).sum();
            let mut hasher = Digester::new();
            for chunk in &chunks {
                hasher.update(chunk);
            }
            let expected = inner.metainfo.piece_hash(index as usize);
            if length != range.end - range.start || expected != Some(&hasher.finish()) {
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
            this.extend_prefix(index, Some(chunks))
        })
        .await?;
        Ok(inner.have.send_if_modified(|have| have.set(index)))
    }

    /// Records written piece `index` for the blob digest: hashes it at once when it continues
    /// the prefix (then every piece that was waiting behind it), else keeps it for later.
    fn extend_prefix(&self, index: u32, bytes: Option<Vec<Bytes>>) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut prefix = lock(&inner.prefix);
        if index < prefix.next || prefix.ahead.contains_key(&index) {
            // A duplicate (endgame) of a piece already accounted for.
            return Ok(());
        }
        let length = inner
            .metainfo
            .piece_range(index as usize)
            .map_or(0, |r| r.end - r.start);
        let keep = bytes.filter(|_| prefix.ahead_bytes + length <= AHEAD_BUDGET);
        if keep.is_some() {
            prefix.ahead_bytes += length;
        }
        prefix.ahead.insert(index, keep);
        self.advance(&mut prefix)
    }

    /// Hashes the pieces waiting at the head of the prefix, in order.
    fn advance(&self, prefix: &mut Prefix) -> Result<(), StoreError> {
        while let Some(bytes) = {
            let next = prefix.next;
            prefix.ahead.remove(&next)
        } {
            match bytes {
                Some(chunks) => {
                    for chunk in &chunks {
                        prefix.digester.update(chunk);
                        prefix.ahead_bytes -= chunk.len() as u64;
                    }
                }
                None => self.rehash_from_disk(prefix.next, &mut prefix.digester)?,
            }
            prefix.next += 1;
        }
        if prefix.next == piece_count(&self.inner.metainfo) && prefix.done.is_none() {
            prefix.done = Some(std::mem::take(&mut prefix.digester).finish());
        }
        Ok(())
    }

    fn rehash_from_disk(&self, piece: u32, digester: &mut Digester) -> Result<(), StoreError> {
        let inner = &self.inner;
        let Some(range) = inner.metainfo.piece_range(piece as usize) else {
            return Ok(());
        };
        let mut buf = vec![0; READ_CHUNK];
        let mut offset = range.start;
        while offset < range.end {
            let want =
                usize::try_from(range.end - offset).map_or(READ_CHUNK, |r| r.min(READ_CHUNK));
            inner
                .data
                .read_exact_at(&mut buf[..want], offset)
                .ctx("read", &inner.data_path)?;
            digester.update(&buf[..want]);
            offset += want as u64;
        }
        inner
            .reread_bytes
            .fetch_add(range.end - range.start, Ordering::Relaxed);
        Ok(())
    }

    /// Makes the written pieces durable: fsync the data, then record them in the bitfield file.
    /// Cheap when nothing changed since the last sync.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut durable = inner.durable.lock().await;
        let now = inner.have.borrow().clone();
        if now == *durable || !inner.dir.exists() {
            // Nothing new, or committed (the directory is gone).
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

    /// Checks the whole blob's sha256 (computed as pieces landed; pieces not hashed yet are
    /// read from disk). A mismatch deletes the partial: its pieces matched a metainfo that does
    /// not describe this digest, and none of its bytes may be served as that digest.
    pub async fn verify(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let digest = inner.metainfo.digest();
        let missing = inner.have.borrow().zeros().count();
        if missing > 0 {
            return Err(StoreError::Incomplete { digest, missing });
        }
        let this = self.clone();
        let actual = blocking(move || {
            // Every piece is written, so those not hashed yet all wait in `ahead`.
            let mut prefix = lock(&this.inner.prefix);
            this.advance(&mut prefix)?;
            Ok(prefix.done)
        })
        .await?;
        let actual = actual.unwrap_or_else(|| Digester::new().finish());
        if actual != digest {
            let _durable = inner.durable.lock().await;
            self.remove_dir().await?;
            return Err(StoreError::DigestMismatch {
                expected: digest,
                actual,
            });
        }
        Ok(())
    }

    /// Streams the bytes of `range` (clamped to the blob). Every piece the range touches must
    /// be verified, otherwise [`StoreError::PieceUnavailable`].
    pub fn read(&self, range: Range<u64>) -> Result<ByteStream, StoreError> {
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
        Ok(fsutil::positional_stream(
            inner.data.clone(),
            inner.data_path.clone(),
            start,
            end,
        ))
    }

    /// Verifies the blob (see [`PartialBlob::verify`]) and moves it into `blobs/` (with its
    /// metainfo beside it), removing the partial directory. Returns the blob length. Readers of
    /// this partial keep reading from the same (renamed) file.
    pub async fn commit(&self) -> Result<u64, StoreError> {
        self.verify().await?;
        let inner = &self.inner;
        let digest = inner.metainfo.digest();
        // Hold the sync lock: no bitfield sync may race the rename.
        let _durable = inner.durable.lock().await;
        let target = inner.layout.data_path(&digest);
        if tokio::fs::try_exists(&target).await.ctx("stat", &target)? {
            // Content-addressed: a committed copy (from this handle or another path) has the
            // same bytes; only the partial files remain to clean up.
            self.remove_dir().await?;
            return Ok(inner.metainfo.length());
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
