//! The proxy's configuration file (`--config proxy.yaml`): where it listens and which origin and
//! build-index nodes it forwards to, and how it preheats pushed images.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use shoal_api::OriginsConfig;
use shoal_core::Addresses;
use shoal_membership::MembersConfig;
use shoal_registry_server::AuthConfig;
use shoal_service::LogConfig;
use shoal_service::tls::TlsConfig;

use crate::upstream::MAX_ORIGIN_ADDR_LEN;
pub use crate::validation::{ManifestValidation, Pattern, UrlPolicy, ValidationConfig};

/// Proxy settings. Every field has a default, so an empty file runs against the local dev cluster.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Registry V2 listen address.
    pub listen: SocketAddr,
    /// Serve HTTPS on `listen` with this certificate (`{cert, key}`, PEM files); absent, plain
    /// HTTP. `docker push` to a registry that is not on localhost needs HTTPS. With `tls.ca`,
    /// the proxy also presents this certificate to origins and the build-index (mutual TLS);
    /// registry clients on `listen` need none.
    pub tls: Option<TlsConfig>,
    /// The origin cluster (`host:port` or `http://host:port` members, the strings every
    /// component ranks): a static list or `{dns: {name, port}}`, health-checked (owners failing
    /// their checks are tried last). Upload handles name an origin by its address.
    pub origins: OriginsConfig,
    /// Owners per blob (R), as the origins' `cluster.replicas`: reads try these origins in
    /// rendezvous order until one has the blob.
    pub replicas: usize,
    /// The build-index (`host:port` or `http://host:port`): one, or a list of replicas that
    /// share a tag backend (each request goes to the replica that answered last, and on to the
    /// next while one gives no answer).
    pub build_index: Addresses,
    /// The push-notification webhook and the preheat API.
    pub preheat: PreheatConfig,
    /// Push and pull authentication of the Registry V2 API (`htpasswd` or `token`, and
    /// per-repository `rules`); absent, every caller may push and pull.
    pub auth: Option<AuthConfig>,
    /// Which external URLs pushed manifests' non-distributable layers may name
    /// (`manifests.urls.allow` / `deny` regexes); none by default.
    pub validation: ValidationConfig,
    /// `storage.delete.enabled` (as distribution's): serve blob deletes. Off by default.
    pub storage: StorageConfig,
    pub log: LogConfig,
}

/// `storage:`: what the registry API may change in storage.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub delete: DeleteConfig,
}

/// `storage.delete`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeleteConfig {
    /// `DELETE /v2/<name>/blobs/<digest>` deletes the blob when no recorded manifest
    /// references it; off, it answers 405 UNSUPPORTED.
    pub enabled: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 15000)),
            tls: None,
            origins: OriginsConfig::fixed(["127.0.0.1:15100"]),
            replicas: 3,
            build_index: Addresses::one("127.0.0.1:15004"),
            preheat: PreheatConfig::default(),
            auth: None,
            validation: ValidationConfig::default(),
            storage: StorageConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// `preheat:`: how registry push notifications and `POST /preheat` jobs are run.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreheatConfig {
    /// Shared secret callers send in `secret_header` (the bare value, or `Bearer <secret>`).
    /// The webhook and `GET /preheat/{id}` require it when set and are open when empty;
    /// `POST /preheat` always requires it, so it is off while this is empty (no caller can
    /// queue arbitrary images then). It is also what the proxy sends agents with
    /// `preheat.agents` (their `preheat.secret` must be the same).
    pub secret: String,
    /// The header the secret is read from.
    pub secret_header: String,
    /// Jobs run at once.
    pub workers: usize,
    /// Metainfo requests in flight per job (each makes an origin pull a blob from the backend).
    pub blob_concurrency: usize,
    /// Webhook jobs not finished yet (waiting, running or between attempts); a webhook arriving
    /// when there are this many gets 503 and the registry sends it again later.
    pub queue: usize,
    /// The same bound for `POST /preheat` jobs, counted apart: manual jobs, however many, never
    /// take the webhook's room.
    pub api_queue: usize,
    /// Attempts per job before it is marked failed (the manifest may not be readable yet).
    pub attempts: u32,
    /// Wait before the second attempt; doubles (with jitter) up to `retry_max`.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Finished jobs remembered for `GET /preheat/{id}`; the oldest are forgotten first.
    pub history: usize,
    /// Where every job's progress is kept as a JSON file, and the queue of unfinished jobs in
    /// `queue/`, so that queued and running jobs resume after a restart and finished ones stay
    /// readable. Give each replica its own.
    pub state_dir: PathBuf,
    /// Agents that also fetch each preheated image into their caches.
    pub agents: PreheatAgentsConfig,
}

