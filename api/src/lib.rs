//! Wire types and typed HTTP clients for Shoal's internal APIs (origin and build-index).
//!
//! The server side of each API lives in its component; both sides share the header names, paths and error
//! body defined here so they cannot drift apart. The contract is documented in `docs/internal-api.md`.

pub mod build_index;
pub mod error;
pub mod origin;
mod transport;
pub mod wire;

pub use build_index::{BuildIndexClient, Page};
pub use error::ApiError;
pub use origin::OriginClient;
pub use wire::ErrorBody;
