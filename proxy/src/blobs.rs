//! `GET` and `HEAD /v2/<name>/blobs/<digest>`: blobs stream from their owning origin straight to
//! the client, honouring `Range`; nothing is buffered in the proxy. An owner that is down or lacks
//! the blob passes the request on to the next owner.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use http::{HeaderMap, StatusCode};
use shoal_api::ApiError;
use shoal_api::wire::DOCKER_CONTENT_DIGEST;
use shoal_core::{ByteRange, Digest, ErrorCode, Name};

use crate::errors::ProxyError;
use crate::metrics::counted;
use crate::routes::AppState;

/// Blobs are opaque bytes to the registry; the manifest says what they are.
const BLOB_CONTENT_TYPE: &str = "application/octet-stream";

/// Streams the blob (or the requested range of it) from the origin.
pub async fn get(
    state: &AppState,
    name: &Name,
    digest: &Digest,
    headers: &HeaderMap,
) -> Result<Response, ProxyError> {
    let range = requested_range(headers)?;
    let upstream = state
        .upstreams
        .read_blob(digest, |origin| async move {
            match origin.get_blob(digest, Some(name), range).await {
                Ok(response) => Ok(Some(response)),
                Err(error) if is_unknown(&error) => Ok(None),
                Err(error) => Err(error),
            }
        })
        .await
        .map_err(|error| blob_error(error, digest))?
        .ok_or_else(|| unknown(digest))?;
    let mut response = Response::builder().status(upstream.status());
    if let Some(headers) = response.headers_mut() {
        for name in [CONTENT_LENGTH, CONTENT_RANGE] {
            if let Some(value) = upstream.headers().get(&name) {
                headers.insert(name, value.clone());
            }
        }
    }
    let body = counted(
        upstream.bytes_stream(),
        state.metrics.blob_bytes_out.clone(),
    );
    let response = response
        .body(Body::from_stream(body))
        .map_err(|error| ProxyError::new(ErrorCode::Unavailable, error.to_string()))?;
    Ok((blob_headers(digest), response).into_response())
}

/// Answers from the origin's stat, which never downloads the blob.
pub async fn head(state: &AppState, name: &Name, digest: &Digest) -> Result<Response, ProxyError> {
    let length = state
        .upstreams
        .read_blob(digest, |origin| origin.stat_blob(digest, Some(name)))
        .await?
        .ok_or_else(|| unknown(digest))?;
    let length = [(CONTENT_LENGTH.as_str(), length.to_string())];
    Ok((StatusCode::OK, blob_headers(digest), length).into_response())
}

/// The headers every successful blob response carries.
fn blob_headers(digest: &Digest) -> [(&'static str, String); 3] {
    [
        (DOCKER_CONTENT_DIGEST, digest.to_string()),
        (ACCEPT_RANGES.as_str(), "bytes".to_owned()),
        (CONTENT_TYPE.as_str(), BLOB_CONTENT_TYPE.to_owned()),
    ]
}

/// The `Range` header to forward, if any. One that is not a single valid byte range is refused
/// with 416 RANGE_INVALID here, without a round trip: the origin would answer the same, as does
/// the distribution registry (RFC 9110 §14.2 allows either ignoring or rejecting it).
fn requested_range(headers: &HeaderMap) -> Result<Option<&str>, ProxyError> {
    let Some(value) = headers.get(RANGE) else {
        return Ok(None);
    };
    let malformed = |reason: String| ProxyError::new(ErrorCode::RangeInvalid, reason);
    let text = value
        .to_str()
        .map_err(|_| malformed("Range header is not ASCII".to_owned()))?;
    ByteRange::parse(text).map_err(|error| malformed(error.to_string()))?;
    Ok(Some(text))
}

/// A missing blob is reported with the digest asked for.
fn is_unknown(error: &ApiError) -> bool {
    error.is(ErrorCode::BlobUnknown) || matches!(error, ApiError::Remote { status: 404, .. })
}

fn blob_error(error: ApiError, digest: &Digest) -> ProxyError {
    if is_unknown(&error) {
        unknown(digest)
    } else {
        error.into()
    }
}

fn unknown(digest: &Digest) -> ProxyError {
    ProxyError::new(ErrorCode::BlobUnknown, format!("blob {digest} is unknown"))
        .with_detail(serde_json::json!({ "digest": digest.to_string() }))
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
    fn valid_single_ranges_are_forwarded_verbatim() {
        for value in ["bytes=0-99", "bytes=100-", "bytes=-5"] {
            assert_eq!(requested_range(&with_range(value)).unwrap(), Some(value));
        }
        assert_eq!(requested_range(&HeaderMap::new()).unwrap(), None);
    }

    #[test]
    fn malformed_ranges_are_range_invalid() {
        for value in ["bytes=5-1", "items=0-1", "bytes=0-1,4-5", "bytes=x-"] {
            let error = requested_range(&with_range(value)).unwrap_err();
            assert_eq!(error.code(), ErrorCode::RangeInvalid, "{value}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, HeaderValue::from_bytes(b"bytes=\xff-").unwrap());
        assert!(requested_range(&headers).is_err());
    }

    #[test]
    fn origin_404s_become_blob_unknown_with_the_digest() {
        let digest = Digest::of(b"x");
        let error = ApiError::Remote {
            service: "origin".into(),
            status: 404,
            code: None,
            message: String::new(),
        };
        let error = blob_error(error, &digest);
        assert_eq!(error.code(), ErrorCode::BlobUnknown);
        assert!(error.to_string().contains(&digest.to_string()));
    }
}
