//! Shoal's pure domain types, shared by every crate: digests, repository names and references,
//! metainfo and piece lengths, piece bitfields, peer ids, rendezvous hashing, manifest
//! parsing, Registry V2 error codes, HTTP byte ranges, Registry V2 path routing, the one
//! poison-tolerant way to lock a mutex, and the members a client found failing lately. No I/O, no async.

pub mod addresses;
pub mod bitfield;
pub mod chain;
pub mod cidr;
pub mod digest;
mod echo;
pub mod error;
pub mod manifest;
pub mod metainfo;
pub mod name;
pub mod peer;
pub mod range;
pub mod rendezvous;
pub mod suspects;
pub mod sync;
pub mod v2path;

pub use addresses::Addresses;
pub use bitfield::{Bitfield, BitfieldError};
pub use chain::chain;
pub use cidr::Cidr;
pub use digest::{Algorithm, Digest, DigestError, Digester, Hasher};
pub use error::{ErrorCode, error_body};
pub use manifest::{
    Descriptor, MAX_MANIFEST_SIZE, Manifest, ManifestError, ManifestRecord, ManifestWalk,
    MediaType, Platform, Referrer, TooManyManifests,
};
pub use metainfo::{MAX_PIECES, Metainfo, MetainfoBuilder, MetainfoError, piece_length_for};
pub use name::{Name, NameError, Reference, ReferenceError, Tag, TagError};
pub use peer::{PeerId, PeerIdError};
pub use range::{ByteRange, ContentRange, RangeError};
pub use suspects::Suspects;
pub use sync::lock;
pub use v2path::{V2PathError, V2Route, parse_v2_path};
