//! The tag table: `repo:tag → manifest digest`, and the records of the manifests pushed into
//! each repository (`repo → manifest digest`, with its media type), persisted in the backend
//! as one small object each (`repositories/<repo>/_tags/<tag>` holding the digest text,
//! `repositories/<repo>/_manifests/<algorithm>/<hex>` holding a JSON `ManifestRecord`), and the
//! listings derived from the backend's key space (a repository's tags, the catalog of
//! repositories). Tags and records are one kind of [`Entry`], written, kept pending and
//! deleted by the same code. A repository's entries live in the backend its name routes to.
//!
//! With a `pending_dir`, an entry whose backend is unreachable is accepted anyway and kept on a
//! `shoal_jobs` queue there, one marker per entry (`<sha256 of "repo:tag">.json` for a tag,
//! `<sha256 of "repo@digest">.json` for a record), until it is written back. Versions before
//! the queue kept such tags as `repositories/<repo>/_tags/<tag>` files under the same
//! directory; those are queued when it is opened.
//!
//! Beside each tag, the time it was last written (`repositories/<repo>/_tag_times/<tag>`, RFC
//! 3339 text), which retention ranks tags by. Tags written before times were kept have none; a
//! registry backend keeps none (its key space has no place for them).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt, stream};
use humantime_serde::re::humantime;
use serde::{Deserialize, Serialize};
use shoal_backends::{
    Backend, BackendError, BackendRouter, ByteStream, FilesystemBackend, MANIFESTS_SEPARATOR,
    REPOSITORIES_PREFIX, manifest_key, parse_manifest_key, tag_key,
};
use shoal_core::{Digest, ManifestRecord, Name, Tag};
use shoal_jobs::{Failure, IoContext, Job, JobsError, Queue, RetryPolicy, Stats};
use shoal_service::CancellationToken;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::error::Error;

/// Separates the repository from the tag in a tag key. `_tags` cannot be a repository name
/// component (components start with `[a-z0-9]`), so the first match is the boundary.
const TAGS_SEPARATOR: &str = "/_tags/";
/// The same for the times tags were written (`…/_tag_times/<tag>`).
const TAG_TIMES_SEPARATOR: &str = "/_tag_times/";
/// A tag object holds a digest (at most `sha512:` + 128 hex characters) and a record one media
/// type; anything much larger is neither.
const MAX_ENTRY_OBJECT: usize = 1024;

/// Tags or records read at once while listing a repository's.
const LOOKUP_CONCURRENCY: usize = 16;
/// How long a tag write waits for its backend before the tag is kept locally instead (and how
/// long a write-back may hold the tag writes, which it serialises with).
const BACKEND_WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// Retries of pending tags: a tag is a few bytes, so a backend that returns is noticed within
/// half a minute even after a long outage.
const PENDING_RETRY: RetryPolicy = RetryPolicy {
    min_delay: Duration::from_secs(1),
    max_delay: Duration::from_secs(30),
    max_attempts: None,
};
/// Pending tags written back at once: one, as write-backs are serialised with tag writes.
const PENDING_CONCURRENCY: usize = 1;

/// Tags and manifest records stored in the backends their repositories route to.
#[derive(Clone)]
pub struct TagStore {
    backends: Arc<BackendRouter>,
    /// Entries accepted while their backend was unreachable, durable on local disk until
    /// written back (`pending_dir`); without it a backend failure fails the write.
    pending: Option<Arc<Queue<EntryWriteBack>>>,
    /// Serialises entry writes and their write-back, so a retry of an older value can never
    /// land after a newer one.
    writes: Arc<Mutex<()>>,
}

/// What a repository holds in the store: a tag, or the record of a manifest pushed into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Tag(Tag),
    Manifest(Digest),
}

impl Entry {
    fn key(&self, repo: &Name) -> String {
        match self {
            Entry::Tag(tag) => tag_key(repo, tag),
            Entry::Manifest(digest) => manifest_key(repo, digest),
        }
    }

