//! The Registry V2 router: every `/v2/…` request goes through one handler that parses the raw
//! path and method into an [`Endpoint`], lets the backend name the repository, calls the
//! backend's operation, shapes the response, labels it for the HTTP metrics and stamps the API
//! version header.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router, middleware};
use http::HeaderMap;
use shoal_core::{ErrorCode, parse_v2_path};
use shoal_service::RouteLabel;

use crate::backend::RegistryBackend;
use crate::endpoint::{Endpoint, INVALID_PATH_LABEL, UNSUPPORTED_LABEL};
use crate::error::RegistryError;
use crate::query::Query;
use crate::responses;

/// The `/v2/` API over `backend` (without `/health` and `/metrics`, which shoal-service adds).
pub fn router<B: RegistryBackend>(backend: B) -> Router {
    Router::new()
        .route("/v2", any(dispatch::<B>))
        .route("/v2/", any(dispatch::<B>))
        .route("/v2/{*path}", any(dispatch::<B>))
        .layer(middleware::from_fn(responses::api_version))
        .with_state(Arc::new(backend))
}

async fn dispatch<B: RegistryBackend>(State(backend): State<Arc<B>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let (label, result) = match parse_v2_path(parts.uri.path()) {
        Err(error) => (INVALID_PATH_LABEL, Err(error.into())),
        Ok(route) => match Endpoint::from_route(route, &parts.method) {
            Err(error) => (UNSUPPORTED_LABEL, Err(error)),
            Ok(endpoint) => {
                let label = endpoint.label();
                let query = Query::parse(parts.uri.query());
                let result = handle(&*backend, endpoint, &query, &parts.headers, body).await;
                match &result {
                    // An operation this registry does not serve counts with the methods no
                    // route has.
                    Err(error) if error.code() == ErrorCode::Unsupported => {
                        (UNSUPPORTED_LABEL, result)
                    }
                    _ => (label, result),
                }
            }
        },
    };
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    response.extensions_mut().insert(RouteLabel(label));
    response
}

/// Runs `endpoint` on `backend`.
async fn handle<B: RegistryBackend>(
    backend: &B,
    endpoint: Endpoint,
    query: &Query,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, RegistryError> {
    let repository = |name| backend.repository(name, query);
    match endpoint {
        // No authentication is required, so the version check always answers 200 `{}`.
        Endpoint::Base => Ok(Json(serde_json::json!({})).into_response()),
        Endpoint::Catalog => backend.catalog(query).await,
        Endpoint::ListTags { name } => backend.list_tags(&repository(name)?, query).await,
        Endpoint::GetManifest { name, reference } | Endpoint::HeadManifest { name, reference } => {
            let stored = backend.manifest(&repository(name)?, &reference).await?;
            responses::manifest(&reference, stored)
        }
        Endpoint::PutManifest { name, reference } => {
            let name = repository(name)?;
            backend.put_manifest(&name, &reference, headers, body).await
        }
        Endpoint::DeleteManifest { name, reference } => {
            backend
                .delete_manifest(&repository(name)?, &reference)
                .await
        }
        Endpoint::GetBlob { name, digest } => {
            let name = repository(name)?;
            let range = responses::requested_range(headers)?;
            match backend.get_blob(&name, &digest, range).await? {
                Some(body) => Ok(responses::blob(&digest, body)),
                None => Err(RegistryError::blob_unknown(&digest)),
            }
        }
        Endpoint::HeadBlob { name, digest } => {
            match backend.blob_length(&repository(name)?, &digest).await? {
                Some(length) => Ok(responses::blob_head(&digest, length)),
                None => Err(RegistryError::blob_unknown(&digest)),
            }
        }
        Endpoint::StartUpload { name } => {
            backend.start_upload(&repository(name)?, query, body).await
        }
        Endpoint::PatchUpload { name, id } => {
            let name = repository(name)?;
            backend.patch_upload(&name, &id, headers, body).await
        }
        Endpoint::CommitUpload { name, id } => {
            let name = repository(name)?;
            backend.commit_upload(&name, &id, query, body).await
        }
        Endpoint::UploadStatus { name, id } => backend.upload_status(&repository(name)?, &id).await,
        Endpoint::CancelUpload { name, id } => backend.cancel_upload(&repository(name)?, &id).await,
    }
}
