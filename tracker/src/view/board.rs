//! The swarm board: what the tracker's swarm view shows, kept up to date by each announce at a
//! cost proportional to that announce (one peer's entry and its swarm's running totals), so a
//! page request never walks every peer's pieces. Peers silent for `peer_ttl` are pruned with the
//! rate-limit buckets; a swarm goes with its last peer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use shoal_core::{Bitfield, Digest, Name, PeerId, lock};
use tokio::sync::watch;

use super::progress::Progress;
use crate::peers::{PeerRecord, RecordLimits};

/// One peer in one swarm, as of its last announce.
#[derive(Debug, Clone)]
pub struct PeerEntry {
    pub addr: String,
    pub complete: bool,
    /// Pieces held while downloading; `None` when complete or when the peer sends no progress.
    pub have: Option<Bitfield>,
    /// Pieces held (the whole blob when complete and the piece count is known).
    pub pieces: u32,
    pub in_flight: Vec<u32>,
    pub bytes_from_origins: u64,
    pub bytes_from_peers: u64,
    /// Piece bytes per second received between its last two announces.
    pub rate: u64,
    pub last_announce: Instant,
    /// When its piece count last grew (or it joined).
    pub last_progress: Instant,
}

impl PeerEntry {
    fn received(&self) -> u64 {
        self.bytes_from_origins
            .saturating_add(self.bytes_from_peers)
    }
}

/// One blob's swarm with running totals over its peers.
#[derive(Debug, Clone)]
pub struct Swarm {
    pub namespace: Option<Name>,
    pub started: SystemTime,
    /// From the first progress announced; later progress with another count is ignored.
    pub piece_count: Option<u32>,
    pub peers: HashMap<PeerId, PeerEntry>,
    /// Sums over `peers`, updated by difference at each announce.
    pub pieces_held: u64,
    pub complete: usize,
    pub bytes_from_origins: u64,
    pub bytes_from_peers: u64,
}

impl Swarm {
    fn new(namespace: Option<Name>) -> Swarm {
        Swarm {
            namespace,
            started: SystemTime::now(),
            piece_count: None,
            peers: HashMap::new(),
            pieces_held: 0,
            complete: 0,
            bytes_from_origins: 0,
            bytes_from_peers: 0,
        }
    }

    fn add_totals(&mut self, peer: &PeerEntry) {
        self.pieces_held += u64::from(peer.pieces);
        self.complete += usize::from(peer.complete);
        self.bytes_from_origins += peer.bytes_from_origins;
        self.bytes_from_peers += peer.bytes_from_peers;
    }

    fn remove_totals(&mut self, peer: &PeerEntry) {
        self.pieces_held -= u64::from(peer.pieces);
        self.complete -= usize::from(peer.complete);
        self.bytes_from_origins -= peer.bytes_from_origins;
        self.bytes_from_peers -= peer.bytes_from_peers;
    }

    /// Whether `peer` is downloading and has verified no piece for `stall_after`.
    pub fn is_stalled(peer: &PeerEntry, now: Instant, stall_after: Duration) -> bool {
        !peer.complete && now.saturating_duration_since(peer.last_progress) >= stall_after
    }
}

#[derive(Debug, Default)]
struct Swarms {
    by_digest: HashMap<Digest, Swarm>,
    /// Peer entries over every swarm, held to the store's `total` limit.
    entries: usize,
}

/// The swarms announced to this tracker. Readers take a copy of what they show under the lock.
pub struct Board {
    swarms: Mutex<Swarms>,
    limits: RecordLimits,
    /// Bumped at every change; the event stream waits on it.
    version: watch::Sender<u64>,
}

impl Board {
    pub fn new(limits: RecordLimits) -> Board {
        Board {
            swarms: Mutex::default(),
            limits,
            version: watch::Sender::new(0),
        }
    }

    /// Records an announce the peer store admitted.
    pub fn announce(
        &self,
        digest: Digest,
        namespace: Option<Name>,
        peer: &PeerRecord,
        progress: Option<Progress>,
    ) {
        let now = Instant::now();
        let mut guard = lock(&self.swarms);
        let swarms = &mut *guard;
        let members = swarms
            .by_digest
            .get(&digest)
            .map(|swarm| (swarm.peers.contains_key(&peer.id), swarm.peers.len()));
        let is_new = match members {
            Some((true, _)) => false,
            Some((false, len)) => {
                if len >= self.limits.per_swarm || swarms.entries >= self.limits.total {
                    return;
                }
                true
            }
            None => {
                if swarms.entries >= self.limits.total {
                    return;
                }
                true
            }
        };
        swarms.entries += usize::from(is_new);
        let swarm = swarms
            .by_digest
            .entry(digest)
            .or_insert_with(|| Swarm::new(namespace.clone()));
        if swarm.namespace.is_none() {
            swarm.namespace = namespace;
        }
        let progress = progress.filter(|p| {
            *swarm.piece_count.get_or_insert(p.piece_count.get()) == p.piece_count.get()
        });
        let previous = swarm.peers.remove(&peer.id);
        if let Some(previous) = &previous {
            swarm.remove_totals(previous);
        }
        let entry = next_entry(peer, progress, swarm.piece_count, previous, now);
        swarm.add_totals(&entry);
        swarm.peers.insert(peer.id.clone(), entry);
        drop(guard);
        self.version.send_modify(|v| *v += 1);
    }

