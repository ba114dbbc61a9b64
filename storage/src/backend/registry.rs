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
//! | any | delete | `DELETE` where the registry allows it, else [`BackendError::Unsupported`] |

mod auth;

use std::fmt;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode, header};
use serde::{Deserialize, Serialize};
use shoal_core::{Digest, MAX_MANIFEST_SIZE, Manifest, MediaType, Name, Tag};

use self::auth::{Auth, Scope};
use super::http::{take_bytes, total_length};
use super::{Backend, BackendError, REPOSITORIES_PREFIX};
use crate::ByteStream;

const BLOB_PREFIX: &str = "blobs/sha256/";
const TAGS_SEPARATOR: &str = "/_tags/";
/// Page size asked of `tags/list` and `_catalog` (the CNCF registry's default maximum).
const PAGE_SIZE: usize = 1000;
/// A tag object is a digest's text; refuse to buffer anything much larger.
const MAX_TAG_OBJECT: usize = 1024;
/// First and longest pause while a tag put waits for the write-back to bring its manifest and
/// blobs into the registry.
const TAG_RETRY_INITIAL: Duration = Duration::from_millis(200);
const TAG_RETRY_MAX: Duration = Duration::from_secs(5);
/// Error text kept from a registry's answer, enough for its JSON error codes.
const MAX_ERROR_BODY: usize = 2048;

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
            .finish()
    }
}

#[derive(Debug)]
struct Shared {
    /// The URL without a trailing `/`.
    base: String,
    client: Client,
    auth: Auth,
    timeout: Duration,
    manifest_wait: Duration,
}

/// A registry as a backend, optionally bound to one repository. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct RegistryBackend {
    shared: Arc<Shared>,
    repository: Option<Name>,
}

/// What a backend key names.
enum Key {
    Blob(Digest),
    Tag(Name, Tag),
}

fn parse_key(key: &str) -> Result<Key, BackendError> {
    let invalid = |reason| BackendError::InvalidKey {
        key: key.chars().take(200).collect(),
        reason,
    };
    if let Some(hex) = key.strip_prefix(BLOB_PREFIX) {
        return Digest::parse(&format!("sha256:{hex}"))
            .map(Key::Blob)
            .map_err(|_| invalid("not a sha256 blob key"));
    }
    let (repo, tag) = key
        .strip_prefix(REPOSITORIES_PREFIX)
        .and_then(|rest| rest.split_once(TAGS_SEPARATOR))
        .ok_or_else(|| invalid("a registry holds only blob and tag keys"))?;
    let name = Name::parse(repo).map_err(|_| invalid("not a repository name"))?;
    let tag = Tag::parse(tag).map_err(|_| invalid("not a tag"))?;
    Ok(Key::Tag(name, tag))
}

/// A failed request, with the registry's error body (its JSON error codes) when it sent one.
pub(super) async fn failure(
    operation: &'static str,
    url: &str,
    response: Response,
) -> BackendError {
    let status = response.status();
    let mut body = BytesMut::new();
    let mut stream = response.bytes_stream();
    while body.len() < MAX_ERROR_BODY
        && let Some(Ok(chunk)) = stream.next().await
    {
        body.extend_from_slice(&chunk);
    }
    body.truncate(MAX_ERROR_BODY);
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    let reason = if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        format!(
            "the registry refused access (status {status}; check the backend's credentials): {text}"
        )
    } else if text.is_empty() {
        format!("status {status}")
    } else {
        format!("status {status}: {text}")
    };
    BackendError::Remote {
        operation,
        url: url.to_owned(),
        reason,
    }
}

fn remote(operation: &'static str, url: &str, reason: impl fmt::Display) -> BackendError {
    BackendError::Remote {
        operation,
        url: url.to_owned(),
        reason: reason.to_string(),
    }
}

/// Every manifest media type, for `Accept`: without it a registry may refuse or convert.
fn accept_manifests() -> String {
    [
        MediaType::OciManifest,
        MediaType::OciIndex,
        MediaType::DockerManifest,
        MediaType::DockerManifestList,
    ]
    .map(MediaType::as_str)
    .join(", ")
}

