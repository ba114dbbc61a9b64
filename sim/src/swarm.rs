//! The simulated swarm: origins and agents exchanging pieces, each agent driven by the real
//! `shoal_swarm::scheduler::Scheduler`. This module plays the engine's part (what
//! `p2p/src/engine/download.rs` does with sockets): it turns the scheduler's actions into
//! sessions and piece transfers in the bandwidth model and feeds their outcomes back as events,
//! with the engine's timing — a session is up one round trip after Connect, a piece's PieceDone
//! arrives one latency after its last byte left the sender, Have notices take one latency, the
//! scheduler ticks every 250 ms, and downloading agents announce at the tracker's interval
//! (the second time one second after the first, as the engine does).
//!
//! Churn (`churn.rs` plans it): a departing node's process exits. The engine's view of that
//! (`p2p/src/engine/session.rs`) one latency later: a session with a partial peer ends with
//! Disconnected, one with a complete peer (a seeder, an origin) just goes quiet; each piece in
//! flight from it fails (PieceFailed), and so does every later request to it, a round trip
//! after it is sent; connecting to it fails (ConnectFailed). The tracker hands a departed agent
//! out until its record expires, `peer_ttl` after its last announce, and a dead origin for the
//! whole run (origins are configured, not announced).
//!
//! Simplifications (documented in `docs/BENCHMARKS.md`): a request starts moving bytes at once
//! (the request's own latency is folded into the delivery latency), disk and CPU are free, and
//! an agent that completes and does not leave keeps seeding for the rest of the run.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use shoal_core::{Bitfield, PeerId};
use shoal_swarm::announce::next_announce;
use shoal_swarm::notices;
use shoal_swarm::scheduler::{Action, Event, PeerCandidate, Scheduler};
use shoal_swarm::seeding::{Decision, Ledger};
use shoal_swarm::slots::{self, PieceCopies, PieceCopy};

use crate::churn::{self, Exit};
use crate::config::{ConfigError, Gone, OriginStop, SimConfig};
use crate::flows::{FlowRef, Flows, Link};
use crate::queue::{Nanos, Queue, SimEvent};
use crate::reader::Reader;
use crate::report::{ChurnReport, Distribution, Report, Uplinks};
use crate::tracker::Tracker;

const SECOND: Nanos = 1_000_000_000;

fn nanos(duration: Duration) -> Nanos {
    u64::try_from(duration.as_nanos()).unwrap_or(Nanos::MAX)
}

/// An origin or an agent.
struct Node {
    /// None for origins: they hold the whole blob and only serve.
    scheduler: Option<Scheduler>,
    arrived: Nanos,
    completed: Option<Nanos>,
    /// This node's requests in flight.
    requests: Vec<Request>,
    /// Agents holding a session with this agent, told about each piece it gains.
    subscribers: Vec<u32>,
    /// Whether and when it leaves (origins: `Stays`; one may die apart from this).
    exit: Exit,
    /// Whether its process exited or hung: either way nothing of it runs any more.
    left: Option<Gone>,
    /// Its last announce (when its tracker record was refreshed).
    announced: Nanos,
    /// Announces made so far (the second comes early: `shoal_swarm::announce`).
    announces: u32,
    /// When its last have notices went out (`shoal_swarm::notices`).
    haves_sent: Option<Nanos>,
    /// Pieces verified whose notices wait for the next batch.
    haves_pending: Vec<u32>,
    /// The client streaming the blob out of this agent, when the run models one.
    reader: Option<Reader>,
}

/// How long after an origin stops the others' health checks mark it: the membership's defaults
/// (a probe every 5 s, 2 s to answer, 2 failures in a row) take 7–12 s.
const HEALTH_VERDICT: Nanos = 10 * SECOND;

/// How long the engine waits for a peer's handshake (`p2p/src/engine/session.rs`).
const HANDSHAKE_TIMEOUT: Nanos = 5 * SECOND;

/// A piece asked of a sender: its transfer, and the sender's count of the piece's copies (an
/// agent's, when the run bounds them), given back when the request ends. Over the piece stream
/// ([`SimConfig::in_order`]) a request asked while another to the same sender is still being
/// sent waits, without a flow, until the sender has sent every earlier answer: the peer answers
/// in order, where HTTP/2 would interleave them.
struct Request {
    sender: u32,
    piece: u32,
    /// None while it waits behind an earlier request to the same sender.
    flow: Option<FlowRef>,
    /// Its place in asking order: the earliest waiting one goes next.
    asked: u64,
    _copy: Option<PieceCopy<(u32, u32)>>,
}