    /// Forgets peers that have not announced for `ttl`, and swarms left empty. One swarm per
    /// hold of the lock, yielding to the runtime between swarms: a pass over every peer under
    /// one hold kept announces waiting (each announce takes the lock) for a tenth of a second
    /// at 150,000 peers, and so did 50 swarms of 15,000 pruned back to back on a runtime worker
    /// (docs/BENCHMARKS.md, the tracker under a fleet's announces).
    pub async fn prune(&self, ttl: Duration) {
        let now = Instant::now();
        let digests: Vec<Digest> = lock(&self.swarms).by_digest.keys().copied().collect();
        let mut removed = 0;
        for digest in digests {
            tokio::task::yield_now().await;
            let mut guard = lock(&self.swarms);
            let swarms = &mut *guard;
            let Some(swarm) = swarms.by_digest.get_mut(&digest) else {
                continue;
            };
            let expired: Vec<PeerEntry> = swarm
                .peers
                .extract_if(|_, p| now.saturating_duration_since(p.last_announce) >= ttl)
                .map(|(_, peer)| peer)
                .collect();
            for peer in &expired {
                swarm.remove_totals(peer);
            }
            if swarm.peers.is_empty() {
                swarms.by_digest.remove(&digest);
            }
            swarms.entries -= expired.len();
            removed += expired.len();
        }
        if removed > 0 {
            self.version.send_modify(|v| *v += 1);
        }
    }

    /// Calls `read` with the swarms under the lock; `read` copies out what it needs.
    pub fn read<T>(&self, read: impl FnOnce(&HashMap<Digest, Swarm>) -> T) -> T {
        read(&lock(&self.swarms).by_digest)
    }

