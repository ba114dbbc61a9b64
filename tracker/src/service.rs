//! The gRPC `Tracker` service: parses requests into domain types, records announces in the peer
//! store, answers with the handout policy's pick, and serves metainfo from the cache.

use std::sync::Arc;

use shoal_core::{Digest, Metainfo, Name, PeerId};
use shoal_proto::v1::tracker_server::Tracker;
use shoal_proto::v1::{
    AnnounceRequest, AnnounceResponse, MetainfoRequest, MetainfoResponse, PeerInfo,
};
use tonic::{Request, Response, Status};

use crate::error::TrackerError;
use crate::handout::handout;
use crate::metainfo::MetainfoCache;
use crate::metrics::{MetainfoResult, TrackerMetrics};
use crate::origins::Origins;
use crate::peers::{PeerRecord, PeerStore};

/// Longest peer address accepted: a DNS name (253) plus a port.
const MAX_ADDR_LEN: usize = 260;

pub struct TrackerService {
    pub store: Arc<dyn PeerStore>,
    pub origins: Arc<Origins>,
    pub metainfo: MetainfoCache,
    pub handout_limit: usize,
    pub interval_ms: u32,
    pub metrics: TrackerMetrics,
}

#[tonic::async_trait]
impl Tracker for TrackerService {
    async fn announce(
        &self,
        request: Request<AnnounceRequest>,
    ) -> Result<Response<AnnounceResponse>, Status> {
        let request = request.into_inner();
        let digest = parse_digest(&request.digest)?;
        parse_namespace(&request.namespace)?;
        let peer = parse_peer(request.peer)?;

        let swarm = self
            .store
            .announce(&digest, &peer)
            .await
            .map_err(TrackerError::from)?;
        self.metrics.announced(swarm.len());
        let origins = self
            .origins
            .owners(&digest)
            .into_iter()
            .map(|origin| origin.peer.clone())
            .collect();
        let chosen = handout(
            &peer.id,
            &peer.addr,
            origins,
            swarm,
            self.handout_limit,
            &mut rand::rng(),
        );
        let peers = chosen
            .into_iter()
            .map(|h| PeerInfo {
                peer_id: h.peer.id.to_string(),
                addr: h.peer.addr,
                origin: h.origin,
                complete: h.peer.complete,
            })
            .collect();
        Ok(Response::new(AnnounceResponse {
            peers,
            interval_ms: self.interval_ms,
        }))
    }

    async fn get_metainfo(
        &self,
        request: Request<MetainfoRequest>,
    ) -> Result<Response<MetainfoResponse>, Status> {
        let request = request.into_inner();
        let parsed = parse_digest(&request.digest)
            .and_then(|digest| Ok((digest, parse_namespace(&request.namespace)?)));
        let (digest, namespace) = parsed.inspect_err(|_| {
            self.metrics.metainfo(MetainfoResult::Invalid);
        })?;
        let metainfo = self
            .metainfo
            .get(digest, namespace)
            .await
            .map_err(TrackerError::from)?;
        Ok(Response::new(to_proto(&metainfo)))
    }
}

fn to_proto(metainfo: &Metainfo) -> MetainfoResponse {
    MetainfoResponse {
        digest: metainfo.digest().to_string(),
        length: metainfo.length(),
        piece_length: metainfo.piece_length(),
        piece_hashes: (0..metainfo.piece_count())
            .filter_map(|i| metainfo.piece_hash(i))
            .map(|hash| hash.as_bytes().to_vec())
            .collect(),
    }
}

fn parse_digest(digest: &str) -> Result<Digest, TrackerError> {
    Digest::parse(digest).map_err(|e| TrackerError::invalid("digest", e))
}

/// An empty namespace means none.
fn parse_namespace(namespace: &str) -> Result<Option<Name>, TrackerError> {
    if namespace.is_empty() {
        return Ok(None);
    }
    Name::parse(namespace)
        .map(Some)
        .map_err(|e| TrackerError::invalid("namespace", e))
}

fn parse_peer(peer: Option<PeerInfo>) -> Result<PeerRecord, TrackerError> {
    let peer = peer.ok_or_else(|| TrackerError::invalid("peer", "is required"))?;
    let id = PeerId::parse(&peer.peer_id).map_err(|e| TrackerError::invalid("peer.peer_id", e))?;
    check_addr(&peer.addr).map_err(|reason| TrackerError::invalid("peer.addr", reason))?;
    // `origin` is ignored: only the configured origins are handed out as origins, so a peer
    // cannot make itself every downloader's seeder of last resort.
    Ok(PeerRecord {
        id,
        addr: peer.addr,
        complete: peer.complete,
    })
}

/// A `host:port` other peers can dial: a non-empty host without spaces and a non-zero port.
fn check_addr(addr: &str) -> Result<(), String> {
    let shown = || addr.chars().take(64).collect::<String>();
    if addr.len() > MAX_ADDR_LEN {
        return Err(format!("longer than {MAX_ADDR_LEN} bytes"));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(format!("{:?} is not host:port", shown()));
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{:?} has no valid host", shown()));
    }
    match port.parse::<u16>() {
        Ok(port) if port != 0 => Ok(()),
        _ => Err(format!("{:?} has no valid port", shown())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses_must_be_dialable_host_ports() {
        for good in ["127.0.0.1:16001", "agent-3.example:1", "[::1]:16001"] {
            assert!(check_addr(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "host",
            ":16001",
            "host:0",
            "host:http",
            "ho st:1",
            "h:99999",
        ] {
            assert!(check_addr(bad).is_err(), "{bad}");
        }
        assert!(check_addr(&format!("{}:1", "a".repeat(300))).is_err());
    }

    #[test]
    fn announces_need_a_peer_with_a_valid_id() {
        assert!(parse_peer(None).is_err());
        let peer = |id: &str| PeerInfo {
            peer_id: id.into(),
            addr: "127.0.0.1:16001".into(),
            origin: true,
            complete: false,
        };
        assert!(parse_peer(Some(peer("bad id"))).is_err());
        let record = parse_peer(Some(peer("agent-1"))).expect("valid");
        assert_eq!(record.id.as_str(), "agent-1");
    }
}