    /// The queue key of a pending entry: flat, and the same for every value of one entry, so a
    /// newer value replaces a pending older one (`:` and `@` are in neither a name nor a tag).
    fn pending_key(&self, repo: &Name) -> String {
        let id = match self {
            Entry::Tag(tag) => format!("{repo}:{tag}"),
            Entry::Manifest(digest) => format!("{repo}@{digest}"),
        };
        Digest::of(id.as_bytes()).hex()
    }
}

/// An entry with its value: what a write stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Tag {
        tag: Tag,
        digest: Digest,
    },
    Manifest {
        manifest: Digest,
        record: ManifestRecord,
    },
}

impl Value {
    fn entry(&self) -> Entry {
        match self {
            Value::Tag { tag, .. } => Entry::Tag(tag.clone()),
            Value::Manifest { manifest, .. } => Entry::Manifest(*manifest),
        }
    }

    /// The backend object: a tag's digest text, a record's JSON.
    fn object(&self) -> Bytes {
        match self {
            Value::Tag { digest, .. } => Bytes::from(digest.to_string()),
            Value::Manifest { record, .. } => {
                Bytes::from(serde_json::to_vec(record).expect("a record serialises"))
            }
        }
    }
}

/// An entry kept locally until its backend has it. A tag's marker is `{"repo","tag","digest"}`,
/// as versions before manifest records wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Pending {
    repo: Name,
    #[serde(flatten)]
    value: Value,
    /// When a tag was written (markers of versions before tag times have none).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    updated_at: Option<SystemTime>,
}

/// Writing a pending entry back to its backend.
struct EntryWriteBack(TagStore);

impl Job for EntryWriteBack {
    type Payload = Pending;
    const NAME: &'static str = "pending tag";

    fn key(pending: &Pending) -> String {
        pending.value.entry().pending_key(&pending.repo)
    }

    /// Every failure is retried: a route that fails may be fixed by the backend's return or
    /// the operator.
    async fn run(&self, pending: &Pending) -> Result<(), Failure> {
        let store = &self.0;
        let _writing = store.writes.lock().await;
        let entry = pending.value.entry();
        // A put since this attempt was taken wrote a newer value or queued one: this one must
        // not land after it.
        let current = store
            .pending
            .as_ref()
            .and_then(|queue| queue.get(&entry.pending_key(&pending.repo)));
        if current.as_ref() != Some(pending) {
            return Ok(());
        }
        let key = entry.key(&pending.repo);
        let backend = store.backend(&pending.repo).map_err(Failure::retry)?;
        if let (Entry::Tag(tag), Some(time)) = (&entry, pending.updated_at) {
            write_time(&*backend, &pending.repo, tag, time)
                .await
                .map_err(|error| Failure::retry(format!("writing back {key}'s time: {error}")))?;
        }
        write_object(&*backend, &key, pending.value.object())
            .await
            .map_err(|error| Failure::retry(format!("writing back {key}: {error}")))?;
        info!(key, "pending entry written back");
        Ok(())
    }
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

    /// Keeps tags whose backend is unreachable in `dir` and writes them back later (once
    /// [`TagStore::write_back`] runs). Tags an earlier run left there, in either layout, are
    /// queued again.
    pub async fn with_pending_dir(mut self, dir: &Path) -> Result<Self, Error> {
        let queue = Queue::open(dir, PENDING_RETRY, PENDING_CONCURRENCY).await?;
        import_old_layout(dir, &queue).await?;
        self.pending = Some(Arc::new(queue));
        Ok(self)
    }

