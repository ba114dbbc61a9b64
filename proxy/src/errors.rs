//! The one place where every failure of a Registry V2 request becomes a response: path errors,
//! internal API errors from the origin and build-index, and the proxy's own validation errors all
//! end up as the spec's `{"errors":[{code,message,detail}]}` body with the code's HTTP status.

use axum::response::{IntoResponse, Response};
use serde_json::Value;
use shoal_api::ApiError;
use shoal_core::{DigestError, ErrorCode, V2PathError};
use shoal_service::http::registry_error;

/// Why a Registry V2 request failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request path is not a valid Registry V2 route (bad name, digest, tag or upload id).
    #[error(transparent)]
    Path(#[from] V2PathError),
    /// The origin or build-index refused the request or could not be reached.
    #[error(transparent)]
    Upstream(#[from] ApiError),
    /// The proxy itself rejected the request.
    #[error("{message}")]
    Rejected {
        code: ErrorCode,
        message: String,
        detail: Option<Value>,
    },
}

impl ProxyError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProxyError::Rejected {
            code,
            message: message.into(),
            detail: None,
        }
    }

    /// Attaches the spec's free-form `detail` (e.g. the digest a manifest is missing).
    pub fn with_detail(self, detail: Value) -> Self {
        match self {
            ProxyError::Rejected { code, message, .. } => ProxyError::Rejected {
                code,
                message,
                detail: Some(detail),
            },
            other => other,
        }
    }

    /// The Registry V2 error code this failure is reported with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProxyError::Path(error) => error.code(),
            ProxyError::Upstream(error) => error.code(),
            ProxyError::Rejected { code, .. } => *code,
        }
    }
}

impl From<DigestError> for ProxyError {
    fn from(error: DigestError) -> Self {
        ProxyError::new(ErrorCode::DigestInvalid, error.to_string())
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let detail = match &self {
            ProxyError::Rejected { detail, .. } => detail.clone(),
            _ => None,
        };
        let length = match &self {
            ProxyError::Upstream(ApiError::RangeNotSatisfiable { length, .. }) => *length,
            _ => None,
        };
        registry_error(self.code(), &self.to_string(), detail, length)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use serde_json::json;

    use http::StatusCode;
    use http::header::{CONTENT_RANGE, CONTENT_TYPE};

    use super::*;

    async fn parts(error: ProxyError) -> (StatusCode, http::HeaderMap, Value) {
        let response = error.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn local_rejections_carry_code_message_and_detail() {
        let digest = "sha256:".to_owned() + &"a".repeat(64);
        let error = ProxyError::new(ErrorCode::ManifestBlobUnknown, "blob missing")
            .with_detail(json!({ "digest": digest }));
        let (status, headers, body) = parts(error).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        assert_eq!(
            body,
            json!({"errors": [{"code": "MANIFEST_BLOB_UNKNOWN", "message": "blob missing",
                               "detail": {"digest": digest}}]})
        );
    }

    #[tokio::test]
    async fn path_errors_use_their_own_code() {
        let error = shoal_core::parse_v2_path("/v2/UPPER/blobs/uploads/").unwrap_err();
        let (status, _, body) = parts(error.into()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["errors"][0]["code"], "NAME_INVALID");
    }

    #[tokio::test]
    async fn upstream_codes_pass_through() {
        let error = ApiError::Remote {
            service: "origin".into(),
            status: 404,
            code: Some(ErrorCode::BlobUploadUnknown),
            message: "no such upload".into(),
        };
        let (status, _, body) = parts(error.into()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["errors"][0]["code"], "BLOB_UPLOAD_UNKNOWN");
    }

    #[tokio::test]
    async fn unsatisfiable_ranges_name_the_blob_length() {
        let error = ApiError::RangeNotSatisfiable {
            service: "origin".into(),
            length: Some(42),
        };
        let (status, headers, body) = parts(error.into()).await;
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(headers[CONTENT_RANGE], "bytes */42");
        assert_eq!(body["errors"][0]["code"], "RANGE_INVALID");
    }

    #[tokio::test]
    async fn unreachable_upstreams_are_unavailable() {
        let error = ApiError::Protocol {
            service: "build-index".into(),
            reason: "garbage".into(),
        };
        let (status, _, body) = parts(error.into()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    }

    #[tokio::test]
    async fn garbage_digests_are_digest_invalid() {
        let error = shoal_core::Digest::parse("sha256:nope").unwrap_err();
        let (status, _, body) = parts(error.into()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["errors"][0]["code"], "DIGEST_INVALID");
    }
}
