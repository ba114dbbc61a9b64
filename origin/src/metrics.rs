//! The origin's own Prometheus metrics (the HTTP ones come from `shoal_service`). Write-back and
//! replication figures are read from their queues at scrape time, so they are never stale.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use shoal_backends::WriteBack;
use shoal_jobs::StatsNames;
use shoal_p2p::P2pMetrics;
use shoal_storage::BlobStore;
use shoal_storage::cache::CacheMetrics;

/// Replica pushes to the other owners of committed blobs (`replicate`), read from their queue on
/// each scrape.
pub(crate) const REPLICATION: StatsNames = StatsNames {
    prefix: "origin_replication",
    pending_help: "Replica pushes (blob, owner) not yet confirmed, in flight or queued for retries",
    done: "replicated",
    done_help: "Replica pushes completed from the queue (after the push a commit waited on failed)",
    // A push is retried until it succeeds or its target is no longer an owner.
    failures_help: "Queued replica push attempts that failed and will be retried",
};

/// Where bytes that failed digest verification came from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum MismatchSource {
    /// A client's upload or monolithic PUT.
    Upload,
    /// The backend, during a pull-through.
    Backend,
}

impl MismatchSource {
    fn label(self) -> &'static str {
        match self {
            MismatchSource::Upload => "upload",
            MismatchSource::Backend => "backend",
        }
    }
}

type SourceLabels = [(&'static str, &'static str); 1];

/// Counters updated by the request handlers. Clones share the same values.
#[derive(Debug, Clone, Default)]
pub(crate) struct OriginMetrics {
    bytes_served: Counter,
    uploads_committed: Counter,
    digest_mismatch: Family<SourceLabels, Counter>,
    pullthrough: Counter,
    uploads_refused: Family<ScopeLabels, Counter>,
}

type ScopeLabels = [(&'static str, &'static str); 1];

impl OriginMetrics {
    /// Registers the origin's metrics (names get the registry's `shoal_` prefix).
    pub(crate) fn register(
        registry: &mut Registry,
        writeback: Arc<WriteBack>,
        store: Arc<BlobStore>,
    ) -> Self {
        let metrics = OriginMetrics::default();
        registry.register(
            "origin_blob_bytes_served",
            "Blob bytes sent to clients",
            metrics.bytes_served.clone(),
        );
        registry.register(
            "origin_uploads_committed",
            "Blobs committed by uploads and monolithic PUTs",
            metrics.uploads_committed.clone(),
        );
        registry.register(
            "origin_digest_mismatch",
            "Blobs rejected because their bytes did not match the digest, by source",
            metrics.digest_mismatch.clone(),
        );
        registry.register(
            "origin_pullthrough",
            "Blobs pulled through from the backend and stored",
            metrics.pullthrough.clone(),
        );
        registry.register(
            "origin_upload_sessions_refused",
            "Upload sessions refused (429) by the bound they hit: `client` or `total`",
            metrics.uploads_refused.clone(),
        );
        registry.register_collector(Box::new(WriteBackCollector(writeback)));
        registry.register_collector(Box::new(UploadsCollector(store)));
        metrics
    }

    pub(crate) fn served(&self, bytes: usize) {
        self.bytes_served.inc_by(bytes as u64);
    }

    pub(crate) fn committed(&self) {
        self.uploads_committed.inc();
    }

    pub(crate) fn digest_mismatch(&self, source: MismatchSource) {
        self.digest_mismatch
            .get_or_create(&[("source", source.label())])
            .inc();
    }

    pub(crate) fn upload_refused(&self, scope: &'static str) {
        self.uploads_refused
            .get_or_create(&[("scope", scope)])
            .inc();
    }

    pub(crate) fn pulled_through(&self) {
        self.pullthrough.inc();
    }
}

/// Reports `shoal_origin_egress_bytes_total{reason}` on each scrape, from the counters that
/// already count each kind of egress: `seed` (pieces served to peers, the engine's
/// `shoal_p2p_bytes_served_total`), `pull_through` (blob bytes served over HTTP: the proxy
/// pulling through the origin for its clients, and agents' and other origins' fallbacks) and
/// `replication` (pushes to the other owners of committed blobs).
#[derive(Debug)]
struct EgressCollector {
    http: Counter,
    replicated: Counter,
    p2p: P2pMetrics,
}

impl Collector for EgressCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "origin_egress_bytes",
            "Bytes that left the origin, by reason: seed (pieces to peers), pull_through (blob GETs over HTTP), replication (pushes to the other owners)",
            None,
            MetricType::Counter,
        )?;
        for (reason, bytes) in [
            ("seed", self.p2p.bytes_served()),
            ("pull_through", self.http.get()),
            ("replication", self.replicated.get()),
        ] {
            ConstCounter::new(bytes).encode(family.encode_family(&[("reason", reason)])?)?;
        }
        Ok(())
    }
}

impl OriginMetrics {
    /// Registers `shoal_origin_egress_bytes_total{reason}` over the HTTP bytes served, `p2p`'s
    /// pieces served and the ring's `replicated` bytes (zero for an origin alone).
    pub(crate) fn register_egress(
        &self,
        registry: &mut Registry,
        p2p: &P2pMetrics,
        replicated: Counter,
    ) {
        registry.register_collector(Box::new(EgressCollector {
            http: self.bytes_served.clone(),
            replicated,
            p2p: p2p.clone(),
        }));
    }
}

/// Registers the store cache's metrics as `shoal_origin_cache_*` (with `cache.capacity` only).
pub(crate) fn register_cache(registry: &mut Registry) -> CacheMetrics {
    let metrics = CacheMetrics::default();
    let origin = registry.sub_registry_with_prefix("origin");
    metrics.register(origin);
    origin.register(
        "cache_pinned_bytes",
        "Bytes of blobs kept in the store because their write-back or replica pushes are pending, or the backend lacks them",
        metrics.pinned_bytes.clone(),
    );
    metrics
}

/// Reports the write-back queue's state on each scrape.
#[derive(Debug)]
struct WriteBackCollector(Arc<WriteBack>);

impl Collector for WriteBackCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.stats();
        let depth = ConstGauge::new(i64::try_from(stats.depth).unwrap_or(i64::MAX));
        depth.encode(encoder.encode_descriptor(
            "origin_writeback_queue_depth",
            "Blobs waiting to be written back to the backend",
            None,
            depth.metric_type(),
        )?)?;
        let age = ConstGauge::new(stats.oldest_age.map_or(0.0, |age| age.as_secs_f64()));
        age.encode(encoder.encode_descriptor(
            "origin_writeback_oldest_age_seconds",
            "How long the oldest pending write-back has waited (0 when none)",
            None,
            age.metric_type(),
        )?)?;
        let completed = ConstCounter::new(stats.completed);
        completed.encode(encoder.encode_descriptor(
            "origin_writeback_completed",
            "Blobs written back to the backend since start",
            None,
            completed.metric_type(),
        )?)?;
        let failures = ConstCounter::new(stats.failures);
        failures.encode(encoder.encode_descriptor(
            "origin_writeback_failures",
            "Failed write-back attempts since start (each is retried)",
            None,
            failures.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Reports the open upload sessions on each scrape.
#[derive(Debug)]
struct UploadsCollector(Arc<BlobStore>);

impl Collector for UploadsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let open = ConstGauge::new(i64::try_from(self.0.open_uploads()).unwrap_or(i64::MAX));
        open.encode(encoder.encode_descriptor(
            "origin_upload_sessions",
            "Upload sessions open (started, not yet committed, cancelled or expired)",
            None,
            open.metric_type(),
        )?)?;
        Ok(())
    }
}
