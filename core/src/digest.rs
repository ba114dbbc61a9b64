//! Content digests: the `sha256:<hex>` identifier of every blob and piece, and the streaming hasher
//! that produces it. Only sha256 exists in Shoal; other algorithms are rejected at parse time.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Digest as _;
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

/// Incremental sha256 over a stream of chunks.
#[derive(Clone, Default)]
pub struct Digester(sha2::Sha256);

impl Digester {
    pub fn new() -> Digester {
        Digester(sha2::Sha256::new())
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    pub fn finish(self) -> Digest {
        Digest(self.0.finalize().into())
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
