//! The flow-level bandwidth model. Every piece transfer is a flow from a sender's upload link to
//! a receiver's download link, and the flows get the max-min fair allocation over all links
//! (progressive filling): the fluid approximation of TCP flows sharing links. A share one end of
//! a flow cannot use goes to the other flows at the other end. No slow start, no loss.
//!
//! Computing the allocation over the whole swarm costs O(flows × log links), too much to do at
//! every one of millions of starts and finishes. So it is recomputed at most once per
//! `interval` of virtual time (a rating tick), when flows started or ended since the last one.
//! Between ticks:
//! - a flow that ends leaves its rate unused at both ends until the next tick;
//! - a flow that starts gets a provisional rate out of what its two ends have left, split
//!   evenly among the flows that started at that end in the same instant (zero if nothing is
//!   left).
//!
//! No link is ever given more than its rate. With `interval` zero the allocation is recomputed
//! at the end of every instant in which a flow started or ended: exact max-min, which the tests
//! hold the ticks against.
//!
//! A flow is given a wake-up only when it finishes before the next tick, so a tick costs one
//! pass over the transferring flows and queues events only for those about to finish. A tick
//! with nothing changed since the last rating stops the ticking: every flow then gets its
//! wake-up at its finish time, and the next start or finish rates at once (or one interval after
//! the last rating, if that is later). A flow whose rate drops keeps its (now early) wake-up and
//! is re-examined when it fires.
//!
//! Senders never queue: the swarm answers requests beyond a sender's upload slots "busy"
//! before they become flows, as Shoal's peer service does.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;

use crate::queue::{Nanos, Queue, SimEvent};

/// Bytes left below which a flow counts as finished (float rounding of rate × time).
const DONE_EPSILON: f64 = 0.5;

/// Bytes per nanosecond below which what a link has left is float rounding, not capacity.
const RATE_EPSILON: f64 = 1e-9;

/// One link pair of a node, in bytes per second.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Link {
    pub(crate) up: f64,
    pub(crate) down: f64,
}

struct Flow {
    sender: u32,
    receiver: u32,
    piece: u32,
    /// Bumped every time the slot is reused, so queued events for an old flow are ignored.
    generation: u32,
    state: State,
    live: bool,
    /// Given a rate since it started (by a rating or provisionally).
    rated: bool,
    /// Rated in the progressive filling under way.
    frozen: bool,
    /// Bytes left at `last`, moving at `rate` bytes per nanosecond.
    remaining: f64,
    rate: f64,
    last: Nanos,
    /// The pending wake-up that counts (older ones are stale), and its time.
    wake_seq: u64,
    wake_at: Nanos,
}

impl Flow {
    /// Live and on its links.
    fn moving(&self) -> bool {
        self.live && self.state == State::Transferring
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Moving bytes.
    Transferring,
    /// Finished, its last byte on the way to the receiver.
    Delivering,
}

/// A flow's identity as the engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlowRef {
    pub(crate) id: u32,
    pub(crate) generation: u32,
}

/// A positive float as an order-preserving key (the bits of non-negative floats sort as they do).
fn key(value: f64) -> u64 {
    value.max(0.0).to_bits()
}

/// Puts `link` in a rating's heap at `share`, replacing its entry there.
fn queue(heap: &mut BinaryHeap<Reverse<(u64, u32)>>, queued: &mut [u64], link: usize, share: f64) {
    queued[link] = key(share);
    heap.push(Reverse((key(share), link as u32)));
}

/// All flows of the swarm, and which links carry which.
pub(crate) struct Flows {
    links: Vec<Link>,
    flows: Vec<Flow>,
    free: Vec<u32>,
    /// Transferring flows by sender and by receiver.
    uploads: Vec<Vec<u32>>,
    downloads: Vec<Vec<u32>>,
    /// Bytes per nanosecond given out at each node's upload and download link.
    used_up: Vec<f64>,
    used_down: Vec<f64>,
    /// Flows started since the last settle (some may have ended since).
    fresh: Vec<u32>,
    /// A flow started or ended since the last rating.
    changed: bool,
    transferring: usize,
    /// At most one rating per this much virtual time; zero rates at every instant.
    interval: Nanos,
    /// When the last rating ran.
    rated_at: Option<Nanos>,
    /// The pending rating tick (`Nanos::MAX`: none).
    tick_at: Nanos,
    /// Bytes each node has sent (cancelled transfers included: they used the link).
    sent: Vec<f64>,
    /// Progressive filling's per-link state (links `0..n` are uploads, `n..2n` downloads),
    /// kept between ratings for their allocations.
    left: Vec<f64>,
    count: Vec<u32>,
    /// Links with flows left to rate, by share. A link's share only grows as flows elsewhere
    /// are frozen (at most at its equal share), so its entry is left in place as a lower bound;
    /// only a rounding that lowers it pushes a new one.
    heap: BinaryHeap<Reverse<(u64, u32)>>,
    /// The key of each link's entry in the heap; entries with another key are stale.
    queued: Vec<u64>,
    /// Per-node counts of the fresh flows of one settle (zero between settles).
    fresh_up: Vec<u32>,
    fresh_down: Vec<u32>,
}

