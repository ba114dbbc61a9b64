//! The YAML config each cluster component starts with. Configs are built as JSON values (valid
//! YAML once serialised) so a test can deep-merge its own settings (`p2p.egress_rate`,
//! `testing.corrupt_served_pieces`, …) over the harness defaults without string surgery.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

/// The tracker tells peers to re-announce this often: short, so a test's swarm forms (and
/// notices a dead origin) within a second or two rather than the production default.
const ANNOUNCE_INTERVAL: &str = "1s";

/// Where a p2p-enabled cluster's processes listen.
#[derive(Debug, Clone, Copy)]
pub struct P2pAddrs {
    pub tracker: SocketAddr,
    pub origin_peer: SocketAddr,
}

pub fn origin(listen: SocketAddr, data: &Path, backend: &Path, p2p: Option<P2pAddrs>) -> Value {
    let mut config = json!({
        "listen": listen.to_string(),
        "data_dir": path(data),
        "backend": {"filesystem": {"root": path(backend)}},
    });
    if let Some(p2p) = p2p {
        merge(
            &mut config,
            json!({
                "peer_listen": p2p.origin_peer.to_string(),
            }),
        );
    }
    config
}

pub fn build_index(listen: SocketAddr, origin: SocketAddr, backend: &Path) -> Value {
    json!({
        "listen": listen.to_string(),
        "origins": [origin.to_string()],
        "backend": {"filesystem": {"root": path(backend)}},
    })
}

pub fn proxy(listen: SocketAddr, origin: SocketAddr, build_index: SocketAddr) -> Value {
    json!({
        "listen": listen.to_string(),
        "origins": [origin.to_string()],
        "build_index": build_index.to_string(),
    })
}

pub fn tracker(listen: SocketAddr, origin: SocketAddr, origin_peer: SocketAddr) -> Value {
    json!({
        "listen": listen.to_string(),
        "origins": [{"http": origin.to_string(), "peer": origin_peer.to_string()}],
        "announce_interval": ANNOUNCE_INTERVAL,
    })
}

pub fn agent(
    listen: SocketAddr,
    peer_listen: SocketAddr,
    tracker: SocketAddr,
    build_index: SocketAddr,
    data: &Path,
) -> Value {
    json!({
        "listen": listen.to_string(),
        "peer_listen": peer_listen.to_string(),
        "tracker": tracker.to_string(),
        "build_index": build_index.to_string(),
        "data_dir": path(data),
    })
}

/// Deep-merges `overrides` into `base`: objects merge key by key, `null` changes nothing (so
/// "no overrides" is `Value::Null`), anything else replaces.
pub fn merge(base: &mut Value, overrides: Value) {
    match (base, overrides) {
        (_, Value::Null) => {}
        (Value::Object(base), Value::Object(overrides)) => {
            for (key, value) in overrides {
                merge(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (base, overrides) => *base = overrides,
    }
}

/// The config as YAML text.
pub fn to_yaml(config: &Value) -> Result<String> {
    serde_yaml_ng::to_string(config).context("serialising a component config")
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_merge_into_nested_maps_and_replace_scalars() {
        let mut config = json!({"listen": "a", "p2p": {"seed_ttl": "10m", "egress_rate": null}});
        merge(
            &mut config,
            json!({"listen": "b", "p2p": {"egress_rate": "20MiB"}, "testing": {"x": true}}),
        );
        let expected = json!({
            "listen": "b",
            "p2p": {"seed_ttl": "10m", "egress_rate": "20MiB"},
            "testing": {"x": true},
        });
        assert_eq!(config, expected);
        merge(&mut config, Value::Null);
        assert_eq!(config, expected);
    }

    #[test]
    fn paths_with_spaces_and_colons_survive_yaml() {
        let config = origin(
            "127.0.0.1:1".parse().expect("addr"),
            Path::new("/tmp/a b: c"),
            Path::new("/tmp/#x"),
            None,
        );
        let text = to_yaml(&config).expect("yaml");
        let back: Value = serde_yaml_ng::from_str(&text).expect("parse");
        assert_eq!(back, config);
    }
}
