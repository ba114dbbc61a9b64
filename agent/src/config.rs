//! The agent's configuration file (`--config agent.yaml`): where it listens, who it is in the
//! swarm, which tracker and build-index it asks, how big its disk cache may grow, and the
//! peer-to-peer engine's knobs. Every field has a default, so an empty file joins the local dev
//! cluster.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use shoal_core::{Addresses, Cidr, Name, PeerId};
use shoal_service::tls::TlsConfig;
use shoal_service::{ByteSize, LogConfig};
use shoal_storage::cache::{Budget, Percent};

/// `shoal-agent --config agent.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Registry V2 read API, `/health` and `/metrics`.
    pub listen: SocketAddr,
    /// The gRPC `Peer` service other agents fetch pieces from.
    pub peer_listen: SocketAddr,
    /// Where the admin endpoints (the day-2 tools' routes) listen; absent, they are served on
    /// `listen` beside the data endpoints.
    pub admin_listen: Option<SocketAddr>,
    /// `host:port` other peers reach our `Peer` service at; defaults to `peer_listen`.
    pub advertise_addr: Option<String>,
    /// Our name in the swarm; defaults to a UUID kept in `data_dir/peer_id` across restarts.
    pub peer_id: Option<PeerId>,
    /// Holds the blob cache (`store/`) and the persisted peer id.
    pub data_dir: PathBuf,
    /// The trackers' gRPC addresses (`host:port`): one, or a list of them. A blob's
    /// announces go to one of the list (the same for every agent with the same list), and to
    /// the next while that one fails.
    pub tracker: Addresses,
    /// The build-index's HTTP address (`host:port` or `http://host:port`), for tags: one, or
    /// a list of replicas that share a tag backend (each request goes to the replica that
    /// answered last, and on to the next while one gives no answer).
    pub build_index: Addresses,
    /// How long a resolved tag is reused before asking the build-index again.
    #[serde(with = "humantime_serde")]
    pub tag_cache_ttl: Duration,
    /// Addresses or CIDR blocks allowed to use the registry listener (pulls, `POST /preheat`):
    /// the node's own runtimes, when `listen` is on an address others can reach. Empty: anyone.
    /// `/health` and `/metrics` stay open to probes and scrapers.
    pub allowed_clients: Vec<Cidr>,
    pub namespaces: NamespacesConfig,
    pub cache: CacheConfig,
    pub preheat: PreheatConfig,
    pub p2p: shoal_p2p::P2pConfig,
    /// TEST-ONLY fault injection (`corrupt_served_pieces`). Never set in production.
    pub testing: shoal_p2p::Faults,
    /// `tls:` on the peer listener and for calls to the tracker, peers and the build-index;
    /// with `tls.ca`, mutual TLS: pieces only to agents and origins. The registry listener
    /// (`listen`, the node's runtime) stays plain HTTP.
    pub tls: Option<TlsConfig>,
    pub log: LogConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 16000)),
            peer_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 16001)),
            admin_listen: None,
            advertise_addr: None,
            peer_id: None,
            data_dir: PathBuf::from("shoal-data/agent"),
            tracker: Addresses::one("127.0.0.1:15003"),
            build_index: Addresses::one("127.0.0.1:15004"),
            tag_cache_ttl: Duration::from_secs(5),
            allowed_clients: Vec::new(),
            namespaces: NamespacesConfig::default(),
            cache: CacheConfig::default(),
            preheat: PreheatConfig::default(),
            p2p: shoal_p2p::P2pConfig::default(),
            testing: shoal_p2p::Faults::default(),
            tls: None,
            log: LogConfig::default(),
        }
    }
}

/// How containerd's `?ns=<upstream host>` maps to repositories.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespacesConfig {
    /// Upstream `host[:port]` → repository prefix: `/v2/app/…?ns=registry.example:5000` with
    /// `registry.example:5000: mirror/example` reads repository `mirror/example/app`. A host not
    /// listed is ignored and the path's name used as is.
    pub hosts: BTreeMap<String, Name>,
}

