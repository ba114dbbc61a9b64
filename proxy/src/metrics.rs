//! The proxy's own metrics (the HTTP ones come from shoal-service) and the stream adapter that
//! counts blob bytes as they pass through.

use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use prometheus_client::metrics::counter::Counter;
use shoal_service::{Metrics, MetricsBuilder};

/// Counters updated by the Registry V2 handlers.
#[derive(Debug, Clone, Default)]
pub struct ProxyMetrics {
    /// Blob bytes received from clients and streamed to origins (uploads, monolithic pushes).
    pub blob_bytes_in: Counter,
    /// Blob bytes streamed from origins to clients.
    pub blob_bytes_out: Counter,
    /// Manifests accepted by `PUT /v2/<name>/manifests/<reference>`.
    pub manifests_put: Counter,
    /// Notification events that were not manifest pushes (pulls, blob pushes, deletes, …).
    pub preheat_events_ignored: Counter,
    /// Preheat jobs queued, from notifications and `POST /preheat`.
    pub preheat_jobs_queued: Counter,
    pub preheat_jobs_succeeded: Counter,
    /// Jobs that used up their attempts.
    pub preheat_jobs_failed: Counter,
    /// Blobs (manifests included) that every owning origin holds with metainfo, counted once
    /// per job.
    pub preheat_blobs: Counter,
    /// Unfinished jobs read back from `preheat.state_dir` at start and queued again.
    pub preheat_jobs_resumed: Counter,
    /// Agents that answered that they hold a preheated image.
    pub preheat_agents_succeeded: Counter,
    /// Agent preheat requests that failed (each retry counts).
    pub preheat_agents_failed: Counter,
}

impl ProxyMetrics {
    /// Registers the counters as `shoal_proxy_*` and freezes the component's registry.
    pub fn register(mut builder: MetricsBuilder) -> (ProxyMetrics, Arc<Metrics>) {
        let metrics = ProxyMetrics::default();
        let registry = builder.registry().sub_registry_with_prefix("proxy");
        registry.register(
            "blob_bytes_in",
            "Blob bytes received from clients and streamed to origins",
            metrics.blob_bytes_in.clone(),
        );
        registry.register(
            "blob_bytes_out",
            "Blob bytes streamed from origins to clients",
            metrics.blob_bytes_out.clone(),
        );
        registry.register(
            "manifests_put",
            "Manifests pushed and accepted",
            metrics.manifests_put.clone(),
        );
        for (name, help, counter) in [
            (
                "preheat_events_ignored",
                "Registry notification events ignored (not a manifest push)",
                &metrics.preheat_events_ignored,
            ),
            (
                "preheat_jobs_queued",
                "Preheat jobs queued (notifications and the preheat API)",
                &metrics.preheat_jobs_queued,
            ),
            (
                "preheat_jobs_succeeded",
                "Preheat jobs whose every blob is on its owning origins",
                &metrics.preheat_jobs_succeeded,
            ),
            (
                "preheat_jobs_failed",
                "Preheat jobs that failed after their last attempt",
                &metrics.preheat_jobs_failed,
            ),
            (
                "preheat_blobs",
                "Blobs preheated on all of their owning origins",
                &metrics.preheat_blobs,
            ),
            (
                "preheat_jobs_resumed",
                "Unfinished preheat jobs queued again after a restart",
                &metrics.preheat_jobs_resumed,
            ),
            (
                "preheat_agents_succeeded",
                "Agents that fetched a preheated image into their caches",
                &metrics.preheat_agents_succeeded,
            ),
            (
                "preheat_agents_failed",
                "Agent preheat requests that failed (each attempt counts)",
                &metrics.preheat_agents_failed,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        (metrics, builder.build())
    }
}

/// Adds the length of every chunk that passes through `stream` to `counter`.
pub fn counted<S, E>(stream: S, counter: Counter) -> impl Stream<Item = Result<Bytes, E>>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    stream.inspect(move |chunk| {
        if let Ok(bytes) = chunk {
            counter.inc_by(bytes.len() as u64);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_have_the_documented_names() {
        let (metrics, registry) = ProxyMetrics::register(MetricsBuilder::new("proxy"));
        metrics.blob_bytes_in.inc_by(5);
        metrics.blob_bytes_out.inc_by(7);
        metrics.manifests_put.inc();
        metrics.preheat_blobs.inc_by(3);
        let text = registry.encode();
        for line in [
            "shoal_proxy_blob_bytes_in_total 5\n",
            "shoal_proxy_blob_bytes_out_total 7\n",
            "shoal_proxy_manifests_put_total 1\n",
            "shoal_proxy_preheat_blobs_total 3\n",
            "shoal_proxy_preheat_jobs_queued_total 0\n",
            "shoal_proxy_preheat_jobs_succeeded_total 0\n",
            "shoal_proxy_preheat_jobs_failed_total 0\n",
            "shoal_proxy_preheat_events_ignored_total 0\n",
            "shoal_proxy_preheat_jobs_resumed_total 0\n",
            "shoal_proxy_preheat_agents_succeeded_total 0\n",
            "shoal_proxy_preheat_agents_failed_total 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    #[tokio::test]
    async fn counted_streams_add_chunk_lengths() {
        let counter = Counter::default();
        let chunks: Vec<Result<Bytes, ()>> = vec![
            Ok(Bytes::from_static(b"abc")),
            Err(()),
            Ok(Bytes::from_static(b"de")),
        ];
        let passed: Vec<_> = counted(futures::stream::iter(chunks), counter.clone())
            .collect()
            .await;
        assert_eq!(passed.len(), 3);
        assert_eq!(counter.get(), 5);
    }
}
