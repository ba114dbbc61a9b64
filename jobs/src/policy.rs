//! The one retry policy: delays doubling from `min_delay` to `max_delay`, each with random
//! jitter (so jobs that failed together, say during a backend outage, do not retry in lockstep),
//! and an optional cap on attempts. The delays come from `backon`. Queued jobs retry under it,
//! and so does work a caller waits on ([`RetryPolicy::retry`]).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder, Retryable};

/// When to retry a failed job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The base delay before the first retry; doubles per failure.
    pub min_delay: Duration,
    /// No delay is longer than this.
    pub max_delay: Duration,
    /// Attempts in all (the first included) before the job fails for good; `None` retries forever.
    pub max_attempts: Option<u32>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            max_attempts: None,
        }
    }
}

impl RetryPolicy {
    /// The delays of one job's retries, one per failure.
    pub(crate) fn backoff(&self) -> Backoff {
        let mut builder = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_jitter();
        builder = match self.max_attempts {
            Some(attempts) => builder.with_max_times(attempts.saturating_sub(1) as usize),
            None => builder.without_max_times(),
        };
        Backoff {
            delays: builder.build(),
            max_delay: self.max_delay,
        }
    }
}

impl RetryPolicy {
    /// Runs `attempt` until it succeeds, fails with an error `retryable` refuses, or the attempts
    /// are used up, waiting the policy's delays in between: for work a caller waits on (a replica
    /// push before a commit is acknowledged) rather than leaves on a queue.
    pub async fn retry<T, E, Fut>(
        &self,
        attempt: impl FnMut() -> Fut,
        retryable: impl FnMut(&E) -> bool,
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        attempt
            .retry(Delays(*self))
            .sleep(tokio::time::sleep)
            .when(retryable)
            .await
    }
}

/// The policy as `backon` takes it.
struct Delays(RetryPolicy);

impl BackoffBuilder for Delays {
    type Backoff = Backoff;

    fn build(self) -> Backoff {
        self.0.backoff()
    }
}

/// The retry delays of one job; `None` once its attempts are used up.
#[derive(Debug)]
pub(crate) struct Backoff {
    delays: ExponentialBackoff,
    max_delay: Duration,
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // backon adds up to 100% jitter on top of the doubled delay; the cap holds regardless.
        self.delays.next().map(|delay| delay.min(self.max_delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_within_the_policy_bounds() {
        let policy = RetryPolicy {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            max_attempts: None,
        };
        let mut firsts = Vec::new();
        for _ in 0..50 {
            let delays: Vec<Duration> = policy.backoff().take(12).collect();
            for (failure, delay) in delays.iter().enumerate() {
                // The doubling base of this failure; jitter adds at most as much again.
                let base = (policy.min_delay * 2u32.pow(failure as u32)).min(policy.max_delay);
                assert!(*delay >= base, "retry {failure}: {delay:?} < {base:?}");
                assert!(
                    *delay <= (base * 2).min(policy.max_delay),
                    "retry {failure}: {delay:?}"
                );
            }
            assert_eq!(delays[11], policy.max_delay);
            firsts.push(delays[0]);
        }
        firsts.dedup();
        assert!(
            firsts.len() > 1,
            "no jitter: every first delay was {:?}",
            firsts[0]
        );
    }

    #[tokio::test]
    async fn retry_stops_at_success_a_final_error_or_the_last_attempt() {
        let policy = RetryPolicy {
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            max_attempts: Some(3),
        };
        let attempts = std::cell::Cell::new(0);
        let count = || {
            attempts.set(attempts.get() + 1);
            attempts.get()
        };
        let flaky = policy.retry(
            || async { if count() < 2 { Err("down") } else { Ok(()) } },
            |_| true,
        );
        assert_eq!(flaky.await, Ok(()));
        assert_eq!(attempts.replace(0), 2);
        let down = policy.retry(|| async { Err::<(), _>(count()) }, |_| true);
        assert_eq!(down.await, Err(3));
        assert_eq!(attempts.replace(0), 3);
        let refused = policy.retry(|| async { Err::<(), _>(count()) }, |_| false);
        assert_eq!(refused.await, Err(1));
    }

    #[test]
    fn attempts_run_out_after_max_attempts() {
        let policy = RetryPolicy {
            max_attempts: Some(3),
            ..RetryPolicy::default()
        };
        // Three attempts: two retries between them.
        assert_eq!(policy.backoff().count(), 2);
    }
}
