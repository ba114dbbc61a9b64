//! Bandwidth limits in bytes per second, shared by every transfer in one direction.
//!
//! A token bucket (governor's GCRA) whose cells are bytes and whose burst is one chunk. Callers
//! acquire per chunk, never more than the burst at once, so the rate holds for transfers of any
//! size: a 10 GiB piece stream pays for every chunk as it goes instead of being admitted whole.

use std::num::NonZeroU32;
use std::sync::Arc;

use bytesize::ByteSize;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A shared bytes-per-second limit (or none). Cheap to clone; clones share the budget.
#[derive(Clone, Debug)]
pub struct Limiter {
    bucket: Option<Arc<DefaultDirectRateLimiter>>,
    /// The burst, and the largest number of bytes acquired at once.
    chunk: NonZeroU32,
}

impl Limiter {
    /// A limit of `rate` bytes per second (None = unlimited) with a burst of `chunk` bytes.
    /// Rates and chunks beyond 4 GiB are clamped to 4 GiB (governor counts cells in `u32`).
    pub fn new(rate: Option<ByteSize>, chunk: ByteSize) -> Limiter {
        let chunk = clamp_nonzero(chunk.as_u64());
        let bucket = rate.map(|rate| {
            let quota = Quota::per_second(clamp_nonzero(rate.as_u64())).allow_burst(chunk);
            Arc::new(RateLimiter::direct(quota))
        });
        Limiter { bucket, chunk }
    }

    /// No limit; chunks of `chunk` bytes.
    pub fn unlimited(chunk: ByteSize) -> Limiter {
        Limiter::new(None, chunk)
    }

    /// The chunk size: the burst, and the size of the chunks piece bytes are sent in.
    pub fn chunk_size(&self) -> usize {
        self.chunk.get() as usize
    }

    /// Waits until `bytes` may pass, acquiring at most one chunk's worth at a time.
    pub async fn acquire(&self, bytes: usize) {
        let Some(bucket) = &self.bucket else {
            return;
        };
        let mut remaining = bytes;
        while remaining > 0 {
            let step = remaining.min(self.chunk.get() as usize);
            // `step` is in 1..=chunk, so it is non-zero and within the burst: governor's only
            // error (InsufficientCapacity) cannot happen.
            let cells = clamp_nonzero(step as u64);
            if bucket.until_n_ready(cells).await.is_err() {
                tracing::error!(cells, "rate limiter refused a request within its burst");
                return;
            }
            remaining -= step;
        }
    }
}

fn clamp_nonzero(value: u64) -> NonZeroU32 {
    let clamped = u32::try_from(value).unwrap_or(u32::MAX).max(1);
    NonZeroU32::new(clamped).unwrap_or(NonZeroU32::MIN)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[tokio::test]
    async fn a_transfer_larger_than_the_burst_takes_its_time() {
        // 1 MiB/s with a 64 KiB burst: 512 KiB must take at least ~(512-64)/1024 s.
        let limiter = Limiter::new(Some(ByteSize::mib(1)), ByteSize::kib(64));
        let start = Instant::now();
        limiter.acquire(512 * 1024).await;
        assert!(
            start.elapsed() >= Duration::from_millis(400),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn clones_share_one_budget() {
        let limiter = Limiter::new(Some(ByteSize::mib(1)), ByteSize::kib(64));
        let other = limiter.clone();
        let start = Instant::now();
        tokio::join!(limiter.acquire(256 * 1024), other.acquire(256 * 1024));
        assert!(
            start.elapsed() >= Duration::from_millis(400),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn unlimited_never_waits() {
        let limiter = Limiter::unlimited(ByteSize::kib(64));
        let start = Instant::now();
        limiter.acquire(1 << 30).await;
        assert!(start.elapsed() < Duration::from_millis(100));
        assert_eq!(limiter.chunk_size(), 64 * 1024);
    }
}
