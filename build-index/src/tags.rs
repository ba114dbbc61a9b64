//! The tag table: `repo:tag → manifest digest`, persisted in the backend as one small object per
//! tag (`repositories/<repo>/_tags/<tag>` holding the digest text), and the listings derived from
//! the backend's key space (a repository's tags, the catalog of repositories). A repository's
//! tags live in the backend its name routes to.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, stream};
use shoal_core::{Digest, Name, Tag};
use shoal_service::CancellationToken;
use shoal_storage::{
    Backend, BackendError, BackendRouter, ByteStream, FilesystemBackend, REPOSITORIES_PREFIX,
    tag_key,
};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::error::Error;

/// Separates the repository from the tag in a tag key. `_tags` cannot be a repository name
/// component (components start with `[a-z0-9]`), so the first match is the boundary.
const TAGS_SEPARATOR: &str = "/_tags/";
/// A tag object holds `sha256:` + 64 hex characters; anything much larger is not a tag.
const MAX_TAG_OBJECT: usize = 1024;

/// How long a tag write waits for its backend before the tag is kept locally instead.
const INLINE_WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// Pause between write-back rounds of pending tags while some remain.
const RETRY_PERIOD: Duration = Duration::from_secs(1);

/// Tags stored in the backends their repositories route to.
#[derive(Clone)]
pub struct TagStore {
    backends: Arc<BackendRouter>,
    /// Tags accepted while their backend was unreachable, durable on local disk until written
    /// back (`pending_dir`); without it a backend failure fails the tag write.
    pending: Option<Arc<FilesystemBackend>>,
    /// Serialises tag writes and their write-back, so a retry of an older value can never land
    /// after a newer one.
    writes: Arc<Mutex<()>>,
}

impl TagStore {
    /// A router, or a single backend for every repository.
    pub fn new(backends: impl Into<BackendRouter>) -> Self {
        Self {
            backends: Arc::new(backends.into()),
            pending: None,
            writes: Arc::default(),
        }
    }

    /// Keeps tags whose backend is unreachable in `dir` and writes them back later.
    pub fn with_pending_dir(mut self, dir: &Path) -> Result<Self, Error> {
        let local = FilesystemBackend::new(dir)
            .map_err(Error::backend("opening the pending-tags directory"))?;
        self.pending = Some(Arc::new(local));
        Ok(self)
    }

    fn backend(&self, name: &Name) -> Result<Arc<dyn Backend>, Error> {
        self.backends
            .route(Some(name))
            .map_err(Error::backend("routing a repository"))
    }

    /// Points `tag` at `digest`, replacing any previous value. The backend writes atomically, so a
    /// reader sees the old digest or the new one, never a mix. When the backend cannot be reached
    /// and a pending directory is configured, the tag is kept there durably (and this node serves
    /// it) until the write-back loop gets it into the backend.
    pub async fn put(&self, name: &Name, tag: &Tag, digest: &Digest) -> Result<(), Error> {
        let key = tag_key(name, tag);
        let backend = self.backend(name)?;
        let _writing = self.writes.lock().await;
        let written =
            tokio::time::timeout(INLINE_WRITE_TIMEOUT, write_digest(&*backend, &key, digest))
                .await
                .unwrap_or_else(|_| {
                    Err(BackendError::Remote {
                        operation: "put",
                        url: key.clone(),
                        reason: format!("no answer within {INLINE_WRITE_TIMEOUT:?}"),
                    })
                });
        let Some(pending) = &self.pending else {
            return written.map_err(Error::backend("writing a tag"));
        };
        match written {
            Ok(()) => {
                // The backend now has the newest value; an older pending one must not follow it.
                pending
                    .delete(&key)
                    .await
                    .map_err(Error::backend("clearing a pending tag"))?;
                Ok(())
            }
            Err(error) if transient(&error) => {
                warn!(%key, %error, "tag backend unreachable: keeping the tag locally until it is written back");
                write_digest(&**pending, &key, digest)
                    .await
                    .map_err(Error::backend("keeping a tag locally"))
            }
            Err(source) => Err(Error::Backend {
                action: "writing a tag",
                source,
            }),
        }
    }

