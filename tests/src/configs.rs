//! The YAML config each cluster component starts with. Configs are built as JSON values (valid
//! YAML once serialised) so a test can deep-merge its own settings (`p2p.egress_rate`,
//! `testing.corrupt_served_pieces`, …) over the harness defaults without string surgery.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use shoal_tls::TlsConfig;

use crate::cluster::Component;

/// The tracker tells peers to re-announce this often: short, so a test's swarm forms (and
/// notices a dead origin) within a second or two rather than the production default.
const ANNOUNCE_INTERVAL: &str = "1s";

/// The filesystem backend rooted at `root`, as a `backend:` value.
pub fn filesystem_backend(root: &Path) -> Value {
    json!({"filesystem": {"root": path(root)}})
}

/// `backend` is a `backend:` value such as [`filesystem_backend`] returns.
pub fn origin(listen: SocketAddr, peer_listen: SocketAddr, data: &Path, backend: &Value) -> Value {
    json!({
        "listen": listen.to_string(),
        "peer_listen": peer_listen.to_string(),
        "data_dir": path(data),
        "backend": backend,
    })
}

/// The `cluster:` section of origin `me` in a ring of `origins` (more than one): R is the ring
/// size up to 3, W is 2. Replicas wait only a second before writing back (production waits
/// 30 s for the committing origin's upload), so tests that wait for every queue to drain stay
/// quick.
pub fn origin_ring(origins: &[SocketAddr], me: SocketAddr) -> Value {
    json!({
        "cluster": {
            "origins": addr_strings(origins),
            "advertise": me.to_string(),
            "replicas": origins.len().min(3),
            "write_quorum": 2,
        },
        "writeback": {"replica_delay": "1s"},
    })
}

/// A build-index that keeps tags it cannot write to `backend` in `pending_dir` until it can.
pub fn build_index(
    listen: SocketAddr,
    origins: &[SocketAddr],
    backend: &Value,
    pending_dir: &Path,
) -> Value {
    json!({
        "listen": listen.to_string(),
        "origins": addr_strings(origins),
        "backend": backend,
        "pending_dir": pending_dir,
    })
}

pub fn proxy(listen: SocketAddr, origins: &[SocketAddr], build_index: &[SocketAddr]) -> Value {
    json!({
        "listen": listen.to_string(),
        "origins": addr_strings(origins),
        "build_index": one_or_list(build_index, ToString::to_string),
    })
}

/// Addresses as a config's `Addresses` field takes them: the one, or the list.
fn one_or_list(addrs: &[SocketAddr], written: impl Fn(&SocketAddr) -> String) -> Value {
    match addrs {
        [one] => json!(written(one)),
        many => json!(many.iter().map(written).collect::<Vec<_>>()),
    }
}

/// `origins` holds each origin's (HTTP, peer) address pair.
pub fn tracker(listen: SocketAddr, origins: &[(SocketAddr, SocketAddr)]) -> Value {
    let origins: Vec<Value> = origins
        .iter()
        .map(|(http, peer)| json!({"http": http.to_string(), "peer": peer.to_string()}))
        .collect();
    json!({
        "listen": listen.to_string(),
        "origins": origins,
        "announce_interval": ANNOUNCE_INTERVAL,
    })
}

pub fn agent(
    listen: SocketAddr,
    peer_listen: SocketAddr,
    trackers: &[SocketAddr],
    build_index: &[SocketAddr],
    data: &Path,
) -> Value {
    json!({
        "listen": listen.to_string(),
        "peer_listen": peer_listen.to_string(),
        "tracker": one_or_list(trackers, ToString::to_string),
        "build_index": one_or_list(build_index, ToString::to_string),
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

// Every component lists origins as the same `ip:port` strings: the origins' rendezvous ranking
// hashes these exact strings.
fn addr_strings(addrs: &[SocketAddr]) -> Vec<String> {
    addrs.iter().map(ToString::to_string).collect()
}

/// What [`crate::cluster::ClusterOptions::tls`] changes in `component`'s config: its `tls:`
/// section, and every HTTP address it calls as `https(addr)`. Plain `host:port` gRPC addresses
/// (the tracker, peers) stay as they are: the component's `tls.ca` puts them on TLS.
pub fn tls_overrides(
    component: Component,
    tls: &TlsConfig,
    origins: &[(SocketAddr, SocketAddr)],
    build_index: &[SocketAddr],
    https: impl Fn(&SocketAddr) -> String,
) -> Value {
    let build_index = one_or_list(build_index, &https);
    let origin_urls: Vec<String> = origins.iter().map(|(http, _)| https(http)).collect();
    let section = serde_json::to_value(tls).unwrap_or(Value::Null);
    let addresses = match component {
        Component::Origin | Component::OriginN(_) if origins.len() > 1 => {
            let index = match component {
                Component::OriginN(i) => i,
                _ => 0,
            };
            json!({"cluster": {"origins": origin_urls, "advertise": https(&origins[index].0)}})
        }
        Component::Origin | Component::OriginN(_) => Value::Null,
        Component::BuildIndex | Component::BuildIndexN(_) => json!({"origins": origin_urls}),
        Component::Proxy => json!({"origins": origin_urls, "build_index": build_index}),
        Component::Tracker | Component::TrackerN(_) => {
            let pairs: Vec<Value> = origins
                .iter()
                .map(|(http, peer)| json!({"http": https(http), "peer": peer.to_string()}))
                .collect();
            json!({"origins": pairs})
        }
        Component::Agent(_) => json!({"build_index": build_index}),
    };
    let mut config = json!({"tls": section});
    merge(&mut config, addresses);
    config
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
        let addr = "127.0.0.1:1".parse().expect("addr");
        let backend = filesystem_backend(Path::new("/tmp/#x"));
        let config = origin(addr, addr, Path::new("/tmp/a b: c"), &backend);
        let text = to_yaml(&config).expect("yaml");
        let back: Value = serde_yaml_ng::from_str(&text).expect("parse");
        assert_eq!(back, config);
    }
}
