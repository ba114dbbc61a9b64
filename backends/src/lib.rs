//! Long-term blob and tag storage behind the origin cluster: the [`Backend`] trait, the key
//! layout shared by every component, the [`BackendConfig`] that selects an implementation, the
//! implementations themselves (one module each), and the durable [`WriteBack`] queue that copies
//! committed blobs from the local store (`shoal-storage`) to a backend.
//!
//! A crate of its own so the local store carries none of the remote clients (object_store,
//! reqwest, the registry client): the agent and the p2p engine use the store alone. Backends
//! build on the store crate for [`ByteStream`] and its file streaming, never the other way.

mod filesystem;
mod http;
mod registry;
mod router;
mod s3;
pub mod writeback;

use std::fmt::Debug;
use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use shoal_core::{Digest, Name, Tag};

use shoal_jobs::IoError;

pub use filesystem::FilesystemBackend;
pub use http::{HttpBackend, UrlTemplate, UrlTemplateError};
pub use registry::{RegistryBackend, RegistryConfig};
pub use router::{BackendRouter, NamespacePattern, RouteConfig};
pub use s3::{S3Backend, S3Config};
pub use shoal_storage::ByteStream;
pub use writeback::{RetryPolicy, WriteBack, WriteBackStats};

/// Key prefix under which every repository's tags live.
pub const REPOSITORIES_PREFIX: &str = "repositories/";

/// Key prefix of every blob: `blobs/<algorithm>/<hex>`.
pub const BLOBS_PREFIX: &str = "blobs/";

/// Separator between a repository and its manifest records' `<algorithm>/<hex>`.
pub const MANIFESTS_SEPARATOR: &str = "/_manifests/";

/// The backend key of a blob: `blobs/<algorithm>/<hex>` (`blobs/sha256/…`, `blobs/sha512/…`).
pub fn blob_key(digest: &Digest) -> String {
    format!("{BLOBS_PREFIX}{}", digest_path(digest))
}

/// The digest a blob key names: the inverse of [`blob_key`].
pub fn parse_blob_key(key: &str) -> Option<Digest> {
    parse_digest_path(key.strip_prefix(BLOBS_PREFIX)?)
}

/// `<algorithm>/<hex>`, how blob and manifest record keys end.
fn digest_path(digest: &Digest) -> String {
    format!("{}/{}", digest.algorithm(), digest.hex())
}

/// The inverse of [`digest_path`]: the digest `path` names.
pub fn parse_digest_path(path: &str) -> Option<Digest> {
    let (algorithm, hex) = path.split_once('/')?;
    Digest::parse(&format!("{algorithm}:{hex}")).ok()
}

/// The backend key of a tag: `repositories/<repo>/_tags/<tag>`. `_tags` cannot be a repository
/// name component, so tag keys never collide with nested repository names.
pub fn tag_key(name: &Name, tag: &Tag) -> String {
    format!(
        "{REPOSITORIES_PREFIX}{}/_tags/{}",
        name.as_str(),
        tag.as_str()
    )
}

/// The backend key of the record of a manifest pushed into a repository:
/// `repositories/<repo>/_manifests/<algorithm>/<hex>` (`_manifests`, like `_tags`, cannot be a
/// repository name component).
pub fn manifest_key(name: &Name, digest: &Digest) -> String {
    format!(
        "{REPOSITORIES_PREFIX}{}{MANIFESTS_SEPARATOR}{}",
        name.as_str(),
        digest_path(digest)
    )
}

/// The repository and manifest a record key names: the inverse of [`manifest_key`].
pub fn parse_manifest_key(key: &str) -> Option<(Name, Digest)> {
    let (repo, path) = key
        .strip_prefix(REPOSITORIES_PREFIX)?
        .split_once(MANIFESTS_SEPARATOR)?;
    Some((Name::parse(repo).ok()?, parse_digest_path(path)?))
}

/// Why a backend operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The key is not a well-formed relative key.
    #[error("invalid backend key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// A filesystem operation failed; carries the action and path.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Reading the bytes to store failed; nothing was stored.
    #[error("reading the bytes to store under {key} failed: {source}")]
    Body {
        key: String,
        #[source]
        source: io::Error,
    },
    /// `put` was promised a length the body did not have; nothing was stored.
    #[error("body for {key} has {actual} bytes, expected {expected}")]
    LengthMismatch {
        key: String,
        expected: u64,
        actual: u64,
    },
    /// A ranged `get` starts beyond the end of the object.
    #[error("range {start}.. is beyond the end of {key} ({len} bytes)")]
    RangeNotSatisfiable { key: String, start: u64, len: u64 },
    /// No `backends:` route matches the repository.
    #[error("no backend route matches namespace {namespace:?}")]
    NoRoute { namespace: String },
    /// The backend cannot do this (a read-only backend asked to write).
    #[error("the {backend} backend does not support {operation}")]
    Unsupported {
        backend: &'static str,
        operation: &'static str,
    },
    /// An object-store (S3) request failed.
    #[error("{operation} {key}: {source}")]
    ObjectStore {
        operation: &'static str,
        key: String,
        // Boxed: object_store's error is large and would bloat every `Result` carrying ours.
        #[source]
        source: Box<object_store::Error>,
    },
    /// A request to a remote backend failed or was answered with an unexpected status.
    #[error("{operation} {url}: {reason}")]
    Remote {
        operation: &'static str,
        url: String,
        reason: String,
    },
}

/// A key-value store for blobs and tags. Keys are `/`-separated relative paths such as
/// [`blob_key`] and [`tag_key`] produce.
#[async_trait]
pub trait Backend: Send + Sync + Debug {
    /// The object's length, or `None` when absent.
    async fn stat(&self, key: &str) -> Result<Option<u64>, BackendError>;

