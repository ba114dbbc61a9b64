//! Metainfo: the description of a blob as fixed-size pieces with one sha256 per piece, the
//! piece-length table that keeps the piece count bounded, and the streaming builder that
//! computes it. Peers verify every piece they receive against this.

use std::ops::Range;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::digest::{Digest, DigestError, Digester};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Upper bound on the number of pieces of any blob. It bounds the metainfo document
/// (4096 × 64 hex ≈ 270 KB of JSON) and the bitfield peers exchange (512 bytes).
pub const MAX_PIECES: u64 = 4096;

/// `(largest blob length, piece length)` rows, checked in order. Each row's piece length
/// yields at most 256..4096 pieces for its size band.
const PIECE_LENGTH_TABLE: [(u64, u64); 4] = [
    // Small layers (most of them): 256 KiB pieces still give up to 256 pieces, enough to spread
    // one layer over many peers, and a single piece is cheap to re-fetch when it fails.
    (64 * MIB, 256 * KIB),
    // Medium layers: 1 MiB keeps per-piece request overhead small; at most 1024 pieces.
    (GIB, MIB),
    // Large layers (CUDA, model weights): 4 MiB, at most 2048 pieces.
    (8 * GIB, 4 * MIB),
    // Very large layers: 16 MiB, at most 4096 pieces.
    (64 * GIB, 16 * MIB),
];

/// Piece length for anything larger than the table: 64 MiB (still ≤ 4096 pieces up to 256 GiB).
const HUGE_PIECE_LENGTH: u64 = 64 * MIB;

/// The piece length Shoal uses for a blob of `blob_length` bytes.
pub fn piece_length_for(blob_length: u64) -> u64 {
    for (max_blob_length, piece_length) in PIECE_LENGTH_TABLE {
        if blob_length <= max_blob_length {
            return piece_length;
        }
    }
    // Beyond 256 GiB even 64 MiB pieces would exceed MAX_PIECES: grow to the smallest power of
    // two that keeps the count bounded. div_ceil(4096) ≤ 2^52, so next_power_of_two cannot overflow.
    let needed = blob_length.div_ceil(MAX_PIECES).next_power_of_two();
    needed.max(HUGE_PIECE_LENGTH)
}

/// Number of pieces of a blob; `piece_length` is never zero (it comes from the table).
fn piece_count_for(length: u64, piece_length: u64) -> u64 {
    length.div_ceil(piece_length)
}

/// Why a metainfo could not be built or decoded.
#[derive(Debug, Error)]
pub enum MetainfoError {
    #[error("metainfo is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "metainfo piece_length {actual} does not match {expected} expected for a {length}-byte blob"
    )]
    PieceLength {
        length: u64,
        expected: u64,
        actual: u64,
    },
    #[error("metainfo has {actual} pieces, expected {expected}")]
    PieceCount { expected: u64, actual: u64 },
    #[error("metainfo piece {index} hash is invalid: {source}")]
    PieceHash {
        index: usize,
        #[source]
        source: DigestError,
    },
    #[error("blob length mismatch: expected {expected} bytes, got {actual}")]
    LengthMismatch { expected: u64, actual: u64 },
}

/// A blob's piece layout and per-piece sha256 hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metainfo {
    digest: Digest,
    length: u64,
    piece_length: u64,
    pieces: Vec<Digest>,
}