    /// A reading of the pending-tags queue for metrics; `None` without a `pending_dir`.
    pub fn pending_stats(&self) -> Option<impl Fn() -> Stats + Send + Sync + 'static> {
        let queue = self.pending.clone()?;
        Some(move || queue.stats())
    }

    fn backend(&self, name: &Name) -> Result<Arc<dyn Backend>, Error> {
        self.backends
            .route(Some(name))
            .map_err(Error::backend("routing a repository"))
    }

    /// Stores `value` (points a tag at a digest, or records a manifest), replacing any previous
    /// value of its entry. The backend writes atomically, so a reader sees the old value or the
    /// new one, never a mix. When the backend cannot be reached and a pending directory is
    /// configured, the entry is kept there durably (and this node serves it) until the
    /// write-back gets it into the backend.
    ///
    /// A tag's time is written first, so a crash in between leaves a tag that looks newer than
    /// it is (kept longer by retention), never one that looks older.
    pub async fn put(&self, name: &Name, value: Value) -> Result<(), Error> {
        let entry = value.entry();
        let key = entry.key(name);
        let backend = self.backend(name)?;
        let updated_at = matches!(entry, Entry::Tag(_)).then(SystemTime::now);
        let _writing = self.writes.lock().await;
        let written = async {
            if let (Entry::Tag(tag), Some(time)) = (&entry, updated_at) {
                write_time(&*backend, name, tag, time).await?;
            }
            write_object(&*backend, &key, value.object()).await
        }
        .await;
        let Some(pending) = &self.pending else {
            return written.map_err(Error::backend("writing a tag or manifest record"));
        };
        match written {
            Ok(()) => {
                // The backend now has the newest value; an older pending one must not follow it.
                pending.remove(&entry.pending_key(name)).await?;
                Ok(())
            }
            Err(error) if transient(&error) => {
                warn!(%key, error = %shoal_core::chain(&error), "tag backend unreachable: keeping the entry locally until it is written back");
                let repo = name.clone();
                let pending_entry = Pending {
                    repo,
                    value,
                    updated_at,
                };
                Ok(pending.enqueue(pending_entry).await?)
            }
            Err(source) => Err(Error::Backend {
                action: "writing a tag or manifest record",
                source,
            }),
        }
    }

    /// Writes every pending entry back to its backend, retrying until `shutdown` (a write in
    /// progress finishes first).
    pub async fn write_back(self, shutdown: CancellationToken) {
        let Some(pending) = self.pending.clone() else {
            return;
        };
        pending.run(Arc::new(EntryWriteBack(self)), shutdown).await;
    }

    /// The digest `tag` points at, or `None` when the tag does not exist. A tag kept locally
    /// while its backend was unreachable is the newest value this node accepted.
    pub async fn get(&self, name: &Name, tag: &Tag) -> Result<Option<Digest>, Error> {
        let entry = Entry::Tag(tag.clone());
        match self.pending_value(name, &entry) {
            Some(Value::Tag { digest, .. }) => return Ok(Some(digest)),
            Some(Value::Manifest { .. }) | None => {}
        }
        let key = entry.key(name);
        let text = read_object(&*self.backend(name)?, &key).await?;
        text.map(|text| digest_object(&key, &text)).transpose()
    }

    /// When `tag` was last written, or `None` when that is not known: the tag was written
    /// before tag times were kept, or its backend (a registry) keeps none.
    pub async fn updated_at(&self, name: &Name, tag: &Tag) -> Result<Option<SystemTime>, Error> {
        let entry = Entry::Tag(tag.clone());
        if let Some(pending) = self
            .pending
            .as_ref()
            .and_then(|queue| queue.get(&entry.pending_key(name)))
        {
            return Ok(pending.updated_at);
        }
        let key = tag_time_key(name, tag);
        let text = match read_object(&*self.backend(name)?, &key).await {
            Err(Error::Backend { source, .. }) if keeps_no_times(&source) => return Ok(None),
            other => other?,
        };
        let Some(text) = text else {
            return Ok(None);
        };
        std::str::from_utf8(&text)
            .map_err(|_| "not UTF-8".to_owned())
            .and_then(|s| humantime::parse_rfc3339(s.trim()).map_err(|e| e.to_string()))
            .map(Some)
            .map_err(|reason| Error::CorruptEntry { key, reason })
    }

    /// The record of manifest `digest` pushed into `name`, or `None` when there is none.
    pub async fn record(
        &self,
        name: &Name,
        digest: &Digest,
    ) -> Result<Option<ManifestRecord>, Error> {
        let entry = Entry::Manifest(*digest);
        match self.pending_value(name, &entry) {
            Some(Value::Manifest { record, .. }) => return Ok(Some(record)),
            Some(Value::Tag { .. }) | None => {}
        }
        let key = entry.key(name);
        let Some(json) = read_object(&*self.backend(name)?, &key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&json)
            .map(Some)
            .map_err(|e| Error::CorruptEntry {
                key,
                reason: e.to_string(),
            })
    }

    /// Every manifest recorded in `name` with its record, in digest order. A registry backend
    /// cannot list a repository's manifests: there, only records kept pending are found.
    pub async fn records(&self, name: &Name) -> Result<Vec<(Digest, ManifestRecord)>, Error> {
        let prefix = format!(
            "{REPOSITORIES_PREFIX}{}{MANIFESTS_SEPARATOR}",
            name.as_str()
        );
        let keys = list(&self.backend(name)?, &prefix).await?;
        let mut digests: BTreeSet<Digest> = keys
            .iter()
            .filter_map(|key| parse_manifest_key(key).map(|(_, digest)| digest))
            .collect();
        for pending in self.pending_entries() {
            if let Value::Manifest { manifest, .. } = pending.value
                && pending.repo == *name
            {
                digests.insert(manifest);
            }
        }
        lookup_all(
            digests,
            |digest| async move { self.record(name, &digest).await },
        )
        .await
    }

    /// The value this node keeps locally for `entry`, if any.
    fn pending_value(&self, name: &Name, entry: &Entry) -> Option<Value> {
        let pending = self.pending.as_ref()?.get(&entry.pending_key(name))?;
        Some(pending.value)
    }

    /// Removes a tag (then its time) or a manifest record; `false` when it did not exist.
    pub async fn delete(&self, name: &Name, entry: &Entry) -> Result<bool, Error> {
        let _writing = self.writes.lock().await;
        let was_pending = match &self.pending {
            Some(pending) => pending.remove(&entry.pending_key(name)).await?,
            None => false,
        };
        let backend = self.backend(name)?;
        let in_backend = backend
            .delete(&entry.key(name))
            .await
            .map_err(Error::backend("deleting a tag or manifest record"))?;
        if let Entry::Tag(tag) = entry {
            match backend.delete(&tag_time_key(name, tag)).await {
                Err(error) if !keeps_no_times(&error) => {
                    return Err(Error::backend("deleting a tag's time")(error));
                }
                _ => {}
            }
        }
        Ok(was_pending || in_backend)
    }

    /// The entries kept locally, in no particular order.
    fn pending_entries(&self) -> Vec<Pending> {
        self.pending
            .as_ref()
            .map_or_else(Vec::new, |queue| queue.payloads())
    }

    /// The repository's tags, sorted; empty when it has none.
    pub async fn tags(&self, name: &Name) -> Result<Vec<String>, Error> {
        let prefix = format!("{REPOSITORIES_PREFIX}{}{TAGS_SEPARATOR}", name.as_str());
        let keys = list(&self.backend(name)?, &prefix).await?;
        let mut tags: BTreeSet<String> = keys
            .iter()
            .filter_map(|key| {
                let tag = key.strip_prefix(&prefix)?;
                Tag::parse(tag).is_ok().then(|| tag.to_owned())
            })
            .collect();
        tags.extend(
            self.pending_tags(Some(name))
                .map(|(_, tag)| tag.to_string()),
        );
        Ok(tags.into_iter().collect())
    }

    /// The tags kept locally (of repository `name`, or of all), as `(repository, tag)`.
    fn pending_tags(&self, name: Option<&Name>) -> impl Iterator<Item = (Name, Tag)> {
        let pending = self.pending_entries().into_iter();
        pending.filter_map(move |p| match p.value {
            Value::Tag { tag, .. } if name.is_none_or(|name| *name == p.repo) => {
                Some((p.repo, tag))
            }
            _ => None,
        })
    }

    /// Every repository that has a tag or a manifest record in any backend (or pending), sorted:
    /// what garbage collection marks from.
    pub async fn all_repositories(&self) -> Result<Vec<Name>, Error> {
        let mut repos = BTreeSet::new();
        for backend in self.backends.backends() {
            for key in list(backend, REPOSITORIES_PREFIX).await? {
                let repo = key
                    .strip_prefix(REPOSITORIES_PREFIX)
                    .and_then(|rest| rest.split_once("/_"))
                    .and_then(|(repo, _)| Name::parse(repo).ok());
                repos.extend(repo);
            }
        }
        repos.extend(self.pending_entries().into_iter().map(|p| p.repo));
        Ok(repos.into_iter().collect())
    }

    /// Every repository that has at least one tag in any backend, sorted.
    pub async fn repositories(&self) -> Result<Vec<String>, Error> {
        let mut keys = Vec::new();
        for backend in self.backends.backends() {
            keys.extend(list(backend, REPOSITORIES_PREFIX).await?);
        }
        let mut repos: BTreeSet<String> = keys
            .iter()
            .filter_map(|key| match parse_tag_key(key) {
                Some((name, _)) => Some(name.as_str().to_owned()),
                None if is_record_key(key) || key.contains(TAG_TIMES_SEPARATOR) => None,
                None => {
                    warn!(
                        key,
                        "ignoring a backend key that is neither a tag nor a record"
                    );
                    None
                }
            })
            .collect();
        repos.extend(self.pending_tags(None).map(|(repo, _)| repo.to_string()));
        Ok(repos.into_iter().collect())
    }
}

