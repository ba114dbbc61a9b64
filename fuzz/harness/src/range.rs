//! `Range` of blob GETs (`ByteRange`, resolved against a blob length) and `Content-Range` of
//! upload PATCHes (`ContentRange`).

use shoal_core::{ByteRange, ContentRange, RangeError};

/// The first eight bytes (when there are eight) are the blob length to resolve against.
pub fn run(data: &[u8]) {
    let (len, header) = match data.split_first_chunk::<8>() {
        Some((len, rest)) => (u64::from_le_bytes(*len), rest),
        None => (1000, data),
    };
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    if let Ok(range) = ByteRange::parse(header) {
        // The proxy forwards a client's range to the origin as it displays.
        assert_eq!(ByteRange::parse(&range.to_string()), Ok(range));
        for len in [len, 0, 1, u64::MAX] {
            match range.resolve(len) {
                Ok(resolved) => assert!(resolved.start < resolved.end && resolved.end <= len),
                Err(error) => assert_eq!(error, RangeError::Unsatisfiable { len }),
            }
        }
    }
    if let Ok(range) = ContentRange::parse(header) {
        assert!(range.first <= range.last && range.last < u64::MAX);
        assert_eq!(range.len(), range.last - range.first + 1);
    }
}
