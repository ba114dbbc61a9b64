//! Rendezvous (highest-random-weight) hashing: which nodes own a digest. Every node computes the
//! same order from the same member list, and removing a node only moves the keys it owned.

use sha2::Digest as _;

use crate::digest::Digest;

/// `nodes` ordered from most to least preferred owner of `key`. Each node scores the first
/// 8 bytes (big endian) of sha256(node ‖ 0x00 ‖ digest); equal scores keep input order.
pub fn rank<'a, T: AsRef<[u8]>>(key: &Digest, nodes: &'a [T]) -> Vec<&'a T> {
    let mut scored: Vec<(u64, &'a T)> = nodes
        .iter()
        .map(|node| (score(key, node.as_ref()), node))
        .collect();
    // The sort is stable, so ties stay in input order.
    scored.sort_by_key(|&(score, _)| std::cmp::Reverse(score));
    scored.into_iter().map(|(_, node)| node).collect()
}

/// The first `min(r, nodes.len())` nodes of [`rank`]: the replica set for `key`.
pub fn owners<'a, T: AsRef<[u8]>>(key: &Digest, nodes: &'a [T], r: usize) -> Vec<&'a T> {
    let mut ranked = rank(key, nodes);
    ranked.truncate(r);
    ranked
}

fn score(key: &Digest, node: &[u8]) -> u64 {
    let mut hasher = sha2::Sha256::new();
    hasher.update(node);
    // The separator keeps node names from running into the digest bytes.
    hasher.update([0u8]);
    hasher.update(key.as_bytes());
    let hash = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn key(i: u64) -> Digest {
        Digest::of(&i.to_be_bytes())
    }

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("origin-{i}:15100")).collect()
    }

    #[test]
    fn rank_is_deterministic_and_a_permutation() {
        let nodes = nodes(7);
        let first = rank(&key(1), &nodes);
        assert_eq!(first, rank(&key(1), &nodes));
        let mut sorted: Vec<&String> = first.clone();
        sorted.sort();
        let mut expected: Vec<&String> = nodes.iter().collect();
        expected.sort();
        assert_eq!(sorted, expected);
    }

    #[test]
    fn rank_follows_the_documented_score() {
        let nodes = nodes(5);
        let digest = key(42);
        let best = nodes
            .iter()
            .max_by_key(|node| {
                let mut input = node.as_bytes().to_vec();
                input.push(0);
                input.extend_from_slice(digest.as_bytes());
                let hash = Digest::of(&input);
                u64::from_be_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
            })
            .expect("non-empty");
        assert_eq!(rank(&digest, &nodes)[0], best);
    }

    #[test]
    fn ties_keep_input_order() {
        let nodes = ["same", "same", "same"];
        let ranked = rank(&key(0), &nodes);
        assert_eq!(ranked.len(), 3);
        // Equal strings score equally, so only their addresses tell them apart.
        for (i, node) in ranked.iter().enumerate() {
            assert!(std::ptr::eq(*node, &nodes[i]), "tie {i} reordered");
        }
    }

    #[test]
    fn owners_takes_the_top_of_the_rank() {
        let nodes = nodes(5);
        let digest = key(9);
        assert_eq!(
            owners(&digest, &nodes, 3),
            rank(&digest, &nodes)[..3].to_vec()
        );
        assert_eq!(owners(&digest, &nodes, 10).len(), 5);
        assert!(owners(&digest, &nodes, 0).is_empty());
        assert!(owners::<String>(&digest, &[], 3).is_empty());
    }

    #[test]
    fn keys_are_roughly_balanced() {
        let nodes = nodes(10);
        let mut counts: HashMap<&String, usize> = HashMap::new();
        for i in 0..10_000 {
            *counts.entry(rank(&key(i), &nodes)[0]).or_default() += 1;
        }
        assert_eq!(counts.len(), 10);
        for (node, count) in counts {
            // 1000 expected per node; ±20% is over 6 standard deviations.
            assert!(
                (800..=1200).contains(&count),
                "{node} owns {count} of 10000 keys"
            );
        }
    }

    proptest! {
        #[test]
        fn order_is_independent_of_input_order(
            seed in any::<u64>(),
            mut names in proptest::collection::hash_set("[a-z]{1,8}", 1..12)
                .prop_map(|set| set.into_iter().collect::<Vec<_>>()),
        ) {
            let digest = key(seed);
            let forward: Vec<String> = rank(&digest, &names).into_iter().cloned().collect();
            names.reverse();
            let backward: Vec<String> = rank(&digest, &names).into_iter().cloned().collect();
            prop_assert_eq!(forward, backward);
        }

        #[test]
        fn removing_a_node_only_moves_its_keys(
            n in 2usize..10,
            removed in any::<prop::sample::Index>(),
            replicas in 1usize..4,
            seeds in proptest::collection::vec(any::<u64>(), 1..50),
        ) {
            let all = nodes(n);
            let gone = &all[removed.index(n)];
            let remaining: Vec<String> = all.iter().filter(|node| *node != gone).cloned().collect();
            for seed in seeds {
                let digest = key(seed);
                let before: Vec<&String> = owners(&digest, &all, replicas);
                let after: Vec<&String> = owners(&digest, &remaining, replicas);
                if !before.contains(&gone) {
                    prop_assert_eq!(&before, &after);
                }
                // Surviving owners keep their relative order; at most the removed slot is refilled.
                let survivors: Vec<&String> = before.into_iter().filter(|node| *node != gone).collect();
                prop_assert_eq!(&after[..survivors.len()], &survivors[..]);
            }
        }
    }
}
