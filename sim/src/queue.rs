//! The event queue: a min-heap of `(time, seq, event)`. Time is virtual nanoseconds; `seq` is a
//! global insertion counter, so events at the same instant run in the order they were scheduled
//! and a seed always gives the same run.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Virtual time in nanoseconds since the start of the run.
pub type Nanos = u64;

/// Everything that can happen in the simulated swarm.
#[derive(Debug)]
pub(crate) enum SimEvent {
    /// A peer starts pulling the blob.
    Arrive { node: u32 },
    /// A peer announces to the tracker (its answer comes back one round trip later).
    Announce { node: u32 },
    /// The tracker's answer reaches the peer.
    Discovered {
        node: u32,
        peers: Vec<u32>,
        /// Agents the tracker counted in the swarm.
        members: u32,
    },
    /// A session opened by `node` to `peer` completed its handshake.
    Connected { node: u32, peer: u32 },
    /// `node` gave up waiting for the handshake of `peer`, which hung.
    ConnectTimedOut { node: u32, peer: u32 },
    /// Re-examine a flow: it may have finished (the entry's `seq` tells stale wake-ups apart).
    FlowWake { flow: u32 },
    /// The flows' rating tick (`crate::flows`): the instant's settle re-rates them.
    Rating,
    /// A sender's busy answer to `node`'s request reaches it.
    Busy { node: u32, sender: u32, piece: u32 },
    /// An origin's "get it elsewhere" answer (`shoal_swarm::seeding`) reaches `node`.
    Elsewhere {
        node: u32,
        sender: u32,
        piece: u32,
        /// The piece the origin would send instead.
        instead: Option<u32>,
    },
    /// The last byte of a piece reached the downloader.
    PieceArrived { flow: u32, generation: u32 },
    /// `node` verified `piece`: tell the peers holding a session with it.
    Have { node: u32, piece: u32 },
    /// `node`'s batch of have notices is due (`shoal_swarm::notices`).
    HaveBatch { node: u32 },
    /// The scheduler's periodic tick.
    Tick { node: u32 },
    /// `node`'s session with `peer` ended: `peer` left while downloading.
    Dropped { node: u32, peer: u32 },
    /// `node`'s request for `piece` failed: `sender` left before or while sending it.
    Failed { node: u32, sender: u32, piece: u32 },
    /// The tracker's record of `node`, which left or hung, expires.
    Expire { node: u32 },
    /// The other origins' health checks mark `origin`, which stopped, as unhealthy.
    OwnerMarked { origin: u32 },
}

/// Ordered by time, then by scheduling order.
struct Entry {
    time: Nanos,
    seq: u64,
    event: SimEvent,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.time, self.seq) == (other.time, other.seq)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.time, self.seq).cmp(&(other.time, other.seq))
    }
}

#[derive(Default)]
pub(crate) struct Queue {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
    processed: u64,
}

impl Queue {
    /// Schedules `event` at `time`; returns its sequence number.
    pub(crate) fn push(&mut self, time: Nanos, event: SimEvent) -> u64 {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            time,
            seq: self.seq,
            event,
        }));
        self.seq
    }

    pub(crate) fn peek_time(&self) -> Option<Nanos> {
        self.heap.peek().map(|Reverse(entry)| entry.time)
    }

    /// The earliest event with its time and sequence number.
    pub(crate) fn pop(&mut self) -> Option<(Nanos, u64, SimEvent)> {
        let Reverse(entry) = self.heap.pop()?;
        self.processed += 1;
        Some((entry.time, entry.seq, entry.event))
    }

    /// Events taken off the queue so far.
    pub(crate) fn processed(&self) -> u64 {
        self.processed
    }
}