/// One simulation run in progress.
pub struct Swarm {
    config: SimConfig,
    origins: u32,
    pieces: u32,
    piece_length: u64,
    latency: Nanos,
    nodes: Vec<Node>,
    ids: Vec<PeerId>,
    index: HashMap<PeerId, u32>,
    full: Bitfield,
    flows: Flows,
    queue: Queue,
    tracker: Tracker,
    rng: Xoshiro256PlusPlus,
    now: Nanos,
    complete: u32,
    /// Reused for fanning out Have notices.
    scratch: Vec<u32>,
    busy_from_origins: u64,
    busy_from_agents: u64,
    /// Requests the agents' schedulers reported stale (`Action::Stale`).
    stale_requests: u64,
    /// Requests asked so far (`Request::asked`).
    asked: u64,
    /// Bytes of pieces agents have verified (each piece once per agent).
    verified: u64,
    /// `verified` at which origin 0 stops, and how.
    origin_stop: Option<(u64, Gone)>,
    churn: ChurnReport,
    /// Each origin's ledger of the blob (`shoal_swarm::seeding`), when the policy is on.
    ledgers: Vec<Ledger>,
    elsewhere_from_origins: u64,
    /// Requests agents answered "elsewhere" for their bound of copies of the piece.
    elsewhere_from_agents: u64,
    insisting_to_origins: u64,
    uplinks: UplinkMeter,
    /// Agents' uploads in flight per (sender, piece), when the run bounds their copies of one
    /// piece (the peer service's own count).
    copies: Option<Arc<PieceCopies<(u32, u32)>>>,
}

/// Measures the agents' uploads against what the agents present could upload, once a second of
/// virtual time and at the first completion (each reading is O(nodes + flows)).
#[derive(Default)]
struct UplinkMeter {
    /// When the current second ends.
    next: Nanos,
    at: Nanos,
    /// Bytes the agents had sent at `at`.
    sent: f64,
    /// Byte-seconds of upload capacity up to `at`.
    capacity: f64,
    report: Uplinks,
}

