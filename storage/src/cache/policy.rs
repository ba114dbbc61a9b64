//! The eviction policy as a pure function: given what the cache holds, who is reading what,
//! what its owner pins and when each blob was last used, which blobs go. No disk, no clock, no
//! locks.

use std::time::{Duration, Instant};

use shoal_core::Digest;

use super::Percent;

/// The byte budget: above `high` bytes eviction starts, and it goes on down to `low`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub high: u64,
    pub low: u64,
    /// A blob unused for this long goes even when the cache is under budget; `None`: only the
    /// byte budget evicts.
    pub ttl: Option<Duration>,
}

impl Budget {
    /// The budget of a `cache:` config section: watermarks as shares of `capacity`.
    pub fn new(capacity: u64, high: Percent, low: Percent, ttl: Option<Duration>) -> Budget {
        Budget {
            high: high.of(capacity),
            low: low.of(capacity),
            ttl,
        }
    }

    /// Whether a blob last used at `last_used` has outlived the TTL at `now`.
    pub fn expired(&self, last_used: Instant, now: Instant) -> bool {
        self.ttl
            .is_some_and(|ttl| now.saturating_duration_since(last_used) >= ttl)
    }
}

/// One complete blob in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub digest: Digest,
    pub length: u64,
    pub last_used: Instant,
    /// Responses streaming this blob right now; such a blob is never evicted.
    pub readers: usize,
    /// Kept by the cache's owner whatever its age (an origin's blob not yet in its backend).
    pub pinned: bool,
}

impl Entry {
    fn held(&self) -> bool {
        self.readers > 0 || self.pinned
    }
}

/// The blobs to delete, in the order to delete them: first every idle blob past its TTL, then,
/// if the rest still exceeds `budget.high`, idle blobs least recently used first until at most
/// `budget.low` bytes remain (or nothing idle is left). Blobs being read or pinned are never
/// picked, but their bytes count.
pub fn evictions(entries: &[Entry], now: Instant, budget: Budget) -> Vec<Digest> {
    let mut idle: Vec<&Entry> = entries.iter().filter(|e| !e.held()).collect();
    idle.sort_by_key(|e| (e.last_used, e.digest));
    let mut total: u64 = entries.iter().map(|e| e.length).sum();
    let mut doomed = Vec::new();
    idle.retain(|e| {
        let expired = budget.expired(e.last_used, now);
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
            ttl: Some(24 * HOUR),
        }
    }

    /// Entry `n` (its digest is that of `[n]`), last used `age` before `now`.
    fn entry(now: Instant, n: u8, length: u64, age: Duration, readers: usize) -> Entry {
        Entry {
            digest: Digest::of(&[n]),
            length,
            last_used: now - age,
            readers,
            pinned: false,
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

    #[test]
    fn pinned_blobs_are_never_evicted_and_the_next_least_recently_used_go_instead() {
        let now = Instant::now() + 48 * HOUR;
        let mut entries = [
            entry(now, 1, 40, 30 * HOUR, 0),
            entry(now, 2, 40, 3 * HOUR, 0),
            entry(now, 3, 40, 2 * HOUR, 0),
            entry(now, 4, 40, HOUR, 0),
        ];
        entries[0].pinned = true;
        entries[1].pinned = true;
        // 160 > 150: the pinned oldest two stay (even past the TTL), so 3 goes, then 4, and
        // the pinned 80 bytes still count, leaving 80 over the low watermark of 50.
        assert_eq!(ids(&evictions(&entries, now, budget(150, 50))), [3, 4]);
    }

    #[test]
    fn without_a_ttl_only_the_budget_evicts() {
        let now = Instant::now() + 48 * HOUR;
        let entries = [entry(now, 1, 10, 47 * HOUR, 0), entry(now, 2, 10, HOUR, 0)];
        let unlimited_age = Budget {
            high: 100,
            low: 50,
            ttl: None,
        };
        assert!(evictions(&entries, now, unlimited_age).is_empty());
        let tight = Budget {
            high: 15,
            ..unlimited_age
        };
        assert_eq!(
            ids(&evictions(&entries, now, Budget { low: 10, ..tight })),
            [1]
        );
    }

    #[test]
    fn a_budget_takes_its_watermarks_as_shares_of_the_capacity() {
        let budget = Budget::new(1000, Percent(90), Percent(75), None);
        assert_eq!((budget.high, budget.low, budget.ttl), (900, 750, None));
    }
}
