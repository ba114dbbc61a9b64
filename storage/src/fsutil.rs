//! Small filesystem helpers shared by the store and the filesystem backend: durable directories,
//! clearing a directory, and streaming a byte range out of a file (I/O errors with their path,
//! temporary files and durable atomic writes come from `shoal_jobs`).

use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::fs::File;

use crate::ByteStream;

// The durable-file primitives live with the job queue, whose markers need them too.
pub use shoal_jobs::IoError;
pub(crate) use shoal_jobs::{IoContext, TempPath, fsync_dir, temp_name, write_atomic};

/// Reserves disk blocks for the first `len` bytes of `file` without changing its length
/// (`fallocate(FALLOC_FL_KEEP_SIZE)`: a blob written from a source shorter than announced then
/// cannot end in zeros), so that a full disk (or quota) shows at once, before anything depends on
/// the bytes fitting. A filesystem that cannot preallocate is not an error: its writes report a
/// full disk as they come.
pub(crate) fn reserve(file: &std::fs::File, len: u64) -> io::Result<()> {
    use nix::errno::Errno;
    use nix::fcntl::{FallocateFlags, fallocate};
    // Nothing to reserve; `fallocate` refuses a zero length (EINVAL).
    let Some(len) = i64::try_from(len).ok().filter(|&len| len > 0) else {
        return Ok(());
    };
    match fallocate(file, FallocateFlags::FALLOC_FL_KEEP_SIZE, 0, len) {
        Ok(()) | Err(Errno::EOPNOTSUPP | Errno::ENOSYS) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

/// Creates `dir` if missing; when it was created, fsyncs its parent so the new entry is durable.
pub async fn create_dir_durable(dir: &Path) -> Result<(), IoError> {
    match tokio::fs::create_dir(dir).await {
        Ok(()) => match dir.parent() {
            Some(parent) => fsync_dir(parent).await,
            None => Ok(()),
        },
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).ctx("create directory", dir),
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
pub fn file_stream(file: File, path: PathBuf, start: u64, len: u64) -> ByteStream {
    let opened = futures::stream::once(async move {
        let file = Arc::new(file.into_std().await);
        Ok::<_, io::Error>(positional_stream(file, path, start, start + len))
    });
    opened.try_flatten().boxed()
}

/// A byte range of an open file, kept readable if the file is removed or renamed meanwhile:
/// streamed in bounded positional reads ([`FileRange::stream`]), or handed whole to a socket by
/// a caller that sends it itself (`sendfile`). `path` names the file in read errors.
#[derive(Debug)]
pub struct FileRange {
    pub file: Arc<std::fs::File>,
    pub path: PathBuf,
    pub range: std::ops::Range<u64>,
}

impl FileRange {
    /// The range's bytes, as [`positional_stream`] reads them.
    pub fn stream(self) -> ByteStream {
        positional_stream(self.file, self.path, self.range.start, self.range.end)
    }
}

/// Streams `start..end` of `file` in [`STREAM_CHUNK`] pieces with positional reads (no shared
/// cursor, so one handle may serve many readers): cached ones right on the worker
/// (`shoal_pagecache`), others off the runtime, the next read already running while the reader
/// sends the current chunk (at most [`READ_AHEAD`] chunks in memory per stream).
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
                // Cached bytes are read at once; the rest off the runtime, since reading them
                // could wait on the disk. So is a file whose filesystem cannot tell (some
                // network and FUSE filesystems), and pread reports any real I/O error.
                if let Ok(Some(bytes)) = shoal_pagecache::cached(&file, offset, want) {
                    return Ok(bytes);
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserving_keeps_the_length_and_nothing_to_reserve_is_no_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = std::fs::File::create(dir.path().join("f")).expect("create");
        reserve(&file, 0).expect("zero bytes");
        reserve(&file, 1 << 20).expect("one MiB");
        assert_eq!(file.metadata().expect("stat").len(), 0);
    }
}
