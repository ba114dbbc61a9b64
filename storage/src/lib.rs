//! Shoal's storage layer: the on-disk content-addressed [`BlobStore`] (staged uploads, atomic
//! commit, metainfo beside each blob), the [`Backend`] trait for long-term storage with its
//! implementations, and the durable [`WriteBack`] queue that copies committed blobs to a backend.
//!
//! Everything here streams: blob bytes move as [`ByteStream`]s in bounded chunks and are never
//! held whole in memory. Nothing half-written is ever visible: every file is written under a
//! temporary name, fsynced, then renamed into place.

pub mod backend;
mod fsutil;
pub mod store;
pub mod writeback;

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

pub use backend::{
    Backend, BackendConfig, BackendError, BackendRouter, FilesystemBackend, HttpBackend,
    NamespacePattern, REPOSITORIES_PREFIX, RegistryBackend, RegistryConfig, RouteConfig, S3Backend,
    S3Config, UrlTemplate, blob_key, tag_key,
};
pub use fsutil::IoError;
pub use store::{
    BlobFile, BlobStore, BlobWriter, PartialBlob, StoreError, StoredBlob, StoredPartial, UploadId,
};
pub use writeback::{RetryPolicy, WriteBack, WriteBackStats};

/// A stream of byte chunks, the unit in which blobs move between the store, backends and HTTP.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;
