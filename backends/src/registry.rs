//! Another Docker/OCI registry (Registry V2 API) as the backend, read and write.
//!
//! A registry addresses every blob through a repository, but backend keys carry none: the
//! [`BackendRouter`](super::BackendRouter) hands out a view scoped to the request's repository
//! ([`Backend::scoped`]). Without a repository a blob is absent (reads) or refused (writes).
//! Tag keys name their repository themselves.
//!
//! | key | operation | requests |
//! |---|---|---|
//! | blob | stat / get | `HEAD`/`GET /v2/<repo>/blobs/<digest>` (with `Range`), then the manifests endpoint: a registry serves manifests only there |
//! | blob | put | `POST /v2/<repo>/blobs/uploads/`, then one streamed `PUT <location>?digest=` |
//! | tag | stat / get | `HEAD /v2/<repo>/manifests/<tag>`; the object is the digest text |
//! | tag | put | the manifest's bytes read back from this registry by digest, `PUT /v2/<repo>/manifests/<tag>` |
//! | tag | list | `/v2/<repo>/tags/list` and `/v2/_catalog`, page by page |
//! | manifest record | stat / get | `GET /v2/<repo>/manifests/<digest>`; the object is a `ManifestRecord` of its media type |
//! | manifest record | put | the manifest pushed by digest, as a tag put does |
//! | manifest record | list | none: a registry cannot list a repository's manifests |
//! | any | delete | `DELETE` where the registry allows it, else [`BackendError::Unsupported`] |
//!
//! The requests, their authentication and their answers are `shoal-registry-client`'s; this
//! module maps keys onto them and waits for a tag's content.

use std::fmt;
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use shoal_core::{Digest, MAX_MANIFEST_SIZE, Manifest, ManifestRecord, Name, Reference, Tag};
use shoal_registry_client::{
    Credentials, Error as ClientError, FetchedManifest, Options, RegistryClient,
};

use super::http::take_bytes;
use super::{
    BLOBS_PREFIX, Backend, BackendError, MANIFESTS_SEPARATOR, REPOSITORIES_PREFIX, parse_blob_key,
    parse_manifest_key,
};
use crate::ByteStream;

const TAGS_SEPARATOR: &str = "/_tags/";
/// A tag object is a digest's text; refuse to buffer anything much larger.
const MAX_TAG_OBJECT: usize = 1024;
/// First and longest pause while a tag put waits for the write-back to bring its manifest and
/// blobs into the registry.
const TAG_RETRY_INITIAL: Duration = Duration::from_millis(200);
const TAG_RETRY_MAX: Duration = Duration::from_secs(5);

/// `registry: { url: "https://registry.example", username: …, password: … }`.
#[derive(Deserialize, Serialize, Clone, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// The registry's base URL, `http://` or `https://`, without `/v2/`.
    pub url: String,
    /// For basic auth, or for the token server of a bearer-auth registry. Anonymous when unset.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Name of an environment variable holding the password, to keep it out of the file.
    pub password_env: Option<String>,
    /// How long the registry may stay silent within one request (connect, headers, between
    /// body chunks); a whole blob may take longer.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a tag put waits for its manifest and blobs to reach the registry: the origins
    /// write them back asynchronously, so a tag can arrive first.
    #[serde(with = "humantime_serde")]
    pub manifest_wait: Duration,
    /// The first components of Shoal's repository names that the registry's names lack: with
    /// `docker.io`, Shoal's `docker.io/library/nginx` is the registry's `library/nginx`. Only
    /// repositories under the prefix are read or written (route `<prefix>/.*` here).
    pub strip_prefix: Option<String>,
    /// A one-component name (after `strip_prefix`) is the registry's `library/<name>`, as on
    /// Docker Hub.
    pub library: bool,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            url: String::new(),
            username: None,
            password: None,
            password_env: None,
            timeout: Duration::from_secs(30),
            manifest_wait: Duration::from_secs(60),
            strip_prefix: None,
            library: false,
        }
    }
}

