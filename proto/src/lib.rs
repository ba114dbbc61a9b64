//! Generated gRPC code for Shoal's peer and tracker protocols (`proto/shoal/v1/*.proto`).

/// Version 1 of the protocols.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("shoal.v1");
}
