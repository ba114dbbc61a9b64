//! The piece scheduler: a pure state machine deciding, for one blob download, which peers to
//! connect to and which piece to request from which peer. The async engine feeds it events
//! (tracker answers, connections, piece outcomes, ticks) with the current time and carries out
//! the actions it returns. No sockets, clocks or tokio here, so it is unit-tested and simulated
//! deterministically: all randomness comes from the seed.
//!
//! Policy: connect to discovered agents up to `max_peers`; origins are connected (beyond the
//! cap) only as the last resort — once no agent connection has been pending for less than a
//! short grace (a hung peer's handshake never holds it up) and either fewer than two connected
//! agents hold pieces we miss, or some missing piece is held by no connected agent or has timed
//! out at agents twice (hung agents swapped for each other past the cap would otherwise always
//! "hold" it; such a piece is asked of an origin first, of no agent while one would serve it).
//! Then every
//! origin the tracker handed out (the blob's owners) is connected, one attempt at a time: in a
//! crowd each owner sends only its share of the pieces (`crate::seeding`), so a downloader that
//! asks one owner waits for the rest of the pieces to come round through other agents. An
//! origin gets its full depth only while no agent is connected; beside any agent (a swarm, even
//! one where nobody holds anything yet) it gets one request at a time,
//! and while two or more agents are useful, only pieces no agent holds. Pieces are requested rarest first (seeded
//! random tie-break), up to each peer's depth (as many requests as cover a round trip at the
//! rate the peer delivers, at most `max_pipeline`; `depth.rs`), never twice except in endgame (at most
//! `endgame_pieces` missing), where idle peers duplicate in-flight requests (each piece at two
//! peers at most) and the losers are cancelled, or beside a stale request: one far older than
//! this download's requests take (`hedge.rs`) gets its peer no new request until it delivers
//! (or for a piece timeout) and out of the agents that keep the origins unused, and a piece all
//! of whose requests are stale is asked of another holder as well (a hung peer holds a download
//! up for seconds, not a piece timeout). A corrupt piece blacklists its sender; failures
//! and timeouts re-issue the piece elsewhere and `max_failures` in a row drop the peer. A peer whose upload slots are all taken
//! answers "busy": that is not a failure; the piece goes back to the pool at once (another
//! holder may take it) and the peer gets no requests for a jittered back-off that doubles with
//! each busy answer in a row. An origin's "elsewhere" answer (super-seeding) sends the piece back
//! to the pool and the origin is asked for another at once; past a few in a row, it rests as
//! after busy answers, for at most `elsewhere_wait`. In a small swarm with one origin (the tracker
//! counts no more members than a third of `max_peers`, so everyone is connected to everyone),
//! the origin is asked for the lowest pieces no agent holds, and an "elsewhere" answer that
//! names a piece the origin would send instead gets that piece asked for at once: the origin
//! then sends the blob about in order and each download's contiguous prefix, which a client
//! streaming the blob reads, grows as the pieces spread (docs/BENCHMARKS.md, "the order origins
//! send in"). At the cap, each tick swaps one connected agent that has nothing for us for a
//! waiting candidate. An agent we could not connect to is
//! shunned for a while.
//!
//! Cost per event: a delivered piece costs O(max_peers + max_pipeline × log pieces); Tick, failures
//! and departures refill every peer, O(max_peers × max_pipeline × log pieces) when peers hold most
//! pieces; a connect or departure adds O(pieces the peer holds). A peer with free slots whose
//! pieces are all in flight elsewhere can cost a scan of the unrequested pieces
//! (O(pieces / 8) for sparse peers). Pieces that timed out at agents twice (none in a healthy
//! swarm) add O(those pieces × peers) to an agent's fill, and stale requests (none in a healthy
//! swarm either) O(those requests) to every fill. Nothing is O(pieces × peers).

mod depth;
mod hedge;
mod peers;
mod pickable;
mod pieces;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod swarm_tests;
#[cfg(test)]
mod tests;

use std::time::Duration;

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use shoal_core::{Bitfield, PeerId};
use thiserror::Error;

use hedge::RequestTimes;
use peers::{Candidates, Peer, Peers, Slot};
#[cfg(test)]
use pieces::ENDGAME_COPIES;
use pieces::{Order, Pieces};

/// Requests in flight at an origin while we are connected to any agent. Agents pulling at once
/// each filling a full pipeline at the origin put `pipeline` × N pieces in its queue before any
/// of them can serve another: the first round then takes `pipeline` times longer, and past a
/// few thousand agents outlasts `piece_timeout` (docs/BENCHMARKS.md, the piece-timeout cliff).
/// An origin alone still gets its full depth.
const ORIGIN_PIPELINE_BESIDE_AGENTS: usize = 1;
/// The largest swarm, as a share (numerator, denominator) of `max_peers`, whose downloads ask
/// origins for pieces in order (a third: 21 members with the default 64 connections).
const ORDERED_SWARM: (usize, usize) = (1, 3);

