//! What a simulation run models: the swarm (peers, origins, their links and latency), the blob
//! and its pieces, arrivals, the tracker's policy and the scheduler's tuning.

use std::time::Duration;

use serde::Serialize;
use shoal_core::piece_length_for;
use shoal_swarm::scheduler::SchedulerConfig;
use shoal_swarm::seeding::SeedingConfig;
use shoal_swarm::slots::{DEFAULT_UPLOAD_SLOTS, PIECE_COPIES};
use thiserror::Error;

/// How often the flows' rates are recomputed by default: a 4 MiB piece at 300 MB/s shared by
/// 30 flows lasts about 400 ms, so a tick's delay is a fraction of a percent of a transfer.
pub const RATING_INTERVAL: Duration = Duration::from_millis(1);

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
    /// How long the tracker keeps handing out an agent after its last announce (the tracker's
    /// `peer_ttl`, default 30 s): a departed agent is handed out until then.
    pub peer_ttl: Duration,
}

impl Default for TrackerModel {
    fn default() -> Self {
        TrackerModel {
            policy: HandoutPolicy::OriginsFirst,
            handout_limit: 30,
            announce_interval: Duration::from_secs(3),
            replicas: 3,
            peer_ttl: Duration::from_secs(30),
        }
    }
}

/// Agents and origins coming and going during a run. Shares are of `peers`, rounded to whole
/// agents, and drawn from their own seeded generator; all zero (the default) is a run without
/// churn.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Churn {
    /// Share of agents that leave mid-download: each leaves (its process exits) once it has
    /// verified a uniformly random number of pieces between 1 and all but one.
    pub leave_downloading: f64,
    /// Share of the other agents that leave as soon as they complete, never seeding.
    pub leave_complete: f64,
    /// Share of the other agents that hang mid-download, each once it has verified a uniformly
    /// random number of pieces between 1 and all but one: the process stops answering but its
    /// sockets stay open, so its sessions stand, requests to it and handshakes with it go
    /// unanswered until the requester's timeouts, and its tracker record expires.
    pub hang_downloading: f64,
    /// Share of agents that join late: uniformly within `late_window` after the start (instead
    /// of within `arrival_spread`). Drawn independently of the leavers.
    pub late_join: f64,
    pub late_window: Duration,
    /// Origin 0 exits or hangs mid-run; None: every origin stays up.
    pub origin_stops: Option<OriginStop>,
}

/// Origin 0 stopping once the agents have verified `at`, a share of all the bytes they need
/// (`peers` × blob size).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OriginStop {
    pub at: f64,
    pub how: Gone,
}

/// How a node stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Gone {
    /// Its process exited: its sockets close, so requests and connects to it fail at once.
    Exited,
    /// Its process stopped answering with its sockets open: sessions with it stand, requests
    /// to it are never answered, and handshakes with it time out.
    Hung,
}

impl Churn {
    /// Whether anything comes or goes.
    pub fn is_active(&self) -> bool {
        self.leave_downloading > 0.0
            || self.leave_complete > 0.0
            || self.hang_downloading > 0.0
            || self.late_join > 0.0
            || self.origin_stops.is_some()
    }
}

