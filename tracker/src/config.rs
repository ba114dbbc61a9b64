//! The tracker's configuration file (`--config`): where to listen, the origin cluster, how long
//! peers stay in a swarm, how many peers one announce hands out, where peers are stored, and the
//! limits that keep one client from exhausting the tracker.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
pub use shoal_api::{OriginAddrs, OriginsConfig};
use shoal_core::PeerId;
use shoal_service::LogConfig;
use shoal_service::tls::TlsConfig;

/// `shoal-tracker --config tracker.yaml`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerConfig {
    /// Address of the gRPC `Tracker` service and of `/health` and `/metrics` (one port).
    pub listen: SocketAddr,
    /// Where the admin endpoints (the day-2 tools' routes) listen; absent, they are served on
    /// `listen` beside the data endpoints.
    pub admin_listen: Option<SocketAddr>,
    /// The origin cluster, with each origin's peer address: `{http, peer}` pairs, or members
    /// (static or `dns`) with `peer_port`. Rendezvous hashing over the `http` addresses picks a
    /// digest's owners, the same ranking every component uses; owners whose `/health` fails are
    /// handed out and asked last.
    #[serde(deserialize_with = "OriginsConfig::deserialize_with_peers")]
    pub origins: OriginsConfig,
    /// Owners per digest: how many origins are handed out as seeders and asked for metainfo.
    pub replicas: usize,
    /// How often peers are told to announce again.
    #[serde(with = "humantime_serde")]
    pub announce_interval: Duration,
    /// A peer that has not announced for this long leaves the swarm. Several announce intervals,
    /// so one late or lost announce does not drop a live peer.
    #[serde(with = "humantime_serde")]
    pub peer_ttl: Duration,
    /// Most peers one announce answers with.
    pub handout_limit: usize,
    /// Where swarms are kept.
    pub store: StoreConfig,
    /// Metainfo documents kept in memory (least recently used are dropped first).
    pub metainfo_cache: usize,
    /// Announce rates and record counts one client cannot exceed.
    pub limits: LimitsConfig,
    /// The swarm view (`/ui`, `/v1/swarms`).
    pub view: ViewConfig,
    /// `tls:` on the listener; with `tls.ca`, mutual TLS: only agents and origins announce and
    /// ask for metainfo.
    pub tls: Option<TlsConfig>,
    pub log: LogConfig,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 15003)),
            admin_listen: None,
            origins: OriginsConfig::listed(vec![OriginAddrs {
                http: "127.0.0.1:15100".into(),
                peer: "127.0.0.1:15101".into(),
            }]),
            replicas: 3,
            announce_interval: Duration::from_secs(3),
            peer_ttl: Duration::from_secs(30),
            handout_limit: 30,
            store: StoreConfig::Memory,
            metainfo_cache: 10_000,
            limits: LimitsConfig::default(),
            view: ViewConfig::default(),
            tls: None,
            log: LogConfig::default(),
        }
    }
}

/// Bounds on what announces may cost, so that no single client can exhaust the tracker's CPU or
/// memory. An announce over a rate limit is answered `RESOURCE_EXHAUSTED` with a retry hint; a
/// new peer beyond a record cap still gets its handout but is not recorded (see
/// `docs/p2p.md`, "tracker").
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Announces of one peer id. An agent announces every blob it downloads or seeds once per
    /// `announce_interval`, so the default rate covers 300 such blobs at the default 3 s
    /// interval, and a missed announce is caught up well within `peer_ttl`.
    pub announce_per_peer: RateConfig,
    /// Announces and metainfo requests from one source IP address, whatever peer ids they
    /// carry: a client cannot escape the per-peer limit by making up ids, nor make the origins
    /// look up made-up digests without bound. Several agents behind one address (a devcluster
    /// on loopback, a NAT) share it.
    pub announce_per_address: RateConfig,
    /// Peers recorded per blob. Beyond it a new peer is not recorded (it still gets its
    /// handout, and members already recorded stay as long as they announce); the blob's owning
    /// origins are always recorded.
    pub peers_per_digest: usize,
    /// Peer records in total, over every blob (a record is one peer in one blob's swarm). Beyond
    /// it new records are refused as above until old ones expire.
    pub records: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            announce_per_peer: RateConfig {
                rate: 100,
                burst: 500,
            },
            announce_per_address: RateConfig {
                rate: 500,
                burst: 2_500,
            },
            // A random handout of 30 needs nowhere near this many candidates; a fleet-wide pull
            // of one layer by more nodes still works (the rest fetch from the recorded ones).
            peers_per_digest: 10_000,
            // About 600 bytes each in memory (measured: 300,000 single-peer swarms took 174 MB),
            // so the cap holds the store near 600 MB, under the Helm chart's 1 GiB limit. One
            // address alone fills at most `announce_per_address` × `peer_ttl` of it.
            records: 1_000_000,
        }
    }
}

