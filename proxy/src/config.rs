//! The proxy's configuration file (`--config proxy.yaml`): where it listens and which origin and
//! build-index nodes it forwards to.

use std::net::{Ipv4Addr, SocketAddr};

use serde::Deserialize;
use shoal_service::LogConfig;

/// Proxy settings. Every field has a default, so an empty file runs against the local dev cluster.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Registry V2 listen address.
    pub listen: SocketAddr,
    /// Origin nodes (`host:port` or `http://host:port`), in the same order on every proxy replica:
    /// upload handles name an origin by its position in this list.
    pub origins: Vec<String>,
    /// Owners per blob (R), as the origins' `cluster.replicas`: reads try these origins in
    /// rendezvous order until one has the blob.
    pub replicas: usize,
    /// The build-index node (`host:port` or `http://host:port`).
    pub build_index: String,
    pub log: LogConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 15000)),
            origins: vec!["127.0.0.1:15100".to_owned()],
            replicas: 3,
            build_index: "127.0.0.1:15004".to_owned(),
            log: LogConfig::default(),
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
    #[error("config field `replicas`: must be at least 1")]
    NoReplicas,
    #[error("config field `build_index`: empty address")]
    EmptyBuildIndex,
}

impl ProxyConfig {
    /// Checks what serde cannot: a usable, duplicate-free origin list and a build-index address.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.origins.is_empty() {
            return Err(ConfigError::NoOrigins);
        }
        for (index, address) in self.origins.iter().enumerate() {
            if address.trim().is_empty() {
                return Err(ConfigError::EmptyOrigin { index });
            }
            if self.origins[..index].contains(address) {
                return Err(ConfigError::DuplicateOrigin {
                    address: address.clone(),
                });
            }
        }
        if self.replicas == 0 {
            return Err(ConfigError::NoReplicas);
        }
        if self.build_index.trim().is_empty() {
            return Err(ConfigError::EmptyBuildIndex);
        }
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
        assert_eq!(config.origins, ["127.0.0.1:15100"]);
        assert_eq!(config.build_index, "127.0.0.1:15004");
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
    fn unusable_origin_lists_are_rejected() {
        let with = |origins: &[&str]| ProxyConfig {
            origins: origins.iter().map(|o| o.to_string()).collect(),
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
        let no_replicas = ProxyConfig {
            replicas: 0,
            ..ProxyConfig::default()
        };
        assert!(matches!(
            no_replicas.validate(),
            Err(ConfigError::NoReplicas)
        ));
    }
}
