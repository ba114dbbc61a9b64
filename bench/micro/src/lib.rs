//! Fixtures shared by Shoal's microbenchmarks (`benches/`, run by `bench/micro.sh`): deterministic
//! incompressible bytes, and large blobs streamed as repeats of one chunk so that a 256 MiB blob
//! never sits whole in memory, in the benchmark or in the code it measures.

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;
use shoal_core::{Digest, Digester};

/// One mebibyte.
pub const MIB: usize = 1 << 20;

/// `len` pseudo-random bytes derived from `seed`: incompressible, and identical on every run.
pub fn pattern(len: usize, seed: u64) -> Bytes {
    // xorshift64*: fast and good enough to defeat compression; not for anything cryptographic.
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// A blob made of `count` copies of one chunk, streamed without copying the chunk.
#[derive(Debug, Clone)]
pub struct RepeatedBlob {
    chunk: Bytes,
    count: usize,
}

impl RepeatedBlob {
    /// A blob of `count` chunks of `chunk_len` pseudo-random bytes from `seed`.
    pub fn new(chunk_len: usize, count: usize, seed: u64) -> RepeatedBlob {
        RepeatedBlob {
            chunk: pattern(chunk_len, seed),
            count,
        }
    }

    /// The blob's length in bytes.
    pub fn len(&self) -> u64 {
        self.chunk.len() as u64 * self.count as u64
    }

    /// Whether the blob has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The chunk the blob repeats.
    pub fn chunk(&self) -> &Bytes {
        &self.chunk
    }

    /// The blob's sha256, computed by streaming it.
    pub fn digest(&self) -> Digest {
        let mut digester = Digester::new();
        for _ in 0..self.count {
            digester.update(&self.chunk);
        }
        digester.finish()
    }

    /// The blob as a stream of its chunks: a `shoal_storage::ByteStream`, the shape in which
    /// the store receives uploads (spelled out so the hashing bench builds without the store).
    pub fn stream(&self) -> Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>> {
        let chunk = self.chunk.clone();
        Box::pin(futures::stream::iter(
            std::iter::repeat_n(chunk, self.count).map(Ok),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    #[test]
    fn pattern_is_deterministic_and_seed_dependent() {
        assert_eq!(pattern(1000, 7), pattern(1000, 7));
        assert_ne!(pattern(1000, 7), pattern(1000, 8));
        assert_eq!(pattern(13, 7).len(), 13);
    }

    #[test]
    fn repeated_blob_streams_its_length_and_digest() {
        let blob = RepeatedBlob::new(1000, 5, 3);
        let chunks: Vec<Bytes> = futures::executor::block_on(blob.stream().try_collect())
            .expect("an in-memory stream cannot fail");
        let whole: Vec<u8> = chunks.concat();
        assert_eq!(whole.len() as u64, blob.len());
        assert_eq!(Digest::of(&whole), blob.digest());
        assert_eq!(&whole[..1000], &whole[4000..]);
    }
}
