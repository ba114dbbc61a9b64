//! The eviction policy, pure: given what the cache holds, who is reading what, what its owner
//! pins and when each blob was last used, which blobs go, in order. No disk, no clock, no locks.

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

/// The policy, one candidate at a time: first every idle blob past its TTL, then, if the rest
/// still exceeds `budget.high`, idle blobs least recently used first until at most `budget.low`
/// bytes remain (or nothing idle is left). Blobs being read or pinned are never picked, but
/// their bytes count. The caller may keep a candidate after all (a read started since the
/// listing, a veto from the cache's owner): its bytes still count, so the walk goes on to the
/// next candidate until the budget is met.
#[derive(Debug)]
pub struct Walk {
    /// Idle blobs: the expired ones by age, then the others by age (digest, length, expired).
    candidates: std::vec::IntoIter<(Digest, u64, bool)>,
    total: u64,
    budget: Budget,
    /// Evicting for size has begun: it goes on down to the low watermark.
    sizing: bool,
}

impl Walk {
    pub fn new(entries: &[Entry], now: Instant, budget: Budget) -> Walk {
        let mut idle: Vec<(bool, Instant, Digest, u64)> = entries
            .iter()
            .filter(|e| !e.held())
            .map(|e| {
                (
                    !budget.expired(e.last_used, now),
                    e.last_used,
                    e.digest,
                    e.length,
                )
            })
            .collect();
        idle.sort();
        Walk {
            candidates: idle
                .into_iter()
                .map(|(fresh, _, digest, length)| (digest, length, !fresh))
                .collect::<Vec<_>>()
                .into_iter(),
            total: entries.iter().map(|e| e.length).sum(),
            budget,
            sizing: false,
        }
    }

    /// The last candidate left the store.
    pub fn gone(&mut self, length: u64) {
        self.total = self.total.saturating_sub(length);
    }

    /// Bytes still held: every entry's, less those gone.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// The next blob to delete and its length; `None` once the budget is met. Report each one that
/// left the store with [`Walk::gone`] before asking for the next.
impl Iterator for Walk {
    type Item = (Digest, u64);

    fn next(&mut self) -> Option<(Digest, u64)> {
        let (digest, length, expired) = self.candidates.next()?;
        if !expired {
            // Every expired candidate came first, so this is the budget after expiry.
            if !self.sizing && self.total <= self.budget.high {
                return None;
            }
            self.sizing = true;
            if self.total <= self.budget.low {
                return None;
            }
        }
        Some((digest, length))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blobs to delete, in order, when every candidate goes.
    fn evictions(entries: &[Entry], now: Instant, budget: Budget) -> Vec<Digest> {
        let mut walk = Walk::new(entries, now, budget);
        let mut doomed = Vec::new();
        while let Some((digest, length)) = walk.next() {
            walk.gone(length);
            doomed.push(digest);
        }
        doomed
    }

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

    #[test]
    fn a_candidate_kept_after_all_still_counts_and_the_walk_goes_on_to_the_low_watermark() {
        let now = Instant::now() + 48 * HOUR;
        let entries = [
            entry(now, 1, 40, 4 * HOUR, 0),
            entry(now, 2, 40, 3 * HOUR, 0),
            entry(now, 3, 40, 2 * HOUR, 0),
            entry(now, 4, 40, HOUR, 0),
        ];
        assert_eq!(ids(&evictions(&entries, now, budget(150, 50))), [1, 2, 3]);
        // The oldest stays after all: 160 bytes are still held, so three others go.
        let mut walk = Walk::new(&entries, now, budget(150, 50));
        let (kept, _) = walk.next().expect("over budget");
        let mut gone = Vec::new();
        while let Some((digest, length)) = walk.next() {
            walk.gone(length);
            gone.push(digest);
        }
        assert_eq!(ids(&[kept]), [1]);
        assert_eq!(ids(&gone), [2, 3, 4]);
        assert_eq!(walk.total(), 40);
    }
}
