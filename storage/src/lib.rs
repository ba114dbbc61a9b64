//! Shoal's local storage layer: the on-disk content-addressed [`BlobStore`] (staged uploads,
//! atomic commit, metainfo beside each blob, partial downloads), the [`cache`] that keeps a store
//! within a byte budget (the agent's disk cache, an origin's capacity), and the [`ByteStream`]
//! in which blobs move. The remote backends and the write-back queue are in `shoal-backends`, which builds
//! on this crate (its filesystem backend streams files through [`fsutil`] too).
//!
//! Everything here streams: blob bytes move as [`ByteStream`]s in bounded chunks and are never
//! held whole in memory. Nothing half-written is ever visible: every file is written under a
//! temporary name, fsynced, then renamed into place.

pub mod cache;
pub mod fsutil;
pub mod store;

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;

pub use fsutil::IoError;
pub use store::{
    BlobFile, BlobStore, BlobWriter, PartialBlob, StoreError, StoredBlob, StoredPartial, UploadId,
    UploadLimits, UploadOwner,
};

/// A stream of byte chunks, the unit in which blobs move between the store, backends and HTTP.
pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;