/// `preheat:`: who may make this agent fetch an image (`POST /preheat`, called by the proxy with
/// `preheat.agents`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreheatConfig {
    /// The proxy's `preheat.secret`, which it sends in `secret_header` (bare or `Bearer`). Empty:
    /// `POST /preheat` is off (403), since one request makes the agent fetch a whole image.
    pub secret: String,
    /// The header the secret is read from: the proxy's `preheat.secret_header`.
    pub secret_header: String,
}

impl Default for PreheatConfig {
    fn default() -> Self {
        PreheatConfig {
            secret: String::new(),
            secret_header: "Authorization".to_owned(),
        }
    }
}

/// The disk cache's byte budget and expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Bytes of blobs (complete, and downloads in progress at their full length) the cache
    /// aims to stay under.
    pub capacity: ByteSize,
    /// Eviction starts when the cache holds more than this share of `capacity` …
    pub high_watermark: Percent,
    /// … and stops once it holds at most this share.
    pub low_watermark: Percent,
    /// A blob nobody has read for this long is evicted even under budget.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl CacheConfig {
    /// The budget the shared store cache enforces.
    pub fn budget(&self) -> Budget {
        Budget::new(
            self.capacity.as_u64(),
            self.high_watermark,
            self.low_watermark,
            Some(self.ttl),
        )
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            capacity: ByteSize::gib(10),
            high_watermark: Percent(90),
            low_watermark: Percent(75),
            ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// A setting that parses but cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config field `{field}`: empty address")]
    EmptyAddress { field: &'static str },
    #[error("config field `tracker`: {addr:?} is not a `host:port` address: {reason}")]
    BadTracker { addr: String, reason: String },
    #[error(
        "config field `cache.low_watermark` ({low}) must be below `cache.high_watermark` ({high})"
    )]
    Watermarks { low: Percent, high: Percent },
    #[error("config field `cache.ttl` must be greater than zero")]
    ZeroTtl,
    #[error("config field `namespaces.hosts`: empty host")]
    EmptyHost,
    #[error(
        "config field `advertise_addr` is required when `peer_listen` ({listen}) is a wildcard \
         address: peers cannot connect to it"
    )]
    WildcardAdvertised { listen: SocketAddr },
    #[error("config field `preheat.secret_header`: {header:?} is not a valid header name")]
    PreheatHeader { header: String },
}

