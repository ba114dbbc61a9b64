//! Content digests: the `sha256:<hex>` identifier of every blob and piece, and the streaming hasher
//! that produces it. Only sha256 exists in Shoal; other algorithms are rejected at parse time.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::echo::truncate;

/// The only algorithm Shoal accepts.
const ALGORITHM: &str = "sha256";
/// Length of a sha256 digest in lowercase hex.
const HEX_LEN: usize = 64;
const HEX_RULE: &str = "sha256 hex must be exactly 64 lowercase hexadecimal characters";

/// Why a digest string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DigestError {
    #[error("unsupported digest algorithm {algorithm:?} (only sha256 is supported)")]
    UnsupportedAlgorithm { algorithm: String },
    #[error("malformed digest {input:?}: {reason}")]
    Malformed { input: String, reason: &'static str },
}

/// A sha256 content digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// Parses `sha256:` followed by exactly 64 lowercase hex characters.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        let malformed = |reason| DigestError::Malformed {
            input: truncate(s),
            reason,
        };
        let Some((algorithm, hex_part)) = s.split_once(':') else {
            return Err(malformed("expected <algorithm>:<hex>"));
        };
        if algorithm != ALGORITHM {
            // Only a plausible algorithm name is reported as "unsupported"; junk before the
            // colon is just a malformed digest.
            return if is_algorithm_name(algorithm) {
                Err(DigestError::UnsupportedAlgorithm {
                    algorithm: truncate(algorithm),
                })
            } else {
                Err(malformed("invalid algorithm"))
            };
        }
        Digest::from_hex(hex_part).map_err(|_| malformed(HEX_RULE))
    }

    /// Parses the bare 64-character lowercase hex form used in metainfo piece lists.
    pub(crate) fn from_hex(hex_part: &str) -> Result<Digest, DigestError> {
        let is_lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if hex_part.len() != HEX_LEN || !hex_part.bytes().all(is_lower_hex) {
            return Err(DigestError::Malformed {
                input: truncate(hex_part),
                reason: HEX_RULE,
            });
        }
        let mut bytes = [0u8; 32];
        // Length and alphabet were checked above, so decoding cannot fail; map it anyway.
        hex::decode_to_slice(hex_part, &mut bytes).map_err(|_| DigestError::Malformed {
            input: truncate(hex_part),
            reason: HEX_RULE,
        })?;
        Ok(Digest(bytes))
    }

    /// The 64-character lowercase hex form, without the algorithm prefix.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Digest {
        Digest(bytes)
    }

    /// The sha256 of `data`. For anything that may be large, stream it through a [`Digester`].
    pub fn of(data: &[u8]) -> Digest {
        let mut digester = Digester::new();
        digester.update(data);
        digester.finish()
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
        write!(f, "{ALGORITHM}:{}", self.hex())
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
    /// None when `length` is not on a block boundary.
    pub fn resume(chaining_value: &Digest, length: u64) -> Option<Digester> {
        if !length.is_multiple_of(BLOCK as u64) {
            return None;
        }
        let mut state = [0; 8];
        for (word, bytes) in state.iter_mut().zip(chaining_value.0.chunks_exact(4)) {
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
        Digest(bytes)
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
        Digest(sha2::Sha256::digest(data).into())
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
        assert_eq!(Digest::from_bytes(*digest.as_bytes()), digest);
        assert_eq!(EMPTY_SHA256.parse::<Digest>(), Ok(digest));
    }

    #[test]
    fn other_algorithms_are_unsupported() {
        for input in [
            "sha512:abcd",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha384:00",
            "blake3:00",
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
        fn any_digest_roundtrips_through_text(bytes in any::<[u8; 32]>()) {
            let digest = Digest::from_bytes(bytes);
            prop_assert_eq!(Digest::parse(&digest.to_string()), Ok(digest));
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