fn content_length(response: &Response) -> Option<u64> {
    response
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
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

/// What went wrong with a body while it streamed to the registry.
enum BodyFault {
    Read(io::Error),
    Length(u64),
}

impl RegistryBackend {
    /// Builds the client; makes no request.
    pub fn new(config: &RegistryConfig) -> Result<RegistryBackend, BackendError> {
        let base = config.url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(remote(
                "configure",
                &config.url,
                "the registry URL must start with http:// or https://",
            ));
        }
        let password = match (&config.password, &config.password_env) {
            (Some(_), Some(_)) => {
                return Err(remote(
                    "configure",
                    &base,
                    "set password or password_env, not both",
                ));
            }
            (Some(password), None) => Some(password.clone()),
            (None, Some(var)) => Some(
                std::env::var(var)
                    .map_err(|e| remote("configure", &base, format!("password_env {var}: {e}")))?,
            ),
            (None, None) => None,
        };
        let credentials = match (&config.username, password) {
            (Some(user), Some(password)) => Some((user.clone(), password)),
            (None, None) => None,
            _ => {
                return Err(remote(
                    "configure",
                    &base,
                    "username and a password go together",
                ));
            }
        };
        let client = shoal_service::client::builder()
            .connect_timeout(config.timeout)
            .read_timeout(config.timeout)
            .build()
            .map_err(|e| remote("build HTTP client for", &base, e))?;
        Ok(RegistryBackend {
            shared: Arc::new(Shared {
                base,
                client,
                auth: Auth::new(credentials),
                timeout: config.timeout,
                manifest_wait: config.manifest_wait,
            }),
            repository: None,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{path}", self.shared.base)
    }

    /// Sends a request that can be rebuilt, answering one authentication challenge.
    async fn send(
        &self,
        operation: &'static str,
        scope: &Scope,
        url: &str,
        build: impl Fn(&Client) -> RequestBuilder,
    ) -> Result<Response, BackendError> {
        let shared = &self.shared;
        let mut retried = false;
        loop {
            let request = shared.auth.authorize(build(&shared.client), scope);
            let response = request
                .send()
                .await
                .map_err(|e| remote(operation, url, e))?;
            if response.status() != StatusCode::UNAUTHORIZED || retried {
                return Ok(response);
            }
            if !shared
                .auth
                .challenged(&shared.client, &response, scope, shared.timeout)
                .await?
            {
                return Ok(response);
            }
            retried = true;
        }
    }

    /// The repository a blob request goes to: the scoped one.
    fn repository(&self) -> Option<&str> {
        self.repository.as_ref().map(Name::as_str)
    }

    async fn stat_blob(&self, repo: &str, digest: &Digest) -> Result<Option<u64>, BackendError> {
        let scope = Scope::repository(repo, "pull");
        let url = self.url(&format!("{repo}/blobs/{digest}"));
        let response = self
            .send("HEAD", &scope, &url, |client| client.head(&url))
            .await?;
        match response.status() {
            StatusCode::OK => content_length(&response)
                .map(Some)
                .ok_or_else(|| remote("HEAD", &url, "no valid Content-Length")),
            StatusCode::NOT_FOUND => self.stat_manifest(repo, &digest.to_string()).await,
            _ => Err(failure("HEAD", &url, response).await),
        }
    }

    /// The length of a manifest by tag or digest, and its digest.
    async fn head_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<(u64, Option<String>)>, BackendError> {
        let scope = Scope::repository(repo, "pull");
        let url = self.url(&format!("{repo}/manifests/{reference}"));
        let response = self
            .send("HEAD", &scope, &url, |client| {
                client.head(&url).header(header::ACCEPT, accept_manifests())
            })
            .await?;
        match response.status() {
            StatusCode::OK => {
                let len = content_length(&response)
                    .ok_or_else(|| remote("HEAD", &url, "no valid Content-Length"))?;
                let digest = response
                    .headers()
                    .get("docker-content-digest")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                Ok(Some((len, digest)))
            }
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(failure("HEAD", &url, response).await),
        }
    }

    async fn stat_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<u64>, BackendError> {
        Ok(self
            .head_manifest(repo, reference)
            .await?
            .map(|(len, _)| len))
    }

    /// The digest a tag points at.
    async fn tag_digest(&self, name: &Name, tag: &Tag) -> Result<Option<Digest>, BackendError> {
        let Some((_, digest)) = self.head_manifest(name.as_str(), tag.as_str()).await? else {
            return Ok(None);
        };
        let url = self.url(&format!("{name}/manifests/{tag}"));
        let digest = digest.ok_or_else(|| remote("HEAD", &url, "no Docker-Content-Digest"))?;
        Digest::parse(&digest)
            .map(Some)
            .map_err(|e| remote("HEAD", &url, format!("bad Docker-Content-Digest: {e}")))
    }

    async fn get_blob(
        &self,
        repo: &str,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<Option<ByteStream>, BackendError> {
        let scope = Scope::repository(repo, "pull");
        let url = self.url(&format!("{repo}/blobs/{digest}"));
        let response = self
            .send("GET", &scope, &url, |client| {
                let request = client.get(&url);
                match &range {
                    Some(range) => request.header(
                        header::RANGE,
                        format!("bytes={}-{}", range.start, range.end - 1),
                    ),
                    None => request,
                }
            })
            .await?;
        let key = || format!("{BLOB_PREFIX}{}", digest.hex());
        match (response.status(), &range) {
            (StatusCode::NOT_FOUND, _) => return self.get_manifest(repo, digest, range).await,
            (StatusCode::OK, None) | (StatusCode::PARTIAL_CONTENT, Some(_)) => {}
            (StatusCode::RANGE_NOT_SATISFIABLE, Some(range)) => {
                let len = total_length(&response).unwrap_or_default();
                if range.start == len {
                    return Ok(Some(futures::stream::empty().boxed()));
                }
                return Err(BackendError::RangeNotSatisfiable {
                    key: key(),
                    start: range.start,
                    len,
                });
            }
            // A registry that ignores Range sends everything: cut out the range ourselves.
            (StatusCode::OK, Some(range)) => {
                let body = response.bytes_stream().map_err(io::Error::other).boxed();
                return Ok(Some(slice(body, range.clone())));
            }
            _ => return Err(failure("GET", &url, response).await),
        }
        Ok(Some(
            response.bytes_stream().map_err(io::Error::other).boxed(),
        ))
    }

    /// A manifest by digest, ranged locally (registries do not range manifests).
    async fn get_manifest(
        &self,
        repo: &str,
        digest: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<Option<ByteStream>, BackendError> {
        let scope = Scope::repository(repo, "pull");
        let url = self.url(&format!("{repo}/manifests/{digest}"));
        let response = self
            .send("GET", &scope, &url, |client| {
                client.get(&url).header(header::ACCEPT, accept_manifests())
            })
            .await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(failure("GET", &url, response).await),
        }
        let len = content_length(&response);
        let body = response.bytes_stream().map_err(io::Error::other).boxed();
        let Some(range) = range else {
            return Ok(Some(body));
        };
        if let Some(len) = len
            && range.start > len
        {
            return Err(BackendError::RangeNotSatisfiable {
                key: format!("{BLOB_PREFIX}{}", digest.hex()),
                start: range.start,
                len,
            });
        }
        Ok(Some(slice(body, range)))
    }

    async fn put_blob(
        &self,
        key: &str,
        repo: &str,
        digest: &Digest,
        body: ByteStream,
        length: Option<u64>,
    ) -> Result<(), BackendError> {
        let scope = Scope::repository(repo, "pull,push");
        let start_url = self.url(&format!("{repo}/blobs/uploads/"));
        // Starting the upload has no body, so it also answers any authentication challenge
        // before the blob's bytes start streaming (a streamed body cannot be sent twice).
        let response = self
            .send("start an upload at", &scope, &start_url, |client| {
                client.post(&start_url).header(header::CONTENT_LENGTH, 0)
            })
            .await?;
        if response.status() != StatusCode::ACCEPTED {
            return Err(failure("start an upload at", &start_url, response).await);
        }
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| remote("start an upload at", &start_url, "no Location"))?;
        let location = self.absolute(location);
        let separator = if location.contains('?') { '&' } else { '?' };
        let put_url = format!("{location}{separator}digest={digest}");

        let fault = Arc::new(Mutex::new(None));
        let counted = checked(body, length, fault.clone());
        let mut request = self
            .shared
            .client
            .put(&put_url)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(counted));
        if let Some(length) = length {
            request = request.header(header::CONTENT_LENGTH, length);
        }
        let result = self.shared.auth.authorize(request, &scope).send().await;
        let fault = fault.lock().unwrap_or_else(PoisonError::into_inner).take();
        let outcome = match (fault, result) {
            (Some(BodyFault::Read(source)), _) => Err(BackendError::Body {
                key: key.to_owned(),
                source,
            }),
            (Some(BodyFault::Length(actual)), _) => Err(BackendError::LengthMismatch {
                key: key.to_owned(),
                expected: length.unwrap_or_default(),
                actual,
            }),
            (None, Err(e)) => Err(remote("upload", &put_url, e)),
            (None, Ok(response)) if response.status() == StatusCode::CREATED => Ok(()),
            (None, Ok(response)) => Err(failure("upload", &put_url, response).await),
        };
        if outcome.is_err() {
            self.cancel_upload(&location, &scope).await;
        }
        outcome
    }

    /// Abandons an upload session; a failure only leaves a session the registry expires.
    async fn cancel_upload(&self, location: &str, scope: &Scope) {
        let result = self
            .send("cancel upload", scope, location, |client| {
                client.delete(location)
            })
            .await;
        if let Err(e) = result {
            tracing::debug!(error = %e, "cancelling a registry upload failed");
        }
    }

    /// A `Location` or `Link` target (absolute, or relative to the registry) as an absolute URL.
    fn absolute(&self, target: &str) -> String {
        reqwest::Url::parse(&self.shared.base)
            .and_then(|base| base.join(target))
            .map_or_else(|_| format!("{}{target}", self.shared.base), String::from)
    }

    /// A manifest's bytes by digest: written back by the origins as a blob, or pushed to the
    /// registry as a manifest. `None` when neither is there (yet).
    async fn manifest_bytes(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<Bytes>, BackendError> {
        let Some(mut stream) = self.get_blob(repo, digest, None).await? else {
            return Ok(None);
        };
        let mut bytes = BytesMut::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| remote("read manifest", &self.url(repo), e))?;
            if bytes.len() + chunk.len() > MAX_MANIFEST_SIZE {
                return Err(remote(
                    "read manifest",
                    &self.url(&format!("{repo}/blobs/{digest}")),
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
        repo: &str,
        reference: &str,
        digest: &Digest,
    ) -> Result<Result<(), String>, BackendError> {
        let Some(bytes) = self.manifest_bytes(repo, digest).await? else {
            return Ok(Err(format!("manifest {digest} is not in the registry")));
        };
        let url = self.url(&format!("{repo}/manifests/{reference}"));
        let manifest = Manifest::parse(&bytes, None)
            .map_err(|e| remote("push manifest", &url, format!("{digest}: {e}")))?;
        for child in manifest.children() {
            let child_ref = child.digest.to_string();
            if self.stat_manifest(repo, &child_ref).await?.is_none() {
                // Boxed: the recursion is at most one level deep (an index of images).
                let pushed = Box::pin(self.push_manifest(repo, &child_ref, &child.digest)).await?;
                if pushed.is_err() {
                    return Ok(pushed);
                }
            }
        }
        let scope = Scope::repository(repo, "pull,push");
        let media_type = manifest.media_type().as_str();
        let response = self
            .send("push manifest", &scope, &url, |client| {
                client
                    .put(&url)
                    .header(header::CONTENT_TYPE, media_type)
                    .body(bytes.clone())
            })
            .await?;
        match response.status() {
            StatusCode::CREATED | StatusCode::OK => Ok(Ok(())),
            StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND => {
                let error = failure("push manifest", &url, response).await;
                let text = error.to_string();
                if is_missing_content(&text) {
                    Ok(Err(text))
                } else {
                    Err(error)
                }
            }
            _ => Err(failure("push manifest", &url, response).await),
        }
    }

    /// Points `tag` at `digest`, waiting up to `manifest_wait` for the write-back to bring the
    /// manifest and everything it references into the registry.
    async fn put_tag(&self, name: &Name, tag: &Tag, digest: &Digest) -> Result<(), BackendError> {
        let deadline = tokio::time::Instant::now() + self.shared.manifest_wait;
        let mut pause = TAG_RETRY_INITIAL;
        loop {
            let reason = match self
                .push_manifest(name.as_str(), tag.as_str(), digest)
                .await?
            {
                Ok(()) => return Ok(()),
                Err(reason) => reason,
            };
            if tokio::time::Instant::now() + pause > deadline {
                return Err(remote(
                    "tag",
                    &self.url(&format!("{name}/manifests/{tag}")),
                    format!(
                        "content still missing after waiting {:?}: {reason}",
                        self.shared.manifest_wait
                    ),
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(TAG_RETRY_MAX);
        }
    }

    /// Every entry of a paginated list (`tags/list` → `tags`, `_catalog` → `repositories`),
    /// following `Link: <…>; rel="next"`. `None` when the repository is unknown.
    async fn paginate(
        &self,
        scope: &Scope,
        first: String,
        field: &str,
    ) -> Result<Option<Vec<String>>, BackendError> {
        let mut entries = Vec::new();
        let mut next = Some(first);
        while let Some(url) = next.take() {
            let response = self
                .send("list", scope, &url, |client| client.get(&url))
                .await?;
            match response.status() {
                StatusCode::OK => {}
                StatusCode::NOT_FOUND => return Ok(None),
                _ => return Err(failure("list", &url, response).await),
            }
            next = response
                .headers()
                .get(header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(next_link)
                .map(|target| self.absolute(&target));
            let page: serde_json::Value =
                response.json().await.map_err(|e| remote("list", &url, e))?;
            if let Some(items) = page.get(field).and_then(|v| v.as_array()) {
                entries.extend(items.iter().filter_map(|v| v.as_str().map(str::to_owned)));
            }
        }
        Ok(Some(entries))
    }

    /// The tag keys of `repo` that start with `prefix`.
    async fn tag_keys(&self, repo: &Name, prefix: &str) -> Result<Vec<String>, BackendError> {
        let scope = Scope::repository(repo.as_str(), "pull");
        let first = self.url(&format!("{repo}/tags/list?n={PAGE_SIZE}"));
        let tags = self
            .paginate(&scope, first, "tags")
            .await?
            .unwrap_or_default();
        Ok(tags
            .into_iter()
            .map(|tag| format!("{REPOSITORIES_PREFIX}{repo}{TAGS_SEPARATOR}{tag}"))
            .filter(|key| key.starts_with(prefix))
            .collect())
    }
}

/// The target of `rel="next"` in a `Link` header.
fn next_link(value: &str) -> Option<String> {
    value.split(',').find_map(|link| {
        let (target, params) = link.split_once(';')?;
        params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"))
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
    })
}

/// Passes `body` through, recording a read error or a length other than `expected` in `fault`
/// and failing the stream so the registry never commits it.
fn checked(
    body: ByteStream,
    expected: Option<u64>,
    fault: Arc<Mutex<Option<BodyFault>>>,
) -> impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static {
    let record = move |what: BodyFault| {
        *fault.lock().unwrap_or_else(PoisonError::into_inner) = Some(what);
    };
    futures::stream::unfold(
        (body, 0u64, Some(record)),
        move |(mut body, seen, record)| async move {
            let record = record?;
            match body.next().await {
                Some(Ok(chunk)) => {
                    let seen = seen + chunk.len() as u64;
                    if expected.is_some_and(|expected| seen > expected) {
                        record(BodyFault::Length(seen));
                        return Some((
                            Err(io::Error::other("body longer than promised")),
                            (body, seen, None),
                        ));
                    }
                    Some((Ok(chunk), (body, seen, Some(record))))
                }
                Some(Err(e)) => {
                    let message = e.to_string();
                    record(BodyFault::Read(e));
                    Some((Err(io::Error::other(message)), (body, seen, None)))
                }
                None if expected.is_some_and(|expected| seen != expected) => {
                    record(BodyFault::Length(seen));
                    Some((
                        Err(io::Error::other("body shorter than promised")),
                        (body, seen, None),
                    ))
                }
                None => None,
            }
        },
    )
}

#[async_trait]
impl Backend for RegistryBackend {
    async fn stat(&self, key: &str) -> Result<Option<u64>, BackendError> {
        match parse_key(key)? {
            Key::Blob(digest) => match self.repository() {
                Some(repo) => self.stat_blob(repo, &digest).await,
                None => Ok(None),
            },
            Key::Tag(name, tag) => Ok(self
                .tag_digest(&name, &tag)
                .await?
                .map(|digest| digest.to_string().len() as u64)),
        }
    }

    async fn get(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<ByteStream>, BackendError> {
        let parsed = parse_key(key)?;
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
        match parsed {
            Key::Blob(digest) => match self.repository() {
                Some(repo) => self.get_blob(repo, &digest, range).await,
                None => Ok(None),
            },
            Key::Tag(name, tag) => {
                let Some(digest) = self.tag_digest(&name, &tag).await? else {
                    return Ok(None);
                };
                let text = Bytes::from(digest.to_string());
                let len = text.len() as u64;
                let whole: ByteStream = futures::stream::once(async move { Ok(text) }).boxed();
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
        }
    }

    async fn put(
        &self,
        key: &str,
        mut body: ByteStream,
        length: Option<u64>,
    ) -> Result<(), BackendError> {
        match parse_key(key)? {
            Key::Blob(digest) => {
                let repo = self.repository().ok_or(BackendError::Unsupported {
                    backend: "registry",
                    operation: "storing a blob without a repository",
                })?;
                self.put_blob(key, repo, &digest, body, length).await
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
                self.put_tag(&name, &tag, &digest).await
            }
        }
    }

    async fn delete(&self, key: &str) -> Result<bool, BackendError> {
        let (repo, reference) = match parse_key(key)? {
            Key::Blob(digest) => match &self.repository {
                Some(repo) => (repo.clone(), digest.to_string()),
                None => return Ok(false),
            },
            Key::Tag(name, tag) => (name, tag.as_str().to_owned()),
        };
        let kind = if key.starts_with(BLOB_PREFIX) {
            "blobs"
        } else {
            "manifests"
        };
        let scope = Scope::repository(repo.as_str(), "delete");
        let url = self.url(&format!("{repo}/{kind}/{reference}"));
        let response = self
            .send("DELETE", &scope, &url, |client| {
                client.request(Method::DELETE, &url)
            })
            .await?;
        match response.status() {
            StatusCode::ACCEPTED | StatusCode::OK | StatusCode::NO_CONTENT => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            // Deletes disabled, or (distribution 2.x) tags that can only go with their manifest.
            StatusCode::METHOD_NOT_ALLOWED | StatusCode::BAD_REQUEST => {
                Err(BackendError::Unsupported {
                    backend: "registry",
                    operation: if kind == "blobs" {
                        "deleting a blob (deletes are disabled on this registry)"
                    } else {
                        "deleting a tag (this registry deletes manifests only by digest)"
                    },
                })
            }
            _ => Err(failure("DELETE", &url, response).await),
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
            let first = self.url(&format!("_catalog?n={PAGE_SIZE}"));
            let repos = self
                .paginate(&Scope::catalog(), first, "repositories")
                .await?
                .unwrap_or_default();
            for repo in repos {
                // Only repositories whose tag keys can start with the prefix.
                if !format!("{repo}{TAGS_SEPARATOR}").starts_with(rest) {
                    continue;
                }
                if let Ok(name) = Name::parse(&repo) {
                    keys.extend(self.tag_keys(&name, prefix).await?);
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn scoped(&self, namespace: Option<&Name>) -> Option<Arc<dyn Backend>> {
        Some(Arc::new(RegistryBackend {
            shared: Arc::clone(&self.shared),
            repository: namespace.cloned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for bad in [
            "blobs/sha256/zz",
            "other/x",
            "repositories/team/app",
            "repositories/A/_tags/v1",
        ] {
            assert!(
                matches!(parse_key(bad), Err(BackendError::InvalidKey { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn next_links_are_found_among_others() {
        assert_eq!(
            next_link(r#"</v2/_catalog?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/_catalog?last=b&n=2")
        );
        assert_eq!(
            next_link(r#"<https://x/prev>; rel="prev", <https://x/next>; rel="next""#).as_deref(),
            Some("https://x/next")
        );
        assert_eq!(next_link(r#"<https://x/prev>; rel="prev""#), None);
        let config = RegistryConfig {
            url: "http://127.0.0.1:9/".to_owned(),
            ..RegistryConfig::default()
        };
        let backend = RegistryBackend::new(&config).expect("backend");
        assert_eq!(
            backend.absolute("/v2/_catalog?last=b&n=2"),
            "http://127.0.0.1:9/v2/_catalog?last=b&n=2"
        );
        assert_eq!(backend.absolute("https://other/up/1"), "https://other/up/1");
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
