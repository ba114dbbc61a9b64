//! Metainfo beside each blob: written at commit (computed while the bytes streamed in), read from
//! `metainfo.json` through an in-memory cache, or — for blobs stored without it — computed from
//! the blob bytes on first request and stored atomically. Concurrent first requests share one
//! computation.

use std::io::{self, Read};
use std::sync::Arc;

use shoal_core::{Algorithm, Digest, Metainfo, MetainfoBuilder};

use super::{BlobStore, StoreError};
use crate::fsutil::{self, IoContext};
use shoal_core::lock;

/// The hashing pass over a blob stored without metainfo reads chunks of this size: small enough
/// to stay in cache between the read and the hash.
const READ_CHUNK: usize = 256 * 1024;

impl BlobStore {
    /// The metainfo of a committed blob, or `None` when the store does not have the blob.
    pub async fn metainfo(&self, digest: &Digest) -> Result<Option<Metainfo>, StoreError> {
        if let Some(metainfo) = lock(&self.metainfo_cache).get(digest) {
            return Ok(Some(metainfo.clone()));
        }
        let metainfo = self.read_or_compute_metainfo(digest).await?;
        if let Some(metainfo) = &metainfo {
            lock(&self.metainfo_cache).put(*digest, metainfo.clone());
        }
        Ok(metainfo)
    }

    /// How many times metainfo was computed on demand from a stored blob's bytes (a blob
    /// committed without it). Blobs this store committed never need it.
    pub fn metainfo_computations(&self) -> u64 {
        self.metainfo_computations
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Forgets the cached metainfo of a blob that left the store.
    pub(super) fn forget_metainfo(&self, digest: &Digest) {
        lock(&self.metainfo_cache).pop(digest);
    }

    async fn read_or_compute_metainfo(
        &self,
        digest: &Digest,
    ) -> Result<Option<Metainfo>, StoreError> {
        if let Some(metainfo) = self.read_metainfo(digest).await? {
            return Ok(Some(metainfo));
        }
        let flight = lock(&self.metainfo_flights)
            .entry(*digest)
            .or_default()
            .clone();
        let result = flight
            .get_or_try_init(|| self.compute_metainfo(digest))
            .await
            .cloned();
        // Once computed the file answers later callers; forget the flight (unless a newer one
        // replaced it after a failure).
        let mut flights = lock(&self.metainfo_flights);
        if flights.get(digest).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            flights.remove(digest);
        }
        result
    }

    /// Reads a stored `metainfo.json`. A missing file is `None`; an unreadable one is logged and
    /// treated as missing so that it gets recomputed and replaced.
    async fn read_metainfo(&self, digest: &Digest) -> Result<Option<Metainfo>, StoreError> {
        let path = self.layout.metainfo_path(digest);
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx("read", &path)?,
        };
        match Metainfo::from_json(&bytes) {
            Ok(metainfo) if metainfo.digest() == *digest => Ok(Some(metainfo)),
            Ok(_) => {
                tracing::warn!(path = %path.display(), "metainfo is for another digest; recomputing");
                Ok(None)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable metainfo; recomputing");
                Ok(None)
            }
        }
    }

    async fn compute_metainfo(&self, digest: &Digest) -> Result<Option<Metainfo>, StoreError> {
        // A flight that finished just before ours started has already written the file.
        if let Some(metainfo) = self.read_metainfo(digest).await? {
            return Ok(Some(metainfo));
        }
        let data_path = self.layout.data_path(digest);
        let file = match std::fs::File::open(&data_path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).ctx("open", &data_path)?,
        };
        self.metainfo_computations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let expected = *digest;
        let path = data_path.clone();
        // Hashing a multi-GiB blob takes seconds: keep it off the async workers.
        let metainfo = tokio::task::spawn_blocking(move || build_metainfo(file, &path, expected))
            .await
            .map_err(|e| io::Error::other(e.to_string()))
            .ctx("compute metainfo of", &data_path)??;
        let target = self.layout.metainfo_path(digest);
        let tmp = self.layout.new_tmp_path("metainfo");
        fsutil::write_atomic(tmp, &target, &metainfo.to_json()).await?;
        Ok(Some(metainfo))
    }
}

fn build_metainfo(
    file: std::fs::File,
    path: &std::path::Path,
    expected: Digest,
) -> Result<Metainfo, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        digest: expected,
        reason,
    };
    let metainfo =
        hash_file(file, path, expected.algorithm())?.map_err(|e| corrupt(e.to_string()))?;
    if metainfo.digest() != expected {
        return Err(corrupt(format!("bytes hash to {}", metainfo.digest())));
    }
    Ok(metainfo)
}

/// One pass over `file` computing its metainfo for a digest of `algorithm`.
fn hash_file(
    mut file: std::fs::File,
    path: &std::path::Path,
    algorithm: Algorithm,
) -> Result<Result<Metainfo, shoal_core::MetainfoError>, StoreError> {
    let len = file.metadata().ctx("stat", path)?.len();
    let mut builder = MetainfoBuilder::with_algorithm(algorithm, len);
    let mut buf = vec![0; READ_CHUNK];
    loop {
        let n = file.read(&mut buf).ctx("read", path)?;
        if n == 0 {
            break;
        }
        builder.update(&buf[..n]);
    }
    Ok(builder.finish())
}

/// The metainfo of the file at `path` for a digest of `algorithm`, hashed off the async
/// workers: how a blob whose digest is not sha256 is checked once all its bytes are in (the
/// streaming hash of uploads and the piece chain are sha256).
pub(super) async fn metainfo_of_file(
    path: &std::path::Path,
    algorithm: Algorithm,
) -> Result<Metainfo, StoreError> {
    let file = std::fs::File::open(path).ctx("open", path)?;
    let owned = path.to_owned();
    let metainfo = tokio::task::spawn_blocking(move || hash_file(file, &owned, algorithm))
        .await
        .map_err(|e| io::Error::other(e.to_string()))
        .ctx("compute metainfo of", path)??;
    Ok(metainfo
        .map_err(|e| io::Error::other(e.to_string()))
        .ctx("compute metainfo of", path)?)
}