impl Metainfo {
    /// Sha256 of the whole blob.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    pub fn length(&self) -> u64 {
        self.length
    }

    pub fn piece_length(&self) -> u64 {
        self.piece_length
    }

    pub fn piece_count(&self) -> usize {
        self.pieces.len()
    }

    pub fn piece_hash(&self, index: usize) -> Option<&Digest> {
        self.pieces.get(index)
    }

    /// Byte range of piece `index` within the blob; the last piece may be short.
    pub fn piece_range(&self, index: usize) -> Option<Range<u64>> {
        if index >= self.pieces.len() {
            return None;
        }
        // index < piece_count, so start < length; the end may pass u64::MAX for the last
        // piece of an enormous blob, hence the saturation.
        let start = index as u64 * self.piece_length;
        let end = start.saturating_add(self.piece_length).min(self.length);
        Some(start..end)
    }

    /// Whether `bytes` is exactly piece `index`: right length and right sha256.
    pub fn verify_piece(&self, index: usize, bytes: &[u8]) -> bool {
        let (Some(range), Some(expected)) = (self.piece_range(index), self.pieces.get(index))
        else {
            return false;
        };
        bytes.len() as u64 == range.end - range.start && Digest::of(bytes) == *expected
    }

    /// Builds metainfo from its parts (as a peer protocol carries them), checking that the
    /// piece length and count are the ones Shoal uses for `length`.
    pub fn from_parts(
        digest: Digest,
        length: u64,
        piece_length: u64,
        pieces: Vec<Digest>,
    ) -> Result<Metainfo, MetainfoError> {
        let expected = piece_length_for(length);
        if piece_length != expected {
            return Err(MetainfoError::PieceLength {
                length,
                expected,
                actual: piece_length,
            });
        }
        let expected_count = piece_count_for(length, piece_length);
        if pieces.len() as u64 != expected_count {
            return Err(MetainfoError::PieceCount {
                expected: expected_count,
                actual: pieces.len() as u64,
            });
        }
        Ok(Metainfo {
            digest,
            length,
            piece_length,
            pieces,
        })
    }

    /// Decodes and validates the JSON form.
    pub fn from_json(bytes: &[u8]) -> Result<Metainfo, MetainfoError> {
        let wire: WireMetainfo = serde_json::from_slice(bytes)?;
        Metainfo::try_from(wire)
    }

    /// The JSON form: `{"digest":"sha256:…","length":N,"piece_length":N,"pieces":["<hex>",…]}`.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self)
            .expect("metainfo holds only strings and integers, which always serialize")
    }
}

/// The serde shape; pieces are bare hex (the algorithm is implied) to keep the document small.
#[derive(Deserialize)]
struct WireMetainfo {
    digest: Digest,
    length: u64,
    piece_length: u64,
    pieces: Vec<String>,
}

impl TryFrom<WireMetainfo> for Metainfo {
    type Error = MetainfoError;

    fn try_from(wire: WireMetainfo) -> Result<Self, Self::Error> {
        let pieces = wire
            .pieces
            .iter()
            .enumerate()
            .map(|(index, hex)| {
                Digest::from_hex(hex).map_err(|source| MetainfoError::PieceHash { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Metainfo::from_parts(wire.digest, wire.length, wire.piece_length, pieces)
    }
}

impl Serialize for Metainfo {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;

        struct HexPieces<'a>(&'a [Digest]);
        impl Serialize for HexPieces<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_seq(self.0.iter().map(Digest::hex))
            }
        }

        let mut state = serializer.serialize_struct("Metainfo", 4)?;
        state.serialize_field("digest", &self.digest)?;
        state.serialize_field("length", &self.length)?;
        state.serialize_field("piece_length", &self.piece_length)?;
        state.serialize_field("pieces", &HexPieces(&self.pieces))?;
        state.end()
    }
}

impl<'de> Deserialize<'de> for Metainfo {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireMetainfo::deserialize(deserializer)?;
        Metainfo::try_from(wire).map_err(serde::de::Error::custom)
    }
}

/// The whole blob's digest: computed while fed, or already known.
#[derive(Debug)]
enum Whole {
    Hashing(Digester),
    Verified(Digest),
}

/// Computes a [`Metainfo`] from a blob streamed in chunks of any size.
#[derive(Debug)]
pub struct MetainfoBuilder {
    length: u64,
    piece_length: u64,
    fed: u64,
    whole: Whole,
    piece: Digester,
    piece_fed: u64,
    pieces: Vec<Digest>,
}

impl MetainfoBuilder {
    /// A builder for a blob of exactly `length` bytes.
    pub fn new(length: u64) -> MetainfoBuilder {
        MetainfoBuilder::with_whole(length, Whole::Hashing(Digester::new()))
    }

    /// A builder for bytes already verified to hash to `digest` (a committed upload): only the
    /// piece hashes are computed, one sha256 pass instead of two.
    pub fn for_verified(length: u64, digest: Digest) -> MetainfoBuilder {
        MetainfoBuilder::with_whole(length, Whole::Verified(digest))
    }