impl Swarm {
    /// Builds the swarm: nodes `0..origins` are origins, the rest agents.
    pub fn new(config: SimConfig) -> Result<Swarm, ConfigError> {
        config.validate()?;
        let pieces = u32::try_from(config.piece_count()).unwrap_or(u32::MAX);
        let nodes = config.origins as usize + config.peers as usize;
        let ids = (0..nodes)
            .map(|i| {
                let name = if i < config.origins as usize {
                    format!("origin-{i}")
                } else {
                    format!("agent-{}", i - config.origins as usize)
                };
                PeerId::parse(&name)
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ConfigError::Zero { field: "peer ids" })?;
        let index = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(config.seed);
        let spread = nanos(config.arrival_spread);
        let links = (0..nodes)
            .map(|i| {
                if i < config.origins as usize {
                    Link {
                        up: config.origin_upload,
                        down: config.origin_upload,
                    }
                } else {
                    Link {
                        up: config.peer_upload,
                        down: config.peer_download,
                    }
                }
            })
            .collect();
        let mut queue = Queue::default();
        let plans = churn::plan(&config.churn, config.peers, pieces, config.seed);
        let node_list = (0..nodes)
            .map(|i| {
                let origin = i < config.origins as usize;
                let plan = (!origin).then(|| plans[i - config.origins as usize]);
                let arrived = match plan.and_then(|plan| plan.late) {
                    Some(late) => late,
                    None if origin || spread == 0 => 0,
                    None => rng.random_range(0..spread),
                };
                if !origin {
                    queue.push(arrived, SimEvent::Arrive { node: i as u32 });
                }
                Node {
                    scheduler: (!origin).then(|| {
                        Scheduler::new(
                            pieces,
                            Bitfield::new(pieces),
                            config.scheduler.clone(),
                            config.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64,
                        )
                    }),
                    arrived,
                    completed: None,
                    requests: Vec::new(),
                    subscribers: Vec::new(),
                    exit: plan.map_or(Exit::Stays, |plan| plan.exit),
                    left: None,
                    announced: arrived,
                    announces: 0,
                    haves_sent: None,
                    haves_pending: Vec::new(),
                    reader: config
                        .client_rate
                        .filter(|_| !origin)
                        .map(|rate| Reader::new(arrived, rate)),
                }
            })
            .collect();
        // Half of "all the bytes" is of what every agent needs, leavers included.
        let needed = u64::from(config.peers) as f64 * config.blob_size as f64;
        let origin_stop = config
            .churn
            .origin_stops
            .map(|OriginStop { at, how }| ((at * needed).ceil() as u64, how));
        let owners = (0..config.origins.min(config.tracker.replicas)).collect();
        Ok(Swarm {
            origins: config.origins,
            pieces,
            piece_length: config.piece_length(),
            latency: nanos(config.latency),
            tracker: Tracker::new(
                config.tracker.policy,
                config.tracker.handout_limit,
                owners,
                nodes,
            ),
            nodes: node_list,
            ids,
            index,
            full: Bitfield::full(pieces),
            flows: Flows::new(links, nanos(config.rating_interval)),
            queue,
            rng,
            now: 0,
            complete: 0,
            scratch: Vec::new(),
            busy_from_origins: 0,
            busy_from_agents: 0,
            stale_requests: 0,
            asked: 0,
            verified: 0,
            origin_stop,
            churn: ChurnReport {
                late_joiners: plans.iter().filter(|plan| plan.late.is_some()).count() as u32,
                ..ChurnReport::default()
            },
            // Origin `o` is owner `o` of the blob's owners (the tracker hands out the first
            // `replicas` origins); the others never serve it.
            ledgers: (0..config.origins)
                .map(|o| Ledger::with_share(pieces, o, config.origins.min(config.tracker.replicas)))
                .collect(),
            elsewhere_from_origins: 0,
            elsewhere_from_agents: 0,
            insisting_to_origins: 0,
            uplinks: UplinkMeter {
                next: SECOND,
                ..UplinkMeter::default()
            },
            copies: config.piece_copies.map(PieceCopies::new),
            config,
        })
    }

    /// Runs until every agent is complete (or the time limit) and reports.
    pub fn run(mut self) -> Report {
        let started = Instant::now();
        let limit = nanos(self.config.time_limit);
        // Agents that left or hung mid-download never complete: the run ends when everyone else
        // has.
        while self.complete + self.churn.left_downloading + self.churn.hung_downloading
            < self.config.peers
        {
            let Some(time) = self.queue.peek_time() else {
                break;
            };
            if time > limit {
                break;
            }
            self.now = time;
            // Every event of this instant first, then one re-rating of the links they changed.
            while self.queue.peek_time() == Some(time) {
                if let Some((_, seq, event)) = self.queue.pop() {
                    self.dispatch(seq, event);
                }
            }
            self.flows.settle(self.now, &mut self.queue);
            if self.now >= self.uplinks.next {
                let share = self.measure_uplinks();
                self.uplinks.report.per_second.push(share);
                self.uplinks.next = (self.now / SECOND + 1) * SECOND;
            }
        }
        self.flows.flush(self.now);
        let share = self.measure_uplinks();
        self.uplinks.report.per_second.push(share);
        self.report(started.elapsed())
    }

    /// The bytes the agents have sent so far, and the byte capacity the agents present had
    /// since the meter's last measure.
    fn agents_sent(&self) -> (f64, f64) {
        let now = self.now;
        let sent = self
            .flows
            .sent_until(now, self.origins..self.nodes.len() as u32);
        let present = self.nodes[self.origins as usize..]
            .iter()
            .filter(|node| node.arrived <= now && node.left.is_none())
            .count();
        let elapsed = (now - self.uplinks.at) as f64 / SECOND as f64;
        (sent, present as f64 * self.config.peer_upload * elapsed)
    }

    /// The agents' upload since the last measure as a share of what the agents present could
    /// have uploaded (0 for no time or no agent); the meter moves on to now.
    fn measure_uplinks(&mut self) -> f64 {
        let (sent, capacity) = self.agents_sent();
        let meter = &mut self.uplinks;
        let share = if capacity > 0.0 {
            (sent - meter.sent) / capacity
        } else {
            0.0
        };
        meter.at = self.now;
        meter.sent = sent;
        meter.report.bytes = sent;
        meter.capacity += capacity;
        share
    }

    fn dispatch(&mut self, seq: u64, event: SimEvent) {
        let now = self.now;
        match event {
            SimEvent::Arrive { node } => {
                self.queue.push(now, SimEvent::Announce { node });
                self.queue
                    .push(now + nanos(self.config.tick), SimEvent::Tick { node });
            }
            SimEvent::Announce { node } => {
                let this = &mut self.nodes[node as usize];
                if this.left.is_some() {
                    return;
                }
                this.announced = now;
                this.announces += 1;
                let done = this.announces;
                let complete = this.completed.is_some();
                self.tracker.announce(node, complete);
                if !complete {
                    let peers = self.tracker.handout(node, &mut self.rng);
                    let members = self.tracker.members();
                    self.queue.push(
                        now + 2 * self.latency,
                        SimEvent::Discovered {
                            node,
                            peers,
                            members,
                        },
                    );
                    let interval = self.config.tracker.announce_interval;
                    let next = now + nanos(next_announce(done, interval));
                    self.queue.push(next, SimEvent::Announce { node });
                }
            }
            SimEvent::Discovered {
                node,
                peers,
                members,
            } => {
                self.send(node, Event::SwarmSize { members });
                let batch = peers
                    .into_iter()
                    .map(|peer| PeerCandidate {
                        id: self.ids[peer as usize].clone(),
                        origin: peer < self.origins,
                    })
                    .collect();
                self.send(node, Event::Discovered(batch));
            }
            SimEvent::Connected { node, peer } => {
                if self.nodes[node as usize].left.is_some() {
                    return;
                }
                match self.nodes[peer as usize].left {
                    Some(Gone::Exited) => {
                        self.churn.connect_failures += u64::from(self.downloading(node));
                        let peer = self.ids[peer as usize].clone();
                        self.send(node, Event::ConnectFailed { peer });
                        return;
                    }
                    Some(Gone::Hung) => {
                        // Its kernel accepts the connection; the handshake is never answered.
                        let started = now.saturating_sub(2 * self.latency);
                        self.queue.push(
                            started + HANDSHAKE_TIMEOUT,
                            SimEvent::ConnectTimedOut { node, peer },
                        );
                        return;
                    }
                    None => {}
                }
                if peer >= self.origins {
                    let subscribers = &mut self.nodes[peer as usize].subscribers;
                    if !subscribers.contains(&node) {
                        subscribers.push(node);
                    }
                }
                let bitfield = self.have(peer).clone();
                let peer = self.ids[peer as usize].clone();
                self.send(node, Event::Connected { peer, bitfield });
            }
            SimEvent::ConnectTimedOut { node, peer } => {
                self.churn.connect_failures += u64::from(self.downloading(node));
                let peer = self.ids[peer as usize].clone();
                self.send(node, Event::ConnectFailed { peer });
            }
            SimEvent::FlowWake { flow } => {
                if let Some(done) = self.flows.wake(now, flow, seq, &mut self.queue) {
                    self.queue.push(
                        now + self.latency,
                        SimEvent::PieceArrived {
                            flow: done.id,
                            generation: done.generation,
                        },
                    );
                    // In order: the sender goes on to the next answer at once.
                    if let Some((sender, receiver, _)) = self.flows.parts(done) {
                        self.send_next(receiver, sender);
                    }
                }
            }
            // The instant's settle does the rating.
            SimEvent::Rating => {}
            SimEvent::Busy {
                node,
                sender,
                piece,
            } => {
                let peer = self.ids[sender as usize].clone();
                self.send(node, Event::PieceBusy { peer, piece });
            }
            SimEvent::Elsewhere {
                node,
                sender,
                piece,
                instead,
            } => {
                let peer = self.ids[sender as usize].clone();
                self.send(
                    node,
                    Event::PieceElsewhere {
                        peer,
                        piece,
                        instead,
                    },
                );
            }
            SimEvent::PieceArrived { flow, generation } => {
                let flow = FlowRef {
                    id: flow,
                    generation,
                };
                // Gone when the scheduler cancelled it or dropped the peer meanwhile.
                let Some((sender, receiver, piece)) = self.flows.parts(flow) else {
                    return;
                };
                self.flows.remove(now, flow);
                self.nodes[receiver as usize]
                    .requests
                    .retain(|request| request.flow != Some(flow));
                let newly = !self.have(receiver).get(piece);
                let peer = self.ids[sender as usize].clone();
                // The model folds the request's trip into the delivery's latency, so a
                // request's answer is one latency: the gap a pipe one request deep leaves.
                let rtt = self.config.latency;
                let done = Event::PieceDone {
                    peer,
                    piece,
                    rtt,
                    in_order: self.config.in_order,
                };
                self.send(receiver, done);
                if newly {
                    self.verified += self.piece_bytes(piece);
                    if let Some((at, how)) = self.origin_stop
                        && self.verified >= at
                    {
                        self.origin_stop = None;
                        self.churn.origin_stopped = Some((now as f64 / 1e9, how));
                        self.stop(0, how);
                        self.queue
                            .push(now + HEALTH_VERDICT, SimEvent::OwnerMarked { origin: 0 });
                    }
                    if let Exit::Downloading { after } = self.nodes[receiver as usize].exit
                        && self.have(receiver).count() >= after
                    {
                        // It leaves with this piece, before telling anyone.
                        self.churn.left_downloading += 1;
                        self.stop(receiver, Gone::Exited);
                        return;
                    }
                    if let Exit::Hangs { after } = self.nodes[receiver as usize].exit
                        && self.have(receiver).count() >= after
                    {
                        self.churn.hung_downloading += 1;
                        self.stop(receiver, Gone::Hung);
                        return;
                    }
                    self.read_on(receiver, now);
                    self.verified_piece(receiver, piece, now);
                }
            }
            SimEvent::HaveBatch { node } => {
                let this = &mut self.nodes[node as usize];
                if this.left.is_some() {
                    return;
                }
                this.haves_sent = Some(now);
                for piece in this.haves_pending.drain(..) {
                    self.queue
                        .push(now + self.latency, SimEvent::Have { node, piece });
                }
            }
            SimEvent::Have { node, piece } => {
                let mut subscribers = std::mem::take(&mut self.scratch);
                subscribers.clear();
                subscribers.extend_from_slice(&self.nodes[node as usize].subscribers);
                for &subscriber in &subscribers {
                    let peer = self.ids[node as usize].clone();
                    self.send(subscriber, Event::Have { peer, piece });
                }
                self.scratch = subscribers;
            }
            SimEvent::Tick { node } => {
                let this = &self.nodes[node as usize];
                if this.completed.is_none() && this.left.is_none() {
                    self.send(node, Event::Tick);
                    self.queue
                        .push(now + nanos(self.config.tick), SimEvent::Tick { node });
                }
            }
            SimEvent::Dropped { node, peer } => {
                self.churn.disconnects += u64::from(self.downloading(node));
                let peer = self.ids[peer as usize].clone();
                self.send(node, Event::Disconnected { peer });
            }
            SimEvent::Failed {
                node,
                sender,
                piece,
            } => {
                self.churn.failed_requests += u64::from(self.downloading(node));
                let peer = self.ids[sender as usize].clone();
                self.send(node, Event::PieceFailed { peer, piece });
            }
            SimEvent::Expire { node } => self.tracker.forget(node),
            SimEvent::OwnerMarked { origin } => self.reshare_without(origin),
        }
    }

    /// `node` verified `piece` at `now`: its sessions hear of it now or with its next batch
    /// (`shoal_swarm::notices`).
    fn verified_piece(&mut self, node: u32, piece: u32, now: Nanos) {
        let this = &mut self.nodes[node as usize];
        let since = this
            .haves_sent
            .map(|at| Duration::from_nanos(now.saturating_sub(at)));
        let delay = nanos(notices::have_delay(since, self.config.have_batch));
        if delay == 0 {
            this.haves_sent = Some(now);
            self.queue
                .push(now + self.latency, SimEvent::Have { node, piece });
            return;
        }
        if this.haves_pending.is_empty() {
            self.queue.push(now + delay, SimEvent::HaveBatch { node });
        }
        this.haves_pending.push(piece);
    }

    /// `node` verified a piece at `now`: its client reads on through the prefix.
    fn read_on(&mut self, node: u32, now: Nanos) {
        let Some(mut reader) = self.nodes[node as usize].reader.take() else {
            return;
        };
        reader.advance(self.have(node), now, |piece| self.piece_bytes(piece));
        self.nodes[node as usize].reader = Some(reader);
    }

    /// `node`'s process exits or hangs now, as `how` says; what its peers see of that follows
    /// one latency later. Either way its own downloads stop, the pieces it was sending stop
    /// moving, and its tracker record expires `peer_ttl` after its last announce.
    fn stop(&mut self, node: u32, how: Gone) {
        let now = self.now;
        let reset = now + self.latency;
        let exited = how == Gone::Exited;
        let this = &mut self.nodes[node as usize];
        this.left = Some(how);
        let complete = this.scheduler.is_none() || this.completed.is_some();
        // A hung node's sessions stand: its subscribers stay.
        let subscribers = if exited {
            std::mem::take(&mut this.subscribers)
        } else {
            Vec::new()
        };
        let expires = this.announced + nanos(self.config.tracker.peer_ttl);
        // Its own downloads stop; the senders' schedulers hear nothing of it.
        self.drop_requests(node, |_, _| true);
        // A complete peer's session just goes quiet (the engine keeps it as usable); a partial
        // one's ends. Told before the failed pieces, so those find the peer already dropped.
        if !complete {
            for subscriber in subscribers {
                self.queue.push(
                    reset,
                    SimEvent::Dropped {
                        node: subscriber,
                        peer: node,
                    },
                );
            }
        }
        // Pieces in flight from it fail at their receivers when it exited; when it hung, their
        // receivers hear nothing.
        for receiver in self.origins..self.nodes.len() as u32 {
            self.drop_requests_then(
                receiver,
                |sender, _| sender == node,
                |queue, sender, piece| {
                    if exited {
                        let failed = SimEvent::Failed {
                            node: receiver,
                            sender,
                            piece,
                        };
                        queue.push(reset, failed);
                    }
                },
            );
        }
        if node >= self.origins {
            self.queue.push(expires.max(now), SimEvent::Expire { node });
        }
    }

    /// The owners other than `gone`, which their health checks just marked, split the pieces
    /// among themselves for super-seeding; each starts a fresh ledger, as an origin's `Seeder`
    /// does when a blob's share changes (`origin/src/replicate.rs`, `share_of`).
    fn reshare_without(&mut self, gone: u32) {
        let owners = self.origins.min(self.config.tracker.replicas);
        let others = (0..owners).filter(|&o| o != gone);
        for (index, origin) in (0u32..).zip(others) {
            self.ledgers[origin as usize] = Ledger::with_share(self.pieces, index, owners - 1);
        }
    }

    /// Whether `node` is an agent still downloading: the one whose scheduler hears events.
    fn downloading(&self, node: u32) -> bool {
        let this = &self.nodes[node as usize];
        this.scheduler.is_some() && this.completed.is_none() && this.left.is_none()
    }

    fn have(&self, node: u32) -> &Bitfield {
        match &self.nodes[node as usize].scheduler {
            Some(scheduler) => scheduler.have(),
            None => &self.full,
        }
    }

    fn piece_bytes(&self, piece: u32) -> u64 {
        let start = u64::from(piece) * self.piece_length;
        self.piece_length.min(self.config.blob_size - start)
    }

    fn node_of(&self, peer: &PeerId) -> Option<u32> {
        self.index.get(peer).copied()
    }

    /// Feeds one event to an agent's scheduler and carries out its actions.
    fn send(&mut self, node: u32, event: Event) {
        let now = self.now;
        let this = &mut self.nodes[node as usize];
        let Some(scheduler) = this.scheduler.as_mut() else {
            return;
        };
        if this.left.is_some() {
            return;
        }
        if this.completed.is_some() {
            // Finished downloads only close late sessions; the agent keeps serving.
            if let Event::Connected { peer, .. } = event
                && let Some(peer) = self.node_of(&peer)
            {
                self.unsubscribe(node, peer);
            }
            return;
        }
        let actions = scheduler.handle(now / 1_000_000, event);
        for action in actions {
            if self.nodes[node as usize].left.is_some() {
                // It left on completing: nothing of it runs any more.
                break;
            }
            self.apply(node, action);
        }
    }

    fn apply(&mut self, node: u32, action: Action) {
        let now = self.now;
        match action {
            Action::Connect { peer } => {
                if let Some(peer) = self.node_of(&peer) {
                    self.queue
                        .push(now + 2 * self.latency, SimEvent::Connected { node, peer });
                }
            }
            Action::Request {
                peer,
                piece,
                insist,
            } => {
                let Some(sender) = self.node_of(&peer) else {
                    return;
                };
                if self.nodes[sender as usize].left == Some(Gone::Hung) {
                    // Never answered: the scheduler's piece timeout cancels it.
                    return;
                }
                if self.nodes[sender as usize].left.is_some() {
                    // Nobody listens there any more: refused a round trip later.
                    self.queue.push(
                        now + 2 * self.latency,
                        SimEvent::Failed {
                            node,
                            sender,
                            piece,
                        },
                    );
                    return;
                }
                let origin = sender < self.origins;
                self.insisting_to_origins += u64::from(origin && insist);
                let slots = if origin {
                    self.config.origin_upload_slots
                } else {
                    self.config.upload_slots
                };
                // In order, a request behind one still being sent waits on that connection,
                // which holds one upload slot for all of them.
                let behind = self.sending_to(node, sender);
                if !behind && slots::busy(self.flows.uploading(sender), slots) {
                    // The sender refuses at once, as the peer service does; the answer takes a
                    // round trip.
                    if origin {
                        self.busy_from_origins += 1;
                    } else {
                        self.busy_from_agents += 1;
                    }
                    self.queue.push(
                        now + 2 * self.latency,
                        SimEvent::Busy {
                            node,
                            sender,
                            piece,
                        },
                    );
                    return;
                }
                // An agent bounds its copies of one piece, and an origin applies its
                // super-seeding policy, as their peer services do after taking the slot.
                let mut copy = None;
                let elsewhere = if origin {
                    self.config.seeding.as_ref().and_then(|seeding| {
                        match self.ledgers[sender as usize].decide(
                            seeding,
                            u64::from(node),
                            piece,
                            insist,
                            now / 1_000_000,
                        ) {
                            Decision::Elsewhere { instead } => Some(instead),
                            Decision::Serve => None,
                        }
                    })
                } else if let Some(copies) = &self.copies {
                    copy = copies.try_take((sender, piece), insist);
                    copy.is_none().then_some(None)
                } else {
                    None
                };
                if let Some(instead) = elsewhere {
                    if origin {
                        self.elsewhere_from_origins += 1;
                    } else {
                        self.elsewhere_from_agents += 1;
                    }
                    self.queue.push(
                        now + 2 * self.latency,
                        SimEvent::Elsewhere {
                            node,
                            sender,
                            piece,
                            instead,
                        },
                    );
                    return;
                }
                self.request(node, sender, piece, copy, behind);
            }
            Action::Cancel { peer, piece } => {
                if let Some(sender) = self.node_of(&peer) {
                    self.drop_requests(node, |s, p| s == sender && p == piece);
                }
            }
            Action::Disconnect { peer } | Action::Blacklist { peer, .. } => {
                if let Some(sender) = self.node_of(&peer) {
                    self.drop_requests(node, |s, _| s == sender);
                    self.unsubscribe(node, sender);
                }
            }
            Action::Stale { .. } => self.stale_requests += 1,
            Action::Complete => {
                self.nodes[node as usize].completed = Some(now);
                self.complete += 1;
                if self.complete == 1 {
                    let (sent, capacity) = self.agents_sent();
                    let capacity = self.uplinks.capacity + capacity;
                    self.uplinks.report.before_first_complete =
                        (capacity > 0.0).then(|| sent / capacity);
                }
                if self.nodes[node as usize].exit == Exit::Complete {
                    self.churn.left_complete += 1;
                    self.stop(node, Gone::Exited);
                } else {
                    // The engine starts seeding: the tracker learns it is complete.
                    self.queue
                        .push(now + self.latency, SimEvent::Announce { node });
                }
            }
        }
    }

    /// Asks `sender` for `piece`: its flow starts now, or once the answers before it are sent
    /// when it is `behind` one (in order).
    fn request(
        &mut self,
        node: u32,
        sender: u32,
        piece: u32,
        copy: Option<PieceCopy<(u32, u32)>>,
        behind: bool,
    ) {
        let flow = (!behind).then(|| {
            let bytes = self.piece_bytes(piece);
            self.flows.start(self.now, sender, node, piece, bytes)
        });
        self.asked += 1;
        self.nodes[node as usize].requests.push(Request {
            sender,
            piece,
            flow,
            asked: self.asked,
            _copy: copy,
        });
    }

    /// Whether, in order, `sender` is still sending `node` an answer or has one waiting: a
    /// new request to it then waits too. Never with HTTP/2's interleaving.
    fn sending_to(&self, node: u32, sender: u32) -> bool {
        self.config.in_order
            && self.nodes[node as usize].requests.iter().any(|request| {
                request.sender == sender
                    && request.flow.is_none_or(|flow| self.flows.is_moving(flow))
            })
    }

    /// In order: `sender` starts sending `receiver` the earliest answer waiting, unless it is
    /// still sending one.
    fn send_next(&mut self, receiver: u32, sender: u32) {
        if !self.config.in_order {
            return;
        }
        let requests = &self.nodes[receiver as usize].requests;
        let moving = requests.iter().any(|request| {
            request.sender == sender && request.flow.is_some_and(|flow| self.flows.is_moving(flow))
        });
        let next = requests
            .iter()
            .enumerate()
            .filter(|(_, request)| request.sender == sender && request.flow.is_none())
            .min_by_key(|(_, request)| request.asked)
            .map(|(at, request)| (at, request.piece));
        let Some((at, piece)) = next.filter(|_| !moving) else {
            return;
        };
        let bytes = self.piece_bytes(piece);
        let flow = self.flows.start(self.now, sender, receiver, piece, bytes);
        self.nodes[receiver as usize].requests[at].flow = Some(flow);
    }

    fn drop_requests(&mut self, node: u32, matches: impl Fn(u32, u32) -> bool) {
        self.drop_requests_then(node, matches, |_, _, _| {});
    }

    /// Drops `node`'s requests that `matches` (sender, piece), ending their flows, and calls
    /// `dropped` with the queue, sender and piece of each.
    fn drop_requests_then(
        &mut self,
        node: u32,
        matches: impl Fn(u32, u32) -> bool,
        mut dropped: impl FnMut(&mut Queue, u32, u32),
    ) {
        let requests = &mut self.nodes[node as usize].requests;
        let mut senders = Vec::new();
        let mut at = 0;
        while at < requests.len() {
            let Request {
                sender,
                piece,
                flow,
                ..
            } = requests[at];
            if matches(sender, piece) {
                requests.swap_remove(at);
                if let Some(flow) = flow {
                    self.flows.remove(self.now, flow);
                    senders.push(sender);
                }
                dropped(&mut self.queue, sender, piece);
            } else {
                at += 1;
            }
        }
        // In order: a sender cut off mid-answer goes on to the next one waiting.
        for sender in senders {
            self.send_next(node, sender);
        }
    }

    fn unsubscribe(&mut self, node: u32, peer: u32) {
        let subscribers = &mut self.nodes[peer as usize].subscribers;
        if let Some(at) = subscribers.iter().position(|&s| s == node) {
            subscribers.swap_remove(at);
        }
    }

    fn report(&self, wall: Duration) -> Report {
        let mut times: Vec<f64> = self
            .nodes
            .iter()
            .filter_map(|node| {
                let done = node.completed?;
                Some((done - node.arrived) as f64 / 1e9)
            })
            .collect();
        let mut read: Vec<f64> = self
            .nodes
            .iter()
            .filter(|node| node.completed.is_some())
            .filter_map(|node| {
                let done = node.reader.as_ref()?.done(self.pieces)?;
                Some((done - node.arrived) as f64 / 1e9)
            })
            .collect();
        let link_limit = self.config.link_limit();
        let seconds = Distribution::of(&mut times);
        let read = Distribution::of(&mut read);
        let origin_egress: f64 = (0..self.origins).map(|o| self.flows.sent(o)).sum();
        let stayed = self.config.peers - self.churn.left_downloading - self.churn.hung_downloading;
        Report {
            peers: self.config.peers,
            stayed,
            complete: self.complete,
            every_stayer_complete: self.complete >= stayed,
            blob_size: self.config.blob_size,
            piece_length: self.piece_length,
            pieces: u64::from(self.pieces),
            link_limit,
            ratio: seconds.map(|s| s.scaled(link_limit)),
            seconds,
            read_ratio: read.map(|s| s.scaled(link_limit)),
            read,
            origin_egress_bytes: origin_egress.round() as u64,
            origin_egress_ratio: origin_egress / self.config.blob_size as f64,
            uplinks: self.uplinks.report.clone(),
            busy_from_origins: self.busy_from_origins,
            busy_from_agents: self.busy_from_agents,
            stale_requests: self.stale_requests,
            churn: self.churn.clone(),
            elsewhere_from_origins: self.elsewhere_from_origins,
            elsewhere_from_agents: self.elsewhere_from_agents,
            insisting_to_origins: self.insisting_to_origins,
            virtual_seconds: self.now as f64 / 1e9,
            events: self.queue.processed(),
            wall_seconds: wall.as_secs_f64(),
        }
    }
}

/// Runs one simulation.
pub fn simulate(config: SimConfig) -> Result<Report, ConfigError> {
    Ok(Swarm::new(config)?.run())
}
