//! The build-index HTTP API (`docs/internal-api.md`, "Build-index HTTP API"): tag put, get and
//! delete, manifest record put, get and delete, a repository's tag list and the repository
//! catalog.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use shoal_api::wire::encode;
use shoal_core::{Digest, Name, Tag};
use tracing::info;

use crate::error::Error;
use crate::metrics::TagMetrics;
use crate::pagination::{Page, PageQuery, PageRequest};
use crate::records;
use crate::replicate::Replicator;
use crate::retention::Retention;
use crate::tags::{TagStore, Value};
use crate::verify::Origins;

/// A PUT body is one digest (71 bytes); anything past this is not a digest.
const MAX_DIGEST_BODY: usize = 1024;

/// What every handler needs.
#[derive(Clone)]
pub struct AppState {
    pub tags: TagStore,
    pub origins: Arc<Origins>,
    /// Present when replication is configured.
    pub replicator: Option<Arc<Replicator>>,
    /// Present when retention is configured.
    pub retention: Option<Arc<Retention>>,
    pub metrics: TagMetrics,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/repositories", get(list_repositories))
        .route("/v1/repositories/{repo}/tags", get(list_tags))
        .route(
            "/v1/repositories/{repo}/tags/{tag}",
            get(get_tag).put(put_tag).delete(delete_tag),
        )
        .route(
            "/v1/repositories/{repo}/manifests/{digest}",
            get(get_record).put(put_record).delete(delete_record),
        )
        .route(
            "/v1/repositories/{repo}/referrers/{digest}",
            get(list_referrers),
        )
        .with_state(state)
}

/// Runs on demand: an admin route.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/v1/retention", axum::routing::post(run_retention))
        .with_state(state)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetentionQuery {
    #[serde(default)]
    dry_run: bool,
}

/// Runs retention now (after a run in progress) and answers what it removed, or with
/// `?dry_run=true` what it would remove.
async fn run_retention(
    State(state): State<AppState>,
    query: Result<Query<RetentionQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let Query(query) = query.map_err(|e| Error::RetentionQuery(e.body_text()))?;
    let retention = state.retention.as_ref().ok_or(Error::RetentionOff)?;
    Ok(axum::Json(retention.run(query.dry_run).await).into_response())
}

type TagPath = Result<Path<(String, String)>, PathRejection>;

/// `{repo}` arrives percent-decoded by `Path` (`library%2Fubuntu` → `library/ubuntu`).
fn parse_tag_path(path: TagPath) -> Result<(Name, Tag), Error> {
    let Path((repo, tag)) = path.map_err(|e| Error::PathInvalid(e.body_text()))?;
    Ok((Name::parse(&repo)?, Tag::parse(&tag)?))
}

async fn put_tag(State(state): State<AppState>, path: TagPath, body: Body) -> Response {
    match put_tag_checked(&state, path, body).await {
        Ok(()) => {
            state.metrics.tag_put();
            StatusCode::CREATED.into_response()
        }
        Err(error) => {
            state.metrics.tag_rejected(error.code());
            error.into_response()
        }
    }
}

/// Parses in the order the contract lists the errors (name, tag, digest), checks the manifest
/// tree on the origins, and only then writes, so a refused PUT changes nothing.
async fn put_tag_checked(state: &AppState, path: TagPath, body: Body) -> Result<(), Error> {
    let (name, tag) = parse_tag_path(path)?;
    let body = axum::body::to_bytes(body, MAX_DIGEST_BODY)
        .await
        .map_err(|e| {
            Error::Digest(format!(
                "reading at most {MAX_DIGEST_BODY} bytes failed: {e}"
            ))
        })?;
    let text = std::str::from_utf8(&body).map_err(|_| Error::Digest("body is not UTF-8".into()))?;
    let digest = Digest::parse(text.trim()).map_err(|e| Error::Digest(e.to_string()))?;
    // The records first: a tag's target always has its record.
    records::record_tree(&state.tags, &state.origins, &name, digest).await?;
    state
        .tags
        .put(
            &name,
            Value::Tag {
                tag: tag.clone(),
                digest,
            },
        )
        .await?;
    // Recorded before answering, so a tag the pusher saw accepted is never left unreplicated.
    if let Some(replicator) = &state.replicator {
        replicator.enqueue(&name, &tag, &digest).await?;
    }
    info!(repo = %name, %tag, %digest, "tag written");
    Ok(())
}

async fn get_tag(State(state): State<AppState>, path: TagPath) -> Result<Response, Error> {
    let (name, tag) = parse_tag_path(path)?;
    let digest = state
        .tags
        .get(&name, &tag)
        .await?
        .ok_or_else(|| Error::TagUnknown(format!("{name}:{tag}")))?;
    Ok(([(header::CONTENT_TYPE, "text/plain")], digest.to_string()).into_response())
}

