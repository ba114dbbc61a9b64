//! The swarm view's routes: the page, its JSON documents and their server-sent events. Query
//! parameters are typed and unknown ones refused, so a malformed request is a 400 naming what is
//! wrong, never a 500. The routes only read, so under mutual TLS they admit any caller, like
//! `/health` and `/metrics` (a browser needs no client certificate).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use shoal_core::Digest;
use shoal_service::CancellationToken;

use super::{Page, Sort, View};

/// Events are sent at most this often, however fast announces arrive.
const EVENT_INTERVAL: Duration = Duration::from_secs(1);
/// A comment line this often keeps idle streams (and proxies in between) from timing out.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The page: HTML, CSS and script in one file, embedded at build time.
const PAGE: &str = include_str!("ui.html");

#[derive(Clone)]
struct ViewState {
    view: Arc<View>,
    /// Ends event streams, so the server's graceful shutdown does not wait on them.
    shutdown: CancellationToken,
}

/// `GET /ui`, `GET /v1/swarms`, `GET /v1/swarms/events`, `GET /v1/swarms/{digest}`.
pub fn router(view: Arc<View>, shutdown: CancellationToken) -> Router {
    Router::new()
        .route("/ui", get(|| async { Html(PAGE) }))
        .route("/v1/swarms", get(list))
        .route("/v1/swarms/events", get(events))
        .route("/v1/swarms/{digest}", get(detail))
        .with_state(ViewState { view, shutdown })
}

/// A request the view cannot answer.
#[derive(Debug, thiserror::Error)]
enum ViewError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no peer announces {0}")]
    NotFound(Digest),
}

impl IntoResponse for ViewError {
    fn into_response(self) -> Response {
        let status = match self {
            ViewError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ViewError::NotFound(_) => StatusCode::NOT_FOUND,
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

impl From<QueryRejection> for ViewError {
    fn from(rejection: QueryRejection) -> Self {
        ViewError::BadRequest(rejection.body_text())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    offset: Option<usize>,
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DetailQuery {
    offset: Option<usize>,
    limit: Option<usize>,
    sort: Option<Sort>,
}

/// The list's parameters, or one swarm's with `digest`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    digest: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
    sort: Option<Sort>,
}

/// What one document (and each event) shows.
#[derive(Debug, Clone, Copy)]
enum Subject {
    List(Page),
    Swarm(Digest, Page, Sort),
}

fn page(offset: Option<usize>, limit: Option<usize>) -> Result<Page, ViewError> {
    Page::new(offset, limit).map_err(ViewError::BadRequest)
}

fn digest(text: &str) -> Result<Digest, ViewError> {
    Digest::parse(text).map_err(|e| ViewError::BadRequest(format!("digest: {e}")))
}

impl ViewState {
    fn document(&self, subject: Subject) -> Result<serde_json::Value, ViewError> {
        let value = match subject {
            Subject::List(page) => serde_json::to_value(self.view.list(page)),
            Subject::Swarm(digest, page, sort) => serde_json::to_value(
                self.view
                    .detail(&digest, page, sort)
                    .ok_or(ViewError::NotFound(digest))?,
            ),
        };
        // Plain structs of strings and numbers always serialize.
        Ok(value.unwrap_or_default())
    }
}

async fn list(
    State(state): State<ViewState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ViewError> {
    let Query(query) = query?;
    state
        .document(Subject::List(page(query.offset, query.limit)?))
        .map(Json)
}

async fn detail(
    State(state): State<ViewState>,
    Path(text): Path<String>,
    query: Result<Query<DetailQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ViewError> {
    let Query(query) = query?;
    let subject = Subject::Swarm(
        digest(&text)?,
        page(query.offset, query.limit)?,
        query.sort.unwrap_or_default(),
    );
    state.document(subject).map(Json)
}

/// The same documents as server-sent events: one at once, then one after each change, at most
/// one per [`EVENT_INTERVAL`]. Events are named `swarms` (the list), `swarm` (one swarm) or
/// `error` (the swarm is gone); the stream ends when the tracker shuts down.
async fn events(
    State(state): State<ViewState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ViewError> {
    let Query(query) = query?;
    let page = page(query.offset, query.limit)?;
    let subject = match &query.digest {
        Some(text) => Subject::Swarm(digest(text)?, page, query.sort.unwrap_or_default()),
        None if query.sort.is_some() => {
            return Err(ViewError::BadRequest(
                "sort applies to one swarm's peers: give digest too".into(),
            ));
        }
        None => Subject::List(page),
    };
    let changes = state.view.board.subscribe();
    let shutdown = state.shutdown.clone();
    let stream = futures::stream::unfold(
        (state, changes, true),
        move |(state, mut changes, first)| async move {
            if !first {
                tokio::time::sleep(EVENT_INTERVAL).await;
                changes.changed().await.ok()?;
            }
            changes.mark_unchanged();
            let event = event(&state, subject);
            Some((Ok(event), (state, changes, false)))
        },
    )
    .take_until(shutdown.cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

fn event(state: &ViewState, subject: Subject) -> Event {
    let name = match subject {
        Subject::List(_) => "swarms",
        Subject::Swarm(..) => "swarm",
    };
    match state.document(subject) {
        Ok(document) => Event::default().event(name).data(document.to_string()),
        Err(error) => Event::default()
            .event("error")
            .data(serde_json::json!({ "error": error.to_string() }).to_string()),
    }
}
