//! Content digests: the `<algorithm>:<hex>` identifier of every blob and manifest (sha256, or
//! sha512 as OCI image-spec 1.1 allows), the streaming [`Hasher`] for either, and the sha256
//! [`Digester`] whose chaining values check pieces. Other algorithms are rejected at parse time.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;
use thiserror::Error;

use crate::echo::truncate;

/// A digest algorithm Shoal accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

    /// The name before the colon, also the directory and key segment of its blobs.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// Length of its digests in lowercase hex.
    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }

    fn hex_rule(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256 hex must be exactly 64 lowercase hexadecimal characters",
            Algorithm::Sha512 => "sha512 hex must be exactly 128 lowercase hexadecimal characters",
        }
    }

    /// The digest of `data` under this algorithm. For anything large, stream it through a
    /// [`Hasher`].
    pub fn digest(self, data: &[u8]) -> Digest {
        let mut hasher = Hasher::new(self);
        hasher.update(data);
        hasher.finish()
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a digest string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DigestError {
    #[error("unsupported digest algorithm {algorithm:?} (only sha256 and sha512 are supported)")]
    UnsupportedAlgorithm { algorithm: String },
    #[error("malformed digest {input:?}: {reason}")]
    Malformed { input: String, reason: &'static str },
}

/// A content digest: an algorithm and exactly its number of bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(Bytes);

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Bytes {
    Sha256([u8; 32]),
    Sha512([u8; 64]),
}

impl Digest {
    /// Parses `sha256:` followed by exactly 64 lowercase hex characters, or `sha512:` and 128.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let malformed = |reason| DigestError::Malformed {
            input: truncate(s),
            reason,
        };
        let Some((name, hex_part)) = s.split_once(':') else {
            return Err(malformed("expected <algorithm>:<hex>"));
        };
        let Some(algorithm) = Algorithm::from_name(name) else {
            // Only a plausible algorithm name is reported as "unsupported"; junk before the
            // colon is just a malformed digest.
            return if is_algorithm_name(name) {
                Err(DigestError::UnsupportedAlgorithm {
                    algorithm: truncate(name),
                })
            } else {
                Err(malformed("invalid algorithm"))
            };
        };
        Digest::from_algorithm_hex(algorithm, hex_part).map_err(|_| malformed(algorithm.hex_rule()))
    }

    /// Parses the bare 64-character lowercase hex form used in metainfo piece lists.
    pub(crate) fn from_hex(hex_part: &str) -> Result<Digest, DigestError> {
        Digest::from_algorithm_hex(Algorithm::Sha256, hex_part)
    }

    /// Parses a bare hex form as a store or queue key holds it: its length names the algorithm
    /// (64 characters sha256, 128 sha512).
    pub fn from_key_hex(hex_part: &str) -> Result<Digest, DigestError> {
        let algorithm = if hex_part.len() == Algorithm::Sha512.hex_len() {
            Algorithm::Sha512
        } else {
            Algorithm::Sha256
        };
        Digest::from_algorithm_hex(algorithm, hex_part)
    }

    fn from_algorithm_hex(algorithm: Algorithm, hex_part: &str) -> Result<Digest, DigestError> {
        let is_lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        let invalid = || DigestError::Malformed {
            input: truncate(hex_part),
            reason: algorithm.hex_rule(),
        };
        if hex_part.len() != algorithm.hex_len() || !hex_part.bytes().all(is_lower_hex) {
            return Err(invalid());
        }
        // Length and alphabet were checked above, so decoding cannot fail; map it anyway.
        Ok(Digest(match algorithm {
            Algorithm::Sha256 => {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| invalid())?;
                Bytes::Sha256(bytes)
            }
            Algorithm::Sha512 => {
                let mut bytes = [0u8; 64];
                hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| invalid())?;
                Bytes::Sha512(bytes)
            }
        }))
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.0 {
            Bytes::Sha256(_) => Algorithm::Sha256,
            Bytes::Sha512(_) => Algorithm::Sha512,
        }
    }

    /// The lowercase hex form, without the algorithm prefix (64 or 128 characters).
    pub fn hex(&self) -> String {
        hex::encode(self.as_bytes())
    }

    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Bytes::Sha256(bytes) => bytes,
            Bytes::Sha512(bytes) => bytes,
        }
    }

    /// A sha256 digest (or chaining value) from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest(Bytes::Sha256(bytes))
    }

    /// The sha256 of `data`. For anything that may be large, stream it through a [`Digester`].
    pub fn of(data: &[u8]) -> Digest {
        Algorithm::Sha256.digest(data)
    }
}
/// The OCI algorithm grammar: `[a-z0-9]+(?:[.+_-][a-z0-9]+)*`.
fn is_algorithm_name(s: &str) -> bool {
    let mut previous_was_separator = true;
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' => previous_was_separator = false,
            b'.' | b'+' | b'_' | b'-' if !previous_was_separator => previous_was_separator = true,
            _ => return false,
        }
    }
    !previous_was_separator
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm(), self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Streaming hash of a blob under its digest's algorithm. The dispatch is per chunk, not per
/// byte, and sha256 is the [`Digester`] itself.
#[derive(Debug, Clone)]
pub struct Hasher(HasherState);

