//! Repository names, tags and references as defined by the distribution spec grammar. Every
//! name that reaches storage paths or backend keys has been through these parsers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::digest::{Algorithm, Digest, DigestError};
use crate::echo::truncate;

/// The distribution spec's limit on a full repository name.
const MAX_NAME_LEN: usize = 255;
/// The distribution spec's limit on a tag.
const MAX_TAG_LEN: usize = 128;

/// Why a repository name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("repository name is empty")]
    Empty,
    #[error("repository name is {len} characters long (at most 255 allowed)")]
    TooLong { len: usize },
    #[error("invalid repository name {input:?}: {reason}")]
    Invalid { input: String, reason: &'static str },
}

/// Why a tag was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TagError {
    #[error("tag is empty")]
    Empty,
    #[error("tag is {len} characters long (at most 128 allowed)")]
    TooLong { len: usize },
    #[error("invalid tag {input:?}: must match [A-Za-z0-9_][A-Za-z0-9._-]*")]
    Invalid { input: String },
}

/// Why a manifest reference (tag or digest) was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReferenceError {
    #[error("invalid digest reference: {0}")]
    Digest(#[from] DigestError),
    #[error("invalid tag reference: {0}")]
    Tag(#[from] TagError),
}

/// A validated repository name such as `library/ubuntu`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// Parses `component(/component)*` where each component matches
    /// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`, 1..=255 characters in total.
    pub fn parse(s: &str) -> Result<Name, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong { len: s.len() });
        }
        for component in s.split('/') {
            if let Err(reason) = check_component(component) {
                return Err(NameError::Invalid {
                    input: truncate(s),
                    reason,
                });
            }
        }
        Ok(Name(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Matches one path component by hand: alphanumeric runs joined by exactly one `.`, one or two
/// `_`, or any number of `-`.
fn check_component(component: &str) -> Result<(), &'static str> {
    if component.is_empty() {
        return Err("empty path component (leading, trailing or double '/')");
    }
    let bytes = component.as_bytes();
    let mut i = 0;
    let mut expect_alnum = true;
    while i < bytes.len() {
        let b = bytes[i];
        if is_lower_alnum(b) {
            expect_alnum = false;
            i += 1;
            continue;
        }
        if expect_alnum {
            return Err(
                "components must start with [a-z0-9] and separators must sit between [a-z0-9] runs",
            );
        }
        let run = bytes[i..].iter().take_while(|&&c| c == b).count();
        let separator_ok = match b {
            b'.' => run == 1,
            b'_' => run <= 2,
            b'-' => true,
            _ => return Err("only [a-z0-9], '.', '_', '-' and '/' are allowed"),
        };
        if !separator_ok {
            return Err("separators are a single '.', '_' or '__', or a run of '-'");
        }
        i += run;
        expect_alnum = true;
    }
    if expect_alnum {
        return Err("components must end with [a-z0-9]");
    }
    Ok(())
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// A validated tag such as `latest` or `v1.2.3`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// Parses `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
    pub fn parse(s: &str) -> Result<Tag, TagError> {
        let Some(&first) = s.as_bytes().first() else {
            return Err(TagError::Empty);
        };
        if s.len() > MAX_TAG_LEN {
            return Err(TagError::TooLong { len: s.len() });
        }
        let first_ok = first.is_ascii_alphanumeric() || first == b'_';
        let rest_ok = s.as_bytes()[1..]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !(first_ok && rest_ok) {
            return Err(TagError::Invalid { input: truncate(s) });
        }
        Ok(Tag(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a manifest request names: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    /// Anything containing `:` must be a digest (tags cannot contain it); everything else is a tag.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.contains(':') {
            Ok(Reference::Digest(Digest::parse(s)?))
        } else {
            Ok(Reference::Tag(Tag::parse(s)?))
        }
    }

    /// The digest of a manifest put under this reference: with the reference's algorithm when
    /// it is a digest, sha256 under a tag.
    pub fn digest_of(&self, manifest: &[u8]) -> Digest {
        match self {
            Reference::Digest(digest) => digest.algorithm().digest(manifest),
            Reference::Tag(_) => Algorithm::Sha256.digest(manifest),
        }
    }
}

/// Display, Debug, FromStr and string serde for the validated string newtypes.
macro_rules! string_newtype_traits {
    ($ty:ident, $err:ident) => {
        impl FromStr for $ty {
            type Err = $err;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $ty::parse(s)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                $ty::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_newtype_traits!(Name, NameError);
string_newtype_traits!(Tag, TagError);

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(tag) => fmt::Display::fmt(tag, f),
            Reference::Digest(digest) => fmt::Display::fmt(digest, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn accepts_spec_names() {
        for name in [
            "a",
            "ubuntu",
            "library/ubuntu",
            "my-org/my.app/sub_dir",
            "a__b",
            "a---b",
            "0/1/2",
            "gcr.io/distroless/static",
            "a/blobs/b",
        ] {
            let parsed = Name::parse(name).expect(name);
            assert_eq!(parsed.as_str(), name);
            assert_eq!(parsed.to_string(), name);
        }
        assert!(Name::parse(&"a".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn rejects_bad_names() {
        let too_long = "a".repeat(300);
        let just_too_long = "a".repeat(MAX_NAME_LEN + 1);
        for name in [
            "",
            "../etc",
            "a/../b",
            "UPPER/case",
            "Ubuntu",
            "a//b",
            "/a",
            "a/",
            "/",
            too_long.as_str(),
            just_too_long.as_str(),
            "a___b",
            "a..b",
            "a._b",
            ".a",
            "a.",
            "-a",
            "a-",
            "_a",
            "a_",
            "a b",
            "a%2Fb",
            "a:b",
            "a@b",
            "ünï",
        ] {
            assert!(Name::parse(name).is_err(), "{name:?} should be rejected");
        }
    }

    #[test]
    fn name_errors_say_what_is_wrong() {
        assert_eq!(Name::parse(""), Err(NameError::Empty));
        assert_eq!(
            Name::parse(&"a".repeat(300)),
            Err(NameError::TooLong { len: 300 })
        );
        let message = Name::parse("a//b")
            .expect_err("empty component")
            .to_string();
        assert!(message.contains("empty path component"), "{message}");
    }

    #[test]
    fn tags_follow_the_grammar() {
        for tag in [
            "latest",
            "v1.2.3",
            "_private",
            "1",
            "A-b_c.D",
            &"t".repeat(128),
        ] {
            assert_eq!(Tag::parse(tag).expect(tag).as_str(), tag);
        }
        assert_eq!(Tag::parse(""), Err(TagError::Empty));
        assert_eq!(
            Tag::parse(&"t".repeat(129)),
            Err(TagError::TooLong { len: 129 })
        );
        for tag in [".hidden", "-dash", "a/b", "a:b", "a b", "é", "a+b"] {
            assert!(
                matches!(Tag::parse(tag), Err(TagError::Invalid { .. })),
                "{tag:?} should be invalid"
            );
        }
    }

    #[test]
    fn reference_is_a_digest_exactly_when_it_has_a_colon() {
        let digest = Digest::of(b"manifest");
        assert_eq!(
            Reference::parse(&digest.to_string()),
            Ok(Reference::Digest(digest))
        );
        assert_eq!(
            Reference::parse("latest").map(|r| r.to_string()),
            Ok("latest".to_owned())
        );
        assert!(matches!(
            Reference::parse("latest:"),
            Err(ReferenceError::Digest(_))
        ));
        let long = crate::Algorithm::Sha512.digest(b"manifest");
        assert_eq!(
            Reference::parse(&long.to_string()),
            Ok(Reference::Digest(long))
        );
        assert_eq!(Reference::Digest(long).digest_of(b"manifest"), long);
        assert_eq!(Reference::Digest(digest).digest_of(b"manifest"), digest);
        assert_eq!(
            Reference::parse("latest")
                .expect("tag")
                .digest_of(b"manifest"),
            digest
        );
        assert!(matches!(
            Reference::parse("sha384:00"),
            Err(ReferenceError::Digest(
                DigestError::UnsupportedAlgorithm { .. }
            ))
        ));
        assert!(matches!(
            Reference::parse(".bad"),
            Err(ReferenceError::Tag(_))
        ));
    }

    #[test]
    fn serde_validates_names_and_tags() {
        let name: Name = serde_json::from_str("\"library/ubuntu\"").expect("valid name");
        assert_eq!(
            serde_json::to_string(&name).expect("serialize"),
            "\"library/ubuntu\""
        );
        assert!(serde_json::from_str::<Name>("\"../etc\"").is_err());
        let tag: Tag = serde_json::from_str("\"v1\"").expect("valid tag");
        assert_eq!(tag.as_str(), "v1");
        assert!(serde_json::from_str::<Tag>("\"-v1\"").is_err());
    }

    const COMPONENT: &str = "[a-z0-9]{1,6}((\\.|_|__|-{1,3})[a-z0-9]{1,6}){0,3}";

    fn valid_name() -> impl Strategy<Value = String> {
        proptest::collection::vec(COMPONENT, 1..5)
            .prop_map(|components| components.join("/"))
            .prop_filter("within length limit", |name| name.len() <= MAX_NAME_LEN)
    }

    proptest! {
        #[test]
        fn valid_names_roundtrip(name in valid_name()) {
            let parsed = Name::parse(&name);
            prop_assert!(parsed.is_ok(), "{:?} rejected: {:?}", name, parsed);
            let parsed: Name = name.parse().expect("checked above");
            prop_assert_eq!(parsed.as_str(), name.as_str());
            let json = serde_json::to_string(&parsed).expect("serialize");
            prop_assert_eq!(serde_json::from_str::<Name>(&json).expect("deserialize"), parsed);
        }

        #[test]
        fn names_with_a_forbidden_character_are_rejected(
            name in valid_name(),
            position in any::<prop::sample::Index>(),
            bad in "[A-Z%:@ \\\\]",
        ) {
            let at = position.index(name.len() + 1);
            let mutated = format!("{}{}{}", &name[..at], bad, &name[at..]);
            prop_assert!(Name::parse(&mutated).is_err(), "{:?} accepted", mutated);
        }

        #[test]
        fn name_parse_never_panics(input in prop_oneof!["\\PC{0,300}", "[a-z0-9._/-]{0,24}"]) {
            if let Ok(name) = Name::parse(&input) {
                prop_assert_eq!(name.as_str(), input.as_str());
                prop_assert!(input.len() <= MAX_NAME_LEN);
                prop_assert!(input.bytes().all(|b| is_lower_alnum(b) || b"._-/".contains(&b)));
                prop_assert!(!input.contains("..") && !input.contains("//"));
            }
        }

        #[test]
        fn valid_tags_roundtrip(tag in "[A-Za-z0-9_][A-Za-z0-9._-]{0,127}") {
            let parsed = Tag::parse(&tag).expect("valid tag");
            prop_assert_eq!(parsed.as_str(), tag.as_str());
            prop_assert_eq!(Reference::parse(&tag), Ok(Reference::Tag(parsed)));
        }

        #[test]
        fn tag_and_reference_parse_never_panic(input in "\\PC{0,200}") {
            if let Ok(tag) = Tag::parse(&input) {
                prop_assert_eq!(tag.to_string(), input.clone());
            }
            if let Ok(reference) = Reference::parse(&input) {
                prop_assert_eq!(reference.to_string(), input);
            }
        }
    }
}
