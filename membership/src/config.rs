//! How a group's members are found (`origins: …` in every component's YAML), and how they are
//! health-checked.
//!
//! Three forms parse:
//!
//! ```yaml
//! origins: [10.0.0.1:15100, 10.0.0.2:15100]            # a static list (health checks at their defaults)
//! origins: {static: [10.0.0.1:15100], health: {interval: 2s}}
//! origins:
//!   dns: {name: origin.shoal.svc.cluster.local, port: 15100, interval: 10s}
//!   health: {interval: 5s, timeout: 2s, fall: 2, rise: 1}
//! origins: {dns: {name: origin.shoal.svc.cluster.local, port: 15100, scheme: https}}
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A group's members and their health checks.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct MembersConfig {
    pub source: Source,
    pub health: HealthConfig,
}

/// The members for a log line: the static list (`a:1,b:2`) or the DNS name (`dns:name:port`).
impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Static(members) => f.write_str(&members.join(",")),
            Source::Dns(dns) => write!(f, "dns:{}:{}", dns.name, dns.port),
        }
    }
}

/// Where the member list comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Fixed `host:port` (or `http://host:port`) strings, exactly as written.
    Static(Vec<String>),
    /// A name whose A and AAAA records are the members (a Kubernetes headless Service).
    Dns(DnsConfig),
}

impl Default for Source {
    fn default() -> Self {
        Source::Static(Vec::new())
    }
}

/// `dns: {name, port, scheme, interval, nameserver}`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    /// Resolved for A and AAAA records; each address with `port` is one member (`ip:port`,
    /// `[ip6]:port`, or with `scheme: https` `https://ip:port`).
    pub name: String,
    pub port: u16,
    /// How the members are called. `https` when they serve TLS (mutual TLS inside the
    /// cluster), so that they are written as a static list of `https://` addresses would be.
    #[serde(default, skip_serializing_if = "Scheme::is_http")]
    pub scheme: Scheme,
    /// How often the name is resolved again. A failed or empty answer keeps the last good one.
    #[serde(default = "default_dns_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// The DNS server to ask instead of the system's (`/etc/resolv.conf`).
    #[serde(default)]
    pub nameserver: Option<SocketAddr>,
}

/// `dns.scheme`: plain HTTP members are written `ip:port`, as they always were, so the strings
/// rendezvous hashing ranks stay what they were; TLS members `https://ip:port`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    #[default]
    Http,
    Https,
}

impl Scheme {
    fn is_http(&self) -> bool {
        *self == Scheme::Http
    }
}

impl DnsConfig {
    /// The member an address of the answer stands for.
    pub fn member(&self, ip: IpAddr) -> String {
        let addr = SocketAddr::new(ip, self.port);
        match self.scheme {
            Scheme::Http => addr.to_string(),
            Scheme::Https => format!("https://{addr}"),
        }
    }
}

/// Re-resolving every 10 s follows a scaled StatefulSet within seconds without loading the DNS.
fn default_dns_interval() -> Duration {
    Duration::from_secs(10)
}

/// `health:` — active `GET /health` probes of every member.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Time between two probes of one member.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// A probe that has not answered 2xx within this long failed.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive failed probes that mark a healthy member unhealthy.
    pub fall: u32,
    /// Consecutive successful probes that mark an unhealthy member healthy again.
    pub rise: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        // Two failures 5 s apart: a member that died is passed over within ~10 s, and one lost
        // probe does not flap it.
        HealthConfig {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            fall: 2,
            rise: 1,
        }
    }
}

impl MembersConfig {
    /// A static list with default health checks.
    pub fn fixed<S: Into<String>>(members: impl IntoIterator<Item = S>) -> Self {
        MembersConfig {
            source: Source::Static(members.into_iter().map(Into::into).collect()),
            health: HealthConfig::default(),
        }
    }

