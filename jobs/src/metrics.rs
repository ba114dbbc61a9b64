//! A queue's [`Stats`] on a metrics page, read at scrape time so they are never stale. Every
//! queue is reported under one naming pattern: `<prefix>_pending` (a gauge: jobs queued or
//! running), `<prefix>_<done>` (a counter: jobs that succeeded) and `<prefix>_failures` (a
//! counter: failed attempts, each retried, plus jobs that failed for good).

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::queue::Stats;

/// The names and help texts of one queue's metrics (registries add their own prefix, `shoal_`).
#[derive(Debug, Clone, Copy)]
pub struct StatsNames {
    /// `<prefix>_pending`, `<prefix>_<done>`, `<prefix>_failures`.
    pub prefix: &'static str,
    /// What a pending job is.
    pub pending_help: &'static str,
    /// The counter of succeeded jobs, named for what they did (`replicated`, `written`).
    pub done: &'static str,
    pub done_help: &'static str,
    pub failures_help: &'static str,
}

/// Reports the [`Stats`] that `stats` returns on each scrape, under `names`.
pub struct StatsCollector<F> {
    names: StatsNames,
    stats: F,
}

impl<F: Fn() -> Stats + Send + Sync + 'static> StatsCollector<F> {
    /// `stats` is called on every scrape (usually `move || queue.stats()`).
    pub fn new(names: StatsNames, stats: F) -> Box<Self> {
        Box::new(StatsCollector { names, stats })
    }
}

impl<F> fmt::Debug for StatsCollector<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatsCollector")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl<F: Fn() -> Stats + Send + Sync + 'static> Collector for StatsCollector<F> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let StatsNames {
            prefix,
            pending_help,
            done,
            done_help,
            failures_help,
        } = self.names;
        let stats = (self.stats)();
        let pending =
            ConstGauge::new(i64::try_from(stats.queued + stats.running).unwrap_or(i64::MAX));
        pending.encode(encoder.encode_descriptor(
            &format!("{prefix}_pending"),
            pending_help,
            None,
            pending.metric_type(),
        )?)?;
        let succeeded = ConstCounter::new(stats.succeeded);
        succeeded.encode(encoder.encode_descriptor(
            &format!("{prefix}_{done}"),
            done_help,
            None,
            succeeded.metric_type(),
        )?)?;
        let failures = ConstCounter::new(stats.retries + stats.failed);
        failures.encode(encoder.encode_descriptor(
            &format!("{prefix}_failures"),
            failures_help,
            None,
            failures.metric_type(),
        )?)?;
        Ok(())
    }
}