/// How long a pending agent connection may hold up the decision to connect an origin (checked
/// at the engine's 250 ms ticks, so the first tick after a connect already decides). A healthy
/// peer answers a handshake within milliseconds; one that accepts TCP and never answers (a hung
/// node) would otherwise keep the origin unused until the handshake times out, and a tracker
/// that keeps handing out such peers would keep it unused for ever. Every blob of a pull pays
/// it once when hung peers are around (`shoal-bench-tarpit`, docs/BENCHMARKS.md). A pending
/// origin connection holds up the next origin's for as long, no longer.
const CONNECT_GRACE: Duration = Duration::from_millis(250);
/// An agent we could not connect to is not tried again for this long, even when the tracker
/// hands it out again: hung peers re-announced by stale records must not take every connection
/// slot round after round.
const UNREACHABLE_SHUN: Duration = Duration::from_secs(15);
/// Longest back-off after busy answers in a row: a flash crowd of thousands retrying a busy
/// origin costs it a few thousand cheap refusals per second at most.
const MAX_BUSY_BACKOFF: Duration = Duration::from_secs(4);
/// "Elsewhere" answers in a row an origin gets asked for other pieces at once: its share
/// policy refuses pieces outside its share, so a few refusals are how we find one it serves.
/// Past these, it rests for `busy_backoff`, doubling per refusal up to `elsewhere_wait`, so a
/// crowd whose every piece the origin sent recently does not hammer it with requests (at 2,600
/// agents, about 20,000 refusals a second per origin without the rest).
const ELSEWHERE_FREE: u32 = 3;

/// Tuning of one download. YAML durations are human-readable (`15s`, `1m`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchedulerConfig {
    /// Connections per blob (the owning origins may add theirs beyond it, as the last resort).
    pub max_peers: usize,
    /// Most piece requests in flight per peer. Each peer gets as many as cover a request's
    /// round trip at the rate it delivers (two until measured), within this bound.
    pub max_pipeline: usize,
    /// A request older than this is failed, cancelled and re-issued.
    #[serde(with = "humantime_serde")]
    pub piece_timeout: Duration,
    /// When at most this many pieces are missing, idle peers duplicate in-flight requests.
    pub endgame_pieces: usize,
    /// How long a peer that sent a corrupt piece is shunned.
    #[serde(with = "humantime_serde")]
    pub blacklist: Duration,
    /// Consecutive failed or timed-out requests before a peer is dropped.
    pub max_failures: u32,
    /// Back-off after a peer's first busy answer (jittered ±50 %, doubling per busy answer in
    /// a row up to 4 s).
    #[serde(with = "humantime_serde")]
    pub busy_backoff: Duration,
    /// After an origin answered "get it elsewhere" for a piece, how long it is not asked for
    /// that piece (agents may get it meanwhile); then, if still no connected agent holds it,
    /// the origin is asked again and the request insists.
    #[serde(with = "humantime_serde")]
    pub elsewhere_wait: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            // Wide enough that an agent always sees pieces it lacks and its requests spread
            // over many seeders' upload slots: in the swarm simulation (docs/BENCHMARKS.md) 8
            // peers of 4 requests left p99 at 2.8× S/B for 1,000 agents, 48 of 2 bring it to
            // 1.6× and cut origin egress by 4×; 64 keep more receivers at their link's share
            // and take 2-3 % off the median at 1,000-15,000 agents.
            max_peers: 64,
            // The depth adapts per peer (`depth.rs`): a crowded seeder gets one request, a
            // lone fast one as many as its round trip needs. Eight cover a round trip of seven
            // pieces' time (4 MiB pieces at 1 GB/s: 28 ms), and stay well inside a peer's 40
            // upload slots.
            max_pipeline: 8,
            // A piece of up to 16 MiB at a slow-but-healthy 2 MiB/s takes ~8 s; 15 s only fails
            // peers that are stuck, not ones that are busy.
            piece_timeout: Duration::from_secs(15),
            // Duplicating the last few pieces removes the slow-peer tail; more would waste
            // bandwidth on pieces that are arriving anyway.
            endgame_pieces: 4,
            // Long enough that a broken peer is not retried within a typical image pull, short
            // enough that a peer fixed (or a transient fault) rejoins the swarm soon.
            blacklist: Duration::from_secs(60),
            // One failure can be a blip (a restart, a dropped stream); three in a row means the
            // peer cannot serve us.
            max_failures: 3,
            // About one tick: a busy origin is asked again soon, and the jitter spreads a crowd's
            // retries over the next ticks.
            busy_backoff: Duration::from_millis(250),
            // Long enough for a piece an origin just sent to spread to a few percent of a
            // crowd, so that one of our connections likely holds it: in the swarm simulation
            // (docs/BENCHMARKS.md, origin super-seeding) 1-2 s let a thousand agents insist and
            // the origins send 2 × S, 3 s brings it to 1.4 × S.
            elsewhere_wait: Duration::from_secs(3),
        }
    }
}

