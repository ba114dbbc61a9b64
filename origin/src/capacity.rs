//! The store as a bounded cache in front of the backend (`cache.capacity`): shoal-storage's
//! cache evicts the least recently read blobs (HTTP reads and pieces served both count), with
//! the origin's rule on top: a blob goes only once the backend durably holds it.
//!
//! - Blobs whose write-back or replica pushes are still queued are pinned: the queues read
//!   them from the store.
//! - Any other candidate is looked up in the backend just before it is deleted, and kept unless
//!   the backend has it at its full length. This also keeps a blob committed a moment ago (its
//!   write-back is queued only after the replica quorum answered) and one filled in from a peer
//!   before the backend had it.
//! - While the backend cannot be reached nothing is evicted: an evicted blob could not come back.
//!
//! Evicting deletes the blob's metainfo with it: a pull-through computes it again in the one
//! hashing pass that verifies the bytes, and a metainfo kept alone would answer the trackers
//! (and preheat) for a blob this origin no longer has, instead of pulling it in.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use shoal_backends::{BackendRouter, WriteBack, blob_key};
use shoal_core::{Bitfield, Digest, Metainfo};
use shoal_p2p::{P2pError, PieceSource, StoreSource};
use shoal_storage::cache::{Cache, PinError, Pins, ReadGuard};
use shoal_storage::fsutil::FileRange;
use tokio::sync::watch;

use crate::replicate::PendingPushes;
use crate::{Origin, pullthrough};

/// The store's cache, when `cache.capacity` bounds it.
pub(crate) type StoreCache = Cache<BackendPins>;
/// Held by a response while it streams a blob, so the blob is not evicted under it.
pub(crate) type Reading = Option<ReadGuard<BackendPins>>;

/// Blobs must reach the backend before they may leave the store.
#[derive(Debug)]
pub(crate) struct BackendPins {
    pub(crate) writeback: Arc<WriteBack>,
    /// The ring's replica pushes; `None` for a lone origin.
    pub(crate) replication: Option<PendingPushes>,
    pub(crate) backends: Arc<BackendRouter>,
}

impl Pins for BackendPins {
    fn pinned(&self) -> HashSet<Digest> {
        let mut pinned: HashSet<Digest> = self.writeback.pending().into_iter().collect();
        pinned.extend(self.replication.iter().flat_map(PendingPushes::digests));
        pinned
    }

    async fn may_evict(&self, digest: &Digest, length: u64) -> Result<bool, PinError> {
        // Without a namespace every backend is asked in turn, as a read that lacks one does.
        match self.backends.locate(None, &blob_key(digest)).await? {
            Some((_, held)) if held == length => Ok(true),
            Some((_, held)) => {
                tracing::warn!(%digest, length, held, "the backend's copy has another length: kept in the store");
                Ok(false)
            }
            None => {
                tracing::debug!(%digest, "not in the backend yet: kept in the store");
                Ok(false)
            }
        }
    }
}

/// The store's blobs as seeded to agents, each piece served counting as a read of its blob. A
/// blob evicted here is pulled back in when a peer asks for it: the trackers still hand this
/// origin out as its seeder, and serve the metainfo they cached while it was here.
#[derive(Debug)]
pub(crate) struct ReadCounted(pub(crate) Arc<Origin>);

impl ReadCounted {
    fn store(&self) -> StoreSource {
        StoreSource(self.0.store.clone())
    }
}

#[async_trait]
impl PieceSource for ReadCounted {
    async fn lookup(&self, digest: &Digest) -> Option<(Metainfo, watch::Receiver<Bitfield>)> {
        if let Some(found) = self.store().lookup(digest).await {
            return Some(found);
        }
        match pullthrough::fetch(&self.0, *digest, None).await {
            Ok(true) => self.store().lookup(digest).await,
            Ok(false) => None,
            Err(error) => {
                tracing::warn!(%digest, %error, "cannot pull a blob back in for a peer");
                None
            }
        }
    }

    async fn piece_file(
        &self,
        digest: &Digest,
        metainfo: &Metainfo,
        piece: u32,
    ) -> Result<FileRange, P2pError> {
        // A piece is read from (or sent from) an open file, which an eviction does not cut.
        if let Some(cache) = &self.0.cache {
            cache.touch(*digest);
        }
        self.store().piece_file(digest, metainfo, piece).await
    }
}

#[cfg(test)]
mod tests;
