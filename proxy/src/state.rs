//! What the Registry V2 handlers share: the clients for the origins and the build-index, and
//! the proxy's counters. [`crate::registry`] serves the API over it.

use std::sync::Arc;

use crate::metrics::ProxyMetrics;
use crate::upstream::Upstreams;
use crate::validation::UrlPolicy;

#[derive(Debug, Clone)]
pub struct AppState {
    pub upstreams: Arc<Upstreams>,
    pub metrics: ProxyMetrics,
    /// `validation.manifests.urls`.
    pub manifest_urls: Arc<UrlPolicy>,
    /// `storage.delete.enabled`: blob deletes are served (405 UNSUPPORTED otherwise).
    pub blob_delete: bool,
}
