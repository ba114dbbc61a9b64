//! Which pieces of a blob a peer holds: one bit per piece, packed big-endian within each byte
//! (bit *i* is byte `i / 8`, mask `0x80 >> (i % 8)`), the layout peers exchange on the wire.

use std::fmt;

use thiserror::Error;

/// Why bytes received from a peer are not a valid bitfield for a blob.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BitfieldError {
    #[error("bitfield for {len} pieces must be {expected} bytes, got {actual}")]
    WrongLength {
        len: u32,
        expected: usize,
        actual: usize,
    },
    #[error("bitfield for {len} pieces has bits set past the last piece")]
    SpareBitsSet { len: u32 },
}

/// A fixed-length set of piece indices.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Bitfield {
    len: u32,
    bytes: Vec<u8>,
    // Kept alongside the bits so `count` and `is_complete` are O(1): the scheduler asks often.
    ones: u32,
}

/// Bytes needed for `len` bits.
fn byte_len(len: u32) -> usize {
    // u32 → usize is lossless on every platform Shoal supports (32- and 64-bit).
    (len as usize).div_ceil(8)
}

fn mask(i: u32) -> u8 {
    0x80 >> (i % 8)
}

impl Bitfield {
    /// All `len` bits clear.
    pub fn new(len: u32) -> Bitfield {
        Bitfield {
            len,
            bytes: vec![0; byte_len(len)],
            ones: 0,
        }
    }

    /// All `len` bits set.
    pub fn full(len: u32) -> Bitfield {
        let mut bytes = vec![0xff; byte_len(len)];
        let spare = byte_len(len) * 8 - len as usize;
        if let Some(last) = bytes.last_mut() {
            // Spare trailing bits stay zero so `as_bytes` is canonical.
            *last = 0xff << spare;
        }
        Bitfield {
            len,
            bytes,
            ones: len,
        }
    }

    /// Parses a peer's bitfield: exactly `ceil(len / 8)` bytes with the spare trailing bits zero.
    pub fn from_bytes(len: u32, bytes: &[u8]) -> Result<Bitfield, BitfieldError> {
        let expected = byte_len(len);
        if bytes.len() != expected {
            return Err(BitfieldError::WrongLength {
                len,
                expected,
                actual: bytes.len(),
            });
        }
        let spare = expected * 8 - len as usize;
        // The low `spare` bits of the last byte lie past the last piece and must be zero.
        if spare > 0
            && bytes
                .last()
                .is_some_and(|&last| last & (0xff >> (8 - spare)) != 0)
        {
            return Err(BitfieldError::SpareBitsSet { len });
        }
        let ones = bytes.iter().map(|b| b.count_ones()).sum();
        Ok(Bitfield {
            len,
            bytes: bytes.to_vec(),
            ones,
        })
    }

    /// The packed bits, `ceil(len / 8)` bytes, spare trailing bits zero.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Number of bits (pieces).
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True for a zero-length bitfield (a blob with no pieces).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of bits set.
    pub fn count(&self) -> u32 {
        self.ones
    }

    /// True when every bit is set.
    pub fn is_complete(&self) -> bool {
        self.ones == self.len
    }

    /// Whether bit `i` is set; out-of-range indices are never set.
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.bytes[(i / 8) as usize] & mask(i) != 0
    }

    /// Sets bit `i`; true when it was newly set. Out-of-range indices are ignored (false), so a
    /// peer's bogus `Have` cannot corrupt the count.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        let byte = &mut self.bytes[(i / 8) as usize];
        if *byte & mask(i) != 0 {
            return false;
        }
        *byte |= mask(i);
        self.ones += 1;
        true
    }

    /// Indices of the set bits, ascending.
    pub fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        self.indices(true)
    }

    /// Indices of the clear bits, ascending.
    pub fn zeros(&self) -> impl Iterator<Item = u32> + '_ {
        self.indices(false)
    }

    fn indices(&self, value: bool) -> impl Iterator<Item = u32> + '_ {
        // Skips whole bytes that hold no match, so sparse fields iterate in O(len / 8 + matches).
        let skip = if value { 0x00 } else { 0xff };
        self.bytes
            .iter()
            .enumerate()
            .filter(move |&(_, &byte)| byte != skip)
            .flat_map(move |(at, &byte)| {
                let base = at as u32 * 8;
                (0..8u32).filter_map(move |bit| {
                    let i = base + bit;
                    (i < self.len && (byte & (0x80 >> bit) != 0) == value).then_some(i)
                })
            })
    }
}

