//! The engine's Prometheus metrics (names in `docs/p2p.md`; the registry adds the `shoal_`
//! prefix and counters the `_total` suffix).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Where received bytes came from: another agent or an origin.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FromLabels {
    pub from: &'static str,
}

/// Piece, byte and download counters. Cheap to clone; clones share the counters.
#[derive(Clone, Debug)]
pub struct P2pMetrics {
    pub(crate) pieces_received: Counter,
    pub(crate) pieces_rejected: Counter,
    bytes_received: Family<FromLabels, Counter>,
    pub(crate) bytes_served: Counter,
    pub(crate) resumed_bytes: Counter,
    pub(crate) peers_blacklisted: Counter,
    pub(crate) downloads_active: Gauge,
    pub(crate) busy_answered: Counter,
    pub(crate) busy_received: Counter,
    pub(crate) elsewhere_answered: Counter,
    pub(crate) elsewhere_received: Counter,
    pub(crate) requests_stale: Counter,
    pub(crate) tracker_failovers: Counter,
    pub(crate) stream_pieces_received: Counter,
    pub(crate) bytes_served_zero_copy: Counter,
    pub(crate) download_duration: Histogram,
    pub(crate) peers_connected: Gauge,
}

/// Download durations from a fraction of a second (a small layer on a LAN) to about 14 minutes
/// (a multi-gigabyte layer on a slow link): 0.1 s doubling, 14 buckets.
fn download_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.1, 2.0, 14)
}

/// Holds a gauge up by one for its lifetime (a task aborted mid-way drops it too).
pub(crate) struct Held(Gauge);

