//! `/blobs/{digest}`: whole-blob `PUT`, `HEAD` (store, then backend stat; never downloads; a
//! backend that cannot be reached counts as not having the blob) and `GET` with optional
//! `Range`, pulling through from the backend on a miss.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::response::{AppendHeaders, IntoResponse, Response};
use futures::TryStreamExt;
use shoal_api::wire::DOCKER_CONTENT_DIGEST;
use shoal_backends::blob_key;
use shoal_core::{ByteRange, Digest, Name, RangeError};
use shoal_storage::{BlobFile, ByteStream, StoreError};

use crate::capacity::Reading;
use crate::errors::ApiError;
use crate::extract::{DigestParam, Params, body_stream};
use crate::metrics::MismatchSource;
use crate::{Origin, pullthrough, uploads};

/// `PUT /blobs/{digest}?namespace=&replica=`: the whole blob in one body. Succeeds (201) also
/// when the blob is already present, after verifying the bytes sent. `replica=true` marks a copy
/// pushed by the origin that committed it, which is stored but not replicated again.
pub(crate) async fn put(
    State(origin): State<Arc<Origin>>,
    DigestParam(digest): DigestParam,
    params: Params,
    body: Body,
) -> Result<Response, ApiError> {
    let result = origin.store.put(&digest, body_stream(body)).await;
    if let Err(StoreError::DigestMismatch { .. }) = &result {
        origin.metrics.digest_mismatch(MismatchSource::Upload);
    }
    result?;
    uploads::acknowledge(&origin, &digest, params.namespace.as_ref(), !params.replica).await
}

/// `HEAD /blobs/{digest}?namespace=`: the length from the store or, failing that, the backend
/// the namespace routes to (every backend in turn without one).
pub(crate) async fn head(
    State(origin): State<Arc<Origin>>,
    DigestParam(digest): DigestParam,
    params: Params,
) -> Result<Response, ApiError> {
    let len = length(&origin, &digest, params.namespace.as_ref())
        .await?
        .ok_or_else(|| ApiError::blob_unknown(&digest))?;
    Ok((StatusCode::OK, blob_headers(&digest, len, None)).into_response())
}

/// The blob's length from the store or, failing that, the backend `namespace` routes to
/// (every backend in turn without one); `None` when neither has it.
pub(crate) async fn length(
    origin: &Origin,
    digest: &Digest,
    namespace: Option<&Name>,
) -> Result<Option<u64>, ApiError> {
    if let Some(len) = origin.store.stat(digest).await? {
        return Ok(Some(len));
    }
    match origin.backends.locate(namespace, &blob_key(digest)).await {
        Ok(found) => Ok(found.map(|(_, len)| len)),
        // Not available here now. Pushers HEAD every blob before uploading it, so a 503
        // would stop every push for as long as the backend is down; re-uploading a blob the
        // backend may already hold is harmless. A GET still reports the outage.
        Err(error) => {
            tracing::warn!(%digest, error = %shoal_core::chain(&error), "backend unreachable; answering from the store alone");
            Ok(None)
        }
    }
}

/// `GET /blobs/{digest}?namespace=` with an optional single `Range`; the namespace picks the
/// backend a miss is pulled through from.
pub(crate) async fn get(
    State(origin): State<Arc<Origin>>,
    DigestParam(digest): DigestParam,
    params: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let range = requested_range(&headers)?;
    // Taken before the lookup so that eviction cannot take the blob under this response.
    let reading = origin.reading(digest);
    if let Some(file) = origin.store.open_blob(&digest).await? {
        return serve_file(&origin, &digest, file, range, reading);
    }
    if params.replica {
        // A peer origin filling in asks for this store's copy only, so misses never bounce
        // between origins.
        return Err(ApiError::blob_unknown(&digest));
    }
    if range.is_some() {
        // A range of a blob we lack: store the whole blob first, then answer from disk. Serving
        // the range straight from the backend would leave nothing verified.
        if !pullthrough::fetch(&origin, digest, params.namespace.as_ref()).await? {
            return Err(ApiError::blob_unknown(&digest));
        }
        let file = origin
            .store
            .open_blob(&digest)
            .await?
            .ok_or_else(|| ApiError::blob_unknown(&digest))?;
        return serve_file(&origin, &digest, file, range, reading);
    }
    let (len, stream) = pullthrough::stream(&origin, digest, params.namespace.as_ref())
        .await?
        .ok_or_else(|| ApiError::blob_unknown(&digest))?;
    Ok(blob_response(
        &origin,
        StatusCode::OK,
        blob_headers(&digest, len, None),
        stream,
        reading,
    ))
}

fn requested_range(headers: &HeaderMap) -> Result<Option<ByteRange>, ApiError> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| RangeError::Malformed {
        input: String::from_utf8_lossy(value.as_bytes()).into_owned(),
        reason: "not ASCII",
    })?;
    Ok(Some(ByteRange::parse(text)?))
}

fn serve_file(
    origin: &Origin,
    digest: &Digest,
    file: BlobFile,
    range: Option<ByteRange>,
    reading: Reading,
) -> Result<Response, ApiError> {
    let len = file.len();
    let Some(range) = range else {
        let headers = blob_headers(digest, len, None);
        return Ok(blob_response(
            origin,
            StatusCode::OK,
            headers,
            file.stream(0..len),
            reading,
        ));
    };
    let bytes = range.resolve(len)?;
    let content_range = format!("bytes {}-{}/{len}", bytes.start, bytes.end - 1);
    let headers = blob_headers(digest, bytes.end - bytes.start, Some(content_range));
    Ok(blob_response(
        origin,
        StatusCode::PARTIAL_CONTENT,
        headers,
        file.stream(bytes),
        reading,
    ))
}

type Headers = AppendHeaders<Vec<(HeaderName, String)>>;

fn blob_headers(digest: &Digest, content_length: u64, content_range: Option<String>) -> Headers {
    let mut headers = vec![
        (header::CONTENT_LENGTH, content_length.to_string()),
        (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
        (header::ACCEPT_RANGES, "bytes".to_owned()),
        (
            HeaderName::from_static(DOCKER_CONTENT_DIGEST),
            digest.to_string(),
        ),
    ];
    if let Some(content_range) = content_range {
        headers.push((header::CONTENT_RANGE, content_range));
    }
    AppendHeaders(headers)
}

/// A streamed blob response whose bytes are counted as they go out; `reading` lives as long as
/// the body: until the last byte is sent or the client goes away.
fn blob_response(
    origin: &Origin,
    status: StatusCode,
    headers: Headers,
    bytes: ByteStream,
    reading: Reading,
) -> Response {
    let metrics = origin.metrics.clone();
    let counted = bytes.inspect_ok(move |chunk| {
        let _reading = &reading;
        metrics.served(chunk.len());
    });
    (status, headers, Body::from_stream(counted)).into_response()
}
