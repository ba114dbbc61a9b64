//! `GET`, `HEAD` and `DELETE /v2/<name>/blobs/<digest>`: blobs stream from their owning origin straight to
//! the client, honouring `Range`; nothing is buffered in the proxy. An owner that is down or lacks
//! the blob passes the request on to the next owner, and a body that breaks off or stops
//! (its origin hung) goes on from the next owner where it stopped. A delete is garbage
//! collection's, run by the build-index (`docs/gc.md`).

use axum::body::Body;
use axum::response::Response;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE};
use shoal_api::relay::{Refetch, resuming_body};
use shoal_api::{ApiError, OriginClient};
use shoal_core::{ByteRange, Digest, ErrorCode, Name};
use shoal_registry_server::RegistryError;

use crate::metrics::counted;
use crate::state::AppState;
use crate::upstream::Upstreams;

/// Streams the blob (or the requested range of it) from the origin; `None` when no owner has
/// it.
pub async fn get(
    state: &AppState,
    name: &Name,
    digest: &Digest,
    range: Option<ByteRange>,
) -> Result<Option<Response>, RegistryError> {
    let range = range.map(|range| range.to_string());
    let fetched = fetch(&state.upstreams, name, digest, range.as_deref()).await;
    let (upstream, origin) = match fetched {
        Ok(Some(upstream)) => upstream,
        Ok(None) => return Ok(None),
        Err(error) if is_unknown(&error) => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let mut response = Response::builder().status(upstream.status());
    if let Some(headers) = response.headers_mut() {
        for name in [CONTENT_LENGTH, CONTENT_RANGE] {
            if let Some(value) = upstream.headers().get(&name) {
                headers.insert(name, value.clone());
            }
        }
    }
    let refetch: Refetch = {
        let (upstreams, name, digest) = (state.upstreams.clone(), name.clone(), *digest);
        Box::new(move |range| {
            let (upstreams, name) = (upstreams.clone(), name.clone());
            Box::pin(async move { Ok(fetch(&upstreams, &name, &digest, Some(&range)).await?) })
        })
    };
    let body = resuming_body(
        state.upstreams.origins().clone(),
        *digest,
        upstream,
        origin,
        refetch,
    );
    let body = counted(body, state.metrics.blob_bytes_out.clone());
    response
        .body(Body::from_stream(body))
        .map(Some)
        .map_err(RegistryError::unavailable)
}

/// Starts `GET` of `digest` (or `range` of it, a raw `Range` value) on the first owner that
/// answers, with the origin that did; `None` when no owner has it.
async fn fetch(
    upstreams: &Upstreams,
    name: &Name,
    digest: &Digest,
    range: Option<&str>,
) -> Result<Option<(reqwest::Response, OriginClient)>, ApiError> {
    upstreams
        .read_blob(digest, |origin| async move {
            match origin.get_blob(digest, Some(name), range).await {
                Ok(response) => Ok(Some((response, origin))),
                Err(error) if is_unknown(&error) => Ok(None),
                Err(error) => Err(error),
            }
        })
        .await
}

/// Answers from the origin's stat, which never downloads the blob.
pub async fn length(
    state: &AppState,
    name: &Name,
    digest: &Digest,
) -> Result<Option<u64>, RegistryError> {
    Ok(state
        .upstreams
        .read_blob(digest, |origin| async move {
            origin.stat_blob(digest, Some(name)).await
        })
        .await?)
}

/// A missing blob is reported with the digest asked for.
fn is_unknown(error: &ApiError) -> bool {
    error.is(ErrorCode::BlobUnknown) || matches!(error, ApiError::Remote { status: 404, .. })
}

/// `DELETE /v2/<name>/blobs/<digest>`, with `storage.delete.enabled`: the build-index deletes
/// the blob from every origin and the backend unless a recorded manifest of any repository
/// references it (403 DENIED, naming it). Blobs are shared by every repository, so the name
/// only decides who may delete.
pub async fn delete(state: &AppState, digest: &Digest) -> Result<Response, RegistryError> {
    if !state.blob_delete {
        return Err(RegistryError::new(
            ErrorCode::Unsupported,
            "blob deletes are disabled (proxy config `storage.delete.enabled`)",
        ));
    }
    state
        .upstreams
        .build_index()
        .gc()
        .delete_blob(digest)
        .await?;
    let mut response = Response::new(Body::empty());
    *response.status_mut() = http::StatusCode::ACCEPTED;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_404s_are_unknown_blobs() {
        let error = ApiError::Remote {
            service: "origin".into(),
            status: 404,
            code: None,
            message: String::new(),
        };
        assert!(is_unknown(&error));
        let error = ApiError::Remote {
            service: "origin".into(),
            status: 503,
            code: Some(ErrorCode::Unavailable),
            message: String::new(),
        };
        assert!(!is_unknown(&error));
    }
}