impl fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bitfield({}/{} ", self.ones, self.len)?;
        for i in 0..self.len.min(64) {
            f.write_str(if self.get(i) { "1" } else { "0" })?;
        }
        if self.len > 64 {
            f.write_str("…")?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn layout_is_big_endian_within_each_byte() {
        let mut field = Bitfield::new(10);
        assert!(field.set(0));
        assert!(field.set(9));
        assert_eq!(field.as_bytes(), &[0x80, 0x40]);
        assert!(!field.set(0), "second set of the same bit is not new");
        assert_eq!(field.count(), 2);
        assert!(field.get(9));
        assert!(!field.get(8));
    }

    #[test]
    fn full_and_new_are_canonical() {
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 1000] {
            let full = Bitfield::full(len);
            assert!(full.is_complete());
            assert_eq!(full.count(), len);
            assert_eq!(Bitfield::from_bytes(len, full.as_bytes()), Ok(full.clone()));
            assert_eq!(full.ones().count(), len as usize);
            let empty = Bitfield::new(len);
            assert_eq!(empty.count(), 0);
            assert_eq!(empty.is_complete(), len == 0);
            assert_eq!(empty.zeros().count(), len as usize);
            assert_eq!(empty.as_bytes().len(), (len as usize).div_ceil(8));
        }
        assert_eq!(Bitfield::full(9).as_bytes(), &[0xff, 0x80]);
    }

    #[test]
    fn out_of_range_indices_are_ignored() {
        let mut field = Bitfield::new(3);
        assert!(!field.set(3));
        assert!(!field.set(u32::MAX));
        assert!(!field.get(3));
        assert_eq!(field.count(), 0);
        assert_eq!(field.as_bytes(), &[0]);
    }

    #[test]
    fn from_bytes_rejects_wrong_length_and_spare_bits() {
        assert_eq!(
            Bitfield::from_bytes(9, &[0xff]),
            Err(BitfieldError::WrongLength {
                len: 9,
                expected: 2,
                actual: 1
            })
        );
        assert!(matches!(
            Bitfield::from_bytes(0, &[0]),
            Err(BitfieldError::WrongLength { .. })
        ));
        assert_eq!(
            Bitfield::from_bytes(9, &[0xff, 0x40]),
            Err(BitfieldError::SpareBitsSet { len: 9 })
        );
        assert_eq!(
            Bitfield::from_bytes(1, &[0x01]),
            Err(BitfieldError::SpareBitsSet { len: 1 })
        );
        assert!(Bitfield::from_bytes(8, &[0xff]).is_ok());
        assert!(Bitfield::from_bytes(0, &[]).is_ok());
    }

    fn field() -> impl Strategy<Value = (u32, Vec<u32>)> {
        (0u32..200).prop_flat_map(|len| {
            let indices = if len == 0 {
                Just(Vec::new()).boxed()
            } else {
                proptest::collection::vec(0..len, 0..(len as usize + 5)).boxed()
            };
            (Just(len), indices)
        })
    }

    proptest! {
        #[test]
        fn set_get_count_agree_with_a_model((len, indices) in field()) {
            let mut field = Bitfield::new(len);
            let mut model = std::collections::BTreeSet::new();
            for i in indices {
                prop_assert_eq!(field.set(i), model.insert(i));
            }
            prop_assert_eq!(field.count() as usize, model.len());
            prop_assert_eq!(field.is_complete(), model.len() == len as usize);
            for i in 0..len {
                prop_assert_eq!(field.get(i), model.contains(&i));
            }
            prop_assert_eq!(field.ones().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            let zeros: Vec<u32> = (0..len).filter(|i| !model.contains(i)).collect();
            prop_assert_eq!(field.zeros().collect::<Vec<_>>(), zeros);
        }

        #[test]
        fn bytes_roundtrip((len, indices) in field()) {
            let mut field = Bitfield::new(len);
            for i in indices {
                field.set(i);
            }
            let parsed = Bitfield::from_bytes(len, field.as_bytes());
            prop_assert_eq!(parsed, Ok(field));
        }

        #[test]
        fn arbitrary_bytes_parse_or_fail_cleanly(len in 0u32..100, bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Ok(field) = Bitfield::from_bytes(len, &bytes) {
                prop_assert_eq!(field.as_bytes(), bytes.as_slice());
                prop_assert_eq!(field.ones().count() as u32, field.count());
                prop_assert!(field.ones().all(|i| i < len));
                prop_assert_eq!(field.ones().count() + field.zeros().count(), len as usize);
            }
        }
    }
}
