//! The tracker's own metrics: announces, swarm sizes, records held and refused, announces over
//! a rate limit, and metainfo requests by outcome.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::limits::LimitedBy;
use crate::peers::Admission;

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
    /// Refused: its source address is over its request rate.
    Limited,
}

impl MetainfoResult {
    fn as_str(self) -> &'static str {
        match self {
            MetainfoResult::Hit => "hit",
            MetainfoResult::Fetched => "fetched",
            MetainfoResult::NotFound => "not_found",
            MetainfoResult::Unavailable => "unavailable",
            MetainfoResult::Invalid => "invalid",
            MetainfoResult::Limited => "limited",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ByLabels {
    by: &'static str,
}

#[derive(Clone, Debug)]
pub struct TrackerMetrics {
    announces: Counter,
    swarm_peers: Histogram,
    records: Gauge,
    records_refused: Family<ReasonLabels, Counter>,
    announces_limited: Family<ByLabels, Counter>,
    metainfo_requests: Family<ResultLabels, Counter>,
}

impl TrackerMetrics {
    /// Creates the metrics and registers them (names gain the registry's `shoal_` prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = TrackerMetrics {
            announces: Counter::default(),
            swarm_peers: Histogram::new(SWARM_BUCKETS),
            records: Gauge::default(),
            records_refused: Family::default(),
            announces_limited: Family::default(),
            metainfo_requests: Family::default(),
        };
        registry.register(
            "tracker_announces",
            "Announces answered (recorded or not)",
            metrics.announces.clone(),
        );
        registry.register(
            "tracker_records",
            "Peer records held over every swarm (one peer in one blob's swarm), as of the last announce",
            metrics.records.clone(),
        );
        registry.register(
            "tracker_records_refused",
            "Announces answered without recording the peer, by reason (swarm_full, store_full)",
            metrics.records_refused.clone(),
        );
        registry.register(
            "tracker_announces_limited",
            "Announces refused with RESOURCE_EXHAUSTED, by the limit hit (peer, address)",
            metrics.announces_limited.clone(),
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

    /// An announce answered with a swarm of `swarm_size` live members, leaving `records` in the
    /// store.
    pub fn announced(&self, swarm_size: usize, admission: Admission, records: usize) {
        self.announces.inc();
        self.swarm_peers.observe(swarm_size as f64);
        self.records.set(i64::try_from(records).unwrap_or(i64::MAX));
        if admission != Admission::Recorded {
            self.records_refused
                .get_or_create(&ReasonLabels {
                    reason: admission.as_str(),
                })
                .inc();
        }
    }

    pub fn limited(&self, by: LimitedBy) {
        self.announces_limited
            .get_or_create(&ByLabels { by: by.as_str() })
            .inc();
    }

    pub fn metainfo(&self, result: MetainfoResult) {
        self.metainfo_requests
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .inc();
    }
}
