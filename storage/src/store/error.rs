//! Errors of the blob store.

use std::io;

use shoal_core::Digest;

use crate::fsutil::IoError;

/// Why a [`BlobStore`](super::BlobStore) operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed; carries the action and path.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The bytes received do not hash to the digest they were committed under. Nothing was stored.
    #[error("digest mismatch: expected {expected}, received bytes hash to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// A chunk was sent for an offset other than where the upload currently ends.
    #[error("upload offset mismatch: chunk starts at {expected} but the upload has {actual} bytes")]
    OffsetMismatch { expected: u64, actual: u64 },
    /// A chunk declared to be `expected` bytes long carried `actual` (counted up to the first
    /// byte too many). Nothing was appended.
    #[error(
        "chunk length mismatch: the chunk declared {expected} bytes but its body held {actual}"
    )]
    ChunkLengthMismatch { expected: u64, actual: u64 },
    /// Opening another upload session would pass a bound on open sessions (`scope` is `client`
    /// for the per-client bound, `total` for the store's). Nothing was created.
    #[error("too many open upload sessions ({scope} limit {limit})")]
    TooManyUploads { scope: &'static str, limit: usize },
    /// No upload session with this id exists (never started, finished, cancelled, expired, lost
    /// in a restart, or bound to another repository).
    #[error("upload {id} is unknown")]
    UploadUnknown { id: String },
    /// Reading the incoming byte stream failed (for example the client went away).
    #[error("reading the incoming bytes failed: {source}")]
    Body {
        #[source]
        source: io::Error,
    },
    /// A committed blob no longer matches its digest (disk corruption or tampering).
    #[error("stored blob {digest} is corrupt: {reason}")]
    Corrupt { digest: Digest, reason: String },
    /// A downloaded piece does not have the length and sha256 its metainfo lists. Nothing was
    /// written.
    #[error("piece {index} of {digest} does not match its metainfo hash")]
    PieceMismatch { digest: Digest, index: u32 },
    /// A piece index past the end of the blob.
    #[error("piece {index} of {digest} is out of range (the blob has {pieces} pieces)")]
    PieceOutOfRange {
        digest: Digest,
        index: u32,
        pieces: u32,
    },
    /// A read touched a piece of a partial blob that is not verified yet.
    #[error("piece {index} of {digest} is not downloaded yet")]
    PieceUnavailable { digest: Digest, index: u32 },
    /// Commit of a partial blob that still misses pieces.
    #[error("partial blob {digest} still misses {missing} pieces")]
    Incomplete { digest: Digest, missing: usize },
    /// A partial blob was opened with the metainfo of another digest.
    #[error("metainfo for {metainfo_digest} cannot describe blob {digest}")]
    MetainfoMismatch {
        digest: Digest,
        metainfo_digest: Digest,
    },
}

impl StoreError {
    /// The disk (or the process's quota on it) has no room for what was being written.
    pub fn is_out_of_space(&self) -> bool {
        match self {
            StoreError::Io(error) => matches!(
                error.source.kind(),
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
            ),
            _ => false,
        }
    }
}
