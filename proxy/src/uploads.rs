//! `/v2/<name>/blobs/uploads/…`: blob pushes. `POST` mounts an existing blob, stores a monolithic
//! body, or opens a session on an origin; `PATCH` appends chunks, `PUT` commits with the digest,
//! `GET` reports progress and `DELETE` abandons. Bodies stream to the origin, which verifies the
//! digest on commit and answers only once the blob is durable.
//!
//! The proxy keeps no session state, so it bounds nothing itself: it passes each client's
//! address to the origin (`Shoal-Client-Addr`, trusted from the proxies' addresses in the
//! origins' `uploads.trusted_forwarders`), which bounds sessions per client and in total and
//! answers 429 beyond; the 429 is passed on. A session is bound to its repository on the
//! origin: each request names the repository of its path, and another repository's path finds
//! no session. A commit that fails for any reason closes the session.

use std::net::IpAddr;

use axum::body::{Body, HttpBody as _};
use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_LENGTH, CONTENT_RANGE, LOCATION, RANGE};
use http::{HeaderMap, StatusCode};
use prometheus_client::metrics::counter::Counter;
use shoal_api::ApiError;
use shoal_api::wire::DOCKER_CONTENT_DIGEST;
use shoal_core::{ContentRange, Digest, ErrorCode, Name};
use shoal_registry_server::{Query, RegistryError};

use crate::metrics::counted;
use crate::state::AppState;
use crate::upstream::UploadHandle;

/// Names the upload session in every upload response.
const DOCKER_UPLOAD_UUID: &str = "docker-upload-uuid";

/// `POST /v2/<name>/blobs/uploads/`.
pub async fn start(
    state: &AppState,
    name: &Name,
    query: &Query,
    client: Option<IpAddr>,
    body: Body,
) -> Result<Response, RegistryError> {
    if let (Some(mount), Some(from)) = (query.get("mount"), query.get("from"))
        && let Some(response) = mount_blob(state, name, mount, from).await?
    {
        return Ok(response);
    }
    if let Some(digest) = query.get("digest") {
        let digest = Digest::parse(digest)?;
        let body = upstream_body(body, state.metrics.blob_bytes_in.clone());
        state
            .upstreams
            .put_blob(&digest, name, client, body)
            .await?;
        return Ok(created(name, &digest));
    }
    let handle = state.upstreams.start_session(name, client).await?;
    Ok(progress(StatusCode::ACCEPTED, name, &handle, 0))
}

/// Cross-repository mount: content is addressed by digest alone, so the blob is "mounted" when
/// its owning origin has it. `None` (a fresh session follows) when the digest or source name is
/// malformed or the blob is absent, as the distribution spec prescribes.
async fn mount_blob(
    state: &AppState,
    name: &Name,
    mount: &str,
    from: &str,
) -> Result<Option<Response>, RegistryError> {
    let (Ok(digest), Ok(from)) = (Digest::parse(mount), Name::parse(from)) else {
        return Ok(None);
    };
    let present = state
        .upstreams
        .read_blob(&digest, |origin| {
            let from = &from;
            async move { origin.stat_blob(&digest, Some(from)).await }
        })
        .await?;
    Ok(present.map(|_| created(name, &digest)))
}

