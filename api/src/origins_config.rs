//! `origins:` — the one description of the origin cluster that the proxy, the build-index, the
//! tracker and the origins themselves (`cluster.origins`) read.
//!
//! The members are the origins' HTTP addresses (the strings rendezvous hashing ranks), static or
//! from DNS, health-checked (`shoal_membership`). The tracker also hands each origin out as a
//! seeder and so needs its gRPC peer address: listed beside the HTTP address, or derived from
//! it with `peer_port`. Every shape any component accepted before still parses:
//!
//! ```yaml
//! origins: [10.0.0.1:15100, 10.0.0.2:15100]
//! origins: [{http: 10.0.0.1:15100, peer: 10.0.0.1:15101}]             # with peer addresses
//! origins: {static: [10.0.0.1:15100], peer_port: 15101, health: {interval: 2s}}
//! origins: {dns: {name: origin.shoal.svc.cluster.local, port: 15100}, peer_port: 15101}
//! ```

use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shoal_membership::{DnsConfig, HealthConfig, MembersConfig, Source};

/// The origin cluster's members and, where known, each origin's peer address.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct OriginsConfig {
    members: MembersConfig,
    peers: Peers,
}

/// How an origin's gRPC peer address is found.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
enum Peers {
    /// Not configured: only the tracker needs them.
    #[default]
    Unknown,
    /// One per static member, in the same order.
    Listed(Vec<String>),
    /// The member's host with this port.
    Port(u16),
}

/// One origin's two addresses, as the tracker has always listed them.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OriginAddrs {
    /// `host:port` (or `http://…`) of its HTTP API.
    pub http: String,
    /// `host:port` of its gRPC `Peer` service.
    pub peer: String,
}

impl OriginsConfig {
    /// A static list of HTTP addresses with default health checks.
    pub fn fixed<S: Into<String>>(members: impl IntoIterator<Item = S>) -> Self {
        MembersConfig::fixed(members).into()
    }

    /// A static list of origins with their peer addresses.
    pub fn listed(origins: Vec<OriginAddrs>) -> Self {
        let (http, peers): (Vec<String>, Vec<String>) =
            origins.into_iter().map(|o| (o.http, o.peer)).unzip();
        OriginsConfig {
            members: MembersConfig::fixed(http),
            peers: Peers::Listed(peers),
        }
    }

    /// Every origin's peer address is its HTTP host with `port`.
    pub fn with_peer_port(mut self, port: u16) -> Self {
        self.peers = Peers::Port(port);
        self
    }

    /// The HTTP addresses: a membership source with its health checks.
    pub fn members(&self) -> &MembersConfig {
        &self.members
    }

