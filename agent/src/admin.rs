//! Operator endpoints on the registry listener, behind `allowed_clients` like `/preheat`:
//! `GET /admin/cache` lists the cached blobs with their size and last use, `DELETE
//! /admin/cache/{digest}` evicts one now (what `shoal cache ls|evict` calls).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use serde::Serialize;
use shoal_core::Digest;
use shoal_storage::cache::Eviction;

use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/admin/cache", get(list))
        .route("/admin/cache/{digest}", delete(evict))
        .with_state(state)
}

#[derive(Serialize)]
struct Listing {
    blobs: Vec<Blob>,
    total_bytes: u64,
}

#[derive(Serialize)]
struct Blob {
    digest: Digest,
    size: u64,
    last_used_unix_ms: u64,
    readers: usize,
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn list(State(state): State<AppState>) -> Response {
    match state.cache.blobs().await {
        Ok(blobs) => {
            let blobs: Vec<Blob> = blobs
                .into_iter()
                .map(|blob| Blob {
                    digest: blob.digest,
                    size: blob.length,
                    last_used_unix_ms: unix_ms(blob.last_used),
                    readers: blob.readers,
                })
                .collect();
            let total_bytes = blobs.iter().map(|b| b.size).sum();
            Json(Listing { blobs, total_bytes }).into_response()
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("listing the cache: {e}"),
        ),
    }
}

async fn evict(State(state): State<AppState>, Path(text): Path<String>) -> Response {
    let digest = match Digest::parse(&text) {
        Ok(digest) => digest,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("digest {text:?}: {e}")),
    };
    match state.cache.evict(&digest).await {
        Ok(Eviction::Evicted) => StatusCode::NO_CONTENT.into_response(),
        Ok(Eviction::Absent) => error(
            StatusCode::NOT_FOUND,
            format!("{digest} is not in this agent's cache"),
        ),
        Ok(Eviction::Held) => error(
            StatusCode::CONFLICT,
            format!("{digest} is being read: try again once its readers are done"),
        ),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("evicting {digest}: {e}"),
        ),
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}
