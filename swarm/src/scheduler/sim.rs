//! A test harness that plays the engine and a swarm of scripted peers for one scheduler: it
//! feeds the scheduler's actions back as events and checks the policy's invariants on every
//! action (no piece we have is requested, no duplicate request outside endgame, nothing sent to
//! a blacklisted peer, Complete once).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand::RngExt;

use super::hedge;
use super::*;

pub(super) fn id(name: &str) -> PeerId {
    PeerId::parse(name).expect("valid peer id")
}

/// Bitfield of `len` pieces with exactly `pieces` set.
pub(super) fn bits(len: u32, pieces: impl IntoIterator<Item = u32>) -> Bitfield {
    let mut field = Bitfield::new(len);
    for piece in pieces {
        field.set(piece);
    }
    field
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Behaviour {
    /// Delivers every piece it is asked for.
    Honest,
    /// Delivers pieces that fail their hash check.
    Corrupt,
    /// Accepts requests and never answers them.
    Silent,
    /// Fails every other request.
    Flaky,
    /// Fails every request (a peer whose disk lost the pieces it announced).
    Failing,
    /// Answers nothing before this time, then every request, old ones included (a process
    /// paused for a while).
    Paused { until: u64 },
}

struct SimPeer {
    bitfield: Bitfield,
    origin: bool,
    behaviour: Behaviour,
    answered: u32,
}

/// The engine and the swarm, scripted.
pub(super) struct Sim {
    pub(super) scheduler: Scheduler,
    endgame_pieces: usize,
    pub(super) now: u64,
    swarm: BTreeMap<PeerId, SimPeer>,
    pub(super) events: VecDeque<Event>,
    /// Requests in flight, oldest first.
    pub(super) pending: Vec<(PeerId, u32)>,
    /// When each request was sent.
    sent: BTreeMap<(PeerId, u32), u64>,
    pub(super) log: Vec<(u64, Action)>,
    /// Blacklist actions seen, to check nothing is sent to those peers before expiry.
    shunned: BTreeMap<PeerId, u64>,
    pub(super) completes: usize,
    rng: Xoshiro256PlusPlus,
    /// Deliver requests in random order rather than oldest first.
    pub(super) shuffle: bool,
    /// Peers with an open session (from our Connect until a disconnect), told about new pieces.
    connected: BTreeSet<PeerId>,
    /// Pieces each peer gains later, one per tick, announced with Have.
    later: BTreeMap<PeerId, VecDeque<u32>>,
    /// Each tick, drop a random session with probability 1/4 (the peer is rediscovered later).
    pub(super) churn: bool,
    /// When the tracker answers again.
    next_announce: u64,
}

impl Sim {
    pub(super) fn new(pieces: u32, have: Bitfield, config: SchedulerConfig, seed: u64) -> Sim {
        Sim {
            endgame_pieces: config.endgame_pieces,
            scheduler: Scheduler::new(pieces, have, config, seed),
            now: 0,
            swarm: BTreeMap::new(),
            events: VecDeque::new(),
            pending: Vec::new(),
            sent: BTreeMap::new(),
            log: Vec::new(),
            shunned: BTreeMap::new(),
            completes: 0,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5eed),
            shuffle: false,
            connected: BTreeSet::new(),
            later: BTreeMap::new(),
            churn: false,
            next_announce: 3_000,
        }
    }

    pub(super) fn peer(
        &mut self,
        name: &str,
        bitfield: Bitfield,
        origin: bool,
        behaviour: Behaviour,
    ) {
        self.swarm.insert(
            id(name),
            SimPeer {
                bitfield,
                origin,
                behaviour,
                answered: 0,
            },
        );
    }

    /// `count` agents named `prefix-0`, `prefix-1`, … alike.
    pub(super) fn agents(
        &mut self,
        prefix: &str,
        count: usize,
        bitfield: &Bitfield,
        behaviour: Behaviour,
    ) {
        for i in 0..count {
            self.peer(&format!("{prefix}-{i}"), bitfield.clone(), false, behaviour);
        }
    }

    /// `name` will gain `pieces` one per tick (it is downloading them too).
    pub(super) fn gains_later(&mut self, name: &str, pieces: impl IntoIterator<Item = u32>) {
        self.later.entry(id(name)).or_default().extend(pieces);
    }

    /// A peer leaves the swarm: its requests vanish and it is not discovered again.
    pub(super) fn remove_peer(&mut self, name: &str) {
        let peer = id(name);
        self.swarm.remove(&peer);
        self.pending.retain(|(p, _)| *p != peer);
    }

    /// The tracker's answer: every peer of the swarm.
    pub(super) fn discover(&mut self) -> Vec<Action> {
        let batch = self
            .swarm
            .iter()
            .map(|(id, peer)| PeerCandidate {
                id: id.clone(),
                origin: peer.origin,
            })
            .collect();
        self.send(Event::Discovered(batch))
    }

    /// Handles one event, checking and applying every action in order.
    pub(super) fn send(&mut self, event: Event) -> Vec<Action> {
        // Requests sent to a peer before its session broke die with it.
        if let Event::Disconnected { peer } = &event {
            self.pending.retain(|(p, _)| p != peer);
        }
        let actions = self.scheduler.handle(self.now, event);
        for action in &actions {
            self.check_and_apply(action);
            self.log.push((self.now, action.clone()));
        }
        actions
    }

    fn check_and_apply(&mut self, action: &Action) {
        let now = self.now;
        let shunned = |peer: &PeerId| self.shunned.get(peer).is_some_and(|&until| now < until);
        match action {
            Action::Connect { peer } => {
                assert!(!shunned(peer), "connect to blacklisted {peer}");
                self.connected.insert(peer.clone());
                let bitfield = self.swarm[peer].bitfield.clone();
                self.events.push_back(Event::Connected {
                    peer: peer.clone(),
                    bitfield,
                });
            }
            Action::Request { peer, piece, .. } => {
                let piece = *piece;
                assert!(!shunned(peer), "request to blacklisted {peer}");
                assert!(
                    !self.scheduler.have().get(piece),
                    "requested piece {piece} we have"
                );
                assert!(
                    self.swarm[peer].bitfield.get(piece),
                    "requested {piece} from {peer}, who lacks it"
                );
                assert!(
                    !self.pending.contains(&(peer.clone(), piece)),
                    "requested {piece} twice from {peer}"
                );
                // A duplicate is allowed in endgame, or beside a request gone stale.
                let others: Vec<u64> = (self.pending.iter())
                    .filter(|(_, p)| *p == piece)
                    .filter_map(|request| self.sent.get(request).copied())
                    .collect();
                if !others.is_empty() {
                    let missing = self.scheduler.have().len() - self.scheduler.have().count();
                    let stale = others
                        .iter()
                        .all(|&sent| (now - sent) as f64 >= hedge::FLOOR_MS);
                    assert!(
                        missing as usize <= self.endgame_pieces || stale,
                        "duplicate request for {piece} with {missing} pieces missing"
                    );
                }
                self.pending.push((peer.clone(), piece));
                self.sent.insert((peer.clone(), piece), now);
            }
            Action::Cancel { peer, piece } => {
                let request = (peer.clone(), *piece);
                assert!(
                    self.pending.contains(&request),
                    "cancel of unknown {request:?}"
                );
                self.pending.retain(|r| *r != request);
            }
            Action::Disconnect { peer } => {
                self.connected.remove(peer);
                self.pending.retain(|(p, _)| p != peer);
            }
            Action::Blacklist { peer, until_ms } => {
                self.connected.remove(peer);
                self.pending.retain(|(p, _)| p != peer);
                self.shunned.insert(peer.clone(), *until_ms);
            }
            Action::Stale { peer, piece } => {
                let request = (peer.clone(), *piece);
                assert!(
                    self.pending.contains(&request),
                    "stale report of unknown {request:?}"
                );
            }
            Action::Complete => {
                self.completes += 1;
                assert_eq!(self.completes, 1, "Complete emitted twice");
                assert!(self.scheduler.is_complete());
            }
        }
    }

    /// One step: a queued event, else the answer to one pending request, else a second passes
    /// and the scheduler ticks. Every third second the tracker answers again.
    pub(super) fn step(&mut self) {
        if let Some(event) = self.events.pop_front() {
            self.send(event);
            return;
        }
        let answerable: Vec<usize> = (0..self.pending.len())
            .filter(|&i| match self.swarm[&self.pending[i].0].behaviour {
                Behaviour::Silent => false,
                Behaviour::Paused { until } => self.now >= until,
                _ => true,
            })
            .collect();
        if answerable.is_empty() {
            self.now += 1_000;
            self.reveal();
            if self.churn && self.rng.random_range(0..4) == 0 {
                self.drop_random_session();
            }
            self.send(Event::Tick);
            if self.now >= self.next_announce {
                self.next_announce = self.now + 3_000;
                self.discover();
            }
            return;
        }
        let at = if self.shuffle {
            answerable[self.rng.random_range(0..answerable.len())]
        } else {
            answerable[0]
        };
        let (peer, piece) = self.pending.remove(at);
        self.now += 10;
        let sim_peer = self
            .swarm
            .get_mut(&peer)
            .expect("requests go to swarm peers");
        sim_peer.answered += 1;
        let event = match sim_peer.behaviour {
            Behaviour::Corrupt => Event::PieceCorrupt { peer, piece },
            Behaviour::Flaky if sim_peer.answered % 2 == 1 => Event::PieceFailed { peer, piece },
            Behaviour::Failing => Event::PieceFailed { peer, piece },
            _ => Event::PieceDone {
                peer,
                piece,
                rtt: Duration::ZERO,
                in_order: false,
            },
        };
        self.send(event);
    }

    /// Every peer with pieces to gain gets its next one; connected ones announce it.
    fn reveal(&mut self) {
        for (peer, pieces) in &mut self.later {
            let Some(piece) = pieces.pop_front() else {
                continue;
            };
            if let Some(sim_peer) = self.swarm.get_mut(peer) {
                sim_peer.bitfield.set(piece);
            }
            if self.connected.contains(peer) {
                self.events.push_back(Event::Have {
                    peer: peer.clone(),
                    piece,
                });
            }
        }
    }

    /// The session with a random connected peer breaks.
    fn drop_random_session(&mut self) {
        if self.connected.is_empty() {
            return;
        }
        let at = self.rng.random_range(0..self.connected.len());
        let Some(peer) = self.connected.iter().nth(at).cloned() else {
            return;
        };
        self.connected.remove(&peer);
        self.events.push_back(Event::Disconnected { peer });
    }

    /// Steps until Complete or `max_steps`; true when complete.
    pub(super) fn run(&mut self, max_steps: usize) -> bool {
        for _ in 0..max_steps {
            if self.completes > 0 {
                return true;
            }
            self.step();
        }
        self.completes > 0
    }

    pub(super) fn requests(&self) -> impl Iterator<Item = (&PeerId, u32)> + '_ {
        self.log.iter().filter_map(|(_, action)| match action {
            Action::Request { peer, piece, .. } => Some((peer, *piece)),
            _ => None,
        })
    }

    pub(super) fn requests_to(&self, name: &str) -> Vec<u32> {
        let peer = id(name);
        self.requests()
            .filter(|(p, _)| **p == peer)
            .map(|(_, piece)| piece)
            .collect()
    }

    pub(super) fn connects(&self) -> Vec<PeerId> {
        self.log
            .iter()
            .filter_map(|(_, action)| match action {
                Action::Connect { peer } => Some(peer.clone()),
                _ => None,
            })
            .collect()
    }
}
