//! Where each blob's bytes came from: per download, the piece bytes received from origins and
//! from other peers (counted where the engine's byte metrics are, so their sums match), and what
//! the agent's `GET /debug/downloads` and the tracker's swarm view show of it. Finished downloads
//! are kept for [`FINISHED_KEPT`] blobs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use shoal_core::Bitfield;
use shoal_proto::MAX_IN_FLIGHT;
use shoal_proto::v1::Progress;

/// Finished downloads whose report is kept (the least recently finished go first).
pub(crate) const FINISHED_KEPT: usize = 256;

/// Piece bytes received for one blob, and pieces verified, by sender kind.
#[derive(Debug, Default)]
pub(crate) struct Received {
    origins: AtomicU64,
    peers: AtomicU64,
    pieces_from_origins: AtomicU64,
    pieces_from_peers: AtomicU64,
}

impl Received {
    pub(crate) fn add(&self, origin: bool, bytes: u64) {
        let counter = if origin { &self.origins } else { &self.peers };
        counter.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts a piece verified and written.
    pub(crate) fn piece(&self, origin: bool) {
        let counter = if origin {
            &self.pieces_from_origins
        } else {
            &self.pieces_from_peers
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn pieces_from(&self, origin: bool) -> u64 {
        let counter = if origin {
            &self.pieces_from_origins
        } else {
            &self.pieces_from_peers
        };
        counter.load(Ordering::Relaxed)
    }

    pub(crate) fn origins(&self) -> u64 {
        self.origins.load(Ordering::Relaxed)
    }

    pub(crate) fn peers(&self) -> u64 {
        self.peers.load(Ordering::Relaxed)
    }

    /// What an announce says of this download: `have` while downloading, no bits once complete.
    pub(crate) fn progress(
        &self,
        have: Option<&Bitfield>,
        piece_count: u32,
        in_flight: &[u32],
    ) -> Progress {
        Progress {
            piece_count,
            have: have.map(|h| h.as_bytes().to_vec()).unwrap_or_default(),
            in_flight: in_flight.iter().copied().take(MAX_IN_FLIGHT).collect(),
            bytes_from_origins: self.origins(),
            bytes_from_peers: self.peers(),
        }
    }
}

/// Where a download stands in its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportState {
    Downloading,
    Complete,
    Failed,
}

/// One blob's download by this process, as `GET /debug/downloads` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct DownloadReport {
    pub digest: String,
    pub state: ReportState,
    pub length: u64,
    pub piece_count: u32,
    pub pieces: u32,
    /// Pieces already on disk when the download (re)started.
    pub resumed_bytes: u64,
    /// Pieces verified from each sender kind (a rejected piece counts its bytes, not here).
    pub pieces_from_origins: u64,
    pub pieces_from_peers: u64,
    pub bytes_from_origins: u64,
    pub bytes_from_peers: u64,
    pub started_at_unix_ms: u64,
    /// Until now while downloading, until it ended otherwise.
    pub duration_ms: u64,
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
