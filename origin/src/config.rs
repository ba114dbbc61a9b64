//! The origin's configuration file: every field has a default, so an empty file (or none) runs a
//! single origin on loopback with a filesystem backend under `shoal-data/`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_api::OriginsConfig;
use shoal_backends::{BackendConfig, RetryPolicy, RouteConfig};
use shoal_core::Cidr;
use shoal_p2p::P2pConfig;
use shoal_service::tls::TlsConfig;
use shoal_service::{ByteSize, LogConfig};
use shoal_storage::cache::{Budget, Percent};

/// `shoal-origin --config origin.yaml`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OriginConfig {
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// Address of the gRPC `Peer` service that seeds every blob in the store to agents. The
    /// trackers list it (as this origin's `peer` address) and hand it out as a seeder.
    pub peer_listen: SocketAddr,
    /// Where the admin endpoints (the day-2 tools' routes) listen; absent, they are served on
    /// `listen` beside the data endpoints.
    pub admin_listen: Option<SocketAddr>,
    /// Holds the blob store (`store/`), the write-back queue (`writeback/`) and, in a ring, the
    /// queue of replica pushes not yet confirmed (`replication/`).
    pub data_dir: PathBuf,
    /// Where committed blobs are written back to and pulled through from.
    pub backend: BackendConfig,
    /// Namespace → backend routes (`- { namespace: "<regex>", backend: {…} }`): a push goes to
    /// the first route whose regex matches its whole repository name. When non-empty they
    /// replace `backend`, which is otherwise the one catch-all route.
    pub backends: Vec<RouteConfig>,
    pub writeback: WriteBackConfig,
    pub uploads: UploadsConfig,
    pub p2p: SeedConfig,
    pub cluster: ClusterConfig,
    /// `tls:` on both listeners; with `tls.ca`, mutual TLS: uploads and replication only from
    /// proxies and origins, pieces only to agents and origins, reads from any cluster role.
    pub tls: Option<TlsConfig>,
    pub cache: CacheConfig,
    pub log: LogConfig,
}

impl Default for OriginConfig {
    fn default() -> Self {
        OriginConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 15100)),
            peer_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 15101)),
            admin_listen: None,
            data_dir: PathBuf::from("shoal-data/origin"),
            backend: BackendConfig::default(),
            backends: Vec::new(),
            writeback: WriteBackConfig::default(),
            uploads: UploadsConfig::default(),
            p2p: SeedConfig::default(),
            cluster: ClusterConfig::default(),
            tls: None,
            cache: CacheConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl OriginConfig {
    /// Checks what the types alone cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.uploads.idle_timeout.is_zero() {
            return Err("uploads.idle_timeout must be greater than zero".into());
        }
        if self.uploads.max_sessions == 0 || self.uploads.max_sessions_per_client == 0 {
            return Err(
                "uploads.max_sessions and uploads.max_sessions_per_client must be greater than zero"
                    .into(),
            );
        }
        let wb = &self.writeback;
        if wb.retry_initial.is_zero() {
            return Err("writeback.retry_initial must be greater than zero".into());
        }
        if wb.retry_max < wb.retry_initial {
            return Err(format!(
                "writeback.retry_max ({}) must not be below writeback.retry_initial ({})",
                humantime_serde::re::humantime::format_duration(wb.retry_max),
                humantime_serde::re::humantime::format_duration(wb.retry_initial),
            ));
        }
        self.cluster.validate()?;
        self.cache.validate()?;
        self.p2p.engine().validate()
    }
}

