//! Swarms: which peers announced which blob recently. A peer stays in a blob's swarm for the
//! store's TTL after its last announce, and each store caps its records per swarm and in total
//! ([`RecordLimits`]). Two stores implement the same trait: one in memory (the default) and one
//! in Redis (shared by several trackers, kept across restarts).

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

/// How many records a store keeps. Past either cap a new record is refused (nothing is
/// evicted): peers already recorded keep their place as long as they announce, and the refused
/// peer still gets its handout from the swarm as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimits {
    /// Members of one swarm; the digest's owning origins are recorded even beyond it.
    pub per_swarm: usize,
    /// Records over every swarm.
    pub total: usize,
}

/// Whether an announce's record was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Recorded or refreshed.
    Recorded,
    /// The swarm already holds `per_swarm` other members.
    SwarmFull,
    /// The store already holds `total` records.
    StoreFull,
}

impl Admission {
    pub fn as_str(self) -> &'static str {
        match self {
            Admission::Recorded => "recorded",
            Admission::SwarmFull => "swarm_full",
            Admission::StoreFull => "store_full",
        }
    }
}

/// What an announce did to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announced {
    /// Up to the number of members asked for, live, the caller included if it was recorded:
    /// complete members first, then the others, each a uniform random sample of its class.
    pub sample: Vec<PeerRecord>,
    /// Members of the swarm (a store may count expired ones it has not dropped yet).
    pub swarm_size: usize,
    pub admission: Admission,
    /// Live records over every swarm after this announce (a store may count expired ones it has
    /// not swept yet).
    pub records: usize,
    /// Member entries read to answer: bounded by the sample asked for, whatever the swarm's
    /// size (what the tests check instead of timing).
    pub touched: usize,
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
    /// passes without another announce, within the store's [`RecordLimits`], and returns a
    /// random sample of up to `sample` live members, complete ones first, in O(`sample`) work
    /// whatever the swarm's size. A member already recorded is always refreshed; `origin` (the
    /// peer is one of the digest's owning origins) exempts it from the per-swarm cap.
    async fn announce(
        &self,
        digest: &Digest,
        peer: &PeerRecord,
        origin: bool,
        sample: usize,
    ) -> Result<Announced, StoreError>;

    /// `Ok` while the store answers (readiness); a store in this process always does.
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