async fn delete_tag(State(state): State<AppState>, path: TagPath) -> Result<StatusCode, Error> {
    let (name, tag) = parse_tag_path(path)?;
    if !records::untag(&state.tags, &name, &tag).await? {
        return Err(Error::TagUnknown(format!("{name}:{tag}")));
    }
    Ok(StatusCode::NO_CONTENT)
}

type RecordPath = Result<Path<(String, String)>, PathRejection>;

fn parse_record_path(path: RecordPath) -> Result<(Name, Digest), Error> {
    let Path((repo, digest)) = path.map_err(|e| Error::PathInvalid(e.body_text()))?;
    let name = Name::parse(&repo)?;
    let digest = Digest::parse(&digest).map_err(|e| Error::Digest(e.to_string()))?;
    Ok((name, digest))
}

/// Records a manifest pushed by digest once it and everything it references are on the origins.
async fn put_record(State(state): State<AppState>, path: RecordPath) -> Result<StatusCode, Error> {
    let (name, digest) = parse_record_path(path)?;
    records::record_tree(&state.tags, &state.origins, &name, digest).await?;
    info!(repo = %name, %digest, "manifest recorded");
    Ok(StatusCode::CREATED)
}

async fn get_record(State(state): State<AppState>, path: RecordPath) -> Result<Response, Error> {
    let (name, digest) = parse_record_path(path)?;
    let record = records::find(&state.tags, &state.origins, &name, &digest)
        .await?
        .ok_or(Error::ManifestUnknown(digest))?;
    Ok(axum::Json(record).into_response())
}

#[derive(Serialize)]
struct Referrers {
    manifests: Vec<shoal_core::Referrer>,
}

/// The manifests of the repository whose `subject` is the digest (none is an empty list).
async fn list_referrers(
    State(state): State<AppState>,
    path: RecordPath,
) -> Result<Response, Error> {
    let (name, digest) = parse_record_path(path)?;
    let manifests = records::referrers(&state.tags, &name, &digest).await?;
    Ok(axum::Json(Referrers { manifests }).into_response())
}

#[derive(Serialize)]
struct Untagged {
    untagged: Vec<String>,
}

async fn delete_record(State(state): State<AppState>, path: RecordPath) -> Result<Response, Error> {
    let (name, digest) = parse_record_path(path)?;
    let untagged = records::delete(&state.tags, &state.origins, &name, &digest).await?;
    let untagged = untagged.iter().map(Tag::to_string).collect();
    Ok(axum::Json(Untagged { untagged }).into_response())
}

#[derive(Serialize)]
struct TagList<'a> {
    name: &'a str,
    tags: Vec<String>,
}

async fn list_tags(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let Path(repo) = path.map_err(|e| Error::PathInvalid(e.body_text()))?;
    let name = Name::parse(&repo)?;
    let request = page_request(query)?;
    let tags = state.tags.tags(&name).await?;
    // An unknown repository is one with no tags; a `last` past the end is just an empty page.
    if tags.is_empty() {
        return Err(Error::NameUnknown(name.to_string()));
    }
    let Page { items, next_last } = request.apply(tags);
    let link_path = format!("/v1/repositories/{}/tags", encode(name.as_str()));
    let body = axum::Json(TagList {
        name: name.as_str(),
        tags: items,
    });
    Ok(with_link(
        body.into_response(),
        &request,
        &link_path,
        next_last,
    ))
}

#[derive(Serialize)]
struct Catalog {
    repositories: Vec<String>,
}

async fn list_repositories(
    State(state): State<AppState>,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let request = page_request(query)?;
    let Page { items, next_last } = request.apply(state.tags.repositories().await?);
    let body = axum::Json(Catalog {
        repositories: items,
    });
    Ok(with_link(
        body.into_response(),
        &request,
        "/v1/repositories",
        next_last,
    ))
}

fn page_request(query: Result<Query<PageQuery>, QueryRejection>) -> Result<PageRequest, Error> {
    let Query(query) = query.map_err(|e| Error::PageInvalid(e.body_text()))?;
    PageRequest::parse(query)
}

fn with_link(
    mut response: Response,
    request: &PageRequest,
    path: &str,
    next_last: Option<String>,
) -> Response {
    if let Some(last) = next_last {
        // Percent-encoding leaves only ASCII, so the value is always a valid header.
        if let Ok(link) = HeaderValue::from_str(&request.next_link(path, &last)) {
            response.headers_mut().insert(header::LINK, link);
        }
    }
    response
}
