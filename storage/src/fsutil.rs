//! Small filesystem helpers shared by the store, the filesystem backend and the write-back
//! queue: I/O errors that carry their path, temporary files that clean up after themselves,
//! durable atomic writes, and streaming a byte range out of a file.

use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::fs::File;
use tokio::io::AsyncWriteExt;

use crate::ByteStream;

/// An I/O error together with what was being done and to which path.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct IoError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Attaches an action and a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, action: &'static str, path: &Path) -> Result<T, IoError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, action: &'static str, path: &Path) -> Result<T, IoError> {
        self.map_err(|source| IoError {
            action,
            path: path.to_path_buf(),
            source,
        })
    }
}

/// A file path that is deleted when dropped, unless [`TempPath::persist`] was called.
/// Keeps failed or abandoned writes from leaving partial files behind.
#[derive(Debug)]
pub(crate) struct TempPath {
    path: PathBuf,
    armed: bool,
}

impl TempPath {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self { path, armed: true }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Disarms the guard (the file was renamed away or must be kept).
    pub(crate) fn persist(mut self) {
        self.armed = false;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: the file may never have been created.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A unique name for a temporary file.
pub(crate) fn temp_name(hint: &str) -> String {
    format!("{hint}.{}.tmp", uuid::Uuid::new_v4().simple())
}

/// Fsyncs a directory so that entries created or renamed in it survive a crash.
pub(crate) async fn fsync_dir(dir: &Path) -> Result<(), IoError> {
    let handle = File::open(dir).await.ctx("open directory", dir)?;
    handle.sync_all().await.ctx("fsync directory", dir)
}

/// Creates `dir` if missing; when it was created, fsyncs its parent so the new entry is durable.
pub(crate) async fn create_dir_durable(dir: &Path) -> Result<(), IoError> {
    match tokio::fs::create_dir(dir).await {
        Ok(()) => match dir.parent() {
            Some(parent) => fsync_dir(parent).await,
            None => Ok(()),
        },
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).ctx("create directory", dir),
    }
}

/// Writes `data` to `target` atomically and durably: write `tmp`, fsync, rename, fsync the
/// target's directory. `tmp` must be on the same filesystem as `target`.
pub(crate) async fn write_atomic(tmp: PathBuf, target: &Path, data: &[u8]) -> Result<(), IoError> {
    let tmp = TempPath::new(tmp);
    let mut file = File::create(tmp.path()).await.ctx("create", tmp.path())?;
    file.write_all(data).await.ctx("write", tmp.path())?;
    file.sync_all().await.ctx("fsync", tmp.path())?;
    drop(file);
    tokio::fs::rename(tmp.path(), target)
        .await
        .ctx("rename into place", target)?;
    tmp.persist();
    match target.parent() {
        Some(dir) => fsync_dir(dir).await,
        None => Ok(()),
    }
}

/// Deletes everything inside `dir` (files and subdirectories), keeping `dir` itself.
pub(crate) async fn clear_dir(dir: &Path) -> Result<usize, IoError> {
    let mut entries = tokio::fs::read_dir(dir).await.ctx("list", dir)?;
    let mut removed = 0;
    while let Some(entry) = entries.next_entry().await.ctx("list", dir)? {
        let path = entry.path();
        let is_dir = entry.file_type().await.ctx("stat", &path)?.is_dir();
        if is_dir {
            tokio::fs::remove_dir_all(&path)
                .await
                .ctx("remove", &path)?;
        } else {
            tokio::fs::remove_file(&path).await.ctx("remove", &path)?;
        }
        removed += 1;
    }
    Ok(removed)
}

/// Streamed reads (blob GETs, pieces) are this large: a GiB costs a thousand blocking-pool hops
/// instead of four thousand, and a reader holds at most a few MiB in flight.
const STREAM_CHUNK: usize = 1024 * 1024;
/// Reads in flight per stream: the disk (or page cache) read of the next chunk overlaps the
/// socket write of this one.
const READ_AHEAD: usize = 2;

/// Streams `len` bytes of `file` starting at `start`, in [`STREAM_CHUNK`] reads. A file shorter
/// than promised ends the stream with `UnexpectedEof` instead of silently returning fewer bytes.
pub(crate) fn file_stream(file: File, path: PathBuf, start: u64, len: u64) -> ByteStream {
    let opened = futures::stream::once(async move {
        let file = Arc::new(file.into_std().await);
        Ok::<_, io::Error>(positional_stream(file, path, start, start + len))
    });
    opened.try_flatten().boxed()
}

/// Streams `start..end` of `file` with positional reads (no shared cursor, so one handle may
/// serve many readers), in [`STREAM_CHUNK`] pieces, the next read already running while the
/// reader sends the current chunk (at most [`READ_AHEAD`] chunks in memory per stream).
pub(crate) fn positional_stream(
    file: Arc<std::fs::File>,
    path: PathBuf,
    start: u64,
    end: u64,
) -> ByteStream {
    let offsets = (start..end).step_by(STREAM_CHUNK);
    futures::stream::iter(offsets)
        .map(move |offset| {
            let file = file.clone();
            let path = path.clone();
            let want = usize::try_from(end - offset).map_or(STREAM_CHUNK, |r| r.min(STREAM_CHUNK));
            async move {
                tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0; want];
                    file.read_exact_at(&mut buf, offset).map_err(|e| {
                        io::Error::new(e.kind(), format!("read {}: {e}", path.display()))
                    })?;
                    Ok::<_, io::Error>(Bytes::from(buf))
                })
                .await
                .map_err(io::Error::other)?
            }
        })
        .buffered(READ_AHEAD)
        .boxed()
}
