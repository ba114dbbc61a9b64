//! The client crate's one error type: everything that can go wrong generating a layout or talking
//! to a registry, with enough context (path, URL, registry error code) to act on it.

use std::io;
use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use shoal_core::{Digest, ManifestError};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("building the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error("invalid registry URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("{method} {url}: {source}")]
    Transport {
        method: reqwest::Method,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with an unexpected status; `code` is the first error code of its
    /// JSON error body (`BLOB_UNKNOWN`, `DIGEST_INVALID`, …) when it sent one.
    #[error("{method} {url}: registry answered {status}{}: {message}", code_suffix(.code))]
    Registry {
        method: reqwest::Method,
        url: String,
        status: StatusCode,
        code: Option<String>,
        message: String,
    },
    #[error("{context}: registry sent a malformed response: {reason}")]
    BadResponse { context: String, reason: String },
    #[error("blob {expected}: received bytes hash to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest}: expected {expected} bytes, received {actual}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("manifest {reference}: {source}")]
    BadManifest {
        reference: String,
        #[source]
        source: ManifestError,
    },
}

impl Error {
    /// The registry's error code, when the failure was a registry error response.
    pub fn registry_code(&self) -> Option<&str> {
        match self {
            Error::Registry { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default()
}

/// Maps an `io::Error` to [`Error::Io`] naming `path`.
pub(crate) fn io_context(path: &Path) -> impl Fn(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
