//! HTTP byte ranges: the `Range` request header of blob GETs (RFC 9110 §14) and the
//! `Content-Range` header of upload PATCH chunks. Only single ranges are supported.

use std::fmt;
use std::ops::Range;

use thiserror::Error;

use crate::echo::truncate;

/// Why a range header was rejected or cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RangeError {
    #[error("malformed range {input:?}: {reason}")]
    Malformed { input: String, reason: &'static str },
    #[error("range not satisfiable for a {len}-byte blob")]
    Unsatisfiable { len: u64 },
}

/// One byte range from a `Range: bytes=…` header, before the blob length is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=first-last`, both inclusive.
    Bounded { first: u64, last: u64 },
    /// `bytes=first-`: from `first` to the end.
    From(u64),
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parses `bytes=a-b`, `bytes=a-` or `bytes=-n`. Multiple ranges are refused rather than
    /// served as multipart, which no registry client asks for.
    pub fn parse(header: &str) -> Result<ByteRange, RangeError> {
        let malformed = |reason| RangeError::Malformed {
            input: truncate(header),
            reason,
        };
        let trimmed = header.trim();
        let spec = strip_prefix_ignore_case(trimmed, "bytes=")
            .ok_or_else(|| malformed("expected the bytes= unit"))?
            .trim();
        if spec.contains(',') {
            return Err(malformed("multiple ranges are not supported"));
        }
        let (first, last) = spec
            .split_once('-')
            .ok_or_else(|| malformed("expected first-last"))?;
        let (first, last) = (first.trim(), last.trim());
        match (first.is_empty(), last.is_empty()) {
            (true, true) => Err(malformed("expected first-last")),
            (true, false) => {
                let n =
                    parse_number(last).ok_or_else(|| malformed("suffix length is not a number"))?;
                Ok(ByteRange::Suffix(n))
            }
            (false, true) => {
                let first =
                    parse_number(first).ok_or_else(|| malformed("first byte is not a number"))?;
                Ok(ByteRange::From(first))
            }
            (false, false) => {
                let first =
                    parse_number(first).ok_or_else(|| malformed("first byte is not a number"))?;
                let last =
                    parse_number(last).ok_or_else(|| malformed("last byte is not a number"))?;
                if last < first {
                    return Err(malformed("last byte is before first byte"));
                }
                Ok(ByteRange::Bounded { first, last })
            }
        }
    }

    /// The half-open byte range to serve from a blob of `len` bytes, per RFC 9110: a last byte
    /// past the end is clamped, a suffix longer than the blob means the whole blob.
    pub fn resolve(&self, len: u64) -> Result<Range<u64>, RangeError> {
        let unsatisfiable = RangeError::Unsatisfiable { len };
        match *self {
            _ if len == 0 => Err(unsatisfiable),
            ByteRange::Bounded { first, .. } | ByteRange::From(first) if first >= len => {
                Err(unsatisfiable)
            }
            // last < len here, so last + 1 cannot overflow.
            ByteRange::Bounded { first, last } => Ok(first..last.min(len - 1) + 1),
            ByteRange::From(first) => Ok(first..len),
            ByteRange::Suffix(0) => Err(unsatisfiable),
            ByteRange::Suffix(n) => Ok(len.saturating_sub(n)..len),
        }
    }
}

/// The header value: `bytes=first-last`, `bytes=first-` or `bytes=-n`, which
/// [`ByteRange::parse`] reads back (the proxy forwards a client's range to the origin this way).
impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ByteRange::Bounded { first, last } => write!(f, "bytes={first}-{last}"),
            ByteRange::From(first) => write!(f, "bytes={first}-"),
            ByteRange::Suffix(n) => write!(f, "bytes=-{n}"),
        }
    }
}

/// The inclusive byte span of an upload chunk, from a PATCH `Content-Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentRange {
    pub first: u64,
    pub last: u64,
}