/// `preheat.agents:`: after the origins hold an image, this many agents fetch it too. The
/// agents are picked by rendezvous hashing of the manifest digest, so each image lands on its
/// own agents and a retried job asks the same ones.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreheatAgentsConfig {
    /// The agents' HTTP (Registry V2) addresses, a static list or DNS (a headless Service over
    /// the agent DaemonSet); empty: images are preheated on the origins only.
    pub members: MembersConfig,
    /// Agents per image.
    pub count: usize,
    /// Share of the healthy agents per image, from 0.0 to 1.0. The larger of `count` and
    /// `ceil(share × healthy agents)` is used, capped at the healthy agents.
    pub share: f64,
    /// Agents asked at once per job.
    pub concurrency: usize,
    /// How long one agent may take to fetch a whole image before the request counts as failed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for PreheatAgentsConfig {
    fn default() -> Self {
        Self {
            members: MembersConfig::default(),
            count: 0,
            share: 0.0,
            concurrency: 4,
            // A multi-GiB image over a busy node's link takes minutes.
            timeout: Duration::from_secs(30 * 60),
        }
    }
}

impl PreheatAgentsConfig {
    /// Whether any agent preheats at all.
    pub fn enabled(&self) -> bool {
        !self.members.is_empty() && (self.count > 0 || self.share > 0.0)
    }

    /// Agents per image when `healthy` agents pass their health checks.
    pub fn wanted(&self, healthy: usize) -> usize {
        // Shares are at most 1.0 (validated), so the product fits any member count.
        let by_share = (self.share * healthy as f64).ceil() as usize;
        self.count.max(by_share).min(healthy)
    }
}

impl Default for PreheatConfig {
    fn default() -> Self {
        Self {
            secret: String::new(),
            secret_header: "Authorization".to_owned(),
            workers: 2,
            blob_concurrency: 8,
            queue: 1024,
            // Operators queue a few images by hand; a script gone wrong should not fill the disk
            // with job files.
            api_queue: 64,
            attempts: 8,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
            history: 1000,
            state_dir: PathBuf::from("shoal-data/proxy/preheat"),
            agents: PreheatAgentsConfig::default(),
        }
    }
}

/// A setting that parses but cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config field `origins`: at least one origin is required")]
    NoOrigins,
    #[error("config field `origins[{index}]`: empty address")]
    EmptyOrigin { index: usize },
    #[error("config field `origins`: {address:?} is listed twice")]
    DuplicateOrigin { address: String },
    #[error("config field `origins`: {reason}")]
    Origins { reason: String },
    #[error("config field `replicas`: must be at least 1")]
    NoReplicas,
    #[error("config field `build_index`: empty address")]
    EmptyBuildIndex,
    #[error("config field `preheat.{field}`: must be at least 1")]
    PreheatZero { field: &'static str },
    #[error("config field `preheat.secret_header`: {header:?} is not a valid header name")]
    PreheatHeader { header: String },
    #[error("config field `preheat.state_dir`: must not be empty")]
    PreheatStateDir,
    #[error("config field `preheat.agents.share`: {share} is not between 0.0 and 1.0")]
    PreheatAgentsShare { share: f64 },
    #[error(
        "config field `preheat.agents.members`: `count` or `share` asks for agents, but no members are listed"
    )]
    PreheatAgentsMissing,
    #[error(
        "config field `preheat.secret`: required with `preheat.agents` (agents accept POST /preheat only with their `preheat.secret`, which must be the same)"
    )]
    PreheatAgentsSecret,
    #[error("config field `preheat.agents.members`: {reason}")]
    PreheatAgentsMembers { reason: String },
}

