//! The flow-level bandwidth model. Every piece transfer is a flow from a sender's upload link to
//! a receiver's download link; its rate is
//!
//! `min(sender upload / sender's flows, receiver download / receiver's flows)`
//!
//! and changes whenever a flow starts or finishes at either end (a standard flow-level
//! approximation of TCP sharing: no slow start, no packet loss, unused share is not
//! redistributed). Changes are batched per instant: a link whose flow count changed is marked
//! dirty and settled once, after every event of that instant.
//!
//! An origin carries thousands of flows, so re-rating each of them on every start or finish
//! there made the simulator superlinear. Instead each sender runs processor sharing with a
//! virtual clock: the flows bound by the sender's share (the `min` is the sender's) all move at
//! the same rate, so the sender keeps one clock, "bytes moved by each sender-bound flow so far",
//! and each such flow the clock reading at which it is done (its tag). A change of the sender's
//! flow count only changes the clock's speed; the flows themselves are not touched, and only the
//! earliest tag has a wake-up in the event queue. Flows bound by their receiver's share
//! (receivers carry a few dozen flows at most) keep a rate and wake-up of their own, as before.
//! Which end bounds a flow is re-decided when either share changes: each sender keeps its flows
//! ordered by (a loose bound of) their receiver's share, so the few that flip are found at the
//! ends of that order.
//! A start or finish at a hot origin thus costs O(log flows) instead of O(flows); the rates are
//! exactly those of the per-flow model.
//!
//! A flow whose rate drops keeps its (now early) wake-up and is re-examined when it fires; only
//! a flow (or sender clock) that speeds up schedules a new, earlier one, so the queue does not
//! fill with stale entries.
//!
//! Senders never queue: the swarm answers requests beyond a sender's upload slots "busy"
//! before they become flows, as Shoal's peer service does.

use std::collections::BTreeSet;
use std::ops::Range;

use crate::queue::{Nanos, Queue, SimEvent};

/// Bytes left below which a flow counts as finished (float rounding of rate × time).
const DONE_EPSILON: f64 = 0.5;

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
    bound: Bound,
    /// The receiver's per-flow share, bytes per nanosecond (as of the last settle).
    down_share: f64,
    /// The key the flow is filed under in its sender's `sender_bound` (a lower bound of
    /// `down_share`) or `receiver_bound` (an upper bound) set.
    filed: u64,
    /// Receiver-bound (and not yet rated) flows: bytes left at `last`, moving at `rate` bytes
    /// per nanosecond.
    remaining: f64,
    rate: f64,
    last: Nanos,
    /// Sender-bound flows: the sender's clock reading at which the flow is done.
    tag: f64,
    /// The pending wake-up of a receiver-bound flow that counts (older ones are stale).
    wake_seq: u64,
    wake_at: Nanos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Moving bytes.
    Transferring,
    /// Finished, its last byte on the way to the receiver.
    Delivering,
}

/// Which end's share a transferring flow moves at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    /// Attached this instant; bound when the instant is settled.
    Unrated,
    /// The sender's share (it is no larger than the receiver's): tracked by the sender's clock.
    Sender,
    /// The receiver's share, smaller than the sender's: a rate and wake-up of its own.
    Receiver,
}

/// A sender's upload link as a processor-sharing server.
#[derive(Default)]
struct Uplink {
    /// Transferring flows, whichever end bounds them.
    flows: usize,
    /// Bytes per nanosecond each flow is offered (upload / flows), as of the last settle.
    share: f64,
    /// Bytes each sender-bound flow has moved since the start of the run, as of `last`.
    clock: f64,
    last: Nanos,
    /// Sender-bound flows by (a lower bound of their receiver's share, id): only the first
    /// ones can flip to receiver-bound when the sender's share rises.
    sender_bound: BTreeSet<(u64, u32)>,
    /// Receiver-bound flows by (an upper bound of their receiver's share, id): only the last
    /// ones can flip to sender-bound when the sender's share falls.
    receiver_bound: BTreeSet<(u64, u32)>,
    /// Sender-bound flows by (tag bits, id): the first one finishes next.
    tags: BTreeSet<(u64, u32)>,
    /// The clock's pending wake-up that counts, and its time.
    wake_seq: u64,
    wake_at: Nanos,
}

