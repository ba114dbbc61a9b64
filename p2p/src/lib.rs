//! The peer-to-peer engine shared by agents and origins (contracts: `docs/p2p.md`): the gRPC
//! `Peer` service over a [`PieceSource`], bandwidth [`Limiter`]s, and the [`Engine`] that
//! downloads blobs from peers and seeds them, driving the pure piece scheduler of `shoal-swarm`.

mod config;
mod engine;
mod error;
mod limiter;
mod metrics;
mod server;
mod source;
mod stream;
mod wire;

pub use config::{Faults, Identity, P2pConfig};
pub use engine::tracker::{
    channel as peer_channel, channel_with as peer_channel_with, check_address,
};
pub use engine::{Blob, ClusterTls, DownloadReport, Engine, Network, ReportState};
pub use error::P2pError;
pub use limiter::Limiter;
pub use metrics::P2pMetrics;
pub use server::{Seeding, ShareOf, Spread, peer_service};
pub use shoal_swarm::seeding::SeedingConfig;
pub use shoal_swarm::slots::PIECE_COPIES;
pub use source::{PieceFile, PieceSource, StoreSource};
pub use wire::{Chunk, PeerServer, PieceStream, get_piece};

/// The checks the `Peer` service runs on each request before it looks anything up, for the
/// fuzz targets (`fuzz/`); the service itself calls the same functions.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::server::{parse_digest, parse_session_request};
    pub use crate::wire::{MAX_REQUEST, MESSAGE_HEADER, parse_request};
}
