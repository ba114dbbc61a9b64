//! The Registry V2 router: every `/v2/…` request goes through one handler that parses the raw
//! path and method into an [`Endpoint`], lets the backend name the repository, calls the
//! backend's operation, shapes the response, labels it for the HTTP metrics and stamps the API
//! version header. With auth, the caller is authenticated and the endpoint's access checked
//! before the backend sees the request.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Json, Router, middleware};
use http::HeaderMap;
use shoal_core::{ErrorCode, parse_v2_path};
use shoal_service::RouteLabel;

use crate::auth::{Action, Auth, Required};
use crate::backend::RegistryBackend;
use crate::endpoint::{Endpoint, INVALID_PATH_LABEL, UNSUPPORTED_LABEL};
use crate::error::RegistryError;
use crate::query::Query;
use crate::responses;

/// The `/v2/` API over `backend` (without `/health` and `/metrics`, which shoal-service adds),
/// open to every caller.
pub fn router<B: RegistryBackend>(backend: B) -> Router {
    router_with_auth(backend, None)
}

/// The `/v2/` API over `backend`, authenticating every request with `auth` when there is one.
pub fn router_with_auth<B: RegistryBackend>(backend: B, auth: Option<Auth>) -> Router {
    Router::new()
        .route("/v2", any(dispatch::<B>))
        .route("/v2/", any(dispatch::<B>))
        .route("/v2/{*path}", any(dispatch::<B>))
        .layer(middleware::from_fn(responses::api_version))
        .with_state(Arc::new(Registry { backend, auth }))
}

struct Registry<B> {
    backend: B,
    auth: Option<Auth>,
}

async fn dispatch<B: RegistryBackend>(
    State(registry): State<Arc<Registry<B>>>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let (label, result) = match parse_v2_path(parts.uri.path()) {
        Err(error) => (INVALID_PATH_LABEL, Err(error.into())),
        Ok(route) => match Endpoint::from_route(route, &parts.method) {
            Err(error) => (UNSUPPORTED_LABEL, Err(error)),
            Ok(endpoint) => {
                let label = endpoint.label();
                let mut query = Query::parse(parts.uri.query());
                let result = match &registry.auth {
                    Some(auth) => authorize(auth, &endpoint, &mut query, &parts.headers).await,
                    None => Ok(()),
                };
                let result = match result {
                    Ok(()) => {
                        let client = parts
                            .extensions
                            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                            .map(|info| info.0.ip());
                        handle(
                            &registry.backend,
                            endpoint,
                            &query,
                            &parts.headers,
                            client,
                            body,
                        )
                        .await
                    }
                    Err(refused) => Err(refused),
                };
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

/// Lets the request through when its caller may do what `endpoint` needs. A cross-repository
/// mount from a repository the caller may not pull becomes a plain upload, as in distribution:
/// the mount would otherwise reveal (and copy) a blob the caller cannot read.
async fn authorize(
    auth: &Auth,
    endpoint: &Endpoint,
    query: &mut Query,
    headers: &HeaderMap,
) -> Result<(), RegistryError> {
    let required = Required::of(endpoint);
    let caller = auth.authenticate(headers, &required).await?;
    if !auth.permits(&caller, &required) {
        return Err(auth.refusal(&caller, &required));
    }
    if let Endpoint::StartUpload { .. } = endpoint
        && let Some(from) = query.get("from")
    {
        let readable = shoal_core::Name::parse(from).is_ok_and(|name| {
            auth.permits(
                &caller,
                &Required::Repository {
                    name,
                    action: Action::Pull,
                },
            )
        });
        if !readable {
            query.remove("from");
            query.remove("mount");
        }
    }
    Ok(())
}

/// Runs `endpoint` on `backend`.
async fn handle<B: RegistryBackend>(
    backend: &B,
    endpoint: Endpoint,
    query: &Query,
    headers: &HeaderMap,
    client: Option<std::net::IpAddr>,
    body: Body,
) -> Result<Response, RegistryError> {
    let repository = |name| backend.repository(name, query);
    match endpoint {
        // The caller passed authentication (or none is configured): the version check is 200.
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
        Endpoint::DeleteBlob { name, digest } => {
            backend.delete_blob(&repository(name)?, &digest).await
        }
        Endpoint::StartUpload { name } => {
            backend
                .start_upload(&repository(name)?, query, client, body)
                .await
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
        Endpoint::Referrers { name, digest } => {
            let referrers = backend.referrers(&repository(name)?, &digest).await?;
            Ok(responses::referrers(referrers, query.get("artifactType")))
        }
        Endpoint::CancelUpload { name, id } => backend.cancel_upload(&repository(name)?, &id).await,
    }
}
