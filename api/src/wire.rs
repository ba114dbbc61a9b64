//! Header names, path encoding and the error body shared by internal API servers and clients.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use shoal_core::ErrorCode;

/// Identifies an upload session on an origin.
pub const UPLOAD_ID: &str = "upload-id";
/// Bytes received so far by an upload (responses), or where a chunk must start (PATCH requests).
pub const UPLOAD_OFFSET: &str = "upload-offset";
/// On a PATCH: the exact length of the chunk, which must start at `Upload-Offset` (from a
/// Registry V2 `Content-Range`); a body of another length appends nothing (416).
pub const CHUNK_LENGTH: &str = "chunk-length";
/// On `POST /uploads`: the address of the client a proxy opens the session for, so the origin
/// bounds sessions per real client. Trusted only from `uploads.trusted_forwarders`.
pub const CLIENT_ADDR: &str = "shoal-client-addr";
/// The digest of the content served or committed, as in Registry V2.
pub const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// Characters left alone when a repository name becomes a path segment or query value; `/` is encoded so
/// a name stays one segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_');

/// Percent-encodes `s` as a single path segment or query value.
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// The JSON error body of every internal API: `{"code":"BLOB_UNKNOWN","message":"…"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("ErrorBody always serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_keeps_a_repository_in_one_segment() {
        assert_eq!(encode("library/ubuntu"), "library%2Fubuntu");
        assert_eq!(encode("a.b-c_d"), "a.b-c_d");
    }

    #[test]
    fn error_body_roundtrips() {
        let body = ErrorBody::new(ErrorCode::BlobUnknown, "no such blob");
        let json = body.to_json();
        assert_eq!(json, r#"{"code":"BLOB_UNKNOWN","message":"no such blob"}"#);
        let back: ErrorBody = serde_json::from_str(&json).unwrap();
        assert_eq!(back.code, ErrorCode::BlobUnknown);
    }
}
