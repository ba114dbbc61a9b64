//! `Bitfield::from_bytes`: a peer's handshake bitfield (and the stores' partial-blob files).

use shoal_core::Bitfield;

/// The first four bytes (little-endian) are the piece count, the rest the packed bits.
pub fn run(data: &[u8]) {
    let Some((len, bytes)) = data.split_first_chunk::<4>() else {
        return;
    };
    check(u32::from_le_bytes(*len), bytes);
}

/// Parses `bytes` as a bitfield of `len` pieces and checks its counts; shared with the peer
/// target's session handshake.
pub(crate) fn check(len: u32, bytes: &[u8]) -> Option<Bitfield> {
    let mut bitfield = Bitfield::from_bytes(len, bytes).ok()?;
    assert_eq!(bitfield.as_bytes(), bytes);
    assert_eq!(bitfield.len(), len);
    let ones = bitfield.ones().count();
    assert_eq!(ones, bitfield.count() as usize);
    assert_eq!(ones + bitfield.zeros().count(), len as usize);
    assert_eq!(bitfield.is_complete(), ones == len as usize);
    assert!(!bitfield.get(len) && !bitfield.set(len));
    let first_zero = bitfield.zeros().next();
    if let Some(zero) = first_zero {
        assert!(bitfield.set(zero) && bitfield.get(zero));
        assert_eq!(bitfield.count() as usize, ones + 1);
    }
    Some(bitfield)
}
