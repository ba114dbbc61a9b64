//! Piece bookkeeping for one download: which pieces we have, how many connected peers hold each
//! missing piece (its rarity), which pieces are in flight at which peers, and the pick order:
//! rarest first with a seeded random tie-break beside a few pieces just past the prefix (for a
//! reader streaming the blob), or sequential for a lone downloader.
//!
//! Costs: availability changes and requests are O(1) (`pickable.rs`); a pick walks the
//! unrequested pieces in order only until it finds pieces the peer holds, or walks the peer's
//! bitfield when that is cheaper, so no event costs O(pieces × peers).

use std::collections::{BTreeSet, HashMap};

use rand::{Rng, RngExt};
use shoal_core::Bitfield;

use super::peers::{Peer, Slot};
use super::pickable::Pickable;

/// Peers a missing piece is asked of at once in endgame. Every idle holder asking for the last
/// pieces split the downloader's link between copies of the same bytes and spent the senders'
/// upload, which the rest of the swarm needed, on copies that were cancelled: on the 12-agent
/// bed, agents served 394 MiB (22 %) more than agents received.
pub(super) const ENDGAME_COPIES: usize = 2;

/// Missing pieces just past the downloaded prefix that a swarm download keeps asked for,
/// whatever their rarity: a reader streaming the blob (the runtime pulling through the agent)
/// gets bytes while the download runs instead of nearly all of them once the last rare piece
/// lands. On the 12-agent bed, with rarest-first alone, the 12 clients wrote their layers after
/// the transfer, with the machine's CPU full for 7 s (p50 1.47× of S/B); with 4 of these pieces
/// asked at once, 1.36×; with all 16, 1.29×. The simulator's 1,000 agents barely notice (p99
/// 1.375× against 1.364×): in a crowd, 16 is a small share of the requests in flight.
pub(super) const STREAM_AHEAD: usize = 16;

/// Requests for a missing piece that timed out at agents after which it is taken from an origin,
/// however many connected agents announce it. Agents that accept requests and never answer (hung
/// nodes whose sessions still stand) are swapped for the next such agent after each timeout, so
/// the piece would always look held. Failures that come back at once (an agent that left) do not
/// count: such agents are dropped within moments and the origin rule sees they are gone, while
/// counting them sent pieces to the origins one request at a time in the simulator's heavy
/// churn (1,000 agents, half leaving mid-download: p99 3.6× of S/B against 1.36×).
const STALL_TIMEOUTS: u8 = 2;

/// Order of unrequested pieces (the order [`Pickable`] keeps): fewest agent holders first, then a
/// per-download random rank so agents that see the same rarities still spread their requests over
/// different pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    avail: u32,
    /// The piece's place in the random rank order ([`Pickable::place`]).
    place: u32,
    piece: u32,
}

/// Which unrequested piece to pick first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Order {
    /// Fewest agent holders first, random among equals: spreads a swarm's pieces.
    RarestFirst,
    /// Lowest index first: a lone downloader, whose pieces nobody else is waiting for.
    Sequential,
}

pub(super) struct Pieces {
    have: Bitfield,
    /// Connected agents (not origins) holding each piece and not avoided for it.
    avail: Vec<u32>,
    /// Missing pieces not requested from anyone, in pick order.
    pickable: Pickable,
    /// Missing pieces requested from at least one peer, and from which.
    inflight: HashMap<u32, Vec<Slot>>,
    /// Missing pieces that no connected agent holds (only an origin can serve them now).
    agentless: u32,
    /// Requests for each piece that timed out at agents (saturating).
    agent_timeouts: Vec<u8>,
    /// Missing pieces that timed out at agents [`STALL_TIMEOUTS`] times: origins serve them.
    stalled: BTreeSet<u32>,
    /// Requests gone stale (`hedge.rs`), by piece and slot: a piece none of whose requests is
    /// fresh may be asked of another holder as well.
    stale: BTreeSet<(u32, Slot)>,
}

impl Pieces {
    pub(super) fn new(have: Bitfield, rng: &mut impl Rng) -> Pieces {
        let len = have.len();
        let rank: Vec<u32> = (0..len).map(|_| rng.random()).collect();
        let mut pickable = Pickable::new(&rank);
        for piece in have.zeros() {
            pickable.insert(piece, 0);
        }
        Pieces {
            agentless: len - have.count(),
            have,
            avail: vec![0; len as usize],
            pickable,
            inflight: HashMap::new(),
            agent_timeouts: vec![0; len as usize],
            stalled: BTreeSet::new(),
            stale: BTreeSet::new(),
        }
    }

    pub(super) fn have(&self) -> &Bitfield {
        &self.have
    }

    pub(super) fn contains(&self, piece: u32) -> bool {
        piece < self.have.len()
    }