/// Why a scheduler configuration cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SchedulerConfigError {
    #[error("scheduler.{field} must be at least 1")]
    Zero { field: &'static str },
}

impl SchedulerConfig {
    /// Rejects settings under which a download could never make progress.
    pub fn validate(&self) -> Result<(), SchedulerConfigError> {
        let zero = [
            ("max_peers", self.max_peers == 0),
            ("max_pipeline", self.max_pipeline == 0),
            ("piece_timeout", self.piece_timeout.is_zero()),
            ("max_failures", self.max_failures == 0),
            ("busy_backoff", self.busy_backoff.is_zero()),
            ("elsewhere_wait", self.elsewhere_wait.is_zero()),
        ];
        match zero.into_iter().find(|&(_, is_zero)| is_zero) {
            Some((field, _)) => Err(SchedulerConfigError::Zero { field }),
            None => Ok(()),
        }
    }
}

/// A peer the tracker handed out for the blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCandidate {
    pub id: PeerId,
    pub origin: bool,
}

/// What happened, as reported by the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A tracker announce result.
    Discovered(Vec<PeerCandidate>),
    /// The tracker counts this many members in the blob's swarm (the caller included).
    SwarmSize {
        members: u32,
    },
    /// A connection we asked for is up; the peer's handshake bitfield.
    Connected {
        peer: PeerId,
        bitfield: Bitfield,
    },
    ConnectFailed {
        peer: PeerId,
    },
    Have {
        peer: PeerId,
        piece: u32,
    },
    Disconnected {
        peer: PeerId,
    },
    /// A piece arrived, was verified and written. `rtt` is how long its request took to be
    /// answered (the response's headers, before any of its bytes): the round trip plus the
    /// peer's time to start serving, which sets how many requests keep the peer busy.
    PieceDone {
        peer: PeerId,
        piece: u32,
        rtt: Duration,
        /// The peer answered our requests in the order they were asked, each piece after the
        /// one before (the piece stream), not interleaved as HTTP/2 streams are.
        in_order: bool,
    },
    /// A piece failed its hash check: the peer is blacklisted.
    PieceCorrupt {
        peer: PeerId,
        piece: u32,
    },
    /// A request failed: transport error, or the peer lacks the piece.
    PieceFailed {
        peer: PeerId,
        piece: u32,
    },
    /// The peer refused the request at once because all its upload slots are taken.
    PieceBusy {
        peer: PeerId,
        piece: u32,
    },
    /// The peer (an origin serving a crowd, `crate::seeding`) refused the request because
    /// other peers hold or will soon hold the piece: get it from them. Not a failure and no
    /// back-off; the peer is asked for other pieces at once.
    PieceElsewhere {
        peer: PeerId,
        piece: u32,
        /// A piece the origin would send now instead (`crate::seeding`).
        instead: Option<u32>,
    },
    /// Time passed: check timeouts, expire blacklist entries.
    Tick,
}

/// What the engine should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Connect {
        peer: PeerId,
    },
    Request {
        peer: PeerId,
        piece: u32,
        /// The peer refused this piece before ("elsewhere") and no connected agent got it
        /// since: the peer must serve it if it has a free slot.
        insist: bool,
    },
    /// Abort a request: another peer delivered the piece (endgame), or it timed out.
    Cancel {
        peer: PeerId,
        piece: u32,
    },
    /// A request went stale (`hedge.rs`): it stays in flight, but its peer gets no new request
    /// until it delivers, and its piece may be asked of another holder. Only reported.
    Stale {
        peer: PeerId,
        piece: u32,
    },
    Disconnect {
        peer: PeerId,
    },
    /// Disconnect the peer and refuse it until `until_ms`.
    Blacklist {
        peer: PeerId,
        until_ms: u64,
    },
    /// Every piece is done (emitted once, followed by a Disconnect per connected peer).
    Complete,
}

/// The download state machine of one blob.
pub struct Scheduler {
    config: SchedulerConfig,
    pieces: Pieces,
    peers: Peers,
    candidates: Candidates,
    rng: Xoshiro256PlusPlus,
    /// The largest swarm the tracker reported (0: none reported yet).
    swarm_members: u32,
    /// Complete has been emitted; later events only close connections.
    finished: bool,
    /// How long this download's requests take, to tell a stale one.
    request_times: RequestTimes,
}

