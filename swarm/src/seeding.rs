//! Origin-side piece diversity ("super-seeding"): an origin serving a flash crowd sends each
//! piece to about one agent and lets the agents exchange it, instead of sending the same piece
//! to everyone who asks first.
//!
//! Per blob, an origin keeps a [`Ledger`] of what it sent (per piece: how many times, when last)
//! and of who asked recently. Each piece request gets a [`Decision`]:
//!
//! - a lone requester (no other distinct peer asked for this blob within
//!   [`SeedingConfig::crowd_window`]) is always served, exactly as without the policy;
//! - in a crowd, a piece sent within [`SeedingConfig::recent`] (it is spreading among the agents
//!   now), or sent more often than the least-sent pieces (others have not gone out even once as
//!   often), is answered [`Decision::Elsewhere`]: get it from another peer;
//! - in a crowd, an origin that is owner `index` of `of` origins owning the blob sends only its
//!   share of the pieces (`piece % of == index`) and answers Elsewhere for the others: the owners
//!   know nothing of each other's sends, and without shares each would send most pieces once
//!   (2 × S from three owners in the simulation);
//! - an Elsewhere answer names, when it can, the piece the origin would send instead: the lowest
//!   one of its share it has sent least and not recently ([`Ledger::instead`]). A downloader
//!   in a small swarm asks for it at once (`shoal_swarm::scheduler`), so the origin sends its
//!   pieces about in order and every download's contiguous prefix, which a client streaming
//!   the blob reads, keeps moving; a suggested piece is held back from the next refusals for
//!   [`PROMISE_MS`], so a crowd refused at once is pointed at different pieces;
//! - a request that *insists* is served: the downloader's scheduler waited and still sees no
//!   connected agent holding the piece (`shoal_swarm::scheduler`, `Event::PieceElsewhere`), so
//!   the policy can only delay a piece, never withhold it.
//!
//! Pure and O(1) per request (amortised): per-piece counters, a histogram of send counts for the
//! least-sent level, a cursor past the pieces no longer worth suggesting, and a fixed handful of
//! recent requesters. [`Seeder`] holds the ledgers of the blobs an
//! origin served most recently (a bounded LRU). Time is passed in as `now_ms` (any monotonic
//! millisecond clock).

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

/// Distinct recent requesters remembered per blob. Two are enough to tell a crowd from a lone
/// agent; a few more keep one chatty requester from hiding the others.
const REQUESTERS: usize = 4;

/// How long a piece named in an Elsewhere answer is kept from the next ones: long enough for
/// the refused downloader's request for it to arrive (a round trip), short enough that a
/// suggestion nobody takes up is soon offered again.
pub const PROMISE_MS: u64 = 1_000;

/// Pieces past the cursor looked at for a suggestion: the ones skipped are recent or promised,
/// both for a moment only, so a bounded look keeps every refusal O(1).
const SUGGEST_SCAN: usize = 64;

/// Blobs whose ledgers an origin keeps by default: a flash crowd pulls an image's few layers at
/// once; older blobs' ledgers start afresh (everything served) if asked again.
pub const DEFAULT_BLOBS: usize = 64;

/// Tuning of the policy (`docs/BENCHMARKS.md`, "origin super-seeding").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedingConfig {
    /// A piece sent this recently is spreading among the agents: in a crowd, others get it
    /// from them.
    pub recent: Duration,
    /// Requests from two or more distinct peers within this window make a crowd.
    pub crowd_window: Duration,
}

impl Default for SeedingConfig {
    fn default() -> Self {
        SeedingConfig {
            recent: Duration::from_secs(2),
            crowd_window: Duration::from_secs(5),
        }
    }
}

