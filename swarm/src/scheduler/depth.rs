//! Request depth per peer, adapted to what the peer delivers: enough requests in flight that a
//! request's round trip is a small share of the time they take, so a lone fast peer is never
//! idle between pieces, and no more, so a crowd's requests spread over many peers instead of
//! queueing at a few. A peer serves the pieces it is asked for at once, sharing its link among
//! them (HTTP/2 streams, interleaved), so pieces asked together end together and the link
//! idles for a round trip before the next ones flow: with `d` in flight that idle share is
//! `rtt / (d × piece + rtt)`, kept below [`SLACK`] by `d = rtt / (SLACK × piece)`. A peer that
//! answers in order (the piece stream) sends each piece after the one before, so the link idles
//! only when a request arrives after the pieces ahead of it are sent: one piece more than a
//! round trip's worth, `d = 1 + rtt / piece`, keeps it busy, and more only queue there.

use std::time::Duration;

/// Depth before a peer has been measured: one piece on the wire and one answer on its way.
pub(super) const INITIAL_DEPTH: usize = 2;
/// Share of a peer's time we accept leaving idle between rounds rather than add a request: in
/// a crowd a round trip is a sliver of a piece, and one more request at a busy seeder only
/// takes its upload from someone else.
const SLACK: f64 = 0.05;
/// A rate sample spans at least this much time with requests in flight, so the millisecond
/// clock's rounding stays small even when pieces take a fraction of a millisecond.
const WINDOW_MS: u64 = 50;
/// Weight of a new sample in the smoothed piece time.
const GAIN: f64 = 0.25;

/// One peer's measured round trip and piece time.
#[derive(Debug, Default)]
pub(super) struct Depth {
    /// Shortest time from sending a request to its answer in this window and the one before,
    /// in microseconds. The shortest, not an average: answers delayed behind our own requests
    /// (a peer short of CPU starts each stream later the more we ask at once) would otherwise
    /// argue for asking even more.
    round_trip_us: Option<f64>,
    previous_round_trip_us: Option<f64>,
    /// Smoothed time with requests in flight per piece delivered, in microseconds.
    piece_us: Option<f64>,
    /// Since when requests have been in flight without a break; None while idle.
    busy_since: Option<u64>,
    /// Busy time of the current window before `busy_since`.
    busy_ms: u64,
    /// Pieces delivered in the current window.
    pieces: u32,
    /// The last piece was answered in order, after the ones asked before it.
    in_order: bool,
}

fn smooth(old: Option<f64>, sample: f64) -> f64 {
    old.map_or(sample, |old| old + GAIN * (sample - old))
}

impl Depth {
    /// Requests to keep in flight at this peer, between 1 and `max`.
    pub(super) fn target(&self, max: usize) -> usize {
        let round_trip = match (self.round_trip_us, self.previous_round_trip_us) {
            (Some(now), Some(before)) => Some(now.min(before)),
            (now, before) => now.or(before),
        };
        let (Some(round_trip), Some(piece)) = (round_trip, self.piece_us) else {
            return INITIAL_DEPTH.min(max);
        };
        let piece = piece.max(1.0);
        let needed = if self.in_order {
            1.0 + (round_trip / piece).ceil()
        } else {
            (round_trip / (SLACK * piece)).ceil()
        };
        // Bounded before the cast; a NaN (never produced here) would cast to 0.
        (needed.clamp(1.0, max as f64) as usize).clamp(1, max)
    }

    /// A request was sent while `in_flight` others were outstanding.
    pub(super) fn sent(&mut self, now_ms: u64, in_flight: usize) {
        if in_flight == 0 && self.busy_since.is_none() {
            self.busy_since = Some(now_ms);
        }
    }

    /// A request ended (delivered, failed, refused or cancelled) and `in_flight` remain.
    pub(super) fn ended(&mut self, now_ms: u64, in_flight: usize) {
        if in_flight == 0
            && let Some(since) = self.busy_since.take()
        {
            self.busy_ms += now_ms.saturating_sub(since);
        }
    }

