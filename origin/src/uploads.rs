//! `/uploads`: chunked upload sessions. `POST` opens one, `PATCH` appends a chunk (optionally
//! pinned to an offset and length), `GET` reports the offset, `PUT` commits under a digest,
//! `DELETE` abandons it. Bodies stream straight to disk while their digest is computed.
//!
//! A session is bound to the `namespace` it was opened with: a request naming another one (or
//! none) finds no session and changes nothing. Open sessions are bounded per client and in
//! total (429 beyond); the client is the connection's address, or the one a trusted forwarder
//! (a proxy, `uploads.trusted_forwarders`) names in `Shoal-Client-Addr`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use shoal_api::wire::{CHUNK_LENGTH, CLIENT_ADDR, DOCKER_CONTENT_DIGEST, UPLOAD_ID, UPLOAD_OFFSET};
use shoal_core::{Digest, ErrorCode, Name};
use shoal_storage::{StoreError, UploadOwner};

use crate::Origin;
use crate::errors::ApiError;
use crate::extract::{Params, UploadParam, body_stream};
use crate::metrics::MismatchSource;

/// `POST /uploads?namespace=`: a session bound to `namespace`, counted against its client.
pub(crate) async fn start(
    State(origin): State<Arc<Origin>>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let peer = peer.map(|axum::Extension(ConnectInfo(addr))| addr.ip());
    let owner = UploadOwner {
        client: client_of(&origin, peer, &headers),
        repository: params.namespace,
    };
    let id = match origin.store.start_upload(owner).await {
        Ok(id) => id,
        Err(error @ StoreError::TooManyUploads { scope, .. }) => {
            origin.metrics.upload_refused(scope);
            return Err(error.into());
        }
        Err(error) => return Err(error.into()),
    };
    let headers = [
        (UPLOAD_ID, id.to_string()),
        (header::LOCATION.as_str(), format!("/uploads/{id}")),
        (UPLOAD_OFFSET, "0".to_owned()),
    ];
    Ok((StatusCode::ACCEPTED, headers).into_response())
}

/// The client a session is opened for: the address a trusted forwarder names, else the
/// caller's own. `None` (no bound per client) only when the connection's address is unknown.
fn client_of(origin: &Origin, peer: Option<IpAddr>, headers: &HeaderMap) -> Option<IpAddr> {
    let peer = peer?;
    let trusted = origin
        .uploads
        .trusted_forwarders
        .iter()
        .any(|net| net.contains(peer));
    let forwarded = headers
        .get(CLIENT_ADDR)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.trim().parse::<IpAddr>().ok());
    match forwarded {
        Some(client) if trusted => Some(client),
        _ => Some(peer),
    }
}

/// A number in header `name`, if present.
fn number_header(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::BlobUploadInvalid,
                format!("{name} is not a number"),
            )
        })
}

/// `PATCH /uploads/{id}?namespace=` with an optional `Upload-Offset` the chunk must start at
/// and, with it, an optional `Chunk-Length` its body must have.
pub(crate) async fn append(
    State(origin): State<Arc<Origin>>,
    UploadParam(id): UploadParam,
    params: Params,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    origin.store.check_upload(&id, params.namespace.as_ref())?;
    let expected = number_header(&headers, UPLOAD_OFFSET)?;
    let body = body_stream(body);
    let offset = match (expected, number_header(&headers, CHUNK_LENGTH)?) {
        (Some(offset), Some(length)) => {
            origin
                .store
                .append_upload_chunk(&id, offset, length, body)
                .await?
        }
        (None, Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::BlobUploadInvalid,
                "Chunk-Length needs Upload-Offset",
            ));
        }
        (expected, None) => origin.store.append_upload(&id, expected, body).await?,
    };
    Ok((StatusCode::ACCEPTED, [(UPLOAD_OFFSET, offset.to_string())]).into_response())
}

/// `GET /uploads/{id}?namespace=`: how many bytes the upload holds.
pub(crate) async fn status(
    State(origin): State<Arc<Origin>>,
    UploadParam(id): UploadParam,
    params: Params,
) -> Result<Response, ApiError> {
    origin.store.check_upload(&id, params.namespace.as_ref())?;
    let offset = origin.store.upload_offset(&id).await?;
    Ok((
        StatusCode::NO_CONTENT,
        [(UPLOAD_OFFSET, offset.to_string())],
    )
        .into_response())
}

/// `PUT /uploads/{id}?digest=&namespace=` with an optional final chunk. The session ends
/// whatever happens: a missing, malformed or unsupported digest, a final chunk that breaks off,
/// or bytes that do not match the digest discard it (the client starts over).
pub(crate) async fn commit(
    State(origin): State<Arc<Origin>>,
    UploadParam(id): UploadParam,
    params: Params,
    body: Body,
) -> Result<Response, ApiError> {
    // Another repository's session (or none) is a 404 that leaves it alone.
    origin.store.check_upload(&id, params.namespace.as_ref())?;
    let appended = match params.digest() {
        Ok(digest) => origin
            .store
            .append_upload(&id, None, body_stream(body))
            .await
            .map(|_| digest)
            .map_err(ApiError::from),
        Err(error) => Err(error),
    };
    let digest = match appended {
        Ok(digest) => digest,
        Err(error) => {
            // Gone already (a concurrent commit or cancel) is fine: the session is closed.
            if let Err(cancel) = origin.store.cancel_upload(&id).await {
                tracing::debug!(upload = %id, error = %cancel, "closing a failed commit's session");
            }
            return Err(error);
        }
    };
    let result = origin.store.commit_upload(&id, &digest).await;
    if let Err(StoreError::DigestMismatch { .. }) = &result {
        origin.metrics.digest_mismatch(MismatchSource::Upload);
    }
    result?;
    acknowledge(&origin, &digest, params.namespace.as_ref(), true).await
}

/// `DELETE /uploads/{id}?namespace=`.
pub(crate) async fn cancel(
    State(origin): State<Arc<Origin>>,
    UploadParam(id): UploadParam,
    params: Params,
) -> Result<Response, ApiError> {
    origin.store.check_upload(&id, params.namespace.as_ref())?;
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
    origin.touches.committed(*digest);
    origin.metrics.committed();
    origin.stored();
    tracing::info!(%digest, namespace = namespace.map(Name::as_str), "blob committed");
    let headers = [
        (DOCKER_CONTENT_DIGEST, digest.to_string()),
        (header::LOCATION.as_str(), format!("/blobs/{digest}")),
    ];
    Ok((StatusCode::CREATED, headers).into_response())
}