/// The answer to one piece request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Serve,
    /// Another peer has (or will soon have) this piece: ask there, or ask this origin for
    /// `instead`, a piece it would send now.
    Elsewhere {
        instead: Option<u32>,
    },
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A stable key for a requester's peer id (FNV-1a: pure and the same on every platform).
pub fn requester_key(peer_id: &str) -> u64 {
    peer_id.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What an origin sent of one blob, and who asked recently.
#[derive(Debug, Clone)]
pub struct Ledger {
    /// Times each piece was sent (saturating).
    sent: Vec<u16>,
    /// When each piece was last sent; meaningless while `sent` is 0.
    last: Vec<u64>,
    /// `levels[k]`: pieces sent exactly `k` times.
    levels: Vec<u32>,
    /// The least `sent` of any piece.
    min_sent: u16,
    /// Recent requesters: (key, last request), oldest replaced first.
    requesters: [(u64, u64); REQUESTERS],
    known: usize,
    /// This origin's share of the blob's pieces, `(index, of)`: with `of` origins owning the
    /// blob, each first sends the pieces `p` with `p % of == index`.
    share: Option<(u32, u32)>,
    /// Until when each piece is promised to a refused downloader (named in an answer).
    promised: Vec<u64>,
    /// Every piece below it is outside the share or sent more than `min_sent` times: never
    /// suggested until `min_sent` rises.
    cursor: usize,
}

impl Ledger {
    pub fn new(pieces: u32) -> Ledger {
        Ledger {
            sent: vec![0; pieces as usize],
            last: vec![0; pieces as usize],
            levels: vec![pieces],
            min_sent: 0,
            requesters: [(0, 0); REQUESTERS],
            known: 0,
            share: None,
            promised: vec![0; pieces as usize],
            cursor: 0,
        }
    }

    /// A ledger of an origin that is owner `index` of `of` owning the blob: in a crowd, it sends
    /// only its share of the pieces unless a request insists, so the owners send disjoint parts.
    pub fn with_share(pieces: u32, index: u32, of: u32) -> Ledger {
        Ledger {
            share: (of > 1 && index < of).then_some((index, of)),
            ..Ledger::new(pieces)
        }
    }

    pub fn pieces(&self) -> u32 {
        self.sent.len() as u32
    }

    /// Times `piece` was sent.
    pub fn sent(&self, piece: u32) -> u16 {
        self.sent.get(piece as usize).copied().unwrap_or(0)
    }

    /// Decides one request for `piece` by `requester` (a [`requester_key`]) at `now_ms`, and
    /// records the send when it is served.
    pub fn decide(
        &mut self,
        config: &SeedingConfig,
        requester: u64,
        piece: u32,
        insist: bool,
        now_ms: u64,
    ) -> Decision {
        let crowd = self.note_requester(requester, now_ms, millis(config.crowd_window));
        let at = piece as usize;
        if at >= self.sent.len() {
            return Decision::Serve;
        }
        let sent = self.sent[at];
        let recently = sent > 0 && now_ms.saturating_sub(self.last[at]) < millis(config.recent);
        if crowd && !insist && (self.foreign(piece) || recently || sent > self.min_sent) {
            let instead = self.instead(millis(config.recent), now_ms);
            return Decision::Elsewhere { instead };
        }
        self.record(at, now_ms);
        Decision::Serve
    }

    fn foreign(&self, piece: u32) -> bool {
        self.share.is_some_and(|(index, of)| piece % of != index)
    }

    /// The piece a refused downloader is pointed at: the lowest of this origin's share sent
    /// least, not recently, and not promised to another; it is promised until `now_ms` +
    /// [`PROMISE_MS`]. None when the pieces looked at are all recent or promised.
    pub fn instead(&mut self, recent_ms: u64, now_ms: u64) -> Option<u32> {
        while self.cursor < self.sent.len()
            && (self.foreign(self.cursor as u32) || self.sent[self.cursor] > self.min_sent)
        {
            self.cursor += 1;
        }
        let found = (self.cursor..self.sent.len())
            .take(SUGGEST_SCAN)
            .find(|&at| {
                let recently =
                    self.sent[at] > 0 && now_ms.saturating_sub(self.last[at]) < recent_ms;
                !self.foreign(at as u32)
                    && self.sent[at] == self.min_sent
                    && !recently
                    && self.promised[at] <= now_ms
            })?;
        self.promised[found] = now_ms.saturating_add(PROMISE_MS);
        Some(found as u32)
    }

    /// Remembers the requester; whether another distinct one asked within `window_ms`.
    fn note_requester(&mut self, key: u64, now_ms: u64, window_ms: u64) -> bool {
        let known = &mut self.requesters[..self.known];
        let at = match known.iter().position(|&(k, _)| k == key) {
            Some(at) => at,
            None if self.known < REQUESTERS => {
                self.known += 1;
                self.known - 1
            }
            None => {
                // Replace the one that asked longest ago.
                let (at, _) = known
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, (_, last))| *last)
                    .unwrap_or((0, &(0, 0)));
                at
            }
        };
        self.requesters[at] = (key, now_ms);
        self.requesters[..self.known]
            .iter()
            .any(|&(k, last)| k != key && now_ms.saturating_sub(last) < window_ms)
    }

    fn record(&mut self, at: usize, now_ms: u64) {
        self.last[at] = now_ms;
        let old = self.sent[at];
        if old == u16::MAX {
            return;
        }
        let new = old + 1;
        self.sent[at] = new;
        self.levels[usize::from(old)] -= 1;
        if self.levels.len() <= usize::from(new) {
            self.levels.push(0);
        }
        self.levels[usize::from(new)] += 1;
        // The least level only empties upward, one level at a time: amortised O(1).
        while self.levels[usize::from(self.min_sent)] == 0 {
            self.min_sent += 1;
            // Every piece is back at the least level or above it: suggest from the start.
            self.cursor = 0;
        }
    }
}

