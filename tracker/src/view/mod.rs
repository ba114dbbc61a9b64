//! The swarm view: which blobs are moving, who holds which pieces and where their bytes came
//! from, from what agents announce (`board`). Served on the tracker's listener as JSON
//! (`GET /v1/swarms`, `GET /v1/swarms/{digest}`), as server-sent events of the same documents
//! (`GET /v1/swarms/events`) and as a page (`GET /ui`) that draws them (`http`). The shapes are
//! documented in `docs/swarm-view.md`; `shoal swarm` reads them.

mod board;
mod http;
mod progress;

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use shoal_core::{Digest, PeerId};

pub use board::Board;
use board::{PeerEntry, Swarm};
pub use http::router;
pub use progress::Progress;

use crate::metainfo::MetainfoCache;
use crate::origins::Origins;

/// Rows one page holds unless the request says otherwise, and at most: a page of 500 rows of
/// 4,096 pieces is about 1 MB of JSON, still drawn in well under a second.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;

/// What the view reads: the board, the owners of each digest and the cached metainfo's sizes.
pub struct View {
    pub board: Arc<Board>,
    pub origins: Arc<Origins>,
    pub metainfo: Arc<MetainfoCache>,
    /// A downloading peer whose piece count has not grown for this long is shown stalled.
    pub stall_after: Duration,
}

/// Which rows of a list, as asked (checked by [`Page::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Page {
    pub offset: usize,
    pub limit: usize,
}

impl Page {
    pub fn new(offset: Option<usize>, limit: Option<usize>) -> Result<Page, String> {
        let limit = limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(format!("limit must be 1 to {MAX_LIMIT}, got {limit}"));
        }
        Ok(Page {
            offset: offset.unwrap_or(0),
            limit,
        })
    }
}

/// How a swarm's peers are ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sort {
    /// Downloading peers first, the lowest rate (then fewest pieces) first; complete ones last.
    #[default]
    Slowest,
    /// By peer id.
    Peer,
}

/// `GET /v1/swarms`.
#[derive(Debug, Serialize)]
pub struct SwarmList {
    pub total: usize,
    #[serde(flatten)]
    pub page: Page,
    pub swarms: Vec<SwarmSummary>,
}

