//! Deterministic blob content of any size that is never held whole in memory: byte `i` is a
//! function of `i`, so any range can be produced, streamed as a request body, or hashed.

use bytes::Bytes;
use futures::Stream;
use shoal_core::{Digest, Digester};

/// Ranges are produced in pieces of this size.
const PIECE: u64 = 256 * 1024;

/// A virtual blob of `len` bytes derived from `seed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pattern {
    pub seed: u64,
    pub len: u64,
}

impl Pattern {
    pub fn new(seed: u64, len: u64) -> Pattern {
        Pattern { seed, len }
    }

    /// Bytes `start..end` (clamped to the blob).
    pub fn range(&self, start: u64, end: u64) -> Vec<u8> {
        let end = end.min(self.len);
        let mut out = Vec::with_capacity(usize::try_from(end.saturating_sub(start)).unwrap_or(0));
        let mut i = start;
        while i < end {
            let word = self.word(i / 8).to_le_bytes();
            let from = (i % 8) as usize;
            let take = usize::try_from(end - i).map_or(8 - from, |left| left.min(8 - from));
            out.extend_from_slice(&word[from..from + take]);
            i += take as u64;
        }
        out
    }

    /// The whole blob's digest, computed piece by piece.
    pub fn digest(&self) -> Digest {
        let mut digester = Digester::new();
        let mut offset = 0;
        while offset < self.len {
            let end = (offset + PIECE).min(self.len);
            digester.update(&self.range(offset, end));
            offset = end;
        }
        digester.finish()
    }

    /// Bytes `start..end` as a stream of pieces, for a streamed request body.
    pub fn stream(
        self,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
        let end = end.min(self.len);
        let starts = (start..end).step_by(usize::try_from(PIECE).unwrap_or(usize::MAX));
        futures::stream::iter(
            starts.map(move |s| Ok(Bytes::from(self.range(s, (s + PIECE).min(end))))),
        )
    }

    /// Bytes `start..end` as a reqwest body with unknown length (sent chunked).
    pub fn body(self, start: u64, end: u64) -> reqwest::Body {
        reqwest::Body::wrap_stream(self.stream(start, end))
    }

    /// A splitmix64-style mix of the seed and the word index, so every 8-byte word of every
    /// blob differs and nothing repeats.
    fn word(&self, index: u64) -> u64 {
        let mut z = index
            .wrapping_add(self.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn ranges_concatenate_to_the_whole_blob() {
        let pattern = Pattern::new(3, 1000);
        let whole = pattern.range(0, 1000);
        assert_eq!(whole.len(), 1000);
        let mut joined = pattern.range(0, 3);
        joined.extend(pattern.range(3, 517));
        joined.extend(pattern.range(517, 2000));
        assert_eq!(joined, whole);
        assert_eq!(pattern.digest(), Digest::of(&whole));
        assert_ne!(Pattern::new(4, 1000).range(0, 1000), whole);
    }

    #[tokio::test]
    async fn the_stream_yields_exactly_the_range() {
        let pattern = Pattern::new(9, 3 * PIECE + 5);
        let streamed: Vec<u8> = pattern
            .stream(7, 2 * PIECE + 11)
            .map(|piece| piece.expect("piece").to_vec())
            .concat()
            .await;
        assert_eq!(streamed, pattern.range(7, 2 * PIECE + 11));
    }
}