/// The origin ring (`cluster:`): every origin of the cluster, so that a committed blob is copied
/// to its other rendezvous owners before the commit is acknowledged.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Every origin's HTTP address, exactly as proxies, trackers and the build-index list them
    /// (rendezvous hashing ranks these strings): a static list, or `{dns: {name, port}}` whose
    /// A/AAAA records give `ip:port` members; health-checked on `GET /health`. An empty list:
    /// this origin is alone and replicates nothing.
    pub origins: OriginsConfig,
    /// This origin's own entry in `origins` (with DNS: its `ip:port`, e.g. the pod IP).
    pub advertise: String,
    /// Owners per blob (R).
    pub replicas: usize,
    /// Owners that must hold the verified blob before a commit is acknowledged (W); the other
    /// owners receive it in the background.
    pub write_quorum: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            origins: OriginsConfig::default(),
            advertise: String::new(),
            replicas: 3,
            write_quorum: 2,
        }
    }
}

impl ClusterConfig {
    fn validate(&self) -> Result<(), String> {
        if self.replicas == 0 {
            return Err("cluster.replicas must be at least 1".into());
        }
        if self.write_quorum == 0 || self.write_quorum > self.replicas {
            return Err(format!(
                "cluster.write_quorum ({}) must be between 1 and cluster.replicas ({})",
                self.write_quorum, self.replicas
            ));
        }
        self.origins
            .validate()
            .map_err(|error| format!("cluster.origins{}", field_suffix(&error)))?;
        match self.origins.members().static_members() {
            Some([]) => Ok(()),
            Some(members) if !members.contains(&self.advertise) => Err(format!(
                "cluster.advertise ({:?}) must be one of cluster.origins",
                self.advertise
            )),
            Some(_) => Ok(()),
            // DNS answers are only known at run time; this origin finds itself among them.
            None if self.advertise.is_empty() => Err(
                "cluster.advertise must be set to this origin's ip:port when cluster.origins uses dns"
                    .into(),
            ),
            None => Ok(()),
        }
    }
}

/// `[2]: …` stays `origins[2]: …`; `dns.port: …` becomes `origins.dns.port: …`.
fn field_suffix(error: &str) -> String {
    if error.starts_with('[') {
        error.to_owned()
    } else {
        format!(".{error}")
    }
}

/// The store as a bounded cache in front of the backend (`cache:`): the agent's `cache.*` fields
/// without the TTL (an origin keeps a blob while it has room, however old).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Bytes of complete blobs the store aims to stay under; absent: unlimited (every blob
    /// stays). Blobs not yet in the backend are kept whatever this says.
    pub capacity: Option<ByteSize>,
    /// Eviction starts when the store holds more than this share of `capacity` …
    pub high_watermark: Percent,
    /// … and stops once it holds at most this share.
    pub low_watermark: Percent,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            capacity: None,
            high_watermark: Percent(90),
            low_watermark: Percent(75),
        }
    }
}

impl CacheConfig {
    /// The budget to enforce; `None` when the capacity is unlimited.
    pub fn budget(&self) -> Option<Budget> {
        let capacity = self.capacity?.as_u64();
        Some(Budget::new(
            capacity,
            self.high_watermark,
            self.low_watermark,
            None,
        ))
    }

    fn validate(&self) -> Result<(), String> {
        if self.low_watermark >= self.high_watermark {
            return Err(format!(
                "cache.low_watermark ({}) must be below cache.high_watermark ({})",
                self.low_watermark, self.high_watermark
            ));
        }
        Ok(())
    }
}

/// Seeding over the peer protocol (`p2p:`): the subset of the agents' p2p settings that applies
/// to a seeder that never downloads.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct SeedConfig {
    /// Bytes per second for all pieces served to agents (absent = unlimited).
    pub egress_rate: Option<ByteSize>,
    /// Size of the `PieceChunk` messages piece bytes are sent in.
    pub chunk_size: ByteSize,
    /// Pieces served at once; further requests are answered busy, so a flash crowd gets whole
    /// pieces fast from a few slots instead of every piece slowly.
    pub upload_slots: usize,
    /// While several agents pull a blob at once, answer a request for a piece sent recently (or
    /// sent more often than others) "get it elsewhere", so the agents spread it among
    /// themselves and the origin sends each piece about once (`shoal_swarm::seeding`). A lone
    /// agent, or one that insists because no peer of its holds the piece, is always served.
    pub super_seeding: bool,
}