    fn with_whole(length: u64, whole: Whole) -> MetainfoBuilder {
        let piece_length = piece_length_for(length);
        // The count is ≤ MAX_PIECES, so reserving it up front is small and avoids regrowth.
        let capacity = usize::try_from(piece_count_for(length, piece_length)).unwrap_or(0);
        MetainfoBuilder {
            length,
            piece_length,
            fed: 0,
            whole,
            piece: Digester::new(),
            piece_fed: 0,
            pieces: Vec::with_capacity(capacity),
        }
    }

    /// Feeds the next bytes of the blob, closing pieces at their boundaries.
    pub fn update(&mut self, data: &[u8]) {
        // Bytes past the declared length are only counted, for finish's LengthMismatch: hashing
        // them would be wasted work and could grow the piece list past its bound.
        let remaining = self.length - self.fed.min(self.length);
        let keep = usize::try_from(remaining).map_or(data.len(), |r| r.min(data.len()));
        self.fed = self.fed.saturating_add(data.len() as u64);
        let mut data = &data[..keep];
        if let Whole::Hashing(whole) = &mut self.whole {
            whole.update(data);
        }
        while !data.is_empty() {
            let room = self.piece_length - self.piece_fed;
            let take = usize::try_from(room).map_or(data.len(), |room| room.min(data.len()));
            let (head, tail) = data.split_at(take);
            self.piece.update(head);
            self.piece_fed += take as u64;
            if self.piece_fed == self.piece_length {
                let done = std::mem::take(&mut self.piece);
                self.pieces.push(done.finish());
                self.piece_fed = 0;
            }
            data = tail;
        }
    }

