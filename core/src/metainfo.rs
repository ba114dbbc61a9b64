//! Metainfo: the description of a blob as fixed-size pieces, the piece length that cuts a blob
//! into enough pieces to spread and few enough to stay cheap, and the streaming builder that
//! computes it. Peers verify every piece they receive against it.
//!
//! A piece's check value is not a hash of the piece alone but the blob's sha256 *chaining value*
//! after it (the last piece's is the blob's digest itself): piece `i` is verified by resuming the
//! blob's sha256 from piece `i - 1`'s value (the standard initial value for piece 0), feeding the
//! piece and comparing. Pieces still verify one by one, in any order, and blame the peer that sent
//! a bad one; and once every piece verified, the whole blob provably hashes to its digest — with
//! each byte hashed once, where separate piece hashes cost a second sha256 pass over the blob.
//! Piece lengths are multiples of sha256's 64-byte block, which this relies on.
//!
//! Piece values are sha256 whatever the blob's digest algorithm. For a sha512 blob the chain
//! still ends in the blob's sha256, which its digest does not name: the metainfo lists the
//! sha512 digest, pieces verify against the sha256 chain as for any blob, and whoever assembles
//! the whole blob checks its sha512 once at the end (one more pass, for sha512 blobs only).

use std::ops::Range;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::digest::{Algorithm, Digest, DigestError, Digester, Hasher};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Upper bound on the number of pieces of any blob. It bounds the metainfo document
/// (4096 × 64 hex ≈ 270 KB of JSON) and the bitfield peers exchange (512 bytes).
pub const MAX_PIECES: u64 = 4096;

/// Pieces a blob is cut into, at most, while pieces are 256 KiB to 1 MiB. The number of pieces,
/// not their size, is what lets a swarm spread a blob: a piece is passed on only once it is
/// whole, so few long pieces leave agents' uploads idle while the first copies arrive and again
/// at the end (`docs/BENCHMARKS.md`: 12 agents pulling a 64 MiB layer took 1.43× of the link
/// limit in 65 pieces of 1 MiB, 1.11× in 257 of 256 KiB). 512 to 1024 pieces keep the per-piece
/// cost (a request, a `have` to every peer) far below the bytes moved.
const TARGET_PIECES: u64 = 1024;

/// Pieces a blob is cut into, at most, once its pieces would be longer than
/// [`LONG_PIECE_LENGTH`] at [`TARGET_PIECES`]: a crowd's first second is the first copies of
/// pieces travelling, so halving their length halves it (the simulator, 2,600 agents pulling
/// 3 GB: the median from 1.068× to 1.049× of the link limit with 2 MiB pieces instead of 4 MiB).
/// Pieces stay at least 1 MiB long, so the per-piece cost per byte is never above a 1 GiB blob's.
const LONG_BLOB_PIECES: u64 = 2048;

/// The piece length past which blobs are cut into [`LONG_BLOB_PIECES`].
const LONG_PIECE_LENGTH: u64 = MIB;

/// Past 32 GiB pieces stop growing until a blob reaches [`MAX_PIECES`] of them (64 GiB): a piece
/// longer than this takes too long on a slow link to be re-fetched cheaply when it fails.
const LARGE_PIECE_LENGTH: u64 = 16 * MIB;

/// The piece length Shoal uses for a blob of `blob_length` bytes: the smallest power of two of
/// at least 256 KiB that cuts it into at most 1024 pieces, up to 1 MiB pieces; then at most 2048
/// pieces of at least 1 MiB, up to 16 MiB pieces; beyond that, at most [`MAX_PIECES`] pieces.
pub fn piece_length_for(blob_length: u64) -> u64 {
    // div_ceil(1024) ≤ 2^54, so next_power_of_two cannot overflow.
    let cut = |pieces: u64| blob_length.div_ceil(pieces).next_power_of_two();
    let mut length = cut(TARGET_PIECES).max(MIN_PIECE_LENGTH);
    if length > LONG_PIECE_LENGTH {
        length = cut(LONG_BLOB_PIECES).max(LONG_PIECE_LENGTH);
    }
    if length <= LARGE_PIECE_LENGTH {
        length
    } else {
        cut(MAX_PIECES).max(LARGE_PIECE_LENGTH)
    }
}