impl fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_env", &self.password_env)
            .field("timeout", &self.timeout)
            .field("manifest_wait", &self.manifest_wait)
            .field("strip_prefix", &self.strip_prefix)
            .field("library", &self.library)
            .finish()
    }
}

/// A registry as a backend, optionally bound to one repository. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct RegistryBackend {
    client: RegistryClient,
    manifest_wait: Duration,
    names: Names,
    /// The registry's name of the repository this view is scoped to.
    repository: Option<Name>,
}

/// How Shoal's repository names map onto the registry's (`strip_prefix`, `library`).
#[derive(Debug, Clone, Default)]
struct Names {
    /// `strip_prefix` with its trailing `/`.
    prefix: Option<String>,
    library: bool,
}

impl Names {
    fn new(config: &RegistryConfig) -> Result<Names, BackendError> {
        let prefix = match config.strip_prefix.as_deref().map(|p| p.trim_matches('/')) {
            Some(prefix) => {
                // Valid exactly when a name under it is.
                Name::parse(&format!("{prefix}/x")).map_err(|e| {
                    remote(
                        "configure",
                        &config.url,
                        format!("strip_prefix {prefix:?}: {e}"),
                    )
                })?;
                Some(format!("{prefix}/"))
            }
            None => None,
        };
        Ok(Names {
            prefix,
            library: config.library,
        })
    }

    /// The registry's name for Shoal's `name`; `None` outside `strip_prefix`.
    fn upstream(&self, name: &Name) -> Option<Name> {
        let rest = match &self.prefix {
            Some(prefix) => name.as_str().strip_prefix(prefix.as_str())?,
            None => name.as_str(),
        };
        if self.library && !rest.contains('/') {
            return Name::parse(&format!("library/{rest}")).ok();
        }
        Name::parse(rest).ok()
    }

    /// Shoal's name for the registry's `upstream` (as its catalog lists it).
    fn shoal(&self, upstream: &str) -> Option<Name> {
        Name::parse(&format!(
            "{}{upstream}",
            self.prefix.as_deref().unwrap_or("")
        ))
        .ok()
    }

    /// `key` with the registry's repository names.
    fn key(&self, key: &str) -> Result<Key, BackendError> {
        let upstream = |name: Name| {
            self.upstream(&name)
                .ok_or_else(|| BackendError::InvalidKey {
                    key: key.chars().take(200).collect(),
                    reason: "a repository outside this registry's strip_prefix",
                })
        };
        Ok(match parse_key(key)? {
            Key::Blob(digest) => Key::Blob(digest),
            Key::Tag(name, tag) => Key::Tag(upstream(name)?, tag),
            Key::Manifest(name, digest) => Key::Manifest(upstream(name)?, digest),
        })
    }
}

/// What a backend key names.
enum Key {
    Blob(Digest),
    Tag(Name, Tag),
    /// The record of a manifest pushed into a repository.
    Manifest(Name, Digest),
}

fn parse_key(key: &str) -> Result<Key, BackendError> {
    let invalid = |reason| BackendError::InvalidKey {
        key: key.chars().take(200).collect(),
        reason,
    };
    if key.starts_with(BLOBS_PREFIX) {
        return parse_blob_key(key)
            .map(Key::Blob)
            .ok_or_else(|| invalid("not a sha256 or sha512 blob key"));
    }
    let rest = key
        .strip_prefix(REPOSITORIES_PREFIX)
        .ok_or_else(|| invalid("a registry holds only blob, tag and manifest record keys"))?;
    if rest.contains(MANIFESTS_SEPARATOR) {
        let (name, digest) = parse_manifest_key(key)
            .ok_or_else(|| invalid("not a repository's sha256 or sha512 manifest record key"))?;
        return Ok(Key::Manifest(name, digest));
    }
    let (repo, tag) = rest
        .split_once(TAGS_SEPARATOR)
        .ok_or_else(|| invalid("a registry holds only blob, tag and manifest record keys"))?;
    let name = Name::parse(repo).map_err(|_| invalid("not a repository name"))?;
    let tag = Tag::parse(tag).map_err(|_| invalid("not a tag"))?;
    Ok(Key::Tag(name, tag))
}