    /// The static members with their listed peer addresses, for checking them.
    pub fn listed_peers(&self) -> Vec<OriginAddrs> {
        match (&self.peers, self.members.static_members()) {
            (Peers::Listed(peers), Some(members)) => members
                .iter()
                .zip(peers)
                .map(|(http, peer)| OriginAddrs {
                    http: http.clone(),
                    peer: peer.clone(),
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The `peer_port` set, if any.
    pub fn peer_port(&self) -> Option<u16> {
        match self.peers {
            Peers::Port(port) => Some(port),
            _ => None,
        }
    }

    /// Whether every origin's peer address can be found ([`OriginsConfig::peer_of`]).
    pub fn knows_peers(&self) -> bool {
        !matches!(self.peers, Peers::Unknown)
    }

    /// The peer address of the origin whose HTTP address is `http`.
    pub fn peer_of(&self, http: &str) -> Option<String> {
        match &self.peers {
            Peers::Unknown => None,
            Peers::Listed(peers) => {
                let index = self
                    .members
                    .static_members()?
                    .iter()
                    .position(|m| m == http)?;
                peers.get(index).cloned()
            }
            Peers::Port(port) => {
                let authority = http
                    .trim_end_matches('/')
                    .rsplit_once("://")
                    .map_or(http, |(_, rest)| rest);
                let (host, _) = authority.rsplit_once(':')?;
                (!host.is_empty()).then(|| format!("{host}:{port}"))
            }
        }
    }

    /// Checks what the types cannot; the message names the sub-field (`health.fall`, `[2]`,
    /// `peer_port`), which components prefix with their own field name.
    pub fn validate(&self) -> Result<(), String> {
        self.members.validate()?;
        if self.peers == Peers::Port(0) {
            return Err("peer_port: must not be 0".into());
        }
        Ok(())
    }

    /// A deserializer for components that hand origins out as peers (the tracker): the parsed
    /// config must say where each origin's peer service is.
    pub fn deserialize_with_peers<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<OriginsConfig, D::Error> {
        let config = OriginsConfig::deserialize(deserializer)?;
        if !config.knows_peers() {
            return Err(de::Error::custom(
                "missing field `peer_port`: list each origin as {http, peer} or set `peer_port`",
            ));
        }
        Ok(config)
    }
}

impl From<MembersConfig> for OriginsConfig {
    fn from(members: MembersConfig) -> Self {
        OriginsConfig {
            members,
            peers: Peers::Unknown,
        }
    }
}

impl From<Vec<String>> for OriginsConfig {
    fn from(members: Vec<String>) -> Self {
        OriginsConfig::fixed(members)
    }
}

/// An origins config is a member list with peer addresses beside it: everything a member list
/// answers (`static_members`, `health`, `is_empty`) it answers too. A peer address listed for a
/// member that is later replaced is simply not found ([`OriginsConfig::peer_of`] is `None`).
impl std::ops::Deref for OriginsConfig {
    type Target = MembersConfig;

    fn deref(&self) -> &MembersConfig {
        &self.members
    }
}

impl std::ops::DerefMut for OriginsConfig {
    fn deref_mut(&mut self) -> &mut MembersConfig {
        &mut self.members
    }
}

/// Components that only need the HTTP addresses compare with a plain member list.
impl PartialEq<MembersConfig> for OriginsConfig {
    fn eq(&self, other: &MembersConfig) -> bool {
        self.peers == Peers::Unknown && self.members == *other
    }
}

/// A static list entry: a bare HTTP address or an `{http, peer}` pair.
enum Entry {
    Http(String),
    Pair(OriginAddrs),
}

impl<'de> Deserialize<'de> for Entry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor;

        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = Entry;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a host:port address or {http, peer}")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Entry, E> {
                Ok(Entry::Http(value.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Entry, A::Error> {
                OriginAddrs::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(Entry::Pair)
            }
        }

        deserializer.deserialize_any(EntryVisitor)
    }
}

/// A static list: all bare addresses, or all pairs.
fn from_entries<E: de::Error>(entries: Vec<Entry>) -> Result<(Vec<String>, Peers), E> {
    let pairs = entries
        .iter()
        .filter(|e| matches!(e, Entry::Pair(_)))
        .count();
    if pairs != 0 && pairs != entries.len() {
        return Err(E::custom(
            "list either bare addresses or {http, peer} pairs, not both",
        ));
    }
    let mut members = Vec::with_capacity(entries.len());
    let mut peers = Vec::with_capacity(pairs);
    for entry in entries {
        match entry {
            Entry::Http(http) => members.push(http),
            Entry::Pair(OriginAddrs { http, peer }) => {
                members.push(http);
                peers.push(peer);
            }
        }
    }
    let peers = if pairs == 0 {
        Peers::Unknown
    } else {
        Peers::Listed(peers)
    };
    Ok((members, peers))
}

/// The map form: exactly one of `static` and `dns`; `health` and `peer_port` optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MapForm {
    #[serde(rename = "static")]
    fixed: Option<Vec<Entry>>,
    dns: Option<DnsConfig>,
    #[serde(default)]
    health: HealthConfig,
    peer_port: Option<u16>,
}

impl<'de> Deserialize<'de> for OriginsConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FormVisitor;

        impl<'de> Visitor<'de> for FormVisitor {
            type Value = OriginsConfig;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of origins or a map with `static` or `dns`")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<OriginsConfig, A::Error> {
                let entries =
                    Vec::<Entry>::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                let (members, peers) = from_entries(entries)?;
                Ok(OriginsConfig {
                    members: MembersConfig::fixed(members),
                    peers,
                })
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<OriginsConfig, A::Error> {
                let form = MapForm::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let (source, mut peers) = match (form.fixed, form.dns) {
                    (Some(entries), None) => {
                        let (members, peers) = from_entries(entries)?;
                        (Source::Static(members), peers)
                    }
                    (None, Some(dns)) => (Source::Dns(dns), Peers::Unknown),
                    _ => return Err(de::Error::custom("set exactly one of `static` and `dns`")),
                };
                if let Some(port) = form.peer_port {
                    if matches!(peers, Peers::Listed(_)) {
                        return Err(de::Error::custom(
                            "`peer_port` and {http, peer} pairs both give peer addresses: keep one",
                        ));
                    }
                    peers = Peers::Port(port);
                }
                Ok(OriginsConfig {
                    members: MembersConfig {
                        source,
                        health: form.health,
                    },
                    peers,
                })
            }
        }

        deserializer.deserialize_any(FormVisitor)
    }
}

/// What an origins config adds to its member list's map form.
#[derive(Serialize)]
struct PeerPort {
    peer_port: u16,
}

