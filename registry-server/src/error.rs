//! [`RegistryError`]: the one place a failed Registry V2 request becomes a response, the spec's
//! `{"errors":[{code,message,detail}]}` body with the code's HTTP status. Each component maps its
//! own failures into it; path errors and the internal API's errors map here.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_RANGE, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, StatusCode};
use serde_json::{Value, json};
use shoal_api::ApiError;
use shoal_core::{Digest, DigestError, ErrorCode, NameError, Reference, V2PathError, error_body};

/// Why a Registry V2 request failed: a spec error code, a message and the optional `detail`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct RegistryError {
    code: ErrorCode,
    message: String,
    detail: Option<Value>,
    /// For a 416: the blob's length, named in `Content-Range: bytes */LEN` (RFC 9110 §15.5.17)
    /// so the client can retry.
    unsatisfiable_length: Option<u64>,
    /// For a 401: the `WWW-Authenticate` challenge telling the client how to log in.
    challenge: Option<String>,
}

impl RegistryError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RegistryError {
            code,
            message: message.into(),
            detail: None,
            unsatisfiable_length: None,
            challenge: None,
        }
    }

    /// Attaches the `WWW-Authenticate` challenge of a 401.
    pub fn with_challenge(mut self, challenge: String) -> Self {
        self.challenge = Some(challenge);
        self
    }

    /// Attaches the spec's free-form `detail` (e.g. the digest a manifest is missing).
    pub fn with_detail(mut self, detail: Value) -> Self {
        self.detail = Some(detail);
        self
    }

    /// The blob exists nowhere this registry can reach.
    pub fn blob_unknown(digest: &Digest) -> Self {
        RegistryError::new(ErrorCode::BlobUnknown, format!("blob {digest} is unknown"))
            .with_detail(json!({ "digest": digest.to_string() }))
    }

    pub fn manifest_unknown(reference: &Reference) -> Self {
        RegistryError::new(
            ErrorCode::ManifestUnknown,
            format!("manifest {reference} is unknown"),
        )
    }

    /// A range past the end of a `length`-byte blob.
    pub fn range_unsatisfiable(length: u64) -> Self {
        RegistryError {
            unsatisfiable_length: Some(length),
            ..RegistryError::new(
                ErrorCode::RangeInvalid,
                format!("range not satisfiable for a {length}-byte blob"),
            )
        }
    }

    /// A method this registry does not serve on the endpoint: 405.
    pub fn unsupported(method: &Method) -> Self {
        RegistryError::new(
            ErrorCode::Unsupported,
            format!("method {method} is not supported on this endpoint"),
        )
    }

    /// A server-side failure: the client should try again or elsewhere.
    pub fn unavailable(error: impl std::fmt::Display) -> Self {
        RegistryError::new(ErrorCode::Unavailable, error.to_string())
    }

    /// The Registry V2 error code this failure is reported with.
    pub fn code(&self) -> ErrorCode {
        self.code
    }
}

impl From<V2PathError> for RegistryError {
    fn from(error: V2PathError) -> Self {
        RegistryError::new(error.code(), error.to_string())
    }
}

impl From<DigestError> for RegistryError {
    fn from(error: DigestError) -> Self {
        RegistryError::new(ErrorCode::DigestInvalid, error.to_string())
    }
}

impl From<NameError> for RegistryError {
    fn from(error: NameError) -> Self {
        RegistryError::new(ErrorCode::NameInvalid, error.to_string())
    }
}

/// The origin or build-index refused the request or could not be reached: its code passes
/// through, and an unsatisfiable range keeps the blob length the origin named.
impl From<ApiError> for RegistryError {
    fn from(error: ApiError) -> Self {
        let unsatisfiable_length = match &error {
            ApiError::RangeNotSatisfiable { length, .. } => *length,
            _ => None,
        };
        RegistryError {
            unsatisfiable_length,
            ..RegistryError::new(error.code(), error.to_string())
        }
    }
}

