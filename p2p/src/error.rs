//! Errors of the p2p engine, and the one place they become gRPC statuses.

use shoal_core::Digest;
use shoal_storage::StoreError;

/// Why a p2p operation failed.
#[derive(Debug, thiserror::Error)]
pub enum P2pError {
    /// Nobody has the blob: the tracker (and so the origins) has no metainfo for it, or a peer
    /// lacks the blob or piece asked for.
    #[error("blob {digest} not found")]
    NotFound { digest: Digest },
    /// A piece index past the end of the blob.
    #[error("piece {index} of {digest} is out of range ({pieces} pieces)")]
    PieceOutOfRange {
        digest: Digest,
        index: u32,
        pieces: u32,
    },
    /// The tracker could not be reached or failed.
    #[error("tracker {addr}: {status}")]
    Tracker { addr: String, status: tonic::Status },
    /// The tracker answered with metainfo that is not valid for the digest.
    #[error("tracker sent invalid metainfo for {digest}: {reason}")]
    InvalidMetainfo { digest: Digest, reason: String },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The download of the blob failed for good (for example the assembled bytes did not match
    /// the digest).
    #[error("download of {digest} failed: {reason}")]
    DownloadFailed { digest: Digest, reason: String },
    /// The engine is shutting down.
    #[error("the p2p engine is shutting down")]
    Shutdown,
}

impl From<P2pError> for tonic::Status {
    fn from(error: P2pError) -> tonic::Status {
        let message = error.to_string();
        match error {
            P2pError::NotFound { .. } => tonic::Status::not_found(message),
            P2pError::PieceOutOfRange { .. } => tonic::Status::out_of_range(message),
            P2pError::Store(StoreError::PieceUnavailable { .. }) => {
                tonic::Status::not_found(message)
            }
            P2pError::Shutdown => tonic::Status::unavailable(message),
            P2pError::Tracker { .. }
            | P2pError::InvalidMetainfo { .. }
            | P2pError::Store(_)
            | P2pError::DownloadFailed { .. } => tonic::Status::internal(message),
        }
    }
}
