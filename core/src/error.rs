//! Registry V2 error codes (distribution spec) with their HTTP statuses, and the JSON error body
//! every Registry V2 endpoint answers with.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A Registry V2 error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    TagInvalid,
    RangeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    Unavailable,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [ErrorCode; 17] = [
        ErrorCode::BlobUnknown,
        ErrorCode::BlobUploadInvalid,
        ErrorCode::BlobUploadUnknown,
        ErrorCode::DigestInvalid,
        ErrorCode::ManifestBlobUnknown,
        ErrorCode::ManifestInvalid,
        ErrorCode::ManifestUnknown,
        ErrorCode::NameInvalid,
        ErrorCode::NameUnknown,
        ErrorCode::SizeInvalid,
        ErrorCode::TagInvalid,
        ErrorCode::RangeInvalid,
        ErrorCode::Unauthorized,
        ErrorCode::Denied,
        ErrorCode::Unsupported,
        ErrorCode::TooManyRequests,
        ErrorCode::Unavailable,
    ];

    /// The wire form, e.g. `BLOB_UNKNOWN`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }

    /// The code for a wire string; exact match, as the spec's codes are upper case.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|code| code.as_str() == s)
    }

    /// The HTTP status a response carrying this code uses.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown => 404,
            // Raised when a pushed manifest references missing content: the push is at fault.
            ErrorCode::ManifestBlobUnknown => 400,
            ErrorCode::BlobUploadInvalid
            | ErrorCode::DigestInvalid
            | ErrorCode::ManifestInvalid
            | ErrorCode::NameInvalid
            | ErrorCode::SizeInvalid
            | ErrorCode::TagInvalid => 400,
            ErrorCode::RangeInvalid => 416,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Denied => 403,
            ErrorCode::Unsupported => 405,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::Unavailable => 503,
        }
    }

    /// A default human-readable message for the code.
    pub fn message(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "blob unknown to registry",
            ErrorCode::BlobUploadInvalid => "blob upload invalid",
            ErrorCode::BlobUploadUnknown => "blob upload unknown to registry",
            ErrorCode::DigestInvalid => "provided digest did not match uploaded content",
            ErrorCode::ManifestBlobUnknown => {
                "manifest references a blob or manifest unknown to registry"
            }
            ErrorCode::ManifestInvalid => "manifest invalid",
            ErrorCode::ManifestUnknown => "manifest unknown",
            ErrorCode::NameInvalid => "invalid repository name",
            ErrorCode::NameUnknown => "repository name not known to registry",
            ErrorCode::SizeInvalid => "provided length did not match content length",
            ErrorCode::TagInvalid => "invalid tag",
            ErrorCode::RangeInvalid => "invalid content range",
            ErrorCode::Unauthorized => "authentication required",
            ErrorCode::Denied => "requested access to the resource is denied",
            ErrorCode::Unsupported => "the operation is unsupported",
            ErrorCode::TooManyRequests => "too many requests",
            ErrorCode::Unavailable => "service unavailable",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ErrorCode::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("unknown registry error code {text:?}"))
        })
    }
}

/// The Registry V2 error body: `{"errors":[{"code":"…","message":"…","detail":…}]}`, with
/// `detail` omitted when `None`.
pub fn error_body(code: ErrorCode, message: &str, detail: Option<serde_json::Value>) -> String {
    let mut error = serde_json::Map::new();
    error.insert("code".to_owned(), code.as_str().into());
    error.insert("message".to_owned(), message.into());
    if let Some(detail) = detail {
        error.insert("detail".to_owned(), detail);
    }
    serde_json::json!({ "errors": [error] }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_roundtrip_through_their_wire_strings() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert_eq!(code.to_string(), code.as_str());
            let json = serde_json::to_string(&code).expect("serialize");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(
                serde_json::from_str::<ErrorCode>(&json).expect("deserialize"),
                code
            );
            assert!(!code.message().is_empty());
        }
        assert_eq!(ErrorCode::TooManyRequests.as_str(), "TOOMANYREQUESTS");
        assert_eq!(ErrorCode::parse("blob_unknown"), None);
        assert_eq!(ErrorCode::parse("NOPE"), None);
        assert!(serde_json::from_str::<ErrorCode>("\"NOPE\"").is_err());
    }

    #[test]
    fn statuses_follow_the_spec() {
        let expected = [
            (ErrorCode::BlobUnknown, 404),
            (ErrorCode::BlobUploadInvalid, 400),
            (ErrorCode::BlobUploadUnknown, 404),
            (ErrorCode::DigestInvalid, 400),
            (ErrorCode::ManifestBlobUnknown, 400),
            (ErrorCode::ManifestInvalid, 400),
            (ErrorCode::ManifestUnknown, 404),
            (ErrorCode::NameInvalid, 400),
            (ErrorCode::NameUnknown, 404),
            (ErrorCode::SizeInvalid, 400),
            (ErrorCode::TagInvalid, 400),
            (ErrorCode::RangeInvalid, 416),
            (ErrorCode::Unauthorized, 401),
            (ErrorCode::Denied, 403),
            (ErrorCode::Unsupported, 405),
            (ErrorCode::TooManyRequests, 429),
            (ErrorCode::Unavailable, 503),
        ];
        assert_eq!(expected.len(), ErrorCode::ALL.len());
        for (code, status) in expected {
            assert_eq!(code.status(), status, "{code}");
        }
    }

    #[test]
    fn error_body_has_the_registry_shape() {
        let body = error_body(ErrorCode::BlobUnknown, "blob \"x\" unknown", None);
        let json: serde_json::Value = serde_json::from_str(&body).expect("valid json");
        assert_eq!(
            json,
            serde_json::json!({"errors":[{"code":"BLOB_UNKNOWN","message":"blob \"x\" unknown"}]})
        );
        let with_detail = error_body(
            ErrorCode::DigestInvalid,
            "mismatch",
            Some(serde_json::json!({"expected": "sha256:aa"})),
        );
        let json: serde_json::Value = serde_json::from_str(&with_detail).expect("valid json");
        assert_eq!(json["errors"][0]["detail"]["expected"], "sha256:aa");
        assert_eq!(json["errors"][0]["code"], "DIGEST_INVALID");
    }
}
