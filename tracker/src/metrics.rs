//! The tracker's own metrics: announces, swarm sizes, and metainfo requests by outcome.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Swarm sizes are observed per announce; powers of two up to 4096 cover a single node up to a
/// whole fleet pulling one layer, with a handful of buckets (bounded cardinality, unlike a
/// gauge per digest).
const SWARM_BUCKETS: [f64; 13] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// How a metainfo request ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum MetainfoResult {
    /// Served from the cache.
    Hit,
    /// Fetched from an origin (or joined a fetch already under way).
    Fetched,
    /// No owning origin has the blob.
    NotFound,
    /// No owning origin answered.
    Unavailable,
    /// The request was malformed.
    Invalid,
}

impl MetainfoResult {
    fn as_str(self) -> &'static str {
        match self {
            MetainfoResult::Hit => "hit",
            MetainfoResult::Fetched => "fetched",
            MetainfoResult::NotFound => "not_found",
            MetainfoResult::Unavailable => "unavailable",
            MetainfoResult::Invalid => "invalid",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug)]
pub struct TrackerMetrics {
    announces: Counter,
    swarm_peers: Histogram,
    metainfo_requests: Family<ResultLabels, Counter>,
}

impl TrackerMetrics {
    /// Creates the metrics and registers them (names gain the registry's `shoal_` prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = TrackerMetrics {
            announces: Counter::default(),
            swarm_peers: Histogram::new(SWARM_BUCKETS),
            metainfo_requests: Family::default(),
        };
        registry.register(
            "tracker_announces",
            "Announces recorded",
            metrics.announces.clone(),
        );
        registry.register(
            "tracker_swarm_peers",
            "Live peers in the announced blob's swarm (caller included), observed per announce",
            metrics.swarm_peers.clone(),
        );
        registry.register(
            "tracker_metainfo_requests",
            "Metainfo requests, by result (hit, fetched, not_found, unavailable, invalid)",
            metrics.metainfo_requests.clone(),
        );
        metrics
    }

    pub fn announced(&self, swarm_size: usize) {
        self.announces.inc();
        self.swarm_peers.observe(swarm_size as f64);
    }

    pub fn metainfo(&self, result: MetainfoResult) {
        self.metainfo_requests
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .inc();
    }
}