impl ProxyConfig {
    /// Checks what serde cannot: a usable, duplicate-free origin list and a build-index address.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let origins = self.origins.members().static_members().unwrap_or_default();
        if self.origins.is_empty() {
            return Err(ConfigError::NoOrigins);
        }
        for (index, address) in origins.iter().enumerate() {
            if address.trim().is_empty() {
                return Err(ConfigError::EmptyOrigin { index });
            }
            if origins[..index].contains(address) {
                return Err(ConfigError::DuplicateOrigin {
                    address: address.clone(),
                });
            }
            if address.len() > MAX_ORIGIN_ADDR_LEN {
                return Err(ConfigError::Origins {
                    reason: format!(
                        "{address:?} is longer than the {MAX_ORIGIN_ADDR_LEN} characters an upload handle can name"
                    ),
                });
            }
        }
        self.origins
            .validate()
            .map_err(|reason| ConfigError::Origins { reason })?;
        if self.replicas == 0 {
            return Err(ConfigError::NoReplicas);
        }
        if self
            .build_index
            .as_slice()
            .iter()
            .any(|addr| addr.trim().is_empty())
        {
            return Err(ConfigError::EmptyBuildIndex);
        }
        let preheat = &self.preheat;
        for (field, value) in [
            ("workers", preheat.workers),
            ("blob_concurrency", preheat.blob_concurrency),
            ("queue", preheat.queue),
            ("api_queue", preheat.api_queue),
            ("attempts", preheat.attempts as usize),
            ("history", preheat.history),
            ("agents.concurrency", preheat.agents.concurrency),
        ] {
            if value == 0 {
                return Err(ConfigError::PreheatZero { field });
            }
        }
        if http::HeaderName::from_bytes(preheat.secret_header.as_bytes()).is_err() {
            return Err(ConfigError::PreheatHeader {
                header: preheat.secret_header.clone(),
            });
        }
        if preheat.state_dir.as_os_str().is_empty() {
            return Err(ConfigError::PreheatStateDir);
        }
        let agents = &preheat.agents;
        if !(0.0..=1.0).contains(&agents.share) {
            return Err(ConfigError::PreheatAgentsShare {
                share: agents.share,
            });
        }
        if agents.members.is_empty() && (agents.count > 0 || agents.share > 0.0) {
            return Err(ConfigError::PreheatAgentsMissing);
        }
        if agents.enabled() && preheat.secret.is_empty() {
            return Err(ConfigError::PreheatAgentsSecret);
        }
        agents
            .members
            .validate()
            .map_err(|reason| ConfigError::PreheatAgentsMembers { reason })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_the_dev_cluster_defaults() {
        let config: ProxyConfig = shoal_service::config::parse("", "proxy.yaml").unwrap();
        assert_eq!(config, ProxyConfig::default());
        assert_eq!(config.listen.to_string(), "127.0.0.1:15000");
        assert_eq!(config.origins, MembersConfig::fixed(["127.0.0.1:15100"]));
        assert_eq!(config.build_index, Addresses::one("127.0.0.1:15004"));
        config.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let error = shoal_service::config::parse::<ProxyConfig>("origin: [a]\n", "proxy.yaml")
            .unwrap_err()
            .to_string();
        assert!(error.contains("origin"), "{error}");
    }