#[derive(Clone)]
enum HasherState {
    Sha256(Digester),
    Sha512(sha2::Sha512),
}

impl fmt::Debug for HasherState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HasherState::Sha256(digester) => digester.fmt(f),
            HasherState::Sha512(_) => f.write_str("Hasher(sha512)"),
        }
    }
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        Hasher(match algorithm {
            Algorithm::Sha256 => HasherState::Sha256(Digester::new()),
            Algorithm::Sha512 => HasherState::Sha512(sha2::Sha512::new()),
        })
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            HasherState::Sha256(digester) => digester.update(data),
            HasherState::Sha512(hasher) => hasher.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        match self.0 {
            HasherState::Sha256(digester) => digester.finish(),
            HasherState::Sha512(hasher) => Digest(Bytes::Sha512(hasher.finalize().into())),
        }
    }
}

/// SHA-256's initial chaining value (FIPS 180-4, 5.3.3).
const IV: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];
const BLOCK: usize = 64;

/// Incremental sha256 over a stream of chunks. At every 64-byte block boundary its state is a
/// *chaining value* ([`Digester::chaining_value`]) from which hashing can resume elsewhere
/// ([`Digester::resume`]): that is what lets a blob's pieces be verified one by one with each
/// byte hashed once (see [`crate::Metainfo`]). The compression function is `sha2`'s (SHA-NI when
/// the CPU has it); only the block buffering and padding live here.
#[derive(Clone)]
pub struct Digester {
    state: [u32; 8],
    buffer: [u8; BLOCK],
    buffered: usize,
    /// Bytes fed in all, including those before a resume.
    length: u64,
}

impl Default for Digester {
    fn default() -> Digester {
        Digester::new()
    }
}

impl Digester {
    pub fn new() -> Digester {
        Digester {
            state: IV,
            buffer: [0; BLOCK],
            buffered: 0,
            length: 0,
        }
    }

    /// Continues a hash whose first `length` bytes (a multiple of 64) ended in `chaining_value`.
    /// None when `length` is not on a block boundary or the value is not a sha256 one.
    pub fn resume(chaining_value: &Digest, length: u64) -> Option<Digester> {
        let Bytes::Sha256(value) = chaining_value.0 else {
            return None;
        };
        if !length.is_multiple_of(BLOCK as u64) {
            return None;
        }
        let mut state = [0; 8];
        for (word, bytes) in state.iter_mut().zip(value.chunks_exact(4)) {
            *word = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        Some(Digester {
            state,
            buffer: [0; BLOCK],
            buffered: 0,
            length,
        })
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.length += data.len() as u64;
        if self.buffered > 0 {
            let take = (BLOCK - self.buffered).min(data.len());
            self.buffer[self.buffered..self.buffered + take].copy_from_slice(&data[..take]);
            self.buffered += take;
            data = &data[take..];
            if self.buffered < BLOCK {
                return;
            }
            sha2::block_api::compress256(&mut self.state, &[self.buffer]);
            self.buffered = 0;
        }
        let (blocks, rest) = data.as_chunks::<BLOCK>();
        sha2::block_api::compress256(&mut self.state, blocks);
        self.buffer[..rest.len()].copy_from_slice(rest);
        self.buffered = rest.len();
    }

    /// Bytes fed so far (counting those before a resume).
    pub fn length(&self) -> u64 {
        self.length
    }

    /// The state after the bytes fed so far, when they end on a block boundary.
    pub fn chaining_value(&self) -> Option<Digest> {
        (self.buffered == 0).then(|| Digest::from_words(&self.state))
    }

    pub fn finish(mut self) -> Digest {
        let bits = self.length.wrapping_mul(8);
        let mut tail = [0u8; 2 * BLOCK];
        tail[..self.buffered].copy_from_slice(&self.buffer[..self.buffered]);
        tail[self.buffered] = 0x80;
        let used = if self.buffered + 9 <= BLOCK {
            BLOCK
        } else {
            2 * BLOCK
        };
        tail[used - 8..used].copy_from_slice(&bits.to_be_bytes());
        let (blocks, _) = tail[..used].as_chunks::<BLOCK>();
        sha2::block_api::compress256(&mut self.state, blocks);
        Digest::from_words(&self.state)
    }
}

impl Digest {
    fn from_words(words: &[u32; 8]) -> Digest {
        let mut bytes = [0; 32];
        for (out, word) in bytes.chunks_exact_mut(4).zip(words) {
            out.copy_from_slice(&word.to_be_bytes());
        }
        Digest::from_bytes(bytes)
    }
}

impl fmt::Debug for Digester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Digester(sha256)")
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn reference(data: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest::from_bytes(sha2::Sha256::digest(data).into())
    }