    /// The listed members when the source is static.
    pub fn static_members(&self) -> Option<&[String]> {
        match &self.source {
            Source::Static(members) => Some(members),
            Source::Dns(_) => None,
        }
    }

    /// True for an empty static list (a DNS source is never known to be empty in advance).
    pub fn is_empty(&self) -> bool {
        self.static_members().is_some_and(<[String]>::is_empty)
    }

    /// Checks what the types cannot; the message names the sub-field (`health.fall`, `[2]`).
    /// Components prefix it with their own field name.
    pub fn validate(&self) -> Result<(), String> {
        match &self.source {
            Source::Static(members) => {
                for (index, member) in members.iter().enumerate() {
                    if member.trim().is_empty() || member.chars().any(char::is_whitespace) {
                        return Err(format!("[{index}]: {member:?} is not a host:port address"));
                    }
                    if members[..index].contains(member) {
                        return Err(format!("[{index}]: {member:?} is listed twice"));
                    }
                }
            }
            Source::Dns(dns) => {
                if dns.name.trim().is_empty() {
                    return Err("dns.name: empty".into());
                }
                if dns.port == 0 {
                    return Err("dns.port: must not be 0".into());
                }
                if dns.interval.is_zero() {
                    return Err("dns.interval: must be greater than zero".into());
                }
            }
        }
        let health = &self.health;
        if health.interval.is_zero() {
            return Err("health.interval: must be greater than zero".into());
        }
        if health.timeout.is_zero() {
            return Err("health.timeout: must be greater than zero".into());
        }
        if health.fall == 0 {
            return Err("health.fall: must be at least 1".into());
        }
        if health.rise == 0 {
            return Err("health.rise: must be at least 1".into());
        }
        Ok(())
    }
}

impl From<Vec<String>> for MembersConfig {
    fn from(members: Vec<String>) -> Self {
        MembersConfig::fixed(members)
    }
}

/// The map form: exactly one of `static` and `dns`, and optionally `health`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MapForm {
    #[serde(rename = "static")]
    fixed: Option<Vec<String>>,
    dns: Option<DnsConfig>,
    #[serde(default)]
    health: HealthConfig,
}

impl<'de> Deserialize<'de> for MembersConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FormVisitor;

        impl<'de> Visitor<'de> for FormVisitor {
            type Value = MembersConfig;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of host:port addresses or a map with `static` or `dns`")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<MembersConfig, A::Error> {
                let members =
                    Vec::<String>::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(MembersConfig::fixed(members))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<MembersConfig, A::Error> {
                let form = MapForm::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let source = match (form.fixed, form.dns) {
                    (Some(members), None) => Source::Static(members),
                    (None, Some(dns)) => Source::Dns(dns),
                    _ => return Err(de::Error::custom("set exactly one of `static` and `dns`")),
                };
                Ok(MembersConfig {
                    source,
                    health: form.health,
                })
            }
        }

        deserializer.deserialize_any(FormVisitor)
    }
}

/// A member list as written: the plain list, or the map form. A config that wraps a member list
/// and adds to it (the origins' peer addresses) is written through [`MembersConfig::written`]
/// too, so the two keep one shape.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Written<'a, E, X> {
    /// A static source with default health checks and nothing added.
    List(&'a [E]),
    /// `static` or `dns`, the fields the wrapping config adds, then `health`.
    Map {
        #[serde(rename = "static", skip_serializing_if = "Option::is_none")]
        fixed: Option<&'a [E]>,
        #[serde(skip_serializing_if = "Option::is_none")]
        dns: Option<&'a DnsConfig>,
        #[serde(flatten)]
        extra: Option<X>,
        health: &'a HealthConfig,
    },
}