/// Looks `keys` up a few at a time and keeps those found, in order, with what was found.
pub(crate) async fn lookup_all<K, V, Fut>(
    keys: impl IntoIterator<Item = K>,
    lookup: impl Fn(K) -> Fut,
) -> Result<Vec<(K, V)>, Error>
where
    K: Clone,
    Fut: Future<Output = Result<Option<V>, Error>>,
{
    stream::iter(keys)
        .map(|key| {
            let found = lookup(key.clone());
            async move { Ok::<_, Error>(found.await?.map(|value| (key, value))) }
        })
        .buffered(LOOKUP_CONCURRENCY)
        .try_filter_map(|found| async move { Ok(found) })
        .try_collect()
        .await
}

/// Queues the tags an earlier version kept under `dir` in a filesystem backend's layout
/// (`repositories/<repo>/_tags/<tag>` holding the digest), removing each once its marker is
/// durable, and then the emptied layout. A crash in between only queues a tag again.
async fn import_old_layout(dir: &Path, queue: &Queue<EntryWriteBack>) -> Result<(), Error> {
    let layout = dir.join(REPOSITORIES_PREFIX);
    if !layout.is_dir() {
        return Ok(());
    }
    let old = FilesystemBackend::new(dir)
        .map_err(Error::backend("opening pending tags of an earlier version"))?;
    let keys = old
        .list(REPOSITORIES_PREFIX)
        .await
        .map_err(Error::backend("listing pending tags of an earlier version"))?;
    let mut left = 0;
    for key in keys {
        let Some((repo, tag)) = parse_tag_key(&key) else {
            warn!(key, "leaving a pending file that is not a tag");
            left += 1;
            continue;
        };
        if let Some(text) = read_object(&old, &key).await? {
            let digest = digest_object(&key, &text)?;
            let value = Value::Tag { tag, digest };
            let updated_at = None;
            queue
                .enqueue(Pending {
                    repo,
                    value,
                    updated_at,
                })
                .await?;
            info!(key, %digest, "pending tag of an earlier version queued");
        }
        old.delete(&key).await.map_err(Error::backend(
            "removing a pending tag of an earlier version",
        ))?;
    }
    if left == 0 {
        // Only the directories of the old layout remain.
        tokio::fs::remove_dir_all(&layout)
            .await
            .ctx("remove", &layout)
            .map_err(JobsError::from)?;
    }
    Ok(())
}

