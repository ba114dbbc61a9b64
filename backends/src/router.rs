//! Namespace → backend routing: the `backends:` config list (`namespace` regex plus a
//! [`BackendConfig`]) and the [`BackendRouter`] that picks, for a repository, the first route
//! whose regex matches its whole name. A push's namespace is its repository, so blobs and tags of
//! one repository always land in the same backend.

use std::fmt;
use std::sync::Arc;

use regex::Regex;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use shoal_core::{Digest, Name};

use super::{Backend, BackendConfig, BackendError};

/// A regex that must match a repository name in full (it is anchored at both ends).
#[derive(Clone)]
pub struct NamespacePattern {
    source: String,
    anchored: Regex,
}

impl NamespacePattern {
    /// Compiles `source`, anchoring it so `library/.*` does not match `x/library/y`.
    pub fn new(source: &str) -> Result<NamespacePattern, regex::Error> {
        let anchored = Regex::new(&format!("^(?:{source})$"))?;
        Ok(NamespacePattern {
            source: source.to_owned(),
            anchored,
        })
    }

    /// Whether the whole of `namespace` matches.
    pub fn matches(&self, namespace: &str) -> bool {
        self.anchored.is_match(namespace)
    }

    /// The regex as written in the config.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for NamespacePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.source)
    }
}

impl PartialEq for NamespacePattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for NamespacePattern {}

impl<'de> Deserialize<'de> for NamespacePattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        NamespacePattern::new(&source)
            .map_err(|e| serde::de::Error::custom(format!("invalid namespace regex: {e}")))
    }
}

impl Serialize for NamespacePattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

/// One entry of a component's `backends:` list. YAML:
/// `- { namespace: "library/.*", backend: { filesystem: { root: /srv/library } } }`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Repositories whose full name matches this regex use `backend`.
    pub namespace: NamespacePattern,
    pub backend: BackendConfig,
}

/// Picks the backend of a repository: the first route whose pattern matches, in config order.
#[derive(Debug, Clone)]
pub struct BackendRouter {
    routes: Vec<(NamespacePattern, Arc<dyn Backend>)>,
}

impl BackendRouter {
    /// Builds every route's backend. A non-empty `backends` list replaces `backend`; an empty
    /// one makes `backend` the single catch-all route, so configs with only `backend:` keep
    /// working.
    pub fn from_config(
        backend: &BackendConfig,
        backends: &[RouteConfig],
    ) -> Result<BackendRouter, BackendError> {
        if backends.is_empty() {
            return Ok(BackendRouter::single(backend.build()?));
        }
        let routes = backends
            .iter()
            .map(|route| Ok((route.namespace.clone(), route.backend.build()?)))
            .collect::<Result<_, BackendError>>()?;
        Ok(BackendRouter { routes })
    }

    /// One backend for every namespace.
    pub fn single(backend: Arc<dyn Backend>) -> BackendRouter {
        let catch_all = NamespacePattern::new(".*").expect("'.*' is a valid regex");
        BackendRouter {
            routes: vec![(catch_all, backend)],
        }
    }

    /// The backend for `namespace`, scoped to it ([`Backend::scoped`]). Requests that carry no
    /// namespace are routed as the empty name, which a catch-all route (`.*`) matches.
    pub fn route(&self, namespace: Option<&Name>) -> Result<Arc<dyn Backend>, BackendError> {
        let name = namespace.map_or("", Name::as_str);
        self.routes
            .iter()
            .find(|(pattern, _)| pattern.matches(name))
            .map(|(_, backend)| scope(backend, namespace))
            .ok_or_else(|| BackendError::NoRoute {
                namespace: name.to_owned(),
            })
    }

    /// Where the object `key` of `namespace` is, with its length. With a namespace only its
    /// routed backend is asked; without one (a read that does not name its repository) every
    /// route's backend is asked in config order and the first that has it wins (a registry
    /// backend cannot find a blob without a repository and answers absent).
    pub async fn locate(
        &self,
        namespace: Option<&Name>,
        key: &str,
    ) -> Result<Option<(Arc<dyn Backend>, u64)>, BackendError> {
        if namespace.is_some() {
            let backend = self.route(namespace)?;
            return Ok(backend.stat(key).await?.map(|len| (backend, len)));
        }
        for backend in self.backends() {
            let backend = scope(backend, None);
            if let Some(len) = backend.stat(key).await? {
                return Ok(Some((backend, len)));
            }
        }
        Ok(None)
    }

    /// `Ok` when every route's backend answers a stat of one blob key (absent or present; the
    /// key needs no repository, so a registry backend answers without being asked), else the
    /// first error: readiness.
    pub async fn answers(&self) -> Result<(), BackendError> {
        let key = crate::blob_key(&Digest::of(b"shoal readiness probe"));
        for backend in self.backends() {
            scope(backend, None).stat(&key).await?;
        }
        Ok(())
    }

    /// Every route's backend in config order, for work that spans namespaces (a
    /// read that does not know its repository tries each in turn).
    pub fn backends(&self) -> impl Iterator<Item = &Arc<dyn Backend>> {
        self.routes.iter().map(|(_, backend)| backend)
    }
}