fn remote(operation: &'static str, url: &str, reason: impl fmt::Display) -> BackendError {
    BackendError::Remote {
        operation,
        url: url.to_owned(),
        reason: reason.to_string(),
    }
}

/// A failed blob upload: the body's own faults keep their kinds, the rest is the registry's.
fn upload_failure(key: &str, error: ClientError) -> BackendError {
    match error {
        ClientError::Body(source) => BackendError::Body {
            key: key.to_owned(),
            source,
        },
        ClientError::LengthMismatch { expected, actual } => BackendError::LengthMismatch {
            key: key.to_owned(),
            expected,
            actual,
        },
        error => remote("put", key, error),
    }
}

/// Whether a registry's 4xx answer says a referenced manifest or blob is not there yet.
fn is_missing_content(body: &str) -> bool {
    body.contains("MANIFEST_BLOB_UNKNOWN")
        || body.contains("BLOB_UNKNOWN")
        || body.contains("MANIFEST_UNKNOWN")
}

/// `range` of a stream that starts at byte 0, for answers a registry does not range itself.
fn slice(stream: ByteStream, range: Range<u64>) -> ByteStream {
    let skipped =
        futures::stream::unfold((stream, range.start), |(mut stream, mut skip)| async move {
            loop {
                let chunk = match stream.next().await? {
                    Ok(chunk) => chunk,
                    Err(e) => return Some((Err(e), (stream, 0))),
                };
                if skip == 0 {
                    return Some((Ok(chunk), (stream, 0)));
                }
                let len = chunk.len() as u64;
                if len <= skip {
                    skip -= len;
                    continue;
                }
                let start = usize::try_from(skip).unwrap_or(chunk.len());
                return Some((Ok(chunk.slice(start..)), (stream, 0)));
            }
        });
    take_bytes(skipped.boxed(), range.end.saturating_sub(range.start))
}

impl RegistryBackend {
    /// Builds the client; makes no request.
    pub fn new(config: &RegistryConfig) -> Result<RegistryBackend, BackendError> {
        let url = &config.url;
        let password = match (&config.password, &config.password_env) {
            (Some(_), Some(_)) => {
                return Err(remote(
                    "configure",
                    url,
                    "set password or password_env, not both",
                ));
            }
            (Some(password), None) => Some(password.clone()),
            (None, Some(var)) => Some(
                std::env::var(var)
                    .map_err(|e| remote("configure", url, format!("password_env {var}: {e}")))?,
            ),
            (None, None) => None,
        };
        let credentials = match (&config.username, password) {
            (Some(username), Some(password)) => Some(Credentials {
                username: username.clone(),
                password,
            }),
            (None, None) => None,
            _ => {
                return Err(remote(
                    "configure",
                    url,
                    "username and a password go together",
                ));
            }
        };
        let http = shoal_http_client::builder()
            .connect_timeout(config.timeout)
            .read_timeout(config.timeout)
            .build()
            .map_err(|e| remote("build HTTP client for", url, e))?;
        let options = Options {
            credentials,
            token_timeout: config.timeout,
        };
        let client = RegistryClient::with_options(url, http, options)
            .map_err(|e| remote("configure", url, e))?;
        Ok(RegistryBackend {
            client,
            manifest_wait: config.manifest_wait,
            names: Names::new(config)?,
            repository: None,
        })
    }

    async fn stat_blob(&self, repo: &Name, digest: &Digest) -> Result<Option<u64>, BackendError> {
        let key = || crate::blob_key(digest);
        match self.client.head_blob(repo, digest).await {
            Ok(Some(len)) => Ok(Some(len)),
            // A registry serves manifests only from the manifests endpoint.
            Ok(None) => self.stat_manifest(repo, &Reference::Digest(*digest)).await,
            Err(e) => Err(remote("stat", &key(), e)),
        }
    }

