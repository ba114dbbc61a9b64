//! The tracker model: which agents have announced and whether complete, kept as index lists
//! so that an announce costs O(limit) at 15,000 peers; the answer is `shoal_swarm::handout`,
//! the policy `shoal-tracker` runs, over those lists.

use rand::rngs::Xoshiro256PlusPlus;
use shoal_swarm::handout::{self, Class, Classes};

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
        if self.records[node as usize].is_some_and(|record| record.complete == complete) {
            return;
        }
        self.forget(node);
        let list = self.list(complete);
        list.push(node);
        let at = list.len() - 1;
        self.records[node as usize] = Some(Record { complete, at });
    }

    /// Drops an agent's record (it expired): it is no longer handed out.
    pub(crate) fn forget(&mut self, node: u32) {
        let Some(record) = self.records[node as usize].take() else {
            return;
        };
        let list = self.list(record.complete);
        list.swap_remove(record.at);
        if let Some(&moved) = list.get(record.at)
            && let Some(moved) = self.records[moved as usize].as_mut()
        {
            moved.at = record.at;
        }
    }

    /// Agents recorded in the swarm, as the tracker's store counts its members.
    pub(crate) fn members(&self) -> u32 {
        (self.complete.len() + self.partial.len()) as u32
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
        let is_caller = |&&node: &&u32| node == caller;
        match self.policy {
            HandoutPolicy::OriginsFirst => {
                let classes = Classes {
                    origins: self.owners.as_slice(),
                    complete: self.complete.as_slice(),
                    partial: self.partial.as_slice(),
                };
                let is_origin = |&&node: &&u32| self.owners.contains(&node);
                handout::handout(classes, is_caller, is_origin, self.limit, rng)
                    .into_iter()
                    .map(|chosen| *chosen.peer)
                    .collect()
            }
            HandoutPolicy::Random => {
                let mut out = Vec::with_capacity(self.limit);
                handout::sample(&Everyone(self), is_caller, self.limit, rng, &mut out);
                out.into_iter().copied().collect()
            }
        }
    }
}

/// Origins and agents as one class, for the `random` baseline.
struct Everyone<'a>(&'a Tracker);

impl<'a> Class for Everyone<'a> {
    type Member = &'a u32;

    fn len(&self) -> usize {
        let t = self.0;
        t.owners.len() + t.complete.len() + t.partial.len()
    }

    fn member(&self, index: usize) -> &'a u32 {
        let t = self.0;
        let (a, b) = (t.owners.len(), t.complete.len());
        if index < a {
            &t.owners[index]
        } else if index < a + b {
            &t.complete[index - a]
        } else {
            &t.partial[index - a - b]
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
    fn a_forgotten_agent_is_no_longer_handed_out() {
        let mut tracker = Tracker::new(HandoutPolicy::OriginsFirst, 10, vec![0], 6);
        for node in 1..6 {
            tracker.announce(node, node == 5);
        }
        tracker.forget(2);
        tracker.forget(5);
        tracker.forget(2);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let mut out = tracker.handout(1, &mut rng);
        out.sort_unstable();
        assert_eq!(out, [0, 3, 4]);
        tracker.announce(2, true);
        let mut out = tracker.handout(1, &mut rng);
        out.sort_unstable();
        assert_eq!(out, [0, 2, 3, 4]);
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
