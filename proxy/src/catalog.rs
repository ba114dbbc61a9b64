//! `GET /v2/_catalog`: every repository with at least one tag, from the build-index, paged.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::header::LINK;
use serde_json::json;
use shoal_registry_server::{Query, RegistryError};

use crate::pagination::PageRequest;
use crate::state::AppState;

pub async fn list(state: &AppState, query: &Query) -> Result<Response, RegistryError> {
    let request = PageRequest::from_query(query)?;
    let page = state
        .upstreams
        .build_index()
        .list_repositories(request.n, request.last.as_deref())
        .await?;
    let link = request.next_link("/v2/_catalog", &page);
    let body = Json(json!({ "repositories": page.items }));
    Ok(match link {
        Some(link) => ([(LINK.as_str(), link)], body).into_response(),
        None => body.into_response(),
    })
}