// A content range always holds at least one byte, so an `is_empty` would be constant.
#[allow(clippy::len_without_is_empty)]
impl ContentRange {
    /// Accepts `a-b` (what docker sends), `bytes a-b/*`, `bytes a-b/N` and `bytes=a-b`.
    pub fn parse(header: &str) -> Result<ContentRange, RangeError> {
        let malformed = |reason| RangeError::Malformed {
            input: truncate(header),
            reason,
        };
        let trimmed = header.trim();
        let (span, total) = if let Some(rest) = strip_prefix_ignore_case(trimmed, "bytes ") {
            let (span, total) = rest
                .split_once('/')
                .ok_or_else(|| malformed("expected bytes first-last/total"))?;
            (span.trim(), Some(total.trim()))
        } else if let Some(rest) = strip_prefix_ignore_case(trimmed, "bytes=") {
            (rest.trim(), None)
        } else {
            (trimmed, None)
        };
        let (first, last) = span
            .split_once('-')
            .ok_or_else(|| malformed("expected first-last"))?;
        let first =
            parse_number(first.trim()).ok_or_else(|| malformed("first byte is not a number"))?;
        let last =
            parse_number(last.trim()).ok_or_else(|| malformed("last byte is not a number"))?;
        if last < first {
            return Err(malformed("last byte is before first byte"));
        }
        // Keeps len() exact: a span ending at u64::MAX would hold 2^64 bytes.
        if last == u64::MAX {
            return Err(malformed("range is too large"));
        }
        match total {
            None | Some("*") => {}
            Some(total) => {
                let total =
                    parse_number(total).ok_or_else(|| malformed("total length is not a number"))?;
                if last >= total {
                    return Err(malformed("range ends past the total length"));
                }
            }
        }
        Ok(ContentRange { first, last })
    }

    /// Number of bytes in the span (both ends inclusive).
    pub fn len(&self) -> u64 {
        self.last.saturating_sub(self.first).saturating_add(1)
    }
}