    #[test]
    fn the_commented_auth_example_parses() {
        // The `auth:` example of deploy/configs/proxy.yaml, uncommented (htpasswd variant).
        let example = include_str!("../../deploy/configs/proxy.yaml");
        let auth: String = example
            .lines()
            .skip_while(|line| !line.starts_with("# auth:"))
            .take_while(|line| line.starts_with('#'))
            .filter(|line| !line.trim_start_matches('#').trim_start().starts_with('#'))
            .map(|line| format!("{}\n", line.strip_prefix("# ").unwrap_or("")))
            .collect();
        let config: ProxyConfig = shoal_service::config::parse(&auth, "proxy.yaml").unwrap();
        let auth = config.auth.expect("an auth section");
        assert!(auth.htpasswd.is_some() && auth.token.is_none());
        assert_eq!(auth.rules.len(), 2);
        assert_eq!(auth.groups["ci"], ["jenkins", "gitlab"]);

        let error = shoal_service::config::parse::<ProxyConfig>(
            "auth: {token: {realm: r, service: s, issuer: i, root_cert_bundel: b}}\n",
            "proxy.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("auth.token"), "{error}");
    }

    #[test]
    fn tls_takes_a_cert_and_key_path() {
        let config: ProxyConfig = shoal_service::config::parse(
            "tls: {cert: /tls/tls.crt, key: /tls/tls.key}\n",
            "proxy.yaml",
        )
        .unwrap();
        assert_eq!(
            config.tls,
            Some(TlsConfig {
                cert: "/tls/tls.crt".into(),
                key: "/tls/tls.key".into(),
                ca: None,
                identities: Default::default(),
            })
        );
        let error = shoal_service::config::parse::<ProxyConfig>("tls: {cert: a}\n", "proxy.yaml")
            .unwrap_err()
            .to_string();
        assert!(error.contains("tls") && error.contains("key"), "{error}");
    }

    #[test]
    fn unusable_origin_lists_are_rejected() {
        let with = |origins: &[&str]| ProxyConfig {
            origins: OriginsConfig::fixed(origins.iter().copied()),
            ..ProxyConfig::default()
        };
        assert!(matches!(with(&[]).validate(), Err(ConfigError::NoOrigins)));
        assert!(matches!(
            with(&["a:1", " "]).validate(),
            Err(ConfigError::EmptyOrigin { index: 1 })
        ));
        assert!(matches!(
            with(&["a:1", "b:1", "a:1"]).validate(),
            Err(ConfigError::DuplicateOrigin { .. })
        ));
        with(&["a:1", "b:1"]).validate().unwrap();
        let dns: ProxyConfig =
            shoal_service::config::parse("origins: {dns: {name: o, port: 1}}\n", "proxy.yaml")
                .unwrap();
        dns.validate().unwrap();
        let long = format!("{}:1", "o".repeat(MAX_ORIGIN_ADDR_LEN));
        assert!(matches!(
            with(&[&long]).validate(),
            Err(ConfigError::Origins { .. })
        ));
        let no_replicas = ProxyConfig {
            replicas: 0,
            ..ProxyConfig::default()
        };
        assert!(matches!(
            no_replicas.validate(),
            Err(ConfigError::NoReplicas)
        ));
    }

    #[test]
    fn preheat_settings_parse_and_are_checked() {
        let yaml =
            "preheat:\n  secret: s3cret\n  secret_header: X-Shoal-Token\n  retry_initial: 2s\n";
        let config: ProxyConfig = shoal_service::config::parse(yaml, "proxy.yaml").unwrap();
        assert_eq!(config.preheat.secret, "s3cret");
        assert_eq!(config.preheat.secret_header, "X-Shoal-Token");
        assert_eq!(config.preheat.retry_initial, Duration::from_secs(2));
        config.validate().unwrap();
        let bad = |preheat: PreheatConfig| {
            ProxyConfig {
                preheat,
                ..ProxyConfig::default()
            }
            .validate()
            .unwrap_err()
            .to_string()
        };
        let error = bad(PreheatConfig {
            workers: 0,
            ..PreheatConfig::default()
        });
        assert!(error.contains("preheat.workers"), "{error}");
        let error = bad(PreheatConfig {
            secret_header: "bad header".into(),
            ..PreheatConfig::default()
        });
        assert!(error.contains("preheat.secret_header"), "{error}");
    }

    #[test]
    fn agent_preheat_settings_parse_and_are_checked() {
        let yaml = "preheat:\n  secret: s3cret\n  state_dir: /var/lib/shoal/preheat\n  agents:\n    members: [a:1, b:1]\n    count: 1\n    share: 0.5\n";
        let config: ProxyConfig = shoal_service::config::parse(yaml, "proxy.yaml").unwrap();
        let agents = &config.preheat.agents;
        assert_eq!(agents.members, MembersConfig::fixed(["a:1", "b:1"]));
        assert_eq!((agents.count, agents.share), (1, 0.5));
        assert!(agents.enabled());
        assert_eq!(
            config.preheat.state_dir,
            PathBuf::from("/var/lib/shoal/preheat")
        );
        config.validate().unwrap();
        assert!(!PreheatAgentsConfig::default().enabled());

        let with = |agents: PreheatAgentsConfig| {
            ProxyConfig {
                preheat: PreheatConfig {
                    agents,
                    secret: "s3cret".into(),
                    ..PreheatConfig::default()
                },
                ..ProxyConfig::default()
            }
            .validate()
            .map_err(|e| e.to_string())
        };
        let without_secret = ProxyConfig {
            preheat: PreheatConfig {
                secret: String::new(),
                ..config.preheat.clone()
            },
            ..ProxyConfig::default()
        };
        let error = without_secret.validate().unwrap_err().to_string();
        assert!(error.contains("preheat.secret"), "{error}");
        let members = MembersConfig::fixed(["a:1"]);
        for share in [1.5, -0.1, f64::NAN] {
            let error = with(PreheatAgentsConfig {
                members: members.clone(),
                share,
                ..PreheatAgentsConfig::default()
            })
            .unwrap_err();
            assert!(error.contains("preheat.agents.share"), "{error}");
        }
        let error = with(PreheatAgentsConfig {
            count: 2,
            ..PreheatAgentsConfig::default()
        })
        .unwrap_err();
        assert!(error.contains("preheat.agents.members"), "{error}");
        let error = with(PreheatAgentsConfig {
            members,
            concurrency: 0,
            ..PreheatAgentsConfig::default()
        })
        .unwrap_err();
        assert!(error.contains("preheat.agents.concurrency"), "{error}");
    }

    #[test]
    fn agents_wanted_is_the_larger_of_count_and_share_capped_at_the_healthy() {
        let wanted = |count, share, healthy| {
            PreheatAgentsConfig {
                count,
                share,
                ..PreheatAgentsConfig::default()
            }
            .wanted(healthy)
        };
        assert_eq!(wanted(2, 0.0, 3), 2);
        assert_eq!(wanted(2, 0.0, 1), 1, "capped at the healthy agents");
        assert_eq!(wanted(0, 0.5, 3), 2, "the share rounds up");
        assert_eq!(wanted(1, 0.5, 10), 5);
        assert_eq!(wanted(6, 0.5, 10), 6);
        assert_eq!(wanted(0, 1.0, 7), 7);
        assert_eq!(wanted(0, 0.01, 200), 2);
        assert_eq!(wanted(3, 1.0, 0), 0);
    }
}