impl MembersConfig {
    /// This list as written, with `entries` standing for the static members (the same members,
    /// written with more per member: the origins' `{http, peer}` pairs) and `extra` fields beside
    /// `health`. The plain list when the source is static and nothing else is set, so configs
    /// written by tools stay the short form.
    pub fn written<'a, E, X>(&'a self, entries: &'a [E], extra: Option<X>) -> Written<'a, E, X> {
        let health = &self.health;
        match &self.source {
            Source::Static(_) if extra.is_none() && *health == HealthConfig::default() => {
                Written::List(entries)
            }
            Source::Static(_) => Written::Map {
                fixed: Some(entries),
                dns: None,
                extra,
                health,
            },
            Source::Dns(dns) => Written::Map {
                fixed: None,
                dns: Some(dns),
                extra,
                health,
            },
        }
    }
}

impl Serialize for MembersConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let members = self.static_members().unwrap_or_default();
        self.written(members, None::<()>).serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Serialize, Default, Debug, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Component {
        origins: MembersConfig,
    }

    fn parse(yaml: &str) -> Result<MembersConfig, String> {
        shoal_service::config::parse::<Component>(yaml, "c.yaml")
            .map(|c| c.origins)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn sources_display_as_one_log_field() {
        let fixed = parse("origins: [a:1, \"http://b:2\"]\n").unwrap();
        assert_eq!(fixed.source.to_string(), "a:1,http://b:2");
        let dns = parse("origins: {dns: {name: origins.shoal, port: 15100}}\n").unwrap();
        assert_eq!(dns.source.to_string(), "dns:origins.shoal:15100");
    }

    #[test]
    fn a_plain_list_is_a_static_source_with_default_health() {
        let config = parse("origins: [a:1, \"http://b:2\"]\n").unwrap();
        assert_eq!(config, MembersConfig::fixed(["a:1", "http://b:2"]));
        assert_eq!(config.health, HealthConfig::default());
        assert_eq!(config.health.interval, Duration::from_secs(5));
        assert_eq!(config.health.timeout, Duration::from_secs(2));
        assert_eq!((config.health.fall, config.health.rise), (2, 1));
        let block = parse("origins:\n  - a:1\n  - b:2\n").unwrap();
        assert_eq!(block.static_members().unwrap(), ["a:1", "b:2"]);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn the_dns_form_parses_with_defaults_and_overrides() {
        let config =
            parse("origins:\n  dns: {name: origin.shoal.svc.cluster.local, port: 15100}\n")
                .unwrap();
        let Source::Dns(dns) = &config.source else {
            panic!("{config:?}")
        };
        assert_eq!(dns.name, "origin.shoal.svc.cluster.local");
        assert_eq!(dns.port, 15100);
        assert_eq!(dns.interval, Duration::from_secs(10));
        assert_eq!(dns.nameserver, None);

        let config = parse(
            "origins:\n  dns:\n    name: o.test\n    port: 1\n    interval: 250ms\n    \
             nameserver: 127.0.0.1:5353\n  health: {interval: 1s, fall: 3}\n",
        )
        .unwrap();
        let Source::Dns(dns) = &config.source else {
            panic!("{config:?}")
        };
        assert_eq!(dns.interval, Duration::from_millis(250));
        assert_eq!(dns.nameserver, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(config.health.interval, Duration::from_secs(1));
        assert_eq!(config.health.fall, 3);
        assert_eq!(config.health.timeout, Duration::from_secs(2));
        config.validate().unwrap();
    }

    #[test]
    fn dns_members_carry_the_scheme_only_for_https() {
        let config = parse("origins: {dns: {name: o.test, port: 15100}}\n").unwrap();
        let Source::Dns(dns) = &config.source else {
            panic!("{config:?}")
        };
        assert_eq!(dns.scheme, Scheme::Http);
        assert_eq!(dns.member("10.1.2.3".parse().unwrap()), "10.1.2.3:15100");
        assert_eq!(dns.member("fd00::1".parse().unwrap()), "[fd00::1]:15100");

        let config = parse("origins: {dns: {name: o.test, port: 15100, scheme: https}}\n").unwrap();
        let Source::Dns(dns) = &config.source else {
            panic!("{config:?}")
        };
        assert_eq!(dns.scheme, Scheme::Https);
        assert_eq!(
            dns.member("10.1.2.3".parse().unwrap()),
            "https://10.1.2.3:15100"
        );
        assert_eq!(
            dns.member("fd00::1".parse().unwrap()),
            "https://[fd00::1]:15100"
        );

        let error = parse("origins: {dns: {name: o.test, port: 1, scheme: ftp}}\n").unwrap_err();
        assert!(error.contains("`origins.dns.scheme`"), "{error}");
    }

    #[test]
    fn the_static_map_form_carries_health_settings() {
        let config = parse("origins: {static: [a:1], health: {rise: 2}}\n").unwrap();
        assert_eq!(config.static_members().unwrap(), ["a:1"]);
        assert_eq!(config.health.rise, 2);
    }

    #[test]
    fn errors_name_the_field() {
        let error = parse("origins:\n  dns: {name: x, port: 1, intervl: 1s}\n").unwrap_err();
        assert!(error.contains("`origins.dns.intervl`"), "{error}");
        let error = parse("origins:\n  dns: {name: x}\n").unwrap_err();
        assert!(error.contains("`origins.dns`"), "{error}");
        assert!(error.contains("missing field `port`"), "{error}");
        let error = parse("origins: {dns: {name: x, port: 1}, health: {fal: 1}}\n").unwrap_err();
        assert!(error.contains("`origins.health.fal`"), "{error}");
        let error = parse("origins: {static: [a:1], dns: {name: x, port: 1}}\n").unwrap_err();
        assert!(error.contains("exactly one"), "{error}");
        let error = parse("origins: {}\n").unwrap_err();
        assert!(error.contains("exactly one"), "{error}");
        let error = parse("origins: [a:1, [b]]\n").unwrap_err();
        assert!(error.contains("`origins[1]`"), "{error}");
        let error = parse("origins: 7\n").unwrap_err();
        assert!(error.contains("`origins`"), "{error}");
    }

    #[test]
    fn validation_names_the_sub_field() {
        let check = |yaml: &str| parse(yaml).unwrap().validate().unwrap_err();
        assert!(check("origins: [a:1, a:1]\n").starts_with("[1]:"));
        assert!(check("origins: [a:1, \" \"]\n").starts_with("[1]:"));
        assert!(check("origins: {dns: {name: x, port: 0}}\n").starts_with("dns.port"));
        assert!(
            check("origins: {dns: {name: x, port: 1, interval: 0s}}\n").starts_with("dns.interval")
        );
        assert!(check("origins: {static: [a:1], health: {fall: 0}}\n").starts_with("health.fall"));
        assert!(check("origins: {static: [a:1], health: {rise: 0}}\n").starts_with("health.rise"));
        assert!(
            check("origins: {static: [a:1], health: {timeout: 0s}}\n")
                .starts_with("health.timeout")
        );
    }

    #[test]
    fn serialization_round_trips() {
        for yaml in [
            "origins: [a:1, b:2]\n",
            "origins: {static: [a:1], health: {rise: 2}}\n",
            "origins: {dns: {name: x, port: 1, nameserver: 127.0.0.1:53}}\n",
            "origins: {dns: {name: x, port: 1, scheme: https}}\n",
        ] {
            let config = shoal_service::config::parse::<Component>(yaml, "c").unwrap();
            let text = serde_yaml_ng::to_string(&config).unwrap();
            let again = shoal_service::config::parse::<Component>(&text, "c").unwrap();
            assert_eq!(config, again, "{text}");
        }
        let plain = parse("origins: {dns: {name: x, port: 1}}\n").unwrap();
        let text = serde_yaml_ng::to_string(&plain).unwrap();
        assert!(!text.contains("scheme"), "{text}");
        let text = serde_yaml_ng::to_string(&MembersConfig::fixed(["a:1"])).unwrap();
        assert_eq!(text, "- a:1\n");
    }
}
