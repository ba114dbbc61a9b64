//! The agent's own metrics (HTTP ones come from shoal-service, piece exchange ones from
//! shoal-p2p): blob and preheat requests by outcome and the disk cache's size and evictions.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use shoal_storage::cache::CacheMetrics;

/// How a blob request (GET or HEAD) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobResult {
    /// Answered from the local store.
    Hit,
    /// Not in the local store: downloaded (GET) or looked up at the tracker (HEAD).
    Miss,
    /// Nobody has it: 404.
    NotFound,
    /// The engine or the store failed.
    Error,
}

impl BlobResult {
    fn as_str(self) -> &'static str {
        match self {
            BlobResult::Hit => "hit",
            BlobResult::Miss => "miss",
            BlobResult::NotFound => "not_found",
            BlobResult::Error => "error",
        }
    }
}

/// How a `POST /preheat` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PreheatResult {
    /// Every blob of the image is in the store.
    Ok,
    /// The body, repository or digest did not parse; nothing was fetched.
    BadRequest,
    /// The manifest exists nowhere (or is no manifest).
    NotFound,
    /// Fetching a blob, the engine or the store failed.
    Failed,
    /// Refused: the secret was missing or wrong, or none is configured.
    Unauthorized,
}

impl PreheatResult {
    fn as_str(self) -> &'static str {
        match self {
            PreheatResult::Ok => "ok",
            PreheatResult::BadRequest => "bad_request",
            PreheatResult::NotFound => "not_found",
            PreheatResult::Failed => "failed",
            PreheatResult::Unauthorized => "unauthorized",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Counters updated by the handlers and the cache.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    blob_requests: Family<ResultLabels, Counter>,
    preheat_requests: Family<ResultLabels, Counter>,
    blob_first_byte: Histogram,
    pub cache: CacheMetrics,
}

/// Time to a blob GET's first body byte, from 5 ms (a local hit) doubling to about 80 s (a miss
/// whose metainfo the origin first pulls through from the backend).
fn first_byte_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.005, 2.0, 15)
}

impl AgentMetrics {
    /// Registers everything as `shoal_agent_*` into the component's registry.
    pub fn register(registry: &mut Registry) -> AgentMetrics {
        let metrics = AgentMetrics {
            blob_requests: Family::default(),
            preheat_requests: Family::default(),
            blob_first_byte: Histogram::new(first_byte_buckets()),
            cache: CacheMetrics::default(),
        };
        let agent = registry.sub_registry_with_prefix("agent");
        agent.register(
            "blob_requests",
            "Blob GET and HEAD requests, by result (hit, miss, not_found, error)",
            metrics.blob_requests.clone(),
        );
        agent.register(
            "preheat_requests",
            "POST /preheat requests, by result (ok, bad_request, not_found, failed, unauthorized)",
            metrics.preheat_requests.clone(),
        );
        agent.register(
            "blob_first_byte_seconds",
            "Time from a blob GET's arrival to its first body byte, hits and misses alike",
            metrics.blob_first_byte.clone(),
        );
        metrics.cache.register(agent);
        metrics
    }

    pub fn blob_first_byte(&self, elapsed: std::time::Duration) {
        self.blob_first_byte.observe(elapsed.as_secs_f64());
    }

    pub fn blob_request(&self, result: BlobResult) {
        self.blob_requests
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .inc();
    }

    pub fn preheat_request(&self, result: PreheatResult) {
        self.preheat_requests
            .get_or_create(&ResultLabels {
                result: result.as_str(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use shoal_service::MetricsBuilder;

    use super::*;

    #[test]
    fn metrics_have_the_documented_names() {
        let mut builder = MetricsBuilder::new("agent");
        let metrics = AgentMetrics::register(builder.registry());
        metrics.blob_request(BlobResult::Hit);
        metrics.blob_request(BlobResult::NotFound);
        metrics.blob_request(BlobResult::NotFound);
        metrics.preheat_request(PreheatResult::BadRequest);
        metrics.cache.bytes.set(7);
        metrics.cache.evictions.inc();
        metrics.cache.evicted_bytes.inc_by(9);
        let text = builder.build().encode();
        for line in [
            "shoal_agent_blob_requests_total{result=\"hit\"} 1\n",
            "shoal_agent_blob_requests_total{result=\"not_found\"} 2\n",
            "shoal_agent_preheat_requests_total{result=\"bad_request\"} 1\n",
            "shoal_agent_cache_bytes 7\n",
            "shoal_agent_cache_evictions_total 1\n",
            "shoal_agent_cache_evicted_bytes_total 9\n",
            "shoal_agent_blob_first_byte_seconds_count 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
