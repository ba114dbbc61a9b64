//! A client streaming the blob out of its agent (the runtime pulling through it): it reads the
//! verified prefix in order at its own rate, so it finishes only after the last piece of the
//! prefix lands and it has read everything from there on. On the test bed the clients, not the
//! network, set the last seconds of a pull when the prefix stays short until the end
//! (docs/BENCHMARKS.md); a download's completion time alone cannot show that.

use shoal_core::Bitfield;

use crate::queue::Nanos;

#[derive(Debug, Clone)]
pub struct Reader {
    /// The first piece not read yet.
    next: u32,
    /// When the reader will have read everything before `next`.
    clock: Nanos,
    /// Nanoseconds the client needs per byte.
    per_byte: f64,
}

impl Reader {
    /// A client that starts reading when its agent's download starts, at `rate` bytes/s.
    pub fn new(started: Nanos, rate: f64) -> Reader {
        Reader {
            next: 0,
            clock: started,
            per_byte: 1e9 / rate,
        }
    }

    /// The agent verified pieces by `now`: read on through whatever the prefix now holds.
    pub fn advance(&mut self, have: &Bitfield, now: Nanos, piece_bytes: impl Fn(u32) -> u64) {
        if self.next >= have.len() || !have.get(self.next) {
            return;
        }
        // Pieces past `next` that landed earlier are waiting on disk: only the prefix piece
        // that just landed can have held the reader up.
        self.clock = self.clock.max(now);
        while self.next < have.len() && have.get(self.next) {
            self.clock += (piece_bytes(self.next) as f64 * self.per_byte).round() as Nanos;
            self.next += 1;
        }
    }

    /// When the client has read the whole blob, once every piece is verified.
    pub fn done(&self, pieces: u32) -> Option<Nanos> {
        (self.next >= pieces).then_some(self.clock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Nanos = 1_000_000_000;

    #[test]
    fn a_reader_waits_for_the_prefix_and_then_reads_what_landed_ahead_at_its_rate() {
        // 4 pieces of 100 bytes, read at 100 bytes/s: one second per piece.
        let mut have = Bitfield::new(4);
        let mut reader = Reader::new(0, 100.0);
        let bytes = |_| 100;
        // Pieces 1 to 3 land first: nothing is readable while piece 0 is missing.
        for piece in 1..4 {
            have.set(piece);
            reader.advance(&have, SECOND, bytes);
        }
        assert_eq!(reader.done(4), None);
        // Piece 0 lands at 10 s: the client reads all four from then on.
        have.set(0);
        reader.advance(&have, 10 * SECOND, bytes);
        assert_eq!(reader.done(4), Some(14 * SECOND));
    }

    #[test]
    fn a_prefix_that_keeps_ahead_of_the_reader_costs_only_the_reading() {
        // Pieces land in order every half second; the reader needs a second per piece.
        let mut have = Bitfield::new(4);
        let mut reader = Reader::new(0, 100.0);
        for piece in 0..4 {
            have.set(piece);
            reader.advance(&have, u64::from(piece + 1) * SECOND / 2, |_| 100);
        }
        assert_eq!(reader.done(4), Some(SECOND / 2 + 4 * SECOND));
    }
}
