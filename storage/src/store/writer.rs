//! Staged writes and the commit path shared by upload sessions and [`BlobWriter`]: bytes go to
//! a temporary file while their digest and piece values are computed on the fly (one sha256
//! pass, no re-read; a sha512 digest costs one re-read at commit), and commit verifies the
//! digest, fsyncs, writes the metainfo, renames into `blobs/` and fsyncs the directory.

use std::io;

use futures::StreamExt;
use shoal_core::{Algorithm, Digest, Metainfo, MetainfoBuilder};
use tokio::fs::{File, OpenOptions};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::metainfo::metainfo_of_file;
use super::{BlobStore, Layout, StoreError};
use crate::ByteStream;
use crate::fsutil::{self, IoContext, TempPath};

/// Bytes written so far to a temporary file, with their running digest.
pub(crate) struct Staged {
    /// Open while bytes are being written. Upload sessions [`close`](Staged::close) it between
    /// requests, so an idle session holds no file descriptor; the next write reopens it.
    file: Option<File>,
    temp: TempPath,
    /// The running digest and the piece values, so commit writes the metainfo without
    /// reading the bytes again.
    metainfo: MetainfoBuilder,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("path", &self.temp.path())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl Staged {
    /// Creates an empty staged file at `path`; the file is deleted if the `Staged` is dropped
    /// before commit.
    pub(crate) async fn create(path: std::path::PathBuf) -> Result<Staged, StoreError> {
        let temp = TempPath::new(path);
        let file = File::create(temp.path()).await.ctx("create", temp.path())?;
        Ok(Staged {
            file: Some(file),
            temp,
            metainfo: MetainfoBuilder::any_length(),
        })
    }

    pub(crate) fn len(&self) -> u64 {
        self.metainfo.length()
    }

    /// The open file, reopened (positioned at the end of the bytes staged so far) if it was
    /// closed.
    async fn file(&mut self) -> Result<&mut File, StoreError> {
        if self.file.is_none() {
            let path = self.temp.path();
            let mut file = OpenOptions::new()
                .write(true)
                .open(path)
                .await
                .ctx("open", path)?;
            // Positional: whatever a failed write left past the staged length is overwritten.
            file.seek(io::SeekFrom::Start(self.len()))
                .await
                .ctx("seek", path)?;
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    /// Flushes and closes the file; the next write reopens it. Written bytes stay in the page
    /// cache until commit fsyncs the file (through a new descriptor: fsync covers the file, not
    /// the descriptor).
    pub(crate) async fn close(&mut self) -> Result<(), StoreError> {
        if let Some(mut file) = self.file.take() {
            file.flush().await.ctx("write", self.temp.path())?;
        }
        Ok(())
    }

    /// Appends `data`. On error the staged bytes may be partially written and must be discarded.
    pub(crate) async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.file()
            .await?
            .write_all(data)
            .await
            .ctx("write", self.temp.path())?;
        // Hashing inline keeps the one-pass guarantee (digest and piece values alike); chunks
        // are small (tens to hundreds of KiB) so each update is well under a millisecond.
        self.metainfo.update(data);
        Ok(())
    }

    /// Reserves disk space for `len` bytes without changing the file's length, so that a full
    /// disk (or quota) shows here, before anything depends on the bytes fitting. A filesystem
    /// that cannot preallocate is not an error: its writes report a full disk as they come.
    pub(crate) async fn preallocate(&mut self, len: u64) -> Result<(), StoreError> {
        let file = self
            .file()
            .await?
            .try_clone()
            .await
            .ctx("preallocate", self.temp.path())?
            .into_std()
            .await;
        tokio::task::spawn_blocking(move || fsutil::reserve(&file, len))
            .await
            .map_err(io::Error::other)
            .and_then(|reserved| reserved)
            .ctx("preallocate", self.temp.path())?;
        Ok(())
    }

    /// Waits until every byte written so far has reached the file, surfacing the errors of
    /// tokio's background writes.
    pub(crate) async fn flush(&mut self) -> Result<(), StoreError> {
        if let Some(file) = &mut self.file {
            file.flush().await.ctx("write", self.temp.path())?;
        }
        Ok(())
    }

    /// Appends every chunk of `body`. A failing body yields [`StoreError::Body`] and leaves the
    /// staged bytes consistent (all whole chunks received so far); a failing write yields
    /// [`StoreError::Io`] and the staged bytes must be discarded.
    pub(crate) async fn write_stream(&mut self, mut body: ByteStream) -> Result<(), StoreError> {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| StoreError::Body { source })?;
            self.write(&chunk).await?;
        }
        // tokio's File completes writes in the background; flushing surfaces their errors now.
        if let Some(file) = &mut self.file {
            file.flush().await.ctx("write", self.temp.path())?;
        }
        Ok(())
    }

