//! The one place where a failed Registry V2 request becomes a response: the spec's
//! `{"errors":[{code,message,detail}]}` body with the code's HTTP status. Runtimes fall back to
//! their upstream registry on these answers, so they must be prompt and accurate.

use axum::response::{IntoResponse, Response};
use serde_json::Value;
use shoal_api::ApiError;
use shoal_core::{Digest, ErrorCode, NameError, Reference, V2PathError};
use shoal_service::http::registry_error;

/// Why a Registry V2 request failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The path is not a valid Registry V2 route.
    #[error(transparent)]
    Path(#[from] V2PathError),
    /// The build-index refused the tag lookup or could not be reached.
    #[error(transparent)]
    BuildIndex(#[from] ApiError),
    /// The agent itself answers with this code.
    #[error("{message}")]
    Rejected {
        code: ErrorCode,
        message: String,
        detail: Option<Value>,
        /// For a 416: the blob's length, named in `Content-Range: bytes */LEN`.
        length: Option<u64>,
    },
}

impl AgentError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        AgentError::Rejected {
            code,
            message: message.into(),
            detail: None,
            length: None,
        }
    }

    /// The blob exists nowhere (not here, not on any peer or origin).
    pub fn blob_unknown(digest: &Digest) -> Self {
        AgentError::Rejected {
            code: ErrorCode::BlobUnknown,
            message: format!("blob {digest} is unknown"),
            detail: Some(serde_json::json!({ "digest": digest.to_string() })),
            length: None,
        }
    }

    pub fn manifest_unknown(reference: &Reference) -> Self {
        AgentError::new(
            ErrorCode::ManifestUnknown,
            format!("manifest {reference} is unknown"),
        )
    }

    /// A range past the end of a `length`-byte blob.
    pub fn range_unsatisfiable(length: u64) -> Self {
        AgentError::Rejected {
            code: ErrorCode::RangeInvalid,
            message: format!("range not satisfiable for a {length}-byte blob"),
            detail: None,
            length: Some(length),
        }
    }

    /// The peer-to-peer engine or the local store failed: the runtime should try elsewhere.
    pub fn unavailable(error: impl std::fmt::Display) -> Self {
        AgentError::new(ErrorCode::Unavailable, error.to_string())
    }

    /// The Registry V2 error code this failure is reported with.
    pub fn code(&self) -> ErrorCode {
        match self {
            AgentError::Path(error) => error.code(),
            AgentError::BuildIndex(error) => error.code(),
            AgentError::Rejected { code, .. } => *code,
        }
    }
}

impl From<NameError> for AgentError {
    fn from(error: NameError) -> Self {
        AgentError::new(ErrorCode::NameInvalid, error.to_string())
    }
}

impl IntoResponse for AgentError {
    fn into_response(self) -> Response {
        let (detail, length) = match &self {
            AgentError::Rejected { detail, length, .. } => (detail.clone(), *length),
            _ => (None, None),
        };
        registry_error(self.code(), &self.to_string(), detail, length)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use http::StatusCode;
    use http::header::{CONTENT_RANGE, CONTENT_TYPE};

    use super::*;

    async fn parts(error: AgentError) -> (StatusCode, http::HeaderMap, Value) {
        let response = error.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn unknown_blobs_are_404_with_the_digest() {
        let digest = Digest::of(b"x");
        let (status, headers, body) = parts(AgentError::blob_unknown(&digest)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        assert_eq!(body["errors"][0]["code"], "BLOB_UNKNOWN");
        assert_eq!(body["errors"][0]["detail"]["digest"], digest.to_string());
    }

    #[tokio::test]
    async fn unsatisfiable_ranges_name_the_length() {
        let (status, headers, body) = parts(AgentError::range_unsatisfiable(42)).await;
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(headers[CONTENT_RANGE], "bytes */42");
        assert_eq!(body["errors"][0]["code"], "RANGE_INVALID");
    }

    #[tokio::test]
    async fn engine_failures_are_unavailable() {
        let (status, _, body) = parts(AgentError::unavailable("tracker down")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
        assert_eq!(body["errors"][0]["message"], "tracker down");
    }
}
