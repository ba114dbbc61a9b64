//! Swarms: which peers announced which blob recently. A peer stays in a blob's swarm for the
//! store's TTL after its last announce. Two stores implement the same trait: one in memory (the
//! default) and one in Redis (shared by several trackers, kept across restarts).

mod memory;
mod redis;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shoal_core::{Digest, PeerId};

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

/// What the tracker knows about one peer in one swarm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    pub id: PeerId,
    /// `host:port` of the peer's gRPC `Peer` service.
    pub addr: String,
    /// The peer holds every piece of the blob.
    pub complete: bool,
}

/// A swarm store that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis peer store: {0}")]
    Redis(#[from] ::redis::RedisError),
}

#[async_trait]
pub trait PeerStore: Send + Sync + 'static {
    /// Records `peer` in the swarm of `digest` (replacing its previous record) until the TTL
    /// passes without another announce, and returns every live member of the swarm, `peer`
    /// included, in no particular order.
    async fn announce(
        &self,
        digest: &Digest,
        peer: &PeerRecord,
    ) -> Result<Vec<PeerRecord>, StoreError>;
}
