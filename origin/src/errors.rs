//! The one place where failures become HTTP responses: a JSON body `{"code","message"}` with the
//! Registry V2 code's status (`docs/internal-api.md`). Server-side failures are logged here.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use shoal_api::ErrorBody;
use shoal_api::wire::UPLOAD_OFFSET;
use shoal_backends::BackendError;
use shoal_core::{Digest, DigestError, ErrorCode, NameError, RangeError};
use shoal_storage::StoreError;

/// A failed request: what the client is told, plus an optional header (offsets, ranges).
#[derive(Debug)]
pub(crate) struct ApiError {
    code: ErrorCode,
    message: String,
    header: Option<(HeaderName, String)>,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            header: None,
        }
    }

    fn with_header(mut self, name: HeaderName, value: String) -> Self {
        self.header = Some((name, value));
        self
    }

    /// A server-side failure; logged, and reported as UNAVAILABLE so callers try again or elsewhere.
    fn internal(error: &dyn std::error::Error) -> Self {
        tracing::error!(error = %shoal_core::chain(error), "request failed");
        ApiError::new(ErrorCode::Unavailable, error.to_string())
    }

    pub(crate) fn blob_unknown(digest: &Digest) -> Self {
        ApiError::new(ErrorCode::BlobUnknown, format!("blob {digest} is unknown"))
    }

    /// 416 for a range that does not fit a blob of `len` bytes.
    pub(crate) fn range_not_satisfiable(len: u64, message: impl Into<String>) -> Self {
        ApiError::new(ErrorCode::RangeInvalid, message)
            .with_header(header::CONTENT_RANGE, format!("bytes */{len}"))
    }

    /// A pull-through of `digest` failed; nothing was stored. A full disk says so plainly: the
    /// caller may find the blob on another origin, and this one serves it again once space is
    /// freed.
    pub(crate) fn pull_through_failed(digest: &Digest, error: &StoreError) -> Self {
        match error {
            StoreError::DigestMismatch { .. } => ApiError::backend_corrupt(digest, error),
            _ if error.is_out_of_space() => ApiError::new(
                ErrorCode::Unavailable,
                format!(
                    "this origin has no disk space to store {digest} from the backend: {error}"
                ),
            ),
            _ => ApiError::new(
                ErrorCode::Unavailable,
                format!("pull-through of {digest} failed: {error}"),
            ),
        }
    }

    /// The backend's copy of a blob does not match its digest; nothing was stored.
    pub(crate) fn backend_corrupt(digest: &Digest, error: &StoreError) -> Self {
        tracing::error!(%digest, %error, "backend copy of blob is corrupt");
        ApiError::new(
            ErrorCode::Unavailable,
            format!("the backend copy of {digest} is corrupt: {error}"),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match &error {
            StoreError::DigestMismatch { .. } => {
                ApiError::new(ErrorCode::DigestInvalid, error.to_string())
            }
            StoreError::OffsetMismatch { actual, .. } => {
                ApiError::new(ErrorCode::RangeInvalid, error.to_string())
                    .with_header(HeaderName::from_static(UPLOAD_OFFSET), actual.to_string())
            }
            StoreError::UploadUnknown { .. } => {
                ApiError::new(ErrorCode::BlobUploadUnknown, error.to_string())
            }
            StoreError::ChunkLengthMismatch { .. } => {
                ApiError::new(ErrorCode::RangeInvalid, error.to_string())
            }
            StoreError::TooManyUploads { .. } => {
                ApiError::new(ErrorCode::TooManyRequests, error.to_string())
            }
            StoreError::Body { .. } => {
                ApiError::new(ErrorCode::BlobUploadInvalid, error.to_string())
            }
            // The piece variants come from partial (p2p) downloads, which the origin's HTTP API
            // never performs; should one surface, it is a server fault.
            StoreError::Io(_)
            | StoreError::Corrupt { .. }
            | StoreError::PieceMismatch { .. }
            | StoreError::PieceOutOfRange { .. }
            | StoreError::PieceUnavailable { .. }
            | StoreError::Incomplete { .. }
            | StoreError::MetainfoMismatch { .. } => ApiError::internal(&error),
        }
    }
}

impl From<BackendError> for ApiError {
    fn from(error: BackendError) -> Self {
        match &error {
            BackendError::RangeNotSatisfiable { len, .. } => {
                ApiError::range_not_satisfiable(*len, error.to_string())
            }
            // A remote backend that cannot be reached is a transient outage, worth a retry.
            BackendError::Remote { .. } | BackendError::ObjectStore { .. } => {
                tracing::warn!(error = %shoal_core::chain(&error), "backend unavailable");
                ApiError::new(ErrorCode::Unavailable, error.to_string())
            }
            BackendError::InvalidKey { .. }
            | BackendError::Io(_)
            | BackendError::Body { .. }
            | BackendError::LengthMismatch { .. }
            | BackendError::NoRoute { .. }
            | BackendError::Unsupported { .. } => ApiError::internal(&error),
        }
    }
}

/// The write-back queue could not record a commit: the push is not acknowledged.
impl From<shoal_jobs::JobsError> for ApiError {
    fn from(error: shoal_jobs::JobsError) -> Self {
        ApiError::internal(&error)
    }
}

impl From<DigestError> for ApiError {
    fn from(error: DigestError) -> Self {
        ApiError::new(ErrorCode::DigestInvalid, error.to_string())
    }
}

impl From<NameError> for ApiError {
    fn from(error: NameError) -> Self {
        ApiError::new(ErrorCode::NameInvalid, error.to_string())
    }
}

impl From<RangeError> for ApiError {
    fn from(error: RangeError) -> Self {
        match error {
            RangeError::Unsatisfiable { len } => {
                ApiError::range_not_satisfiable(len, error.to_string())
            }
            RangeError::Malformed { .. } => {
                ApiError::new(ErrorCode::RangeInvalid, error.to_string())
            }
        }
    }
}

/// As the client reads it: `CODE: message`.
impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody::new(self.code, self.message).to_json();
        let mut response = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response();
        if let Some((name, value)) = self.header
            && let Ok(value) = HeaderValue::try_from(value)
        {
            response.headers_mut().insert(name, value);
        }
        response
    }
}
