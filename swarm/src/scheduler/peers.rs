//! Peer bookkeeping for one download: the peers the tracker told us about and whether we are
//! connecting to them, the blacklist, and the per-peer state of connected peers (their bitfield,
//! requests in flight, pieces they failed, consecutive failures).

use std::collections::{HashMap, HashSet, VecDeque};

use rand::Rng;
use rand::seq::SliceRandom;
use shoal_core::{Bitfield, PeerId};

use super::PeerCandidate;
use super::depth::Depth;

/// Index of a connected peer in [`Peers`]; stable while the peer stays connected.
pub(super) type Slot = usize;

/// A connected peer.
pub(super) struct Peer {
    pub(super) id: PeerId,
    pub(super) origin: bool,
    pub(super) bitfield: Bitfield,
    /// Pieces this peer failed to deliver, with the time from which we may ask it again.
    pub(super) avoid: HashMap<u32, u64>,
    /// Pieces requested from this peer, with when each was sent.
    pub(super) inflight: Vec<(u32, u64)>,
    /// Failed or timed-out requests since its last delivered piece.
    pub(super) failures: u32,
    /// The peer answered "busy" (all its upload slots taken): no requests before this time.
    pub(super) busy_until: u64,
    /// Busy answers since its last delivered piece; each doubles the back-off.
    pub(super) busy_streak: u32,
    /// "Elsewhere" answers since its last delivered piece: past the first few, the peer rests.
    pub(super) elsewhere_streak: u32,
    /// Pieces it holds (and is not avoided for) that we are missing.
    pub(super) useful: u32,
    /// How many requests keep this peer busy.
    pub(super) depth: Depth,
    /// Pieces it told us to get elsewhere: asked of it again, the request insists.
    pub(super) refused: HashSet<u32>,
    /// A request of it went stale (`hedge.rs`): no new request until it delivers a piece or
    /// until this time.
    pub(super) snubbed: Option<u64>,
}

impl Peer {
    /// Whether we would ask this peer for `piece`.
    pub(super) fn holds(&self, piece: u32) -> bool {
        self.bitfield.get(piece) && !self.avoid.contains_key(&piece)
    }

    /// Records a request for `piece` sent at `now_ms`.
    pub(super) fn add_request(&mut self, now_ms: u64, piece: u32) {
        self.depth.sent(now_ms, self.inflight.len());
        self.inflight.push((piece, now_ms));
    }

    /// Forgets the request for `piece`, ended at `now_ms`; true when there was one.
    pub(super) fn take_request(&mut self, now_ms: u64, piece: u32) -> bool {
        let before = self.inflight.len();
        self.inflight.retain(|&(p, _)| p != piece);
        let taken = self.inflight.len() != before;
        if taken {
            self.depth.ended(now_ms, self.inflight.len());
        }
        taken
    }
}

/// Connected peers by slot.
#[derive(Default)]
pub(super) struct Peers {
    slots: Vec<Option<Peer>>,
    free: Vec<Slot>,
    index: HashMap<PeerId, Slot>,
    /// Connected agents that do not hold every piece yet (downloaders like us).
    incomplete_agents: usize,
    /// Connected origins.
    origins: usize,
}

fn is_incomplete_agent(peer: &Peer) -> bool {
    !peer.origin && !peer.bitfield.is_complete()
}

