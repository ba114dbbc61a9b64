//! Everything a build-index request can fail with, and the one place those failures become HTTP
//! responses: the Registry V2 error code's status with a `shoal_api::ErrorBody` JSON body.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use shoal_api::{ApiError, ErrorBody};
use shoal_backends::BackendError;
use shoal_core::{Digest, ErrorCode, NameError, TagError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Tag(#[from] TagError),
    /// The PUT body is not a digest (or not a short UTF-8 text at all).
    #[error("request body must be a manifest digest: {0}")]
    Digest(String),
    /// The `{repo}` or `{tag}` path segment cannot be decoded.
    #[error("invalid path: {0}")]
    PathInvalid(String),
    /// The `n` or `last` query parameter of a listing is malformed.
    #[error("invalid paging parameters: {0}")]
    PageInvalid(String),
    /// The tag's manifest is not on the origins.
    #[error("manifest {0} is not on the origins")]
    ManifestUnknown(Digest),
    #[error("manifest {digest} is invalid: {reason}")]
    ManifestInvalid { digest: Digest, reason: String },
    /// A blob or child manifest a manifest references is not on the origins.
    #[error("manifest {manifest} references {blob}, which is not on the origins")]
    BlobUnknown { manifest: Digest, blob: Digest },
    #[error("cannot check {digest} on origin {origin}: {source}")]
    OriginUnavailable {
        origin: String,
        digest: Digest,
        #[source]
        source: ApiError,
    },
    /// The origin served bytes that do not hash to the digest asked for.
    #[error("origin {origin} served content for {expected} that hashes to {actual}")]
    OriginCorrupt {
        origin: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("no origin is configured")]
    NoOrigins,
    #[error("tag {0} is unknown")]
    TagUnknown(String),
    #[error("repository {0} has no tags")]
    NameUnknown(String),
    #[error("{action} failed: {source}")]
    Backend {
        action: &'static str,
        #[source]
        source: BackendError,
    },
    /// A tag object in the backend does not hold a digest, or a record no record.
    #[error("stored object {key} is corrupt: {reason}")]
    CorruptEntry { key: String, reason: String },
    /// Garbage collection failed or refused (a blob delete of a referenced blob, say).
    #[error(transparent)]
    Gc(#[from] crate::gc::GcError),
    /// A job queue (pending tags, replication) could not be read or written.
    #[error("job queue: {0}")]
    Queue(#[from] shoal_jobs::JobsError),
    /// A retention run was asked for, but the config has no `retention` section.
    #[error("retention is not configured (config field `retention`)")]
    RetentionOff,
    /// The query of a retention run is malformed.
    #[error("invalid retention query: {0}")]
    RetentionQuery(String),
    /// A remote cluster's proxy refused or failed a replication step.
    #[error("replicating to {remote}: {step} failed: {reason}")]
    Remote {
        remote: String,
        step: String,
        reason: String,
    },
}

impl Error {
    /// For `map_err`: a backend operation, named by `action`, failed.
    pub(crate) fn backend(action: &'static str) -> impl FnOnce(BackendError) -> Error {
        move |source| Error::Backend { action, source }
    }

    /// The Registry V2 code (and so the HTTP status) this failure is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Name(_) | Error::PathInvalid(_) => ErrorCode::NameInvalid,
            Error::Tag(_) => ErrorCode::TagInvalid,
            Error::Digest(_) => ErrorCode::DigestInvalid,
            // The spec has no pagination code (distribution's PAGINATION_NUMBER_INVALID is not
            // in the OCI list); SIZE_INVALID is the 400 that comes closest: a bad page size.
            Error::PageInvalid(_) => ErrorCode::SizeInvalid,
            Error::ManifestUnknown(_) | Error::TagUnknown(_) => ErrorCode::ManifestUnknown,
            Error::ManifestInvalid { .. } => ErrorCode::ManifestInvalid,
            Error::BlobUnknown { .. } => ErrorCode::ManifestBlobUnknown,
            Error::NameUnknown(_) => ErrorCode::NameUnknown,
            Error::Gc(error) => error.code(),
            Error::RetentionOff | Error::RetentionQuery(_) => ErrorCode::Unsupported,
            // Our own dependencies failed, not the request: 503 tells callers to retry later.
            Error::OriginUnavailable { .. }
            | Error::OriginCorrupt { .. }
            | Error::NoOrigins
            | Error::Backend { .. }
            | Error::CorruptEntry { .. }
            | Error::Queue(_)
            | Error::Remote { .. } => ErrorCode::Unavailable,
        }
    }

    /// The message with every underlying cause appended, skipping causes it already quotes
    /// (HTTP client errors keep the interesting part, like "connection refused", in a source).
    fn full_message(&self) -> String {
        let mut message = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        message
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let code = self.code();
        let message = self.full_message();
        if code == ErrorCode::Unavailable {
            tracing::warn!(error = %message, "request failed");
        } else {
            tracing::debug!(error = %message, "request refused");
        }
        let status =
            StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody::new(code, message).to_json();
        (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn responses_carry_the_code_status_and_message() {
        let digest = Digest::of(b"x");
        let response = Error::BlobUnknown {
            manifest: digest,
            blob: digest,
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: ErrorBody = serde_json::from_slice(&body).unwrap();
        assert_eq!(body.code, ErrorCode::ManifestBlobUnknown);
        assert!(
            body.message.contains(&digest.to_string()),
            "{}",
            body.message
        );
    }
}