/// What the policy needs to know of a blob: its piece count and, when this origin is one of
/// several owning it, its share `(index, of)` (see [`Ledger::with_share`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blob {
    pub pieces: u32,
    pub share: Option<(u32, u32)>,
}

/// The ledgers of the blobs an origin served most recently, at most `capacity` of them.
#[derive(Debug)]
pub struct Seeder<K> {
    config: SeedingConfig,
    capacity: usize,
    /// Ledger and the last request's time, per blob.
    ledgers: HashMap<K, (Ledger, u64)>,
}

impl<K: Hash + Eq + Clone> Seeder<K> {
    pub fn new(config: SeedingConfig, capacity: usize) -> Seeder<K> {
        Seeder {
            config,
            capacity: capacity.max(1),
            ledgers: HashMap::new(),
        }
    }

    pub fn config(&self) -> &SeedingConfig {
        &self.config
    }

    /// Decides a request for `piece` of the blob `key` (of `pieces` pieces). A blob not seen
    /// recently gets a fresh ledger, evicting the least recently asked one beyond `capacity`
    /// (O(capacity), once per new blob; every other request is O(1)).
    pub fn decide(
        &mut self,
        key: &K,
        blob: Blob,
        requester: u64,
        piece: u32,
        insist: bool,
        now_ms: u64,
    ) -> Decision {
        let Blob { pieces, share } = blob;
        let fresh = self
            .ledgers
            .get(key)
            .is_none_or(|(ledger, _)| ledger.pieces() != pieces || ledger.share != share);
        if fresh {
            if self.ledgers.len() >= self.capacity && !self.ledgers.contains_key(key) {
                let oldest = self
                    .ledgers
                    .iter()
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(key, _)| key.clone());
                if let Some(oldest) = oldest {
                    self.ledgers.remove(&oldest);
                }
            }
            let ledger = match share {
                Some((index, of)) => Ledger::with_share(pieces, index, of),
                None => Ledger::new(pieces),
            };
            self.ledgers.insert(key.clone(), (ledger, now_ms));
        }
        let Some((ledger, used)) = self.ledgers.get_mut(key) else {
            return Decision::Serve;
        };
        *used = now_ms;
        ledger.decide(&self.config, requester, piece, insist, now_ms)
    }

    /// Blobs with a ledger.
    pub fn len(&self) -> usize {
        self.ledgers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ledgers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u64 = 1;
    const B: u64 = 2;

    fn config() -> SeedingConfig {
        SeedingConfig {
            recent: Duration::from_secs(2),
            crowd_window: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_lone_requester_is_always_served() {
        let mut ledger = Ledger::new(4);
        for round in 0..3u64 {
            for piece in 0..4 {
                let now = round * 10 + u64::from(piece);
                assert_eq!(
                    ledger.decide(&config(), A, piece, false, now),
                    Decision::Serve,
                    "round {round} piece {piece}"
                );
            }
        }
        assert_eq!(ledger.sent(0), 3);
    }

    #[test]
    fn in_a_crowd_a_recently_sent_piece_is_refused_and_an_unsent_one_served() {
        let mut ledger = Ledger::new(4);
        assert_eq!(ledger.decide(&config(), A, 0, false, 0), Decision::Serve);
        // B asks within the crowd window: piece 0 went out 100 ms ago.
        assert_eq!(
            ledger.decide(&config(), B, 0, false, 100),
            Decision::Elsewhere { instead: Some(1) }
        );
        assert_eq!(ledger.decide(&config(), B, 1, false, 110), Decision::Serve);
        assert_eq!(ledger.sent(0), 1, "a refusal is not a send");
    }

    #[test]
    fn in_a_crowd_a_piece_sent_more_than_the_least_sent_is_refused_even_when_not_recent() {
        let mut ledger = Ledger::new(3);
        assert_eq!(ledger.decide(&config(), A, 0, false, 0), Decision::Serve);
        // Long after, piece 0 is no longer recent but 1 and 2 have not gone out at all.
        assert_eq!(
            ledger.decide(&config(), A, 1, false, 10_000),
            Decision::Serve
        );
        assert_eq!(
            ledger.decide(&config(), B, 0, false, 10_001),
            Decision::Elsewhere { instead: Some(2) }
        );
        assert_eq!(
            ledger.decide(&config(), B, 2, false, 10_002),
            Decision::Serve
        );
        // Every piece went out once: piece 0 (sent long ago) is the least sent again.
        assert_eq!(
            ledger.decide(&config(), B, 0, false, 10_003),
            Decision::Serve
        );
        assert_eq!(ledger.sent(0), 2);
    }

    #[test]
    fn an_insisting_request_is_served_in_a_crowd() {
        let mut ledger = Ledger::new(2);
        assert_eq!(ledger.decide(&config(), A, 0, false, 0), Decision::Serve);
        assert_eq!(
            ledger.decide(&config(), B, 0, false, 1),
            Decision::Elsewhere { instead: Some(1) }
        );
        assert_eq!(ledger.decide(&config(), B, 0, true, 2), Decision::Serve);
        assert_eq!(ledger.sent(0), 2);
    }

    #[test]
    fn a_crowd_disperses_after_its_window() {
        let mut ledger = Ledger::new(2);
        assert_eq!(ledger.decide(&config(), A, 0, false, 0), Decision::Serve);
        assert_eq!(ledger.decide(&config(), B, 1, false, 1), Decision::Serve);
        // Only A asks from now on; B's last request is past the crowd window.
        assert_eq!(
            ledger.decide(&config(), A, 0, false, 6_000),
            Decision::Serve
        );
        assert_eq!(
            ledger.decide(&config(), A, 0, false, 6_001),
            Decision::Serve
        );
    }

    #[test]
    fn requesters_beyond_the_bound_replace_the_oldest() {
        let mut ledger = Ledger::new(1);
        for requester in 0..100u64 {
            ledger.decide(&config(), requester, 0, true, requester);
        }
        assert_eq!(ledger.known, REQUESTERS);
        // The newest ones are remembered: a crowd.
        assert_eq!(
            ledger.decide(&config(), 99, 0, false, 100),
            Decision::Elsewhere { instead: None }
        );
    }

    #[test]
    fn the_seeder_keeps_a_bounded_number_of_ledgers() {
        let mut seeder = Seeder::new(config(), 2);
        let blob = Blob {
            pieces: 2,
            share: None,
        };
        assert_eq!(seeder.decide(&"x", blob, A, 0, false, 0), Decision::Serve);
        assert_eq!(
            seeder.decide(&"x", blob, B, 0, false, 1),
            Decision::Elsewhere { instead: Some(1) }
        );
        seeder.decide(&"y", blob, A, 0, false, 2);
        seeder.decide(&"z", blob, A, 0, false, 3);
        assert_eq!(seeder.len(), 2, "x, the least recently asked, was evicted");
        // x starts afresh: its piece 0 counts as never sent.
        assert_eq!(seeder.decide(&"x", blob, B, 0, false, 4), Decision::Serve);
        // A blob whose share changed (the ring changed) starts afresh too.
        let shared = Blob {
            pieces: 2,
            share: Some((1, 2)),
        };
        seeder.decide(&"x", shared, A, 0, true, 5);
        assert_eq!(
            seeder.decide(&"x", shared, B, 0, false, 6),
            Decision::Elsewhere { instead: Some(1) }
        );
    }

    #[test]
    fn in_a_crowd_an_owner_sends_only_its_share_unless_a_request_insists() {
        // Owner 1 of 3: pieces 1, 4, 7 are its share.
        let mut ledger = Ledger::with_share(9, 1, 3);
        assert_eq!(
            ledger.decide(&config(), A, 0, false, 0),
            Decision::Serve,
            "lone"
        );
        assert_eq!(
            ledger.decide(&config(), B, 3, false, 1),
            Decision::Elsewhere { instead: Some(1) }
        );
        assert_eq!(ledger.decide(&config(), B, 4, false, 2), Decision::Serve);
        assert_eq!(ledger.decide(&config(), B, 3, true, 3), Decision::Serve);
        // An index beyond the owners means no share.
        let mut alone = Ledger::with_share(9, 3, 3);
        alone.decide(&config(), A, 0, false, 0);
        assert_eq!(alone.decide(&config(), B, 3, false, 1), Decision::Serve);
    }

    #[test]
    fn refused_requesters_are_pointed_at_the_lowest_pieces_not_sent_each_at_a_different_one() {
        const C: u64 = 3;
        const D: u64 = 4;
        let elsewhere = |instead| Decision::Elsewhere { instead };
        let mut ledger = Ledger::new(4);
        assert_eq!(ledger.decide(&config(), A, 0, false, 0), Decision::Serve);
        // A crowd refused at once: each is pointed at another unsent piece, lowest first.
        assert_eq!(
            ledger.decide(&config(), B, 0, false, 10),
            elsewhere(Some(1))
        );
        assert_eq!(
            ledger.decide(&config(), C, 0, false, 11),
            elsewhere(Some(2))
        );
        assert_eq!(
            ledger.decide(&config(), D, 0, false, 12),
            elsewhere(Some(3))
        );
        assert_eq!(ledger.decide(&config(), A, 0, false, 13), elsewhere(None));
        // A promise nobody took up lapses.
        assert_eq!(
            ledger.decide(&config(), A, 0, false, 10 + PROMISE_MS),
            elsewhere(Some(1))
        );
        // Whoever asks first for a promised piece gets it.
        for (requester, piece) in [(C, 1), (B, 2), (D, 3)] {
            assert_eq!(
                ledger.decide(&config(), requester, piece, false, 1_020),
                Decision::Serve
            );
        }
        // Every piece went out once and recently: nothing to point at.
        assert_eq!(
            ledger.decide(&config(), B, 0, false, 1_030),
            elsewhere(None)
        );
        // Once piece 0's send is no longer recent it is suggested again, though it lies
        // below the pieces suggested before.
        assert_eq!(
            ledger.decide(&config(), B, 1, false, 2_500),
            elsewhere(Some(0))
        );
    }

    #[test]
    fn requester_keys_are_stable() {
        assert_eq!(requester_key(""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(requester_key("agent-1"), requester_key("agent-2"));
    }
}
