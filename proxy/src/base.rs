//! `GET /v2/`: the API version check every client starts with. No authentication is required,
//! so it always answers 200 with an empty JSON object.

use axum::Json;
use axum::response::{IntoResponse, Response};

pub fn get() -> Response {
    Json(serde_json::json!({})).into_response()
}
