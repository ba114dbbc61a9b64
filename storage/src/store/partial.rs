//! Partial blobs: downloads in progress, assembled piece by piece in any order.
//!
//! Layout under the store root: `partial/<hex>/data` (preallocated to the blob's length) and
//! `partial/<hex>/bitfield` (which pieces are verified and durable). A piece is checked against
//! its metainfo hash *before* it is written, the data file is fsynced before the bitfield that
//! claims it, and only pieces whose bit is set can be read — so after a crash or restart,
//! reopening the partial resumes from exactly the pieces that were verified and written.
//! [`PartialBlob::commit`] checks the whole blob's sha256 and renames the data into `blobs/`.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use shoal_core::{Bitfield, Digest, Digester, Metainfo};
use tokio::sync::{Mutex as AsyncMutex, watch};

use super::{BlobStore, Layout, StoreError, lock};
use crate::ByteStream;
use crate::fsutil::{self, IoContext, READ_CHUNK};

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
    /// Verified, durable pieces. The sender also lets downloaders and servers wait for pieces.
    have: watch::Sender<Bitfield>,
    /// Serialises "fsync data, then record pieces in the bitfield file" (see `persist`).
    persist: AsyncMutex<()>,
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
            have: watch::Sender::new(have),
            persist: AsyncMutex::new(()),
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

    /// Verifies `data` as piece `index` and, when it matches, writes it and records it durably.
    /// Returns `false` when the piece was already held (nothing written). A wrong length or hash
    /// is [`StoreError::PieceMismatch`] and writes nothing.
    pub async fn write_piece(&self, index: u32, data: Bytes) -> Result<bool, StoreError> {
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
        let file = inner.data.clone();
        let metainfo = inner.metainfo.clone();
        let path = inner.data_path.clone();
        // Hashing a multi-MiB piece takes milliseconds: keep it and the write off the workers.
        blocking(move || {
            if !metainfo.verify_piece(index as usize, &data) {
                return Err(StoreError::PieceMismatch { digest, index });
            }
            file.write_all_at(&data, range.start).ctx("write", &path)?;
            Ok(())
        })
        .await?;
        self.persist(index).await
    }

    /// Makes written piece `index` durable and visible: fsync the data, then set the bit in the
    /// bitfield file. Writers that arrive while another one is syncing wait for the lock and
    /// usually find their piece already covered by that sync (group commit).
    async fn persist(&self, index: u32) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let _guard = inner.persist.lock().await;
        if inner.have.borrow().get(index) {
            // A concurrent writer of the same piece recorded it first.
            return Ok(false);
        }
        let mut next = inner.have.borrow().clone();
        next.set(index);
        let data = inner.data.clone();
        let data_path = inner.data_path.clone();
        let bitfield = inner
            .bitfield
            .try_clone()
            .ctx("open", &inner.bitfield_path)?;
        let bitfield_path = inner.bitfield_path.clone();
        let bytes = next.as_bytes().to_vec();
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
        inner.have.send_modify(|have| {
            have.set(index);
        });
        Ok(true)
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
        Ok(positional_stream(
            inner.data.clone(),
            inner.data_path.clone(),
            start,
            end,
        ))
    }

    /// Checks the whole blob's sha256 and moves it into `blobs/` (with its metainfo beside it),
    /// removing the partial directory. Returns the blob length. Readers of this partial keep
    /// reading from the same (renamed) file. A mismatch deletes the partial: its pieces matched a
    /// metainfo that does not describe this digest.
    pub async fn commit(&self) -> Result<u64, StoreError> {
        let inner = &self.inner;
        let digest = inner.metainfo.digest();
        // Hold the persist lock: no piece write may race the hash and rename.
        let _guard = inner.persist.lock().await;
        let missing = inner.have.borrow().zeros().count();
        if missing > 0 {
            return Err(StoreError::Incomplete { digest, missing });
        }
        let target = inner.layout.data_path(&digest);
        if tokio::fs::try_exists(&target).await.ctx("stat", &target)? {
            // Content-addressed: a committed copy (from this handle or another path) has the
            // same bytes; only the partial files remain to clean up.
            self.remove_dir().await?;
            return Ok(inner.metainfo.length());
        }
        let data = inner.data.clone();
        let path = inner.data_path.clone();
        let length = inner.metainfo.length();
        let actual = blocking(move || hash_file(&data, &path, length)).await?;
        if actual != digest {
            self.remove_dir().await?;
            return Err(StoreError::DigestMismatch {
                expected: digest,
                actual,
            });
        }
        inner.data.sync_all().ctx("fsync", &inner.data_path)?;
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
        Ok(length)
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

fn hash_file(file: &std::fs::File, path: &Path, length: u64) -> Result<Digest, StoreError> {
    let mut digester = Digester::new();
    let mut buf = vec![0; READ_CHUNK];
    let mut offset = 0;
    while offset < length {
        let want = usize::try_from(length - offset).map_or(READ_CHUNK, |r| r.min(READ_CHUNK));
        file.read_exact_at(&mut buf[..want], offset)
            .ctx("read", path)?;
        digester.update(&buf[..want]);
        offset += want as u64;
    }
    Ok(digester.finish())
}

/// Streams `start..end` of `file` with positional reads, in [`READ_CHUNK`] pieces.
fn positional_stream(file: Arc<std::fs::File>, path: PathBuf, start: u64, end: u64) -> ByteStream {
    futures::stream::try_unfold(start, move |offset| {
        let file = file.clone();
        let path = path.clone();
        async move {
            if offset >= end {
                return Ok(None);
            }
            let want = usize::try_from(end - offset).map_or(READ_CHUNK, |r| r.min(READ_CHUNK));
            let chunk = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0; want];
                file.read_exact_at(&mut buf, offset).map_err(|e| {
                    io::Error::new(e.kind(), format!("read {}: {e}", path.display()))
                })?;
                Ok::<_, io::Error>(Bytes::from(buf))
            })
            .await
            .map_err(io::Error::other)??;
            Ok(Some((chunk, offset + want as u64)))
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests;
