//! Upload slots: how many pieces a peer serves at once, and the busy answer beyond them. The peer
//! service holds one [`UploadSlots`] for all its streams; the simulator asks [`busy`] with the
//! transfers it models. A request beyond the slots is refused at once rather than queued: a
//! queued request shares the link with every other one and all of them slow down, while a
//! refused one is asked of another holder at once (the scheduler's `PieceBusy`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Pieces served at once by default (`p2p.upload_slots`). Every upload in flight shares the link:
/// 32 pieces of 4 MiB on a 100 Mbit/s link take 11 s, inside the 15 s piece timeout, and on a
/// fast link 32 keep it full; beyond that, queueing more only delays them all.
pub const DEFAULT_UPLOAD_SLOTS: usize = 32;

/// Whether a peer serving `in_flight` pieces with `slots` upload slots answers a new request busy.
pub fn busy(in_flight: usize, slots: usize) -> bool {
    in_flight >= slots
}

/// One peer's upload slots, shared by the streams serving its pieces.
#[derive(Debug)]
pub struct UploadSlots {
    slots: usize,
    in_flight: AtomicUsize,
}

/// A slot taken for one piece, given back when dropped (after the piece's last byte is sent).
#[derive(Debug)]
pub struct UploadSlot {
    slots: Arc<UploadSlots>,
}

impl UploadSlots {
    pub fn new(slots: usize) -> Arc<UploadSlots> {
        Arc::new(UploadSlots {
            slots,
            in_flight: AtomicUsize::new(0),
        })
    }

    /// A slot for one more piece, or `None`: the request is answered busy.
    pub fn try_take(self: &Arc<Self>) -> Option<UploadSlot> {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |in_flight| {
                (!busy(in_flight, self.slots)).then_some(in_flight + 1)
            })
            .ok()
            .map(|_| UploadSlot {
                slots: Arc::clone(self),
            })
    }

    /// Pieces being served now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

impl Drop for UploadSlot {
    fn drop(&mut self) {
        self.slots.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_beyond_the_slots_are_busy_until_a_slot_is_given_back() {
        let slots = UploadSlots::new(2);
        let first = slots.try_take().expect("a free slot");
        let _second = slots.try_take().expect("a free slot");
        assert!(slots.try_take().is_none(), "both slots taken: busy");
        assert_eq!(slots.in_flight(), 2);
        drop(first);
        assert_eq!(slots.in_flight(), 1);
        assert!(slots.try_take().is_some());
    }

    #[test]
    fn busy_is_when_every_slot_is_taken() {
        assert!(!busy(0, 1));
        assert!(!busy(31, 32));
        assert!(busy(32, 32));
        assert!(busy(40, 32));
    }
}
