//! The unrequested missing pieces of a download in pick order: fewest agent holders first, then
//! the download's random rank. A piece's holder count changes by one at every `have` from a peer,
//! so the order is kept as one bit per piece on each holder-count level, pieces placed on a level
//! by rank: a change is two bit flips (an ordered set's removal and insertion were a fifth of the
//! simulator's time at 1,000 agents), and a walk reads the levels from the rarest.

/// Bits per word of a level.
const WORD: usize = 64;

pub(super) struct Pickable {
    /// Each piece's place in rank order.
    place: Vec<u32>,
    /// The piece at each place.
    piece_at: Vec<u32>,
    /// `levels[n]` has the bit of a piece's place set while the piece is pickable with `n` agent
    /// holders; levels are added as holder counts reach them.
    levels: Vec<Level>,
    len: usize,
}

#[derive(Clone)]
struct Level {
    words: Vec<u64>,
    len: usize,
}

impl Pickable {
    /// Empty, for pieces `0..rank.len()` ordered by `(rank, piece)`.
    pub(super) fn new(rank: &[u32]) -> Pickable {
        let mut piece_at: Vec<u32> = (0..rank.len() as u32).collect();
        piece_at.sort_unstable_by_key(|&piece| (rank[piece as usize], piece));
        let mut place = vec![0; rank.len()];
        for (at, &piece) in piece_at.iter().enumerate() {
            place[piece as usize] = at as u32;
        }
        Pickable {
            place,
            piece_at,
            levels: Vec::new(),
            len: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// `piece`'s place in the order of `(rank, piece)`: the tie-break among equally rare pieces.
    pub(super) fn place(&self, piece: u32) -> u32 {
        self.place[piece as usize]
    }

    /// Makes `piece` pickable with `holders` agent holders; false when it already was at that level.
    pub(super) fn insert(&mut self, piece: u32, holders: u32) -> bool {
        let holders = holders as usize;
        if self.levels.len() <= holders {
            let empty = Level {
                words: vec![0; self.piece_at.len().div_ceil(WORD)],
                len: 0,
            };
            self.levels.resize(holders + 1, empty);
        }
        let (word, bit) = self.bit(piece);
        let level = &mut self.levels[holders];
        if level.words[word] & bit != 0 {
            return false;
        }
        level.words[word] |= bit;
        level.len += 1;
        self.len += 1;
        true
    }

    /// Takes `piece` off level `holders`; false when it was not there.
    pub(super) fn remove(&mut self, piece: u32, holders: u32) -> bool {
        let (word, bit) = self.bit(piece);
        let Some(level) = self.levels.get_mut(holders as usize) else {
            return false;
        };
        if level.words[word] & bit == 0 {
            return false;
        }
        level.words[word] &= !bit;
        level.len -= 1;
        self.len -= 1;
        true
    }

    /// `(holders, piece)` of every pickable piece, in pick order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.levels
            .iter()
            .enumerate()
            .filter(|(_, level)| level.len > 0)
            .flat_map(move |(holders, level)| {
                level
                    .words
                    .iter()
                    .enumerate()
                    .filter(|(_, word)| **word != 0)
                    .flat_map(move |(at, &word)| {
                        let base = at * WORD;
                        SetBits(word)
                            .map(move |bit| (holders as u32, self.piece_at[base + bit as usize]))
                    })
            })
    }

    fn bit(&self, piece: u32) -> (usize, u64) {
        let place = self.place(piece) as usize;
        (place / WORD, 1 << (place % WORD))
    }
}

/// The set bits of a word, lowest first.
struct SetBits(u64);

impl Iterator for SetBits {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.0 == 0 {
            return None;
        }
        let bit = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        Some(bit)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    use super::*;

    #[test]
    fn pieces_come_out_by_holders_then_rank_then_index() {
        // Pieces 1 and 3 share a rank: the lower index goes first.
        let mut pickable = Pickable::new(&[30, 10, 20, 10]);
        for (piece, holders) in [(0, 1), (1, 2), (2, 1), (3, 2)] {
            assert!(pickable.insert(piece, holders));
        }
        assert!(!pickable.insert(2, 1), "already there");
        let order: Vec<(u32, u32)> = pickable.iter().collect();
        assert_eq!(order, [(1, 2), (1, 0), (2, 1), (2, 3)]);
        assert!(pickable.remove(2, 1));
        assert!(!pickable.remove(2, 1), "already gone");
        assert!(!pickable.remove(0, 7), "a level never reached");
        assert_eq!(pickable.len(), 3);
    }

    /// Random changes, checked against an ordered set of `(holders, rank, piece)`.
    #[test]
    fn any_sequence_of_changes_keeps_the_order_of_an_ordered_set() {
        let mut rng = StdRng::seed_from_u64(7);
        for len in [1_u32, 63, 64, 65, 300] {
            let rank: Vec<u32> = (0..len).map(|_| rng.random_range(0..len / 2 + 1)).collect();
            let mut pickable = Pickable::new(&rank);
            let mut reference = BTreeSet::new();
            let mut holders = vec![None; len as usize];
            for step in 0..5_000 {
                let piece = rng.random_range(0..len);
                match holders[piece as usize] {
                    None => {
                        let h = rng.random_range(0..5);
                        assert!(pickable.insert(piece, h));
                        reference.insert((h, rank[piece as usize], piece));
                        holders[piece as usize] = Some(h);
                    }
                    Some(h) => {
                        assert!(pickable.remove(piece, h));
                        reference.remove(&(h, rank[piece as usize], piece));
                        holders[piece as usize] = None;
                    }
                }
                assert_eq!(pickable.len(), reference.len());
                if step % 97 == 0 {
                    let expected: Vec<(u32, u32)> =
                        reference.iter().map(|&(h, _, p)| (h, p)).collect();
                    assert_eq!(pickable.iter().collect::<Vec<_>>(), expected, "step {step}");
                }
            }
        }
    }
}
