//! `GET` and `HEAD /v2/<name>/blobs/<digest>`. A GET streams the blob from the p2p engine: from
//! the local store, or in order as its pieces arrive from peers while it downloads, `Range`
//! included. A HEAD never starts a download: the local store or the tracker's metainfo answers.
//! A blob that exists nowhere is a prompt 404, so runtimes fall back to their upstream.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use http::{HeaderMap, StatusCode};
use shoal_api::wire::DOCKER_CONTENT_DIGEST;
use shoal_core::{ByteRange, Digest, ErrorCode, Name};
use shoal_p2p::P2pError;

use crate::errors::AgentError;
use crate::metrics::BlobResult;
use crate::routes::AppState;

/// Blobs are opaque bytes to the registry; the manifest says what they are.
const BLOB_CONTENT_TYPE: &str = "application/octet-stream";

/// Streams the blob, or the requested range of it.
pub async fn get(
    state: &AppState,
    name: &Name,
    digest: &Digest,
    headers: &HeaderMap,
) -> Result<Response, AgentError> {
    let range = requested_range(headers)?;
    let hit = is_local(state, digest).await;
    // Taken before the lookup so the cache cannot evict the blob under this response.
    let guard = state.cache.reader(*digest);
    let blob = match state.engine.fetch(digest, Some(name)).await {
        Ok(blob) => blob,
        Err(error) => return Err(engine_error(state, error, digest)),
    };
    state.metrics.blob_request(if hit {
        BlobResult::Hit
    } else {
        BlobResult::Miss
    });
    let length = blob.length();
    let (status, span) = match range {
        None => (StatusCode::OK, 0..length),
        Some(range) => match range.resolve(length) {
            Ok(span) => (StatusCode::PARTIAL_CONTENT, span),
            Err(_) => return Err(AgentError::range_unsatisfiable(length)),
        },
    };
    let mut response = Response::builder()
        .status(status)
        .header(CONTENT_LENGTH, span.end - span.start);
    if status == StatusCode::PARTIAL_CONTENT {
        let last = span.end - 1;
        response = response.header(
            CONTENT_RANGE,
            format!("bytes {}-{last}/{length}", span.start),
        );
    }
    // The guard lives as long as the body stream: until the last byte is sent or the client
    // goes away.
    let body = blob.stream(span).map(move |chunk| {
        let _reading = &guard;
        chunk
    });
    let response = response
        .body(Body::from_stream(body))
        .map_err(AgentError::unavailable)?;
    Ok((blob_headers(digest), response).into_response())
}

/// Answers from the local store, or from the tracker's metainfo; never downloads.
pub async fn head(state: &AppState, name: &Name, digest: &Digest) -> Result<Response, AgentError> {
    let length = match state.store.stat(digest).await {
        Ok(Some(length)) => {
            state.metrics.blob_request(BlobResult::Hit);
            length
        }
        Ok(None) => match state.engine.metainfo(digest, Some(name)).await {
            Ok(metainfo) => {
                state.metrics.blob_request(BlobResult::Miss);
                metainfo.length()
            }
            Err(error) => return Err(engine_error(state, error, digest)),
        },
        Err(error) => {
            state.metrics.blob_request(BlobResult::Error);
            return Err(AgentError::unavailable(error));
        }
    };
    let length = [(CONTENT_LENGTH.as_str(), length.to_string())];
    Ok((StatusCode::OK, blob_headers(digest), length).into_response())
}

async fn is_local(state: &AppState, digest: &Digest) -> bool {
    matches!(state.store.stat(digest).await, Ok(Some(_)))
}

/// Counts the failure and maps it: absent everywhere is 404, anything else 503.
fn engine_error(state: &AppState, error: P2pError, digest: &Digest) -> AgentError {
    if matches!(error, P2pError::NotFound { .. }) {
        state.metrics.blob_request(BlobResult::NotFound);
        AgentError::blob_unknown(digest)
    } else {
        state.metrics.blob_request(BlobResult::Error);
        AgentError::unavailable(error)
    }
}

/// The headers every successful blob response carries.
fn blob_headers(digest: &Digest) -> [(&'static str, String); 3] {
    [
        (DOCKER_CONTENT_DIGEST, digest.to_string()),
        (ACCEPT_RANGES.as_str(), "bytes".to_owned()),
        (CONTENT_TYPE.as_str(), BLOB_CONTENT_TYPE.to_owned()),
    ]
}

/// The requested range, if any. One that is not a single valid byte range is refused with 416
/// RANGE_INVALID, as the origin and the distribution registry do (RFC 9110 §14.2 allows either
/// ignoring or rejecting it).
fn requested_range(headers: &HeaderMap) -> Result<Option<ByteRange>, AgentError> {
    let Some(value) = headers.get(RANGE) else {
        return Ok(None);
    };
    let malformed = |reason: String| AgentError::new(ErrorCode::RangeInvalid, reason);
    let text = value
        .to_str()
        .map_err(|_| malformed("Range header is not ASCII".to_owned()))?;
    ByteRange::parse(text)
        .map(Some)
        .map_err(|error| malformed(error.to_string()))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn with_range(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn single_ranges_parse_and_others_are_range_invalid() {
        assert_eq!(
            requested_range(&with_range("bytes=5-")).unwrap(),
            Some(ByteRange::From(5))
        );
        assert_eq!(requested_range(&HeaderMap::new()).unwrap(), None);
        for value in ["bytes=5-1", "items=0-1", "bytes=0-1,4-5"] {
            let error = requested_range(&with_range(value)).unwrap_err();
            assert_eq!(error.code(), ErrorCode::RangeInvalid, "{value}");
        }
    }
}