impl AgentConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let trackers = self.tracker.as_slice().iter().map(|a| ("tracker", Some(a)));
        let build_index = self.build_index.as_slice().iter();
        let build_index = build_index.map(|a| ("build_index", Some(a)));
        for (field, value) in trackers
            .chain(build_index)
            .chain([("advertise_addr", self.advertise_addr.as_ref())])
        {
            if value.is_some_and(|v| v.trim().is_empty()) {
                return Err(ConfigError::EmptyAddress { field });
            }
        }
        for addr in self.tracker.as_slice() {
            // A bad one would fail every call about the blobs it ranks first for.
            if let Err(e) = shoal_p2p::check_address(addr) {
                return Err(ConfigError::BadTracker {
                    addr: addr.clone(),
                    reason: shoal_core::chain(&e).to_string(),
                });
            }
        }
        let cache = &self.cache;
        if cache.low_watermark >= cache.high_watermark {
            return Err(ConfigError::Watermarks {
                low: cache.low_watermark,
                high: cache.high_watermark,
            });
        }
        if cache.ttl.is_zero() {
            return Err(ConfigError::ZeroTtl);
        }
        if self
            .namespaces
            .hosts
            .keys()
            .any(|host| host.trim().is_empty())
        {
            return Err(ConfigError::EmptyHost);
        }
        if http::HeaderName::from_bytes(self.preheat.secret_header.as_bytes()).is_err() {
            return Err(ConfigError::PreheatHeader {
                header: self.preheat.secret_header.clone(),
            });
        }
        if self.advertise_addr.is_none() && self.peer_listen.ip().is_unspecified() {
            return Err(ConfigError::WildcardAdvertised {
                listen: self.peer_listen,
            });
        }
        Ok(())
    }

    /// The `host:port` peers are told to reach us at.
    pub fn advertised(&self) -> String {
        self.advertise_addr
            .clone()
            .unwrap_or_else(|| self.peer_listen.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<AgentConfig, String> {
        shoal_service::config::parse(yaml, "agent.yaml").map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_gives_the_dev_cluster_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:16000");
        assert_eq!(config.advertised(), "127.0.0.1:16001");
        assert_eq!(config.cache.capacity, ByteSize::gib(10));
        assert_eq!(config.tag_cache_ttl, Duration::from_secs(5));
        assert!(!config.testing.corrupt_served_pieces);
        config.validate().unwrap();
    }

    #[test]
    fn every_section_parses_in_human_form() {
        let config = parse(
            "advertise_addr: node-7:16001\npeer_id: node-7\ntag_cache_ttl: 1m\n\
             namespaces:\n  hosts:\n    docker.io: mirror/hub\n\
             cache:\n  capacity: 1GiB\n  high_watermark: 80%\n  low_watermark: 50\n  ttl: 2h\n\
             testing:\n  corrupt_served_pieces: true\n",
        )
        .unwrap();
        assert_eq!(config.advertised(), "node-7:16001");
        assert_eq!(config.peer_id.as_ref().unwrap().as_str(), "node-7");
        assert_eq!(config.tag_cache_ttl, Duration::from_secs(60));
        assert_eq!(config.namespaces.hosts["docker.io"].as_str(), "mirror/hub");
        assert_eq!(config.cache.high_watermark, Percent(80));
        assert_eq!(config.cache.low_watermark, Percent(50));
        assert_eq!(config.cache.ttl, Duration::from_secs(7200));
        assert!(config.testing.corrupt_served_pieces);
        config.validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_field() {
        for (yaml, field) in [
            ("cache:\n  high_watermark: 101%\n", "cache.high_watermark"),
            ("cache:\n  low_watermark: lots\n", "cache.low_watermark"),
            (
                "namespaces:\n  hosts:\n    docker.io: Bad..Name\n",
                "namespaces.hosts",
            ),
            ("peer_id: 'has space'\n", "peer_id"),
            ("cache:\n  colour: blue\n", "cache.colour"),
        ] {
            let error = parse(yaml).unwrap_err();
            assert!(error.contains(field), "{yaml:?}: {error}");
        }
    }

    #[test]
    fn allowed_clients_are_addresses_or_blocks() {
        let config: AgentConfig = shoal_service::config::parse(
            "allowed_clients: [10.0.0.0/8, \"fd00::1\"]\n",
            "agent.yaml",
        )
        .unwrap();
        assert_eq!(config.allowed_clients.len(), 2);
        let error = shoal_service::config::parse::<AgentConfig>(
            "allowed_clients: [10.0.0.0/40]\n",
            "agent.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("allowed_clients"), "{error}");
    }

    #[test]
    fn unusable_settings_are_refused() {
        let mut config = AgentConfig::default();
        config.cache.low_watermark = Percent(90);
        assert!(matches!(
            config.validate(),
            Err(ConfigError::Watermarks { .. })
        ));
        let mut config = AgentConfig::default();
        config.cache.ttl = Duration::ZERO;
        assert!(matches!(config.validate(), Err(ConfigError::ZeroTtl)));
        let config = AgentConfig {
            tracker: Addresses::one(" "),
            ..AgentConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::EmptyAddress { field: "tracker" })
        ));
        let config = AgentConfig {
            tracker: Addresses::new(vec!["127.0.0.1:15003".into(), "a b:1".into()]).unwrap(),
            ..AgentConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::BadTracker { addr, .. }) if addr == "a b:1"
        ));
        let mut config = AgentConfig {
            peer_listen: "0.0.0.0:16001".parse().unwrap(),
            ..AgentConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(ConfigError::WildcardAdvertised { .. })
        ));
        config.advertise_addr = Some("10.0.0.7:16001".into());
        config.validate().unwrap();
    }
}