/// Logged at warn for server errors and debug for rejections.
impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let code = self.code;
        let status =
            StatusCode::from_u16(code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(error = self.message, code = code.as_str(), "request failed");
        } else {
            tracing::debug!(
                error = self.message,
                code = code.as_str(),
                "request rejected"
            );
        }
        let mut response = Response::new(Body::from(error_body(code, &self.message, self.detail)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(length) = self.unsatisfiable_length
            && let Ok(value) = HeaderValue::from_str(&format!("bytes */{length}"))
        {
            headers.insert(CONTENT_RANGE, value);
        }
        if let Some(challenge) = self.challenge
            && let Ok(value) = HeaderValue::from_str(&challenge)
        {
            headers.insert(WWW_AUTHENTICATE, value);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;
    use http_body_util::BodyExt;

    use super::*;

    async fn parts(error: RegistryError) -> (StatusCode, HeaderMap, Value) {
        let response = error.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn every_code_answers_its_status_with_the_spec_body() {
        for code in ErrorCode::ALL {
            let (status, headers, body) = parts(RegistryError::new(code, "why")).await;
            assert_eq!(status.as_u16(), code.status(), "{code}");
            assert_eq!(headers[CONTENT_TYPE], "application/json");
            assert_eq!(
                body,
                json!({"errors": [{"code": code.as_str(), "message": "why"}]})
            );
        }
    }

    #[tokio::test]
    async fn unknown_blobs_are_404_with_the_digest() {
        let digest = Digest::of(b"x");
        let (status, _, body) = parts(RegistryError::blob_unknown(&digest)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["errors"][0]["code"], "BLOB_UNKNOWN");
        assert_eq!(body["errors"][0]["detail"]["digest"], digest.to_string());
    }

    #[tokio::test]
    async fn details_are_carried() {
        let error = RegistryError::new(ErrorCode::ManifestBlobUnknown, "blob missing")
            .with_detail(json!({ "digest": "sha256:aa" }));
        let (status, _, body) = parts(error).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body,
            json!({"errors": [{"code": "MANIFEST_BLOB_UNKNOWN", "message": "blob missing",
                               "detail": {"digest": "sha256:aa"}}]})
        );
    }

    #[tokio::test]
    async fn unsatisfiable_ranges_name_the_length() {
        let (status, headers, body) = parts(RegistryError::range_unsatisfiable(42)).await;
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(headers[CONTENT_RANGE], "bytes */42");
        assert_eq!(body["errors"][0]["code"], "RANGE_INVALID");
        // Other errors name no length.
        let (_, headers, _) = parts(RegistryError::new(ErrorCode::RangeInvalid, "bad")).await;
        assert!(headers.get(CONTENT_RANGE).is_none());
    }

    #[tokio::test]
    async fn unsupported_methods_are_405() {
        let (status, _, body) = parts(RegistryError::unsupported(&Method::PATCH)).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body["errors"][0]["code"], "UNSUPPORTED");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("PATCH")
        );
    }

    #[test]
    fn path_digest_and_name_errors_keep_their_codes() {
        let error = shoal_core::parse_v2_path("/v2/UPPER/blobs/uploads/").unwrap_err();
        assert_eq!(RegistryError::from(error).code(), ErrorCode::NameInvalid);
        let error = Digest::parse("sha256:nope").unwrap_err();
        assert_eq!(RegistryError::from(error).code(), ErrorCode::DigestInvalid);
        let error = shoal_core::Name::parse("UPPER").unwrap_err();
        assert_eq!(RegistryError::from(error).code(), ErrorCode::NameInvalid);
    }

    #[tokio::test]
    async fn internal_api_errors_pass_their_code_through() {
        let error = ApiError::Remote {
            service: "origin".into(),
            status: 404,
            code: Some(ErrorCode::BlobUploadUnknown),
            message: "no such upload".into(),
        };
        let (status, _, body) = parts(error.into()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["errors"][0]["code"], "BLOB_UPLOAD_UNKNOWN");

        let error = ApiError::RangeNotSatisfiable {
            service: "origin".into(),
            length: Some(42),
        };
        let (status, headers, _) = parts(error.into()).await;
        assert_eq!(status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(headers[CONTENT_RANGE], "bytes */42");

        let error = ApiError::Protocol {
            service: "build-index".into(),
            reason: "garbage".into(),
        };
        let (status, _, body) = parts(error.into()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["errors"][0]["code"], "UNAVAILABLE");
    }
}
