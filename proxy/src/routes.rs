//! The Registry V2 router: every `/v2/…` request goes through one handler that parses the raw
//! path into a [`V2Route`], dispatches on route and method to the resource modules, labels the
//! response for the HTTP metrics and stamps the API version header.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http::Method;
use shoal_core::{ErrorCode, V2Route, parse_v2_path};
use shoal_service::RouteLabel;

use crate::errors::ProxyError;
use crate::metrics::ProxyMetrics;
use crate::query::Query;
use crate::upstream::Upstreams;
use crate::{base, blobs, catalog, manifests, tags, uploads};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub upstreams: Arc<Upstreams>,
    pub metrics: ProxyMetrics,
}

/// The `/v2/` API (without `/health` and `/metrics`, which shoal-service adds).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v2", any(dispatch))
        .route("/v2/", any(dispatch))
        .route("/v2/{*path}", any(dispatch))
        .layer(middleware::from_fn(
            shoal_service::http::registry_api_version,
        ))
        .with_state(state)
}

async fn dispatch(State(state): State<AppState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let (label, result) = match parse_v2_path(parts.uri.path()) {
        Ok(route) => {
            let query = Query::parse(parts.uri.query());
            let request = V2Request {
                method: parts.method,
                headers: parts.headers,
                query,
                body,
            };
            handle(&state, route, request).await
        }
        Err(error) => ("v2_invalid_path", Err(error.into())),
    };
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    response.extensions_mut().insert(RouteLabel(label));
    response
}

/// The parts of a request the resource handlers use.
struct V2Request {
    method: Method,
    headers: http::HeaderMap,
    query: Query,
    body: Body,
}

/// Runs the handler for `route` and the request's method; returns the metrics label with it.
async fn handle(
    state: &AppState,
    route: V2Route,
    request: V2Request,
) -> (&'static str, Result<Response, ProxyError>) {
    let V2Request {
        method,
        headers,
        query,
        body,
    } = request;
    match (route, method) {
        (V2Route::Base, Method::GET | Method::HEAD) => ("base", Ok(base::get())),
        (V2Route::Catalog, Method::GET) => ("catalog", catalog::list(state, &query).await),
        (V2Route::TagsList { name }, Method::GET) => {
            ("tags_list", tags::list(state, &name, &query).await)
        }
        (V2Route::Manifest { name, reference }, Method::GET) => (
            "manifest_get",
            manifests::get(state, &name, &reference).await,
        ),
        (V2Route::Manifest { name, reference }, Method::HEAD) => (
            "manifest_head",
            manifests::get(state, &name, &reference).await,
        ),
        (V2Route::Manifest { name, reference }, Method::PUT) => (
            "manifest_put",
            manifests::put(state, &name, &reference, &headers, body).await,
        ),
        (V2Route::Manifest { name, reference }, Method::DELETE) => (
            "manifest_delete",
            manifests::delete(state, &name, &reference).await,
        ),
        (V2Route::Blob { name, digest }, Method::GET) => (
            "blob_get",
            blobs::get(state, &name, &digest, &headers).await,
        ),
        (V2Route::Blob { name, digest }, Method::HEAD) => {
            ("blob_head", blobs::head(state, &name, &digest).await)
        }
        (V2Route::UploadStart { name }, Method::POST) => (
            "upload_start",
            uploads::start(state, &name, &query, body).await,
        ),
        (V2Route::Upload { name, id }, Method::PATCH) => (
            "upload_patch",
            uploads::patch(state, &name, &id, &headers, body).await,
        ),
        (V2Route::Upload { name, id }, Method::PUT) => (
            "upload_commit",
            uploads::commit(state, &name, &id, &query, body).await,
        ),
        (V2Route::Upload { name, id }, Method::GET) => {
            ("upload_status", uploads::status(state, &name, &id).await)
        }
        (V2Route::Upload { id, .. }, Method::DELETE) => {
            ("upload_cancel", uploads::cancel(state, &id).await)
        }
        (_, method) => (
            "v2_unsupported",
            Err(ProxyError::new(
                ErrorCode::Unsupported,
                format!("method {method} is not supported on this endpoint"),
            )),
        ),
    }
}
