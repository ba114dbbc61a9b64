//! Peer identifiers: the names agents and origins announce themselves under at the tracker and
//! present in peer handshakes. Generating one (e.g. from a UUID) is up to the component.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::echo::truncate;

/// Long enough for a UUID, a hostname plus port, or a pod name; short enough to keep tracker
/// records and log lines small.
const MAX_PEER_ID_LEN: usize = 64;

/// Why a peer id was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PeerIdError {
    #[error("peer id is empty")]
    Empty,
    #[error("peer id is {len} characters long (at most 64 allowed)")]
    TooLong { len: usize },
    #[error("invalid peer id {input:?}: only [A-Za-z0-9._:-] are allowed")]
    Invalid { input: String },
}

/// A validated peer id: 1..=64 characters of `[A-Za-z0-9._:-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(String);

impl PeerId {
    pub fn parse(s: &str) -> Result<PeerId, PeerIdError> {
        if s.is_empty() {
            return Err(PeerIdError::Empty);
        }
        if s.len() > MAX_PEER_ID_LEN {
            return Err(PeerIdError::TooLong { len: s.len() });
        }
        let valid = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
        if !valid {
            return Err(PeerIdError::Invalid { input: truncate(s) });
        }
        Ok(PeerId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PeerId {
    type Err = PeerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PeerId::parse(s)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl AsRef<str> for PeerId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for PeerId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PeerId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        PeerId::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn accepts_uuids_hosts_and_ports() {
        for id in [
            "a",
            "0b6f1c0e-8a51-4c1e-9a0e-6f0b3f1f2a11",
            "agent-3",
            "node1.example.com:16001",
            "origin_0",
            &"x".repeat(64),
        ] {
            let parsed = PeerId::parse(id).expect(id);
            assert_eq!(parsed.as_str(), id);
            assert_eq!(parsed.to_string(), id);
        }
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters() {
        assert_eq!(PeerId::parse(""), Err(PeerIdError::Empty));
        assert_eq!(
            PeerId::parse(&"x".repeat(65)),
            Err(PeerIdError::TooLong { len: 65 })
        );
        for id in ["a b", "a/b", "a@b", "é", "a\n", "[::1]:80", "a%20"] {
            assert!(
                matches!(PeerId::parse(id), Err(PeerIdError::Invalid { .. })),
                "{id:?} should be invalid"
            );
        }
    }

    #[test]
    fn serde_validates() {
        let id: PeerId = serde_json::from_str("\"agent-1\"").expect("valid id");
        assert_eq!(
            serde_json::to_string(&id).expect("serialize"),
            "\"agent-1\""
        );
        assert!(serde_json::from_str::<PeerId>("\"a b\"").is_err());
        assert!(serde_json::from_str::<PeerId>("\"\"").is_err());
    }

    proptest! {
        #[test]
        fn valid_ids_roundtrip(id in "[A-Za-z0-9._:-]{1,64}") {
            let parsed: PeerId = id.parse().expect("valid by construction");
            prop_assert_eq!(parsed.as_str(), id.as_str());
            let json = serde_json::to_string(&parsed).expect("serialize");
            prop_assert_eq!(serde_json::from_str::<PeerId>(&json).expect("deserialize"), parsed);
        }

        #[test]
        fn junk_never_panics(junk in any::<String>()) {
            if let Ok(id) = PeerId::parse(&junk) {
                prop_assert_eq!(id.as_str(), junk.as_str());
                prop_assert!(!junk.is_empty() && junk.len() <= MAX_PEER_ID_LEN);
            }
        }
    }
}
