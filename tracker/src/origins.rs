//! The origin cluster as the tracker sees it: each origin's HTTP client (for metainfo) and its
//! peer record (handed out as a seeder), and which origins own a digest. The member list is
//! live (static or DNS, health-checked); owners are ranked over all members and the healthy
//! ones come first.

use shoal_api::OriginClient;
use shoal_core::{Digest, PeerId, rendezvous};
use shoal_membership::{Membership, MembershipError, MembershipMetrics};
use shoal_service::{CancellationToken, TaskTracker};

use crate::config::{OriginAddrs, OriginsConfig};
use crate::peers::PeerRecord;

/// One origin.
#[derive(Debug)]
pub struct Origin {
    pub client: OriginClient,
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
    members: Membership,
    http: reqwest::Client,
    replicas: usize,
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
        if let OriginsConfig::Static(origins) = config {
            for (index, OriginAddrs { peer, .. }) in origins.iter().enumerate() {
                PeerId::parse(peer).map_err(|source| OriginsError::BadPeer {
                    index,
                    addr: peer.clone(),
                    source,
                })?;
            }
        }
        let members = Membership::start(
            "origins",
            &config.members(),
            http.clone(),
            metrics,
            shutdown,
            tasks,
        )
        .await?;
        Ok(Origins {
            config: config.clone(),
            members,
            http: http.clone(),
            replicas,
        })
    }

    /// The origins owning `digest`: healthy ones first, otherwise most preferred first.
    pub fn owners(&self, digest: &Digest) -> Vec<Origin> {
        let snapshot = self.members.snapshot();
        let owners = rendezvous::owners(digest, snapshot.members(), self.replicas);
        snapshot
            .healthy_first(owners)
            .into_iter()
            .filter_map(|http| {
                let addr = self.config.peer_of(http)?;
                let id = match PeerId::parse(&addr) {
                    Ok(id) => id,
                    // An IPv6 answer cannot be a peer id (`[`, `]`); such an origin is skipped.
                    Err(error) => {
                        tracing::warn!(origin = %http, peer = %addr, %error, "origin's peer address is not a valid peer id; skipped");
                        return None;
                    }
                };
                Some(Origin {
                    client: OriginClient::new(self.http.clone(), http),
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