#[derive(Debug, Serialize)]
pub struct SwarmSummary {
    pub digest: String,
    /// The repository the announces named, where any did.
    pub repository: Option<String>,
    /// The blob's length where this tracker holds its metainfo.
    pub size: Option<u64>,
    pub piece_count: Option<u32>,
    pub peer_counts: PeerCounts,
    /// Pieces held over pieces wanted by the swarm's peers (origins left out), 0 to 1.
    pub progress: f64,
    pub bytes_from_origins: u64,
    pub bytes_from_peers: u64,
    pub started_at_unix_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct PeerCounts {
    pub origins: usize,
    pub complete: usize,
    pub downloading: usize,
    /// Only counted for one swarm's page (`null` in the list, which never walks the peers).
    pub stalled: Option<usize>,
}

/// `GET /v1/swarms/{digest}`.
#[derive(Debug, Serialize)]
pub struct SwarmDetail {
    #[serde(flatten)]
    pub summary: SwarmSummary,
    pub stall_after_ms: u64,
    pub origins: Vec<OriginRow>,
    /// Peers in the swarm (origins left out); `peers` holds one page of them.
    pub total: usize,
    #[serde(flatten)]
    pub page: Page,
    pub sort: Sort,
    pub peers: Vec<PeerRow>,
}

#[derive(Debug, Serialize)]
pub struct OriginRow {
    pub id: String,
    pub addr: String,
}

#[derive(Debug, Serialize)]
pub struct PeerRow {
    pub id: String,
    pub addr: String,
    pub complete: bool,
    pub stalled: bool,
    pub pieces: u32,
    /// Pieces held as hex (bit i of byte i/8, most significant bit first); `null` when complete
    /// or when the peer sends no progress.
    pub have: Option<String>,
    pub in_flight: Vec<u32>,
    pub rate_bytes_per_second: u64,
    pub bytes_from_origins: u64,
    pub bytes_from_peers: u64,
    pub since_announce_ms: u64,
    pub since_progress_ms: u64,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl View {
    /// Every swarm, least complete first, one page of them.
    pub fn list(&self, page: Page) -> SwarmList {
        let mut swarms = self.board.read(|swarms| {
            swarms
                .iter()
                .map(|(digest, swarm)| self.summary(digest, swarm, None))
                .collect::<Vec<_>>()
        });
        swarms.sort_by(|a, b| {
            a.progress
                .total_cmp(&b.progress)
                .then_with(|| a.digest.cmp(&b.digest))
        });
        SwarmList {
            total: swarms.len(),
            page,
            swarms: swarms
                .into_iter()
                .skip(page.offset)
                .take(page.limit)
                .collect(),
        }
    }

    /// One swarm with one page of its peers; `None` when no peer announces it.
    pub fn detail(&self, digest: &Digest, page: Page, sort: Sort) -> Option<SwarmDetail> {
        let now = Instant::now();
        let (summary, total, peers) = self.board.read(|swarms| {
            let swarm = swarms.get(digest)?;
            // Only ids and sort keys are copied for the whole swarm; bits only for the page.
            let mut order: Vec<(&PeerId, &PeerEntry)> = swarm.peers.iter().collect();
            match sort {
                Sort::Slowest => order.sort_by(|(a_id, a), (b_id, b)| {
                    (a.complete, a.rate, a.pieces, a_id).cmp(&(b.complete, b.rate, b.pieces, b_id))
                }),
                Sort::Peer => order.sort_by_key(|(id, _)| *id),
            }
            let stalled = order
                .iter()
                .filter(|(_, p)| Swarm::is_stalled(p, now, self.stall_after))
                .count();
            let rows: Vec<PeerRow> = order
                .iter()
                .skip(page.offset)
                .take(page.limit)
                .map(|(id, p)| self.row(id, p, now))
                .collect();
            Some((
                self.summary(digest, swarm, Some(stalled)),
                swarm.peers.len(),
                rows,
            ))
        })?;
        Some(SwarmDetail {
            summary,
            stall_after_ms: millis(self.stall_after),
            origins: self
                .origins
                .owners(digest)
                .into_iter()
                .map(|origin| OriginRow {
                    id: origin.peer.id.to_string(),
                    addr: origin.peer.addr,
                })
                .collect(),
            total,
            page,
            sort,
            peers,
        })
    }

    fn summary(&self, digest: &Digest, swarm: &Swarm, stalled: Option<usize>) -> SwarmSummary {
        let members = swarm.peers.len();
        let progress = match swarm.piece_count {
            Some(count) if members > 0 => {
                swarm.pieces_held as f64 / (u64::from(count) * members as u64) as f64
            }
            _ if members > 0 => swarm.complete as f64 / members as f64,
            _ => 0.0,
        };
        SwarmSummary {
            digest: digest.to_string(),
            repository: swarm.namespace.as_ref().map(ToString::to_string),
            size: self.metainfo.cached_length(digest),
            piece_count: swarm.piece_count,
            peer_counts: PeerCounts {
                origins: self.origins.owners(digest).len(),
                complete: swarm.complete,
                downloading: members - swarm.complete,
                stalled,
            },
            progress,
            bytes_from_origins: swarm.bytes_from_origins,
            bytes_from_peers: swarm.bytes_from_peers,
            started_at_unix_ms: swarm.started.duration_since(UNIX_EPOCH).map_or(0, millis),
        }
    }

    fn row(&self, id: &PeerId, peer: &PeerEntry, now: Instant) -> PeerRow {
        PeerRow {
            id: id.to_string(),
            addr: peer.addr.clone(),
            complete: peer.complete,
            stalled: Swarm::is_stalled(peer, now, self.stall_after),
            pieces: peer.pieces,
            have: peer.have.as_ref().map(|have| hex::encode(have.as_bytes())),
            in_flight: peer.in_flight.clone(),
            rate_bytes_per_second: peer.rate,
            bytes_from_origins: peer.bytes_from_origins,
            bytes_from_peers: peer.bytes_from_peers,
            since_announce_ms: millis(now.saturating_duration_since(peer.last_announce)),
            since_progress_ms: millis(now.saturating_duration_since(peer.last_progress)),
        }
    }
}
