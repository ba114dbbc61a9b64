//! Query-string parameters of Registry V2 requests (`?digest=`, `?mount=&from=`, `?n=&last=`).

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

/// Decoded `name=value` pairs, in request order.
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parses an `application/x-www-form-urlencoded` query. Never fails: bytes that are not
    /// UTF-8 after decoding become U+FFFD, which no digest, name or tag accepts.
    pub fn parse(raw: Option<&str>) -> Query {
        let pairs = raw
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (decode(name), decode(value))
            })
            .collect();
        Query(pairs)
    }

    /// The first value given for `name`. Later repetitions are ignored, as Go's `Query().Get`
    /// (the distribution registry) does.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, value)| value.as_str())
    }

    /// Drops every value of `name` (a cross-repository mount the caller may not read from).
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| n != name);
    }
}

fn decode(s: &str) -> String {
    let spaced: Cow<str> = if s.contains('+') {
        Cow::Owned(s.replace('+', " "))
    } else {
        Cow::Borrowed(s)
    };
    percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_percent_decoded_and_first_wins() {
        let query = Query::parse(Some(
            "from=test%2Fsmoke&mount=sha256%3Aab&n=1&n=2&flag&sp=a+b",
        ));
        assert_eq!(query.get("from"), Some("test/smoke"));
        assert_eq!(query.get("mount"), Some("sha256:ab"));
        assert_eq!(query.get("n"), Some("1"));
        assert_eq!(query.get("flag"), Some(""));
        assert_eq!(query.get("sp"), Some("a b"));
        assert_eq!(query.get("missing"), None);
    }

    #[test]
    fn removed_parameters_are_gone() {
        let mut query = Query::parse(Some("from=a&mount=sha256%3Aab&from=b"));
        query.remove("from");
        assert_eq!(query.get("from"), None);
        assert_eq!(query.get("mount"), Some("sha256:ab"));
    }

    #[test]
    fn absent_or_broken_queries_are_empty_or_lossy() {
        assert_eq!(Query::parse(None).get("digest"), None);
        assert_eq!(Query::parse(Some("&&")).get(""), None);
        assert_eq!(Query::parse(Some("d=%ff")).get("d"), Some("\u{fffd}"));
    }
}
