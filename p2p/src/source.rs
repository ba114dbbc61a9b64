//! What a peer server serves: the [`PieceSource`] trait, and [`StoreSource`] over the complete
//! blobs of a store (what origins seed).

use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use shoal_core::{Bitfield, Digest, Metainfo};
use shoal_storage::{BlobStore, ByteStream};
use tokio::sync::watch;

use crate::P2pError;

/// What a peer server serves: complete blobs (origins, agents) and partial ones (agents).
#[async_trait]
pub trait PieceSource: Send + Sync + 'static {
    /// The blob's metainfo and a watch of its bitfield, or None when we do not have (any of) it.
    async fn lookup(&self, digest: &Digest) -> Option<(Metainfo, watch::Receiver<Bitfield>)>;
    /// Bytes of one verified piece.
    async fn read_piece(
        &self,
        digest: &Digest,
        metainfo: &Metainfo,
        piece: u32,
    ) -> Result<ByteStream, P2pError>;

    /// One verified piece as a range of an open file, which the piece stream hands to the
    /// socket without copying it (`sendfile`). None from a source that has no file to hand
    /// out: the piece is then read with [`PieceSource::read_piece`].
    async fn piece_file(
        &self,
        _digest: &Digest,
        _metainfo: &Metainfo,
        _piece: u32,
    ) -> Result<Option<PieceFile>, P2pError> {
        Ok(None)
    }
}

/// A verified piece: `range` of `file`.
#[derive(Debug)]
pub struct PieceFile {
    pub file: Arc<std::fs::File>,
    pub range: Range<u64>,
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

    async fn read_piece(
        &self,
        digest: &Digest,
        metainfo: &Metainfo,
        piece: u32,
    ) -> Result<ByteStream, P2pError> {
        let range = piece_range(metainfo, piece)?;
        let file = self
            .0
            .open_blob(digest)
            .await?
            .ok_or(P2pError::NotFound { digest: *digest })?;
        Ok(file.stream(range))
    }

    async fn piece_file(
        &self,
        digest: &Digest,
        metainfo: &Metainfo,
        piece: u32,
    ) -> Result<Option<PieceFile>, P2pError> {
        let range = piece_range(metainfo, piece)?;
        let blob = self
            .0
            .open_blob(digest)
            .await?
            .ok_or(P2pError::NotFound { digest: *digest })?;
        let (file, range) = blob.into_file(range);
        Ok(Some(PieceFile { file, range }))
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