/// A non-empty run of ASCII digits as u64; `u64::from_str` alone would also accept `+5`.
fn parse_number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Range units are case-insensitive (RFC 9110 §14.1).
fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_the_three_range_forms() {
        assert_eq!(
            ByteRange::parse("bytes=0-499"),
            Ok(ByteRange::Bounded {
                first: 0,
                last: 499
            })
        );
        assert_eq!(ByteRange::parse("bytes=9500-"), Ok(ByteRange::From(9500)));
        assert_eq!(ByteRange::parse("bytes=-500"), Ok(ByteRange::Suffix(500)));
        assert_eq!(
            ByteRange::parse(" Bytes= 5 - 5 "),
            Ok(ByteRange::Bounded { first: 5, last: 5 })
        );
    }

    #[test]
    fn rejects_malformed_ranges() {
        for header in [
            "",
            "bytes=",
            "bytes=-",
            "bytes=0-1,5-6",
            "bytes=5-4",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=1-+2",
            "bytes=--1",
            "items=0-1",
            "0-1",
            "bytes 0-1",
            "bytes=99999999999999999999-",
            "bytes=0x10-",
        ] {
            assert!(
                matches!(ByteRange::parse(header), Err(RangeError::Malformed { .. })),
                "{header:?} should be malformed"
            );
        }
    }

    #[test]
    fn resolves_per_rfc_9110() {
        let bounded = |first, last| ByteRange::Bounded { first, last };
        assert_eq!(bounded(0, 499).resolve(10_000), Ok(0..500));
        assert_eq!(bounded(9_000, 20_000).resolve(10_000), Ok(9_000..10_000));
        assert_eq!(bounded(0, u64::MAX).resolve(10), Ok(0..10));
        assert_eq!(bounded(9, 9).resolve(10), Ok(9..10));
        assert_eq!(ByteRange::From(9_500).resolve(10_000), Ok(9_500..10_000));
        assert_eq!(ByteRange::Suffix(500).resolve(10_000), Ok(9_500..10_000));
        assert_eq!(ByteRange::Suffix(20_000).resolve(10_000), Ok(0..10_000));
        let unsatisfiable = Err(RangeError::Unsatisfiable { len: 10 });
        assert_eq!(bounded(10, 20).resolve(10), unsatisfiable);
        assert_eq!(ByteRange::From(10).resolve(10), unsatisfiable);
        assert_eq!(ByteRange::Suffix(0).resolve(10), unsatisfiable);
        for range in [bounded(0, 0), ByteRange::From(0), ByteRange::Suffix(5)] {
            assert_eq!(range.resolve(0), Err(RangeError::Unsatisfiable { len: 0 }));
        }
    }

    #[test]
    fn parses_content_range_styles() {
        let expected = Ok(ContentRange {
            first: 0,
            last: 1023,
        });
        for header in [
            "0-1023",
            "bytes 0-1023/*",
            "bytes 0-1023/4096",
            "bytes=0-1023",
            " 0-1023 ",
        ] {
            assert_eq!(ContentRange::parse(header), expected, "{header:?}");
        }
        assert_eq!(
            ContentRange::parse("bytes 0-1023/4096").map(|range| range.len()),
            Ok(1024)
        );
        assert_eq!(ContentRange { first: 7, last: 7 }.len(), 1);
    }

    #[test]
    fn rejects_malformed_content_ranges() {
        for header in [
            "",
            "-",
            "5-4",
            "0-",
            "-5",
            "bytes 0-1023",
            "bytes 0-1023/1023",
            "bytes 0-1023/x",
            "bytes 0-1/2,3-4",
            "bytes=0-1/*",
            "0-18446744073709551615",
            "a-b",
            "+0-1",
        ] {
            assert!(
                matches!(
                    ContentRange::parse(header),
                    Err(RangeError::Malformed { .. })
                ),
                "{header:?} should be malformed"
            );
        }
    }

    proptest! {
        #[test]
        fn valid_ranges_roundtrip(first in any::<u64>(), span in any::<u64>(), n in any::<u64>()) {
            let last = first.saturating_add(span);
            prop_assert_eq!(
                ByteRange::parse(&format!("bytes={first}-{last}")),
                Ok(ByteRange::Bounded { first, last })
            );
            prop_assert_eq!(ByteRange::parse(&format!("bytes={first}-")), Ok(ByteRange::From(first)));
            prop_assert_eq!(ByteRange::parse(&format!("bytes=-{n}")), Ok(ByteRange::Suffix(n)));
        }

        #[test]
        fn displayed_ranges_parse_back(header in "bytes=[0-9]{0,4}-[0-9]{0,4}") {
            if let Ok(range) = ByteRange::parse(&header) {
                prop_assert_eq!(ByteRange::parse(&range.to_string()), Ok(range));
            }
        }

        #[test]
        fn resolved_ranges_lie_inside_the_blob(header in "bytes=[0-9]{0,4}-[0-9]{0,4}", len in 0u64..20_000) {
            if let Ok(range) = ByteRange::parse(&header) {
                match range.resolve(len) {
                    Ok(resolved) => {
                        prop_assert!(resolved.start < resolved.end);
                        prop_assert!(resolved.end <= len);
                    }
                    Err(error) => prop_assert_eq!(error, RangeError::Unsatisfiable { len }),
                }
            }
        }

        #[test]
        fn valid_content_ranges_roundtrip(first in 0u64..u64::MAX / 2, span in 0u64..u64::MAX / 2) {
            let last = first + span;
            let expected = ContentRange { first, last };
            prop_assert_eq!(ContentRange::parse(&format!("{first}-{last}")), Ok(expected));
            prop_assert_eq!(ContentRange::parse(&format!("bytes {first}-{last}/*")), Ok(expected));
            prop_assert_eq!(ContentRange::parse(&format!("bytes {first}-{last}/{}", last + 1)), Ok(expected));
            prop_assert_eq!(ContentRange::parse(&format!("bytes={first}-{last}")), Ok(expected));
            prop_assert_eq!(expected.len(), span + 1);
        }

        #[test]
        fn parsers_never_panic(header in "\\PC{0,64}") {
            if let Ok(range) = ByteRange::parse(&header) {
                let _ = range.resolve(1000);
            }
            if let Ok(range) = ContentRange::parse(&header) {
                prop_assert!(range.first <= range.last);
            }
        }
    }
}
