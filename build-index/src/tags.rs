//! The tag table: `repo:tag → manifest digest`, persisted in the backend as one small object per
//! tag (`repositories/<repo>/_tags/<tag>` holding the digest text), and the listings derived from
//! the backend's key space (a repository's tags, the catalog of repositories). A repository's
//! tags live in the backend its name routes to.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, stream};
use shoal_core::{Digest, Name, Tag};
use shoal_storage::{Backend, BackendRouter, ByteStream, REPOSITORIES_PREFIX, tag_key};
use tracing::warn;

use crate::error::Error;

/// Separates the repository from the tag in a tag key. `_tags` cannot be a repository name
/// component (components start with `[a-z0-9]`), so the first match is the boundary.
const TAGS_SEPARATOR: &str = "/_tags/";
/// A tag object holds `sha256:` + 64 hex characters; anything much larger is not a tag.
const MAX_TAG_OBJECT: usize = 1024;

/// Tags stored in the backends their repositories route to.
#[derive(Clone)]
pub struct TagStore {
    backends: Arc<BackendRouter>,
}

impl TagStore {
    /// A router, or a single backend for every repository.
    pub fn new(backends: impl Into<BackendRouter>) -> Self {
        Self {
            backends: Arc::new(backends.into()),
        }
    }

    fn backend(&self, name: &Name) -> Result<Arc<dyn Backend>, Error> {
        self.backends
            .route(Some(name))
            .map_err(|source| Error::Backend {
                action: "routing a repository",
                source,
            })
    }

    /// Points `tag` at `digest`, replacing any previous value. The backend writes atomically, so a
    /// reader sees the old digest or the new one, never a mix.
    pub async fn put(&self, name: &Name, tag: &Tag, digest: &Digest) -> Result<(), Error> {
        let text = Bytes::from(digest.to_string());
        let len = text.len() as u64;
        let body: ByteStream = Box::pin(stream::once(async move { Ok(text) }));
        self.backend(name)?
            .put(&tag_key(name, tag), body, Some(len))
            .await
            .map_err(|source| Error::Backend {
                action: "writing a tag",
                source,
            })
    }

    /// The digest `tag` points at, or `None` when the tag does not exist.
    pub async fn get(&self, name: &Name, tag: &Tag) -> Result<Option<Digest>, Error> {
        let key = tag_key(name, tag);
        let stream = self
            .backend(name)?
            .get(&key, None)
            .await
            .map_err(|source| Error::Backend {
                action: "reading a tag",
                source,
            })?;
        let Some(mut stream) = stream else {
            return Ok(None);
        };
        let mut text = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Error::CorruptTag {
                key: key.clone(),
                reason: format!("read failed: {e}"),
            })?;
            if text.len() + chunk.len() > MAX_TAG_OBJECT {
                return Err(Error::CorruptTag {
                    key,
                    reason: format!("larger than {MAX_TAG_OBJECT} bytes"),
                });
            }
            text.extend_from_slice(&chunk);
        }
        let digest = std::str::from_utf8(&text)
            .map_err(|_| "not UTF-8".to_owned())
            .and_then(|s| Digest::parse(s.trim()).map_err(|e| e.to_string()));
        digest
            .map(Some)
            .map_err(|reason| Error::CorruptTag { key, reason })
    }

    /// Removes a tag; `false` when it did not exist.
    pub async fn delete(&self, name: &Name, tag: &Tag) -> Result<bool, Error> {
        self.backend(name)?
            .delete(&tag_key(name, tag))
            .await
            .map_err(|source| Error::Backend {
                action: "deleting a tag",
                source,
            })
    }

    /// The repository's tags, sorted; empty when it has none.
    pub async fn tags(&self, name: &Name) -> Result<Vec<String>, Error> {
        let prefix = format!("{REPOSITORIES_PREFIX}{}{TAGS_SEPARATOR}", name.as_str());
        let keys = list(&self.backend(name)?, &prefix).await?;
        let tags: BTreeSet<String> = keys
            .iter()
            .filter_map(|key| {
                let tag = key.strip_prefix(&prefix)?;
                Tag::parse(tag).is_ok().then(|| tag.to_owned())
            })
            .collect();
        Ok(tags.into_iter().collect())
    }

    /// Every repository that has at least one tag in any backend, sorted.
    pub async fn repositories(&self) -> Result<Vec<String>, Error> {
        let mut keys = Vec::new();
        for backend in self.backends.backends() {
            keys.extend(list(backend, REPOSITORIES_PREFIX).await?);
        }
        let repos: BTreeSet<String> = keys
            .iter()
            .filter_map(|key| match parse_tag_key(key) {
                Some((name, _)) => Some(name.as_str().to_owned()),
                None => {
                    warn!(key, "ignoring a backend key that is not a tag");
                    None
                }
            })
            .collect();
        Ok(repos.into_iter().collect())
    }
}