impl Default for SeedConfig {
    fn default() -> Self {
        let engine = P2pConfig::default();
        SeedConfig {
            egress_rate: engine.egress_rate,
            chunk_size: engine.chunk_size,
            upload_slots: engine.upload_slots,
            super_seeding: true,
        }
    }
}

impl SeedConfig {
    /// These settings as the p2p library's config (its other fields at their defaults), which
    /// also validates them.
    pub fn engine(&self) -> P2pConfig {
        P2pConfig {
            egress_rate: self.egress_rate,
            chunk_size: self.chunk_size,
            upload_slots: self.upload_slots,
            ..P2pConfig::default()
        }
    }
}

/// Retry timing of uploads to the backend.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct WriteBackConfig {
    /// Delay before the first retry of a failed upload; doubles per failure, with jitter.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Upper bound of the retry delay.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// How long an owner that received a blob as a replica waits before writing it back: the
    /// origin that committed it normally uploads it first, so the replica finds it in the
    /// backend with a stat instead of uploading the same bytes again.
    #[serde(with = "humantime_serde")]
    pub replica_delay: Duration,
}

impl Default for WriteBackConfig {
    fn default() -> Self {
        let policy = RetryPolicy::default();
        WriteBackConfig {
            retry_initial: policy.min_delay,
            retry_max: policy.max_delay,
            replica_delay: Duration::from_secs(30),
        }
    }
}

impl From<WriteBackConfig> for RetryPolicy {
    fn from(config: WriteBackConfig) -> Self {
        RetryPolicy {
            min_delay: config.retry_initial,
            max_delay: config.retry_max,
            max_attempts: None,
        }
    }
}

/// Upload sessions.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct UploadsConfig {
    /// A session no request has touched for this long is discarded with its bytes (its client
    /// crashed or gave up). Generous, because a pusher may pause between layers.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Sessions open at once on this origin; beyond, `POST /uploads` answers 429. Idle sessions
    /// hold no file descriptor, so this bounds memory and staged files, not descriptors.
    pub max_sessions: usize,
    /// Sessions open at once per client address (an IPv6 /64 counts as one client). A docker
    /// push opens one per layer it sends at once (3 to 5), so this leaves room for a build
    /// host running dozens of pushes while one client cannot take the whole of `max_sessions`.
    pub max_sessions_per_client: usize,
    /// Callers (addresses or CIDR blocks) trusted to name the client they open a session for
    /// in the `Shoal-Client-Addr` header: the proxies. From anyone else the header is ignored
    /// and the session counts against the caller's own address.
    pub trusted_forwarders: Vec<Cidr>,
}