/// `PATCH /v2/<name>/blobs/uploads/<id>`: appends the body (chunked or with a length).
pub async fn patch(
    state: &AppState,
    name: &Name,
    id: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, RegistryError> {
    let handle = parse_handle(id)?;
    let (origin, origin_id) = state
        .upstreams
        .session(&handle)
        .ok_or_else(unknown_upload)?;
    let span = chunk_span(headers)?;
    let body = upstream_body(body, state.metrics.blob_bytes_in.clone());
    let length = origin
        .patch_upload(
            origin_id,
            Some(name),
            span.map(|(first, _)| first),
            span.map(|(_, length)| length),
            body,
        )
        .await
        .map_err(upload_error)?;
    Ok(progress(StatusCode::ACCEPTED, name, &handle, length))
}

/// `PUT /v2/<name>/blobs/uploads/<id>?digest=D`: commits, with an optional final chunk.
pub async fn commit(
    state: &AppState,
    name: &Name,
    id: &str,
    query: &Query,
    body: Body,
) -> Result<Response, RegistryError> {
    let handle = parse_handle(id)?;
    let (origin, origin_id) = state
        .upstreams
        .session(&handle)
        .ok_or_else(unknown_upload)?;
    let digest = match query.get("digest").map(Digest::parse) {
        Some(Ok(digest)) => digest,
        refused => {
            // A commit that cannot succeed closes the session, as every failed commit does (the
            // origin refuses the cancel when the session is another repository's).
            if let Err(error) = origin.cancel_upload(origin_id, Some(name)).await {
                tracing::debug!(%error, "closing the session of a commit without a valid digest");
            }
            return Err(match refused {
                Some(Err(error)) => error.into(),
                _ => RegistryError::new(
                    ErrorCode::DigestInvalid,
                    "the digest query parameter is required to complete an upload",
                ),
            });
        }
    };
    // Most clients PATCH everything and commit with an empty body; don't open a stream for it.
    let body = (body.size_hint().exact() != Some(0))
        .then(|| upstream_body(body, state.metrics.blob_bytes_in.clone()));
    origin
        .commit_upload(origin_id, &digest, Some(name), body)
        .await
        .map_err(upload_error)?;
    Ok(created(name, &digest))
}

/// `GET /v2/<name>/blobs/uploads/<id>`: how much the session holds, so a client can resume.
pub async fn status(state: &AppState, name: &Name, id: &str) -> Result<Response, RegistryError> {
    let handle = parse_handle(id)?;
    let (origin, origin_id) = state
        .upstreams
        .session(&handle)
        .ok_or_else(unknown_upload)?;
    let length = origin
        .upload_status(origin_id, Some(name))
        .await
        .map_err(upload_error)?;
    Ok(progress(StatusCode::NO_CONTENT, name, &handle, length))
}

/// `DELETE /v2/<name>/blobs/uploads/<id>`.
pub async fn cancel(state: &AppState, name: &Name, id: &str) -> Result<Response, RegistryError> {
    let handle = parse_handle(id)?;
    let (origin, origin_id) = state
        .upstreams
        .session(&handle)
        .ok_or_else(unknown_upload)?;
    origin
        .cancel_upload(origin_id, Some(name))
        .await
        .map_err(upload_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Where a `PATCH` chunk claims to start and how long it is, from its optional
/// `Content-Range: a-b`. The origin checks both against the session and the body atomically
/// (416, nothing appended, when either is off); here only the headers' own consistency is
/// checked: a `Content-Length` sent alongside must equal the span's length (416 too).
fn chunk_span(headers: &HeaderMap) -> Result<Option<(u64, u64)>, RegistryError> {
    let Some(value) = headers.get(CONTENT_RANGE) else {
        return Ok(None);
    };
    let range = value
        .to_str()
        .ok()
        .and_then(|text| ContentRange::parse(text).ok())
        .ok_or_else(|| {
            RegistryError::new(ErrorCode::RangeInvalid, "malformed Content-Range header")
        })?;
    if let Some(length) = headers.get(CONTENT_LENGTH) {
        let length: Option<u64> = length.to_str().ok().and_then(|text| text.parse().ok());
        if length != Some(range.len()) {
            return Err(RegistryError::new(
                ErrorCode::RangeInvalid,
                format!(
                    "Content-Length does not match Content-Range {}-{} ({} bytes)",
                    range.first,
                    range.last,
                    range.len()
                ),
            ));
        }
    }
    Ok(Some((range.first, range.len())))
}

/// The request body as a stream to the origin, counted as blob bytes in.
fn upstream_body(body: Body, counter: Counter) -> reqwest::Body {
    reqwest::Body::wrap_stream(counted(body.into_data_stream(), counter))
}

/// `201 Created` for a blob now stored under `digest`.
fn created(name: &Name, digest: &Digest) -> Response {
    let headers = [
        (LOCATION.as_str(), format!("/v2/{name}/blobs/{digest}")),
        (DOCKER_CONTENT_DIGEST, digest.to_string()),
    ];
    (StatusCode::CREATED, headers).into_response()
}

/// A session's progress: where to send the next request and which bytes it holds.
fn progress(status: StatusCode, name: &Name, handle: &UploadHandle, length: u64) -> Response {
    let headers = [
        (
            LOCATION.as_str(),
            format!("/v2/{name}/blobs/uploads/{handle}"),
        ),
        (RANGE.as_str(), held_range(length)),
        (DOCKER_UPLOAD_UUID, handle.to_string()),
    ];
    (status, headers).into_response()
}

/// The `Range` value for a session holding `length` bytes: `0-<length-1>`. An empty session also
/// reports `0-0`, exactly as the distribution registry does; clients resume from the end of the
/// range and the spec has no notation for "nothing yet", so every client copes with it.
fn held_range(length: u64) -> String {
    format!("0-{}", length.saturating_sub(1))
}

fn parse_handle(id: &str) -> Result<UploadHandle, RegistryError> {
    UploadHandle::parse(id).ok_or_else(unknown_upload)
}

fn unknown_upload() -> RegistryError {
    RegistryError::new(ErrorCode::BlobUploadUnknown, "upload session is unknown")
}

/// A session the origin no longer knows (expired, committed, cancelled) is an unknown upload,
/// whatever code the 404 carried.
fn upload_error(error: ApiError) -> RegistryError {
    match error {
        ApiError::Remote { status: 404, .. } => unknown_upload(),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(pairs: &[(http::HeaderName, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.clone(), HeaderValue::from_static(value)))
            .collect()
    }

    #[test]
    fn held_range_follows_the_distribution_registry() {
        assert_eq!(held_range(0), "0-0");
        assert_eq!(held_range(1), "0-0");
        assert_eq!(held_range(1_049_181), "0-1049180");
    }

    #[test]
    fn chunks_without_content_range_append_anywhere() {
        let chunked = headers(&[]);
        assert_eq!(chunk_span(&chunked).unwrap(), None);
        let sized = headers(&[(CONTENT_LENGTH, "4198400")]);
        assert_eq!(chunk_span(&sized).unwrap(), None);
    }

    #[test]
    fn content_range_gives_the_expected_offset_and_length() {
        let h = headers(&[(CONTENT_RANGE, "100-199"), (CONTENT_LENGTH, "100")]);
        assert_eq!(chunk_span(&h).unwrap(), Some((100, 100)));
        // Without a length (chunked transfer) the origin counts the body against the span.
        let h = headers(&[(CONTENT_RANGE, "bytes 0-9/*")]);
        assert_eq!(chunk_span(&h).unwrap(), Some((0, 10)));
    }

    #[test]
    fn inconsistent_or_malformed_content_ranges_are_rejected() {
        let h = headers(&[(CONTENT_RANGE, "0-99"), (CONTENT_LENGTH, "99")]);
        assert_eq!(chunk_span(&h).unwrap_err().code(), ErrorCode::RangeInvalid);
        for bad in ["9-0", "abc", "0-", "-5"] {
            let h = headers(&[(CONTENT_RANGE, bad)]);
            assert_eq!(
                chunk_span(&h).unwrap_err().code(),
                ErrorCode::RangeInvalid,
                "{bad}"
            );
        }
    }

    #[test]
    fn progress_responses_name_the_session() {
        let name = Name::parse("test/viaproxy").unwrap();
        let handle = UploadHandle::parse("0-705ab9c4-ab97-4585-8162-cee2026a4a20").unwrap();
        let response = progress(StatusCode::ACCEPTED, &name, &handle, 4_198_400);
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let h = response.headers();
        assert_eq!(
            h[LOCATION],
            "/v2/test/viaproxy/blobs/uploads/0-705ab9c4-ab97-4585-8162-cee2026a4a20"
        );
        assert_eq!(h[RANGE], "0-4198399");
        assert_eq!(
            h[DOCKER_UPLOAD_UUID],
            "0-705ab9c4-ab97-4585-8162-cee2026a4a20"
        );
    }

    #[test]
    fn created_responses_point_at_the_blob() {
        let name = Name::parse("test/smoke").unwrap();
        let digest = Digest::of(b"layer");
        let response = created(&name, &digest);
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(
            response.headers()[LOCATION],
            format!("/v2/test/smoke/blobs/{digest}").as_str()
        );
        assert_eq!(
            response.headers()[DOCKER_CONTENT_DIGEST],
            digest.to_string().as_str()
        );
    }

    #[test]
    fn origin_404s_on_sessions_are_unknown_uploads() {
        let error = ApiError::Remote {
            service: "origin".into(),
            status: 404,
            code: Some(ErrorCode::BlobUnknown),
            message: String::new(),
        };
        assert_eq!(upload_error(error).code(), ErrorCode::BlobUploadUnknown);
        assert_eq!(
            parse_handle("not-ours").unwrap_err().code(),
            ErrorCode::BlobUploadUnknown
        );
    }
}