/// A positive float as an order-preserving key (the bits of non-negative floats sort as they do).
fn key(value: f64) -> u64 {
    value.max(0.0).to_bits()
}

/// How loosely a flow is filed by its receiver's share: a receiver's share moves by a few
/// percent each time one of its few dozen flows starts or ends, and re-filing a flow on every
/// such move cost two B-tree updates in a set of thousands. Filed at half (sender-bound) or
/// twice (receiver-bound) its share, a flow is re-filed only when its share halves or doubles,
/// or when the scan in `rebalance` reaches it and finds its true share.
const FILING_SLACK: f64 = 2.0;

/// A flow's identity as the engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlowRef {
    pub(crate) id: u32,
    pub(crate) generation: u32,
}

/// All flows of the swarm, and which links carry which.
pub(crate) struct Flows {
    links: Vec<Link>,
    flows: Vec<Flow>,
    free: Vec<u32>,
    uplinks: Vec<Uplink>,
    downloads: Vec<Vec<u32>>,
    dirty: Vec<u32>,
    is_dirty: Vec<bool>,
    /// Bytes each node has sent (cancelled transfers included: they used the link).
    sent: Vec<f64>,
}

impl Flows {
    /// Flows over `links` (one per node).
    pub(crate) fn new(links: Vec<Link>) -> Flows {
        let nodes = links.len();
        Flows {
            links,
            flows: Vec::new(),
            free: Vec::new(),
            uplinks: (0..nodes)
                .map(|_| Uplink {
                    wake_at: Nanos::MAX,
                    ..Uplink::default()
                })
                .collect(),
            downloads: vec![Vec::new(); nodes],
            dirty: Vec::new(),
            is_dirty: vec![false; nodes],
            sent: vec![0.0; nodes],
        }
    }

    /// Bytes `node` has sent up to the last settle or [`Flows::flush`].
    pub(crate) fn sent(&self, node: u32) -> f64 {
        self.sent[node as usize]
    }

    /// Bytes the nodes in `nodes` have sent up to `now`, read without settling anything:
    /// bringing the flows' byte counts up to date mid-run changes their float rounding, and so
    /// the order of later events, so a measurement would change the run it measures.
    pub(crate) fn sent_until(&self, now: Nanos, nodes: Range<u32>) -> f64 {
        let mut total = 0.0;
        for node in nodes.clone() {
            let uplink = &self.uplinks[node as usize];
            let pending = uplink.share * now.saturating_sub(uplink.last) as f64;
            total += self.sent[node as usize] + pending * uplink.tags.len() as f64;
        }
        for flow in &self.flows {
            if flow.live
                && flow.state == State::Transferring
                && flow.bound == Bound::Receiver
                && nodes.contains(&flow.sender)
            {
                total += (flow.rate * now.saturating_sub(flow.last) as f64).min(flow.remaining);
            }
        }
        total
    }

    /// Pieces `node` is uploading right now.
    pub(crate) fn uploading(&self, node: u32) -> usize {
        self.uplinks[node as usize].flows
    }

