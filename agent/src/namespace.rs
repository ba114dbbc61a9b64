//! Which repository a request reads. containerd sends every request to a mirror with
//! `?ns=<upstream host[:port]>`; the config may map such hosts to a repository prefix, so images
//! of several upstream registries can live side by side. A host not mapped (and a request
//! without `ns`) reads the path's repository name as is. The host never becomes part of a cache
//! key: only the resolved repository name does.

use std::collections::BTreeMap;

use percent_encoding::percent_decode_str;
use shoal_core::{Name, NameError};

/// Host → repository prefix, from `namespaces.hosts`.
#[derive(Debug, Clone, Default)]
pub struct Namespaces {
    hosts: BTreeMap<String, Name>,
}

impl Namespaces {
    /// Host names are case-insensitive: keys are matched in lower case.
    pub fn new(hosts: BTreeMap<String, Name>) -> Namespaces {
        let hosts = hosts
            .into_iter()
            .map(|(host, prefix)| (host.trim().to_ascii_lowercase(), prefix))
            .collect();
        Namespaces { hosts }
    }

    /// The repository a request for `name` with the raw query string `query` reads.
    pub fn resolve(&self, name: Name, query: Option<&str>) -> Result<Name, NameError> {
        let prefix = ns_param(query).and_then(|host| self.hosts.get(&host));
        match prefix {
            Some(prefix) => Name::parse(&format!("{prefix}/{name}")),
            None => Ok(name),
        }
    }
}

/// The decoded value of the first `ns` parameter, if any. Hosts are case-insensitive, so it is
/// lower-cased to match the configured keys.
fn ns_param(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let value = pair.strip_prefix("ns=")?;
        let value = value.replace('+', " ");
        Some(
            percent_decode_str(&value)
                .decode_utf8_lossy()
                .to_ascii_lowercase(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn mapped() -> Namespaces {
        Namespaces::new(BTreeMap::from([
            ("registry.example:5000".to_owned(), name("mirror/example")),
            ("Docker.io".to_owned(), name("hub")),
        ]))
    }

    #[test]
    fn mapped_hosts_prefix_the_repository() {
        let resolved = mapped()
            .resolve(name("team/app"), Some("ns=registry.example%3A5000"))
            .unwrap();
        assert_eq!(resolved.as_str(), "mirror/example/team/app");
        let resolved = mapped()
            .resolve(name("library/busybox"), Some("x=1&ns=Docker.IO"))
            .unwrap();
        assert_eq!(resolved.as_str(), "hub/library/busybox");
    }

    #[test]
    fn unmapped_or_absent_hosts_leave_the_name_alone() {
        for query in [
            None,
            Some(""),
            Some("ns=127.0.0.1%3A5999"),
            Some("nsx=docker.io"),
        ] {
            let resolved = mapped().resolve(name("test/smoke"), query).unwrap();
            assert_eq!(resolved.as_str(), "test/smoke", "{query:?}");
        }
        let resolved = Namespaces::default()
            .resolve(name("test/smoke"), Some("ns=docker.io"))
            .unwrap();
        assert_eq!(resolved.as_str(), "test/smoke");
    }

    #[test]
    fn a_prefix_that_makes_the_name_too_long_is_refused() {
        let long = "a".repeat(200);
        let namespaces = Namespaces::new(BTreeMap::from([("h".to_owned(), name(&long))]));
        let path_name = name(&"b".repeat(100));
        assert!(namespaces.resolve(path_name, Some("ns=h")).is_err());
    }
}
