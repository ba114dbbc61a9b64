//! Generated gRPC code for Shoal's peer and tracker protocols (`proto/shoal/v1/*.proto`).

/// Version 1 of the protocols.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("shoal.v1");
}

/// Pieces in flight one announce's `Progress.in_flight` lists at most: the agent sends no more,
/// the tracker refuses more (the list keeps an announce well under its 4 KiB limit).
pub const MAX_IN_FLIGHT: usize = 256;
