//! The client's one error type, and reading a registry's error answer into it.

use std::io;

use bytes::BytesMut;
use futures::StreamExt;
use reqwest::{Method, Response, StatusCode, Url};
use shoal_core::Digest;

/// Error text kept from a registry's answer: enough for its JSON error codes, and a body that
/// is not an error document is never read whole.
const MAX_ERROR_BODY: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid registry URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// The request could not be sent or its answer not read.
    #[error("{method} {url}: {source}")]
    Transport {
        method: Method,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with a status the operation does not expect. `codes` are the codes
    /// of its JSON error body (`BLOB_UNKNOWN`, `DIGEST_INVALID`, …), `message` the first error's
    /// message or the body's text.
    #[error("{method} {url}: {}", status_text(*.status, .codes, .message))]
    Status {
        method: Method,
        url: String,
        status: StatusCode,
        codes: Vec<String>,
        message: String,
    },
    #[error("{context}: the registry sent a malformed response: {reason}")]
    BadResponse { context: String, reason: String },
    /// A bearer token could not be had from the realm the registry named.
    #[error("fetching a registry token from {realm}: {reason}")]
    Token { realm: String, reason: String },
    /// A range request starts beyond the end of the blob (`len`, when the registry said).
    #[error("{url}: range {start}.. is beyond the end of the blob")]
    RangeNotSatisfiable {
        url: String,
        start: u64,
        len: Option<u64>,
    },
    /// A manifest's bytes do not hash to the digest requested or reported.
    #[error("manifest {expected}: received bytes hash to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// Reading the bytes to upload failed; the registry committed nothing.
    #[error("reading the blob to upload failed: {0}")]
    Body(#[source] io::Error),
    /// The bytes to upload were not as long as promised; the registry committed nothing.
    #[error("the blob to upload has {actual} bytes, expected {expected}")]
    LengthMismatch { expected: u64, actual: u64 },
}

impl Error {
    /// The status of a [`Error::Status`] answer.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The first Registry V2 error code of a [`Error::Status`] answer.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Status { codes, .. } => codes.first().map(String::as_str),
            _ => None,
        }
    }

    /// Whether a [`Error::Status`] answer carries `code`.
    pub fn has_code(&self, code: &str) -> bool {
        matches!(self, Error::Status { codes, .. } if codes.iter().any(|c| c == code))
    }
}

fn status_text(status: StatusCode, codes: &[String], message: &str) -> String {
    let codes = if codes.is_empty() {
        String::new()
    } else {
        format!(" ({})", codes.join(", "))
    };
    let lead = if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        "the registry refused access (check the credentials): answered"
    } else {
        "the registry answered"
    };
    if message.is_empty() {
        format!("{lead} {status}{codes}")
    } else {
        format!("{lead} {status}{codes}: {message}")
    }
}

/// [`Error::Status`] from an answer the operation does not expect, with the codes and message
/// of the spec's `{"errors":[{"code","message"}]}` body when there is one. Reads at most
/// [`MAX_ERROR_BODY`] bytes of it.
pub(crate) async fn unexpected(method: Method, url: &Url, response: Response) -> Error {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: String,
        #[serde(default)]
        message: String,
    }

    let status = response.status();
    let mut body = BytesMut::new();
    let mut stream = response.bytes_stream();
    // A failure to read the body only loses the message.
    while body.len() < MAX_ERROR_BODY
        && let Some(Ok(chunk)) = stream.next().await
    {
        body.extend_from_slice(&chunk);
    }
    body.truncate(MAX_ERROR_BODY);
    let (codes, message) = match serde_json::from_slice::<Body>(&body) {
        Ok(parsed) if !parsed.errors.is_empty() => {
            let message = parsed.errors[0].message.clone();
            (parsed.errors.into_iter().map(|e| e.code).collect(), message)
        }
        _ => (Vec::new(), String::from_utf8_lossy(&body).trim().to_owned()),
    };
    Error::Status {
        method,
        url: url.to_string(),
        status,
        codes,
        message,
    }
}
