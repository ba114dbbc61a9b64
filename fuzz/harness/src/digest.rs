//! `Digest::parse`: every digest in a path, a query, a header, a manifest or an RPC.

use shoal_core::Digest;

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = Digest::parse(text);
    assert_eq!(parsed, text.parse::<Digest>(), "FromStr is Digest::parse");
    if let Ok(digest) = parsed {
        // Only the canonical form parses, so a digest re-displays as exactly its input.
        assert_eq!(digest.to_string(), text);
        assert_eq!(format!("{}:{}", digest.algorithm(), digest.hex()), text);
    }
}
