//! The tracker's side of the handout: its peer store's records as the classes of
//! `shoal_swarm::handout`, which holds the policy (owning origins first, then complete peers,
//! then the rest; a random sample within each class; never the caller; at most `limit`).

use rand::Rng;
use shoal_core::PeerId;
use shoal_swarm::handout::{self as policy, Class, Classes};

use crate::peers::PeerRecord;

/// One peer handed to the caller.
pub type Handout = policy::Handout<PeerRecord>;

/// A class as a run of the records the handout picks from; its members are their indices, so
/// the records chosen are moved into the answer rather than cloned.
#[derive(Debug, Clone, Copy)]
struct Run {
    start: usize,
    len: usize,
}

impl Class for Run {
    type Member = usize;

    fn len(&self) -> usize {
        self.len
    }

    fn member(&self, index: usize) -> usize {
        self.start + index
    }
}

/// Up to `limit` peers for the announce of `caller` (who serves on `caller_addr`). `origins` are
/// the digest's owners as complete peer records; `swarm` is the store's random sample of live
/// members (complete ones first), caller included.
/// A record naming the caller's id or its address is the caller (perhaps restarted under a new
/// id), and a swarm member that is also an origin is handed out once, as an origin.
pub fn handout<R: Rng + ?Sized>(
    caller: &PeerId,
    caller_addr: &str,
    origins: Vec<PeerRecord>,
    mut swarm: Vec<PeerRecord>,
    limit: usize,
    rng: &mut R,
) -> Vec<Handout> {
    // One vector: the origins, then the complete members, then the others, each in its order.
    let origin_count = origins.len();
    let mut records = origins;
    records.reserve(swarm.len());
    records.extend(swarm.extract_if(.., |peer| peer.complete));
    let complete_count = records.len() - origin_count;
    records.append(&mut swarm);
    let classes = Classes {
        origins: Run {
            start: 0,
            len: origin_count,
        },
        complete: Run {
            start: origin_count,
            len: complete_count,
        },
        partial: Run {
            start: origin_count + complete_count,
            len: records.len() - origin_count - complete_count,
        },
    };
    let is_caller = |peer: &PeerRecord| peer.id == *caller || peer.addr == caller_addr;
    let is_origin = |peer: &PeerRecord| {
        records[..origin_count]
            .iter()
            .any(|o| !is_caller(o) && (o.id == peer.id || o.addr == peer.addr))
    };
    let chosen = policy::handout(
        classes,
        |&index| is_caller(&records[index]),
        |&index| is_origin(&records[index]),
        limit,
        rng,
    );
    // The policy picks each index at most once, so every take finds its record.
    let mut records: Vec<Option<PeerRecord>> = records.into_iter().map(Some).collect();
    chosen
        .into_iter()
        .filter_map(|chosen| {
            records[chosen.peer].take().map(|peer| Handout {
                peer,
                origin: chosen.origin,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn peer(id: &str, complete: bool) -> PeerRecord {
        PeerRecord {
            id: PeerId::parse(id).expect("peer id"),
            addr: format!("{id}:16001"),
            complete,
        }
    }

    fn origin(id: &str) -> PeerRecord {
        peer(id, true)
    }

    fn ids(handouts: &[Handout]) -> Vec<&str> {
        handouts.iter().map(|h| h.peer.id.as_str()).collect()
    }

    fn caller() -> PeerId {
        PeerId::parse("me").expect("peer id")
    }

    #[test]
    fn origins_come_first_then_complete_peers_then_the_rest() {
        let swarm = vec![
            peer("p1", false),
            peer("c1", true),
            peer("p2", false),
            peer("c2", true),
        ];
        let mut rng = StdRng::seed_from_u64(7);
        let out = handout(
            &caller(),
            "me:16001",
            vec![origin("o1"), origin("o2")],
            swarm,
            10,
            &mut rng,
        );
        let ids = ids(&out);
        assert_eq!(ids.len(), 6);
        let classes: Vec<HashSet<&str>> = [&ids[0..2], &ids[2..4], &ids[4..6]]
            .into_iter()
            .map(|s| s.iter().copied().collect())
            .collect();
        assert_eq!(classes[0], HashSet::from(["o1", "o2"]));
        assert_eq!(classes[1], HashSet::from(["c1", "c2"]));
        assert_eq!(classes[2], HashSet::from(["p1", "p2"]));
        assert!(out[..2].iter().all(|h| h.origin && h.peer.complete));
        assert!(out[2..].iter().all(|h| !h.origin));
    }

    #[test]
    fn the_caller_is_never_handed_out_by_id_or_address() {
        let mut stale = peer("old-me", false);
        stale.addr = "me:16001".into();
        let swarm = vec![peer("me", false), stale, peer("other", false)];
        let mut rng = StdRng::seed_from_u64(1);
        let out = handout(&caller(), "me:16001", vec![], swarm, 10, &mut rng);
        assert_eq!(ids(&out), ["other"]);

        // An origin announcing is not handed itself either.
        let me = PeerId::parse("o1").expect("peer id");
        let out = handout(
            &me,
            "o1:16001",
            vec![origin("o1")],
            vec![origin("o1")],
            10,
            &mut rng,
        );
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn an_origin_in_the_swarm_is_handed_out_once_as_an_origin() {
        let mut rng = StdRng::seed_from_u64(2);
        let out = handout(
            &caller(),
            "me:16001",
            vec![origin("o1")],
            vec![peer("o1", true), peer("a", false)],
            10,
            &mut rng,
        );
        assert_eq!(ids(&out), ["o1", "a"]);
        assert!(out[0].origin);
    }

    #[test]
    fn the_limit_cuts_the_lower_classes_first() {
        let swarm: Vec<PeerRecord> = (0..20)
            .map(|i| peer(&format!("p{i}"), i % 2 == 0))
            .collect();
        let mut rng = StdRng::seed_from_u64(3);
        let out = handout(
            &caller(),
            "me:16001",
            vec![origin("o1")],
            swarm,
            5,
            &mut rng,
        );
        assert_eq!(out.len(), 5);
        assert_eq!(out[0].peer.id.as_str(), "o1");
        assert!(out[1..].iter().all(|h| h.peer.complete && !h.origin));

        let out = handout(
            &caller(),
            "me:16001",
            vec![origin("o1"), origin("o2")],
            vec![],
            1,
            &mut rng,
        );
        assert_eq!(out.len(), 1);
        assert!(out[0].origin);
    }

    #[test]
    fn the_sample_is_random_within_a_class_and_reproducible_with_a_seed() {
        let swarm: Vec<PeerRecord> = (0..50).map(|i| peer(&format!("p{i}"), false)).collect();
        let pick = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let out = handout(&caller(), "me:16001", vec![], swarm.clone(), 5, &mut rng);
            ids(&out).into_iter().map(str::to_owned).collect::<Vec<_>>()
        };
        assert_eq!(pick(11), pick(11));
        // Over many seeds every member gets picked sometimes, not just the first five.
        let seen: HashSet<String> = (0..200).flat_map(pick).collect();
        assert_eq!(seen.len(), 50);
        let unique: HashSet<String> = pick(12).into_iter().collect();
        assert_eq!(unique.len(), 5, "no peer twice");
    }
}