/// `backend` as `namespace` sees it.
fn scope(backend: &Arc<dyn Backend>, namespace: Option<&Name>) -> Arc<dyn Backend> {
    backend
        .scoped(namespace)
        .unwrap_or_else(|| Arc::clone(backend))
}

impl From<Arc<dyn Backend>> for BackendRouter {
    fn from(backend: Arc<dyn Backend>) -> Self {
        BackendRouter::single(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn name(s: &str) -> Name {
        Name::parse(s).expect("name")
    }

    #[test]
    fn patterns_match_whole_names_only() {
        let pattern = NamespacePattern::new("library/.*").expect("regex");
        assert!(pattern.matches("library/ubuntu"));
        assert!(!pattern.matches("x/library/ubuntu"));
        let alternatives = NamespacePattern::new("a|b").expect("regex");
        assert!(alternatives.matches("a") && alternatives.matches("b"));
        assert!(!alternatives.matches("ab"));
    }

    #[test]
    fn config_parses_routes_and_rejects_bad_regexes() {
        let routes: Vec<RouteConfig> = serde_json::from_str(
            r#"[{"namespace":"team-a/.*","backend":{"filesystem":{"root":"/a"}}},
                {"namespace":".*","backend":{"filesystem":{"root":"/b"}}}]"#,
        )
        .expect("routes");
        assert_eq!(routes[0].namespace.as_str(), "team-a/.*");
        assert_eq!(
            routes[1].backend,
            BackendConfig::Filesystem {
                root: PathBuf::from("/b")
            }
        );
        let err = serde_json::from_str::<RouteConfig>(
            r#"{"namespace":"(","backend":{"filesystem":{"root":"/a"}}}"#,
        )
        .expect_err("unbalanced regex");
        assert!(err.to_string().contains("invalid namespace regex"), "{err}");
        assert!(
            serde_json::from_str::<RouteConfig>(
                r#"{"namespace":".*","backend":{"filesystem":{"root":"/a"}},"x":1}"#,
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn first_matching_route_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let route = |pattern: &str, sub: &str| RouteConfig {
            namespace: NamespacePattern::new(pattern).expect("regex"),
            backend: BackendConfig::Filesystem {
                root: dir.path().join(sub),
            },
        };
        let routes = [
            route("team-a/.*", "a"),
            route("team-a/special", "never"),
            route("team-b/.*", "b"),
        ];
        let router =
            BackendRouter::from_config(&BackendConfig::default(), &routes).expect("router");
        let a = router.route(Some(&name("team-a/special"))).expect("a");
        let b = router.route(Some(&name("team-b/app"))).expect("b");
        a.put("k", Box::pin(futures::stream::empty()), None)
            .await
            .expect("put a");
        assert!(dir.path().join("a/k").is_file());
        assert!(!dir.path().join("never/k").exists());
        assert_eq!(b.stat("k").await.expect("stat b"), None);
        assert!(matches!(
            router.route(Some(&name("team-c/app"))),
            Err(BackendError::NoRoute { namespace }) if namespace == "team-c/app"
        ));
        assert!(matches!(
            router.route(None),
            Err(BackendError::NoRoute { namespace }) if namespace.is_empty()
        ));
        assert_eq!(router.backends().count(), 3);
    }

    #[tokio::test]
    async fn locate_asks_the_routed_backend_or_every_backend_without_a_namespace() {
        let dir = tempfile::tempdir().expect("tempdir");
        let route = |pattern: &str, sub: &str| RouteConfig {
            namespace: NamespacePattern::new(pattern).expect("regex"),
            backend: BackendConfig::Filesystem {
                root: dir.path().join(sub),
            },
        };
        let router = BackendRouter::from_config(
            &BackendConfig::default(),
            &[route("a/.*", "a"), route(".*", "rest")],
        )
        .expect("router");
        let body = || -> crate::ByteStream {
            Box::pin(futures::stream::iter([Ok(bytes::Bytes::from_static(
                b"xyz",
            ))]))
        };
        let rest = router.route(Some(&name("b/app"))).expect("rest");
        rest.put("k", body(), None).await.expect("put");
        assert_eq!(
            router
                .locate(None, "k")
                .await
                .expect("locate")
                .map(|(_, len)| len),
            Some(3)
        );
        assert!(
            router
                .locate(Some(&name("a/app")), "k")
                .await
                .expect("locate")
                .is_none()
        );
        assert!(
            router
                .locate(Some(&name("b/app")), "k")
                .await
                .expect("locate")
                .is_some()
        );
        assert!(
            router
                .locate(None, "absent")
                .await
                .expect("locate")
                .is_none()
        );
    }

    #[test]
    fn a_single_backend_is_the_catch_all_route() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = BackendConfig::Filesystem {
            root: dir.path().to_path_buf(),
        };
        let router = BackendRouter::from_config(&config, &[]).expect("router");
        assert!(router.route(None).is_ok());
        assert!(router.route(Some(&name("any/repo"))).is_ok());
        assert_eq!(router.backends().count(), 1);
    }
}
