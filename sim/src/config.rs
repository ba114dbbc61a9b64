//! What a simulation run models: the swarm (peers, origins, their links and latency), the blob
//! and its pieces, arrivals, the tracker's policy and the scheduler's tuning.

use std::time::Duration;

use serde::Serialize;
use shoal_core::piece_length_for;
use shoal_swarm::scheduler::SchedulerConfig;
use shoal_swarm::slots::DEFAULT_UPLOAD_SLOTS;
use thiserror::Error;

/// How the tracker picks the peers one announce answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum HandoutPolicy {
    /// Shoal's tracker (`shoal_swarm::handout`): the owning origins first, then complete
    /// peers, then the rest, a random sample within each class.
    OriginsFirst,
    /// A uniform random sample of origins and peers alike (a baseline to compare against).
    Random,
}

/// The tracker as the simulation models it.
#[derive(Debug, Clone, Serialize)]
pub struct TrackerModel {
    pub policy: HandoutPolicy,
    /// Peers per answer (the tracker's `handout_limit`, default 30).
    pub handout_limit: usize,
    /// How often a downloading peer announces (the tracker's `announce_interval`, default 3 s).
    pub announce_interval: Duration,
    /// Origins owning the blob (the tracker's `replicas`, default 3); only owners are handed out.
    pub replicas: u32,
}

impl Default for TrackerModel {
    fn default() -> Self {
        TrackerModel {
            policy: HandoutPolicy::OriginsFirst,
            handout_limit: 30,
            announce_interval: Duration::from_secs(3),
            replicas: 3,
        }
    }
}

/// One simulation run.
#[derive(Debug, Clone, Serialize)]
pub struct SimConfig {
    /// Agents pulling the blob.
    pub peers: u32,
    /// Blob length in bytes.
    pub blob_size: u64,
    /// Piece length; `None` uses Shoal's piece-length table (`shoal_core::piece_length_for`).
    pub piece_length: Option<u64>,
    /// Each agent's upload and download link, bytes per second.
    pub peer_upload: f64,
    pub peer_download: f64,
    pub origins: u32,
    /// Each origin's upload link, bytes per second.
    pub origin_upload: f64,
    /// One-way latency between any two nodes (and to the tracker).
    pub latency: Duration,
    /// Agents arrive uniformly at random within this window (zero: all at once).
    pub arrival_spread: Duration,
    pub tracker: TrackerModel,
    /// Pieces an agent uploads at once (its `p2p.upload_slots`); further requests are answered
    /// busy one round trip later, as Shoal's peer service does.
    pub upload_slots: usize,
    /// The same for origins.
    pub origin_upload_slots: usize,
    #[serde(skip)]
    pub scheduler: SchedulerConfig,
    /// How often the agent ticks its scheduler (the engine's 250 ms).
    pub tick: Duration,
    /// Give up on agents not complete after this much virtual time.
    pub time_limit: Duration,
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            peers: 100,
            blob_size: 100_000_000,
            piece_length: None,
            peer_upload: 100e6,
            peer_download: 100e6,
            origins: 3,
            origin_upload: 1e9,
            latency: Duration::from_millis(1),
            arrival_spread: Duration::ZERO,
            tracker: TrackerModel::default(),
            upload_slots: DEFAULT_UPLOAD_SLOTS,
            origin_upload_slots: DEFAULT_UPLOAD_SLOTS,
            scheduler: SchedulerConfig::default(),
            tick: Duration::from_millis(250),
            time_limit: Duration::from_secs(3600),
            seed: 1,
        }
    }
}

/// Why a simulation cannot run.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ConfigError {
    #[error("{field} must be at least 1")]
    Zero { field: &'static str },
    #[error("{field} must be a positive, finite rate (got {value})")]
    Rate { field: &'static str, value: f64 },
    #[error("the blob has {pieces} pieces of {piece_length} bytes; at most {max} are supported")]
    TooManyPieces {
        pieces: u64,
        piece_length: u64,
        max: u64,
    },
    #[error("scheduler: {0}")]
    Scheduler(#[from] shoal_swarm::scheduler::SchedulerConfigError),
}

impl SimConfig {
    /// The piece length in use.
    pub fn piece_length(&self) -> u64 {
        self.piece_length
            .unwrap_or_else(|| piece_length_for(self.blob_size))
    }

    /// Number of pieces of the blob.
    pub fn piece_count(&self) -> u64 {
        self.blob_size.div_ceil(self.piece_length().max(1))
    }

    /// The physical limit S/B: the time one agent needs to receive the blob at its link rate.
    pub fn link_limit(&self) -> f64 {
        self.blob_size as f64 / self.peer_download
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let zero = [
            ("peers", self.peers == 0),
            ("blob size", self.blob_size == 0),
            ("piece length", self.piece_length == Some(0)),
            ("upload slots", self.upload_slots == 0),
            ("origin upload slots", self.origin_upload_slots == 0),
            ("origins", self.origins == 0),
            ("tracker replicas", self.tracker.replicas == 0),
            ("tracker handout limit", self.tracker.handout_limit == 0),
            (
                "announce interval",
                self.tracker.announce_interval.is_zero(),
            ),
            ("tick", self.tick.is_zero()),
        ];
        if let Some((field, _)) = zero.into_iter().find(|&(_, zero)| zero) {
            return Err(ConfigError::Zero { field });
        }
        let rates = [
            ("peer upload rate", self.peer_upload),
            ("peer download rate", self.peer_download),
            ("origin rate", self.origin_upload),
        ];
        for (field, value) in rates {
            if !(value.is_finite() && value > 0.0) {
                return Err(ConfigError::Rate { field, value });
            }
        }
        // Piece indices are u32 and bitfields are allocated per peer: keep the count sane.
        let max = 1 << 20;
        if self.piece_count() > max {
            return Err(ConfigError::TooManyPieces {
                pieces: self.piece_count(),
                piece_length: self.piece_length(),
                max,
            });
        }
        self.scheduler.validate()?;
        Ok(())
    }
}
