//! When a request has taken too long: far longer than this download's requests usually take.
//! A peer whose process hung with its sockets open (its sessions stand, its kernel acknowledges
//! our bytes) never answers, and the piece timeout that fails such a request must stay long
//! enough for a slow but healthy peer. Long before that, a request as old as no healthy one gets
//! is "stale": its piece may be asked of another holder as well (a hedged request, as BitTorrent
//! clients time requests out from their measured round trips), and its peer gets no new request
//! until it delivers one. The stale request itself stays until it is answered, a copy wins and it
//! is cancelled, or the piece timeout fails it, so a peer that was merely slow loses nothing.

/// Fewest delivered requests before their times are trusted to say what "usual" is.
const MIN_SAMPLES: u32 = 8;
/// Mean deviations past the mean at which a request is stale: Jacobson's retransmission
/// timeout uses 4, and a request time varies as a round trip does (the peer's queue).
const DEVIATIONS: f64 = 4.0;
/// A request is never stale sooner than this: on loopback or a fast link the usual time is a
/// few milliseconds, and a peer pausing for a garbage collection or a disk flush is not hung.
pub(super) const FLOOR_MS: f64 = 2_000.0;
/// Weights of a new sample in the smoothed mean and deviation (RFC 6298's 1/8 and 1/4).
const MEAN_GAIN: f64 = 0.125;
const DEVIATION_GAIN: f64 = 0.25;

/// The smoothed time from sending a request to its piece's delivery, over one download.
#[derive(Debug, Default)]
pub(super) struct RequestTimes {
    mean_ms: f64,
    deviation_ms: f64,
    samples: u32,
}

impl RequestTimes {
    /// A request was answered with its piece `ms` after it was sent.
    pub(super) fn record(&mut self, ms: u64) {
        let sample = ms as f64;
        if self.samples == 0 {
            self.mean_ms = sample;
            self.deviation_ms = sample / 2.0;
        } else {
            let error = sample - self.mean_ms;
            self.mean_ms += MEAN_GAIN * error;
            self.deviation_ms += DEVIATION_GAIN * (error.abs() - self.deviation_ms);
        }
        self.samples = self.samples.saturating_add(1);
    }

    /// Age from which a request is stale, below `timeout_ms` (when requests fail anyway); None
    /// until enough requests were delivered to say.
    pub(super) fn stale_after(&self, timeout_ms: u64) -> Option<u64> {
        if self.samples < MIN_SAMPLES {
            return None;
        }
        let after = (self.mean_ms + DEVIATIONS * self.deviation_ms).max(FLOOR_MS);
        // Bounded before the cast.
        let after = after.min(timeout_ms as f64) as u64;
        (after < timeout_ms).then_some(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_stale_before_enough_requests_were_delivered() {
        let mut times = RequestTimes::default();
        for _ in 0..MIN_SAMPLES - 1 {
            times.record(100);
        }
        assert_eq!(times.stale_after(15_000), None);
        times.record(100);
        assert_eq!(times.stale_after(15_000), Some(2_000));
    }

    #[test]
    fn steady_times_go_stale_at_the_floor_and_varied_ones_later() {
        let mut steady = RequestTimes::default();
        let mut varied = RequestTimes::default();
        for i in 0..100 {
            steady.record(500);
            varied.record(if i % 2 == 0 { 200 } else { 1_800 });
        }
        assert_eq!(steady.stale_after(15_000), Some(2_000));
        let after = varied.stale_after(15_000).expect("measured");
        // Mean 1,000 ms, deviation about 800 ms: stale past about 4.2 s.
        assert!((3_500..5_000).contains(&after), "{after}");
    }

    #[test]
    fn never_at_or_past_the_timeout() {
        let mut slow = RequestTimes::default();
        for _ in 0..20 {
            slow.record(9_000);
        }
        assert_eq!(slow.stale_after(9_000), None);
        let after = slow.stale_after(60_000).expect("measured");
        assert!((9_000..9_200).contains(&after), "{after}");
    }
}
