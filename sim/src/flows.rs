//! The flow-level bandwidth model. Every piece transfer is a flow from a sender's upload link to
//! a receiver's download link; its rate is
//!
//! `min(sender upload / sender's flows, receiver download / receiver's flows)`
//!
//! and is recomputed whenever a flow starts or finishes at either end (a standard flow-level
//! approximation of TCP sharing: no slow start, no packet loss, unused share is not
//! redistributed). Rate changes are batched per instant: a link whose flow count changed is
//! marked dirty and its flows are re-rated once, after every event of that instant, so a
//! thousand requests reaching an origin at once cost one pass, not a thousand.
//!
//! Finish times are kept in the event queue as wake-ups. A flow that slows down keeps its
//! (now early) wake-up and is simply re-examined when it fires; only a flow that speeds up
//! schedules a new, earlier one. That keeps the queue from filling with stale entries when an
//! origin serving thousands of flows gains or loses one.
//!
//! Optionally a sender moves at most `upload_slots` pieces at once and queues further requests
//! in arrival order — a what-if: Shoal's peer service today serves every request at once.

use std::collections::VecDeque;

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
    remaining: f64,
    /// Bytes per nanosecond.
    rate: f64,
    last: Nanos,
    /// The pending wake-up that counts (older ones are stale) and its time.
    wake_seq: u64,
    wake_at: Nanos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for one of the sender's upload slots.
    Queued,
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

/// All flows of the swarm, and which links carry which.
pub(crate) struct Flows {
    links: Vec<Link>,
    flows: Vec<Flow>,
    free: Vec<u32>,
    uploads: Vec<Vec<u32>>,
    downloads: Vec<Vec<u32>>,
    /// Flows waiting for an upload slot, per sender (only with `upload_slots`).
    waiting: Vec<VecDeque<u32>>,
    upload_slots: usize,
    dirty: Vec<u32>,
    is_dirty: Vec<bool>,
    /// Bytes each node has sent (cancelled transfers included: they used the link).
    sent: Vec<f64>,
}

impl Flows {
    /// Flows over `links` (one per node); `upload_slots` caps each sender's concurrent flows.
    pub(crate) fn new(links: Vec<Link>, upload_slots: Option<usize>) -> Flows {
        let nodes = links.len();
        Flows {
            links,
            flows: Vec::new(),
            free: Vec::new(),
            uploads: vec![Vec::new(); nodes],
            downloads: vec![Vec::new(); nodes],
            waiting: vec![VecDeque::new(); nodes],
            upload_slots: upload_slots.unwrap_or(usize::MAX),
            dirty: Vec::new(),
            is_dirty: vec![false; nodes],
            sent: vec![0.0; nodes],
        }
    }

    pub(crate) fn sent(&self, node: u32) -> f64 {
        self.sent[node as usize]
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
            state: State::Queued,
            live: true,
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
        if self.uploads[sender as usize].len() < self.upload_slots {
            self.attach(now, id);
        } else {
            self.waiting[sender as usize].push_back(id);
        }
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
            State::Transferring => {
                self.advance(now, id);
                self.detach(now, id);
            }
            State::Queued => {
                let waiting = &mut self.waiting[self.flows[id as usize].sender as usize];
                if let Some(at) = waiting.iter().position(|&x| x == id) {
                    waiting.remove(at);
                }
            }
            State::Delivering => {}
        }
        self.flows[id as usize].live = false;
        self.free.push(id);
    }

    /// Puts a flow on its links; it gets its rate when the instant is settled.
    fn attach(&mut self, now: Nanos, id: u32) {
        let flow = &mut self.flows[id as usize];
        flow.state = State::Transferring;
        flow.last = now;
        let (sender, receiver) = (flow.sender, flow.receiver);
        self.uploads[sender as usize].push(id);
        self.downloads[receiver as usize].push(id);
        self.mark(sender);
        self.mark(receiver);
    }

    /// Takes a transferring flow off its links; the sender's next waiting flow takes its slot.
    fn detach(&mut self, now: Nanos, id: u32) {
        let flow = &mut self.flows[id as usize];
        flow.state = State::Delivering;
        let (sender, receiver) = (flow.sender, flow.receiver);
        remove_from(&mut self.uploads[sender as usize], id);
        remove_from(&mut self.downloads[receiver as usize], id);
        self.mark(sender);
        self.mark(receiver);
        if let Some(next) = self.waiting[sender as usize].pop_front() {
            self.attach(now, next);
        }
    }

    /// Accounts the bytes moved since the flow's last update at its current rate.
    fn advance(&mut self, now: Nanos, id: u32) {
        let flow = &mut self.flows[id as usize];
        let moved = (flow.rate * now.saturating_sub(flow.last) as f64).min(flow.remaining);
        flow.remaining -= moved;
        flow.last = now;
        self.sent[flow.sender as usize] += moved;
    }

    /// A wake-up fired: the flow moved its last byte (returned, now off its links but live
    /// until [`Flows::remove`]) or is re-scheduled.
    pub(crate) fn wake(
        &mut self,
        now: Nanos,
        id: u32,
        seq: u64,
        queue: &mut Queue,
    ) -> Option<FlowRef> {
        let flow = self.flows.get(id as usize)?;
        if !flow.live || flow.state != State::Transferring || flow.wake_seq != seq {
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

    /// Re-rates every flow on a link whose flow count changed this instant.
    pub(crate) fn settle(&mut self, now: Nanos, queue: &mut Queue) {
        let dirty = std::mem::take(&mut self.dirty);
        for &node in &dirty {
            self.is_dirty[node as usize] = false;
            for i in 0..self.uploads[node as usize].len() {
                let id = self.uploads[node as usize][i];
                self.rerate(now, id, queue);
            }
            for i in 0..self.downloads[node as usize].len() {
                let id = self.downloads[node as usize][i];
                self.rerate(now, id, queue);
            }
        }
        // Hand the allocation back for the next instant.
        self.dirty = dirty;
        self.dirty.clear();
    }

    fn rerate(&mut self, now: Nanos, id: u32, queue: &mut Queue) {
        self.advance(now, id);
        let flow = &self.flows[id as usize];
        let (sender, receiver) = (flow.sender as usize, flow.receiver as usize);
        let up = self.links[sender].up / self.uploads[sender].len() as f64;
        let down = self.links[receiver].down / self.downloads[receiver].len() as f64;
        self.flows[id as usize].rate = up.min(down) / 1e9;
        self.schedule(now, id, queue);
    }

    /// Queues a wake-up at the flow's finish time at its current rate, unless one at or before
    /// that time is already pending.
    fn schedule(&mut self, now: Nanos, id: u32, queue: &mut Queue) {
        let flow = &mut self.flows[id as usize];
        // Rates are positive (validated), so the finish time is finite; at least 1 ns ahead.
        let finish = now + ((flow.remaining / flow.rate).ceil() as Nanos).max(1);
        if finish < flow.wake_at {
            flow.wake_at = finish;
            flow.wake_seq = queue.push(finish, SimEvent::FlowWake { flow: id });
        }
    }
}

fn remove_from(list: &mut Vec<u32>, id: u32) {
    if let Some(at) = list.iter().position(|&x| x == id) {
        list.swap_remove(at);
    }
}