    /// Writes every pending tag back to its backend, retrying until `shutdown` (a round in
    /// progress finishes first).
    pub async fn write_back(self, shutdown: CancellationToken) {
        let Some(pending) = self.pending.clone() else {
            return;
        };
        loop {
            match self.write_back_round(&pending).await {
                Ok(0) => {}
                Ok(left) => debug!(left, "pending tags not written back yet"),
                Err(error) => warn!(%error, "pending tags write-back failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RETRY_PERIOD) => {}
            }
        }
    }

    /// One pass over the pending tags; returns how many are still pending.
    async fn write_back_round(&self, pending: &FilesystemBackend) -> Result<usize, Error> {
        let keys = pending
            .list(REPOSITORIES_PREFIX)
            .await
            .map_err(Error::backend("listing pending tags"))?;
        let mut left = 0;
        for key in keys {
            let Some((name, _)) = parse_tag_key(&key) else {
                warn!(key, "ignoring a pending file that is not a tag");
                continue;
            };
            let _writing = self.writes.lock().await;
            // Re-read under the lock: a newer put may have replaced or cleared it.
            let Some(digest) = read_digest(pending, &key).await? else {
                continue;
            };
            let backend = self.backend(&name)?;
            match write_digest(&*backend, &key, &digest).await {
                Ok(()) => {
                    info!(key, %digest, "pending tag written back");
                    pending
                        .delete(&key)
                        .await
                        .map_err(Error::backend("clearing a pending tag"))?;
                }
                Err(error) => {
                    debug!(key, %error, "pending tag still not written back");
                    left += 1;
                }
            }
        }
        Ok(left)
    }

    /// The digest `tag` points at, or `None` when the tag does not exist. A tag kept locally
    /// while its backend was unreachable is the newest value this node accepted.
    pub async fn get(&self, name: &Name, tag: &Tag) -> Result<Option<Digest>, Error> {
        let key = tag_key(name, tag);
        if let Some(pending) = &self.pending
            && let Some(digest) = read_digest(&**pending, &key).await?
        {
            return Ok(Some(digest));
        }
        read_digest(&*self.backend(name)?, &key).await
    }

    /// Removes a tag; `false` when it did not exist.
    pub async fn delete(&self, name: &Name, tag: &Tag) -> Result<bool, Error> {
        let key = tag_key(name, tag);
        let _writing = self.writes.lock().await;
        let was_pending = match &self.pending {
            Some(pending) => pending
                .delete(&key)
                .await
                .map_err(Error::backend("deleting a pending tag"))?,
            None => false,
        };
        let in_backend = self
            .backend(name)?
            .delete(&key)
            .await
            .map_err(Error::backend("deleting a tag"))?;
        Ok(was_pending || in_backend)
    }

    /// The repository's tags, sorted; empty when it has none.
    pub async fn tags(&self, name: &Name) -> Result<Vec<String>, Error> {
        let prefix = format!("{REPOSITORIES_PREFIX}{}{TAGS_SEPARATOR}", name.as_str());
        let mut keys = list(&self.backend(name)?, &prefix).await?;
        if let Some(pending) = &self.pending {
            keys.extend(list(&(pending.clone() as Arc<dyn Backend>), &prefix).await?);
        }
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
        if let Some(pending) = &self.pending {
            keys.extend(list(&(pending.clone() as Arc<dyn Backend>), REPOSITORIES_PREFIX).await?);
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

/// Whether a failed write may succeed later (the backend was unreachable or failed on its
/// side), as opposed to one that never will (no route, a read-only backend).
fn transient(error: &BackendError) -> bool {
    matches!(
        error,
        BackendError::Io(_) | BackendError::ObjectStore { .. } | BackendError::Remote { .. }
    )
}

async fn write_digest(
    backend: &dyn Backend,
    key: &str,
    digest: &Digest,
) -> Result<(), BackendError> {
    let text = Bytes::from(digest.to_string());
    let len = text.len() as u64;
    let body: ByteStream = Box::pin(stream::once(async move { Ok(text) }));
    backend.put(key, body, Some(len)).await
}

/// The digest a tag object holds, or `None` when there is none under `key`.
async fn read_digest(backend: &dyn Backend, key: &str) -> Result<Option<Digest>, Error> {
    let key = key.to_owned();
    let stream = backend
        .get(&key, None)
        .await
        .map_err(Error::backend("reading a tag"))?;
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

async fn list(backend: &Arc<dyn Backend>, prefix: &str) -> Result<Vec<String>, Error> {
    backend
        .list(prefix)
        .await
        .map_err(Error::backend("listing tags"))
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

    /// Makes the filesystem backend at `root` fail every request (its root is a file), or work.
    fn break_backend(root: &Path, broken: bool) {
        if broken {
            std::fs::remove_dir_all(root).expect("remove backend");
            std::fs::write(root, b"not a directory").expect("block backend");
        } else {
            std::fs::remove_file(root).expect("unblock backend");
            // Recreates the directory layout the backend expects under its root.
            FilesystemBackend::new(root).expect("restore backend");
        }
    }

    #[tokio::test]
    async fn tags_written_during_a_backend_outage_are_kept_locally_then_written_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("backend");
        let backend = FilesystemBackend::new(&root).expect("backend");
        let store = TagStore::new(Arc::new(backend) as Arc<dyn Backend>)
            .with_pending_dir(&dir.path().join("pending"))
            .expect("pending dir");
        let name = Name::parse("team/app").expect("name");
        let (v1, v2) = (
            Tag::parse("v1").expect("tag"),
            Tag::parse("v2").expect("tag"),
        );
        let (old, new) = (Digest::of(b"old"), Digest::of(b"new"));
        let in_backend = |tag: &Tag| std::fs::read_to_string(root.join(tag_key(&name, tag))).ok();

        break_backend(&root, true);
        store
            .put(&name, &v1, &old)
            .await
            .expect("accepted during the outage");
        store
            .put(&name, &v2, &old)
            .await
            .expect("accepted during the outage");
        assert_eq!(store.get(&name, &v1).await.expect("get"), Some(old));
        assert_eq!(store.write_back_round_for_test().await, 2, "still pending");

        break_backend(&root, false);
        // A newer value written directly must not be overwritten by the older pending one.
        store.put(&name, &v1, &new).await.expect("put");
        assert_eq!(store.write_back_round_for_test().await, 0);
        assert_eq!(in_backend(&v1), Some(new.to_string()));
        assert_eq!(in_backend(&v2), Some(old.to_string()));
        assert_eq!(store.get(&name, &v1).await.expect("get"), Some(new));
        assert_eq!(store.tags(&name).await.expect("tags"), ["v1", "v2"]);
        let pending = dir.path().join("pending").join(REPOSITORIES_PREFIX);
        assert!(
            !pending.exists() || list_files(&pending).is_empty(),
            "nothing is left pending"
        );
    }

    #[tokio::test]
    async fn without_a_pending_dir_a_backend_failure_fails_the_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("backend");
        let backend = FilesystemBackend::new(&root).expect("backend");
        let store = TagStore::new(Arc::new(backend) as Arc<dyn Backend>);
        break_backend(&root, true);
        let name = Name::parse("team/app").expect("name");
        let tag = Tag::parse("v1").expect("tag");
        assert!(matches!(
            store.put(&name, &tag, &Digest::of(b"x")).await,
            Err(Error::Backend { .. })
        ));
    }

    fn list_files(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).expect("list") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                files.extend(list_files(&path));
            } else {
                files.push(path);
            }
        }
        files
    }

    impl TagStore {
        async fn write_back_round_for_test(&self) -> usize {
            let pending = self.pending.clone().expect("pending dir");
            self.write_back_round(&pending).await.expect("round")
        }
    }
}
