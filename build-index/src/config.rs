//! The build-index configuration file (`--config`): where to listen, which origins hold the
//! manifests and blobs that tags point at, and which backend persists the tags.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use shoal_api::OriginsConfig;
use shoal_backends::{BackendConfig, RouteConfig};
use shoal_service::LogConfig;
use shoal_service::tls::TlsConfig;

/// Default address of the tag API (`docs/internal-api.md`, "Build-index HTTP API").
const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 15004);
/// Default origin: the first origin of the local dev cluster.
const DEFAULT_ORIGIN: &str = "127.0.0.1:15100";

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BuildIndexConfig {
    /// Address of the tag HTTP API.
    pub listen: SocketAddr,
    /// Where the admin endpoints (the day-2 tools' routes) listen; absent, they are served on
    /// `listen` beside the data endpoints.
    pub admin_listen: Option<SocketAddr>,
    /// HTTP addresses (`host:port` or `http://…`) of the origin cluster, or
    /// `{dns: {name, port}}`; health-checked. A tag is accepted only once its manifest and blobs
    /// are found on the origin owning each digest.
    pub origins: OriginsConfig,
    /// Owners per digest (R), as the origins' `cluster.replicas`: lookups try these origins in
    /// rendezvous order.
    pub replicas: usize,
    /// Where tags are persisted (`repositories/<repo>/_tags/<tag>`).
    pub backend: BackendConfig,
    /// Namespace → backend routes, as the origins': a repository's tags go to the first route
    /// whose regex matches its whole name. When non-empty they replace `backend`.
    pub backends: Vec<RouteConfig>,
    /// Where tags are kept durably while their backend is unreachable, until written back (so a
    /// push succeeds during a backend outage; other build-index nodes see such a tag once it is
    /// written back). Absent: a tag write fails when its backend does.
    pub pending_dir: Option<PathBuf>,
    /// Tags copied to other clusters by repository rule. Absent: nothing is replicated.
    pub replication: Option<ReplicationConfig>,
    /// Tags removed by repository rule, on a schedule and on demand (`POST /v1/retention`).
    /// Absent: tags are only removed by deletes.
    pub retention: Option<RetentionConfig>,
    /// Garbage collection of blobs (`gc::GcConfig`): grace, schedule, tombstone log.
    pub gc: crate::gc::GcConfig,
    /// `tls:` on the listener; with `tls.ca`, mutual TLS: tag writes only from proxies and
    /// build-indexes, reads from any cluster role.
    pub tls: Option<TlsConfig>,
    pub log: LogConfig,
}

/// Cross-cluster replication: a stored tag whose repository matches a rule is copied (blobs,
/// manifests, then the tag) to each of the rule's remote proxies.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Where pending jobs are kept, one small file per (remote, repository, tag), so a restart
    /// loses none.
    pub queue_dir: PathBuf,
    pub rules: Vec<ReplicationRule>,
    /// First pause after a failed attempt; doubled per failure up to `retry_max`.
    #[serde(default = "default_retry_initial", with = "humantime_serde")]
    pub retry_initial: Duration,
    #[serde(default = "default_retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
}

/// A remote that is down is retried quickly at first, then at most every few minutes so a long
/// outage does not flood its proxy with doomed attempts.
fn default_retry_initial() -> Duration {
    Duration::from_secs(1)
}
fn default_retry_max() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationRule {
    /// Regex matched against the whole repository name (`repl/.*`).
    pub repository: String,
    /// Base URLs of the remote clusters' proxies (`http://host:port`).
    pub remotes: Vec<String>,
}

impl Default for BuildIndexConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            admin_listen: None,
            origins: OriginsConfig::fixed([DEFAULT_ORIGIN]),
            replicas: 3,
            backend: BackendConfig::default(),
            backends: Vec::new(),
            pending_dir: None,
            replication: None,
            retention: None,
            gc: crate::gc::GcConfig::default(),
            tls: None,
            log: LogConfig::default(),
        }
    }
}

/// A config value that parses but cannot work, named by its field path.
#[derive(Debug, thiserror::Error)]
#[error("config field `{field}`: {reason}")]
pub struct InvalidConfig {
    pub field: String,
    pub reason: String,
}