    pub(super) fn is_missing(&self, piece: u32) -> bool {
        self.contains(piece) && !self.have.get(piece)
    }

    /// Pieces not yet done.
    pub(super) fn missing(&self) -> u32 {
        self.have.len() - self.have.count()
    }

    /// Connected agents holding `piece` (and not avoided for it).
    pub(super) fn agent_holders(&self, piece: u32) -> u32 {
        self.avail.get(piece as usize).copied().unwrap_or(0)
    }

    /// Whether some peer is fetching `piece`.
    pub(super) fn is_in_flight(&self, piece: u32) -> bool {
        self.inflight.contains_key(&piece)
    }

    pub(super) fn agentless(&self) -> u32 {
        self.agentless
    }

    /// A request for `piece` at an agent timed out.
    pub(super) fn timed_out_at_agent(&mut self, piece: u32) {
        let Some(timeouts) = self.agent_timeouts.get_mut(piece as usize) else {
            return;
        };
        *timeouts = timeouts.saturating_add(1);
        if *timeouts >= STALL_TIMEOUTS && !self.have.get(piece) {
            self.stalled.insert(piece);
        }
    }

    /// The request for `piece` at `slot` went stale; true when it was not already.
    pub(super) fn went_stale(&mut self, piece: u32, slot: Slot) -> bool {
        self.inflight.get(&piece).is_some_and(|s| s.contains(&slot))
            && self.stale.insert((piece, slot))
    }

    /// The stale requests for `piece`.
    fn stale_of(&self, piece: u32) -> impl Iterator<Item = &(u32, Slot)> {
        self.stale.range((piece, 0)..=(piece, Slot::MAX))
    }

    /// Whether every request for `piece` in flight went stale.
    fn all_stale(&self, piece: u32, slots: &[Slot]) -> bool {
        slots.len() == self.stale_of(piece).count()
    }

    /// Missing pieces that keep timing out at agents, lowest first.
    pub(super) fn stalled(&self) -> &BTreeSet<u32> {
        &self.stalled
    }

    /// Whether an origin may be asked for `piece` while agents serve: no connected agent holds
    /// it, or it keeps timing out at those that do.
    fn for_origins(&self, piece: u32) -> bool {
        self.avail[piece as usize] == 0 || self.stalled.contains(&piece)
    }

    fn key(&self, piece: u32) -> Key {
        Key {
            avail: self.avail[piece as usize],
            place: self.pickable.place(piece),
            piece,
        }
    }

    /// An agent now holds `piece` (connected with it, announced it, or is trusted with it again).
    pub(super) fn add_agent_holder(&mut self, piece: u32) {
        self.change_avail(piece, |avail| avail + 1);
    }

    /// An agent no longer counts as holding `piece` (disconnected, or avoided for it).
    pub(super) fn remove_agent_holder(&mut self, piece: u32) {
        self.change_avail(piece, |avail| avail.saturating_sub(1));
    }

    fn change_avail(&mut self, piece: u32, change: impl Fn(u32) -> u32) {
        let old = self.avail[piece as usize];
        let new = change(old);
        self.avail[piece as usize] = new;
        if self.have.get(piece) {
            return;
        }
        match (old, new) {
            (0, 1..) => self.agentless -= 1,
            (1.., 0) => self.agentless += 1,
            _ => {}
        }
        if self.pickable.remove(piece, old) {
            self.pickable.insert(piece, new);
        }
    }

    /// `piece` was requested from the peer in `slot`.
    pub(super) fn request(&mut self, piece: u32, slot: Slot) {
        self.pickable.remove(piece, self.avail[piece as usize]);
        self.inflight.entry(piece).or_default().push(slot);
    }

    /// The request for `piece` at `slot` ended without the piece; when no other peer is fetching
    /// it, it becomes pickable again.
    pub(super) fn unrequest(&mut self, piece: u32, slot: Slot) {
        let Some(slots) = self.inflight.get_mut(&piece) else {
            return;
        };
        slots.retain(|&s| s != slot);
        self.stale.remove(&(piece, slot));
        if slots.is_empty() {
            self.inflight.remove(&piece);
            if !self.have.get(piece) {
                self.pickable.insert(piece, self.avail[piece as usize]);
            }
        }
    }

    /// Marks `piece` done; returns the slots that still have a request for it in flight (endgame
    /// duplicates to cancel, including the deliverer's own entry).
    pub(super) fn complete(&mut self, piece: u32) -> Vec<Slot> {
        if !self.have.set(piece) {
            return Vec::new();
        }
        let avail = self.avail[piece as usize];
        self.pickable.remove(piece, avail);
        self.stalled.remove(&piece);
        let stale: Vec<(u32, Slot)> = self.stale_of(piece).copied().collect();
        for request in stale {
            self.stale.remove(&request);
        }
        if avail == 0 {
            self.agentless -= 1;
        }
        self.inflight.remove(&piece).unwrap_or_default()
    }