    /// The object's bytes (or the bytes in `range`, clamped to its end), or `None` when absent.
    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<ByteStream>, BackendError>;

    /// Stores `body` under `key`, replacing any previous object. When `length` is given the
    /// body must have exactly that many bytes. A failed put leaves no partial object.
    async fn put(
        &self,
        key: &str,
        body: ByteStream,
        length: Option<u64>,
    ) -> Result<(), BackendError>;

    /// Deletes the object; returns whether it existed.
    async fn delete(&self, key: &str) -> Result<bool, BackendError>;

    /// All keys that start with `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, BackendError>;

    /// This backend as seen by one repository, or `None` when it serves every repository as it
    /// is. Key-value stores hold every repository's blobs under the same keys and keep the
    /// default; a registry needs the repository in every blob request and returns a view bound
    /// to it. [`BackendRouter`] applies this to every backend it hands out.
    fn scoped(&self, _namespace: Option<&Name>) -> Option<Arc<dyn Backend>> {
        None
    }
}

/// Which backend a component stores to. YAML: `backend: { filesystem: { root: /var/lib/shoal } }`
/// (a map with one key naming the kind; `shoal_service::config` reads every enum in that form).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum BackendConfig {
    /// A directory tree on a local or shared filesystem, one file per key.
    Filesystem { root: PathBuf },
    /// A read-only HTTP server: `http: { url: "https://mirror/blobs/{digest}" }`.
    Http { url: UrlTemplate },
    /// An S3-compatible bucket: `s3: { bucket: shoal, endpoint: "http://minio:9000", … }`.
    S3(S3Config),
    /// Another Docker/OCI registry: `registry: { url: "https://registry.example", … }`.
    Registry(RegistryConfig),
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig::Filesystem {
            root: PathBuf::from("shoal-data/backend"),
        }
    }
}

impl BackendConfig {
    /// Builds the configured backend.
    pub fn build(&self) -> Result<Arc<dyn Backend>, BackendError> {
        match self {
            BackendConfig::Filesystem { root } => Ok(Arc::new(FilesystemBackend::new(root)?)),
            BackendConfig::Http { url } => Ok(Arc::new(HttpBackend::new(url.clone())?)),
            BackendConfig::S3(config) => Ok(Arc::new(S3Backend::new(config)?)),
            BackendConfig::Registry(config) => Ok(Arc::new(RegistryBackend::new(config)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        let digest = Digest::of(b"x");
        assert_eq!(blob_key(&digest), format!("blobs/sha256/{}", digest.hex()));
        let name = Name::parse("library/ubuntu").expect("name");
        let tag = Tag::parse("22.04").expect("tag");
        assert_eq!(
            tag_key(&name, &tag),
            "repositories/library/ubuntu/_tags/22.04"
        );
        assert!(tag_key(&name, &tag).starts_with(REPOSITORIES_PREFIX));
        assert_eq!(
            manifest_key(&name, &digest),
            format!(
                "repositories/library/ubuntu/_manifests/sha256/{}",
                digest.hex()
            )
        );
        let long = shoal_core::Algorithm::Sha512.digest(b"x");
        assert_eq!(blob_key(&long), format!("blobs/sha512/{}", long.hex()));
        assert_eq!(
            manifest_key(&name, &long),
            format!(
                "repositories/library/ubuntu/_manifests/sha512/{}",
                long.hex()
            )
        );
        for digest in [digest, long] {
            assert_eq!(parse_blob_key(&blob_key(&digest)), Some(digest));
            assert_eq!(
                parse_manifest_key(&manifest_key(&name, &digest)),
                Some((name.clone(), digest))
            );
        }
        for key in [
            format!("blobs/sha512/{}", digest.hex()),
            format!("blobs/sha384/{}", long.hex()),
            format!("blobs/{}", digest.hex()),
            format!(
                "repositories/library/ubuntu/_manifests/sha512/{}",
                digest.hex()
            ),
            format!("repositories/_manifests/sha256/{}", digest.hex()),
        ] {
            assert_eq!(parse_blob_key(&key), None, "{key}");
            assert_eq!(parse_manifest_key(&key), None, "{key}");
        }
    }

    #[test]
    fn config_parses_and_rejects_unknown_fields() {
        let config: BackendConfig =
            serde_json::from_str(r#"{"filesystem":{"root":"/srv/shoal"}}"#).expect("config");
        assert_eq!(
            config,
            BackendConfig::Filesystem {
                root: PathBuf::from("/srv/shoal")
            }
        );
        assert!(serde_json::from_str::<BackendConfig>(r#"{"filesystem":{"roo":"/x"}}"#).is_err());
        assert!(serde_json::from_str::<BackendConfig>(r#"{"nfs":{}}"#).is_err());
        assert!(serde_json::from_str::<BackendConfig>(r#"{"s3":{"bucket":"b","x":1}}"#).is_err());
        assert!(serde_json::from_str::<BackendConfig>("{}").is_err());
        let registry: BackendConfig =
            serde_json::from_str(r#"{"registry":{"url":"http://127.0.0.1:5000","timeout":"5s"}}"#)
                .expect("registry config");
        assert!(matches!(registry, BackendConfig::Registry(c) if c.url == "http://127.0.0.1:5000"));
        let json = serde_json::to_string(&config).expect("serialize");
        assert_eq!(json, r#"{"filesystem":{"root":"/srv/shoal"}}"#);
    }

    #[test]
    fn build_creates_the_filesystem_backend() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("backend");
        let config = BackendConfig::Filesystem { root: root.clone() };
        config.build().expect("build");
        assert!(root.is_dir());
    }
}
