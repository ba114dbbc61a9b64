//! The client crate's one error type: everything that can go wrong generating a layout or talking
//! to a registry, with enough context (path, URL, registry error code) to act on it.

use std::io;
use std::path::{Path, PathBuf};

use shoal_core::{Digest, ManifestError, NameError, ReferenceError};
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
    /// A request to the registry failed or was refused.
    #[error(transparent)]
    Registry(#[from] shoal_registry_client::Error),
    #[error("{repo:?} is not a repository name: {source}")]
    BadName {
        repo: String,
        #[source]
        source: NameError,
    },
    #[error("{reference:?} is neither a tag nor a digest: {source}")]
    BadReference {
        reference: String,
        #[source]
        source: ReferenceError,
    },
    #[error("{what} is not in the registry")]
    NotFound { what: String },
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
            Error::Registry(error) => error.code(),
            _ => None,
        }
    }
}

/// Maps an `io::Error` to [`Error::Io`] naming `path`.
pub(crate) fn io_context(path: &Path) -> impl Fn(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
