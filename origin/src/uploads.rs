//! `/uploads`: chunked upload sessions. `POST` opens one, `PATCH` appends a chunk (optionally
//! pinned to an offset), `GET` reports the offset, `PUT` commits under a digest, `DELETE`
//! abandons it. Bodies stream straight to disk while their digest is computed.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use shoal_api::wire::{DOCKER_CONTENT_DIGEST, UPLOAD_ID, UPLOAD_OFFSET};
use shoal_core::{Digest, ErrorCode, Name};
use shoal_storage::StoreError;

use crate::Origin;
use crate::errors::ApiError;
use crate::extract::{Params, UploadParam, body_stream};
use crate::metrics::MismatchSource;

/// `POST /uploads?namespace=`. The namespace is only validated here; the commit names it again.
pub(crate) async fn start(
    State(origin): State<Arc<Origin>>,
    _params: Params,
) -> Result<Response, ApiError> {
    let id = origin.store.start_upload().await?;
    let headers = [
        (UPLOAD_ID, id.to_string()),
        (header::LOCATION.as_str(), format!("/uploads/{id}")),
        (UPLOAD_OFFSET, "0".to_owned()),
    ];
    Ok((StatusCode::ACCEPTED, headers).into_response())
}

/// `PATCH /uploads/{id}` with an optional `Upload-Offset` the chunk must start at.
pub(crate) async fn append(
    State(origin): State<Arc<Origin>>,
    UploadParam(id): UploadParam,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let expected = match headers.get(UPLOAD_OFFSET) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::BlobUploadInvalid,
                        "Upload-Offset is not a number",
                    )
                })?,
        ),
    };
    let offset = origin
        .store
        .append_upload(&id, expected, body_stream(body))
        .await?;
    Ok((StatusCode::ACCEPTED, [(UPLOAD_OFFSET, offset.to_string())]).into_response())
}

/// `GET /uploads/{id}`: how many bytes the upload holds.
pub(crate) async fn status(
    State(origin): State<Arc<Origin>>,
    UploadParam(id): UploadParam,
) -> Result<Response, ApiError> {
    let offset = origin.store.upload_offset(&id).await?;
    Ok((
        StatusCode::NO_CONTENT,
        [(UPLOAD_OFFSET, offset.to_string())],
    )
        .into_response())
}

/// `PUT /uploads/{id}?digest=&namespace=` with an optional final chunk. A missing or malformed
/// digest, or bytes that do not match it, discard the upload.
pub(crate) async fn commit(
    State(origin): State<Arc<Origin>>,
    UploadParam(id): UploadParam,
    params: Params,
    body: Body,
) -> Result<Response, ApiError> {
    let digest = match params.digest() {
        Ok(digest) => digest,
        Err(error) => {
            // Unknown uploads stay a 404 rather than a digest error.
            origin.store.cancel_upload(&id).await?;
            return Err(error);
        }
    };
    origin
        .store
        .append_upload(&id, None, body_stream(body))
        .await?;
    let result = origin.store.commit_upload(&id, &digest).await;
    if let Err(StoreError::DigestMismatch { .. }) = &result {
        origin.metrics.digest_mismatch(MismatchSource::Upload);
    }
    result?;
    acknowledge(&origin, &digest, params.namespace.as_ref(), true).await
}

/// `DELETE /uploads/{id}`.
pub(crate) async fn cancel(
    State(origin): State<Arc<Origin>>,
    UploadParam(id): UploadParam,
) -> Result<Response, ApiError> {
    origin.store.cancel_upload(&id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Finishes a successful commit: the 201 is only sent once the write quorum of owners holds the
/// blob (when `replicate`; a replica from a peer origin is not passed on) and the write-back is
/// durably queued.
pub(crate) async fn acknowledge(
    origin: &Origin,
    digest: &Digest,
    namespace: Option<&Name>,
    replicate: bool,
) -> Result<Response, ApiError> {
    if let (true, Some(ring)) = (replicate, &origin.ring) {
        crate::replicate::replicate(ring, &origin.store, digest, namespace).await?;
    }
    let delay = if replicate {
        Duration::ZERO
    } else {
        origin.writeback_replica_delay
    };
    origin
        .writeback
        .enqueue_after(digest, namespace, delay)
        .await?;
    origin.metrics.committed();
    tracing::info!(%digest, namespace = namespace.map(Name::as_str), "blob committed");
    let headers = [
        (DOCKER_CONTENT_DIGEST, digest.to_string()),
        (header::LOCATION.as_str(), format!("/blobs/{digest}")),
    ];
    Ok((StatusCode::CREATED, headers).into_response())
}