/// One simulation run.
#[derive(Debug, Clone, Serialize)]
pub struct SimConfig {
    /// Agents pulling the blob.
    pub peers: u32,
    /// Blob length in bytes.
    pub blob_size: u64,
    /// Piece length; `None` uses Shoal's (`shoal_core::piece_length_for`).
    pub piece_length: Option<u64>,
    /// Each agent's upload and download link, bytes per second.
    pub peer_upload: f64,
    pub peer_download: f64,
    pub origins: u32,
    /// Each origin's upload link, bytes per second.
    pub origin_upload: f64,
    /// One-way latency between any two nodes (and to the tracker).
    pub latency: Duration,
    /// The flows' max-min rates are recomputed at most this often (`crate::flows`); zero
    /// recomputes them at every start and finish.
    pub rating_interval: Duration,
    /// Agents arrive uniformly at random within this window (zero: all at once).
    pub arrival_spread: Duration,
    pub tracker: TrackerModel,
    pub churn: Churn,
    /// Pieces an agent uploads at once (its `p2p.upload_slots`); further requests are answered
    /// busy one round trip later, as Shoal's peer service does.
    pub upload_slots: usize,
    /// The same for origins.
    pub origin_upload_slots: usize,
    /// Copies of one piece an agent uploads at once (`shoal_swarm::slots::PIECE_COPIES`);
    /// further requests for it are answered "elsewhere" unless they insist. None: unbounded.
    pub piece_copies: Option<usize>,
    #[serde(skip)]
    pub scheduler: SchedulerConfig,
    /// The origins' super-seeding policy (`shoal_swarm::seeding`, as the origin's peer service
    /// runs it); None serves every request a slot allows.
    #[serde(skip)]
    pub seeding: Option<SeedingConfig>,
    /// A client streams the blob out of each agent at this rate, bytes per second
    /// (`crate::reader`); None reports download completion only.
    pub client_rate: Option<f64>,
    /// Pieces travel over the piece stream (`p2p.piece_stream`): a peer answers one
    /// downloader's requests in the order they came, each after the one before (`crate::swarm`),
    /// where gRPC's HTTP/2 shares the link among all of them at once. Simplified: a request is
    /// admitted (busy, elsewhere) when it is asked, not when the peer reads it, and one given
    /// up while it waits costs nothing (a real peer still sends it unless the downloader closes
    /// the connection).
    pub in_order: bool,
    /// How often the agent ticks its scheduler (the engine's 250 ms).
    pub tick: Duration,
    /// While pieces keep landing, a node tells its sessions about them at most this often
    /// (`shoal_swarm::notices`, as the peer service does); zero sends every notice at once.
    pub have_batch: Duration,
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
            rating_interval: RATING_INTERVAL,
            arrival_spread: Duration::ZERO,
            tracker: TrackerModel::default(),
            churn: Churn::default(),
            upload_slots: DEFAULT_UPLOAD_SLOTS,
            origin_upload_slots: DEFAULT_UPLOAD_SLOTS,
            piece_copies: Some(PIECE_COPIES),
            scheduler: SchedulerConfig::default(),
            seeding: Some(SeedingConfig::default()),
            client_rate: None,
            in_order: false,
            tick: Duration::from_millis(250),
            have_batch: shoal_swarm::notices::HAVE_BATCH,
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
    #[error("{field} must be a share between 0 and 1 (got {value})")]
    Share { field: &'static str, value: f64 },
    #[error(
        "agents leaving mid-download ({downloading}), on completion ({complete}) and hanging ({hanging}) add up to more than all agents"
    )]
    Leavers {
        downloading: f64,
        complete: f64,
        hanging: f64,
    },
    #[error(
        "agents can leave or hang mid-download only from a blob of at least 2 pieces (it has {pieces})"
    )]
    NothingToLeaveFrom { pieces: u64 },
    #[error(
        "an origin can die only while another owner survives: {owners} origin(s) own the blob (origins and tracker replicas)"
    )]
    LastOwner { owners: u32 },
    #[error("the tracker's peer TTL ({ttl:?}) must exceed its announce interval ({interval:?})")]
    PeerTtl { ttl: Duration, interval: Duration },
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
            ("piece copies", self.piece_copies == Some(0)),
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
            ("peer upload rate", Some(self.peer_upload)),
            ("peer download rate", Some(self.peer_download)),
            ("origin rate", Some(self.origin_upload)),
            ("client rate", self.client_rate),
        ];
        let rates = rates
            .into_iter()
            .filter_map(|(field, value)| Some((field, value?)));
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
        if self.tracker.peer_ttl <= self.tracker.announce_interval {
            return Err(ConfigError::PeerTtl {
                ttl: self.tracker.peer_ttl,
                interval: self.tracker.announce_interval,
            });
        }
        self.validate_churn()?;
        self.scheduler.validate()?;
        Ok(())
    }

    fn validate_churn(&self) -> Result<(), ConfigError> {
        let churn = &self.churn;
        let shares = [
            ("agents leaving mid-download", churn.leave_downloading),
            ("agents leaving on completion", churn.leave_complete),
            ("agents hanging mid-download", churn.hang_downloading),
            ("agents joining late", churn.late_join),
        ];
        for (field, value) in shares {
            if !(0.0..=1.0).contains(&value) {
                return Err(ConfigError::Share { field, value });
            }
        }
        if churn.leave_downloading + churn.leave_complete + churn.hang_downloading > 1.0 {
            return Err(ConfigError::Leavers {
                downloading: churn.leave_downloading,
                complete: churn.leave_complete,
                hanging: churn.hang_downloading,
            });
        }
        if (churn.leave_downloading > 0.0 || churn.hang_downloading > 0.0) && self.piece_count() < 2
        {
            return Err(ConfigError::NothingToLeaveFrom {
                pieces: self.piece_count(),
            });
        }
        if churn.late_join > 0.0 && churn.late_window.is_zero() {
            return Err(ConfigError::Zero {
                field: "late-join window",
            });
        }
        if let Some(OriginStop { at: share, .. }) = churn.origin_stops {
            // Zero would stop it before anyone starts: not "stopping at a share of the download".
            if !(share > 0.0 && share <= 1.0) {
                return Err(ConfigError::Share {
                    field: "the progress at which an origin stops",
                    value: share,
                });
            }
            let owners = self.origins.min(self.tracker.replicas);
            if owners < 2 {
                return Err(ConfigError::LastOwner { owners });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn churning(churn: Churn) -> SimConfig {
        SimConfig {
            churn,
            ..SimConfig::default()
        }
    }

    #[test]
    fn a_client_rate_must_be_positive_and_finite() {
        for value in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let config = SimConfig {
                client_rate: Some(value),
                ..SimConfig::default()
            };
            match config.validate() {
                Err(ConfigError::Rate { field, .. }) => assert_eq!(field, "client rate"),
                other => panic!("client rate {value}: {other:?}"),
            }
        }
        let config = SimConfig {
            client_rate: Some(100e6),
            ..SimConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn the_defaults_and_a_full_churn_are_valid() {
        assert_eq!(SimConfig::default().validate(), Ok(()));
        let config = churning(Churn {
            leave_downloading: 0.2,
            leave_complete: 0.1,
            hang_downloading: 0.05,
            late_join: 0.2,
            late_window: Duration::from_secs(5),
            origin_stops: Some(OriginStop {
                at: 0.5,
                how: Gone::Exited,
            }),
        });
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn shares_outside_zero_to_one_are_refused_by_name() {
        for bad in [-0.1, 1.5, f64::NAN] {
            let config = churning(Churn {
                leave_downloading: bad,
                ..Churn::default()
            });
            assert!(
                matches!(config.validate(), Err(ConfigError::Share { field, .. }) if field.contains("mid-download")),
                "{bad}"
            );
            let config = churning(Churn {
                late_join: bad,
                late_window: Duration::from_secs(1),
                ..Churn::default()
            });
            assert!(
                matches!(config.validate(), Err(ConfigError::Share { field, .. }) if field.contains("late")),
                "{bad}"
            );
            let config = churning(Churn {
                hang_downloading: bad,
                ..Churn::default()
            });
            assert!(
                matches!(config.validate(), Err(ConfigError::Share { field, .. }) if field.contains("hanging")),
                "{bad}"
            );
        }
        for bad in [0.0, 1.01, f64::NAN] {
            let config = churning(Churn {
                origin_stops: Some(OriginStop {
                    at: bad,
                    how: Gone::Hung,
                }),
                ..Churn::default()
            });
            assert!(
                matches!(config.validate(), Err(ConfigError::Share { field, .. }) if field.contains("origin")),
                "{bad}"
            );
        }
    }

    #[test]
    fn leavers_cannot_exceed_all_agents() {
        let config = churning(Churn {
            leave_downloading: 0.6,
            leave_complete: 0.5,
            ..Churn::default()
        });
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Leavers { .. })
        ));
        let config = churning(Churn {
            leave_downloading: 0.6,
            hang_downloading: 0.5,
            ..Churn::default()
        });
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Leavers { .. })
        ));
    }

    #[test]
    fn late_joiners_need_a_window() {
        let config = churning(Churn {
            late_join: 0.2,
            ..Churn::default()
        });
        assert_eq!(
            config.validate(),
            Err(ConfigError::Zero {
                field: "late-join window"
            })
        );
    }

    #[test]
    fn a_one_piece_blob_has_no_mid_download_to_leave_from() {
        let config = SimConfig {
            blob_size: 1000,
            piece_length: Some(1000),
            ..churning(Churn {
                leave_downloading: 0.1,
                ..Churn::default()
            })
        };
        assert_eq!(
            config.validate(),
            Err(ConfigError::NothingToLeaveFrom { pieces: 1 })
        );
    }

    #[test]
    fn an_origin_stops_only_beside_another_owner() {
        let mut config = churning(Churn {
            origin_stops: Some(OriginStop {
                at: 0.5,
                how: Gone::Exited,
            }),
            ..Churn::default()
        });
        config.origins = 1;
        assert_eq!(config.validate(), Err(ConfigError::LastOwner { owners: 1 }));
        config.origins = 3;
        config.tracker.replicas = 1;
        assert_eq!(config.validate(), Err(ConfigError::LastOwner { owners: 1 }));
    }

    #[test]
    fn the_peer_ttl_must_outlast_the_announce_interval() {
        let mut config = SimConfig::default();
        config.tracker.peer_ttl = config.tracker.announce_interval;
        assert!(matches!(
            config.validate(),
            Err(ConfigError::PeerTtl { .. })
        ));
    }
}