impl BuildIndexConfig {
    /// Checks what serde cannot: at least one origin, and no blank or space-containing address.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.origins.is_empty() {
            return Err(InvalidConfig {
                field: "origins".into(),
                reason: "at least one origin address is required to check manifests".into(),
            });
        }
        if let Err(error) = self.origins.validate() {
            // `[1]: …` → field `origins[1]`; `dns.port: …` → field `origins.dns.port`.
            let (field, reason) = error.split_once(": ").unwrap_or(("", &error));
            let separator = if field.starts_with('[') { "" } else { "." };
            return Err(InvalidConfig {
                field: format!("origins{separator}{field}"),
                reason: reason.to_owned(),
            });
        }
        if self.replicas == 0 {
            return Err(InvalidConfig {
                field: "replicas".into(),
                reason: "must be at least 1".into(),
            });
        }
        if let Some(replication) = &self.replication {
            replication.validate()?;
        }
        if let Some(retention) = &self.retention {
            retention.validate()?;
        }
        if let Err((field, reason)) = self.gc.validate() {
            return Err(InvalidConfig {
                field: field.into(),
                reason,
            });
        }
        Ok(())
    }
}

/// Retention: which tags of which repositories go, checked every `interval`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Time between scheduled runs (the first one interval after start).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// The first rule whose `repository` matches a repository's whole name applies to it;
    /// repositories no rule matches keep every tag.
    pub rules: Vec<RetentionRuleConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRuleConfig {
    /// Regex matched against the whole repository name.
    pub repository: String,
    /// Keep the newest N unprotected tags (by the time each was last written).
    #[serde(default)]
    pub keep_last: Option<i64>,
    /// Remove unprotected tags last written longer ago than this.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Regexes over whole tag names that are never removed (and not counted by `keep_last`).
    #[serde(default)]
    pub protect: Vec<String>,
    /// Also remove the record of a manifest once retention removed its last tag, so garbage
    /// collection no longer keeps it.
    #[serde(default)]
    pub delete_untagged: bool,
}

impl RetentionConfig {
    fn validate(&self) -> Result<(), InvalidConfig> {
        self.compile().map(drop)
    }

    /// The rules with their regexes compiled and limits checked; the error names the field.
    pub fn compile(&self) -> Result<Vec<crate::retention::Rule>, InvalidConfig> {
        let invalid = |field: String, reason: String| InvalidConfig {
            field: format!("retention.{field}"),
            reason,
        };
        if self.interval.is_zero() {
            return Err(invalid("interval".into(), "must be above zero".into()));
        }
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, rule) in self.rules.iter().enumerate() {
            let repository = whole_name_regex(&rule.repository)
                .map_err(|e| invalid(format!("rules[{i}].repository"), e.to_string()))?;
            let keep_last = match rule.keep_last {
                None => None,
                Some(n) if n >= 1 => Some(n as usize),
                Some(n) => {
                    return Err(invalid(
                        format!("rules[{i}].keep_last"),
                        format!("must be at least 1 (got {n}); leave it out to keep any number"),
                    ));
                }
            };
            if rule.ttl.is_some_and(|ttl| ttl.is_zero()) {
                return Err(invalid(
                    format!("rules[{i}].ttl"),
                    "must be above zero".into(),
                ));
            }
            if keep_last.is_none() && rule.ttl.is_none() {
                return Err(invalid(
                    format!("rules[{i}]"),
                    "needs `keep_last`, `ttl` or both".into(),
                ));
            }
            let protect = rule
                .protect
                .iter()
                .enumerate()
                .map(|(j, pattern)| {
                    whole_name_regex(pattern)
                        .map_err(|e| invalid(format!("rules[{i}].protect[{j}]"), e.to_string()))
                })
                .collect::<Result<_, _>>()?;
            rules.push(crate::retention::Rule {
                repository,
                keep_last,
                ttl: rule.ttl,
                protect,
                delete_untagged: rule.delete_untagged,
            });
        }
        Ok(rules)
    }
}

impl ReplicationConfig {
    fn validate(&self) -> Result<(), InvalidConfig> {
        let invalid = |field: String, reason: String| InvalidConfig {
            field: format!("replication.{field}"),
            reason,
        };
        for (i, rule) in self.rules.iter().enumerate() {
            if let Err(error) = whole_name_regex(&rule.repository) {
                return Err(invalid(format!("rules[{i}].repository"), error.to_string()));
            }
            if rule.remotes.is_empty() {
                return Err(invalid(
                    format!("rules[{i}].remotes"),
                    "at least one remote proxy URL is required".into(),
                ));
            }
            for (j, remote) in rule.remotes.iter().enumerate() {
                let url_ok = reqwest::Url::parse(remote)
                    .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.has_host());
                if !url_ok {
                    return Err(invalid(
                        format!("rules[{i}].remotes[{j}]"),
                        format!("`{remote}` is not an http:// or https:// URL"),
                    ));
                }
            }
        }
        if self.retry_initial.is_zero() || self.retry_initial > self.retry_max {
            return Err(invalid(
                "retry_initial".into(),
                "must be above zero and at most `retry_max`".into(),
            ));
        }
        Ok(())
    }
}

/// A rule's regex, anchored so it must match the whole repository (or tag) name.
pub fn whole_name_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

#[cfg(test)]
mod tests {
    use shoal_membership::MembersConfig;

