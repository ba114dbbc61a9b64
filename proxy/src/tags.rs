//! `GET /v2/<name>/tags/list`: a repository's tags from the build-index, paged.

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::header::LINK;
use serde_json::json;
use shoal_core::{ErrorCode, Name};
use shoal_registry_server::{Query, RegistryError};

use crate::pagination::PageRequest;
use crate::state::AppState;

pub async fn list(state: &AppState, name: &Name, query: &Query) -> Result<Response, RegistryError> {
    let request = PageRequest::from_query(query)?;
    let page = state
        .upstreams
        .build_index()
        .list_tags(name, request.n, request.last.as_deref())
        .await?
        .ok_or_else(|| {
            RegistryError::new(
                ErrorCode::NameUnknown,
                format!("repository {name} has no tags"),
            )
            .with_detail(json!({ "name": name.as_str() }))
        })?;
    let link = request.next_link(&format!("/v2/{name}/tags/list"), &page);
    let body = Json(json!({ "name": name.as_str(), "tags": page.items }));
    Ok(match link {
        Some(link) => ([(LINK.as_str(), link)], body).into_response(),
        None => body.into_response(),
    })
}
