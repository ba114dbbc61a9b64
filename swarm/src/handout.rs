//! The handout policy: which peers the tracker answers one announce with. The tracker runs it over
//! its peer store's records, the simulator over its index lists; both see the swarm as three
//! [`Classes`] of members reached by index, so a large class is sampled without being copied.
//!
//! Order: the owning origins first (always complete, and the seeders of last resort a downloader
//! needs when no agent has a piece yet), then complete peers, then the rest; a random sample
//! within each class, so every downloader sees a different slice of a large swarm and load
//! spreads; never the caller itself; a swarm member that is also an origin only once, as an
//! origin; at most `limit` in all. The rng is the caller's: a seeded one gives the same handout.

use rand::seq::SliceRandom;
use rand::{Rng, RngExt};

/// Members of one class, by index.
pub trait Class {
    type Member;
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Member `index`, for `index < len()`.
    fn member(&self, index: usize) -> Self::Member;
}

impl<'a, T> Class for &'a [T] {
    type Member = &'a T;

    fn len(&self) -> usize {
        <[T]>::len(self)
    }

    fn member(&self, index: usize) -> &'a T {
        &self[index]
    }
}

/// The swarm of one blob as the handout sees it.
#[derive(Debug, Clone, Copy)]
pub struct Classes<C> {
    /// The blob's owning origins.
    pub origins: C,
    /// Peers that hold every piece.
    pub complete: C,
    /// Everyone else.
    pub partial: C,
}

/// One peer handed to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handout<M> {
    pub peer: M,
    pub origin: bool,
}

/// Up to `limit` peers for one announce. `is_caller` recognises the caller (by id, or by address
/// when it restarted under a new id); `is_origin` a complete or partial member that is one of the
/// origins.
pub fn handout<C: Class, R: Rng + ?Sized>(
    classes: Classes<C>,
    is_caller: impl Fn(&C::Member) -> bool,
    is_origin: impl Fn(&C::Member) -> bool,
    limit: usize,
    rng: &mut R,
) -> Vec<Handout<C::Member>> {
    let mut chosen = Vec::with_capacity(limit);
    sample(&classes.origins, &is_caller, limit, rng, &mut chosen);
    let origins = chosen.len();
    let skip = |member: &C::Member| is_caller(member) || is_origin(member);
    for class in [&classes.complete, &classes.partial] {
        sample(class, skip, limit - chosen.len(), rng, &mut chosen);
    }
    chosen
        .into_iter()
        .enumerate()
        .map(|(at, peer)| Handout {
            peer,
            origin: at < origins,
        })
        .collect()
}

/// Appends to `out` up to `want` distinct members of `class` not refused by `skip`, uniformly at
/// random. A class of at most 4 × `want` is filtered and shuffled; a larger one is sampled by
/// rejection, O(want) however large the swarm (a drawn member is refused under a quarter of the
/// time while few are skipped; should `len` draws be refused, the rest is filtered and shuffled).
pub fn sample<C: Class, R: Rng + ?Sized>(
    class: &C,
    skip: impl Fn(&C::Member) -> bool,
    want: usize,
    rng: &mut R,
    out: &mut Vec<C::Member>,
) {
    if want == 0 || class.is_empty() {
        return;
    }
    let len = class.len();
    if len > 4 * want {
        let mut taken: Vec<usize> = Vec::with_capacity(want);
        let mut refused = 0;
        while taken.len() < want && refused < len {
            let index = rng.random_range(0..len);
            let member = class.member(index);
            if taken.contains(&index) || skip(&member) {
                refused += 1;
            } else {
                taken.push(index);
                out.push(member);
            }
        }
        if taken.len() < want {
            let rest = (0..len).filter(|index| !taken.contains(index));
            shuffle_in(class, rest, &skip, want - taken.len(), rng, out);
        }
        return;
    }
    shuffle_in(class, 0..len, &skip, want, rng, out);
}

/// Appends up to `want` of the members at `indices` not refused by `skip`, shuffled. Shuffling
/// only the first `want` places draws a uniform random sample of that size.
fn shuffle_in<C: Class, R: Rng + ?Sized>(
    class: &C,
    indices: impl Iterator<Item = usize>,
    skip: impl Fn(&C::Member) -> bool,
    want: usize,
    rng: &mut R,
    out: &mut Vec<C::Member>,
) {
    let mut eligible: Vec<usize> = indices
        .filter(|&index| !skip(&class.member(index)))
        .collect();
    let (sample, _) = eligible.partial_shuffle(rng, want);
    out.extend(sample.iter().map(|&index| class.member(index)));
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use rand::SeedableRng;
    use rand::rngs::Xoshiro256PlusPlus;

    use super::*;

    fn classes<'a>(
        origins: &'a [u32],
        complete: &'a [u32],
        partial: &'a [u32],
    ) -> Classes<&'a [u32]> {
        Classes {
            origins,
            complete,
            partial,
        }
    }

    #[test]
    fn origins_come_first_flagged_then_complete_then_partial_never_the_caller() {
        let partial: Vec<u32> = (10..200).collect();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let out = handout(
            classes(&[0, 1], &[5, 6, 7], &partial),
            |&&m| m == 6 || m == 1,
            |_| false,
            12,
            &mut rng,
        );
        assert_eq!(out.len(), 12);
        assert_eq!(out[0].peer, &0);
        assert!(out[0].origin && out[1..].iter().all(|h| !h.origin));
        let complete: HashSet<u32> = out[1..3].iter().map(|h| *h.peer).collect();
        assert_eq!(complete, HashSet::from([5, 7]));
        let rest: HashSet<u32> = out[3..].iter().map(|h| *h.peer).collect();
        assert_eq!(rest.len(), 9, "no member twice");
        assert!(rest.iter().all(|m| (10..200).contains(m)));
    }

    #[test]
    fn a_swarm_member_that_is_an_origin_is_handed_out_once_as_an_origin() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
        let out = handout(
            classes(&[0], &[0, 3], &[]),
            |_| false,
            |&&m| m == 0,
            10,
            &mut rng,
        );
        let peers: Vec<(u32, bool)> = out.iter().map(|h| (*h.peer, h.origin)).collect();
        assert_eq!(peers, [(0, true), (3, false)]);
    }

    #[test]
    fn a_large_class_is_sampled_uniformly_without_duplicates() {
        let members: Vec<u32> = (0..1_000).collect();
        let mut seen = HashSet::new();
        for seed in 0..400 {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            let mut out = Vec::new();
            sample(&members.as_slice(), |&&m| m == 7, 30, &mut rng, &mut out);
            let unique: HashSet<u32> = out.iter().map(|&&m| m).collect();
            assert_eq!((out.len(), unique.len()), (30, 30));
            assert!(!unique.contains(&7));
            seen.extend(unique);
        }
        // 12,000 draws over 999 members: every one of them is drawn some time.
        assert_eq!(seen.len(), 999);
    }

    #[test]
    fn a_large_class_mostly_skipped_still_yields_every_member_left() {
        // Rejection alone would spin: only 3 of 100 members may be handed out.
        let members: Vec<u32> = (0..100).collect();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let mut out = Vec::new();
        sample(
            &members.as_slice(),
            |&&m| m % 40 != 0,
            5,
            &mut rng,
            &mut out,
        );
        let mut got: Vec<u32> = out.iter().map(|&&m| m).collect();
        got.sort_unstable();
        assert_eq!(got, [0, 40, 80]);
    }
}
