//! The origin cluster as the tracker sees it: each origin's HTTP client (for metainfo) and its
//! peer record (handed out as a seeder), and which origins own a digest.

use shoal_api::OriginClient;
use shoal_core::{Digest, PeerId, rendezvous};

use crate::config::OriginAddrs;
use crate::peers::PeerRecord;

/// One origin.
#[derive(Debug)]
pub struct Origin {
    /// Its configured HTTP address: what rendezvous hashing ranks, as in every other component.
    http: String,
    pub client: OriginClient,
    /// Its `Peer` service; the peer id is the address itself.
    pub peer: PeerRecord,
}

impl AsRef<[u8]> for Origin {
    fn as_ref(&self) -> &[u8] {
        self.http.as_bytes()
    }
}

/// Why the origin list cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("origins[{index}].peer {addr:?} is not a valid peer id: {source}")]
pub struct BadOriginPeer {
    index: usize,
    addr: String,
    source: shoal_core::PeerIdError,
}

#[derive(Debug)]
pub struct Origins {
    nodes: Vec<Origin>,
    replicas: usize,
}

impl Origins {
    pub fn new(
        http: &reqwest::Client,
        addrs: &[OriginAddrs],
        replicas: usize,
    ) -> Result<Self, BadOriginPeer> {
        let nodes = addrs
            .iter()
            .enumerate()
            .map(|(index, addrs)| {
                let id = PeerId::parse(&addrs.peer).map_err(|source| BadOriginPeer {
                    index,
                    addr: addrs.peer.clone(),
                    source,
                })?;
                Ok(Origin {
                    http: addrs.http.clone(),
                    client: OriginClient::new(http.clone(), &addrs.http),
                    peer: PeerRecord {
                        id,
                        addr: addrs.peer.clone(),
                        complete: true,
                    },
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Origins { nodes, replicas })
    }

    /// The origins owning `digest`, most preferred first.
    pub fn owners(&self, digest: &Digest) -> Vec<&Origin> {
        rendezvous::owners(digest, &self.nodes, self.replicas)
    }
}
