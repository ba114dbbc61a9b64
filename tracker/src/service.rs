//! The gRPC `Tracker` service: parses requests into domain types, holds announces to their rate
//! limits, records them in the peer store, answers with the handout policy's pick, and serves
//! metainfo from the cache.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::ConnectInfo;
use shoal_core::{Digest, Metainfo, Name, PeerId};
use shoal_proto::v1::tracker_server::Tracker;
use shoal_proto::v1::{
    AnnounceRequest, AnnounceResponse, MetainfoRequest, MetainfoResponse, PeerInfo,
};
use tonic::{Request, Response, Status};

use crate::addr;
use crate::error::TrackerError;
use crate::handout::handout;
use crate::limits::AnnounceLimiter;
use crate::metainfo::MetainfoCache;
use crate::metrics::{MetainfoResult, TrackerMetrics};
use crate::origins::Origins;
use crate::peers::{Admission, PeerRecord, PeerStore};
use crate::view::{Board, Progress};

pub struct TrackerService {
    pub store: Arc<dyn PeerStore>,
    pub limiter: Arc<AnnounceLimiter>,
    pub origins: Arc<Origins>,
    pub metainfo: Arc<MetainfoCache>,
    pub board: Arc<Board>,
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
        let from = source_ip(&request);
        let Announce {
            digest,
            namespace,
            peer,
            progress,
        } = parse_announce(request.into_inner())?;
        self.limiter.check(&peer.id, from).map_err(|limited| {
            self.metrics.limited(limited.by);
            TrackerError::RateLimited(limited)
        })?;

        let origins: Vec<PeerRecord> = self
            .origins
            .owners(&digest)
            .into_iter()
            .map(|origin| origin.peer)
            .collect();
        let is_origin = origins
            .iter()
            .any(|origin| origin.id == peer.id && origin.addr == peer.addr);
        // Room for the caller and the origins among the members sampled: the handout skips
        // them.
        let sample = self.handout_limit + origins.len() + 1;
        let announced = self
            .store
            .announce(&digest, &peer, is_origin, sample)
            .await
            .map_err(TrackerError::from)?;
        self.metrics
            .announced(announced.swarm_size, announced.admission, announced.records);
        // The view shows what the store keeps, so it is held to the same limits.
        if announced.admission == Admission::Recorded {
            self.board.announce(digest, namespace, &peer, progress);
        }
        let chosen = handout(
            &peer.id,
            &peer.addr,
            origins,
            announced.sample,
            self.handout_limit,
            &mut rand::rng(),
        );
        let peers = chosen
            .into_iter()
            .map(|h| PeerInfo {
                peer_id: h.peer.id.as_str().to_owned(),
                addr: h.peer.addr,
                origin: h.origin,
                complete: h.peer.complete,
            })
            .collect();
        Ok(Response::new(AnnounceResponse {
            peers,
            interval_ms: self.interval_ms,
            swarm_size: u32::try_from(announced.swarm_size).unwrap_or(u32::MAX),
        }))
    }

    async fn get_metainfo(
        &self,
        request: Request<MetainfoRequest>,
    ) -> Result<Response<MetainfoResponse>, Status> {
        self.limiter
            .check_address(source_ip(&request))
            .map_err(|limited| {
                self.metrics.metainfo(MetainfoResult::Limited);
                TrackerError::RateLimited(limited)
            })?;
        let (digest, namespace) =
            parse_metainfo_request(&request.into_inner()).inspect_err(|_| {
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

/// The client's IP address: from the connection info the HTTP server attaches (or tonic's own
/// server, in tests that use it); `None` when neither is there.
fn source_ip<T>(request: &Request<T>) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
        .or_else(|| request.remote_addr().map(|addr| addr.ip()))
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

/// An announce as domain types.
pub(crate) struct Announce {
    pub digest: Digest,
    pub namespace: Option<Name>,
    pub peer: PeerRecord,
    pub progress: Option<Progress>,
}

/// Every announce passes here before it reaches the rate limiter and the peer store.
pub(crate) fn parse_announce(request: AnnounceRequest) -> Result<Announce, TrackerError> {
    Ok(Announce {
        digest: parse_digest(&request.digest)?,
        namespace: parse_namespace(&request.namespace)?,
        peer: parse_peer(request.peer)?,
        progress: request.progress.map(Progress::parse).transpose()?,
    })
}

/// A metainfo request's digest and namespace.
pub(crate) fn parse_metainfo_request(
    request: &MetainfoRequest,
) -> Result<(Digest, Option<Name>), TrackerError> {
    Ok((
        parse_digest(&request.digest)?,
        parse_namespace(&request.namespace)?,
    ))
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
    addr::check(&peer.addr).map_err(|reason| TrackerError::invalid("peer.addr", reason))?;
    // `origin` is ignored: only the configured origins are handed out as origins, so a peer
    // cannot make itself every downloader's seeder of last resort.
    Ok(PeerRecord {
        id,
        addr: peer.addr,
        complete: peer.complete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announces_need_a_peer_with_a_valid_id() {
        assert!(parse_peer(None).is_err());
        let peer = |id: &str| PeerInfo {
            peer_id: id.into(),
            addr: "127.0.0.1:16001".into(),
            origin: true,
            complete: false,
        };
        for bad in ["bad id", "", "tab\tid", "slash/id", "ünï", &"a".repeat(65)] {
            let error = parse_peer(Some(peer(bad))).expect_err(bad).to_string();
            assert!(error.starts_with("peer.peer_id: "), "{error}");
        }
        let mut bad_addr = peer("agent-1");
        bad_addr.addr = "0.0.0.0:16001".into();
        let error = parse_peer(Some(bad_addr))
            .expect_err("bad addr")
            .to_string();
        assert!(error.starts_with("peer.addr: "), "{error}");
        let record = parse_peer(Some(peer("agent-1"))).expect("valid");
        assert_eq!(record.id.as_str(), "agent-1");
    }
}