impl Flows {
    /// Flows over `links` (one per node), rated at most once per `interval`.
    pub(crate) fn new(links: Vec<Link>, interval: Nanos) -> Flows {
        let nodes = links.len();
        Flows {
            links,
            flows: Vec::new(),
            free: Vec::new(),
            uploads: vec![Vec::new(); nodes],
            downloads: vec![Vec::new(); nodes],
            used_up: vec![0.0; nodes],
            used_down: vec![0.0; nodes],
            fresh: Vec::new(),
            changed: false,
            transferring: 0,
            interval,
            rated_at: None,
            tick_at: Nanos::MAX,
            sent: vec![0.0; nodes],
            left: vec![0.0; 2 * nodes],
            count: vec![0; 2 * nodes],
            heap: BinaryHeap::new(),
            queued: vec![0; 2 * nodes],
            fresh_up: vec![0; nodes],
            fresh_down: vec![0; nodes],
        }
    }

    /// Bytes `node` has sent up to the last time its flows were brought up to date (every
    /// rating, finish and cancel, and [`Flows::flush`]).
    pub(crate) fn sent(&self, node: u32) -> f64 {
        self.sent[node as usize]
    }

    /// Bytes the nodes in `nodes` have sent up to `now`, read without bringing any flow up to
    /// date: that would change their float rounding, and so the order of later events, so a
    /// measurement would change the run it measures.
    pub(crate) fn sent_until(&self, now: Nanos, nodes: Range<u32>) -> f64 {
        let mut total: f64 = nodes.clone().map(|node| self.sent[node as usize]).sum();
        for node in nodes {
            for &id in &self.uploads[node as usize] {
                let flow = &self.flows[id as usize];
                total += (flow.rate * now.saturating_sub(flow.last) as f64).min(flow.remaining);
            }
        }
        total
    }

    /// Pieces `node` is uploading right now.
    pub(crate) fn uploading(&self, node: u32) -> usize {
        self.uploads[node as usize].len()
    }

