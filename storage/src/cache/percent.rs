//! `Percent`: the watermarks of a `cache:` config section, written `90%` (or a plain `90`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A share from 0 to 100, written `90%` (or a plain `90`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Percent(pub u8);

impl Percent {
    /// This share of `total`, rounded down.
    pub fn of(self, total: u64) -> u64 {
        (u128::from(total) * u128::from(self.0) / 100) as u64
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        let value = match Raw::deserialize(deserializer)? {
            Raw::Number(n) => n,
            Raw::Text(text) => text
                .trim()
                .strip_suffix('%')
                .unwrap_or(text.trim())
                .trim()
                .parse()
                .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a percentage")))?,
        };
        match u8::try_from(value) {
            Ok(percent) if percent <= 100 => Ok(Percent(percent)),
            _ => Err(serde::de::Error::custom(format!(
                "{value}% is not between 0% and 100%"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_take_their_share() {
        assert_eq!(Percent(90).of(1000), 900);
        assert_eq!(Percent(100).of(u64::MAX), u64::MAX);
        assert_eq!(Percent(0).of(u64::MAX), 0);
    }
}