/// Whether metainfo may cut a blob of `blob_length` bytes into pieces of `piece_length`: a power
/// of two from 256 KiB (every such boundary is one `MetainfoBuilder` records), at most
/// [`MAX_PIECES`] of them, and no longer than the blob needs. Not only [`piece_length_for`]'s
/// choice: metainfo stored before the rule last changed stays valid.
fn piece_length_allowed(blob_length: u64, piece_length: u64) -> bool {
    let longest = blob_length
        .checked_next_power_of_two()
        .unwrap_or(1 << 63)
        .max(MIN_PIECE_LENGTH);
    piece_length.is_power_of_two()
        && (MIN_PIECE_LENGTH..=longest).contains(&piece_length)
        && piece_count_for(blob_length, piece_length) <= MAX_PIECES
}

/// Number of pieces of a blob; `piece_length` is never zero (from [`piece_length_for`], or checked
/// by [`piece_length_allowed`]).
fn piece_count_for(length: u64, piece_length: u64) -> u64 {
    length.div_ceil(piece_length)
}

/// Why a metainfo could not be built or decoded.
#[derive(Debug, Error)]
pub enum MetainfoError {
    #[error("metainfo is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "metainfo piece_length {actual} is not allowed for a {length}-byte blob: a power of two \
         from 256 KiB, at most 4096 pieces, no longer than the blob needs (Shoal cuts it into \
         {expected})"
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
    #[error("metainfo's last piece value {last} is not the blob's digest {digest}")]
    ChainEnd { digest: Digest, last: Digest },
    #[error("a 0-byte blob cannot have digest {digest}")]
    EmptyDigest { digest: Digest },
    #[error("metainfo piece {index} value {value} is not a sha256 chaining value")]
    PieceAlgorithm { index: usize, value: Digest },
    #[error("metainfo scheme {0:?} is not {SCHEME:?}")]
    Scheme(String),
}

/// Names the piece-value scheme in the JSON form, so a document of another scheme (an older
/// Shoal's per-piece hashes) is refused, and recomputed, instead of failing every piece.
const SCHEME: &str = "sha256-chain";
/// Chaining values are recorded at this granularity while a blob streams in with its length
/// unknown; every piece length is a multiple of it.
const MIN_PIECE_LENGTH: u64 = 256 * KIB;

/// A blob's piece layout and per-piece check values (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metainfo {
    digest: Digest,
    length: u64,
    piece_length: u64,
    pieces: Vec<Digest>,
}

impl Metainfo {
    /// The whole blob's digest (sha256 or sha512).
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

    /// Piece `index`'s check value: the blob's sha256 chaining value after it (the blob's
    /// sha256 for the last piece, which is its digest when that is a sha256 one).
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

    /// Whether `chunks`, in order, are exactly piece `index`: right length, and the blob's
    /// sha256 resumed from the previous piece's value reaches this piece's value. Each byte is
    /// hashed once.
    pub fn verify_piece<B: AsRef<[u8]>>(&self, index: usize, chunks: &[B]) -> bool {
        let (Some(range), Some(expected)) = (self.piece_range(index), self.pieces.get(index))
        else {
            return false;
        };
        let length: u64 = chunks.iter().map(|c| c.as_ref().len() as u64).sum();
        if length != range.end - range.start {
            return false;
        }
        let digester = match index.checked_sub(1) {
            None => Some(Digester::new()),
            Some(previous) => Digester::resume(&self.pieces[previous], range.start),
        };
        let Some(mut digester) = digester else {
            return false;
        };
        for chunk in chunks {
            digester.update(chunk.as_ref());
        }
        if index + 1 == self.pieces.len() {
            digester.finish() == *expected
        } else {
            digester.chaining_value().as_ref() == Some(expected)
        }
    }

