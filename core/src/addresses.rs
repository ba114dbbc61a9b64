//! The addresses of a replicated component, as configs name them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One address or several of a replicated component (`host:port`, or a URL where the
/// component's client takes one), written as a string or as a list of them. Never empty;
/// [`Addresses::new`] and a config refuse a blank entry ([`Addresses::one`] takes what a
/// program writes as it is).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addresses(Vec<String>);

impl Addresses {
    /// The single address `addr`.
    pub fn one(addr: impl Into<String>) -> Addresses {
        Addresses(vec![addr.into()])
    }

    /// `addrs`, or why they are not a usable list (none, or a blank one).
    pub fn new(addrs: Vec<String>) -> Result<Addresses, String> {
        if addrs.is_empty() {
            return Err("an empty list of addresses".to_owned());
        }
        if addrs.iter().any(|addr| addr.trim().is_empty()) {
            return Err("an empty address".to_owned());
        }
        Ok(Addresses(addrs))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Display for Addresses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

impl<'de> Deserialize<'de> for Addresses {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Addresses, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged, expecting = "an address or a list of addresses")]
        enum Written {
            One(String),
            Many(Vec<String>),
        }
        let addrs = match Written::deserialize(deserializer)? {
            Written::One(addr) => vec![addr],
            Written::Many(addrs) => addrs,
        };
        Addresses::new(addrs).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Addresses {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => serializer.serialize_str(one),
            many => many.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_one_or_a_list_and_never_empty() {
        let one: Addresses = serde_json::from_str(r#""a:1""#).unwrap();
        assert_eq!(one, Addresses::one("a:1"));
        let many: Addresses = serde_json::from_str(r#"["a:1","b:2"]"#).unwrap();
        assert_eq!(many.as_slice(), ["a:1", "b:2"]);
        assert_eq!(many.to_string(), "a:1, b:2");
        assert_eq!(serde_json::to_string(&many).unwrap(), r#"["a:1","b:2"]"#);
        assert_eq!(serde_json::to_string(&one).unwrap(), r#""a:1""#);
        for (json, why) in [
            ("[]", "an empty list"),
            (r#"["a:1"," "]"#, "an empty address"),
            (r#""""#, "an empty address"),
            (r#"{"a":1}"#, "an address or a list of addresses"),
        ] {
            let error = serde_json::from_str::<Addresses>(json)
                .unwrap_err()
                .to_string();
            assert!(error.contains(why), "{json}: {error}");
        }
    }
}
