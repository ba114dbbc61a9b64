//! Listing and deleting committed blobs: what a cache needs to enforce a byte budget. Which
//! blob to delete, and when, is the caller's policy; this module only enumerates and removes.

use std::io;
use std::time::SystemTime;

use shoal_core::{Algorithm, Digest};

use super::{BLOB_FILE, BlobStore, StoreError};
use crate::fsutil::{self, IoContext};

/// One committed blob found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlob {
    pub digest: Digest,
    /// Length of the blob's bytes.
    pub length: u64,
    /// When the blob was committed (the data file's modification time), the best guess at its
    /// last use after a restart.
    pub committed: SystemTime,
}

impl BlobStore {
    /// Every committed blob, in no particular order. Entries that are not blob directories
    /// (stray files, names that are not digests) are skipped.
    pub async fn list_blobs(&self) -> Result<Vec<StoredBlob>, StoreError> {
        let mut blobs = Vec::new();
        for algorithm in Algorithm::ALL {
            self.list_blobs_of(algorithm, &mut blobs).await?;
        }
        Ok(blobs)
    }

    async fn list_blobs_of(
        &self,
        algorithm: Algorithm,
        blobs: &mut Vec<StoredBlob>,
    ) -> Result<(), StoreError> {
        let root = self.layout.digests_dir(algorithm);
        let mut shards = tokio::fs::read_dir(&root).await.ctx("list", &root)?;
        while let Some(shard) = shards.next_entry().await.ctx("list", &root)? {
            let shard_path = shard.path();
            if !shard.file_type().await.ctx("stat", &shard_path)?.is_dir() {
                continue;
            }
            let mut entries = tokio::fs::read_dir(&shard_path)
                .await
                .ctx("list", &shard_path)?;
            while let Some(entry) = entries.next_entry().await.ctx("list", &shard_path)? {
                let Some(digest) = entry
                    .file_name()
                    .to_str()
                    .and_then(|hex| Digest::parse(&format!("{algorithm}:{hex}")).ok())
                else {
                    continue;
                };
                let data = entry.path().join(BLOB_FILE);
                let meta = match tokio::fs::metadata(&data).await {
                    Ok(meta) => meta,
                    // A directory without data: a metainfo written for a blob deleted since.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e).ctx("stat", &data)?,
                };
                blobs.push(StoredBlob {
                    digest,
                    length: meta.len(),
                    committed: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
        Ok(())
    }

    /// Removes a committed blob with its metainfo. Returns whether it was there. Readers that
    /// already opened it keep reading their open file handle.
    pub async fn delete(&self, digest: &Digest) -> Result<bool, StoreError> {
        let dir = self.layout.blob_dir(digest);
        // Renaming first makes the blob disappear atomically: no reader can open a data file
        // whose directory is half removed.
        let doomed = self.layout.new_tmp_path(&digest.hex());
        match tokio::fs::rename(&dir, &doomed).await {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).ctx("rename away", &dir)?,
        }
        self.forget_metainfo(digest);
        self.forget_open_file(digest);
        fsutil::fsync_dir(&self.layout.shard_dir(digest)).await?;
        tokio::fs::remove_dir_all(&doomed)
            .await
            .ctx("remove", &doomed)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::ByteStream;

    fn body(data: &'static [u8]) -> ByteStream {
        futures::stream::once(async move { Ok(bytes::Bytes::from_static(data)) }).boxed()
    }

    #[tokio::test]
    async fn lists_committed_blobs_and_deletes_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).await.unwrap();
        assert!(store.list_blobs().await.unwrap().is_empty());
        let (a, b) = (Digest::of(b"alpha"), Digest::of(b"bravo!"));
        store.put(&a, body(b"alpha")).await.unwrap();
        store.put(&b, body(b"bravo!")).await.unwrap();
        store.metainfo(&a).await.unwrap().unwrap();

        let mut listed = store.list_blobs().await.unwrap();
        listed.sort_by_key(|blob| blob.length);
        let found: Vec<_> = listed
            .iter()
            .map(|blob| (blob.digest, blob.length))
            .collect();
        assert_eq!(found, [(a, 5), (b, 6)]);

        let reader = store.open_blob(&a).await.unwrap().unwrap();
        assert!(store.delete(&a).await.unwrap());
        assert!(!store.delete(&a).await.unwrap());
        assert_eq!(store.stat(&a).await.unwrap(), None);
        assert_eq!(store.metainfo(&a).await.unwrap(), None);
        // The open-file cache held it; a deleted blob is never opened again.
        assert!(store.open_blob(&a).await.unwrap().is_none());
        assert!(store.open_blob(&b).await.unwrap().is_some());
        let listed = store.list_blobs().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].digest, b);
        // An open reader still gets every byte.
        let read: Vec<u8> = reader
            .stream(0..5)
            .map(|chunk| chunk.unwrap().to_vec())
            .concat()
            .await;
        assert_eq!(read, b"alpha");
    }
}