impl Serialize for OriginsConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let extra = self.peer_port().map(|peer_port| PeerPort { peer_port });
        match &self.peers {
            Peers::Listed(_) => self
                .members
                .written(&self.listed_peers(), extra)
                .serialize(serializer),
            Peers::Unknown | Peers::Port(_) => {
                let members = self.members.static_members().unwrap_or_default();
                self.members.written(members, extra).serialize(serializer)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[derive(Deserialize, Serialize, Default, Debug, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Component {
        origins: OriginsConfig,
    }

    fn parse(yaml: &str) -> Result<OriginsConfig, String> {
        serde_yaml_ng::from_str::<Component>(yaml)
            .map(|c| c.origins)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn every_former_shape_parses() {
        let plain = parse("origins: [a:1, b:1]\n").unwrap();
        assert_eq!(plain, MembersConfig::fixed(["a:1", "b:1"]));
        assert_eq!(plain.peer_of("a:1"), None);

        let pairs =
            parse("origins:\n  - {http: a:1, peer: a:2}\n  - {http: b:1, peer: b:2}\n").unwrap();
        assert_eq!(pairs.members().static_members().unwrap(), ["a:1", "b:1"]);
        assert_eq!(pairs.peer_of("b:1").as_deref(), Some("b:2"));
        assert_eq!(pairs.peer_of("c:1"), None);

        let dns = parse(
            "origins:\n  dns: {name: o.test, port: 15100}\n  peer_port: 15101\n  health: {fall: 3}\n",
        )
        .unwrap();
        let Source::Dns(config) = &dns.members().source else {
            panic!("{dns:?}")
        };
        assert_eq!((config.name.as_str(), config.port), ("o.test", 15100));
        assert_eq!(dns.members().health.fall, 3);
        assert_eq!(
            dns.peer_of("10.1.2.3:15100").as_deref(),
            Some("10.1.2.3:15101")
        );
        assert_eq!(dns.peer_of("[::1]:15100").as_deref(), Some("[::1]:15101"));

        let health = parse("origins: {static: [a:1], health: {interval: 2s}}\n").unwrap();
        assert_eq!(health.members().health.interval, Duration::from_secs(2));
        assert!(!health.knows_peers());
    }

    #[test]
    fn a_peer_port_applies_to_static_names_too() {
        let config =
            parse("origins: {static: [\"http://o-0.origins:15100\"], peer_port: 7}\n").unwrap();
        assert_eq!(
            config.peer_of("http://o-0.origins:15100").as_deref(),
            Some("o-0.origins:7")
        );
        assert_eq!(config.peer_port(), Some(7));
    }

    #[test]
    fn https_dns_members_keep_their_peer_addresses() {
        let config =
            parse("origins: {dns: {name: o.test, port: 15100, scheme: https}, peer_port: 15101}\n")
                .unwrap();
        let Source::Dns(dns) = &config.members().source else {
            panic!("{config:?}")
        };
        for (ip, peer) in [
            ("10.1.2.3", "10.1.2.3:15101"),
            ("fd00::1", "[fd00::1]:15101"),
        ] {
            let member = dns.member(ip.parse().unwrap());
            assert!(member.starts_with("https://"), "{member}");
            assert_eq!(config.peer_of(&member).as_deref(), Some(peer));
        }
    }

    #[test]
    fn mistakes_are_named() {
        let error = parse("origins:\n  - {http: a:1, peer: a:2, pear: x}\n").unwrap_err();
        assert!(error.contains("pear"), "{error}");
        let error = parse("origins: [a:1, {http: b:1, peer: b:2}]\n").unwrap_err();
        assert!(error.contains("not both"), "{error}");
        let error =
            parse("origins: {static: [{http: a:1, peer: a:2}], peer_port: 3}\n").unwrap_err();
        assert!(error.contains("keep one"), "{error}");
        let error = parse("origins: {dns: {name: x, port: 1}, static: [a:1]}\n").unwrap_err();
        assert!(error.contains("exactly one"), "{error}");
        let zero = parse("origins: {dns: {name: x, port: 1}, peer_port: 0}\n").unwrap();
        assert!(zero.validate().unwrap_err().starts_with("peer_port"));
    }

    #[test]
    fn serialization_round_trips_in_the_shortest_form() {
        for (yaml, short) in [
            ("origins: [a:1, b:2]\n", "origins:\n- a:1\n- b:2\n"),
            (
                "origins: [{http: a:1, peer: a:2}]\n",
                "origins:\n- http: a:1\n  peer: a:2\n",
            ),
            ("origins: {dns: {name: x, port: 1}, peer_port: 2}\n", ""),
            ("origins: {static: [a:1], peer_port: 2}\n", ""),
            (
                "origins: {static: [{http: a:1, peer: a:2}], health: {rise: 2}}\n",
                "",
            ),
        ] {
            let config: Component = serde_yaml_ng::from_str(yaml).unwrap();
            let text = serde_yaml_ng::to_string(&config).unwrap();
            if !short.is_empty() {
                assert_eq!(text, short);
            }
            let again: Component = serde_yaml_ng::from_str(&text).unwrap();
            assert_eq!(config, again, "{text}");
        }
    }
}
