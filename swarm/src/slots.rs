//! Upload slots: how many pieces a peer serves at once, and the busy answer beyond them. The peer
//! service holds one [`UploadSlots`] for all its streams; the simulator asks [`busy`] with the
//! transfers it models. A request beyond the slots is refused at once rather than queued: a
//! queued request shares the link with every other one and all of them slow down, while a
//! refused one is asked of another holder at once (the scheduler's `PieceBusy`).
//!
//! An agent also bounds the copies of one piece it uploads at once ([`PieceCopies`],
//! [`crowded`]): beyond them a request is answered "elsewhere" and goes to another holder.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Pieces served at once by default (`p2p.upload_slots`). Every upload in flight shares the link:
/// 40 pieces of 4 MiB on a 100 Mbit/s link take 13.4 s, inside the 15 s piece timeout. In a
/// crowd more slots mean fewer busy answers, so fewer downloaders hold too few transfers to
/// fill their link: in the simulator (docs/BENCHMARKS.md, 2026-12-04) 40 rather than 32 took
/// p99 at 1,000-2,600 agents from 1.32-1.34× to 1.27-1.29× of S/B, for a median up to 0.8 % later.
pub const DEFAULT_UPLOAD_SLOTS: usize = 40;

/// Copies of one piece an agent uploads at once. In a crowd's first second every downloader
/// wants the few pieces anyone holds yet: one holder's link shared by all its slots' copies of
/// its one piece delivers each copy, and so the next holders, 4-5× later than 8 copies do, so
/// pieces spread slower. In the simulator (docs/BENCHMARKS.md, 2026-12-04) 8 took 1,000
/// agents' p50 from 1.147× to 1.129× of S/B over three seeds; 1 and 2 were worse, 4 and 8
/// alike.
pub const PIECE_COPIES: usize = 8;

/// Whether a peer serving `in_flight` pieces with `slots` upload slots answers a new request busy.
pub fn busy(in_flight: usize, slots: usize) -> bool {
    in_flight >= slots
}

/// Whether an agent already uploading `copies` of a piece answers another request for it
/// "elsewhere" under a bound of `cap`: a request that insists (refused before, and none of the
/// requester's other peers holds the piece) is always served.
pub fn crowded(copies: usize, cap: usize, insist: bool) -> bool {
    !insist && copies >= cap
}

/// The uploads in flight of each piece (keyed by blob and index), bounded per piece.
#[derive(Debug)]
pub struct PieceCopies<K> {
    cap: usize,
    copies: Mutex<HashMap<K, usize>>,
}

/// One upload of a piece, counted until dropped (after the piece's last byte is sent).
#[derive(Debug)]
pub struct PieceCopy<K: Hash + Eq> {
    copies: Arc<PieceCopies<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> PieceCopies<K> {
    pub fn new(cap: usize) -> Arc<PieceCopies<K>> {
        Arc::new(PieceCopies {
            cap,
            copies: Mutex::new(HashMap::new()),
        })
    }

    /// Counts one more upload of `key`, or `None` when it is [`crowded`]: the request is answered
    /// "elsewhere".
    pub fn try_take(self: &Arc<Self>, key: K, insist: bool) -> Option<PieceCopy<K>> {
        let mut copies = self.lock();
        // Looked up before counting, so a refusal leaves no entry behind.
        if crowded(copies.get(&key).copied().unwrap_or(0), self.cap, insist) {
            return None;
        }
        *copies.entry(key.clone()).or_default() += 1;
        Some(PieceCopy {
            copies: Arc::clone(self),
            key,
        })
    }
}

impl<K: Hash + Eq> PieceCopies<K> {
    /// Uploads of `key` in flight.
    #[cfg(test)]
    fn in_flight(&self, key: &K) -> usize {
        self.lock().get(key).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, usize>> {
        // A poisoned lock only means a panic elsewhere mid-update of a count: keep using them.
        self.copies.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<K: Hash + Eq> Drop for PieceCopy<K> {
    fn drop(&mut self) {
        let mut copies = self.copies.lock();
        if let Some(count) = copies.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                copies.remove(&self.key);
            }
        }
    }
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
    fn copies_of_one_piece_beyond_the_cap_go_elsewhere_unless_they_insist() {
        let copies = PieceCopies::new(2);
        let first = copies.try_take(("a", 7), false).expect("under the cap");
        let _second = copies.try_take(("a", 7), false).expect("under the cap");
        assert!(copies.try_take(("a", 7), false).is_none(), "a third copy");
        // Other pieces, and the same index of another blob, are counted apart.
        assert!(copies.try_take(("a", 8), false).is_some());
        assert!(copies.try_take(("b", 7), false).is_some());
        let insisting = copies
            .try_take(("a", 7), true)
            .expect("insisting is served");
        assert_eq!(copies.in_flight(&("a", 7)), 3);
        drop(first);
        drop(insisting);
        assert_eq!(copies.in_flight(&("a", 7)), 1);
        assert!(
            copies.try_take(("a", 7), false).is_some(),
            "a copy was given back"
        );
    }

    #[test]
    fn a_piece_whose_copies_are_all_given_back_or_refused_is_forgotten() {
        let copies = PieceCopies::new(1);
        for piece in 0..100 {
            drop(copies.try_take(("a", piece), false));
        }
        assert!(copies.lock().is_empty());
        // A bound of none refuses every copy that does not insist, and counts nothing.
        let none = PieceCopies::new(0);
        assert!(none.try_take(("a", 0), false).is_none());
        assert!(none.lock().is_empty());
    }

    #[test]
    fn crowded_is_at_the_cap_without_insisting() {
        assert!(!crowded(7, 8, false));
        assert!(crowded(8, 8, false));
        assert!(!crowded(8, 8, true));
    }

    #[test]
    fn busy_is_when_every_slot_is_taken() {
        assert!(!busy(0, 1));
        assert!(!busy(31, 32));
        assert!(busy(32, 32));
        assert!(busy(40, 32));
    }
}