    proptest! {
        #[test]
        fn the_digester_is_sha256_however_it_is_fed_and_resumed(
            data in proptest::collection::vec(any::<u8>(), 0..700),
            cuts in proptest::collection::vec(0usize..700, 0..6),
            resume_block in 0usize..12,
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(data.len())).collect();
            cuts.sort_unstable();
            let mut digester = Digester::new();
            let mut at = 0;
            for cut in cuts.into_iter().chain([data.len()]) {
                digester.update(&data[at..cut]);
                at = cut;
            }
            prop_assert_eq!(digester.finish(), reference(&data));
            // Resuming from the chaining value at any block boundary gives the same digest.
            let split = (resume_block * 64).min(data.len() / 64 * 64);
            let mut head = Digester::new();
            head.update(&data[..split]);
            let cv = head.chaining_value().expect("on a block boundary");
            let mut tail = Digester::resume(&cv, split as u64).expect("block boundary");
            tail.update(&data[split..]);
            prop_assert_eq!(tail.finish(), reference(&data));
        }
    }

    #[test]
    fn chaining_values_exist_only_on_block_boundaries() {
        let mut digester = Digester::new();
        assert!(digester.chaining_value().is_some());
        digester.update(&[1; 65]);
        assert_eq!(digester.chaining_value(), None);
        digester.update(&[1; 63]);
        assert!(digester.chaining_value().is_some());
        assert!(Digester::resume(&Digest::of(b""), 100).is_none());
    }

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn of_matches_known_sha256() {
        assert_eq!(Digest::of(b"").to_string(), EMPTY_SHA256);
        assert_eq!(
            Digest::of(b"abc").hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn parse_display_debug_and_bytes_agree() {
        let digest = Digest::parse(EMPTY_SHA256).expect("valid digest");
        assert_eq!(digest, Digest::of(b""));
        assert_eq!(digest.to_string(), EMPTY_SHA256);
        assert_eq!(format!("{digest:?}"), EMPTY_SHA256);
        assert_eq!(
            Digest::from_bytes(digest.as_bytes().try_into().unwrap()),
            digest
        );
        assert_eq!(EMPTY_SHA256.parse::<Digest>(), Ok(digest));
        assert_eq!(digest.algorithm(), Algorithm::Sha256);
    }

    const EMPTY_SHA512: &str = "sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e";

    #[test]
    fn sha512_parses_displays_and_hashes() {
        let digest = Digest::parse(EMPTY_SHA512).expect("valid sha512 digest");
        assert_eq!(digest.algorithm(), Algorithm::Sha512);
        assert_eq!(digest, Algorithm::Sha512.digest(b""));
        assert_eq!(digest.to_string(), EMPTY_SHA512);
        assert_eq!(format!("{digest:?}"), EMPTY_SHA512);
        assert_eq!(digest.as_bytes().len(), 64);
        assert_eq!(Digest::from_key_hex(&digest.hex()), Ok(digest));
        assert_eq!(
            Algorithm::Sha512.digest(b"abc").hex(),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
        // Same bytes, other algorithm: a different digest, never equal to the sha256 one.
        assert_ne!(Algorithm::Sha512.digest(b"abc"), Digest::of(b"abc"));
        // Each algorithm takes exactly its own hex length.
        let hex64 = Digest::of(b"").hex();
        assert!(Digest::parse(&format!("sha512:{hex64}")).is_err());
        assert!(Digest::parse(&format!("sha256:{}", digest.hex())).is_err());
        assert!(Digest::parse(&EMPTY_SHA512.to_uppercase()).is_err());
        // A sha512 value is no sha256 chaining value.
        assert!(Digester::resume(&digest, 0).is_none());
    }

    #[test]
    fn sha512_serde_uses_the_string_form() {
        let digest = Algorithm::Sha512.digest(b"layer");
        let json = serde_json::to_string(&digest).expect("serialize");
        assert_eq!(json, format!("\"{digest}\""));
        assert_eq!(
            serde_json::from_str::<Digest>(&json).expect("deserialize"),
            digest
        );
    }

    #[test]
    fn other_algorithms_are_unsupported() {
        for input in [
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha384:00",
            "blake3:00",
            "sha384:38b060a751ac96384cd9327eb1b1e36a21fdb71114be07434c0cc7bf63f6e1da274edebfe76f65fbd51ad2f14898b95b",
        ] {
            assert!(
                matches!(
                    Digest::parse(input),
                    Err(DigestError::UnsupportedAlgorithm { .. })
                ),
                "{input}"
            );
        }
    }

    #[test]
    fn malformed_inputs_are_rejected() {
        let hex64 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let cases = [
            String::new(),
            "sha256".to_owned(),
            hex64.to_owned(),
            "sha256:".to_owned(),
            format!("sha256:{}", &hex64[..63]),
            format!("sha256:{hex64}0"),
            format!("sha256:{}", hex64.to_uppercase()),
            format!("SHA256:{hex64}"),
            format!("sha256:{}g", &hex64[..63]),
            format!("sha256:{hex64}:"),
            format!(" sha256:{hex64}"),
            format!(":{hex64}"),
            format!("sha 256:{hex64}"),
            format!("sha256:{}é", &hex64[..62]),
        ];
        for input in cases {
            assert!(
                matches!(Digest::parse(&input), Err(DigestError::Malformed { .. })),
                "{input:?} should be malformed"
            );
        }
    }

    #[test]
    fn error_message_truncates_long_input() {
        let long = "x".repeat(10_000);
        let message = Digest::parse(&long).expect_err("malformed").to_string();
        assert!(
            message.len() < 300,
            "message too long: {} bytes",
            message.len()
        );
    }

    #[test]
    fn serde_uses_the_string_form() {
        let digest = Digest::of(b"layer");
        let json = serde_json::to_string(&digest).expect("serialize");
        assert_eq!(json, format!("\"{digest}\""));
        let back: Digest = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, digest);
        assert!(serde_json::from_str::<Digest>("\"sha256:abc\"").is_err());
        assert!(serde_json::from_str::<Digest>("42").is_err());
    }

    #[test]
    fn from_hex_accepts_only_bare_lowercase_hex() {
        let digest = Digest::of(b"piece");
        assert_eq!(Digest::from_hex(&digest.hex()), Ok(digest));
        assert!(Digest::from_hex(&digest.to_string()).is_err());
        assert!(Digest::from_hex(&digest.hex().to_uppercase()).is_err());
    }

    proptest! {
        #[test]
        fn any_digest_roundtrips_through_text(bytes in any::<[u8; 32]>(), long in any::<[u8; 64]>()) {
            let digest = Digest::from_bytes(bytes);
            prop_assert_eq!(Digest::parse(&digest.to_string()), Ok(digest));
            let digest = Digest(Bytes::Sha512(long));
            prop_assert_eq!(Digest::parse(&digest.to_string()), Ok(digest));
            prop_assert_eq!(Digest::from_key_hex(&digest.hex()), Ok(digest));
        }

        #[test]
        fn the_hasher_matches_sha2_however_it_is_fed(
            data in proptest::collection::vec(any::<u8>(), 0..700),
            cut in 0usize..700,
        ) {
            let cut = cut.min(data.len());
            for algorithm in Algorithm::ALL {
                let mut hasher = Hasher::new(algorithm);
                hasher.update(&data[..cut]);
                hasher.update(&data[cut..]);
                let expected = match algorithm {
                    Algorithm::Sha256 => hex::encode(sha2::Sha256::digest(&data)),
                    Algorithm::Sha512 => hex::encode(sha2::Sha512::digest(&data)),
                };
                prop_assert_eq!(hasher.finish().to_string(), format!("{algorithm}:{expected}"));
            }
        }

        #[test]
        fn parse_never_panics_and_accepts_only_canonical_text(input in "\\PC{0,80}") {
            if let Ok(digest) = Digest::parse(&input) {
                prop_assert_eq!(digest.to_string(), input);
            }
        }

        #[test]
        fn near_miss_strings_are_rejected(hex in "[0-9a-fA-F]{60,68}", algorithm in "[a-z0-9]{1,8}") {
            let input = format!("{algorithm}:{hex}");
            let canonical = algorithm == "sha256"
                && hex.len() == 64
                && !hex.bytes().any(|b| b.is_ascii_uppercase());
            prop_assert_eq!(Digest::parse(&input).is_ok(), canonical);
        }

        #[test]
        fn digester_is_independent_of_chunking(
            data in proptest::collection::vec(any::<u8>(), 0..4096),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut positions: Vec<usize> = cuts.iter().map(|cut| cut.index(data.len() + 1)).collect();
            positions.sort_unstable();
            let mut digester = Digester::new();
            let mut start = 0;
            for end in positions.into_iter().chain([data.len()]) {
                digester.update(&data[start..end]);
                start = end;
            }
            prop_assert_eq!(digester.finish(), Digest::of(&data));
        }
    }
}