/// Whether a failed write may succeed later (the backend was unreachable or failed on its
/// side), as opposed to one that never will (no route, a read-only backend).
fn transient(error: &BackendError) -> bool {
    matches!(
        error,
        BackendError::Io(_) | BackendError::ObjectStore { .. } | BackendError::Remote { .. }
    )
}

/// Writes an entry's object, failing as unreachable when the backend does not answer within
/// [`BACKEND_WRITE_TIMEOUT`].
async fn write_object(backend: &dyn Backend, key: &str, object: Bytes) -> Result<(), BackendError> {
    let len = object.len() as u64;
    let body: ByteStream = Box::pin(stream::once(async move { Ok(object) }));
    tokio::time::timeout(BACKEND_WRITE_TIMEOUT, backend.put(key, body, Some(len)))
        .await
        .unwrap_or_else(|_| {
            Err(BackendError::Remote {
                operation: "put",
                url: key.to_owned(),
                reason: format!("no answer within {BACKEND_WRITE_TIMEOUT:?}"),
            })
        })
}

/// The key of the time `tag` of `repo` was last written.
fn tag_time_key(repo: &Name, tag: &Tag) -> String {
    format!("{REPOSITORIES_PREFIX}{repo}{TAG_TIMES_SEPARATOR}{tag}")
}

