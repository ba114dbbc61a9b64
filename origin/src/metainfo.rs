//! `GET /blobs/{digest}/metainfo`: the blob's piece hashes, computed on first request and stored
//! beside it. A blob only the backend has is pulled in first, so asking for metainfo is enough
//! to preheat an origin.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::errors::ApiError;
use crate::extract::{DigestParam, Params};
use crate::{Origin, pullthrough};

pub(crate) async fn get(
    State(origin): State<Arc<Origin>>,
    DigestParam(digest): DigestParam,
    params: Params,
) -> Result<Response, ApiError> {
    let metainfo = match origin.store.metainfo(&digest).await? {
        Some(metainfo) => metainfo,
        None => {
            if !pullthrough::fetch(&origin, digest, params.namespace.as_ref()).await? {
                return Err(ApiError::blob_unknown(&digest));
            }
            origin
                .store
                .metainfo(&digest)
                .await?
                .ok_or_else(|| ApiError::blob_unknown(&digest))?
        }
    };
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        metainfo.to_json(),
    )
        .into_response())
}