    async fn stat_manifest(
        &self,
        repo: &Name,
        reference: &Reference,
    ) -> Result<Option<u64>, BackendError> {
        let head = self.client.head_manifest(repo, reference).await;
        let head = head.map_err(|e| remote("stat", &format!("{repo}:{reference}"), e))?;
        Ok(head.map(|head| head.len))
    }

    /// The digest a tag points at.
    async fn tag_digest(&self, name: &Name, tag: &Tag) -> Result<Option<Digest>, BackendError> {
        let key = crate::tag_key(name, tag);
        let head = self
            .client
            .head_manifest(name, &Reference::Tag(tag.clone()))
            .await
            .map_err(|e| remote("stat", &key, e))?;
        match head {
            None => Ok(None),
            Some(head) => head
                .digest
                .map(Some)
                .ok_or_else(|| remote("stat", &key, "no Docker-Content-Digest")),
        }
    }

    async fn get_blob(
        &self,
        repo: &Name,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<Option<ByteStream>, BackendError> {
        let key = || crate::blob_key(digest);
        let blob = match self.client.get_blob(repo, digest, range.clone()).await {
            Ok(Some(blob)) => blob,
            Ok(None) => return self.get_manifest(repo, digest, range).await,
            Err(ClientError::RangeNotSatisfiable { start, len, .. }) => {
                let len = len.unwrap_or_default();
                if start == len {
                    return Ok(Some(futures::stream::empty().boxed()));
                }
                return Err(BackendError::RangeNotSatisfiable {
                    key: key(),
                    start,
                    len,
                });
            }
            Err(e) => return Err(remote("get", &key(), e)),
        };
        let partial = blob.partial;
        let body = blob.into_stream().map_err(io::Error::other).boxed();
        Ok(Some(match range {
            // A registry that ignores Range sends everything: cut out the range ourselves.
            Some(range) if !partial => slice(body, range),
            _ => body,
        }))
    }

    /// A manifest by digest, ranged locally (registries do not range manifests).
    async fn get_manifest(
        &self,
        repo: &Name,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<Option<ByteStream>, BackendError> {
        let key = crate::blob_key(digest);
        let Some(fetched) = self.manifest_by_digest(repo, digest, &key).await? else {
            return Ok(None);
        };
        let len = fetched.bytes.len() as u64;
        let whole: ByteStream = futures::stream::once(async move { Ok(fetched.bytes) }).boxed();
        let Some(range) = range else {
            return Ok(Some(whole));
        };
        if range.start > len {
            return Err(BackendError::RangeNotSatisfiable {
                key,
                start: range.start,
                len,
            });
        }
        Ok(Some(slice(whole, range)))
    }

    /// A manifest's bytes by digest: written back by the origins as a blob, or pushed to the
    /// registry as a manifest. `None` when neither is there (yet).
    async fn manifest_bytes(
        &self,
        repo: &Name,
        digest: &Digest,
    ) -> Result<Option<Bytes>, BackendError> {
        let key = crate::blob_key(digest);
        let Some(mut stream) = self.get_blob(repo, digest, None).await? else {
            return Ok(None);
        };
        let mut bytes = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| remote("read manifest", &key, e))?;
            if bytes.len() + chunk.len() > MAX_MANIFEST_SIZE {
                return Err(remote(
                    "read manifest",
                    &key,
                    format!("larger than {MAX_MANIFEST_SIZE} bytes"),
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Some(bytes.freeze()))
    }

    /// Stores the manifest `digest` under `reference` (a tag, or its own digest); the
    /// children of an index first, since a registry accepts an index only when they are
    /// manifests in the repository. `Ok(Err(reason))` means content is not in the registry yet.
    async fn push_manifest(
        &self,
        repo: &Name,
        reference: &Reference,
        digest: &Digest,
    ) -> Result<Result<(), String>, BackendError> {
        let Some(bytes) = self.manifest_bytes(repo, digest).await? else {
            return Ok(Err(format!("manifest {digest} is not in the registry")));
        };
        let what = format!("{repo}:{reference}");
        let manifest = Manifest::parse(&bytes, None)
            .map_err(|e| remote("push manifest", &what, format!("{digest}: {e}")))?;
        for child in manifest.children() {
            let child_ref = Reference::Digest(child.digest);
            if self.stat_manifest(repo, &child_ref).await?.is_none() {
                // Boxed: the recursion is at most one level deep (an index of images).
                let pushed = Box::pin(self.push_manifest(repo, &child_ref, &child.digest)).await?;
                if pushed.is_err() {
                    return Ok(pushed);
                }
            }
        }
        let media_type = manifest.media_type().as_str();
        match self
            .client
            .put_manifest(repo, reference, media_type, bytes)
            .await
        {
            Ok(_) => Ok(Ok(())),
            Err(e)
                if matches!(
                    e.status(),
                    Some(StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND)
                ) && is_missing_content(&e.to_string()) =>
            {
                Ok(Err(e.to_string()))
            }
            Err(e) => Err(remote("push manifest", &what, e)),
        }
    }

    /// Stores the manifest `digest` under `reference` (a tag, or its own digest for a record),
    /// waiting up to `manifest_wait` for the write-back to bring the manifest and everything it
    /// references into the registry. `key` names the object in errors.
    async fn put_manifest(
        &self,
        name: &Name,
        reference: &Reference,
        digest: &Digest,
        key: &str,
    ) -> Result<(), BackendError> {
        let deadline = tokio::time::Instant::now() + self.manifest_wait;
        let mut pause = TAG_RETRY_INITIAL;
        loop {
            let reason = match self.push_manifest(name, reference, digest).await? {
                Ok(()) => return Ok(()),
                Err(reason) => reason,
            };
            if tokio::time::Instant::now() + pause > deadline {
                return Err(remote(
                    "tag",
                    key,
                    format!(
                        "content still missing after waiting {:?}: {reason}",
                        self.manifest_wait
                    ),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(TAG_RETRY_MAX);
        }
    }

    /// The manifest `digest` of `repo` as the registry serves it; `key` names it in errors.
    async fn manifest_by_digest(
        &self,
        repo: &Name,
        digest: &Digest,
        key: &str,
    ) -> Result<Option<FetchedManifest>, BackendError> {
        self.client
            .get_manifest(repo, &Reference::Digest(*digest))
            .await
            .map_err(|e| remote("get", key, e))
    }

    /// The record object of manifest `digest` in `repo` (its media type, read from the manifest
    /// the registry serves), or `None` when the repository lacks it.
    async fn manifest_record(
        &self,
        repo: &Name,
        digest: &Digest,
    ) -> Result<Option<Bytes>, BackendError> {
        let key = crate::manifest_key(repo, digest);
        let Some(fetched) = self.manifest_by_digest(repo, digest, &key).await? else {
            return Ok(None);
        };
        let manifest = Manifest::parse(&fetched.bytes, fetched.media_type.as_deref())
            .map_err(|e| remote("get", &key, e))?;
        let record = ManifestRecord::new(&manifest, fetched.bytes.len() as u64);
        let json = serde_json::to_vec(&record).map_err(|e| remote("get", &key, e))?;
        Ok(Some(Bytes::from(json)))
    }

    /// The tag keys of Shoal's `repo` that start with `prefix`.
    async fn tag_keys(&self, repo: &Name, prefix: &str) -> Result<Vec<String>, BackendError> {
        let Some(upstream) = self.names.upstream(repo) else {
            return Ok(Vec::new());
        };
        let tags = self
            .client
            .tags(&upstream)
            .await
            .map_err(|e| remote("list", prefix, e))?
            .unwrap_or_default();
        Ok(tags
            .into_iter()
            .map(|tag| format!("{REPOSITORIES_PREFIX}{repo}{TAGS_SEPARATOR}{tag}"))
            .filter(|key| key.starts_with(prefix))
            .collect())
    }
}

#[async_trait]
impl Backend for RegistryBackend {
    async fn stat(&self, key: &str) -> Result<Option<u64>, BackendError> {
        match self.names.key(key)? {
            Key::Blob(digest) => match &self.repository {
                Some(repo) => self.stat_blob(repo, &digest).await,
                None => Ok(None),
            },
            Key::Tag(name, tag) => Ok(self
                .tag_digest(&name, &tag)
                .await?
                .map(|digest| digest.to_string().len() as u64)),
            Key::Manifest(name, digest) => Ok(self
                .manifest_record(&name, &digest)
                .await?
                .map(|record| record.len() as u64)),
        }
    }

    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<ByteStream>, BackendError> {
        let parsed = self.names.key(key)?;
        if let Some(range) = &range
            && range.end <= range.start
        {
            // HTTP cannot ask for zero bytes: answer an empty range from the object's length.
            let Some(len) = self.stat(key).await? else {
                return Ok(None);
            };
            if range.start > len {
                return Err(BackendError::RangeNotSatisfiable {
                    key: key.to_owned(),
                    start: range.start,
                    len,
                });
            }
            return Ok(Some(futures::stream::empty().boxed()));
        }
        let object = match parsed {
            Key::Blob(digest) => {
                return match &self.repository {
                    Some(repo) => self.get_blob(repo, &digest, range).await,
                    None => Ok(None),
                };
            }
            Key::Tag(name, tag) => self
                .tag_digest(&name, &tag)
                .await?
                .map(|digest| Bytes::from(digest.to_string())),
            Key::Manifest(name, digest) => self.manifest_record(&name, &digest).await?,
        };
        let Some(object) = object else {
            return Ok(None);
        };
        let len = object.len() as u64;
        let whole: ByteStream = futures::stream::once(async move { Ok(object) }).boxed();
        Ok(Some(match range {
            Some(range) if range.start > len => {
                return Err(BackendError::RangeNotSatisfiable {
                    key: key.to_owned(),
                    start: range.start,
                    len,
                });
            }
            Some(range) => slice(whole, range),
            None => whole,
        }))
    }

    async fn put(
        &self,
        key: &str,
        mut body: ByteStream,
        length: Option<u64>,
    ) -> Result<(), BackendError> {
        match self.names.key(key)? {
            Key::Blob(digest) => {
                let repo = self.repository.as_ref().ok_or(BackendError::Unsupported {
                    backend: "registry",
                    operation: "storing a blob without a repository",
                })?;
                self.client
                    .push_blob(repo, &digest, body, length)
                    .await
                    .map_err(|e| upload_failure(key, e))
            }
            Key::Tag(name, tag) => {
                let mut text = BytesMut::new();
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map_err(|source| BackendError::Body {
                        key: key.to_owned(),
                        source,
                    })?;
                    text.extend_from_slice(&chunk);
                    if text.len() > MAX_TAG_OBJECT {
                        return Err(remote("tag", key, "a tag object is a digest's text"));
                    }
                }
                if let Some(expected) = length
                    && expected != text.len() as u64
                {
                    return Err(BackendError::LengthMismatch {
                        key: key.to_owned(),
                        expected,
                        actual: text.len() as u64,
                    });
                }
                let digest = std::str::from_utf8(&text)
                    .ok()
                    .and_then(|text| Digest::parse(text.trim()).ok())
                    .ok_or_else(|| remote("tag", key, "a tag object must hold a sha256 digest"))?;
                self.put_manifest(&name, &Reference::Tag(tag), &digest, key)
                    .await
            }
            // The record is the manifest itself in the repository, its media type included.
            Key::Manifest(name, digest) => {
                self.put_manifest(&name, &Reference::Digest(digest), &digest, key)
                    .await
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        let (deleted, operation) = match self.names.key(key)? {
            Key::Blob(digest) => {
                let Some(repo) = &self.repository else {
                    return Ok(false);
                };
                (
                    self.client.delete_blob(repo, &digest).await,
                    "deleting a blob (deletes are disabled on this registry)",
                )
            }
            Key::Tag(name, tag) => (
                self.client
                    .delete_manifest(&name, &Reference::Tag(tag))
                    .await,
                "deleting a tag (this registry deletes manifests only by digest)",
            ),
            Key::Manifest(name, digest) => (
                self.client
                    .delete_manifest(&name, &Reference::Digest(digest))
                    .await,
                "deleting a manifest (deletes are disabled on this registry)",
            ),
        };
        match deleted {
            Ok(deleted) => Ok(deleted),
            // Deletes disabled, or (distribution 2.x) tags that can only go with their manifest.
            Err(e)
                if matches!(
                    e.status(),
                    Some(StatusCode::METHOD_NOT_ALLOWED | StatusCode::BAD_REQUEST)
                ) =>
            {
                Err(BackendError::Unsupported {
                    backend: "registry",
                    operation,
                })
            }
            Err(e) => Err(remote("delete", key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        let Some(rest) = prefix.strip_prefix(REPOSITORIES_PREFIX) else {
            return Err(BackendError::Unsupported {
                backend: "registry",
                operation: "listing anything but tags (a registry cannot list its blobs)",
            });
        };
        let mut keys = Vec::new();
        if let Some((repo, _)) = rest.split_once(TAGS_SEPARATOR) {
            // Within one repository.
            if let Ok(name) = Name::parse(repo) {
                keys = self.tag_keys(&name, prefix).await?;
            }
        } else {
            let repos = self
                .client
                .catalog()
                .await
                .map_err(|e| remote("list", prefix, e))?;
            for name in repos.iter().filter_map(|repo| self.names.shoal(repo)) {
                // Only repositories whose tag keys can start with the prefix.
                if !format!("{name}{TAGS_SEPARATOR}").starts_with(rest) {
                    continue;
                }
                keys.extend(self.tag_keys(&name, prefix).await?);
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn scoped(&self, namespace: Option<&Name>) -> Option<Arc<dyn Backend>> {
        Some(Arc::new(RegistryBackend {
            client: self.client.clone(),
            manifest_wait: self.manifest_wait,
            names: self.names.clone(),
            // Outside `strip_prefix`: no repository, so blobs are absent.
            repository: namespace.and_then(|name| self.names.upstream(name)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(strip_prefix: Option<&str>, library: bool) -> Result<Names, BackendError> {
        Names::new(&RegistryConfig {
            strip_prefix: strip_prefix.map(str::to_owned),
            library,
            ..RegistryConfig::default()
        })
    }

    #[test]
    fn names_strip_the_prefix_and_add_library() {
        let name = |s: &str| Name::parse(s).expect("name");
        let hub = names(Some("docker.io/"), true).expect("valid");
        assert_eq!(
            hub.upstream(&name("docker.io/nginx")),
            Some(name("library/nginx"))
        );
        assert_eq!(
            hub.upstream(&name("docker.io/library/nginx")),
            Some(name("library/nginx"))
        );
        assert_eq!(
            hub.upstream(&name("docker.io/team/app")),
            Some(name("team/app"))
        );
        assert_eq!(hub.upstream(&name("quay.io/team/app")), None);
        assert_eq!(hub.upstream(&name("docker.io")), None);
        assert_eq!(
            hub.shoal("library/nginx"),
            Some(name("docker.io/library/nginx"))
        );

        let plain = names(None, false).expect("valid");
        assert_eq!(plain.upstream(&name("app")), Some(name("app")));
        assert_eq!(plain.shoal("team/app"), Some(name("team/app")));

        let tag = Tag::parse("v1").expect("tag");
        assert!(matches!(
            hub.key(&crate::tag_key(&name("docker.io/nginx"), &tag)),
            Ok(Key::Tag(n, _)) if n == name("library/nginx")
        ));
        assert!(matches!(
            hub.key(&crate::tag_key(&name("other/nginx"), &tag)),
            Err(BackendError::InvalidKey { .. })
        ));
        for bad in ["Docker.io", "a b", "x:5000"] {
            assert!(names(Some(bad), false).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_parse_into_blobs_and_tags() {
        let digest = Digest::of(b"x");
        assert!(matches!(
            parse_key(&crate::blob_key(&digest)),
            Ok(Key::Blob(d)) if d == digest
        ));
        let name = Name::parse("team/app").expect("name");
        let tag = Tag::parse("v1").expect("tag");
        assert!(matches!(
            parse_key(&crate::tag_key(&name, &tag)),
            Ok(Key::Tag(n, t)) if n == name && t == tag
        ));
        assert!(matches!(
            parse_key(&crate::manifest_key(&name, &digest)),
            Ok(Key::Manifest(n, d)) if n == name && d == digest
        ));
        for bad in [
            "blobs/sha256/zz",
            "other/x",
            "repositories/team/app",
            "repositories/A/_tags/v1",
            "repositories/team/app/_manifests/sha256/zz",
        ] {
            assert!(
                matches!(parse_key(bad), Err(BackendError::InvalidKey { .. })),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn slice_cuts_ranges_across_chunks() {
        let chunks = ["abc", "defg", "h"].map(|s| Ok(Bytes::from_static(s.as_bytes())));
        let stream: ByteStream = futures::stream::iter(chunks).boxed();
        let cut: Vec<Bytes> = slice(stream, 2..6).try_collect().await.expect("stream");
        assert_eq!(cut.concat(), b"cdef");
    }

    #[test]
    fn config_reads_human_durations_and_hides_the_password() {
        let config: RegistryConfig = serde_json::from_str(
            r#"{"url":"http://127.0.0.1:5000","username":"u","password":"secret","timeout":"5s"}"#,
        )
        .expect("config");
        assert_eq!(config.timeout, Duration::from_secs(5));
        assert_eq!(config.manifest_wait, Duration::from_secs(60));
        assert!(!format!("{config:?}").contains("secret"));
        assert!(serde_json::from_str::<RegistryConfig>(r#"{"url":"x","pasword":"p"}"#).is_err());
    }

    #[test]
    fn bad_urls_and_half_credentials_are_rejected() {
        let config = |json: &str| serde_json::from_str::<RegistryConfig>(json).expect("config");
        assert!(RegistryBackend::new(&config(r#"{"url":"127.0.0.1:5000"}"#)).is_err());
        assert!(
            RegistryBackend::new(&config(r#"{"url":"http://127.0.0.1:5000","username":"u"}"#))
                .is_err()
        );
        let missing_env =
            r#"{"url":"http://h:1","username":"u","password_env":"SHOAL_TEST_NO_SUCH_VAR"}"#;
        let err = RegistryBackend::new(&config(missing_env)).expect_err("no such variable");
        assert!(err.to_string().contains("SHOAL_TEST_NO_SUCH_VAR"), "{err}");
    }

    #[tokio::test]
    async fn blobs_without_a_repository_are_absent() {
        let config = RegistryConfig {
            // Nothing listens there: answering must not need a request.
            url: "http://127.0.0.1:9".to_owned(),
            ..RegistryConfig::default()
        };
        let backend = RegistryBackend::new(&config).expect("backend");
        let key = crate::blob_key(&Digest::of(b"x"));
        assert_eq!(backend.stat(&key).await.expect("stat"), None);
        assert!(backend.get(&key, None).await.expect("get").is_none());
        let empty: ByteStream = futures::stream::empty().boxed();
        assert!(matches!(
            backend.put(&key, empty, None).await,
            Err(BackendError::Unsupported { .. })
        ));
    }
}