    /// Appends `body`, which must be exactly `length` bytes, or nothing: a shorter, longer or
    /// broken-off body leaves the staged bytes and their running digest as they were.
    pub(crate) async fn write_exact(
        &mut self,
        length: u64,
        mut body: ByteStream,
    ) -> Result<(), StoreError> {
        let start = self.len();
        let before = self.metainfo.clone();
        let mut received = 0u64;
        let mut failure = None;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(source) => {
                    failure = Some(StoreError::Body { source });
                    break;
                }
            };
            received += chunk.len() as u64;
            if received > length {
                break;
            }
            self.write(&chunk).await?;
        }
        if failure.is_none() && received == length {
            if let Some(file) = &mut self.file {
                file.flush().await.ctx("write", self.temp.path())?;
            }
            return Ok(());
        }
        // Back to where the chunk started: the file is cut to the old length and reopened
        // (positioned there) by the next write.
        self.metainfo = before;
        self.close().await?;
        let path = self.temp.path();
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .await
            .ctx("open", path)?;
        file.set_len(start).await.ctx("truncate", path)?;
        Err(failure.unwrap_or(StoreError::ChunkLengthMismatch {
            expected: length,
            actual: received,
        }))
    }
}

impl Layout {
    /// Verifies `staged` against `expected` and moves it into `blobs/`. Returns the blob length.
    /// On a mismatch the staged file is deleted and nothing becomes visible.
    pub(crate) async fn commit(
        &self,
        staged: Staged,
        expected: &Digest,
    ) -> Result<u64, StoreError> {
        let Staged {
            file,
            temp,
            metainfo,
        } = staged;
        let mut file = match file {
            Some(file) => file,
            // An upload session's file is closed between requests.
            None => OpenOptions::new()
                .write(true)
                .open(temp.path())
                .await
                .ctx("open", temp.path())?,
        };
        file.flush().await.ctx("write", temp.path())?;
        let metainfo: Metainfo = match expected.algorithm() {
            Algorithm::Sha256 => metainfo
                .finish()
                .map_err(|e| io::Error::other(e.to_string()))
                .ctx("compute metainfo of", temp.path())?,
            // The bytes streamed through a sha256 builder (an upload names its digest only at
            // the end): one more pass hashes them with the digest's algorithm.
            algorithm => metainfo_of_file(temp.path(), algorithm).await?,
        };
        let actual = metainfo.digest();
        if actual != *expected {
            return Err(StoreError::DigestMismatch {
                expected: *expected,
                actual,
            });
        }
        let data_path = self.data_path(expected);
        if tokio::fs::try_exists(&data_path)
            .await
            .ctx("stat", &data_path)?
        {
            // Content-addressed: an existing blob with this digest has these very bytes.
            return Ok(metainfo.length());
        }
        // The data must be on disk before the rename makes it visible, or a crash could expose
        // a blob whose bytes were never written.
        file.sync_all().await.ctx("fsync", temp.path())?;
        drop(file);
        fsutil::create_dir_durable(&self.shard_dir(expected)).await?;
        let blob_dir = self.blob_dir(expected);
        fsutil::create_dir_durable(&blob_dir).await?;
        // Metainfo first, so serving pieces never hashes and a visible blob always has it.
        let tmp = self.new_tmp_path("metainfo");
        fsutil::write_atomic(tmp, &self.metainfo_path(expected), &metainfo.to_json()).await?;
        tokio::fs::rename(temp.path(), &data_path)
            .await
            .ctx("rename into place", &data_path)?;
        temp.persist();
        fsutil::fsync_dir(&blob_dir).await?;
        Ok(metainfo.length())
    }
}

/// Writes one blob whose digest is known in advance (pull-through, replication). Bytes are
/// verified on [`commit`](BlobWriter::commit); dropping an uncommitted writer deletes its
/// temporary file.
#[derive(Debug)]
pub struct BlobWriter {
    layout: Layout,
    expected: Digest,
    staged: Staged,
}

impl BlobWriter {
    /// Appends bytes to the blob.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.staged.write(data).await
    }

    /// Reserves disk space for the whole blob (`len` bytes), so that a full disk is known before
    /// the first byte is written (see [`StoreError::is_out_of_space`]).
    pub async fn preallocate(&mut self, len: u64) -> Result<(), StoreError> {
        self.staged.preallocate(len).await
    }

    /// Waits until the bytes written so far are in the file, with their write errors.
    pub async fn flush(&mut self) -> Result<(), StoreError> {
        self.staged.flush().await
    }

    /// The number of bytes written so far.
    pub fn written(&self) -> u64 {
        self.staged.len()
    }

    /// Verifies the digest and makes the blob visible. Returns its length.
    pub async fn commit(self) -> Result<u64, StoreError> {
        self.layout.commit(self.staged, &self.expected).await
    }
}

impl BlobStore {
    /// Starts writing a blob that must hash to `expected`.
    pub async fn writer(&self, expected: Digest) -> Result<BlobWriter, StoreError> {
        let staged = Staged::create(self.layout.new_tmp_path(&expected.hex())).await?;
        Ok(BlobWriter {
            layout: self.layout.clone(),
            expected,
            staged,
        })
    }

    /// Stores a whole blob from `body`, verifying it hashes to `expected`. Returns its length.
    pub async fn put(&self, expected: &Digest, body: ByteStream) -> Result<u64, StoreError> {
        let mut writer = self.writer(*expected).await?;
        writer.staged.write_stream(body).await?;
        writer.commit().await
    }
}