    use super::*;

    #[test]
    fn defaults_match_the_dev_cluster_ports() {
        let config = BuildIndexConfig::default();
        assert_eq!(config.listen.to_string(), "127.0.0.1:15004");
        assert_eq!(config.origins, MembersConfig::fixed(["127.0.0.1:15100"]));
        config.validate().unwrap();
    }

    #[test]
    fn yaml_overrides_fields_and_rejects_unknown_ones() {
        let config: BuildIndexConfig =
            shoal_service::config::parse("listen: 0.0.0.0:9000\norigins: [a:1, b:2]\n", "t")
                .unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.origins, MembersConfig::fixed(["a:1", "b:2"]));

        let error = shoal_service::config::parse::<BuildIndexConfig>("origin: [a:1]\n", "t")
            .unwrap_err()
            .to_string();
        assert!(error.contains("`origin`"), "{error}");
    }

    #[test]
    fn the_backend_is_a_single_key_map() {
        let config: BuildIndexConfig = shoal_service::config::parse(
            "backend:\n  filesystem:\n    root: /var/lib/shoal\n",
            "t",
        )
        .unwrap();
        assert_eq!(
            config.backend,
            BackendConfig::Filesystem {
                root: "/var/lib/shoal".into()
            }
        );
        let error = shoal_service::config::parse::<BuildIndexConfig>(
            "backend:\n  filesystem:\n    rot: /x\n",
            "t",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("rot"), "{error}");
    }

    #[test]
    fn empty_or_blank_origins_are_refused_by_field() {
        let mut config = BuildIndexConfig {
            origins: MembersConfig::default().into(),
            ..Default::default()
        };
        assert_eq!(config.validate().unwrap_err().field, "origins");
        config.origins = MembersConfig::fixed(["a:1", " "]).into();
        assert_eq!(config.validate().unwrap_err().field, "origins[1]");
        config.origins = shoal_service::config::parse::<BuildIndexConfig>(
            "origins: {dns: {name: origin.shoal, port: 0}}\n",
            "t",
        )
        .unwrap()
        .origins;
        assert_eq!(config.validate().unwrap_err().field, "origins.dns.port");
    }

    /// A config parsed and validated, or the error's text.
    fn parse(yaml: &str) -> Result<BuildIndexConfig, String> {
        let config = shoal_service::config::parse::<BuildIndexConfig>(yaml, "t")
            .map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn replication_rules_are_checked_by_field() {
        let good = "replication:\n  queue_dir: /q\n  retry_initial: 2s\n  rules:\n    - repository: 'repl/.*'\n      remotes: ['http://b:5000']\n";
        parse(good).unwrap();
        let error = parse(&good.replace("repl/.*", "repl/(")).unwrap_err();
        assert!(error.contains("replication.rules[0].repository"), "{error}");
        let error = parse(&good.replace("http://b:5000", "b:5000")).unwrap_err();
        assert!(error.contains("replication.rules[0].remotes[0]"), "{error}");
        let error = parse(&good.replace("remotes:", "remote:")).unwrap_err();
        assert!(error.contains("remote"), "{error}");
        let error = parse(&good.replace("2s", "10m")).unwrap_err();
        assert!(error.contains("replication.retry_initial"), "{error}");
    }

    #[test]
    fn retention_rules_are_checked_by_field() {
        let good = "retention:\n  interval: 1h\n  rules:\n    - repository: 'team/.*'\n      keep_last: 2\n      ttl: 7d\n      protect: ['latest']\n";
        parse(good).unwrap();
        for (from, to, field) in [
            ("team/.*", "team/(", "retention.rules[0].repository"),
            ("'latest'", "'v[1'", "retention.rules[0].protect[0]"),
            (
                "keep_last: 2",
                "keep_last: 0",
                "retention.rules[0].keep_last",
            ),
            (
                "keep_last: 2",
                "keep_last: -3",
                "retention.rules[0].keep_last",
            ),
            ("ttl: 7d", "ttl: 0s", "retention.rules[0].ttl"),
            ("interval: 1h", "interval: 0s", "retention.interval"),
            (
                "      keep_last: 2\n      ttl: 7d\n",
                "",
                "retention.rules[0]",
            ),
        ] {
            let error = parse(&good.replace(from, to)).unwrap_err();
            assert!(error.contains(&format!("`{field}`")), "{to}: {error}");
        }
        let error = parse(&good.replace("ttl: 7d", "ttl: soon")).unwrap_err();
        assert!(error.contains("ttl"), "{error}");
    }

    #[test]
    fn rule_regexes_match_the_whole_name() {
        let regex = whole_name_regex("repl/.*").unwrap();
        assert!(regex.is_match("repl/app"));
        assert!(!regex.is_match("other/repl/app"));
    }
}