impl Peers {
    pub(super) fn insert(&mut self, peer: Peer) -> Slot {
        self.incomplete_agents += usize::from(is_incomplete_agent(&peer));
        self.origins += usize::from(peer.origin);
        let id = peer.id.clone();
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(peer);
                slot
            }
            None => {
                self.slots.push(Some(peer));
                self.slots.len() - 1
            }
        };
        self.index.insert(id, slot);
        slot
    }

    pub(super) fn remove(&mut self, slot: Slot) -> Option<Peer> {
        let peer = self.slots.get_mut(slot)?.take()?;
        self.incomplete_agents -= usize::from(is_incomplete_agent(&peer));
        self.origins -= usize::from(peer.origin);
        self.index.remove(&peer.id);
        self.free.push(slot);
        Some(peer)
    }

    pub(super) fn slot(&self, id: &PeerId) -> Option<Slot> {
        self.index.get(id).copied()
    }

    /// Records that the peer in `slot` now holds `piece`; false when it already did (or the
    /// slot is empty).
    pub(super) fn set_have(&mut self, slot: Slot, piece: u32) -> bool {
        let Some(peer) = self.slots.get_mut(slot).and_then(Option::as_mut) else {
            return false;
        };
        let was_incomplete = is_incomplete_agent(peer);
        let newly = peer.bitfield.set(piece);
        if was_incomplete && !is_incomplete_agent(peer) {
            self.incomplete_agents -= 1;
        }
        newly
    }

    /// Whether any connected agent is still downloading: then piece diversity matters.
    pub(super) fn any_incomplete_agent(&self) -> bool {
        self.incomplete_agents > 0
    }

    pub(super) fn get(&self, slot: Slot) -> Option<&Peer> {
        self.slots.get(slot)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, slot: Slot) -> Option<&mut Peer> {
        self.slots.get_mut(slot)?.as_mut()
    }

    /// Slots of the connected peers, in slot order (deterministic).
    pub(super) fn slots(&self) -> Vec<Slot> {
        (0..self.slots.len())
            .filter(|&slot| self.slots[slot].is_some())
            .collect()
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Peer> {
        self.slots.iter_mut().flatten()
    }

    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    /// Connected agents (not origins).
    pub(super) fn agents(&self) -> usize {
        self.index.len() - self.origins
    }

    /// A connected agent with nothing for us (or that stopped answering) and no request in
    /// flight, if any.
    pub(super) fn idle_useless_agent(&self) -> Option<Slot> {
        self.slots.iter().position(|peer| {
            peer.as_ref().is_some_and(|peer| {
                !peer.origin
                    && (peer.useful == 0 || peer.snubbed.is_some())
                    && peer.inflight.is_empty()
            })
        })
    }

    /// Whether a connected origin would be asked for `piece` (O(peers); called for the few
    /// pieces that keep timing out at agents).
    pub(super) fn origin_holds(&self, piece: u32) -> bool {
        self.origins > 0
            && self
                .slots
                .iter()
                .flatten()
                .any(|peer| peer.origin && peer.holds(piece))
    }

    /// Whether at least `n` connected agents hold a piece we miss and answer (none of their
    /// requests went stale since their last delivery). Stops at the `n`th: it is asked on most
    /// events, and in a crowd nearly every peer counts.
    pub(super) fn useful_agents_at_least(&self, n: usize) -> bool {
        n == 0
            || self
                .slots
                .iter()
                .flatten()
                .filter(|peer| !peer.origin && peer.useful > 0 && peer.snubbed.is_none())
                .nth(n - 1)
                .is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Idle,
    Connecting,
    Connected,
}

struct Known {
    origin: bool,
    phase: Phase,
    /// When the current connection attempt started (meaningful while `Connecting`).
    since: u64,
}

/// Peers we know of but may not be connected to, and the blacklist.
#[derive(Default)]
pub(super) struct Candidates {
    known: HashMap<PeerId, Known>,
    // Queues may hold stale ids (forgotten or already connecting); `next` skips them, so
    // forgetting a peer stays O(1).
    idle_agents: VecDeque<PeerId>,
    idle_origins: VecDeque<PeerId>,
    blacklist: HashMap<PeerId, u64>,
    connecting_agents: usize,
    connecting_origins: usize,
    /// Connection attempts to agents, and to origins, in the order they started (ids may be
    /// stale: connected, failed or restarted since), so the newest pending one is found in
    /// amortised O(1).
    agent_attempts: VecDeque<(u64, PeerId)>,
    origin_attempts: VecDeque<(u64, PeerId)>,
}

impl Candidates {
    /// Adds peers we did not know of and are not shunning, in random order so agents given the
    /// same tracker answer spread their connections.
    pub(super) fn discover(
        &mut self,
        mut batch: Vec<PeerCandidate>,
        now_ms: u64,
        rng: &mut impl Rng,
    ) {
        batch.shuffle(rng);
        for candidate in batch {
            if self.known.contains_key(&candidate.id) || self.is_blacklisted(&candidate.id, now_ms)
            {
                continue;
            }
            let queue = if candidate.origin {
                &mut self.idle_origins
            } else {
                &mut self.idle_agents
            };
            queue.push_back(candidate.id.clone());
            self.known.insert(
                candidate.id,
                Known {
                    origin: candidate.origin,
                    phase: Phase::Idle,
                    since: 0,
                },
            );
        }
    }

    /// The next idle agent (or origin) to connect to, now marked as connecting since `now_ms`.
    pub(super) fn next(&mut self, origin: bool, now_ms: u64) -> Option<PeerId> {
        let queue = if origin {
            &mut self.idle_origins
        } else {
            &mut self.idle_agents
        };
        while let Some(id) = queue.pop_front() {
            if let Some(known) = self.known.get_mut(&id)
                && known.phase == Phase::Idle
            {
                known.phase = Phase::Connecting;
                known.since = now_ms;
                if origin {
                    self.connecting_origins += 1;
                    self.origin_attempts.push_back((now_ms, id.clone()));
                } else {
                    self.connecting_agents += 1;
                    self.agent_attempts.push_back((now_ms, id.clone()));
                }
                return Some(id);
            }
        }
        None
    }

    /// Whether an agent (or origin) is waiting to be connected to.
    pub(super) fn has_idle(&mut self, origin: bool) -> bool {
        let queue = if origin {
            &mut self.idle_origins
        } else {
            &mut self.idle_agents
        };
        while let Some(id) = queue.front() {
            if self
                .known
                .get(id)
                .is_some_and(|known| known.phase == Phase::Idle)
            {
                return true;
            }
            queue.pop_front();
        }
        false
    }

    /// Origins the tracker handed out (O(peers known); called for small swarms only).
    pub(super) fn known_origins(&self) -> usize {
        self.known.values().filter(|known| known.origin).count()
    }

    /// Whether a known candidate is an origin; None for peers we do not know of.
    pub(super) fn is_origin(&self, id: &PeerId) -> Option<bool> {
        self.known.get(id).map(|known| known.origin)
    }

    /// A connection we asked for is up; returns whether the peer is an origin, or None when we
    /// did not ask to connect to it.
    pub(super) fn connected(&mut self, id: &PeerId) -> Option<bool> {
        let known = self.known.get_mut(id)?;
        if known.phase != Phase::Connecting {
            return None;
        }
        known.phase = Phase::Connected;
        let origin = known.origin;
        self.uncount_connecting(origin);
        Some(origin)
    }

    /// Drops a peer from the candidates; a later tracker answer may bring it back.
    pub(super) fn forget(&mut self, id: &PeerId) {
        if let Some(known) = self.known.remove(id)
            && known.phase == Phase::Connecting
        {
            self.uncount_connecting(known.origin);
        }
    }

    fn uncount_connecting(&mut self, origin: bool) {
        if origin {
            self.connecting_origins -= 1;
        } else {
            self.connecting_agents -= 1;
        }
    }

    pub(super) fn connecting(&self) -> usize {
        self.connecting_agents + self.connecting_origins
    }

    /// Whether an agent (or origin) connection attempt started less than `grace_ms` before
    /// `now_ms` is still pending. Entries are dropped from the front as they resolve or grow
    /// older than that (the clock only moves forward), so the answer is whether any entry
    /// remains.
    pub(super) fn pending_within(&mut self, origin: bool, now_ms: u64, grace_ms: u64) -> bool {
        let attempts = if origin {
            &mut self.origin_attempts
        } else {
            &mut self.agent_attempts
        };
        while let Some((since, id)) = attempts.front() {
            let pending = self
                .known
                .get(id)
                .is_some_and(|known| known.phase == Phase::Connecting && known.since == *since);
            if pending && since.saturating_add(grace_ms) > now_ms {
                break;
            }
            attempts.pop_front();
        }
        !attempts.is_empty()
    }

    pub(super) fn blacklist(&mut self, id: PeerId, until_ms: u64) {
        self.forget(&id);
        self.blacklist.insert(id, until_ms);
    }

    pub(super) fn is_blacklisted(&self, id: &PeerId, now_ms: u64) -> bool {
        self.blacklist.get(id).is_some_and(|&until| now_ms < until)
    }

    pub(super) fn expire_blacklist(&mut self, now_ms: u64) {
        self.blacklist.retain(|_, &mut until| now_ms < until);
    }
}