    /// Builds metainfo from its parts (as a peer protocol carries them), checking that the
    /// piece length is one Shoal allows for `length` and the piece count matches it.
    pub fn from_parts(
        digest: Digest,
        length: u64,
        piece_length: u64,
        pieces: Vec<Digest>,
    ) -> Result<Metainfo, MetainfoError> {
        if !piece_length_allowed(length, piece_length) {
            return Err(MetainfoError::PieceLength {
                length,
                expected: piece_length_for(length),
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
        if let Some((index, &value)) = pieces
            .iter()
            .enumerate()
            .find(|(_, value)| value.algorithm() != Algorithm::Sha256)
        {
            return Err(MetainfoError::PieceAlgorithm { index, value });
        }
        // The chain ends in the blob's sha256: checkable here only when that is its digest.
        if let Some(&last) = pieces.last()
            && digest.algorithm() == Algorithm::Sha256
            && last != digest
        {
            return Err(MetainfoError::ChainEnd { digest, last });
        }
        // With no piece to check, the digest itself must be that of no bytes.
        if pieces.is_empty() && digest != digest.algorithm().digest(b"") {
            return Err(MetainfoError::EmptyDigest { digest });
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

    /// The JSON form: `{"scheme":"sha256-chain","digest":"sha256:…","length":N,"piece_length":N,
    /// "pieces":["<hex>",…]}` (the digest may be `sha512:…`; pieces are sha256 hex either way).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self)
            .expect("metainfo holds only strings and integers, which always serialize")
    }
}

/// The serde shape; pieces are bare sha256 hex (the algorithm is implied) to keep the document
/// small.
#[derive(Deserialize)]
struct WireMetainfo {
    scheme: String,
    digest: Digest,
    length: u64,
    piece_length: u64,
    pieces: Vec<String>,
}

impl TryFrom<WireMetainfo> for Metainfo {
    type Error = MetainfoError;

    fn try_from(wire: WireMetainfo) -> Result<Self, Self::Error> {
        if wire.scheme != SCHEME {
            return Err(MetainfoError::Scheme(wire.scheme));
        }
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

        let mut state = serializer.serialize_struct("Metainfo", 5)?;
        state.serialize_field("scheme", SCHEME)?;
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

/// Computes a [`Metainfo`] from a blob streamed in chunks of any size, in one sha256 pass. The
/// length may be unknown until the end (an upload): chaining values are recorded at every
/// 256 KiB, and [`MetainfoBuilder::finish`] keeps those at the boundaries of the piece length
/// the final length calls for (a few bytes of memory per KiB of blob: 128 KiB for 1 GiB).
#[derive(Debug, Clone)]
pub struct MetainfoBuilder {
    expected: Option<u64>,
    digester: Digester,
    /// The blob's own hash when its algorithm is not sha256 (the chain is sha256 regardless).
    other: Option<Hasher>,
    boundaries: Vec<Digest>,
    /// Bytes fed past the declared length: only counted, for finish's `LengthMismatch`; hashing
    /// them would be wasted work and could grow the boundary list past its bound.
    excess: u64,
}

impl MetainfoBuilder {
    /// A builder for a sha256 blob of exactly `length` bytes.
    pub fn new(length: u64) -> MetainfoBuilder {
        MetainfoBuilder::with_algorithm(Algorithm::Sha256, length)
    }

    /// A builder for a blob of exactly `length` bytes whose digest uses `algorithm`.
    pub fn with_algorithm(algorithm: Algorithm, length: u64) -> MetainfoBuilder {
        MetainfoBuilder {
            expected: Some(length),
            other: (algorithm != Algorithm::Sha256).then(|| Hasher::new(algorithm)),
            ..MetainfoBuilder::any_length()
        }
    }

    /// A builder for a blob whose length is known only once it is all fed.
    pub fn any_length() -> MetainfoBuilder {
        MetainfoBuilder {
            expected: None,
            digester: Digester::new(),
            other: None,
            boundaries: Vec::new(),
            excess: 0,
        }
    }

    /// Bytes fed so far.
    pub fn length(&self) -> u64 {
        self.digester.length() + self.excess
    }

    /// Feeds the next bytes of the blob, recording the chaining value at every 256 KiB.
    pub fn update(&mut self, mut data: &[u8]) {
        if let Some(expected) = self.expected {
            let room = expected.saturating_sub(self.digester.length());
            let keep = usize::try_from(room).map_or(data.len(), |room| room.min(data.len()));
            self.excess += (data.len() - keep) as u64;
            data = &data[..keep];
        }
        if let Some(other) = &mut self.other {
            other.update(data);
        }
        while !data.is_empty() {
            let room = MIN_PIECE_LENGTH - self.digester.length() % MIN_PIECE_LENGTH;
            let take = usize::try_from(room).map_or(data.len(), |room| room.min(data.len()));
            let (head, tail) = data.split_at(take);
            self.digester.update(head);
            if take as u64 == room
                && let Some(value) = self.digester.chaining_value()
            {
                self.boundaries.push(value);
            }
            data = tail;
        }
    }

    /// The metainfo, or `LengthMismatch` when the bytes fed differ from the declared length.
    pub fn finish(self) -> Result<Metainfo, MetainfoError> {
        let actual = self.length();
        if let Some(expected) = self.expected
            && expected != actual
        {
            return Err(MetainfoError::LengthMismatch { expected, actual });
        }
        // No excess from here: every byte fed was hashed.
        let length = self.digester.length();
        let piece_length = piece_length_for(length);
        let count = usize::try_from(piece_count_for(length, piece_length)).unwrap_or(usize::MAX);
        // Piece lengths are powers of two of at least 256 KiB, so every piece boundary is a
        // recorded one: piece i ends at boundary (i + 1) × step − 1.
        let step = usize::try_from(piece_length / MIN_PIECE_LENGTH).unwrap_or(usize::MAX);
        let sha256 = self.digester.finish();
        let mut pieces: Vec<Digest> = (1..count)
            .filter_map(|i| self.boundaries.get(i * step - 1).copied())
            .collect();
        if count > 0 {
            pieces.push(sha256);
        }
        let digest = self.other.map_or(sha256, Hasher::finish);
        Metainfo::from_parts(digest, length, piece_length, pieces)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const GIB: u64 = 1024 * MIB;

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
    fn piece_length_boundaries() {
        let rows = [
            (0, 256 * KIB),
            (1, 256 * KIB),
            // A 64 MiB layer and its tar header: 257 pieces (65 of 1 MiB before).
            (64 * MIB + 2048, 256 * KIB),
            (256 * MIB, 256 * KIB),
            (256 * MIB + 1, 512 * KIB),
            (GIB, MIB),
            // Past 1 GiB, 2048 pieces of at least 1 MiB (1025 of 2 MiB before 2026-12-05).
            (GIB + 1, MIB),
            (2 * GIB, MIB),
            (2 * GIB + 1, 2 * MIB),
            // Kraken's 3 GB benchmark blob: 1431 pieces of 2 MiB (716 of 4 MiB before).
            (3_000_000_000, 2 * MIB),
            (16 * GIB, 8 * MIB),
            (32 * GIB, 16 * MIB),
            // Past 32 GiB, 16 MiB pieces up to MAX_PIECES of them.
            (32 * GIB + 1, 16 * MIB),
            (64 * GIB, 16 * MIB),
            (64 * GIB + 1, 32 * MIB),
            (256 * GIB, 64 * MIB),
            (256 * GIB + 1, 128 * MIB),
            (u64::MAX, 1 << 52),
        ];
        for (length, expected) in rows {
            assert_eq!(piece_length_for(length), expected, "length {length}");
        }
    }

    #[test]
    fn piece_lengths_of_other_tables_stay_valid_within_bounds() {
        // The table before 2026-12-03 cut a 65 MiB blob into 1 MiB pieces: still allowed.
        assert!(piece_length_allowed(65 * MIB, MIB));
        assert!(piece_length_allowed(65 * MIB, 256 * KIB));
        assert!(piece_length_allowed(GIB + 1, 4 * MIB));
        // Not a power of two, below 256 KiB, longer than the blob needs, too many pieces.
        assert!(!piece_length_allowed(65 * MIB, 3 * MIB));
        assert!(!piece_length_allowed(65 * MIB, 128 * KIB));
        assert!(!piece_length_allowed(65 * MIB, 256 * MIB));
        assert!(!piece_length_allowed(4 * GIB, 256 * KIB));
        assert!(piece_length_allowed(GIB, 256 * KIB), "exactly MAX_PIECES");
    }

    #[test]
    fn empty_blob_has_no_pieces() {
        let metainfo = build(b"");
        assert_eq!(metainfo.piece_count(), 0);
        assert_eq!(metainfo.digest(), Digest::of(b""));
        assert_eq!(metainfo.piece_range(0), None);
        assert!(!metainfo.verify_piece(0, &[b""]));
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
            // Each value is the blob's sha256 state after the piece; the last, its digest.
            let mut prefix = Digester::new();
            prefix.update(&data[..range.end as usize]);
            let expected = if i == 2 {
                Digest::of(&data)
            } else {
                prefix
                    .chaining_value()
                    .expect("piece ends on a block boundary")
            };
            assert_eq!(metainfo.piece_hash(i), Some(&expected));
            assert!(metainfo.verify_piece(i, &[bytes]));
            // However the piece is chunked.
            let (a, b) = bytes.split_at(bytes.len() / 3);
            assert!(metainfo.verify_piece(i, &[a, b]));
        }
        assert!(
            !metainfo.verify_piece(0, &[&data[piece..2 * piece]]),
            "wrong piece"
        );
        assert!(
            !metainfo.verify_piece(1, &[&data[..piece]]),
            "another piece in its place"
        );
        assert!(
            !metainfo.verify_piece(2, &[&data[2 * piece..2 * piece + 999]]),
            "short piece"
        );
        assert!(!metainfo.verify_piece(3, &[b""]), "no such piece");
        let mut corrupt = data[..piece].to_vec();
        corrupt[17] ^= 1;
        assert!(!metainfo.verify_piece(0, &[&corrupt]));
    }

    #[test]
    fn a_sha512_blob_keeps_sha256_pieces() {
        let data = blob(2 * 256 * 1024 + 999);
        let mut builder = MetainfoBuilder::with_algorithm(Algorithm::Sha512, data.len() as u64);
        for chunk in data.chunks(100_000) {
            builder.update(chunk);
        }
        let metainfo = builder.finish().expect("length matches");
        let sha256 = build(&data);
        assert_eq!(metainfo.digest(), Algorithm::Sha512.digest(&data));
        assert_eq!(metainfo.piece_count(), sha256.piece_count());
        for i in 0..metainfo.piece_count() {
            // The same sha256 chain as the sha256 blob of these bytes: its last value the sha256.
            assert_eq!(metainfo.piece_hash(i), sha256.piece_hash(i));
            let range = metainfo.piece_range(i).expect("piece");
            assert!(metainfo.verify_piece(i, &[&data[range.start as usize..range.end as usize]]));
        }
        assert_eq!(
            Metainfo::from_json(&metainfo.to_json()).expect("json"),
            metainfo
        );
        // Pieces must be sha256 values.
        let mut pieces: Vec<Digest> = (0..metainfo.piece_count())
            .map(|i| *metainfo.piece_hash(i).expect("piece"))
            .collect();
        pieces[0] = Algorithm::Sha512.digest(b"x");
        assert!(matches!(
            Metainfo::from_parts(metainfo.digest(), data.len() as u64, 256 * KIB, pieces),
            Err(MetainfoError::PieceAlgorithm { index: 0, .. })
        ));
        // An empty sha512 blob has the sha512 of nothing and no pieces.
        let empty = MetainfoBuilder::with_algorithm(Algorithm::Sha512, 0)
            .finish()
            .expect("empty");
        assert_eq!(empty.digest(), Algorithm::Sha512.digest(b""));
        assert!(matches!(
            Metainfo::from_parts(Algorithm::Sha512.digest(b"x"), 0, 256 * KIB, vec![]),
            Err(MetainfoError::EmptyDigest { .. })
        ));
    }

    #[test]
    fn an_empty_blob_must_have_the_empty_digest() {
        assert!(Metainfo::from_parts(Digest::of(b""), 0, 256 * KIB, vec![]).is_ok());
        assert!(matches!(
            Metainfo::from_parts(Digest::of(b"x"), 0, 256 * KIB, vec![]),
            Err(MetainfoError::EmptyDigest { .. })
        ));
    }

    #[test]
    fn a_chain_that_does_not_end_in_the_digest_is_refused() {
        let data = blob(600_000);
        let real = build(&data);
        let pieces: Vec<Digest> = (0..real.piece_count())
            .filter_map(|i| real.piece_hash(i).copied())
            .collect();
        let claimed = Digest::of(b"another blob");
        assert!(matches!(
            Metainfo::from_parts(claimed, real.length(), real.piece_length(), pieces.clone()),
            Err(MetainfoError::ChainEnd { .. })
        ));
        // A liar that ends the chain in the claimed digest: its other pieces verify against
        // the lie, the last one cannot.
        let mut lying = pieces;
        *lying.last_mut().expect("pieces") = claimed;
        let lying = Metainfo::from_parts(claimed, real.length(), real.piece_length(), lying)
            .expect("well-formed");
        let last = lying.piece_count() - 1;
        for i in 0..lying.piece_count() {
            let range = lying.piece_range(i).expect("in range");
            let bytes = &data[range.start as usize..range.end as usize];
            assert_eq!(lying.verify_piece(i, &[bytes]), i != last, "piece {i}");
        }
    }

    #[test]
    fn last_piece_of_the_largest_blob_ends_at_its_length() {
        let hash = Digest::of(b"x").hex();
        let json = serde_json::json!({
            "scheme": "sha256-chain",
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
    fn a_builder_of_unknown_length_matches_one_of_known_length() {
        for len in [0, 1, 256 * 1024, 700_000, 70 * 1024 * 1024 + 3] {
            let data = blob(len);
            let mut any = MetainfoBuilder::any_length();
            for chunk in data.chunks(100_003) {
                any.update(chunk);
            }
            assert_eq!(any.finish().expect("metainfo"), build(&data), "{len} bytes");
        }
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
                "scheme": "sha256-chain",
                "digest": Digest::of(b"hello").to_string(),
                "length": 5,
                "piece_length": 256 * KIB,
                "pieces": [Digest::of(b"hello").hex()],
            })
        );
    }

    #[test]
    fn documents_of_another_scheme_are_refused() {
        let mut json: serde_json::Value =
            serde_json::from_slice(&build(b"hello").to_json()).expect("valid json");
        json["scheme"] = "sha256-pieces".into();
        assert!(matches!(
            Metainfo::from_json(json.to_string().as_bytes()),
            Err(MetainfoError::Scheme(scheme)) if scheme == "sha256-pieces"
        ));
        // An older Shoal's document has no scheme at all.
        json.as_object_mut().expect("object").remove("scheme");
        assert!(matches!(
            Metainfo::from_json(json.to_string().as_bytes()),
            Err(MetainfoError::Json(_))
        ));
    }

    #[test]
    fn json_validation_rejects_inconsistent_documents() {
        let hash = Digest::of(b"x").hex();
        let digest = Digest::of(b"x").to_string();
        let doc = |length: u64, piece_length: u64, pieces: Vec<&str>| {
            serde_json::json!({
                "scheme": "sha256-chain", "digest": digest, "length": length,
                "piece_length": piece_length, "pieces": pieces,
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
            prop_assert_eq!(chunked.piece_count(), data.len().div_ceil(256 * KIB as usize));
            for i in 0..chunked.piece_count() {
                let range = chunked.piece_range(i).expect("in range");
                prop_assert!(chunked.verify_piece(i, &[&data[range.start as usize..range.end as usize]]));
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
            let hash = Digest::of(b"x").hex();
            let doc = |length: u64, piece_length: u64| serde_json::json!({
                "scheme": "sha256-chain",
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
