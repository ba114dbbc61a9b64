//! The error every internal API call returns.

use shoal_core::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The server answered with an error status; `code` is its JSON error code when it sent one.
    #[error("{service} answered {status}{}: {message}", code.map(|c| format!(" {}", c.as_str())).unwrap_or_default())]
    Remote {
        service: String,
        status: u16,
        code: Option<ErrorCode>,
        message: String,
    },
    /// A Range request the blob cannot satisfy; `length` is the blob's length when the server said it.
    #[error("{service}: range not satisfiable (blob length {length:?})")]
    RangeNotSatisfiable {
        service: String,
        length: Option<u64>,
    },
    /// The server could not be reached or the connection broke.
    #[error("{service}: {source}")]
    Transport {
        service: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server has not answered a request and fails its health probe: hung (a stopped
    /// process, whose kernel still accepts connections).
    #[error("{service}: no answer, and it fails its health probe")]
    Unresponsive { service: String },
    /// The server answered something this client does not understand.
    #[error("{service}: bad response: {reason}")]
    Protocol { service: String, reason: String },
    /// A body that must be buffered (a manifest) exceeded the limit.
    #[error("{service}: body larger than {limit} bytes")]
    TooLarge { service: String, limit: usize },
}

impl ApiError {
    /// The Registry V2 error code this failure maps to when relayed to a client.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Remote { code: Some(c), .. } => *c,
            ApiError::Remote { status: 404, .. } => ErrorCode::BlobUnknown,
            ApiError::RangeNotSatisfiable { .. } => ErrorCode::RangeInvalid,
            ApiError::TooLarge { .. } => ErrorCode::SizeInvalid,
            _ => ErrorCode::Unavailable,
        }
    }

    /// True when the server answered with this error code.
    pub fn is(&self, code: ErrorCode) -> bool {
        matches!(self, ApiError::Remote { code: Some(c), .. } if *c == code)
    }
}