/// A rest of `base` doubled `streak` times, at most `cap`, scaled by `jitter` thousandths
/// (500..1500 spreads a crowd's retries).
fn backoff_ms(base: u64, streak: u32, cap: u64, jitter: u64) -> u64 {
    base.saturating_mul(1 << streak.min(16)).min(cap) * jitter / 1000
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Scheduler {
    /// A download of `piece_count` pieces of which `have` are already verified on disk. A
    /// `have` of another length is treated as empty. When nothing is missing, the first event
    /// handled returns Complete.
    pub fn new(piece_count: u32, have: Bitfield, config: SchedulerConfig, seed: u64) -> Scheduler {
        let have = if have.len() == piece_count {
            have
        } else {
            Bitfield::new(piece_count)
        };
        // Xoshiro256++ explicitly, not SmallRng, so a seed gives the same run on every platform.
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        Scheduler {
            pieces: Pieces::new(have, &mut rng),
            config,
            peers: Peers::default(),
            candidates: Candidates::default(),
            rng,
            swarm_members: 0,
            finished: false,
            request_times: RequestTimes::default(),
        }
    }

    pub fn have(&self) -> &Bitfield {
        self.pieces.have()
    }

    pub fn is_complete(&self) -> bool {
        self.pieces.have().is_complete()
    }

    pub fn is_blacklisted(&self, peer: &PeerId, now_ms: u64) -> bool {
        self.candidates.is_blacklisted(peer, now_ms)
    }

    /// Applies one event at time `now_ms` (any monotonic millisecond clock) and returns what to
    /// do, in order.
    pub fn handle(&mut self, now_ms: u64, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if self.finished {
            // Connections that come up after the end are closed at once.
            if let Event::Connected { peer, .. } = event {
                out.push(Action::Disconnect { peer });
            }
            return out;
        }
        match event {
            Event::Discovered(batch) => self.candidates.discover(batch, now_ms, &mut self.rng),
            Event::SwarmSize { members } => {
                // Only ever from small to large: a download that started asking origins at
                // random and switched to their order mid-way stalled (3 owners, 12 simulated
                // agents: 2.95× of S/B), so the order is fixed by the first count, which comes
                // before any connection.
                self.swarm_members = self.swarm_members.max(members);
            }
            Event::Connected { peer, bitfield } => {
                self.on_connected(now_ms, peer, bitfield, &mut out)
            }
            Event::ConnectFailed { peer } => self.on_connect_failed(now_ms, peer),
            Event::Have { peer, piece } => self.on_have(now_ms, &peer, piece, &mut out),
            Event::Disconnected { peer } => {
                if let Some(slot) = self.peers.slot(&peer) {
                    self.drop_peer(slot);
                }
                self.candidates.forget(&peer);
                self.fill_all(now_ms, &mut out);
            }
            Event::PieceDone {
                peer,
                piece,
                rtt,
                in_order,
            } => self.on_piece_done(now_ms, &peer, piece, (rtt, in_order), &mut out),
            Event::PieceCorrupt { peer, .. } => self.on_corrupt(now_ms, peer, &mut out),
            Event::PieceFailed { peer, piece } => {
                if let Some(slot) = self.peers.slot(&peer) {
                    self.fail_request(now_ms, slot, piece, &mut out);
                }
                self.fill_all(now_ms, &mut out);
            }
            Event::PieceBusy { peer, piece } => self.on_busy(now_ms, &peer, piece, &mut out),
            Event::PieceElsewhere {
                peer,
                piece,
                instead,
            } => self.on_elsewhere(now_ms, &peer, piece, instead, &mut out),
            Event::Tick => self.on_tick(now_ms, &mut out),
        }
        if self.is_complete() {
            self.finish(&mut out);
        } else {
            self.connect(now_ms, &mut out);
        }
        out
    }

    /// A connection attempt failed. An origin may be asked again at the next tracker answer;
    /// an agent is shunned for a while (no Blacklist action: there is no session to close).
    fn on_connect_failed(&mut self, now_ms: u64, peer: PeerId) {
        if self.peers.slot(&peer).is_some() {
            return;
        }
        if self.candidates.is_origin(&peer) == Some(false) {
            let until = now_ms.saturating_add(millis(UNREACHABLE_SHUN));
            self.candidates.blacklist(peer, until);
        } else {
            self.candidates.forget(&peer);
        }
    }

    /// Whether an agent (or origin) connection started less than [`CONNECT_GRACE`] ago is
    /// still pending.
    fn connection_fresh(&mut self, origin: bool, now_ms: u64) -> bool {
        self.candidates
            .pending_within(origin, now_ms, millis(CONNECT_GRACE))
    }

    fn on_connected(&mut self, now_ms: u64, id: PeerId, bitfield: Bitfield, out: &mut Vec<Action>) {
        if self.peers.slot(&id).is_some() {
            // A repeated report of a connection we already use.
            return;
        }
        let Some(origin) = self.candidates.connected(&id) else {
            // Not a connection we asked for (or one we gave up on meanwhile).
            out.push(Action::Disconnect { peer: id });
            return;
        };
        if bitfield.len() != self.pieces.have().len() {
            self.candidates.forget(&id);
            out.push(Action::Disconnect { peer: id });
            return;
        }
        let mut useful = 0;
        for piece in bitfield.ones() {
            if !origin {
                self.pieces.add_agent_holder(piece);
            }
            useful += u32::from(self.pieces.is_missing(piece));
        }
        let slot = self.peers.insert(Peer {
            id,
            origin,
            bitfield,
            avoid: Default::default(),
            inflight: Vec::new(),
            failures: 0,
            busy_until: 0,
            busy_streak: 0,
            elsewhere_streak: 0,
            useful,
            depth: Default::default(),
            refused: Default::default(),
            snubbed: None,
        });
        self.fill(now_ms, slot, out);
    }

    fn on_have(&mut self, now_ms: u64, id: &PeerId, piece: u32, out: &mut Vec<Action>) {
        let Some(slot) = self.peers.slot(id) else {
            return;
        };
        if !self.pieces.contains(piece) || !self.peers.set_have(slot, piece) {
            return;
        }
        let Some(peer) = self.peers.get_mut(slot) else {
            return;
        };
        if peer.avoid.contains_key(&piece) {
            return;
        }
        if self.pieces.is_missing(piece) {
            peer.useful += 1;
        }
        if !peer.origin {
            self.pieces.add_agent_holder(piece);
        }
        self.fill(now_ms, slot, out);
    }

    fn on_piece_done(
        &mut self,
        now_ms: u64,
        id: &PeerId,
        piece: u32,
        (rtt, in_order): (Duration, bool),
        out: &mut Vec<Action>,
    ) {
        let deliverer = self.peers.slot(id);
        if let Some(peer) = deliverer.and_then(|slot| self.peers.get_mut(slot)) {
            if let Some(&(_, sent)) = peer.inflight.iter().find(|&&(p, _)| p == piece) {
                self.request_times.record(now_ms.saturating_sub(sent));
            }
            if peer.take_request(now_ms, piece) {
                peer.depth.delivered(now_ms, rtt, in_order);
            }
            peer.snubbed = None;
            peer.failures = 0;
            peer.busy_streak = 0;
            peer.elsewhere_streak = 0;
        }
        if !self.pieces.is_missing(piece) {
            // A late duplicate, or an index we never asked for: nothing changes but the
            // deliverer's free pipeline slot.
            if let Some(slot) = deliverer {
                self.fill(now_ms, slot, out);
            }
            return;
        }
        for slot in self.pieces.complete(piece) {
            if Some(slot) == deliverer {
                continue;
            }
            if let Some(peer) = self.peers.get_mut(slot)
                && peer.take_request(now_ms, piece)
            {
                out.push(Action::Cancel {
                    peer: peer.id.clone(),
                    piece,
                });
            }
        }
        for peer in self.peers.iter_mut() {
            if peer.holds(piece) {
                peer.useful -= 1;
            }
        }
        // Outside endgame only the deliverer gained a free slot (other changes, such as an
        // origin no longer limited to agentless pieces, are picked up by the next Tick); in
        // endgame every idle peer may now duplicate a remaining piece.
        if self.in_endgame() {
            self.fill_all(now_ms, out);
        } else if let Some(slot) = deliverer {
            self.fill(now_ms, slot, out);
        }
    }

    fn on_corrupt(&mut self, now_ms: u64, id: PeerId, out: &mut Vec<Action>) {
        if self.candidates.is_blacklisted(&id, now_ms) {
            return;
        }
        if let Some(slot) = self.peers.slot(&id) {
            self.drop_peer(slot);
        }
        let until_ms = now_ms.saturating_add(millis(self.config.blacklist));
        self.candidates.blacklist(id.clone(), until_ms);
        out.push(Action::Blacklist { peer: id, until_ms });
        self.fill_all(now_ms, out);
    }

    /// The peer is busy: the piece goes back to the pool for any other holder (an origin busy
    /// for everyone is the normal state of a flash crowd, so no failure is counted), and the
    /// peer rests for a jittered back-off so a crowd's retries do not arrive together.
    fn on_busy(&mut self, now_ms: u64, id: &PeerId, piece: u32, out: &mut Vec<Action>) {
        let Some(slot) = self.peers.slot(id) else {
            return;
        };
        let base = millis(self.config.busy_backoff);
        let jitter = self.rng.random_range(500..1500);
        let Some(peer) = self.peers.get_mut(slot) else {
            return;
        };
        if !peer.take_request(now_ms, piece) {
            return;
        }
        let backoff = backoff_ms(base, peer.busy_streak, millis(MAX_BUSY_BACKOFF), jitter);
        peer.busy_streak += 1;
        peer.busy_until = now_ms.saturating_add(backoff);
        self.pieces.unrequest(piece, slot);
        self.fill_all(now_ms, out);
    }

    /// The peer told us to get the piece elsewhere: the piece goes back to the pool, the peer is
    /// not asked for it for `elsewhere_wait` (agents holding it are asked instead, as they
    /// announce it), and the peer is refilled at once with other pieces, or, past
    /// [`ELSEWHERE_FREE`] refusals in a row, after a jittered rest. Once the wait is over, the
    /// next request for it to this peer insists unless a connected agent holds it by then. In a
    /// small swarm, a piece the peer names `instead` is asked of it at once when we still need
    /// it from an origin; that is not a refusal and does not count toward a rest.
    fn on_elsewhere(
        &mut self,
        now_ms: u64,
        id: &PeerId,
        piece: u32,
        instead: Option<u32>,
        out: &mut Vec<Action>,
    ) {
        let Some(slot) = self.peers.slot(id) else {
            return;
        };
        let instead = instead.filter(|&other| self.takes_instead(slot, other));
        let base = millis(self.config.busy_backoff);
        let cap = millis(self.config.elsewhere_wait);
        let Some(peer) = self.peers.get_mut(slot) else {
            return;
        };
        if !peer.take_request(now_ms, piece) {
            return;
        }
        if instead.is_none() {
            peer.elsewhere_streak += 1;
            if let Some(past) = peer.elsewhere_streak.checked_sub(ELSEWHERE_FREE + 1) {
                let rest = backoff_ms(base, past, cap, self.rng.random_range(500..1500));
                peer.busy_until = peer.busy_until.max(now_ms.saturating_add(rest));
            }
        }
        if peer.holds(piece) {
            let until = now_ms.saturating_add(millis(self.config.elsewhere_wait));
            peer.avoid.insert(piece, until);
            peer.refused.insert(piece);
            if self.pieces.is_missing(piece) {
                peer.useful -= 1;
            }
            if !peer.origin {
                self.pieces.remove_agent_holder(piece);
            }
        }
        self.pieces.unrequest(piece, slot);
        if let Some(other) = instead {
            self.request_instead(now_ms, slot, other, out);
        }
        self.fill_all(now_ms, out);
    }

    /// Whether origins are asked for pieces in order: the swarm is small enough that everyone
    /// is connected to everyone ([`ORDERED_SWARM`] of `max_peers`), and one origin owns the
    /// blob. Beyond that, in the simulator, agents joining late and leaving mid-download made
    /// the ordered picks cost more than they gained (20 agents with one origin: origin egress
    /// 1.16 × S against 1.01; 40: p50 1.46× of S/B against 1.18×), and with several owners,
    /// each sending only its share, so did that churn (12 agents, 3 owners: 1.31× against
    /// 1.06×) (docs/BENCHMARKS.md, "the order origins send in").
    fn small_swarm(&self) -> bool {
        self.swarm_members > 0
            && self.swarm_members as usize * ORDERED_SWARM.1
                <= self.config.max_peers * ORDERED_SWARM.0
            && self.candidates.known_origins() == 1
    }

    /// Whether we ask the origin in `slot` for `piece`, which it offered instead of a refused
    /// one: in a small swarm, when nobody is fetching it and (in a crowd) no connected agent
    /// holds it, as for any piece we ask an origin for.
    fn takes_instead(&self, slot: Slot, piece: u32) -> bool {
        let Some(peer) = self.peers.get(slot) else {
            return false;
        };
        self.small_swarm()
            && peer.origin
            && peer.bitfield.get(piece)
            && self.pieces.is_missing(piece)
            && !self.pieces.is_in_flight(piece)
            && (!self.origins_serve_agentless_only() || self.pieces.agent_holders(piece) == 0)
    }

    /// Whether origins are asked only for pieces no connected agent holds: while two or more
    /// agents have pieces for us.
    fn origins_serve_agentless_only(&self) -> bool {
        self.peers.useful_agents_at_least(2)
    }

    /// Asks the peer in `slot` for the `piece` it offered (a refusal of it before no longer
    /// stands).
    fn request_instead(&mut self, now_ms: u64, slot: Slot, piece: u32, out: &mut Vec<Action>) {
        let Some(peer) = self.peers.get_mut(slot) else {
            return;
        };
        if peer.avoid.remove(&piece).is_some() {
            peer.useful += 1;
        }
        peer.refused.remove(&piece);
        peer.add_request(now_ms, piece);
        self.pieces.request(piece, slot);
        out.push(Action::Request {
            peer: peer.id.clone(),
            piece,
            insist: false,
        });
    }

    fn on_tick(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        self.candidates.expire_blacklist(now_ms);
        let timeout = millis(self.config.piece_timeout);
        for slot in self.peers.slots() {
            self.lift_avoids(now_ms, slot);
            let expired: Vec<u32> = self
                .peers
                .get(slot)
                .map(|peer| {
                    peer.inflight
                        .iter()
                        .filter(|&&(_, sent)| now_ms.saturating_sub(sent) >= timeout)
                        .map(|&(piece, _)| piece)
                        .collect()
                })
                .unwrap_or_default();
            for piece in expired {
                if let Some(peer) = self.peers.get(slot) {
                    out.push(Action::Cancel {
                        peer: peer.id.clone(),
                        piece,
                    });
                    if !peer.origin {
                        self.pieces.timed_out_at_agent(piece);
                    }
                }
                self.fail_request(now_ms, slot, piece, out);
            }
        }
        self.mark_stale(now_ms, out);
        self.rotate_useless(out);
        self.fill_all(now_ms, out);
    }

    /// Requests older than this download's requests usually take (`hedge.rs`): their peers
    /// get no new request until they deliver one or for a piece timeout (a peer that was only
    /// paused, and alone holds some pieces, is asked again), and their pieces may be asked of
    /// another holder as well.
    fn mark_stale(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let timeout = millis(self.config.piece_timeout);
        let stale_after = self.request_times.stale_after(timeout);
        for slot in self.peers.slots() {
            let Some(peer) = self.peers.get_mut(slot) else {
                continue;
            };
            if peer.snubbed.is_some_and(|until| now_ms >= until) {
                peer.snubbed = None;
            }
            let Some(stale_after) = stale_after else {
                continue;
            };
            for &(piece, sent) in &peer.inflight {
                if now_ms.saturating_sub(sent) >= stale_after && self.pieces.went_stale(piece, slot)
                {
                    let until = now_ms.saturating_add(timeout);
                    peer.snubbed = Some(peer.snubbed.map_or(until, |was| was.min(until)));
                    out.push(Action::Stale {
                        peer: peer.id.clone(),
                        piece,
                    });
                }
            }
        }
    }

    /// At the connection cap, swaps one connected agent that has nothing for us for a waiting
    /// candidate, so useless peers cannot hold every slot while the pieces we miss sit with
    /// peers we never connected to. One per tick bounds the churn when everyone is empty.
    fn rotate_useless(&mut self, out: &mut Vec<Action>) {
        let at_cap = self.peers.len() + self.candidates.connecting() >= self.config.max_peers;
        if !at_cap || !self.candidates.has_idle(false) {
            return;
        }
        if let Some(slot) = self.peers.idle_useless_agent()
            && let Some(peer) = self.peers.get(slot)
        {
            let id = peer.id.clone();
            self.drop_peer(slot);
            self.candidates.forget(&id);
            out.push(Action::Disconnect { peer: id });
        }
    }

    /// Gives a peer another chance at pieces it failed once their avoid period is over.
    fn lift_avoids(&mut self, now_ms: u64, slot: Slot) {
        let Some(peer) = self.peers.get_mut(slot) else {
            return;
        };
        let lifted: Vec<u32> = peer
            .avoid
            .iter()
            .filter(|&(_, &until)| now_ms >= until)
            .map(|(&piece, _)| piece)
            .collect();
        for piece in lifted {
            peer.avoid.remove(&piece);
            if self.pieces.is_missing(piece) {
                peer.useful += 1;
            }
            if !peer.origin {
                self.pieces.add_agent_holder(piece);
            }
        }
    }

    /// The request for `piece` at `slot` failed (error or timeout): the piece goes back to the
    /// pool, the peer is avoided for it for a while, and dropped after too many failures.
    fn fail_request(&mut self, now_ms: u64, slot: Slot, piece: u32, out: &mut Vec<Action>) {
        let Some(peer) = self.peers.get_mut(slot) else {
            return;
        };
        if !peer.take_request(now_ms, piece) {
            return;
        }
        peer.failures += 1;
        // Avoiding the piece at this peer for one timeout period sends the retry to another
        // holder (or, when no agent has it, to an origin), yet never strands the piece.
        if peer.holds(piece) {
            let until = now_ms.saturating_add(millis(self.config.piece_timeout));
            peer.avoid.insert(piece, until);
            if self.pieces.is_missing(piece) {
                peer.useful -= 1;
            }
            if !peer.origin {
                self.pieces.remove_agent_holder(piece);
            }
        }
        let dropped = (peer.failures >= self.config.max_failures).then(|| peer.id.clone());
        self.pieces.unrequest(piece, slot);
        if let Some(id) = dropped {
            self.drop_peer(slot);
            self.candidates.forget(&id);
            out.push(Action::Disconnect { peer: id });
        }
    }

    /// Removes a connected peer: its requests go back to the pool, its pieces stop counting.
    fn drop_peer(&mut self, slot: Slot) {
        let Some(peer) = self.peers.remove(slot) else {
            return;
        };
        for &(piece, _) in &peer.inflight {
            self.pieces.unrequest(piece, slot);
        }
        if !peer.origin {
            for piece in peer.bitfield.ones().filter(|&piece| peer.holds(piece)) {
                self.pieces.remove_agent_holder(piece);
            }
        }
    }

    fn in_endgame(&self) -> bool {
        self.pieces.missing() as usize <= self.config.endgame_pieces
    }

    fn fill_all(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        for slot in self.peers.slots() {
            self.fill(now_ms, slot, out);
        }
    }

    /// Fills the free pipeline slots of one peer.
    fn fill(&mut self, now_ms: u64, slot: Slot, out: &mut Vec<Action>) {
        let Some(peer) = self.peers.get(slot) else {
            return;
        };
        if now_ms < peer.busy_until || peer.snubbed.is_some() {
            return;
        }
        let origin = peer.origin;
        let beside_agents =
            self.peers.agents() > 0 || (origin && self.connection_fresh(false, now_ms));
        let Some(peer) = self.peers.get(slot) else {
            return;
        };
        let depth = if origin && beside_agents {
            ORIGIN_PIPELINE_BESIDE_AGENTS
        } else {
            peer.depth.target(self.config.max_pipeline)
        };
        let want = depth.saturating_sub(peer.inflight.len());
        if want == 0 {
            return;
        }
        let agentless_only = peer.origin && self.origins_serve_agentless_only();
        // With no other downloader connected, nobody gains from our pieces' diversity: take
        // them in order, so a reader streaming the blob (the runtime pulling through us) gets
        // bytes as they land instead of waiting behind random pieces.
        // In a small swarm, origins are asked for the lowest pieces: every member is (or will
        // be) connected to whoever gets them, so the origins' order becomes every download's.
        let order = if self.peers.any_incomplete_agent() && !(origin && self.small_swarm()) {
            Order::RarestFirst
        } else {
            Order::Sequential
        };
        // Pieces whose request went stale at another peer come first: that peer may never
        // answer. Pieces that keep timing out at agents go to an origin next, and agents are
        // not asked for them while a connected origin would be.
        let skip: Vec<u32> = if origin {
            Vec::new()
        } else {
            (self.pieces.stalled().iter().copied())
                .filter(|&piece| self.peers.origin_holds(piece))
                .collect()
        };
        let wanted = want + skip.len();
        let mut picks = (self.pieces).pick_hedged(peer, slot, wanted, agentless_only);
        if origin {
            picks.extend(self.pieces.pick_stalled(peer, want));
        } else if order == Order::RarestFirst {
            // Before rarest-first, the pieces right past the prefix for a streaming reader, from
            // agents only: in a crowd every download's window starts at the same pieces, and
            // asked of the origins they would send those first (1,000 simulated agents, 4
            // pieces ahead: p99 1.43× S/B, against 1.38× from agents only).
            picks.extend(self.pieces.pick_stream(peer, wanted));
        }
        picks.extend(self.pieces.pick(peer, wanted, agentless_only, order));
        let mut unique = Vec::with_capacity(want);
        for piece in picks {
            if unique.len() < want && !skip.contains(&piece) && !unique.contains(&piece) {
                unique.push(piece);
            }
        }
        let mut picks = unique;
        if picks.len() < want && self.in_endgame() {
            let more = want - picks.len();
            let duplicates = (self.pieces).pick_duplicates(
                peer,
                slot,
                more + skip.len() + picks.len(),
                agentless_only,
            );
            let duplicates: Vec<u32> = (duplicates.into_iter())
                .filter(|piece| !skip.contains(piece) && !picks.contains(piece))
                .take(more)
                .collect();
            picks.extend(duplicates);
        }
        let Some(peer) = self.peers.get_mut(slot) else {
            return;
        };
        for piece in picks {
            peer.add_request(now_ms, piece);
            // A piece this peer sent us elsewhere, that no connected agent got (or could send)
            // meanwhile.
            let insist = peer.refused.remove(&piece)
                && (self.pieces.agent_holders(piece) == 0
                    || self.pieces.stalled().contains(&piece));
            self.pieces.request(piece, slot);
            out.push(Action::Request {
                peer: peer.id.clone(),
                piece,
                insist,
            });
        }
    }

    /// Opens connections: agents up to `max_peers`, and the origins when agents cannot do it.
    fn connect(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        while self.peers.len() + self.candidates.connecting() < self.config.max_peers {
            let Some(peer) = self.candidates.next(false, now_ms) else {
                break;
            };
            out.push(Action::Connect { peer });
        }
        // Give fresh agent handshakes a moment before judging what agents can serve; then the
        // origins are the last resort, allowed beyond the cap so they can always unblock a
        // piece no connected agent holds, one at a time. Handshakes pending longer than the
        // grace do not count: a peer that accepts TCP and never answers (a hung agent, or a
        // hung owner among the origins) must not keep us from the others. With one owner
        // connected, 20 simulated agents and 3 owners finished at 1.38× of S/B (the
        // owners' shares came round late); with every owner, 1.06× (docs/BENCHMARKS.md).
        let origin_needed = (self.pieces.agentless() > 0
            || !self.pieces.stalled().is_empty()
            || !self.peers.useful_agents_at_least(2))
            && !self.connection_fresh(false, now_ms);
        if origin_needed
            && !self.connection_fresh(true, now_ms)
            && let Some(peer) = self.candidates.next(true, now_ms)
        {
            out.push(Action::Connect { peer });
        }
    }

    fn finish(&mut self, out: &mut Vec<Action>) {
        self.finished = true;
        out.push(Action::Complete);
        for slot in self.peers.slots() {
            if let Some(peer) = self.peers.remove(slot) {
                out.push(Action::Disconnect { peer: peer.id });
            }
        }
    }
}
