//! The Registry V2 read API router: every `/v2/…` request goes through one handler that parses
//! the raw path into a [`V2Route`], resolves the repository (containerd's `?ns=`), dispatches
//! on route and method, labels the response for the HTTP metrics and stamps the API version
//! header. The agent is read-only: anything that would write answers 405 UNSUPPORTED.
//! `POST /preheat` (outside `/v2/`) is the proxy's way to fill the cache ahead of a pull.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use http::Method;
use shoal_core::{ErrorCode, V2Route, parse_v2_path};
use shoal_p2p::Engine;
use shoal_service::RouteLabel;
use shoal_storage::BlobStore;

use crate::cache::Cache;
use crate::errors::AgentError;
use crate::metrics::AgentMetrics;
use crate::namespace::Namespaces;
use crate::tags::TagCache;
use crate::{blobs, manifests, preheat};

/// What the handlers share.
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
}

/// The `/v2/` API and `POST /preheat` (without `/health` and `/metrics`, which shoal-service
/// adds).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v2", any(dispatch))
        .route("/v2/", any(dispatch))
        .route("/v2/{*path}", any(dispatch))
        .layer(middleware::from_fn(
            shoal_service::http::registry_api_version,
        ))
        // Added after the layer: preheat is no Registry V2 endpoint.
        .route("/preheat", post(preheat::handle))
        .with_state(state)
}

async fn dispatch(State(state): State<AppState>, request: Request) -> Response {
    let (parts, _body) = request.into_parts();
    let (label, result) = match parse_v2_path(parts.uri.path()) {
        Ok(route) => handle(&state, route, &parts).await,
        Err(error) => ("v2_invalid_path", Err(error.into())),
    };
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    response.extensions_mut().insert(RouteLabel(label));
    response
}

/// Runs the handler for `route` and the request's method; returns the metrics label with it.
async fn handle(
    state: &AppState,
    route: V2Route,
    parts: &http::request::Parts,
) -> (&'static str, Result<Response, AgentError>) {
    let query = parts.uri.query();
    match (route, &parts.method) {
        (V2Route::Base, &Method::GET | &Method::HEAD) => (
            "base",
            Ok(axum::Json(serde_json::json!({})).into_response()),
        ),
        (V2Route::Manifest { name, reference }, method @ (&Method::GET | &Method::HEAD)) => {
            let label = if method == Method::GET {
                "manifest_get"
            } else {
                "manifest_head"
            };
            let result = match state.namespaces.resolve(name, query) {
                Ok(name) => manifests::get(state, &name, &reference).await,
                Err(error) => Err(error.into()),
            };
            (label, result)
        }
        (V2Route::Blob { name, digest }, &Method::GET) => {
            let result = match state.namespaces.resolve(name, query) {
                Ok(name) => blobs::get(state, &name, &digest, &parts.headers).await,
                Err(error) => Err(error.into()),
            };
            ("blob_get", result)
        }
        (V2Route::Blob { name, digest }, &Method::HEAD) => {
            let result = match state.namespaces.resolve(name, query) {
                Ok(name) => blobs::head(state, &name, &digest).await,
                Err(error) => Err(error.into()),
            };
            ("blob_head", result)
        }
        (_, method) => (
            "v2_unsupported",
            Err(AgentError::new(
                ErrorCode::Unsupported,
                format!(
                    "the agent is a read-only mirror: {method} is not supported on this endpoint"
                ),
            )),
        ),
    }
}