/// Writes the time `tag` was written; a backend that keeps no times (a registry) is skipped.
async fn write_time(
    backend: &dyn Backend,
    repo: &Name,
    tag: &Tag,
    time: SystemTime,
) -> Result<(), BackendError> {
    let text = humantime::format_rfc3339_millis(time).to_string();
    match write_object(backend, &tag_time_key(repo, tag), Bytes::from(text)).await {
        Err(error) if keeps_no_times(&error) => Ok(()),
        written => written,
    }
}

/// Whether a backend refused a tag time's key because it has no place for one (a registry
/// maps only blobs, tags and manifests).
fn keeps_no_times(error: &BackendError) -> bool {
    matches!(
        error,
        BackendError::InvalidKey { .. } | BackendError::Unsupported { .. }
    )
}

/// The object under `key` (a tag or a record), or `None` when there is none.
async fn read_object(backend: &dyn Backend, key: &str) -> Result<Option<Bytes>, Error> {
    let stream = backend
        .get(key, None)
        .await
        .map_err(Error::backend("reading a tag or manifest record"))?;
    let Some(mut stream) = stream else {
        return Ok(None);
    };
    let corrupt = |reason| Error::CorruptEntry {
        key: key.to_owned(),
        reason,
    };
    let mut object = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| corrupt(format!("read failed: {e}")))?;
        if object.len() + chunk.len() > MAX_ENTRY_OBJECT {
            return Err(corrupt(format!("larger than {MAX_ENTRY_OBJECT} bytes")));
        }
        object.extend_from_slice(&chunk);
    }
    Ok(Some(object.freeze()))
}

/// The digest a tag object holds.
fn digest_object(key: &str, text: &[u8]) -> Result<Digest, Error> {
    std::str::from_utf8(text)
        .map_err(|_| "not UTF-8".to_owned())
        .and_then(|s| Digest::parse(s.trim()).map_err(|e| e.to_string()))
        .map_err(|reason| Error::CorruptEntry {
            key: key.to_owned(),
            reason,
        })
}

async fn list(backend: &Arc<dyn Backend>, prefix: &str) -> Result<Vec<String>, Error> {
    backend
        .list(prefix)
        .await
        .map_err(Error::backend("listing tags"))
}

