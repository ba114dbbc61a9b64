//! The eviction policy as a pure function: given what the cache holds, who is reading what and
//! when each blob was last used, which blobs go. No disk, no clock, no locks.

use std::time::{Duration, Instant};

use shoal_core::Digest;

/// The byte budget: above `high` bytes eviction starts, and it goes on down to `low`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub high: u64,
    pub low: u64,
    /// A blob unused for this long goes even when the cache is under budget.
    pub ttl: Duration,
}

/// One complete blob in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub digest: Digest,
    pub length: u64,
    pub last_used: Instant,
    /// Responses streaming this blob right now; such a blob is never evicted.
    pub readers: usize,
}

/// The blobs to delete, in the order to delete them: first every idle blob past its TTL, then,
/// if the rest still exceeds `budget.high`, idle blobs least recently used first until at most
/// `budget.low` bytes remain (or nothing idle is left).
pub fn evictions(entries: &[Entry], now: Instant, budget: Budget) -> Vec<Digest> {
    let mut idle: Vec<&Entry> = entries.iter().filter(|e| e.readers == 0).collect();
    idle.sort_by_key(|e| (e.last_used, e.digest));
    let mut total: u64 = entries.iter().map(|e| e.length).sum();
    let mut doomed = Vec::new();
    idle.retain(|e| {
        let expired = now.saturating_duration_since(e.last_used) >= budget.ttl;
        if expired {
            total -= e.length;
            doomed.push(e.digest);
        }
        !expired
    });
    if total > budget.high {
        for entry in idle {
            if total <= budget.low {
                break;
            }
            total -= entry.length;
            doomed.push(entry.digest);
        }
    }
    doomed
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn budget(high: u64, low: u64) -> Budget {
        Budget {
            high,
            low,
            ttl: 24 * HOUR,
        }
    }

    /// Entry `n` (its digest is that of `[n]`), last used `age` before `now`.
    fn entry(now: Instant, n: u8, length: u64, age: Duration, readers: usize) -> Entry {
        Entry {
            digest: Digest::of(&[n]),
            length,
            last_used: now - age,
            readers,
        }
    }

    fn ids(digests: &[Digest]) -> Vec<u8> {
        digests
            .iter()
            .map(|d| (0..=255).find(|n| Digest::of(&[*n]) == *d).unwrap())
            .collect()
    }

    #[test]
    fn nothing_goes_at_or_under_the_high_watermark() {
        let now = Instant::now() + 48 * HOUR;
        let entries = [entry(now, 1, 50, HOUR, 0), entry(now, 2, 40, 2 * HOUR, 0)];
        assert!(evictions(&entries, now, budget(90, 10)).is_empty());
    }

    #[test]
    fn over_the_high_watermark_least_recently_used_go_down_to_the_low_one() {
        let now = Instant::now() + 48 * HOUR;
        let entries = [
            entry(now, 1, 40, HOUR, 0),
            entry(now, 2, 40, 3 * HOUR, 0),
            entry(now, 3, 40, 2 * HOUR, 0),
            entry(now, 4, 40, 4 * HOUR, 0),
        ];
        // 160 bytes > 150: evict oldest first (4, then 2) until ≤ 100.
        assert_eq!(ids(&evictions(&entries, now, budget(150, 100))), [4, 2]);
        // A low watermark of 0 empties the cache, oldest first.
        assert_eq!(ids(&evictions(&entries, now, budget(150, 0))), [4, 2, 3, 1]);
    }

    #[test]
    fn blobs_being_read_are_never_evicted() {
        let now = Instant::now() + 48 * HOUR;
        let entries = [
            entry(now, 1, 100, 30 * HOUR, 1),
            entry(now, 2, 100, 5 * HOUR, 2),
            entry(now, 3, 100, HOUR, 0),
        ];
        // Over budget and past TTL, but only the idle one can go, even though it is the newest.
        assert_eq!(ids(&evictions(&entries, now, budget(50, 0))), [3]);
    }

    #[test]
    fn idle_blobs_past_their_ttl_go_even_under_budget() {
        let now = Instant::now() + 48 * HOUR;
        let entries = [
            entry(now, 1, 10, 25 * HOUR, 0),
            entry(now, 2, 10, 23 * HOUR, 0),
            entry(now, 3, 10, 24 * HOUR, 0),
        ];
        assert_eq!(ids(&evictions(&entries, now, budget(1000, 500))), [1, 3]);
    }

    #[test]
    fn expired_bytes_count_towards_the_budget() {
        let now = Instant::now() + 48 * HOUR;
        let entries = [
            entry(now, 1, 100, 30 * HOUR, 0),
            entry(now, 2, 60, 2 * HOUR, 0),
            entry(now, 3, 60, HOUR, 0),
        ];
        // The expired blob brings 220 down to 120, under the high watermark of 150.
        assert_eq!(ids(&evictions(&entries, now, budget(150, 50))), [1]);
    }

    #[test]
    fn ties_in_age_break_by_digest_so_the_order_is_stable() {
        let now = Instant::now() + 48 * HOUR;
        let entries = [entry(now, 1, 10, HOUR, 0), entry(now, 2, 10, HOUR, 0)];
        let first = evictions(&entries, now, budget(15, 10));
        let reversed = [entries[1].clone(), entries[0].clone()];
        assert_eq!(first, evictions(&reversed, now, budget(15, 10)));
        assert_eq!(first.len(), 1);
    }
}