async fn list(backend: &Arc<dyn Backend>, prefix: &str) -> Result<Vec<String>, Error> {
    backend.list(prefix).await.map_err(|source| Error::Backend {
        action: "listing tags",
        source,
    })
}

/// Splits `repositories/<repo>/_tags/<tag>` into its validated parts.
fn parse_tag_key(key: &str) -> Option<(Name, Tag)> {
    let rest = key.strip_prefix(REPOSITORIES_PREFIX)?;
    let (repo, tag) = rest.split_once(TAGS_SEPARATOR)?;
    Some((Name::parse(repo).ok()?, Tag::parse(tag).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_keys_split_into_repository_and_tag() {
        let name = Name::parse("library/ubuntu").unwrap();
        let tag = Tag::parse("22.04").unwrap();
        let key = tag_key(&name, &tag);
        assert_eq!(parse_tag_key(&key), Some((name, tag)));
    }

    #[test]
    fn keys_that_are_not_tags_are_rejected() {
        for key in [
            "blobs/sha256/00",
            "repositories/a/_tags/",
            "repositories/a/_tags/b/c",
            "repositories/A/_tags/x",
            "repositories/a/manifests/x",
            "repositories//_tags/x",
        ] {
            assert_eq!(parse_tag_key(key), None, "{key}");
        }
    }

    #[tokio::test]
    async fn tags_live_in_the_backend_their_repository_routes_to() {
        use shoal_storage::{BackendConfig, NamespacePattern, RouteConfig};
        let dir = tempfile::tempdir().expect("tempdir");
        let route = |pattern: &str, sub: &str| RouteConfig {
            namespace: NamespacePattern::new(pattern).expect("regex"),
            backend: BackendConfig::Filesystem {
                root: dir.path().join(sub),
            },
        };
        let router = BackendRouter::from_config(
            &BackendConfig::default(),
            &[route("team-a/.*", "a"), route("team-b/.*", "b")],
        )
        .expect("router");
        let store = TagStore::new(router);
        let (a, b) = (
            Name::parse("team-a/app").expect("name"),
            Name::parse("team-b/app").expect("name"),
        );
        let tag = Tag::parse("v1").expect("tag");
        let digest = Digest::of(b"manifest");
        store.put(&a, &tag, &digest).await.expect("put a");
        store.put(&b, &tag, &digest).await.expect("put b");
        let in_backend =
            |sub: &str, name: &Name| dir.path().join(sub).join(tag_key(name, &tag)).is_file();
        assert!(in_backend("a", &a) && !in_backend("b", &a));
        assert!(in_backend("b", &b) && !in_backend("a", &b));
        assert_eq!(store.get(&a, &tag).await.expect("get"), Some(digest));
        assert_eq!(store.tags(&b).await.expect("tags"), ["v1"]);
        assert_eq!(
            store.repositories().await.expect("catalog"),
            ["team-a/app", "team-b/app"]
        );
        let unrouted = Name::parse("team-c/app").expect("name");
        assert!(matches!(
            store.put(&unrouted, &tag, &digest).await,
            Err(Error::Backend { .. })
        ));
    }
}