    fn mark(&mut self, node: u32) {
        if !self.is_dirty[node as usize] {
            self.is_dirty[node as usize] = true;
            self.dirty.push(node);
        }
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
            bound: Bound::Unrated,
            down_share: 0.0,
            filed: 0,
            remaining: bytes as f64,
            rate: 0.0,
            last: now,
            tag: 0.0,
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
        self.attach(now, id);
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

    /// The sender, receiver and piece of a live flow.
    pub(crate) fn parts(&self, flow: FlowRef) -> Option<(u32, u32, u32)> {
        self.flows
            .get(flow.id as usize)
            .filter(|f| f.live && f.generation == flow.generation)
            .map(|f| (f.sender, f.receiver, f.piece))
    }

    /// Ends a flow (delivered, cancelled or its session dropped); its bandwidth goes to the others.
    pub(crate) fn remove(&mut self, now: Nanos, flow: FlowRef) {
        if !self.is_live(flow) {
            return;
        }
        let id = flow.id;
        match self.flows[id as usize].state {
            State::Transferring => self.detach(now, id),
            State::Delivering => {}
        }
        self.flows[id as usize].live = false;
        self.free.push(id);
    }

    /// Puts a flow on its links; it gets its rate when the instant is settled.
    fn attach(&mut self, now: Nanos, id: u32) {
        let flow = &mut self.flows[id as usize];
        flow.state = State::Transferring;
        flow.bound = Bound::Unrated;
        flow.last = now;
        let (sender, receiver) = (flow.sender, flow.receiver);
        self.uplinks[sender as usize].flows += 1;
        self.downloads[receiver as usize].push(id);
        self.mark(sender);
        self.mark(receiver);
    }

    /// Takes a transferring flow off its links.
    fn detach(&mut self, now: Nanos, id: u32) {
        self.unbind(now, id);
        let flow = &mut self.flows[id as usize];
        flow.state = State::Delivering;
        let (sender, receiver) = (flow.sender, flow.receiver);
        self.uplinks[sender as usize].flows -= 1;
        let downloads = &mut self.downloads[receiver as usize];
        if let Some(at) = downloads.iter().position(|&x| x == id) {
            downloads.swap_remove(at);
        }
        self.mark(sender);
        self.mark(receiver);
    }

    /// Runs a sender's clock up to `now` at its current share, accounting the bytes moved.
    fn advance_clock(&mut self, now: Nanos, node: u32) {
        let uplink = &mut self.uplinks[node as usize];
        let moved = uplink.share * now.saturating_sub(uplink.last) as f64;
        uplink.clock += moved;
        uplink.last = now;
        self.sent[node as usize] += moved * uplink.tags.len() as f64;
    }

    /// Accounts the bytes a receiver-bound flow moved since its last update.
    fn advance(&mut self, now: Nanos, id: u32) {
        let flow = &mut self.flows[id as usize];
        let moved = (flow.rate * now.saturating_sub(flow.last) as f64).min(flow.remaining);
        flow.remaining -= moved;
        flow.last = now;
        self.sent[flow.sender as usize] += moved;
    }

    /// Takes a flow out of its sender's bookkeeping, its bytes left brought up to `now` in
    /// `remaining`.
    fn unbind(&mut self, now: Nanos, id: u32) {
        let (sender, bound, down) = {
            let flow = &self.flows[id as usize];
            (flow.sender, flow.bound, flow.filed)
        };
        match bound {
            Bound::Unrated => {}
            Bound::Sender => {
                self.advance_clock(now, sender);
                let tag = self.flows[id as usize].tag;
                let uplink = &mut self.uplinks[sender as usize];
                uplink.sender_bound.remove(&(down, id));
                uplink.tags.remove(&(key(tag), id));
                // The clock may have run up to a nanosecond past the flow's end (finish times
                // are rounded up): those bytes were never sent.
                let overshoot = (uplink.clock - tag).max(0.0);
                self.sent[sender as usize] -= overshoot;
                let flow = &mut self.flows[id as usize];
                flow.remaining = (tag - self.uplinks[sender as usize].clock).max(0.0);
                flow.last = now;
            }
            Bound::Receiver => {
                self.advance(now, id);
                self.uplinks[sender as usize]
                    .receiver_bound
                    .remove(&(down, id));
                let flow = &mut self.flows[id as usize];
                flow.wake_at = Nanos::MAX;
            }
        }
        let flow = &mut self.flows[id as usize];
        flow.bound = Bound::Unrated;
        flow.rate = 0.0;
    }

    /// Binds an unbound flow to whichever end's share is smaller (the sender's on a tie).
    fn bind(&mut self, now: Nanos, id: u32, queue: &mut Queue) {
        let (sender, down_share) = {
            let flow = &self.flows[id as usize];
            (flow.sender, flow.down_share)
        };
        if self.uplinks[sender as usize].share <= down_share {
            self.advance_clock(now, sender);
            let uplink = &mut self.uplinks[sender as usize];
            let flow = &mut self.flows[id as usize];
            flow.bound = Bound::Sender;
            flow.tag = uplink.clock + flow.remaining;
            // Never below the sender's share, so `rebalance` does not find it again at once.
            flow.filed = key((down_share / FILING_SLACK).max(uplink.share));
            uplink.sender_bound.insert((flow.filed, id));
            uplink.tags.insert((key(flow.tag), id));
            self.schedule_clock(now, sender, queue);
        } else {
            let share = self.uplinks[sender as usize].share;
            let flow = &mut self.flows[id as usize];
            // Below the sender's share, so `rebalance` does not find it again at once.
            let filed = down_share * FILING_SLACK;
            flow.filed = key(if filed < share { filed } else { down_share });
            self.uplinks[sender as usize]
                .receiver_bound
                .insert((flow.filed, id));
            let flow = &mut self.flows[id as usize];
            flow.bound = Bound::Receiver;
            flow.rate = down_share;
            flow.last = now;
            self.schedule(now, id, queue);
        }
    }

    /// Gives a flow its receiver's new share, re-deciding which end bounds it.
    fn rebind(&mut self, now: Nanos, id: u32, down_share: f64, queue: &mut Queue) {
        let flow = &self.flows[id as usize];
        let (sender, bound, filed) = (flow.sender, flow.bound, flow.filed);
        let share = self.uplinks[sender as usize].share;
        let sender_bound = share <= down_share;
        match (bound, sender_bound) {
            (Bound::Sender, true) => {
                if down_share < f64::from_bits(filed) {
                    let refiled = key((down_share / FILING_SLACK).max(share));
                    let set = &mut self.uplinks[sender as usize].sender_bound;
                    set.remove(&(filed, id));
                    set.insert((refiled, id));
                    self.flows[id as usize].filed = refiled;
                }
                self.flows[id as usize].down_share = down_share;
            }
            (Bound::Receiver, false) => {
                // Stays receiver-bound: a new rate, keeping an earlier wake-up if it has one.
                self.advance(now, id);
                if down_share > f64::from_bits(filed) {
                    let loose = down_share * FILING_SLACK;
                    let refiled = key(if loose < share { loose } else { down_share });
                    let set = &mut self.uplinks[sender as usize].receiver_bound;
                    set.remove(&(filed, id));
                    set.insert((refiled, id));
                    self.flows[id as usize].filed = refiled;
                }
                let flow = &mut self.flows[id as usize];
                flow.down_share = down_share;
                flow.rate = down_share;
                self.schedule(now, id, queue);
            }
            _ => {
                self.unbind(now, id);
                self.flows[id as usize].down_share = down_share;
                self.bind(now, id, queue);
            }
        }
    }

    /// After a sender's share changed: re-binds the flows whose receiver's share is now on the
    /// other side of it.
    fn rebalance(&mut self, now: Nanos, node: u32, queue: &mut Queue) {
        let share = self.uplinks[node as usize].share;
        // Sender-bound flows whose receiver may offer less than the sender now does.
        while let Some(&(filed, id)) = self.uplinks[node as usize].sender_bound.first() {
            if f64::from_bits(filed) >= share {
                break;
            }
            let down_share = self.flows[id as usize].down_share;
            let set = &mut self.uplinks[node as usize].sender_bound;
            if down_share >= share {
                // Filed loosely and still sender-bound: file it under a bound at the share.
                let refiled = key((down_share / FILING_SLACK).max(share));
                set.remove(&(filed, id));
                set.insert((refiled, id));
                self.flows[id as usize].filed = refiled;
                continue;
            }
            self.unbind(now, id);
            self.bind(now, id, queue);
        }
        // Receiver-bound flows whose receiver may offer at least the sender's share now.
        while let Some(&(filed, id)) = self.uplinks[node as usize].receiver_bound.last() {
            if f64::from_bits(filed) < share {
                break;
            }
            let down_share = self.flows[id as usize].down_share;
            let set = &mut self.uplinks[node as usize].receiver_bound;
            if down_share < share {
                let loose = down_share * FILING_SLACK;
                let refiled = key(if loose < share { loose } else { down_share });
                set.remove(&(filed, id));
                set.insert((refiled, id));
                self.flows[id as usize].filed = refiled;
                continue;
            }
            self.unbind(now, id);
            self.bind(now, id, queue);
        }
    }

    /// A receiver-bound flow's wake-up fired: the flow moved its last byte (returned, now off
    /// its links but live until [`Flows::remove`]) or is re-scheduled.
    pub(crate) fn wake(
        &mut self,
        now: Nanos,
        id: u32,
        seq: u64,
        queue: &mut Queue,
    ) -> Option<FlowRef> {
        let flow = self.flows.get(id as usize)?;
        if !flow.live
            || flow.state != State::Transferring
            || flow.bound != Bound::Receiver
            || flow.wake_seq != seq
        {
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
        self.detach(now, id);
        Some(finished)
    }

    /// A sender clock's wake-up fired: appends the sender-bound flows that moved their last
    /// byte (now off their links but live until [`Flows::remove`]) to `finished`.
    pub(crate) fn wake_clock(
        &mut self,
        now: Nanos,
        node: u32,
        seq: u64,
        queue: &mut Queue,
        finished: &mut Vec<FlowRef>,
    ) {
        let Some(uplink) = self.uplinks.get_mut(node as usize) else {
            return;
        };
        if uplink.wake_seq != seq {
            return;
        }
        uplink.wake_at = Nanos::MAX;
        self.advance_clock(now, node);
        while let Some(&(tag, id)) = self.uplinks[node as usize].tags.first() {
            if f64::from_bits(tag) > self.uplinks[node as usize].clock + DONE_EPSILON {
                break;
            }
            finished.push(FlowRef {
                id,
                generation: self.flows[id as usize].generation,
            });
            self.detach(now, id);
        }
        self.schedule_clock(now, node, queue);
    }

    /// Settles the instant: new shares for every link whose flow count changed, and the flows
    /// whose bounding end flips because of them.
    pub(crate) fn settle(&mut self, now: Nanos, queue: &mut Queue) {
        let dirty = std::mem::take(&mut self.dirty);
        // The senders' new shares first: binding a flow compares both ends' shares.
        for &node in &dirty {
            self.is_dirty[node as usize] = false;
            self.advance_clock(now, node);
            let uplink = &mut self.uplinks[node as usize];
            uplink.share = if uplink.flows == 0 {
                0.0
            } else {
                self.links[node as usize].up / uplink.flows as f64 / 1e9
            };
        }
        // Receivers carry a few dozen flows: each gets the new receiver share.
        for &node in &dirty {
            let count = self.downloads[node as usize].len();
            if count == 0 {
                continue;
            }
            let down_share = self.links[node as usize].down / count as f64 / 1e9;
            for i in 0..count {
                let id = self.downloads[node as usize][i];
                if self.flows[id as usize].bound == Bound::Unrated {
                    self.flows[id as usize].down_share = down_share;
                    self.bind(now, id, queue);
                } else {
                    self.rebind(now, id, down_share, queue);
                }
            }
        }
        for &node in &dirty {
            self.rebalance(now, node, queue);
            self.schedule_clock(now, node, queue);
        }
        // Hand the allocation back for the next instant.
        self.dirty = dirty;
        self.dirty.clear();
    }

    /// Brings every byte count up to `now` (for the report at the end of a run).
    pub(crate) fn flush(&mut self, now: Nanos) {
        for node in 0..self.uplinks.len() {
            self.advance_clock(now, node as u32);
        }
        for id in 0..self.flows.len() {
            let flow = &self.flows[id];
            if flow.live && flow.state == State::Transferring && flow.bound == Bound::Receiver {
                self.advance(now, id as u32);
            }
        }
    }

    /// Queues a wake-up at a receiver-bound flow's finish time at its current rate, unless one
    /// at or before that time is already pending.
    fn schedule(&mut self, now: Nanos, id: u32, queue: &mut Queue) {
        let flow = &mut self.flows[id as usize];
        // Rates are positive (validated), so the finish time is finite; at least 1 ns ahead.
        let finish = now + ((flow.remaining / flow.rate).ceil() as Nanos).max(1);
        if finish < flow.wake_at {
            flow.wake_at = finish;
            flow.wake_seq = queue.push(finish, SimEvent::FlowWake { flow: id });
        }
    }

    /// Queues a wake-up for a sender's clock at the earliest tag at its current share, unless
    /// one at or before that time is already pending. The clock must be current.
    fn schedule_clock(&mut self, now: Nanos, node: u32, queue: &mut Queue) {
        let uplink = &mut self.uplinks[node as usize];
        let Some(&(tag, _)) = uplink.tags.first() else {
            return;
        };
        if uplink.share <= 0.0 {
            return;
        }
        let left = (f64::from_bits(tag) - uplink.clock).max(0.0);
        let finish = now + ((left / uplink.share).ceil() as Nanos).max(1);
        if finish < uplink.wake_at {
            uplink.wake_at = finish;
            uplink.wake_seq = queue.push(finish, SimEvent::ClockWake { node });
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
                let mut done = Vec::new();
                match event {
                    SimEvent::FlowWake { flow } => done.extend(flows.wake(time, flow, seq, queue)),
                    SimEvent::ClockWake { node } => {
                        flows.wake_clock(time, node, seq, queue, &mut done);
                    }
                    _ => {}
                }
                for flow in done {
                    let (_, _, piece) = flows.parts(flow).expect("a finished flow is live");
                    out.push((piece, time));
                    flows.remove(time, flow);
                }
            }
            at(time, flows);
            flows.settle(time, queue);
        }
        out
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
        let mut flows = Flows::new(links(&[(100e6, 1.0), (1.0, 1e9), (1.0, 1e9)]));
        let mut queue = Queue::default();
        flows.start(0, 0, 1, 1, 10_000_000);
        flows.start(0, 0, 2, 2, 20_000_000);
        let done = run(&mut flows, &mut queue, |_, _| {});
        assert_times(&done, &[(1, 0.2), (2, 0.3)]);
        assert!((flows.sent(0) - 30e6).abs() < 1.0, "{}", flows.sent(0));
    }

    #[test]
    fn a_receiver_bound_flow_next_to_sender_bound_ones_keeps_its_receivers_rate() {
        // Sender 0 at 300 MB/s, three flows: 100 MB/s offered to each. Receiver 1 takes only
        // 50 MB/s (receiver-bound; the 50 MB/s it leaves is not handed to the others), receivers
        // 2 and 3 take 100 MB/s. Flow 2 (10 MB) is done at 0.1 s; flow 3 then gets 150 MB/s
        // with 30 MB left; flow 1 (10 MB at 50 MB/s) is done at 0.2 s; flow 3, 15 MB left,
        // then has the whole 300 MB/s: done at 0.25 s.
        let mut flows = Flows::new(links(&[(300e6, 1.0), (1.0, 50e6), (1.0, 1e9), (1.0, 1e9)]));
        let mut queue = Queue::default();
        flows.start(0, 0, 1, 1, 10_000_000);
        flows.start(0, 0, 2, 2, 10_000_000);
        flows.start(0, 0, 3, 3, 40_000_000);
        let done = run(&mut flows, &mut queue, |_, _| {});
        assert_times(&done, &[(2, 0.1), (1, 0.2), (3, 0.25)]);
        assert!((flows.sent(0) - 60e6).abs() < 1.0, "{}", flows.sent(0));
    }

    #[test]
    fn a_sender_bound_flow_turns_receiver_bound_when_the_senders_share_rises() {
        // Sender 0 at 100 MB/s, three flows at 33.3 MB/s; receiver 1 takes 40 MB/s, so its flow
        // is sender-bound at first. Flow 2 (1 MB) is done at 0.03 s; the share rises to 50 MB/s
        // and flow 1 (7 MB left) moves at its receiver's 40 MB/s: done at 0.205 s. Flow 3 (9 MB
        // left at 50 MB/s) has 0.25 MB left then and the whole link: done at 0.2075 s.
        let mut flows = Flows::new(links(&[(100e6, 1.0), (1.0, 40e6), (1.0, 1e9), (1.0, 1e9)]));
        let mut queue = Queue::default();
        flows.start(0, 0, 1, 1, 8_000_000);
        flows.start(0, 0, 2, 2, 1_000_000);
        flows.start(0, 0, 3, 3, 10_000_000);
        let done = run(&mut flows, &mut queue, |_, _| {});
        assert_times(&done, &[(2, 0.03), (1, 0.205), (3, 0.2075)]);
    }

    #[test]
    fn a_receiver_bound_flow_turns_sender_bound_when_the_sender_gets_busier() {
        // Sender 0 at 100 MB/s with one flow to receiver 1 (40 MB/s): receiver-bound. At 0.1 s
        // (4 MB moved) three 1 GB/s receivers start 10 MB each: the share drops to 25 MB/s
        // and every flow is sender-bound. Flow 1 (6 MB left) is done at 0.34 s; the others
        // have 4 MB left then, at 33.3 MB/s each: done at 0.46 s.
        let mut flows = Flows::new(links(&[
            (100e6, 1.0),
            (1.0, 40e6),
            (1.0, 1e9),
            (1.0, 1e9),
            (1.0, 1e9),
        ]));
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
        let mut flows = Flows::new(links(&[(1e9, 1.0), (1e9, 1.0), (1.0, 100e6)]));
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
        let mut flows = Flows::new(links(&[(100e6, 1.0), (1.0, 1e9), (1.0, 1e9)]));
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

    /// The same flows by brute force: every flow re-rated at every start and finish.
    fn reference(links: &[Link], starts: &[(f64, u32, u32, f64)]) -> Vec<f64> {
        let mut remaining: Vec<f64> = starts.iter().map(|s| s.3).collect();
        let mut done = vec![f64::NAN; starts.len()];
        let mut now = 0.0_f64;
        loop {
            let active: Vec<usize> = (0..starts.len())
                .filter(|&i| starts[i].0 <= now && done[i].is_nan())
                .collect();
            let count = |f: &dyn Fn(usize) -> bool| active.iter().filter(|&&j| f(j)).count() as f64;
            let rates: Vec<f64> = active
                .iter()
                .map(|&i| {
                    let (_, sender, receiver, _) = starts[i];
                    let up = links[sender as usize].up / count(&|j| starts[j].1 == sender);
                    let down = links[receiver as usize].down / count(&|j| starts[j].2 == receiver);
                    up.min(down)
                })
                .collect();
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

    #[test]
    fn random_flows_finish_when_re_rating_every_flow_says_they_do() {
        use rand::rngs::Xoshiro256PlusPlus;
        use rand::{RngExt, SeedableRng};

        for seed in 0..20 {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            // Nodes 0..3 send, 3..8 receive; rates 10–200 MB/s so both ends bind some flows.
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
            let mut flows = Flows::new(list.clone());
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
            for (piece, time) in done {
                let want = expected[piece as usize] * 1e9;
                assert!(
                    (time as f64 - want).abs() < 10_000.0,
                    "seed {seed}: flow {piece} finished at {time} ns, re-rating says {want} ns"
                );
            }
        }
    }

    #[test]
    fn thousands_of_flows_at_one_sender_cost_a_handful_of_events() {
        // Processor sharing: 2,000 equal flows at a 1 GB/s sender all finish at 2 s together,
        // from one clock wake-up, not one wake-up per flow per change.
        let mut list = vec![(1e9, 1.0)];
        list.extend(std::iter::repeat_n((1.0, 1e9), 2_000));
        let mut flows = Flows::new(links(&list));
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
        assert!(queue.processed() < 10, "{} events", queue.processed());
    }
}
