//! What the Registry V2 handlers and `POST /preheat` share. [`crate::registry`] serves the API
//! over it.

use std::sync::Arc;

use shoal_p2p::Engine;
use shoal_service::SharedSecret;
use shoal_storage::BlobStore;
use shoal_storage::cache::Cache;

use crate::metrics::AgentMetrics;
use crate::namespace::Namespaces;
use crate::tags::TagCache;

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    /// The store the engine keeps complete blobs in; read directly only to answer HEAD and to
    /// tell hits from misses, never to bypass the engine for bytes.
    pub store: Arc<BlobStore>,
    pub cache: Arc<Cache>,
    pub tags: Arc<TagCache>,
    pub namespaces: Arc<Namespaces>,
    pub metrics: AgentMetrics,
    /// `preheat.secret`; `None` turns `POST /preheat` off.
    pub preheat_secret: Option<SharedSecret>,
}