    /// Starts a transfer of `bytes` at `now`; it gets its rate when the instant is settled.
    pub(crate) fn start(
        &mut self,
        now: Nanos,
        sender: u32,
        receiver: u32,
        piece: u32,
        bytes: u64,
    ) -> FlowRef {
        let flow = Flow {
            sender,
            receiver,
            piece,
            generation: 0,
            state: State::Transferring,
            live: true,
            rated: false,
            frozen: false,
            remaining: bytes as f64,
            rate: 0.0,
            last: now,
            wake_seq: 0,
            wake_at: Nanos::MAX,
        };
        let id = match self.free.pop() {
            Some(id) => {
                let slot = &mut self.flows[id as usize];
                let generation = slot.generation.wrapping_add(1);
                *slot = Flow { generation, ..flow };
                id
            }
            None => {
                self.flows.push(flow);
                u32::try_from(self.flows.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.uploads[sender as usize].push(id);
        self.downloads[receiver as usize].push(id);
        self.fresh.push(id);
        self.transferring += 1;
        self.changed = true;
        FlowRef {
            id,
            generation: self.flows[id as usize].generation,
        }
    }

    pub(crate) fn is_live(&self, flow: FlowRef) -> bool {
        self.flows
            .get(flow.id as usize)
            .is_some_and(|f| f.live && f.generation == flow.generation)
    }

    /// Whether a flow is live and still moving bytes (not on its way to the receiver).
    pub(crate) fn is_moving(&self, flow: FlowRef) -> bool {
        self.is_live(flow) && self.flows[flow.id as usize].moving()
    }

    /// The sender, receiver and piece of a live flow.
    pub(crate) fn parts(&self, flow: FlowRef) -> Option<(u32, u32, u32)> {
        self.flows
            .get(flow.id as usize)
            .filter(|f| f.live && f.generation == flow.generation)
            .map(|f| (f.sender, f.receiver, f.piece))
    }

    /// Ends a flow (delivered, cancelled or its session dropped). Its rate stays unused until
    /// the next rating.
    pub(crate) fn remove(&mut self, now: Nanos, flow: FlowRef) {
        if !self.is_live(flow) {
            return;
        }
        let id = flow.id;
        if self.flows[id as usize].state == State::Transferring {
            self.advance(now, id);
            self.detach(id);
        }
        self.flows[id as usize].live = false;
        self.free.push(id);
    }

    /// Takes a transferring flow off its links.
    fn detach(&mut self, id: u32) {
        let flow = &mut self.flows[id as usize];
        flow.state = State::Delivering;
        flow.wake_at = Nanos::MAX;
        let (sender, receiver, rate) = (flow.sender as usize, flow.receiver as usize, flow.rate);
        for list in [&mut self.uploads[sender], &mut self.downloads[receiver]] {
            if let Some(at) = list.iter().position(|&x| x == id) {
                list.swap_remove(at);
            }
        }
        self.used_up[sender] -= rate;
        self.used_down[receiver] -= rate;
        self.transferring -= 1;
        self.changed = true;
    }

    /// Accounts the bytes a transferring flow moved since its last update.
    fn advance(&mut self, now: Nanos, id: u32) {
        let flow = &mut self.flows[id as usize];
        let moved = (flow.rate * now.saturating_sub(flow.last) as f64).min(flow.remaining);
        flow.remaining -= moved;
        flow.last = now;
        self.sent[flow.sender as usize] += moved;
    }

    /// Queues a wake-up at a flow's finish time at its current rate, if that is no later than
    /// the pending tick (which re-rates and re-schedules) and no wake-up at or before it is
    /// pending. The flow must be up to date.
    fn schedule(&mut self, now: Nanos, id: u32, queue: &mut Queue) {
        let horizon = self.tick_at;
        let flow = &mut self.flows[id as usize];
        if flow.rate <= 0.0 {
            return;
        }
        let finish = now.saturating_add(((flow.remaining / flow.rate).ceil() as Nanos).max(1));
        if finish <= horizon && finish < flow.wake_at {
            flow.wake_at = finish;
            flow.wake_seq = queue.push(finish, SimEvent::FlowWake { flow: id });
        }
    }

    /// A flow's wake-up fired: the flow moved its last byte (returned, now off its links but
    /// live until [`Flows::remove`]) or is re-scheduled.
    pub(crate) fn wake(
        &mut self,
        now: Nanos,
        id: u32,
        seq: u64,
        queue: &mut Queue,
    ) -> Option<FlowRef> {
        let flow = self.flows.get(id as usize)?;
        if !flow.moving() || flow.wake_seq != seq {
            return None;
        }
        self.advance(now, id);
        let flow = &mut self.flows[id as usize];
        flow.wake_at = Nanos::MAX;
        if flow.remaining > DONE_EPSILON {
            self.schedule(now, id, queue);
            return None;
        }
        let finished = FlowRef {
            id,
            generation: flow.generation,
        };
        self.detach(id);
        Some(finished)
    }

    /// Settles the instant, after its events: a rating when one is due, or else provisional
    /// rates for the flows that started in it.
    pub(crate) fn settle(&mut self, now: Nanos, queue: &mut Queue) {
        let due = match self.rated_at {
            _ if self.interval == 0 => self.changed,
            // A tick: rate if anything changed, and stop ticking if nothing did.
            _ if now >= self.tick_at => true,
            // Not ticking: the first change since the ticks stopped rates at once, unless the
            // last rating is too recent (then a tick is set for when it may run).
            Some(at) if self.tick_at == Nanos::MAX && self.changed => {
                if now >= at + self.interval {
                    true
                } else {
                    self.tick(at + self.interval, queue);
                    false
                }
            }
            None => self.changed,
            Some(_) => false,
        };
        if due {
            self.tick_at = Nanos::MAX;
            if self.changed {
                self.rate(now);
                if self.interval > 0 && self.transferring > 0 {
                    self.tick(now + self.interval, queue);
                }
            }
            self.fresh.clear();
            for id in 0..self.flows.len() as u32 {
                let flow = &self.flows[id as usize];
                if flow.moving() {
                    self.schedule_from(id, queue);
                }
            }
        } else if !self.fresh.is_empty() {
            self.provisional(now, queue);
        }
    }

    /// Queues a wake-up for a flow brought up to date at `flow.last`.
    fn schedule_from(&mut self, id: u32, queue: &mut Queue) {
        let last = self.flows[id as usize].last;
        self.schedule(last, id, queue);
    }

    fn tick(&mut self, at: Nanos, queue: &mut Queue) {
        self.tick_at = at;
        queue.push(at, SimEvent::Rating);
    }

    /// Rates the flows that started this instant out of what their ends have left.
    fn provisional(&mut self, now: Nanos, queue: &mut Queue) {
        let mut fresh = std::mem::take(&mut self.fresh);
        // A slot reused within the instant is listed twice; flows that ended are skipped.
        fresh.retain(|&id| {
            let flow = &mut self.flows[id as usize];
            if !flow.moving() || flow.rated {
                return false;
            }
            flow.rated = true;
            true
        });
        for &id in &fresh {
            let flow = &self.flows[id as usize];
            self.fresh_up[flow.sender as usize] += 1;
            self.fresh_down[flow.receiver as usize] += 1;
        }
        // Every rate from what the ends had before this instant, then the ends charged.
        for &id in &fresh {
            let flow = &self.flows[id as usize];
            let (s, r) = (flow.sender as usize, flow.receiver as usize);
            let up = (self.links[s].up / 1e9 - self.used_up[s]).max(0.0);
            let down = (self.links[r].down / 1e9 - self.used_down[r]).max(0.0);
            let rate = (up / f64::from(self.fresh_up[s])).min(down / f64::from(self.fresh_down[r]));
            let flow = &mut self.flows[id as usize];
            flow.rate = if rate < RATE_EPSILON { 0.0 } else { rate };
            flow.last = now;
        }
        for &id in &fresh {
            let flow = &self.flows[id as usize];
            let (s, r, rate) = (flow.sender as usize, flow.receiver as usize, flow.rate);
            self.used_up[s] += rate;
            self.used_down[r] += rate;
            self.fresh_up[s] = 0;
            self.fresh_down[r] = 0;
            self.schedule(now, id, queue);
        }
        fresh.clear();
        self.fresh = fresh;
    }

    /// The max-min fair allocation by progressive filling: the link offering its unrated flows
    /// the smallest equal share gives them that share, which its other flows' far ends then
    /// have less of, until every flow is rated.
    fn rate(&mut self, now: Nanos) {
        let nodes = self.links.len();
        for id in 0..self.flows.len() as u32 {
            let flow = &self.flows[id as usize];
            if flow.moving() {
                self.advance(now, id);
                let flow = &mut self.flows[id as usize];
                flow.frozen = false;
                flow.rated = true;
            }
        }
        self.heap.clear();
        for node in 0..nodes {
            for (link, capacity, flows) in [
                (node, self.links[node].up, self.uploads[node].len()),
                (
                    nodes + node,
                    self.links[node].down,
                    self.downloads[node].len(),
                ),
            ] {
                self.left[link] = capacity / 1e9;
                self.count[link] = flows as u32;
                if flows > 0 {
                    queue(
                        &mut self.heap,
                        &mut self.queued,
                        link,
                        self.left[link] / flows as f64,
                    );
                }
            }
        }
        // A popped share that has grown since its push goes back in at its current value, so
        // links are rated in the order of their current shares (ties by link, as the heap
        // orders them) without an entry per change.
        while let Some(Reverse((pushed, link))) = self.heap.pop() {
            let link = link as usize;
            if self.count[link] == 0 || pushed != self.queued[link] {
                continue;
            }
            let share = self.left[link] / f64::from(self.count[link]);
            if key(share) > pushed {
                queue(&mut self.heap, &mut self.queued, link, share);
                continue;
            }
            let (node, upload) = if link < nodes {
                (link, true)
            } else {
                (link - nodes, false)
            };
            let list = if upload {
                &self.uploads[node]
            } else {
                &self.downloads[node]
            };
            for &id in list {
                let flow = &mut self.flows[id as usize];
                if flow.frozen {
                    continue;
                }
                flow.frozen = true;
                flow.rate = share;
                let other = if upload {
                    nodes + flow.receiver as usize
                } else {
                    flow.sender as usize
                };
                self.left[other] = (self.left[other] - share).max(0.0);
                self.count[other] -= 1;
                if self.count[other] > 0 {
                    let next = self.left[other] / f64::from(self.count[other]);
                    if key(next) < self.queued[other] {
                        queue(&mut self.heap, &mut self.queued, other, next);
                    }
                }
            }
            self.count[link] = 0;
        }
        self.used_up.fill(0.0);
        self.used_down.fill(0.0);
        for flow in &self.flows {
            if flow.moving() {
                self.used_up[flow.sender as usize] += flow.rate;
                self.used_down[flow.receiver as usize] += flow.rate;
            }
        }
        self.changed = false;
        self.rated_at = Some(now);
    }

    /// Brings every byte count up to `now` (for the report at the end of a run).
    pub(crate) fn flush(&mut self, now: Nanos) {
        for id in 0..self.flows.len() as u32 {
            let flow = &self.flows[id as usize];
            if flow.moving() {
                self.advance(now, id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    /// Drives `flows` the way the swarm does (every event of an instant, then one settle),
    /// delivering finished flows at once; calls `at` with the time after each instant. Returns
    /// each finished flow's piece and finish time, in finishing order.
    fn run(
        flows: &mut Flows,
        queue: &mut Queue,
        mut at: impl FnMut(Nanos, &mut Flows),
    ) -> Vec<(u32, Nanos)> {
        let mut out = Vec::new();
        flows.settle(0, queue);
        while let Some(time) = queue.peek_time() {
            while queue.peek_time() == Some(time) {
                let Some((_, seq, event)) = queue.pop() else {
                    break;
                };
                if let SimEvent::FlowWake { flow } = event
                    && let Some(done) = flows.wake(time, flow, seq, queue)
                {
                    let (_, _, piece) = flows.parts(done).expect("a finished flow is live");
                    out.push((piece, time));
                    flows.remove(time, done);
                }
            }
            at(time, flows);
            flows.settle(time, queue);
            flows.assert_within_links();
        }
        out
    }

    impl Flows {
        /// No link gives out more than its rate.
        fn assert_within_links(&self) {
            let mut up = vec![0.0; self.links.len()];
            let mut down = vec![0.0; self.links.len()];
            for flow in &self.flows {
                if flow.moving() {
                    up[flow.sender as usize] += flow.rate;
                    down[flow.receiver as usize] += flow.rate;
                }
            }
            for (node, link) in self.links.iter().enumerate() {
                assert!(up[node] <= link.up / 1e9 * (1.0 + 1e-9), "node {node} up");
                assert!(
                    down[node] <= link.down / 1e9 * (1.0 + 1e-9),
                    "node {node} down"
                );
            }
        }
    }

    fn links(list: &[(f64, f64)]) -> Vec<Link> {
        list.iter().map(|&(up, down)| Link { up, down }).collect()
    }

    /// Finish times agree with the hand computation to within a microsecond (rounding up to
    /// whole nanoseconds at every rate change).
    fn assert_times(got: &[(u32, Nanos)], expected: &[(u32, f64)]) {
        assert_eq!(got.len(), expected.len(), "{got:?}");
        for (&(piece, time), &(want_piece, seconds)) in got.iter().zip(expected) {
            assert_eq!(piece, want_piece, "{got:?}");
            let want = seconds * 1e9;
            assert!(
                (time as f64 - want).abs() < 1_000.0,
                "piece {piece} finished at {time} ns, expected {want} ns ({got:?})"
            );
        }
    }

    #[test]
    fn two_flows_share_a_sender_then_the_survivor_gets_the_whole_link() {
        // Sender 0 at 100 MB/s, receivers far faster: 50 MB/s each until the 10 MB flow is done
        // at 0.2 s; the 20 MB flow then has 10 MB left at 100 MB/s: done at 0.3 s.
        let mut flows = Flows::new(links(&[(100e6, 1.0), (1.0, 1e9), (1.0, 1e9)]), 0);
        let mut queue = Queue::default();
        flows.start(0, 0, 1, 1, 10_000_000);
        flows.start(0, 0, 2, 2, 20_000_000);
        let done = run(&mut flows, &mut queue, |_, _| {});
        assert_times(&done, &[(1, 0.2), (2, 0.3)]);
        assert!((flows.sent(0) - 30e6).abs() < 1.0, "{}", flows.sent(0));
    }

    #[test]
    fn what_a_slow_receiver_leaves_of_its_senders_share_goes_to_the_other_flows() {
        // Sender 0 at 300 MB/s, three flows. Receiver 1 takes only 50 MB/s; the 250 MB/s left
        // goes to the flows to receivers 2 and 3, 125 MB/s each. Flow 2 (10 MB) is done at
        // 0.08 s; flow 3 (35 MB, 25 MB left) then gets 250 MB/s: done at 0.18 s. Flow 1 (10 MB
        // at 50 MB/s throughout) is done at 0.2 s.
        let mut flows = Flows::new(
            links(&[(300e6, 1.0), (1.0, 50e6), (1.0, 1e9), (1.0, 1e9)]),
            0,
        );
        let mut queue = Queue::default();
        flows.start(0, 0, 1, 1, 10_000_000);
        flows.start(0, 0, 2, 2, 10_000_000);
        flows.start(0, 0, 3, 3, 35_000_000);
        let done = run(&mut flows, &mut queue, |_, _| {});
        assert_times(&done, &[(2, 0.08), (3, 0.18), (1, 0.2)]);
        assert!((flows.sent(0) - 55e6).abs() < 1.0, "{}", flows.sent(0));
    }

    #[test]
    fn a_flow_reaches_its_receivers_limit_when_the_senders_share_rises() {
        // Sender 0 at 100 MB/s, three flows at 33.3 MB/s; receiver 1 takes 40 MB/s. Flow 2
        // (1 MB) is done at 0.03 s; flow 1 then moves at its receiver's 40 MB/s (7 MB left: done
        // at 0.205 s) and flow 3 gets the other 60 MB/s (9 MB left: done at 0.18 s).
        let mut flows = Flows::new(
            links(&[(100e6, 1.0), (1.0, 40e6), (1.0, 1e9), (1.0, 1e9)]),
            0,
        );
        let mut queue = Queue::default();
        flows.start(0, 0, 1, 1, 8_000_000);
        flows.start(0, 0, 2, 2, 1_000_000);
        flows.start(0, 0, 3, 3, 10_000_000);
        let done = run(&mut flows, &mut queue, |_, _| {});
        assert_times(&done, &[(2, 0.03), (3, 0.18), (1, 0.205)]);
    }

    #[test]
    fn a_flow_slows_to_its_senders_share_when_the_sender_gets_busier() {
        // Sender 0 at 100 MB/s with one flow to receiver 1 (40 MB/s). At 0.1 s (4 MB moved)
        // three 1 GB/s receivers start 10 MB each: 25 MB/s for every flow. Flow 1 (6 MB left)
        // is done at 0.34 s; the others have 4 MB left then, at 33.3 MB/s each: done at 0.46 s.
        let mut flows = Flows::new(
            links(&[
                (100e6, 1.0),
                (1.0, 40e6),
                (1.0, 1e9),
                (1.0, 1e9),
                (1.0, 1e9),
            ]),
            0,
        );
        let mut queue = Queue::default();
        flows.start(0, 0, 1, 1, 10_000_000);
        // A tick at 0.1 s to start the others from.
        queue.push(100 * MS, SimEvent::Tick { node: 0 });
        let done = run(&mut flows, &mut queue, |time, flows| {
            if time == 100 * MS {
                for receiver in 2..5 {
                    flows.start(time, 0, receiver, receiver, 10_000_000);
                }
            }
        });
        assert_times(&done, &[(1, 0.34), (2, 0.46), (3, 0.46), (4, 0.46)]);
    }

    #[test]
    fn a_receiver_shares_its_link_among_its_senders() {
        // Receiver 2 at 100 MB/s from two 1 GB/s senders: 50 MB/s each; the 10 MB flow is done
        // at 0.2 s, the 20 MB one then gets 100 MB/s for its last 10 MB: done at 0.3 s.
        let mut flows = Flows::new(links(&[(1e9, 1.0), (1e9, 1.0), (1.0, 100e6)]), 0);
        let mut queue = Queue::default();
        flows.start(0, 0, 2, 1, 10_000_000);
        flows.start(0, 1, 2, 2, 20_000_000);
        let done = run(&mut flows, &mut queue, |_, _| {});
        assert_times(&done, &[(1, 0.2), (2, 0.3)]);
    }

    #[test]
    fn a_cancelled_flow_hands_its_share_back_and_counts_what_it_sent() {
        // Two 10 MB flows at 50 MB/s each; one is cancelled at 0.05 s (2.5 MB sent). The other,
        // 7.5 MB left, then has 100 MB/s: done at 0.125 s; the sender sent 12.5 MB in all.
        let mut flows = Flows::new(links(&[(100e6, 1.0), (1.0, 1e9), (1.0, 1e9)]), 0);
        let mut queue = Queue::default();
        let cancelled = flows.start(0, 0, 1, 1, 10_000_000);
        flows.start(0, 0, 2, 2, 10_000_000);
        queue.push(50 * MS, SimEvent::Tick { node: 0 });
        let done = run(&mut flows, &mut queue, |time, flows| {
            if time == 50 * MS {
                flows.remove(time, cancelled);
            }
        });
        assert_times(&done, &[(2, 0.125)]);
        assert!((flows.sent(0) - 12.5e6).abs() < 1.0, "{}", flows.sent(0));
    }

    #[test]
    fn between_ticks_an_ended_flows_rate_waits_for_the_next_tick() {
        // Ticks every 10 ms. Two flows at 50 MB/s share a 100 MB/s sender; the 0.25 MB one is
        // done at 5 ms. The other keeps 50 MB/s until the tick at 10 ms: 0.5 MB moved, 4.5 MB
        // left at 100 MB/s, done at 55 ms (exact sharing: 52.5 ms).
        let mut flows = Flows::new(links(&[(100e6, 1.0), (1.0, 1e9), (1.0, 1e9)]), 10 * MS);
        let mut queue = Queue::default();
        flows.start(0, 0, 1, 1, 250_000);
        flows.start(0, 0, 2, 2, 5_000_000);
        let done = run(&mut flows, &mut queue, |_, _| {});
        assert_times(&done, &[(1, 0.005), (2, 0.055)]);
        assert!((flows.sent(0) - 5.25e6).abs() < 1.0, "{}", flows.sent(0));
    }

    #[test]
    fn a_flow_starting_between_ticks_gets_what_its_ends_have_left_until_the_next_tick() {
        // Ticks every 10 ms. One flow has the whole 100 MB/s sender from 0. A second starts at
        // 5 ms: the sender has nothing left, so it waits for the tick at 10 ms, then both move at
        // 50 MB/s; its 1 MB is done at 30 ms. The first (10 MB) has 2 MB moved then. The ticks
        // stopped at 20 ms (nothing had changed), so that end is rated at once and the first
        // flow has the whole link for its last 8 MB: done at 110 ms.
        let mut flows = Flows::new(links(&[(100e6, 1.0), (1.0, 1e9), (1.0, 1e9)]), 10 * MS);
        let mut queue = Queue::default();
        flows.start(0, 0, 1, 1, 10_000_000);
        queue.push(5 * MS, SimEvent::Tick { node: 0 });
        let done = run(&mut flows, &mut queue, |time, flows| {
            if time == 5 * MS {
                flows.start(time, 0, 2, 2, 1_000_000);
            }
        });
        assert_times(&done, &[(2, 0.03), (1, 0.11)]);
    }

    /// The max-min allocation of `flows` (sender, receiver) over `links`, by brute force.
    fn max_min(links: &[Link], flows: &[(u32, u32)]) -> Vec<f64> {
        let mut rate = vec![f64::NAN; flows.len()];
        let mut up: Vec<f64> = links.iter().map(|l| l.up).collect();
        let mut down: Vec<f64> = links.iter().map(|l| l.down).collect();
        while rate.iter().any(|r| r.is_nan()) {
            let open = |i: &usize| rate[*i].is_nan();
            let mut best = (f64::INFINITY, None);
            for node in 0..links.len() as u32 {
                let ups = (0..flows.len())
                    .filter(open)
                    .filter(|&i| flows[i].0 == node);
                let downs = (0..flows.len())
                    .filter(open)
                    .filter(|&i| flows[i].1 == node);
                for (n, left, upload) in [
                    (ups.count(), up[node as usize], true),
                    (downs.count(), down[node as usize], false),
                ] {
                    if n > 0 && left / n as f64 <= best.0 {
                        best = (left / n as f64, Some((node, upload)));
                    }
                }
            }
            let (share, Some((node, upload))) = best else {
                unreachable!("open flows have links");
            };
            for i in 0..flows.len() {
                let on = if upload { flows[i].0 } else { flows[i].1 } == node;
                if rate[i].is_nan() && on {
                    rate[i] = share;
                    up[flows[i].0 as usize] -= share;
                    down[flows[i].1 as usize] -= share;
                }
            }
        }
        rate
    }

    /// The same flows by brute force: the max-min allocation recomputed at every start and
    /// finish. Returns each flow's finish time.
    fn reference(links: &[Link], starts: &[(f64, u32, u32, f64)]) -> Vec<f64> {
        let mut remaining: Vec<f64> = starts.iter().map(|s| s.3).collect();
        let mut done = vec![f64::NAN; starts.len()];
        let mut now = 0.0_f64;
        loop {
            let active: Vec<usize> = (0..starts.len())
                .filter(|&i| starts[i].0 <= now && done[i].is_nan())
                .collect();
            let pairs: Vec<(u32, u32)> =
                active.iter().map(|&i| (starts[i].1, starts[i].2)).collect();
            let rates = max_min(links, &pairs);
            let next_start = starts
                .iter()
                .map(|s| s.0)
                .filter(|&t| t > now)
                .fold(f64::INFINITY, f64::min);
            let next_finish = active
                .iter()
                .zip(&rates)
                .map(|(&i, &rate)| now + remaining[i] / rate)
                .fold(f64::INFINITY, f64::min);
            let next = next_start.min(next_finish);
            if next.is_infinite() {
                return done;
            }
            for (&i, &rate) in active.iter().zip(&rates) {
                remaining[i] -= rate * (next - now);
                if remaining[i] <= 1e-3 {
                    done[i] = next;
                }
            }
            now = next;
        }
    }

    /// 20 random sets of 40 flows from 3 senders to 5 receivers, rated every `interval`; each
    /// flow's finish time and the reference's.
    fn random_runs(interval: Nanos) -> Vec<(Nanos, f64)> {
        use rand::rngs::Xoshiro256PlusPlus;
        use rand::{RngExt, SeedableRng};

        let mut out = Vec::new();
        for seed in 0..20 {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            // Rates 10–200 MB/s so that both ends bound some flows.
            let list: Vec<Link> = (0..8)
                .map(|_| Link {
                    up: rng.random_range(10..200) as f64 * 1e6,
                    down: rng.random_range(10..200) as f64 * 1e6,
                })
                .collect();
            let starts: Vec<(f64, u32, u32, f64)> = (0..40)
                .map(|_| {
                    (
                        rng.random_range(0..200) as f64 / 1000.0,
                        rng.random_range(0..3),
                        rng.random_range(3..8),
                        rng.random_range(1..20) as f64 * 1e6,
                    )
                })
                .collect();
            let expected = reference(&list, &starts);
            let mut flows = Flows::new(list.clone(), interval);
            let mut queue = Queue::default();
            for &(at, ..) in &starts {
                queue.push((at * 1e9) as Nanos, SimEvent::Tick { node: 0 });
            }
            let mut started = vec![false; starts.len()];
            let done = run(&mut flows, &mut queue, |time, flows| {
                for (i, &(at, sender, receiver, bytes)) in starts.iter().enumerate() {
                    if !started[i] && (at * 1e9) as Nanos <= time {
                        started[i] = true;
                        flows.start(time, sender, receiver, i as u32, bytes as u64);
                    }
                }
            });
            assert_eq!(done.len(), starts.len(), "seed {seed}");
            out.extend(
                done.into_iter()
                    .map(|(piece, time)| (time, expected[piece as usize] * 1e9)),
            );
        }
        out
    }

    #[test]
    fn rated_at_every_instant_flows_finish_when_brute_force_max_min_says_they_do() {
        for (time, want) in random_runs(0) {
            assert!(
                (time as f64 - want).abs() < 10_000.0,
                "finished at {time} ns, brute force says {want} ns"
            );
        }
    }

    #[test]
    fn rated_every_millisecond_flows_finish_close_to_exact_max_min() {
        // Flows last tens to hundreds of milliseconds; a tick's delay costs each change at most
        // a millisecond of part of a link.
        let runs = random_runs(MS);
        let late: f64 = runs.iter().map(|&(time, want)| time as f64 - want).sum();
        let exact: f64 = runs.iter().map(|&(_, want)| want).sum();
        assert!(late >= -1e6 * runs.len() as f64, "{late}");
        assert!(
            late / exact < 0.02,
            "{} % later in all",
            late / exact * 100.0
        );
        for (time, want) in runs {
            assert!(
                (time as f64 - want).abs() < 0.1 * want,
                "finished at {time} ns, exact max-min says {want} ns"
            );
        }
    }

    #[test]
    fn a_tick_with_nothing_changed_stops_the_ticking() {
        // 2,000 equal flows at a 1 GB/s sender all finish at 2 s together; after the first tick
        // finds nothing changed, each gets its one wake-up and no tick follows.
        let mut list = vec![(1e9, 1.0)];
        list.extend(std::iter::repeat_n((1.0, 1e9), 2_000));
        let mut flows = Flows::new(links(&list), MS);
        let mut queue = Queue::default();
        for receiver in 1..=2_000 {
            flows.start(0, 0, receiver, receiver, 1_000_000);
        }
        let done = run(&mut flows, &mut queue, |_, _| {});
        assert_eq!(done.len(), 2_000);
        assert!(
            done.iter()
                .all(|&(_, time)| time.abs_diff(2_000 * MS) < 1_000)
        );
        assert!(queue.processed() <= 2_001, "{} events", queue.processed());
    }
}
