//! What a peer server serves: the [`PieceSource`] trait, and [`StoreSource`] over the complete
//! blobs of a store (what origins seed).

use std::sync::Arc;

use async_trait::async_trait;
use shoal_core::{Bitfield, Digest, Metainfo};
use shoal_storage::BlobStore;
use shoal_storage::fsutil::FileRange;
use tokio::sync::watch;

use crate::P2pError;

/// What a peer server serves: complete blobs (origins, agents) and partial ones (agents).
#[async_trait]
pub trait PieceSource: Send + Sync + 'static {
    /// The blob's metainfo and a watch of its bitfield, or None when we do not have (any of) it.
    async fn lookup(&self, digest: &Digest) -> Option<(Metainfo, watch::Receiver<Bitfield>)>;
    /// One verified piece as a range of an open file: streamed for a gRPC answer (and for a
    /// piece-stream answer not all in the page cache), or handed to the socket whole with
    /// `sendfile` by the piece stream.
    async fn piece_file(
        &self,
        digest: &Digest,
        metainfo: &Metainfo,
        piece: u32,
    ) -> Result<FileRange, P2pError>;
}

/// A [`PieceSource`] over the complete blobs of a [`BlobStore`].
#[derive(Debug, Clone)]
pub struct StoreSource(pub Arc<BlobStore>);

#[async_trait]
impl PieceSource for StoreSource {
    async fn lookup(&self, digest: &Digest) -> Option<(Metainfo, watch::Receiver<Bitfield>)> {
        // Computes (and stores) the metainfo on first use of a blob that lacks it.
        let metainfo = match self.0.metainfo(digest).await {
            Ok(Some(metainfo)) => metainfo,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "cannot serve blob: metainfo unavailable");
                return None;
            }
        };
        let pieces = u32::try_from(metainfo.piece_count()).ok()?;
        // A complete blob never changes: the sender is dropped at once, which tells watchers
        // that no further pieces will come.
        let (_, have) = watch::channel(Bitfield::full(pieces));
        Some((metainfo, have))
    }

    async fn piece_file(
        &self,
        digest: &Digest,
        metainfo: &Metainfo,
        piece: u32,
    ) -> Result<FileRange, P2pError> {
        let range = piece_range(metainfo, piece)?;
        let blob = self
            .0
            .open_blob(digest)
            .await?
            .ok_or(P2pError::NotFound { digest: *digest })?;
        Ok(blob.range(range))
    }
}

/// The byte range of `piece`, or [`P2pError::PieceOutOfRange`].
pub(crate) fn piece_range(
    metainfo: &Metainfo,
    piece: u32,
) -> Result<std::ops::Range<u64>, P2pError> {
    metainfo
        .piece_range(piece as usize)
        .ok_or_else(|| P2pError::PieceOutOfRange {
            digest: metainfo.digest(),
            index: piece,
            pieces: u32::try_from(metainfo.piece_count()).unwrap_or(u32::MAX),
        })
}
