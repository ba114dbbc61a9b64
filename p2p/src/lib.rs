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
pub use source::{PieceSource, StoreSource};
pub use wire::{Chunk, PeerServer, PieceStream, get_piece};

/// The checks the `Peer` service runs on each request before it looks anything up, for the
/// fuzz targets (`fuzz/`); the service itself calls the same functions.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::server::{parse_digest, parse_session_request};
    pub use crate::wire::{MAX_REQUEST, MESSAGE_HEADER, parse_request};
}

/// The piece stream's client as a downloader uses it, for the microbenchmarks (`bench/micro`);
/// agents reach it through the engine (`p2p.piece_stream`).
#[doc(hidden)]
pub mod benching {
    use std::io;
    use std::sync::Arc;

    use shoal_proto::v1::PieceRequest;

    use crate::stream::{Answer, StreamError, StreamPool};

    /// Piece-stream connections to any number of peers, one each, kept for reuse.
    #[derive(Default)]
    pub struct StreamClient(Arc<StreamPool>);

    impl StreamClient {
        /// Fetches one piece of `length` bytes from the peer at `addr` over the piece stream
        /// and returns the bytes received (reading them as a download does).
        pub async fn get_piece(
            &self,
            addr: &str,
            request: &PieceRequest,
            length: usize,
        ) -> io::Result<u64> {
            let answer = self
                .0
                .request(addr, request, length)
                .await
                .map_err(|e| match e {
                    StreamError::Declined => io::Error::other("the peer declined the piece stream"),
                    StreamError::Io(e) => e,
                })?;
            let mut body = match answer {
                Answer::Piece(body) => body,
                Answer::Refused(status) => return Err(io::Error::other(status.to_string())),
            };
            let mut received = 0;
            while let Some(chunk) = body.next().await? {
                received += chunk.length() as u64;
            }
            Ok(received)
        }
    }
}
