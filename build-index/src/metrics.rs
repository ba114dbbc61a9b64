//! The build-index's own metrics: tags accepted, tags refused by Registry V2 error code, and
//! cross-cluster replication progress.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use shoal_core::ErrorCode;

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

/// Cross-cluster replication progress.
#[derive(Clone, Debug)]
pub struct ReplicationMetrics {
    pub pending: Gauge,
    pub replicated: Counter,
    pub failures: Counter,
}

impl ReplicationMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            pending: Gauge::default(),
            replicated: Counter::default(),
            failures: Counter::default(),
        };
        registry.register(
            "build_index_replication_pending",
            "Replication jobs (remote, repository, tag) waiting in the queue",
            metrics.pending.clone(),
        );
        registry.register(
            "build_index_replication_replicated",
            "Tags copied to a remote cluster",
            metrics.replicated.clone(),
        );
        registry.register(
            "build_index_replication_failures",
            "Replication attempts that failed and will be retried",
            metrics.failures.clone(),
        );
        metrics
    }
}
