//! The origin cluster as the tracker sees it: the one origin-cluster client (owners ranked over
//! the live membership, static or DNS, healthy ones first) plus each origin's peer record,
//! handed out as a seeder.

use shoal_api::OriginCluster;
use shoal_core::{Digest, PeerId};
use shoal_membership::{MembershipError, MembershipMetrics};
use shoal_service::{CancellationToken, TaskTracker};

use crate::config::OriginsConfig;
use crate::peers::PeerRecord;

/// One origin as a seeder.
#[derive(Debug)]
pub struct Origin {
    /// Its `Peer` service; the peer id is the address itself.
    pub peer: PeerRecord,
}

/// Why the origin list cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OriginsError {
    #[error("origins[{index}].peer {addr:?} is not a valid peer id: {source}")]
    BadPeer {
        index: usize,
        addr: String,
        source: shoal_core::PeerIdError,
    },
    #[error("following the origins: {0}")]
    Membership(#[from] MembershipError),
}

#[derive(Debug)]
pub struct Origins {
    config: OriginsConfig,
    cluster: OriginCluster,
}

impl Origins {
    /// Starts following `config` (the membership task runs on `tasks` until `shutdown`).
    pub async fn start(
        http: &reqwest::Client,
        config: &OriginsConfig,
        replicas: usize,
        metrics: &MembershipMetrics,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Self, OriginsError> {
        for (index, origin) in config.listed_peers().into_iter().enumerate() {
            PeerId::parse(&origin.peer).map_err(|source| OriginsError::BadPeer {
                index,
                addr: origin.peer.clone(),
                source,
            })?;
        }
        let cluster =
            OriginCluster::start(http.clone(), config, replicas, metrics, shutdown, tasks).await?;
        Ok(Origins {
            config: config.clone(),
            cluster,
        })
    }

    /// The origin cluster client.
    pub fn cluster(&self) -> &OriginCluster {
        &self.cluster
    }

    /// The origins owning `digest` as seeders: healthy ones first, otherwise most preferred
    /// first.
    pub fn owners(&self, digest: &Digest) -> Vec<Origin> {
        self.cluster
            .owners(digest)
            .into_iter()
            .filter_map(|owner| {
                let addr = self.config.peer_of(&owner.addr)?;
                let id = match PeerId::parse(&addr) {
                    Ok(id) => id,
                    // An IPv6 answer cannot be a peer id (`[`, `]`); such an origin is skipped.
                    Err(error) => {
                        tracing::warn!(origin = %owner.addr, peer = %addr, %error, "origin's peer address is not a valid peer id; skipped");
                        return None;
                    }
                };
                Some(Origin {
                    peer: PeerRecord {
                        id,
                        addr,
                        complete: true,
                    },
                })
            })
            .collect()
    }
}
