//! The build-index's own metrics: tags accepted, tags refused by Registry V2 error code, and
//! cross-cluster replication progress.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use shoal_core::ErrorCode;

use crate::replicate::Replicator;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

#[derive(Clone, Debug)]
pub struct TagMetrics {
    put: Counter,
    rejected: Family<CodeLabels, Counter>,
}

impl TagMetrics {
    /// Creates the metrics and registers them (names gain the registry's `shoal_` prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            put: Counter::default(),
            rejected: Family::default(),
        };
        registry.register(
            "build_index_tags_put",
            "Tags written after their manifest and blobs were found on the origins",
            metrics.put.clone(),
        );
        registry.register(
            "build_index_tag_rejected",
            "Tag writes refused, by Registry V2 error code",
            metrics.rejected.clone(),
        );
        metrics
    }

    pub fn tag_put(&self) {
        self.put.inc();
    }

    pub fn tag_rejected(&self, code: ErrorCode) {
        self.rejected
            .get_or_create(&CodeLabels {
                code: code.as_str(),
            })
            .inc();
    }
}

/// Cross-cluster replication progress, read from the replication queue on each scrape.
#[derive(Debug)]
pub struct ReplicationCollector(pub Arc<Replicator>);

impl Collector for ReplicationCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.stats();
        let pending =
            ConstGauge::new(i64::try_from(stats.queued + stats.running).unwrap_or(i64::MAX));
        pending.encode(encoder.encode_descriptor(
            "build_index_replication_pending",
            "Replication jobs (remote, repository, tag) waiting in the queue",
            None,
            pending.metric_type(),
        )?)?;
        let replicated = ConstCounter::new(stats.succeeded);
        replicated.encode(encoder.encode_descriptor(
            "build_index_replication_replicated",
            "Tags copied to a remote cluster",
            None,
            replicated.metric_type(),
        )?)?;
        // Replication never gives up: every failed attempt is retried.
        let failures = ConstCounter::new(stats.retries + stats.failed);
        failures.encode(encoder.encode_descriptor(
            "build_index_replication_failures",
            "Replication attempts that failed and will be retried",
            None,
            failures.metric_type(),
        )?)?;
        Ok(())
    }
}