/// The swarm view's settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ViewConfig {
    /// A downloading peer whose piece count has not grown for this long is shown stalled. The
    /// default is half the agents' default `p2p.stall_timeout` (60 s), where a download fails.
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
}

impl Default for ViewConfig {
    fn default() -> Self {
        ViewConfig {
            stall_after: Duration::from_secs(30),
        }
    }
}

/// A token bucket: `rate` per second sustained, up to `burst` at once.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    pub rate: u32,
    pub burst: u32,
}

/// The peer store.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    /// In this process: swarms are lost on restart and peers rebuild them within one interval.
    #[default]
    Memory,
    /// In Redis, shared by several trackers and kept across tracker restarts.
    Redis {
        /// `redis://host:port[/db]`.
        url: String,
    },
}

/// A config value that parses but cannot work, named by its field path.
#[derive(Debug, thiserror::Error)]
#[error("config field `{field}`: {reason}")]
pub struct InvalidConfig {
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidConfig {
    InvalidConfig {
        field: field.into(),
        reason: reason.into(),
    }
}

impl TrackerConfig {
    /// Checks what the types alone cannot express.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        self.origins.validate().map_err(|reason| {
            // `dns.port: must not be 0` → field `origins.dns.port`; `[1]: …` → `origins[1]`.
            let (field, reason) = reason.split_once(": ").unwrap_or(("", &reason));
            let separator = if field.starts_with('[') || field.is_empty() {
                ""
            } else {
                "."
            };
            invalid(format!("origins{separator}{field}"), reason)
        })?;
        if self.origins.is_empty() {
            return Err(invalid(
                "origins",
                "at least one origin is required to serve metainfo",
            ));
        }
        if !self.origins.knows_peers() {
            return Err(invalid(
                "origins.peer_port",
                "list each origin as {http, peer} or set peer_port: peers need the origins' peer addresses",
            ));
        }
        for (i, origin) in self.origins.listed_peers().iter().enumerate() {
            if origin.http.is_empty() || origin.http.chars().any(char::is_whitespace) {
                return Err(invalid(
                    format!("origins[{i}].http"),
                    format!("{:?} is not a host:port or http:// address", origin.http),
                ));
            }
            if let Err(error) = PeerId::parse(&origin.peer) {
                return Err(invalid(
                    format!("origins[{i}].peer"),
                    format!(
                        "{:?} cannot serve as the origin's peer id: {error}",
                        origin.peer
                    ),
                ));
            }
        }
        if self.replicas == 0 {
            return Err(invalid("replicas", "must be at least 1"));
        }
        if self.handout_limit == 0 {
            return Err(invalid("handout_limit", "must be at least 1"));
        }
        if self.metainfo_cache == 0 {
            return Err(invalid("metainfo_cache", "must be at least 1"));
        }
        if self.announce_interval.is_zero() {
            return Err(invalid("announce_interval", "must be greater than zero"));
        }
        if u32::try_from(self.announce_interval.as_millis()).is_err() {
            return Err(invalid(
                "announce_interval",
                "must fit the protocol's u32 milliseconds (about 49 days)",
            ));
        }
        if self.peer_ttl <= self.announce_interval {
            return Err(invalid(
                "peer_ttl",
                "must be longer than announce_interval, or live peers drop out between announces",
            ));
        }
        if self.view.stall_after.is_zero() {
            return Err(invalid("view.stall_after", "must be greater than zero"));
        }
        if let StoreConfig::Redis { url } = &self.store
            && let Err(error) = redis::Client::open(url.as_str())
        {
            return Err(invalid("store.redis.url", error.to_string()));
        }
        self.limits.validate()
    }
}