    /// A receiver that sees a new value after every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

/// The peer's entry after this announce: progress replaces what it said before, the rate is the
/// bytes received since its previous announce over the time between them.
fn next_entry(
    peer: &PeerRecord,
    progress: Option<Progress>,
    piece_count: Option<u32>,
    previous: Option<PeerEntry>,
    now: Instant,
) -> PeerEntry {
    let (have, in_flight, from_origins, from_peers) = match progress {
        Some(p) => (
            p.have,
            p.in_flight,
            p.bytes_from_origins,
            p.bytes_from_peers,
        ),
        // Without progress, keep the byte counts last reported (a seeder's announce after its
        // download carries them; an older agent's never does).
        None => (
            None,
            Vec::new(),
            previous.as_ref().map_or(0, |p| p.bytes_from_origins),
            previous.as_ref().map_or(0, |p| p.bytes_from_peers),
        ),
    };
    let pieces = if peer.complete {
        piece_count.unwrap_or(0)
    } else {
        have.as_ref().map_or(0, Bitfield::count)
    };
    let received = from_origins.saturating_add(from_peers);
    let (rate, last_progress) = match &previous {
        Some(previous) => {
            let elapsed = now.saturating_duration_since(previous.last_announce);
            let delta = received.saturating_sub(previous.received());
            let rate = if peer.complete || elapsed.is_zero() {
                0
            } else {
                // Bytes per second; u128 so a long gap or a huge delta cannot overflow.
                u64::try_from(u128::from(delta) * 1000 / elapsed.as_millis().max(1))
                    .unwrap_or(u64::MAX)
            };
            let progressed = pieces > previous.pieces || (peer.complete && !previous.complete);
            (
                rate,
                if progressed {
                    now
                } else {
                    previous.last_progress
                },
            )
        }
        None => (0, now),
    };
    PeerEntry {
        addr: peer.addr.clone(),
        complete: peer.complete,
        have: if peer.complete { None } else { have },
        pieces,
        in_flight: if peer.complete { Vec::new() } else { in_flight },
        bytes_from_origins: from_origins,
        bytes_from_peers: from_peers,
        rate,
        last_announce: now,
        last_progress,
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn peer(id: &str, complete: bool) -> PeerRecord {
        PeerRecord {
            id: PeerId::parse(id).expect("peer id"),
            addr: "127.0.0.1:16001".into(),
            complete,
        }
    }

    fn progress(count: u32, held: &[u32], origins: u64, peers: u64) -> Progress {
        let mut have = Bitfield::new(count);
        for &i in held {
            have.set(i);
        }
        Progress {
            piece_count: NonZeroU32::new(count).expect("positive"),
            have: Some(have),
            in_flight: Vec::new(),
            bytes_from_origins: origins,
            bytes_from_peers: peers,
        }
    }

    /// `id` announces `digest` as downloading, with `progress`.
    fn downloading(board: &Board, digest: Digest, id: &str, progress: Progress) {
        board.announce(digest, None, &peer(id, false), Some(progress));
    }

    fn limits(per_swarm: usize, total: usize) -> RecordLimits {
        RecordLimits { per_swarm, total }
    }

    #[test]
    fn totals_follow_each_peers_latest_announce() {
        let board = Board::new(limits(10, 100));
        let digest = Digest::of(b"blob");
        downloading(&board, digest, "a", progress(8, &[0, 1], 10, 0));
        downloading(&board, digest, "b", progress(8, &[2], 0, 5));
        downloading(&board, digest, "a", progress(8, &[0, 1, 3], 10, 7));
        // A seeder's announce carries no bits: it holds every piece and keeps its byte counts.
        board.announce(digest, None, &peer("b", true), None);
        board.read(|swarms| {
            let swarm = &swarms[&digest];
            assert_eq!(swarm.pieces_held, 3 + 8);
            assert_eq!(swarm.complete, 1);
            assert_eq!(swarm.bytes_from_origins, 10);
            assert_eq!(swarm.bytes_from_peers, 12);
            let b = &swarm.peers[&PeerId::parse("b").expect("id")];
            assert!(b.complete && b.have.is_none());
            assert_eq!(b.bytes_from_peers, 5);
        });
    }

    #[test]
    fn a_downloading_peer_is_stalled_once_its_pieces_stop_growing() {
        let board = Board::new(limits(10, 100));
        let digest = Digest::of(b"blob");
        let stall_after = Duration::from_secs(30);
        downloading(&board, digest, "a", progress(8, &[0], 1, 0));
        board.announce(digest, None, &peer("b", true), None);
        let stalled = |id: &str, at: Instant| {
            board.read(|swarms| {
                let peer = &swarms[&digest].peers[&PeerId::parse(id).expect("id")];
                Swarm::is_stalled(peer, at, stall_after)
            })
        };
        let later = Instant::now() + stall_after;
        assert!(!stalled("a", Instant::now()));
        assert!(stalled("a", later), "no new piece for stall_after");
        assert!(!stalled("b", later), "a complete peer never stalls");
        // Announcing the same pieces again is no progress; one more piece is.
        downloading(&board, digest, "a", progress(8, &[0], 1, 0));
        assert!(stalled("a", later));
        downloading(&board, digest, "a", progress(8, &[0, 1], 2, 0));
        assert!(!stalled("a", Instant::now() + stall_after / 2));
    }

    #[test]
    fn progress_with_another_piece_count_is_ignored() {
        let board = Board::new(limits(10, 100));
        let digest = Digest::of(b"blob");
        downloading(&board, digest, "a", progress(8, &[0], 1, 0));
        downloading(&board, digest, "b", progress(9, &[0, 1], 1, 0));
        board.read(|swarms| {
            let swarm = &swarms[&digest];
            assert_eq!(swarm.piece_count, Some(8));
            assert_eq!(swarm.pieces_held, 1);
            assert_eq!(swarm.bytes_from_origins, 1);
        });
    }

    #[tokio::test]
    async fn limits_hold_and_pruning_forgets_silent_peers() {
        let board = Board::new(limits(2, 3));
        let one = Digest::of(b"one");
        let two = Digest::of(b"two");
        for id in ["a", "b", "c"] {
            board.announce(one, None, &peer(id, false), None);
        }
        board.read(|swarms| assert_eq!(swarms[&one].peers.len(), 2));
        board.announce(two, None, &peer("a", false), None);
        board.announce(two, None, &peer("b", false), None);
        board.read(|swarms| {
            assert_eq!(swarms[&two].peers.len(), 1, "the total limit is 3");
        });
        let version = *board.subscribe().borrow();
        board.prune(Duration::ZERO).await;
        board.read(|swarms| assert!(swarms.is_empty()));
        assert!(*board.subscribe().borrow() > version);
        board.announce(two, None, &peer("c", false), None);
        board.read(|swarms| assert_eq!(swarms[&two].peers.len(), 1));
    }
}
