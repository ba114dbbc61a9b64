//! Wire types and typed HTTP clients for Shoal's internal APIs (origin and build-index), and the
//! one client of the origin cluster (`cluster`: owners, failover, quorum writes) with its config,
//! and blob bodies that go on from another owner when theirs breaks off or hangs (`relay`).
//!
//! The server side of each API lives in its component; both sides share the header names, paths and error
//! body defined here so they cannot drift apart. The contract is documented in `docs/internal-api.md`.

pub mod build_index;
pub mod cluster;
pub mod error;
pub mod gc;
pub mod origin;
mod origins_config;
pub mod relay;
mod transport;
pub mod wire;

pub use build_index::{BuildIndexClient, Page};
pub use cluster::{OriginCluster, Owner, ReadFailure, fails_over};
pub use error::ApiError;
pub use origin::OriginClient;
pub use origins_config::{OriginAddrs, OriginsConfig};
pub use wire::ErrorBody;