    /// The metainfo, or `LengthMismatch` when the bytes fed differ from the declared length.
    pub fn finish(mut self) -> Result<Metainfo, MetainfoError> {
        if self.fed != self.length {
            return Err(MetainfoError::LengthMismatch {
                expected: self.length,
                actual: self.fed,
            });
        }
        if self.piece_fed > 0 {
            self.pieces.push(self.piece.finish());
        }
        let digest = match self.whole {
            Whole::Hashing(whole) => whole.finish(),
            Whole::Verified(digest) => digest,
        };
        Ok(Metainfo {
            digest,
            length: self.length,
            piece_length: self.piece_length,
            pieces: self.pieces,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn build(data: &[u8]) -> Metainfo {
        let mut builder = MetainfoBuilder::new(data.len() as u64);
        builder.update(data);
        builder.finish().expect("length matches")
    }

    /// Deterministic non-repeating test bytes, so equal pieces cannot mask an offset bug.
    fn blob(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 251) as u8).collect()
    }

    #[test]
    fn piece_length_table_boundaries() {
        let rows = [
            (0, 256 * KIB),
            (1, 256 * KIB),
            (64 * MIB, 256 * KIB),
            (64 * MIB + 1, MIB),
            (GIB, MIB),
            (GIB + 1, 4 * MIB),
            (8 * GIB, 4 * MIB),
            (8 * GIB + 1, 16 * MIB),
            (64 * GIB, 16 * MIB),
            (64 * GIB + 1, 64 * MIB),
            (256 * GIB, 64 * MIB),
            // Past 256 GiB, 64 MiB pieces would exceed MAX_PIECES: the next power of two.
            (256 * GIB + 1, 128 * MIB),
            (512 * GIB, 128 * MIB),
            (512 * GIB + 1, 256 * MIB),
            (u64::MAX, 1 << 52),
        ];
        for (length, expected) in rows {
            assert_eq!(piece_length_for(length), expected, "length {length}");
        }
    }

    #[test]
    fn each_band_tops_out_within_max_pieces() {
        for (max_blob_length, piece_length) in PIECE_LENGTH_TABLE {
            assert!(max_blob_length.div_ceil(piece_length) <= MAX_PIECES);
        }
        assert_eq!((256 * GIB).div_ceil(HUGE_PIECE_LENGTH), MAX_PIECES);
    }

    #[test]
    fn empty_blob_has_no_pieces() {
        let metainfo = build(b"");
        assert_eq!(metainfo.piece_count(), 0);
        assert_eq!(metainfo.digest(), Digest::of(b""));
        assert_eq!(metainfo.piece_range(0), None);
        assert!(!metainfo.verify_piece(0, b""));
        let back = Metainfo::from_json(&metainfo.to_json()).expect("roundtrip");
        assert_eq!(back, metainfo);
    }

    #[test]
    fn pieces_cover_the_blob_and_verify() {
        let piece = (256 * KIB) as usize;
        let data = blob(2 * piece + 1000);
        let metainfo = build(&data);
        assert_eq!(metainfo.length(), data.len() as u64);
        assert_eq!(metainfo.piece_length(), 256 * KIB);
        assert_eq!(metainfo.piece_count(), 3);
        assert_eq!(metainfo.digest(), Digest::of(&data));
        assert_eq!(
            metainfo.piece_range(2),
            Some(2 * 256 * KIB..data.len() as u64)
        );
        assert_eq!(metainfo.piece_range(3), None);
        for i in 0..3 {
            let range = metainfo.piece_range(i).expect("in range");
            let bytes = &data[range.start as usize..range.end as usize];
            assert_eq!(metainfo.piece_hash(i), Some(&Digest::of(bytes)));
            assert!(metainfo.verify_piece(i, bytes));
        }
        assert!(
            !metainfo.verify_piece(0, &data[piece..2 * piece]),
            "wrong piece"
        );
        assert!(
            !metainfo.verify_piece(2, &data[2 * piece..2 * piece + 999]),
            "short piece"
        );
        assert!(!metainfo.verify_piece(3, b""), "no such piece");
        let mut corrupt = data[..piece].to_vec();
        corrupt[17] ^= 1;
        assert!(!metainfo.verify_piece(0, &corrupt));
    }

    #[test]
    fn last_piece_of_the_largest_blob_ends_at_its_length() {
        let hash = Digest::of(b"p").hex();
        let json = serde_json::json!({
            "digest": Digest::of(b"x").to_string(),
            "length": u64::MAX,
            "piece_length": 1u64 << 52,
            "pieces": vec![hash; MAX_PIECES as usize],
        });
        let metainfo = Metainfo::from_json(json.to_string().as_bytes()).expect("valid");
        let last = metainfo.piece_count() - 1;
        assert_eq!(
            metainfo.piece_range(last),
            Some(last as u64 * (1 << 52)..u64::MAX)
        );
    }

    #[test]
    fn a_verified_builder_computes_only_the_pieces() {
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        let mut full = MetainfoBuilder::new(data.len() as u64);
        full.update(&data);
        let full = full.finish().expect("metainfo");
        let mut pieces = MetainfoBuilder::for_verified(data.len() as u64, full.digest());
        for chunk in data.chunks(100_000) {
            pieces.update(chunk);
        }
        assert_eq!(pieces.finish().expect("metainfo"), full);
    }

    #[test]
    fn builder_reports_length_mismatch() {
        let mut short = MetainfoBuilder::new(10);
        short.update(b"12345");
        assert!(matches!(
            short.finish(),
            Err(MetainfoError::LengthMismatch {
                expected: 10,
                actual: 5
            })
        ));
        let mut long = MetainfoBuilder::new(3);
        long.update(b"12");
        long.update(b"345");
        assert!(matches!(
            long.finish(),
            Err(MetainfoError::LengthMismatch {
                expected: 3,
                actual: 5
            })
        ));
    }

    #[test]
    fn json_has_the_documented_shape() {
        let metainfo = build(b"hello");
        let json: serde_json::Value =
            serde_json::from_slice(&metainfo.to_json()).expect("valid json");
        assert_eq!(
            json,
            serde_json::json!({
                "digest": Digest::of(b"hello").to_string(),
                "length": 5,
                "piece_length": 256 * KIB,
                "pieces": [Digest::of(b"hello").hex()],
            })
        );
    }

    #[test]
    fn json_validation_rejects_inconsistent_documents() {
        let hash = Digest::of(b"x").hex();
        let digest = Digest::of(b"x").to_string();
        let doc = |length: u64, piece_length: u64, pieces: Vec<&str>| {
            serde_json::json!({
                "digest": digest, "length": length, "piece_length": piece_length, "pieces": pieces,
            })
            .to_string()
        };
        assert!(matches!(
            Metainfo::from_json(doc(1, MIB, vec![&hash]).as_bytes()),
            Err(MetainfoError::PieceLength { expected, .. }) if expected == 256 * KIB
        ));
        assert!(matches!(
            Metainfo::from_json(doc(1, 256 * KIB, vec![]).as_bytes()),
            Err(MetainfoError::PieceCount {
                expected: 1,
                actual: 0
            })
        ));
        assert!(matches!(
            Metainfo::from_json(doc(1, 256 * KIB, vec![&hash, &hash]).as_bytes()),
            Err(MetainfoError::PieceCount {
                expected: 1,
                actual: 2
            })
        ));
        let prefixed = format!("sha256:{hash}");
        assert!(matches!(
            Metainfo::from_json(doc(1, 256 * KIB, vec![&prefixed]).as_bytes()),
            Err(MetainfoError::PieceHash { index: 0, .. })
        ));
        assert!(matches!(
            Metainfo::from_json(b"{\"digest\":\"sha256:00\"}"),
            Err(MetainfoError::Json(_))
        ));
        assert!(matches!(
            Metainfo::from_json(b"[]"),
            Err(MetainfoError::Json(_))
        ));
        // The serde Deserialize impl validates too, not only from_json.
        assert!(serde_json::from_str::<Metainfo>(&doc(1, MIB, vec![&hash])).is_err());
        assert!(serde_json::from_str::<Metainfo>(&doc(1, 256 * KIB, vec![&hash])).is_ok());
    }

    proptest! {
        #[test]
        fn piece_count_never_exceeds_max(length in prop_oneof![any::<u64>(), 0u64..1 << 40]) {
            let piece_length = piece_length_for(length);
            prop_assert!(piece_length.is_power_of_two());
            prop_assert!(piece_count_for(length, piece_length) <= MAX_PIECES);
        }

        #[test]
        fn piece_length_is_monotonic(a in any::<u64>(), b in any::<u64>()) {
            let (small, large) = if a <= b { (a, b) } else { (b, a) };
            prop_assert!(piece_length_for(small) <= piece_length_for(large));
        }

    }

    proptest! {
        // Each case hashes ~1 MB or decodes thousands of piece hashes; 64 cases still cover the
        // piece boundaries and size bands.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn builder_is_independent_of_chunking(
            // Up to a little over two 256 KiB pieces, so piece boundaries are crossed.
            len in 0usize..600_000,
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            let data = blob(len);
            let mut positions: Vec<usize> = cuts.iter().map(|cut| cut.index(len + 1)).collect();
            positions.sort_unstable();
            let mut builder = MetainfoBuilder::new(len as u64);
            let mut start = 0;
            for end in positions.into_iter().chain([len]) {
                builder.update(&data[start..end]);
                start = end;
            }
            let chunked = builder.finish().expect("length matches");
            prop_assert_eq!(&chunked, &build(&data));
            let expected: Vec<Digest> = data.chunks(256 * KIB as usize).map(Digest::of).collect();
            prop_assert_eq!(chunked.piece_count(), expected.len());
            for (i, hash) in expected.iter().enumerate() {
                prop_assert_eq!(chunked.piece_hash(i), Some(hash));
            }
            prop_assert_eq!(chunked.digest(), Digest::of(&data));
        }

        #[test]
        fn from_json_rejects_mutated_numbers(
            len in 1u64..10_000_000_000,
            delta in 1u64..1_000_000,
        ) {
            let piece_length = piece_length_for(len);
            let count = piece_count_for(len, piece_length) as usize;
            let hash = Digest::of(b"p").hex();
            let doc = |length: u64, piece_length: u64| serde_json::json!({
                "digest": Digest::of(b"x").to_string(),
                "length": length,
                "piece_length": piece_length,
                "pieces": vec![hash.as_str(); count],
            }).to_string();
            prop_assert!(Metainfo::from_json(doc(len, piece_length).as_bytes()).is_ok());
            prop_assert!(Metainfo::from_json(doc(len, piece_length + delta).as_bytes()).is_err());
            let longer = len + delta * piece_length;
            prop_assert!(Metainfo::from_json(doc(longer, piece_length).as_bytes()).is_err());
        }

        #[test]
        fn json_roundtrips(len in 0usize..800_000) {
            let metainfo = build(&blob(len));
            let json = metainfo.to_json();
            prop_assert_eq!(Metainfo::from_json(&json).expect("valid"), metainfo.clone());
            let via_serde: Metainfo = serde_json::from_slice(&json).expect("valid");
            prop_assert_eq!(via_serde, metainfo);
        }

    }

    proptest! {
        #[test]
        fn from_json_never_panics(input in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Metainfo::from_json(&input);
        }

    }
}
