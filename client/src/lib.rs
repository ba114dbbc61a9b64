//! Client-side tooling for Shoal and any Registry V2 registry: an OCI image-layout generator
//! ([`oci`]) and a push/pull client ([`registry`]). Used by `shoal devcluster --demo`, the
//! integration tests and the benches.

mod error;
pub mod oci;
pub mod registry;

pub use error::Error;
pub use oci::{Image, ImageSpec, write_layout};
pub use registry::{FetchedManifest, Progress, PulledImage, RegistryClient};