impl Held {
    pub(crate) fn new(gauge: &Gauge) -> Held {
        gauge.inc();
        Held(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl P2pMetrics {
    /// Creates the metrics and registers them into `registry` (normally a component registry
    /// prefixed `shoal`).
    pub fn new(registry: &mut Registry) -> P2pMetrics {
        let metrics = P2pMetrics {
            pieces_received: Counter::default(),
            pieces_rejected: Counter::default(),
            bytes_received: Family::default(),
            bytes_served: Counter::default(),
            resumed_bytes: Counter::default(),
            peers_blacklisted: Counter::default(),
            downloads_active: Gauge::default(),
            busy_answered: Counter::default(),
            busy_received: Counter::default(),
            elsewhere_answered: Counter::default(),
            elsewhere_received: Counter::default(),
            requests_stale: Counter::default(),
            tracker_failovers: Counter::default(),
            stream_pieces_received: Counter::default(),
            bytes_served_zero_copy: Counter::default(),
            download_duration: Histogram::new(download_buckets()),
            peers_connected: Gauge::default(),
        };
        registry.register(
            "p2p_pieces_received",
            "Pieces received from peers, verified and written",
            metrics.pieces_received.clone(),
        );
        registry.register(
            "p2p_pieces_rejected",
            "Pieces received from peers that failed their hash check",
            metrics.pieces_rejected.clone(),
        );
        registry.register(
            "p2p_bytes_received",
            "Piece bytes received, by sender kind (agent or origin)",
            metrics.bytes_received.clone(),
        );
        registry.register(
            "p2p_bytes_served",
            "Piece bytes served to peers",
            metrics.bytes_served.clone(),
        );
        registry.register(
            "p2p_resumed_bytes",
            "Verified bytes found on disk when a download started",
            metrics.resumed_bytes.clone(),
        );
        registry.register(
            "p2p_peers_blacklisted",
            "Peers blacklisted for sending a bad piece",
            metrics.peers_blacklisted.clone(),
        );
        registry.register(
            "p2p_downloads_active",
            "Downloads in progress",
            metrics.downloads_active.clone(),
        );
        registry.register(
            "p2p_busy_answered",
            "Piece requests refused as busy because every upload slot was taken",
            metrics.busy_answered.clone(),
        );
        registry.register(
            "p2p_busy_received",
            "Piece requests a peer refused as busy",
            metrics.busy_received.clone(),
        );
        registry.register(
            "p2p_elsewhere_answered",
            "Piece requests answered \"get it elsewhere\": by an origin serving a crowd (other peers hold or will soon hold the piece), or by an agent already uploading its bound of copies of the piece",
            metrics.elsewhere_answered.clone(),
        );
        registry.register(
            "p2p_elsewhere_received",
            "Piece requests origins answered \"get it elsewhere\"",
            metrics.elsewhere_received.clone(),
        );
        registry.register(
            "p2p_requests_stale",
            "Piece requests far older than the download's others take, whose pieces were then asked of other holders too (a peer that stopped answering)",
            metrics.requests_stale.clone(),
        );
        registry.register(
            "p2p_tracker_failovers",
            "Tracker calls that failed in transport (the tracker unreachable or hung) and went to the next tracker of the list",
            metrics.tracker_failovers.clone(),
        );
        registry.register(
            "p2p_stream_pieces_received",
            "Pieces received over the piece stream (`p2p.piece_stream`) instead of gRPC GetPiece",
            metrics.stream_pieces_received.clone(),
        );
        registry.register(
            "p2p_bytes_served_zero_copy",
            "Piece bytes served over the piece stream with sendfile: page-cache pages handed to the socket, never copied through user space",
            metrics.bytes_served_zero_copy.clone(),
        );
        registry.register(
            "p2p_download_duration_seconds",
            "Time from a download's start until the blob was committed, for downloads that completed",
            metrics.download_duration.clone(),
        );
        registry.register(
            "p2p_peers_connected",
            "Peer sessions open (one per peer per blob being downloaded)",
            metrics.peers_connected.clone(),
        );
        metrics
    }

    /// Counts `bytes` received from a peer (`origin` says which kind).
    pub(crate) fn received(&self, origin: bool, bytes: u64) {
        let from = if origin { "origin" } else { "agent" };
        self.bytes_received
            .get_or_create(&FromLabels { from })
            .inc_by(bytes);
    }

    /// Pieces received and verified so far.
    pub fn pieces_received(&self) -> u64 {
        self.pieces_received.get()
    }

    /// Pieces rejected for a bad hash so far.
    pub fn pieces_rejected(&self) -> u64 {
        self.pieces_rejected.get()
    }

    /// Verified bytes found on disk when downloads started.
    pub fn resumed_bytes(&self) -> u64 {
        self.resumed_bytes.get()
    }

    /// Peers blacklisted for bad pieces so far.
    pub fn peers_blacklisted(&self) -> u64 {
        self.peers_blacklisted.get()
    }

    /// Piece requests refused as busy so far (as a server).
    pub fn busy_answered(&self) -> u64 {
        self.busy_answered.get()
    }

    /// Piece requests peers refused as busy so far (as a downloader).
    pub fn busy_received(&self) -> u64 {
        self.busy_received.get()
    }

    /// Piece requests answered "get it elsewhere" so far (as an origin's peer service).
    pub fn elsewhere_answered(&self) -> u64 {
        self.elsewhere_answered.get()
    }

    /// Piece requests origins answered "get it elsewhere" so far (as a downloader).
    pub fn elsewhere_received(&self) -> u64 {
        self.elsewhere_received.get()
    }

    /// Piece requests that went stale (their pieces asked of other holders too).
    pub fn requests_stale(&self) -> u64 {
        self.requests_stale.get()
    }

    /// Tracker calls that went to the next tracker after one failed in transport.
    pub fn tracker_failovers(&self) -> u64 {
        self.tracker_failovers.get()
    }

    /// Pieces received over the piece stream.
    pub fn stream_pieces_received(&self) -> u64 {
        self.stream_pieces_received.get()
    }

    /// Piece bytes served over the piece stream with `sendfile`.
    pub fn bytes_served_zero_copy(&self) -> u64 {
        self.bytes_served_zero_copy.get()
    }

    /// Piece bytes served so far.
    pub fn bytes_served(&self) -> u64 {
        self.bytes_served.get()
    }

    /// Piece bytes received from agents (`origin == false`) or from origins.
    pub fn bytes_received(&self, origin: bool) -> u64 {
        let from = if origin { "origin" } else { "agent" };
        self.bytes_received
            .get_or_create(&FromLabels { from })
            .get()
    }
}