/// Whether `key` is a manifest record's (`repositories/<repo>/_manifests/<algorithm>/<hex>`).
fn is_record_key(key: &str) -> bool {
    parse_manifest_key(key).is_some()
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

    fn tagged(tag: &Tag, digest: Digest) -> Value {
        let tag = tag.clone();
        Value::Tag { tag, digest }
    }

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
        use shoal_backends::{BackendConfig, NamespacePattern, RouteConfig};
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
        store.put(&a, tagged(&tag, digest)).await.expect("put a");
        store.put(&b, tagged(&tag, digest)).await.expect("put b");
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
            store.put(&unrouted, tagged(&tag, digest)).await,
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

    /// Runs the write-back of `store`'s pending tags until the token is cancelled.
    fn start_write_back(store: &TagStore) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let token = CancellationToken::new();
        let worker = tokio::spawn(store.clone().write_back(token.clone()));
        (token, worker)
    }

    async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
        let polled = async {
            while !condition() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let waited = tokio::time::timeout(Duration::from_secs(10), polled).await;
        waited.unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    fn queue_stats(store: &TagStore) -> shoal_jobs::Stats {
        store.pending.as_ref().expect("pending dir").stats()
    }

    #[tokio::test]
    async fn tags_written_during_a_backend_outage_are_kept_locally_then_written_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("backend");
        let backend = FilesystemBackend::new(&root).expect("backend");
        let store = TagStore::new(Arc::new(backend) as Arc<dyn Backend>)
            .with_pending_dir(&dir.path().join("pending"))
            .await
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
            .put(&name, tagged(&v1, old))
            .await
            .expect("accepted during the outage");
        store
            .put(&name, tagged(&v2, old))
            .await
            .expect("accepted during the outage");
        assert_eq!(store.get(&name, &v1).await.expect("get"), Some(old));
        let (token, worker) = start_write_back(&store);
        wait_for("both write-backs to fail", || {
            queue_stats(&store).retries >= 2
        })
        .await;
        token.cancel();
        worker.await.expect("write-back");
        assert_eq!(store.pending_entries().len(), 2, "still pending");

        break_backend(&root, false);
        // A newer value written directly must not be overwritten by the older pending one.
        store.put(&name, tagged(&v1, new)).await.expect("put");
        let (token, worker) = start_write_back(&store);
        wait_for("the write-back", || store.pending_entries().is_empty()).await;
        token.cancel();
        worker.await.expect("write-back");
        assert_eq!(in_backend(&v1), Some(new.to_string()));
        assert_eq!(in_backend(&v2), Some(old.to_string()));
        assert_eq!(store.get(&name, &v1).await.expect("get"), Some(new));
        assert_eq!(store.tags(&name).await.expect("tags"), ["v1", "v2"]);
        assert!(
            list_files(&dir.path().join("pending")).is_empty(),
            "nothing is left pending"
        );
    }

    #[tokio::test]
    async fn pending_tags_kept_by_an_earlier_version_are_queued_at_open_and_written_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("backend");
        let backend = FilesystemBackend::new(&root).expect("backend");
        let pending_dir = dir.path().join("pending");
        let name = Name::parse("team/app").expect("name");
        let tag = Tag::parse("v1").expect("tag");
        let digest = Digest::of(b"manifest");
        // The layout earlier versions left: a filesystem backend rooted at the pending dir.
        let old = FilesystemBackend::new(&pending_dir).expect("old layout");
        write_object(&old, &tag_key(&name, &tag), digest.to_string().into())
            .await
            .expect("old pending tag");

        let store = TagStore::new(Arc::new(backend) as Arc<dyn Backend>)
            .with_pending_dir(&pending_dir)
            .await
            .expect("pending dir");
        assert!(!pending_dir.join(REPOSITORIES_PREFIX).exists(), "imported");
        assert_eq!(store.get(&name, &tag).await.expect("get"), Some(digest));
        assert_eq!(store.repositories().await.expect("catalog"), ["team/app"]);
        let (token, worker) = start_write_back(&store);
        wait_for("the write-back", || store.pending_entries().is_empty()).await;
        token.cancel();
        worker.await.expect("write-back");
        let written = std::fs::read_to_string(root.join(tag_key(&name, &tag)));
        assert_eq!(written.expect("in the backend"), digest.to_string());
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
            store.put(&name, tagged(&tag, Digest::of(b"x"))).await,
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
}
