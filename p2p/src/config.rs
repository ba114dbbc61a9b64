//! The engine's configuration (`p2p:` in agent and origin YAML), our identity in the swarm, and
//! test-only fault injection.

use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;
use shoal_core::PeerId;
use shoal_swarm::scheduler::SchedulerConfig;
use shoal_swarm::slots::DEFAULT_UPLOAD_SLOTS;

/// Seeders keep announcing a completed blob this long after its last use, so that nodes pulling
/// the same image a little later still find many sources.
const DEFAULT_SEED_TTL: Duration = Duration::from_secs(10 * 60);
/// Piece bytes travel in gRPC messages of this size: big enough that per-message overhead
/// (encode, frame, decode, one allocation) is negligible, a whole 1 MiB piece in one message,
/// far below tonic's 4 MiB decode limit, and the limiter's burst (one chunk).
const DEFAULT_CHUNK_SIZE: ByteSize = ByteSize::mib(1);
/// A download that verifies no piece for this long fails, so the registry clients waiting on it
/// get an error (and fall back or retry) instead of hanging; verified pieces stay on disk and the
/// next request resumes from them. Long enough to ride out a slow tracker interval and reconnects.
const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// gRPC's default maximum message size; chunks must stay below it with room for framing.
const MAX_CHUNK_SIZE: ByteSize = ByteSize::mib(2);

/// Download, seeding and bandwidth settings shared by agents and origins.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct P2pConfig {
    /// Piece selection and peer policy.
    pub scheduler: SchedulerConfig,
    /// Bytes per second for all pieces served (None = unlimited).
    pub egress_rate: Option<ByteSize>,
    /// Bytes per second for all pieces received (None = unlimited).
    pub ingress_rate: Option<ByteSize>,
    /// Keep announcing a completed blob this long after its last use.
    #[serde(with = "humantime_serde")]
    pub seed_ttl: Duration,
    /// Size of the `PieceChunk` messages that carry piece bytes.
    pub chunk_size: ByteSize,
    /// Fail a download when no piece has been verified for this long.
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
    /// Pieces served at once; more requests are answered busy (the requester retries elsewhere
    /// or after a back-off) instead of all slowing down together.
    pub upload_slots: usize,
    /// Fetch pieces over the piece stream (`docs/p2p.md`) from peers that offer it: requests
    /// pipelined on one plain TCP connection per peer, the piece's bytes sent with `sendfile` by
    /// the peer, no HTTP/2. Off: every piece is a gRPC `GetPiece` call. Never under TLS
    /// (`tls:`), where peers offer gRPC only.
    pub piece_stream: bool,
}

impl Default for P2pConfig {
    fn default() -> Self {
        P2pConfig {
            scheduler: SchedulerConfig::default(),
            egress_rate: None,
            ingress_rate: None,
            seed_ttl: DEFAULT_SEED_TTL,
            chunk_size: DEFAULT_CHUNK_SIZE,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            upload_slots: DEFAULT_UPLOAD_SLOTS,
            piece_stream: false,
        }
    }
}

impl P2pConfig {
    /// Checks values serde cannot: sizes that must be positive or bounded.
    pub fn validate(&self) -> Result<(), String> {
        self.scheduler.validate().map_err(|e| format!("p2p.{e}"))?;
        if self.chunk_size.as_u64() == 0 || self.chunk_size > MAX_CHUNK_SIZE {
            return Err(format!(
                "p2p.chunk_size must be between 1B and {MAX_CHUNK_SIZE}, got {}",
                self.chunk_size
            ));
        }
        if self.upload_slots == 0 {
            return Err("p2p.upload_slots must be at least 1".to_owned());
        }
        if self.stall_timeout.is_zero() {
            return Err("p2p.stall_timeout must be positive".to_owned());
        }
        for (field, rate) in [
            ("egress_rate", self.egress_rate),
            ("ingress_rate", self.ingress_rate),
        ] {
            if rate.is_some_and(|r| r.as_u64() == 0) {
                return Err(format!(
                    "p2p.{field} must be positive (leave it out for no limit)"
                ));
            }
        }
        Ok(())
    }
}

/// Who we are in the swarm: announced to the tracker and sent to the peers we open sessions with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub peer_id: PeerId,
    /// `host:port` of our gRPC `Peer` service.
    pub addr: String,
    /// Whether we are an origin (a dedicated seeder).
    pub origin: bool,
}

impl Identity {
    /// An identity with a fresh random peer id.
    pub fn random(addr: String, origin: bool) -> Identity {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Identity {
            // A simple uuid is 32 hex characters, which is always a valid peer id.
            peer_id: PeerId::parse(&id).unwrap_or_else(|_| unreachable!("uuid hex is a peer id")),
            addr,
            origin,
        }
    }
}

/// TEST-ONLY fault injection. Everything is off by default; never enable these in production.
///
/// `corrupt_served_pieces` makes our peer service flip bytes in every piece it serves, so
/// acceptance tests can prove that downloaders detect bad pieces by hash, blacklist the sender
/// and still finish with correct bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Flip a byte in every chunk of every piece served (TEST-ONLY).
    pub corrupt_served_pieces: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_limits_must_be_positive() {
        let config = P2pConfig::default();
        assert_eq!(config.chunk_size, ByteSize::mib(1));
        assert_eq!(config.seed_ttl, Duration::from_secs(600));
        config.validate().expect("defaults are valid");

        let zero_rate = P2pConfig {
            egress_rate: Some(ByteSize::b(0)),
            ..P2pConfig::default()
        };
        assert!(zero_rate.validate().unwrap_err().contains("egress_rate"));
        let huge_chunk = P2pConfig {
            chunk_size: ByteSize::mib(8),
            ..P2pConfig::default()
        };
        assert!(huge_chunk.validate().unwrap_err().contains("chunk_size"));
    }

    #[test]
    fn random_identities_differ() {
        let a = Identity::random("127.0.0.1:1".into(), false);
        let b = Identity::random("127.0.0.1:1".into(), false);
        assert_ne!(a.peer_id, b.peer_id);
    }
}