impl LimitsConfig {
    fn validate(&self) -> Result<(), InvalidConfig> {
        for (field, limit) in [
            ("announce_per_peer", self.announce_per_peer),
            ("announce_per_address", self.announce_per_address),
        ] {
            if limit.rate == 0 {
                return Err(invalid(
                    format!("limits.{field}.rate"),
                    "must be at least 1",
                ));
            }
            if limit.burst == 0 {
                return Err(invalid(
                    format!("limits.{field}.burst"),
                    "must be at least 1",
                ));
            }
        }
        if self.peers_per_digest == 0 {
            return Err(invalid("limits.peers_per_digest", "must be at least 1"));
        }
        if self.records == 0 {
            return Err(invalid("limits.records", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_documented_defaults() {
        let config: TrackerConfig = shoal_service::config::parse("", "t").expect("parse");
        assert_eq!(config, TrackerConfig::default());
        assert_eq!(config.listen.to_string(), "127.0.0.1:15003");
        assert_eq!(
            config.origins.peer_of("127.0.0.1:15100").unwrap(),
            "127.0.0.1:15101"
        );
        assert_eq!(config.replicas, 3);
        assert_eq!(config.announce_interval, Duration::from_secs(3));
        assert_eq!(config.peer_ttl, Duration::from_secs(30));
        assert_eq!(config.handout_limit, 30);
        assert_eq!(config.store, StoreConfig::Memory);
        assert_eq!(config.metainfo_cache, 10_000);
        let limits = &config.limits;
        assert_eq!(
            limits.announce_per_peer,
            RateConfig {
                rate: 100,
                burst: 500
            }
        );
        assert_eq!(
            limits.announce_per_address,
            RateConfig {
                rate: 500,
                burst: 2_500
            }
        );
        assert_eq!(limits.peers_per_digest, 10_000);
        assert_eq!(limits.records, 1_000_000);
        config.validate().expect("defaults are valid");
    }

    #[test]
    fn limits_parse_and_zero_is_refused_by_field() {
        let yaml = "limits:\n  announce_per_peer: {rate: 5, burst: 10}\n  records: 20\n";
        let config: TrackerConfig = shoal_service::config::parse(yaml, "t").expect("parse");
        assert_eq!(
            config.limits.announce_per_peer,
            RateConfig { rate: 5, burst: 10 }
        );
        assert_eq!(config.limits.records, 20);
        assert_eq!(config.limits.peers_per_digest, 10_000, "the rest default");

        let error = shoal_service::config::parse::<TrackerConfig>(
            "limits:\n  announce_per_peer: {rate: 5}\n",
            "t",
        )
        .expect_err("burst is required with rate")
        .to_string();
        assert!(error.contains("burst"), "{error}");

        let field = |yaml: &str| {
            shoal_service::config::parse::<TrackerConfig>(yaml, "t")
                .expect("parse")
                .validate()
                .expect_err("invalid")
                .field
        };
        assert_eq!(
            field("limits: {announce_per_address: {rate: 0, burst: 1}}"),
            "limits.announce_per_address.rate"
        );
        assert_eq!(
            field("limits: {announce_per_peer: {rate: 1, burst: 0}}"),
            "limits.announce_per_peer.burst"
        );
        assert_eq!(
            field("limits: {peers_per_digest: 0}"),
            "limits.peers_per_digest"
        );
        assert_eq!(field("limits: {records: 0}"), "limits.records");
    }

    #[test]
    fn store_is_a_word_or_a_one_key_map() {
        let config: TrackerConfig =
            shoal_service::config::parse("store: memory\n", "t").expect("parse");
        assert_eq!(config.store, StoreConfig::Memory);
        let config: TrackerConfig = shoal_service::config::parse(
            "store:\n  redis:\n    url: redis://127.0.0.1:6379\n",
            "t",
        )
        .expect("parse");
        assert_eq!(
            config.store,
            StoreConfig::Redis {
                url: "redis://127.0.0.1:6379".into()
            }
        );
        config.validate().expect("valid");
    }

    #[test]
    fn fields_parse_in_human_form_and_typos_are_named() {
        let yaml = "listen: 0.0.0.0:9003\norigins:\n  - {http: a:1, peer: a:2}\n  - {http: b:1, peer: b:2}\nreplicas: 2\nannounce_interval: 500ms\npeer_ttl: 5s\nhandout_limit: 4\n";
        let config: TrackerConfig = shoal_service::config::parse(yaml, "t").expect("parse");
        assert_eq!(
            config.origins.members().static_members().unwrap(),
            ["a:1", "b:1"]
        );
        assert_eq!(config.origins.peer_of("b:1").unwrap(), "b:2");
        assert_eq!(config.announce_interval, Duration::from_millis(500));
        assert_eq!(config.peer_ttl, Duration::from_secs(5));
        assert_eq!(config.handout_limit, 4);
        config.validate().expect("valid");

        let error = shoal_service::config::parse::<TrackerConfig>(
            "origins:\n  - {http: a:1, peer: a:2, pear: x}\n",
            "t",
        )
        .expect_err("typo")
        .to_string();
        assert!(error.contains("pear"), "{error}");
    }

    #[test]
    fn origins_can_come_from_dns() {
        let yaml = "origins:\n  dns: {name: origin.shoal, port: 15100, nameserver: 127.0.0.1:53}\n  peer_port: 15101\n  health: {fall: 3}\n";
        let config: TrackerConfig = shoal_service::config::parse(yaml, "t").expect("parse");
        config.validate().expect("valid");
        let members = config.origins.members();
        let shoal_membership::Source::Dns(dns) = &members.source else {
            panic!("{members:?}")
        };
        assert_eq!((dns.name.as_str(), dns.port), ("origin.shoal", 15100));
        assert_eq!(members.health.fall, 3);
        assert_eq!(
            config.origins.peer_of("10.1.2.3:15100").unwrap(),
            "10.1.2.3:15101"
        );

        let text = serde_yaml_ng::to_string(&config).expect("serialize");
        let again: TrackerConfig = shoal_service::config::parse(&text, "t").expect("reparse");
        assert_eq!(again, config);

        let error = shoal_service::config::parse::<TrackerConfig>(
            "origins:\n  dns: {name: o, port: 1}\n",
            "t",
        )
        .expect_err("no peer_port")
        .to_string();
        assert!(error.contains("peer_port"), "{error}");
        let config: TrackerConfig = shoal_service::config::parse(
            "origins:\n  dns: {name: o, port: 0}\n  peer_port: 2\n",
            "t",
        )
        .expect("parse");
        assert_eq!(
            config.validate().expect_err("port 0").field,
            "origins.dns.port"
        );
    }

    #[test]
    fn unworkable_values_are_refused_by_field() {
        let field = |config: TrackerConfig| config.validate().expect_err("invalid").field;
        let base = TrackerConfig::default();
        assert_eq!(
            field(TrackerConfig {
                origins: OriginsConfig::listed(vec![]),
                ..base.clone()
            }),
            "origins"
        );
        assert_eq!(
            field(TrackerConfig {
                origins: OriginsConfig::listed(vec![OriginAddrs {
                    http: "a:1".into(),
                    peer: "[::1]:15101".into()
                }]),
                ..base.clone()
            }),
            "origins[0].peer"
        );
        assert_eq!(
            field(TrackerConfig {
                peer_ttl: base.announce_interval,
                ..base.clone()
            }),
            "peer_ttl"
        );
        assert_eq!(
            field(TrackerConfig {
                handout_limit: 0,
                ..base.clone()
            }),
            "handout_limit"
        );
        assert_eq!(
            field(TrackerConfig {
                store: StoreConfig::Redis {
                    url: "http://nope".into()
                },
                ..base
            }),
            "store.redis.url"
        );
    }
}
