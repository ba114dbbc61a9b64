//! The build-index's own metrics: tags accepted, tags refused by Registry V2 error code, tags
//! and records removed by retention, and the
//! progress of its two queues (pending tags, cross-cluster replication) under `shoal_jobs`'
//! naming pattern.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use shoal_core::ErrorCode;
use shoal_jobs::StatsNames;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: &'static str,
}

#[derive(Clone, Debug)]
pub struct TagMetrics {
    put: Counter,
    rejected: Family<CodeLabels, Counter>,
    /// Tags and manifest records removed by retention (`retention`).
    retention_tags: Counter,
    retention_records: Counter,
}

impl TagMetrics {
    /// Creates the metrics and registers them (names gain the registry's `shoal_` prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            put: Counter::default(),
            rejected: Family::default(),
            retention_tags: Counter::default(),
            retention_records: Counter::default(),
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
        registry.register(
            "build_index_retention_tags_removed",
            "Tags removed by retention rules",
            metrics.retention_tags.clone(),
        );
        registry.register(
            "build_index_retention_records_removed",
            "Manifest records removed by retention (delete_untagged) once their last tag went",
            metrics.retention_records.clone(),
        );
        metrics
    }

    pub fn tag_put(&self) {
        self.put.inc();
    }

    pub fn retention_tag_removed(&self) {
        self.retention_tags.inc();
    }

    pub fn retention_record_removed(&self) {
        self.retention_records.inc();
    }

    pub fn tag_rejected(&self, code: ErrorCode) {
        self.rejected
            .get_or_create(&CodeLabels {
                code: code.as_str(),
            })
            .inc();
    }
}

/// Cross-cluster replication progress (`replicate`), read from its queue on each scrape.
pub const REPLICATION: StatsNames = StatsNames {
    prefix: "build_index_replication",
    pending_help: "Replication jobs (remote, repository, tag) waiting in the queue",
    done: "replicated",
    done_help: "Tags copied to a remote cluster",
    // Replication never gives up: every failed attempt is retried.
    failures_help: "Replication attempts that failed and will be retried",
};

/// Tags accepted while their backend was unreachable (`tags`, `pending_dir`), read from their
/// queue on each scrape.
pub const TAG_WRITEBACK: StatsNames = StatsNames {
    prefix: "build_index_tag_writeback",
    pending_help: "Tags kept in pending_dir until their backend has them",
    done: "written",
    done_help: "Pending tags written back to their backend",
    // Pending tags are never given up: every failed attempt is retried.
    failures_help: "Pending-tag write-backs that failed and will be retried",
};