    /// Up to `want` unrequested pieces that `peer` holds, in `order`. With `agentless_only`
    /// (an origin while agents can serve), only pieces no connected agent holds or that keep
    /// timing out at agents (the walk of the ordered set leaves those to [`Self::pick_stalled`]).
    pub(super) fn pick(
        &self,
        peer: &Peer,
        want: usize,
        agentless_only: bool,
        order: Order,
    ) -> Vec<u32> {
        if want == 0 || peer.useful == 0 {
            return Vec::new();
        }
        if order == Order::Sequential {
            // Only in-flight pieces (a few per peer) are skipped before the first pick.
            return self
                .have
                .zeros()
                .filter(|&piece| !self.is_in_flight(piece) && peer.holds(piece))
                .filter(|&piece| !agentless_only || self.for_origins(piece))
                .take(want)
                .collect();
        }
        // A peer holding few pieces is cheaper to walk than the ordered set, which might have to
        // be scanned to its end before finding the few pieces it holds.
        if (peer.bitfield.count() as usize) < self.pickable.len() / 8 {
            let mut keys: Vec<Key> = peer
                .bitfield
                .ones()
                .filter(|&piece| peer.holds(piece) && !self.have.get(piece))
                .filter(|&piece| !self.is_in_flight(piece))
                .map(|piece| self.key(piece))
                .filter(|key| !agentless_only || self.for_origins(key.piece))
                .collect();
            keys.sort_unstable();
            return keys.into_iter().take(want).map(|key| key.piece).collect();
        }
        self.pickable
            .iter()
            .take_while(|&(avail, _)| !agentless_only || avail == 0)
            .filter(|&(_, piece)| peer.holds(piece))
            .take(want)
            .map(|(_, piece)| piece)
            .collect()
    }

    /// Up to `want` pieces that `peer` holds and is not fetching, all of whose requests went
    /// stale, lowest first: one fresh request at a time, however many holders hung. With
    /// `agentless_only`, as [`Self::pick`].
    pub(super) fn pick_hedged(
        &self,
        peer: &Peer,
        slot: Slot,
        want: usize,
        agentless_only: bool,
    ) -> Vec<u32> {
        let mut picks: Vec<u32> = Vec::new();
        for &(piece, _) in &self.stale {
            if picks.len() == want {
                break;
            }
            if picks.last() == Some(&piece)
                || !peer.holds(piece)
                || (agentless_only && !self.for_origins(piece))
            {
                continue;
            }
            if self
                .inflight
                .get(&piece)
                .is_some_and(|slots| !slots.contains(&slot) && self.all_stale(piece, slots))
            {
                picks.push(piece);
            }
        }
        picks
    }

    /// Up to `want` stalled pieces that `peer` holds and nobody is fetching, lowest first.
    pub(super) fn pick_stalled(&self, peer: &Peer, want: usize) -> Vec<u32> {
        self.stalled
            .iter()
            .copied()
            .filter(|&piece| !self.is_in_flight(piece) && peer.holds(piece))
            .take(want)
            .collect()
    }

    /// Up to `want` of the first [`STREAM_AHEAD`] missing pieces that `peer` holds and nobody
    /// is fetching, lowest first.
    pub(super) fn pick_stream(&self, peer: &Peer, want: usize) -> Vec<u32> {
        self.have
            .zeros()
            .take(STREAM_AHEAD)
            .filter(|&piece| !self.is_in_flight(piece) && peer.holds(piece))
            .take(want)
            .collect()
    }

    /// Endgame: up to `want` pieces already in flight at other peers that `peer` holds and is
    /// not fetching itself, least-duplicated first, none at more than [`ENDGAME_COPIES`] peers.
    /// Only called when few pieces are missing, so the in-flight map is small.
    pub(super) fn pick_duplicates(
        &self,
        peer: &Peer,
        slot: Slot,
        want: usize,
        agentless_only: bool,
    ) -> Vec<u32> {
        if want == 0 {
            return Vec::new();
        }
        let mut candidates: Vec<(usize, u32, u32)> = self
            .inflight
            .iter()
            .filter(|(piece, slots)| {
                peer.holds(**piece) && slots.len() < ENDGAME_COPIES && !slots.contains(&slot)
            })
            .filter(|(piece, _)| !agentless_only || self.for_origins(**piece))
            .map(|(&piece, slots)| (slots.len(), self.pickable.place(piece), piece))
            .collect();
        candidates.sort_unstable();
        candidates
            .into_iter()
            .take(want)
            .map(|(_, _, piece)| piece)
            .collect()
    }
}
