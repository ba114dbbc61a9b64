//! Pushing an image layout to a registry and pulling an image into one, with progress events:
//! used by `shoal devcluster --demo`, the integration tests and the benches; real clients
//! (docker, skopeo) are tested separately.
//!
//! The requests are `shoal-registry-client`'s; this module adds the layout handling (files in,
//! files out, every byte verified against its digest) and the progress events. The push path,
//! the pull path and manifest transfer live in the submodules.

mod manifest;
mod pull;
mod push;
#[cfg(test)]
mod tests;

use reqwest::Url;
use shoal_core::{Digest, Name, Reference};

use crate::error::Error;

pub use manifest::FetchedManifest;
pub use pull::PulledImage;

/// One progress event for one blob; enough to drive a progress bar per blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Transfer of `digest` (`total` bytes) begins.
    Started { digest: Digest, total: u64 },
    /// `done` of `total` bytes have been sent or received so far.
    Advanced {
        digest: Digest,
        done: u64,
        total: u64,
    },
    /// The blob is complete; `skipped` when the registry (push) or the destination (pull)
    /// already had it and no bytes moved.
    Finished {
        digest: Digest,
        total: u64,
        skipped: bool,
    },
}

impl Progress {
    fn finished(digest: &Digest, total: u64, skipped: bool) -> Progress {
        Progress::Finished {
            digest: *digest,
            total,
            skipped,
        }
    }
}

/// A Registry V2 client bound to one registry.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    registry: shoal_registry_client::RegistryClient,
}

impl RegistryClient {
    /// A client for the registry at `base_url` (`http://127.0.0.1:15000`; a bare `host:port`
    /// means plain HTTP).
    pub fn new(base_url: &str) -> Result<Self, Error> {
        let http = shoal_http_client::builder()
            .build()
            .map_err(Error::HttpClient)?;
        Self::with_http_client(base_url, http)
    }

    /// Like [`RegistryClient::new`] with a caller-configured `reqwest::Client`.
    pub fn with_http_client(base_url: &str, http: reqwest::Client) -> Result<Self, Error> {
        let with_scheme = if base_url.contains("://") {
            base_url.to_owned()
        } else {
            format!("http://{base_url}")
        };
        let registry = shoal_registry_client::RegistryClient::new(&with_scheme, http)?;
        Ok(RegistryClient { registry })
    }

    /// The registry's base URL.
    pub fn base_url(&self) -> &Url {
        self.registry.base_url()
    }

    /// `HEAD` a blob: its size when the registry has it, `None` on 404.
    pub async fn blob_size(&self, repo: &str, digest: &Digest) -> Result<Option<u64>, Error> {
        Ok(self.registry.head_blob(&name(repo)?, digest).await?)
    }
}

fn name(repo: &str) -> Result<Name, Error> {
    Name::parse(repo).map_err(|source| Error::BadName {
        repo: repo.to_owned(),
        source,
    })
}

fn reference(text: &str) -> Result<Reference, Error> {
    Reference::parse(text).map_err(|source| Error::BadReference {
        reference: text.to_owned(),
        source,
    })
}
