//! Which repository a request reads. containerd sends every request to a mirror with
//! `?ns=<upstream host[:port]>`; the config may map such hosts to a repository prefix, so images
//! of several upstream registries can live side by side. A host not mapped (and a request
//! without `ns`) reads the path's repository name as is. The host never becomes part of a cache
//! key: only the resolved repository name does.

use std::collections::BTreeMap;

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

    /// The repository a request for `name` with the decoded `ns` query parameter reads.
    pub fn resolve(&self, name: Name, ns: Option<&str>) -> Result<Name, NameError> {
        // Hosts are case-insensitive: keys are in lower case.
        let prefix = ns.and_then(|host| self.hosts.get(&host.to_ascii_lowercase()));
        match prefix {
            Some(prefix) => Name::parse(&format!("{prefix}/{name}")),
            None => Ok(name),
        }
    }
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
            .resolve(name("team/app"), Some("registry.example:5000"))
            .unwrap();
        assert_eq!(resolved.as_str(), "mirror/example/team/app");
        let resolved = mapped()
            .resolve(name("library/busybox"), Some("Docker.IO"))
            .unwrap();
        assert_eq!(resolved.as_str(), "hub/library/busybox");
    }

    #[test]
    fn unmapped_or_absent_hosts_leave_the_name_alone() {
        for ns in [None, Some(""), Some("127.0.0.1:5999")] {
            let resolved = mapped().resolve(name("test/smoke"), ns).unwrap();
            assert_eq!(resolved.as_str(), "test/smoke", "{ns:?}");
        }
        let resolved = Namespaces::default()
            .resolve(name("test/smoke"), Some("docker.io"))
            .unwrap();
        assert_eq!(resolved.as_str(), "test/smoke");
    }

    #[test]
    fn a_prefix_that_makes_the_name_too_long_is_refused() {
        let long = "a".repeat(200);
        let namespaces = Namespaces::new(BTreeMap::from([("h".to_owned(), name(&long))]));
        let path_name = name(&"b".repeat(100));
        assert!(namespaces.resolve(path_name, Some("h")).is_err());
    }
}
