//! The engine's [`PieceSource`]: verified pieces of downloads in progress, and complete blobs in
//! the store.

use std::sync::Arc;

use async_trait::async_trait;
use shoal_core::{Bitfield, Digest, Metainfo};
use shoal_storage::fsutil::FileRange;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::source::piece_range;
use crate::{P2pError, PieceSource, StoreSource};

pub(crate) struct EngineSource {
    pub shared: Arc<Shared>,
}

impl EngineSource {
    fn store(&self) -> StoreSource {
        StoreSource(self.shared.store.clone())
    }
}

#[async_trait]
impl PieceSource for EngineSource {
    async fn lookup(&self, digest: &Digest) -> Option<(Metainfo, watch::Receiver<Bitfield>)> {
        match self.shared.in_progress(digest) {
            Some(download) => Some((
                download.partial.metainfo().clone(),
                until_shutdown(download.partial.subscribe(), &self.shared.shutdown),
            )),
            None => self.store().lookup(digest).await,
        }
    }

    async fn piece_file(
        &self,
        digest: &Digest,
        metainfo: &Metainfo,
        piece: u32,
    ) -> Result<FileRange, P2pError> {
        match self.shared.in_progress(digest) {
            Some(download) => Ok(download
                .partial
                .verified_range(piece_range(metainfo, piece)?)?),
            None => self.store().piece_file(digest, metainfo, piece).await,
        }
    }
}

/// Relays `have` until shutdown, then closes. A partial download's own watch lives as long as
/// any requester holds the blob, so sessions following it directly could keep the peer
/// service (and its graceful shutdown) waiting indefinitely. The relay is an untracked task: it
/// ends with the session it feeds (or at shutdown), and the peer server waits for sessions.
fn until_shutdown(
    mut have: watch::Receiver<Bitfield>,
    shutdown: &CancellationToken,
) -> watch::Receiver<Bitfield> {
    let (tx, relayed) = watch::channel(have.borrow_and_update().clone());
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tx.closed() => return,
                changed = have.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    tx.send_replace(have.borrow_and_update().clone());
                }
            }
        }
    });
    relayed
}