    /// A piece arrived whose request was answered after `round_trip`, `in_order` after the
    /// pieces asked before it (its request already counted as [`ended`](Depth::ended)).
    pub(super) fn delivered(&mut self, now_ms: u64, round_trip: Duration, in_order: bool) {
        self.in_order = in_order;
        let round_trip = round_trip.as_secs_f64() * 1e6;
        self.round_trip_us = Some(
            self.round_trip_us
                .map_or(round_trip, |old| old.min(round_trip)),
        );
        self.pieces += 1;
        let open = self
            .busy_since
            .map_or(0, |since| now_ms.saturating_sub(since));
        let busy = self.busy_ms + open;
        if busy >= WINDOW_MS {
            let sample = busy as f64 * 1e3 / f64::from(self.pieces);
            self.piece_us = Some(smooth(self.piece_us, sample));
            self.previous_round_trip_us = self.round_trip_us.take();
            self.busy_ms = 0;
            self.pieces = 0;
            if self.busy_since.is_some() {
                self.busy_since = Some(now_ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Delivers pieces 1..=`pieces` back to back, one every `piece_ms`, piece `i` answered
    /// after `round_trip(i)`, with `in_flight` requests kept outstanding.
    fn run_with(
        depth: &mut Depth,
        pieces: u64,
        piece_ms: u64,
        in_flight: usize,
        mut round_trip: impl FnMut(&Depth, u64) -> Duration,
    ) {
        depth.sent(0, 0);
        for i in 1..=pieces {
            let answered = round_trip(depth, i);
            depth.ended(i * piece_ms, in_flight - 1);
            depth.delivered(i * piece_ms, answered, false);
            depth.sent(i * piece_ms, in_flight - 1);
        }
    }

    fn run(depth: &mut Depth, pieces: u64, piece_ms: u64, round_trip: Duration, in_flight: usize) {
        run_with(depth, pieces, piece_ms, in_flight, |_, _| round_trip);
    }

    #[test]
    fn an_unmeasured_peer_gets_the_initial_depth_within_the_bound() {
        let depth = Depth::default();
        assert_eq!(depth.target(8), INITIAL_DEPTH);
        assert_eq!(depth.target(1), 1);
    }

    #[test]
    fn a_round_trip_of_a_fifth_of_a_piece_needs_four_in_flight() {
        // 10 ms per piece, answers after 2 ms: with four asked together the link idles 2 ms
        // in 42 (under 5 %), with three 2 ms in 32.
        let mut depth = Depth::default();
        run(&mut depth, 200, 10, Duration::from_millis(2), 4);
        assert_eq!(depth.target(16), 4);
        assert_eq!(depth.target(3), 3, "bounded");
    }

    #[test]
    fn a_peer_answering_in_order_needs_one_piece_more_than_a_round_trip_holds() {
        // 10 ms per piece, one after the other: a 2 ms round trip is covered by one request
        // waiting behind the piece on the wire (HTTP/2's interleaving needs four), a 25 ms one
        // by three.
        for (round_trip_ms, want) in [(2, 2), (25, 4)] {
            let mut depth = Depth::default();
            depth.sent(0, 0);
            for i in 1..=200 {
                depth.ended(i * 10, 1);
                depth.delivered(i * 10, Duration::from_millis(round_trip_ms), true);
                depth.sent(i * 10, 1);
            }
            assert_eq!(depth.target(16), want, "round trip {round_trip_ms} ms");
        }
    }

    #[test]
    fn a_slow_peer_with_a_short_round_trip_gets_one_request() {
        // A crowded seeder: a piece every 2 s, answers within 1 ms.
        let mut depth = Depth::default();
        run(&mut depth, 10, 2_000, Duration::from_millis(1), 1);
        assert_eq!(depth.target(16), 1);
    }

    #[test]
    fn a_fast_peer_whose_answer_takes_most_of_a_piece_fills_the_bound() {
        let mut depth = Depth::default();
        run(&mut depth, 100, 4, Duration::from_micros(3_000), 2);
        assert_eq!(depth.target(8), 8);
    }

    #[test]
    fn idle_time_between_requests_does_not_count_as_piece_time() {
        // One piece every 10 ms of busy time, with 1 s idle gaps between them.
        let mut depth = Depth::default();
        for i in 0..20u64 {
            let start = i * 1_010;
            depth.sent(start, 0);
            depth.ended(start + 10, 0);
            depth.delivered(start + 10, Duration::from_micros(1_500), false);
        }
        // 1.5 ms answers over 10 ms pieces (not 1 s ones): three.
        assert_eq!(depth.target(16), 3);
    }

    #[test]
    fn answers_slowed_by_our_own_requests_do_not_deepen_the_pipe() {
        // 10 ms pieces; one answer in eight comes within 0.5 ms, the rest queue behind the
        // other requests for 20 ms. The fast ones show the path: one request covers it.
        let mut depth = Depth::default();
        run_with(&mut depth, 200, 10, 4, |_, i| {
            Duration::from_micros(if i % 8 == 0 { 500 } else { 20_000 })
        });
        assert_eq!(depth.target(16), 1);
    }

    #[test]
    fn a_longer_path_is_followed_within_two_windows() {
        // 10 ms pieces answered after 0.4 ms, then (the path got longer) after 2 ms.
        let mut depth = Depth::default();
        run_with(&mut depth, 200, 10, 2, |depth, i| {
            if i == 101 {
                assert_eq!(depth.target(16), 1, "before the path changed");
            }
            Duration::from_micros(if i <= 100 { 400 } else { 2_000 })
        });
        assert_eq!(depth.target(16), 4);
    }
}
