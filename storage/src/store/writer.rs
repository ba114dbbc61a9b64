//! Staged writes and the commit path shared by upload sessions and [`BlobWriter`]: bytes go to
//! a temporary file while their digest and piece values are computed on the fly (one sha256
//! pass, no re-read), and commit verifies the digest, fsyncs, writes the metainfo, renames into
//! `blobs/` and fsyncs the directory.

use std::io;

use futures::StreamExt;
use shoal_core::{Digest, Metainfo, MetainfoBuilder};
use tokio::fs::File;
use tokio::io::AsyncWriteExt;

use super::{BlobStore, Layout, StoreError};
use crate::ByteStream;
use crate::fsutil::{self, IoContext, TempPath};

/// Bytes written so far to a temporary file, with their running digest.
pub(crate) struct Staged {
    file: File,
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
            file,
            temp,
            metainfo: MetainfoBuilder::any_length(),
        })
    }

    pub(crate) fn len(&self) -> u64 {
        self.metainfo.length()
    }

    /// Appends `data`. On error the staged bytes may be partially written and must be discarded.
    pub(crate) async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all(data)
            .await
            .ctx("write", self.temp.path())?;
        // Hashing inline keeps the one-pass guarantee (digest and piece values alike); chunks
        // are small (tens to hundreds of KiB) so each update is well under a millisecond.
        self.metainfo.update(data);
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
        self.file.flush().await.ctx("write", self.temp.path())?;
        Ok(())
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
            mut file,
            temp,
            metainfo,
        } = staged;
        let metainfo: Metainfo = metainfo
            .finish()
            .map_err(|e| io::Error::other(e.to_string()))
            .ctx("compute metainfo of", temp.path())?;
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
        file.flush().await.ctx("write", temp.path())?;
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
