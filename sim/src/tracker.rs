//! The tracker model: which agents have announced, whether complete, and the handout policy.
//!
//! `shoal-tracker`'s `handout` is private to that crate and takes the whole swarm as a `Vec` per
//! announce (O(swarm) each, O(swarm²) per announce round at 15,000 peers), so this module
//! re-implements the same policy over index lists: the owning origins first, then complete
//! peers, then the rest, a uniform sample within each class, never the caller, at most `limit`.

use rand::RngExt;
use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::SliceRandom;

use crate::config::HandoutPolicy;

/// Where an agent is recorded: its class and index in that class's list.
#[derive(Clone, Copy)]
struct Record {
    complete: bool,
    at: usize,
}

pub(crate) struct Tracker {
    policy: HandoutPolicy,
    limit: usize,
    /// The origins owning the blob (node indices).
    owners: Vec<u32>,
    complete: Vec<u32>,
    partial: Vec<u32>,
    records: Vec<Option<Record>>,
}

impl Tracker {
    pub(crate) fn new(
        policy: HandoutPolicy,
        limit: usize,
        owners: Vec<u32>,
        nodes: usize,
    ) -> Tracker {
        Tracker {
            policy,
            limit,
            owners,
            complete: Vec::new(),
            partial: Vec::new(),
            records: vec![None; nodes],
        }
    }

    /// Records an agent's announce (first, or with a changed completeness).
    pub(crate) fn announce(&mut self, node: u32, complete: bool) {
        let slot = node as usize;
        if let Some(record) = self.records[slot] {
            if record.complete == complete {
                return;
            }
            let list = self.list(record.complete);
            list.swap_remove(record.at);
            if let Some(&moved) = list.get(record.at)
                && let Some(moved) = self.records[moved as usize].as_mut()
            {
                moved.at = record.at;
            }
        }
        let list = self.list(complete);
        list.push(node);
        let at = list.len() - 1;
        self.records[slot] = Some(Record { complete, at });
    }

    fn list(&mut self, complete: bool) -> &mut Vec<u32> {
        if complete {
            &mut self.complete
        } else {
            &mut self.partial
        }
    }

    /// The peers an announce of `caller` is answered with.
    pub(crate) fn handout(&self, caller: u32, rng: &mut Xoshiro256PlusPlus) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.limit);
        match self.policy {
            HandoutPolicy::OriginsFirst => {
                for class in [&self.owners, &self.complete, &self.partial] {
                    let room = self.limit - out.len();
                    sample(class.len(), |i| class[i], room, caller, &mut out, rng);
                }
            }
            HandoutPolicy::Random => {
                let (a, b) = (self.owners.len(), self.complete.len());
                let all = a + b + self.partial.len();
                let at = |i: usize| {
                    if i < a {
                        self.owners[i]
                    } else if i < a + b {
                        self.complete[i - a]
                    } else {
                        self.partial[i - a - b]
                    }
                };
                sample(all, at, self.limit, caller, &mut out, rng);
            }
        }
        out
    }
}

/// Appends up to `want` distinct members of a class of `len` (member `i` is `at(i)`), never
/// `caller`, uniformly at random. Small classes are shuffled; large ones sampled by rejection,
/// so the cost is O(want) however large the swarm.
fn sample(
    len: usize,
    at: impl Fn(usize) -> u32,
    want: usize,
    caller: u32,
    out: &mut Vec<u32>,
    rng: &mut Xoshiro256PlusPlus,
) {
    if want == 0 || len == 0 {
        return;
    }
    if len <= 4 * want {
        let mut members: Vec<u32> = (0..len).map(&at).filter(|&m| m != caller).collect();
        let (chosen, _) = members.partial_shuffle(rng, want);
        out.extend_from_slice(chosen);
        return;
    }
    // More than 4× `want` members: rejection hits a taken one under 1/4 of the time.
    let start = out.len();
    while out.len() - start < want {
        let member = at(rng.random_range(0..len));
        if member != caller && !out[start..].contains(&member) {
            out.push(member);
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn origins_come_first_then_complete_then_partial_never_the_caller() {
        let mut tracker = Tracker::new(HandoutPolicy::OriginsFirst, 6, vec![0, 1], 20);
        for node in 2..20 {
            tracker.announce(node, false);
        }
        tracker.announce(5, true);
        tracker.announce(6, true);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let out = tracker.handout(5, &mut rng);
        assert_eq!(out.len(), 6);
        let mut head = out[..2].to_vec();
        head.sort_unstable();
        assert_eq!(head, [0, 1]);
        assert_eq!(out[2], 6, "the only other complete peer comes next");
        assert!(!out.contains(&5));
        let mut unique = out.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), out.len());
    }

    #[test]
    fn a_large_swarm_is_sampled_without_duplicates() {
        let mut tracker = Tracker::new(HandoutPolicy::Random, 30, vec![0], 10_000);
        for node in 1..10_000 {
            tracker.announce(node, node % 3 == 0);
        }
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
        let out = tracker.handout(7, &mut rng);
        let mut unique = out.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!((out.len(), unique.len()), (30, 30));
        assert!(!out.contains(&7));
    }
}
