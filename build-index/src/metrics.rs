//! The build-index's own metrics: tags accepted, and tags refused by Registry V2 error code.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
