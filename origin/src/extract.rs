//! Request parsing: path parameters and query strings become `Digest`, `UploadId` and `Name`
//! values (with JSON errors, never axum's plain-text rejections), and request bodies become
//! streams.

use std::io;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use shoal_core::{Digest, ErrorCode, Name};
use shoal_storage::{ByteStream, UploadId};

use crate::errors::ApiError;

/// The `{digest}` path parameter.
pub(crate) struct DigestParam(pub Digest);

impl<S: Send + Sync> FromRequestParts<S> for DigestParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let text = path_param(parts, state, ErrorCode::DigestInvalid).await?;
        Ok(DigestParam(Digest::parse(&text)?))
    }
}

/// The `{id}` path parameter of an upload. Text that is not an upload id names no upload.
pub(crate) struct UploadParam(pub UploadId);

impl<S: Send + Sync> FromRequestParts<S> for UploadParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let text = path_param(parts, state, ErrorCode::BlobUploadUnknown).await?;
        Ok(UploadParam(UploadId::parse(&text)?))
    }
}

/// The route's single path parameter; undecodable text is reported with `code`.
async fn path_param<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
    code: ErrorCode,
) -> Result<String, ApiError> {
    let Path(text) = Path::<String>::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::new(code, e.body_text()))?;
    Ok(text)
}

#[derive(Deserialize)]
struct RawQuery {
    namespace: Option<String>,
    digest: Option<String>,
    #[serde(default)]
    replica: bool,
}

/// The query parameters the origin understands: `namespace` (the repository, used to route
/// write-back), on commit `digest`, and on a whole-blob `PUT` from a peer origin `replica`.
pub(crate) struct Params {
    pub namespace: Option<Name>,
    digest: Option<String>,
    /// The blob is a replica sent by the origin that committed it: store it, don't replicate.
    pub replica: bool,
}

impl Params {
    /// The `digest` parameter a commit requires.
    pub(crate) fn digest(&self) -> Result<Digest, ApiError> {
        match &self.digest {
            Some(text) => Ok(Digest::parse(text)?),
            None => Err(ApiError::new(
                ErrorCode::DigestInvalid,
                "the digest query parameter is required",
            )),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Query(raw) = Query::<RawQuery>::try_from_uri(&parts.uri)
            .map_err(|e| ApiError::new(ErrorCode::NameInvalid, e.body_text()))?;
        let namespace = raw
            .namespace
            .filter(|ns| !ns.is_empty())
            .map(|ns| Name::parse(&ns))
            .transpose()?;
        Ok(Params {
            namespace,
            digest: raw.digest,
            replica: raw.replica,
        })
    }
}

/// A request body as a stream of chunks, read as the client sends them.
pub(crate) fn body_stream(body: Body) -> ByteStream {
    body.into_data_stream().map_err(io::Error::other).boxed()
}