impl Default for UploadsConfig {
    fn default() -> Self {
        UploadsConfig {
            idle_timeout: Duration::from_secs(3600),
            max_sessions: 8192,
            max_sessions_per_client: 128,
            // Proxies on the same host (the devcluster); a cluster lists its proxies' network.
            trusted_forwarders: vec![
                Cidr::new(Ipv4Addr::LOCALHOST.into(), 8),
                Cidr::new(std::net::Ipv6Addr::LOCALHOST.into(), 128),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_defaults() {
        let config: OriginConfig = shoal_service::config::parse("", "test").expect("parse");
        assert_eq!(config, OriginConfig::default());
        assert_eq!(config.listen.to_string(), "127.0.0.1:15100");
        assert_eq!(config.peer_listen.to_string(), "127.0.0.1:15101");
        assert_eq!(config.p2p.egress_rate, None);
        assert_eq!(config.p2p.chunk_size, ByteSize::mib(1));
        assert_eq!(config.writeback.retry_initial, Duration::from_secs(1));
        assert_eq!(config.writeback.retry_max, Duration::from_secs(300));
        assert_eq!(config.uploads.idle_timeout, Duration::from_secs(3600));
        config.validate().expect("defaults are valid");
    }

    #[test]
    fn fields_parse_in_human_form() {
        let yaml = "listen: 0.0.0.0:9000\ndata_dir: /var/lib/shoal\nbackend:\n  filesystem:\n    root: /mnt/backend\nwriteback:\n  retry_initial: 250ms\n  retry_max: 1m\nuploads:\n  idle_timeout: 30m\n";
        let config: OriginConfig = shoal_service::config::parse(yaml, "test").expect("parse");
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(
            config.backend,
            BackendConfig::Filesystem {
                root: PathBuf::from("/mnt/backend")
            }
        );
        assert_eq!(config.writeback.retry_initial, Duration::from_millis(250));
        assert_eq!(config.writeback.retry_max, Duration::from_secs(60));
        assert_eq!(config.uploads.idle_timeout, Duration::from_secs(1800));
        assert_eq!(config.uploads.max_sessions, 8192);
    }

    #[test]
    fn seeding_settings_parse_and_are_checked() {
        let yaml = "peer_listen: 0.0.0.0:9001\np2p:\n  egress_rate: 20MiB\n  chunk_size: 64KiB\n";
        let config: OriginConfig = shoal_service::config::parse(yaml, "test").expect("parse");
        assert_eq!(config.peer_listen.port(), 9001);
        assert_eq!(config.p2p.egress_rate, Some(ByteSize::mib(20)));
        assert_eq!(config.p2p.chunk_size, ByteSize::kib(64));
        config.validate().expect("valid");

        let mut config = OriginConfig::default();
        config.p2p.egress_rate = Some(ByteSize::b(0));
        assert!(config.validate().expect_err("zero").contains("egress_rate"));
        // Download-side settings do not exist on a seeder.
        assert!(
            shoal_service::config::parse::<OriginConfig>("p2p:\n  seed_ttl: 1m\n", "t").is_err()
        );
    }

    #[test]
    fn cluster_settings_parse_and_are_checked() {
        let yaml = "cluster:\n  origins: [a:1, b:1, c:1]\n  advertise: b:1\n  write_quorum: 3\n";
        let config: OriginConfig = shoal_service::config::parse(yaml, "test").expect("parse");
        assert_eq!(
            config.cluster.origins.static_members().unwrap(),
            ["a:1", "b:1", "c:1"]
        );
        assert_eq!(config.cluster.replicas, 3);
        assert_eq!(config.cluster.write_quorum, 3);
        config.validate().expect("valid");

        let check = |edit: fn(&mut ClusterConfig)| {
            let mut config = config.clone();
            edit(&mut config.cluster);
            config.validate().expect_err("invalid")
        };
        assert!(check(|c| c.advertise = "d:1".into()).contains("advertise"));
        assert!(check(|c| c.write_quorum = 4).contains("write_quorum"));
        assert!(check(|c| c.write_quorum = 0).contains("write_quorum"));
        assert!(check(|c| c.replicas = 0).contains("replicas"));
        assert!(
            check(|c| c.origins = OriginsConfig::fixed(["a:1", "b:1", "a:1"])).contains("twice")
        );
        assert!(check(|c| c.origins.health.fall = 0).starts_with("cluster.origins.health.fall"));

        let yaml = "cluster:\n  origins: {dns: {name: origin.shoal, port: 15100}}\n  advertise: 10.0.0.7:15100\n";
        let config: OriginConfig = shoal_service::config::parse(yaml, "test").expect("parse");
        config.validate().expect("valid");
        let mut config = config.clone();
        config.cluster.advertise.clear();
        assert!(
            config
                .validate()
                .expect_err("no advertise")
                .contains("advertise")
        );
    }

    #[test]
    fn the_cache_is_unlimited_by_default_and_takes_the_agents_units() {
        assert_eq!(OriginConfig::default().cache.budget(), None);
        let yaml = "cache:\n  capacity: 300MiB\n  high_watermark: 80%\n  low_watermark: 50\n";
        let config: OriginConfig = shoal_service::config::parse(yaml, "test").expect("parse");
        config.validate().expect("valid");
        let budget = config.cache.budget().expect("bounded");
        let mib = 1024 * 1024;
        assert_eq!((budget.high, budget.low), (240 * mib, 150 * mib));
        assert_eq!(budget.ttl, None, "an origin keeps blobs however old");

        let mut inverted = config;
        inverted.cache.low_watermark = Percent(80);
        assert!(
            inverted
                .validate()
                .expect_err("low = high")
                .contains("cache.low_watermark")
        );
        let error = shoal_service::config::parse::<OriginConfig>("cache:\n  ttl: 1h\n", "t")
            .expect_err("no TTL on origins")
            .to_string();
        assert!(error.contains("cache"), "{error}");
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = shoal_service::config::parse::<OriginConfig>(
            "writeback:\n  retry_inital: 1s\n",
            "origin.yaml",
        )
        .expect_err("typo");
        assert!(err.to_string().contains("writeback"), "{err}");
        assert!(err.to_string().contains("retry_inital"), "{err}");
    }

    #[test]
    fn inconsistent_retry_bounds_are_rejected() {
        let mut config = OriginConfig::default();
        config.writeback.retry_max = Duration::from_millis(10);
        assert!(
            config
                .validate()
                .expect_err("invalid")
                .contains("retry_max")
        );
        config.writeback.retry_initial = Duration::ZERO;
        assert!(config.validate().is_err());
    }

    #[test]
    fn upload_bounds_and_trusted_forwarders_parse() {
        let yaml = "uploads:\n  max_sessions: 10\n  max_sessions_per_client: 2\n  trusted_forwarders: [10.1.0.0/16, 10.2.0.7, 'fd00::/8']\n";
        let config: OriginConfig = shoal_service::config::parse(yaml, "test").expect("parse");
        config.validate().expect("valid");
        let uploads = &config.uploads;
        assert_eq!(
            (uploads.max_sessions, uploads.max_sessions_per_client),
            (10, 2)
        );
        let trusted = |addr: &str| {
            let addr: std::net::IpAddr = addr.parse().unwrap();
            uploads
                .trusted_forwarders
                .iter()
                .any(|net| net.contains(addr))
        };
        assert!(trusted("10.1.255.3"));
        assert!(trusted("::ffff:10.1.0.1"));
        assert!(trusted("10.2.0.7"));
        assert!(!trusted("10.2.0.8"));
        assert!(trusted("fd00::1234"));
        assert!(
            !trusted("127.0.0.1"),
            "the default is replaced, not extended"
        );
        // The defaults trust loopback only.
        let default = UploadsConfig::default();
        assert!(
            default
                .trusted_forwarders
                .iter()
                .any(|n| n.contains("127.0.0.2".parse().unwrap()))
        );
        assert!(
            default
                .trusted_forwarders
                .iter()
                .any(|n| n.contains("::1".parse().unwrap()))
        );
        assert!(
            !default
                .trusted_forwarders
                .iter()
                .any(|n| n.contains("10.0.0.1".parse().unwrap()))
        );
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/", "fd00::/129"] {
            let yaml = format!("uploads:\n  trusted_forwarders: ['{bad}']\n");
            let error = shoal_service::config::parse::<OriginConfig>(&yaml, "test")
                .unwrap_err()
                .to_string();
            assert!(error.contains("CIDR"), "{bad}: {error}");
        }
        let zero =
            shoal_service::config::parse::<OriginConfig>("uploads:\n  max_sessions: 0\n", "test")
                .unwrap();
        assert!(zero.validate().is_err());
    }
}
