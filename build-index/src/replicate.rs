//! Cross-cluster replication: a stored tag whose repository matches a rule becomes one job per
//! remote, kept durably in the queue directory before the PUT is answered; a background worker
//! copies each job's image to the remote proxy over Registry V2 (blobs, then manifests by digest,
//! then the tag) and retries failures with exponential backoff.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use regex::Regex;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use shoal_core::{Descriptor, Digest, Manifest, Name, Tag};
use shoal_service::CancellationToken;
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::{ReplicationConfig, whole_name_regex};
use crate::error::Error;
use crate::metrics::ReplicationMetrics;
use crate::verify::Origins;

/// Indexes may nest; the build-index refuses deeper trees when tagging, so none is replicated.
const MAX_INDEX_DEPTH: usize = 4;
/// How much of a remote's error body is quoted in a failure message.
const MAX_ERROR_TEXT: usize = 512;

/// One tag to copy to one remote. Kept as text on disk; parsed again when run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Job {
    remote: String,
    repo: String,
    tag: String,
    digest: String,
}

/// Copies tags to remote clusters by rule.
pub struct Replicator {
    rules: Vec<(Regex, Vec<String>)>,
    queue: Queue,
    origins: Arc<Origins>,
    http: reqwest::Client,
    metrics: ReplicationMetrics,
    wake: Notify,
    retry_initial: Duration,
    retry_max: Duration,
}

impl Replicator {
    pub fn new(
        config: &ReplicationConfig,
        origins: Arc<Origins>,
        http: reqwest::Client,
        metrics: ReplicationMetrics,
    ) -> Result<Self, Error> {
        let rules = config
            .rules
            .iter()
            .map(|rule| {
                // Checked by `validate`; a failure here still names what it could not compile.
                let regex = whole_name_regex(&rule.repository).map_err(|e| Error::Remote {
                    remote: rule.remotes.join(", "),
                    step: format!("compiling rule `{}`", rule.repository),
                    reason: e.to_string(),
                })?;
                Ok((regex, rule.remotes.clone()))
            })
            .collect::<Result<_, Error>>()?;
        let queue = Queue::open(&config.queue_dir)?;
        Ok(Self {
            rules,
            queue,
            origins,
            http,
            metrics,
            wake: Notify::new(),
            retry_initial: config.retry_initial,
            retry_max: config.retry_max,
        })
    }

    /// Records a job for every remote whose rule matches `name`, durably, and wakes the worker.
    /// A newer digest for the same (remote, repository, tag) replaces a pending older one.
    pub async fn enqueue(&self, name: &Name, tag: &Tag, digest: &Digest) -> Result<(), Error> {
        let mut queued = false;
        for (regex, remotes) in &self.rules {
            if !regex.is_match(name.as_str()) {
                continue;
            }
            for remote in remotes {
                let job = Job {
                    remote: remote.trim_end_matches('/').to_owned(),
                    repo: name.to_string(),
                    tag: tag.to_string(),
                    digest: digest.to_string(),
                };
                self.queue.write(&job).await?;
                queued = true;
            }
        }
        if queued {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Runs queued jobs (those left by an earlier run first) until `shutdown`; the job in
    /// progress then finishes before this returns.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        // Per queue file: the job that failed, how often, and when to try it again.
        let mut backoff: HashMap<String, (Job, u32, Instant)> = HashMap::new();
        loop {
            let jobs = match self.queue.list().await {
                Ok(jobs) => jobs,
                Err(error) => {
                    warn!(%error, "cannot read the replication queue");
                    Vec::new()
                }
            };
            self.metrics.pending.set(jobs.len() as i64);
            backoff.retain(|file, _| jobs.iter().any(|(f, _)| f == file));
            let mut next_try: Option<Instant> = None;
            for (file, job) in jobs {
                let failures = match backoff.get(&file) {
                    // A changed digest is a new job: it starts without backoff.
                    Some((failed, failures, at)) if *failed == job => {
                        if *at > Instant::now() {
                            next_try = Some(next_try.map_or(*at, |t| t.min(*at)));
                            continue;
                        }
                        *failures
                    }
                    _ => 0,
                };
                if shutdown.is_cancelled() {
                    return;
                }
                // Not raced against shutdown: the job in progress may finish within the
                // component's drain deadline; cut off there, it stays queued and is redone
                // (every step is idempotent).
                let result = self.copy(&job).await;
                match result {
                    Ok(()) => {
                        backoff.remove(&file);
                        self.metrics.replicated.inc();
                        // The next round recounts; until then this job is no longer pending.
                        self.metrics.pending.dec();
                        info!(remote = %job.remote, repo = %job.repo, tag = %job.tag, digest = %job.digest, "tag replicated");
                        if let Err(error) = self.queue.complete(&file, &job).await {
                            warn!(%error, "cannot remove a finished replication job");
                        }
                    }
                    Err(error) => {
                        self.metrics.failures.inc();
                        let delay = self
                            .retry_initial
                            .saturating_mul(2u32.saturating_pow(failures.min(30)))
                            .min(self.retry_max);
                        warn!(remote = %job.remote, repo = %job.repo, tag = %job.tag, %error, retry_in = ?delay, "replication failed");
                        let at = Instant::now() + delay;
                        next_try = Some(next_try.map_or(at, |t| t.min(at)));
                        backoff.insert(file, (job, failures + 1, at));
                    }
                }
            }
            let pause = async {
                match next_try {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = pause => {}
            }
        }
    }

    /// Copies the job's manifest tree and then the tag to its remote.
    async fn copy(&self, job: &Job) -> Result<(), Error> {
        let name = Name::parse(&job.repo)?;
        let tag = Tag::parse(&job.tag)?;
        let digest = Digest::parse(&job.digest).map_err(|e| Error::Digest(e.to_string()))?;
        let remote = Remote {
            http: &self.http,
            base: &job.remote,
            repo: &name,
        };
        let (bytes, manifest) = self.copy_manifest(&name, digest, None, &remote, 0).await?;
        remote
            .put_manifest(tag.as_str(), manifest.media_type().as_str(), bytes)
            .await
    }

    /// Copies a manifest's blobs and children, then the manifest by digest; returns it so the
    /// caller can tag the root.
    fn copy_manifest<'a>(
        &'a self,
        name: &'a Name,
        digest: Digest,
        descriptor: Option<&'a Descriptor>,
        remote: &'a Remote<'a>,
        depth: usize,
    ) -> BoxFuture<'a, Result<(bytes::Bytes, Manifest), Error>> {
        Box::pin(async move {
            let (bytes, manifest) = self
                .origins
                .fetch_manifest(name, digest, descriptor)
                .await?
                .ok_or(Error::ManifestUnknown(digest))?;
            if !manifest.children().is_empty() && depth == MAX_INDEX_DEPTH {
                return Err(Error::ManifestInvalid {
                    digest,
                    reason: format!("indexes nest deeper than {MAX_INDEX_DEPTH} levels"),
                });
            }
            for child in manifest.children() {
                self.copy_manifest(name, child.digest, Some(child), remote, depth + 1)
                    .await?;
            }
            for blob in manifest.blobs() {
                self.copy_blob(name, digest, blob, remote).await?;
            }
            remote
                .put_manifest(
                    &digest.to_string(),
                    manifest.media_type().as_str(),
                    bytes.clone(),
                )
                .await?;
            Ok((bytes, manifest))
        })
    }

    /// Streams one blob from the local origins to the remote unless the remote has it.
    async fn copy_blob(
        &self,
        name: &Name,
        manifest: Digest,
        blob: &Descriptor,
        remote: &Remote<'_>,
    ) -> Result<(), Error> {
        if remote.has_blob(&blob.digest).await? {
            return Ok(());
        }
        let download = self
            .origins
            .open_blob(&self.http, name, blob.digest)
            .await?
            .ok_or(Error::BlobUnknown {
                manifest,
                blob: blob.digest,
            })?;
        remote.push_blob(&blob.digest, blob.size, download).await
    }
}

/// A remote cluster's proxy, for one repository.
struct Remote<'a> {
    http: &'a reqwest::Client,
    base: &'a str,
    repo: &'a Name,
}

impl Remote<'_> {
    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repo)
    }

    fn failed(&self, step: String, reason: impl ToString) -> Error {
        Error::Remote {
            remote: self.base.to_owned(),
            step,
            reason: reason.to_string(),
        }
    }

    /// Turns anything but `expected` into an error quoting the remote's answer.
    async fn expect(
        &self,
        step: String,
        response: Result<reqwest::Response, reqwest::Error>,
        expected: StatusCode,
    ) -> Result<reqwest::Response, Error> {
        let response = response.map_err(|e| self.failed(step.clone(), full_error(&e)))?;
        if response.status() == expected {
            return Ok(response);
        }
        let status = response.status();
        let mut text = response.text().await.unwrap_or_default();
        text.truncate(text.floor_char_boundary(MAX_ERROR_TEXT));
        Err(self.failed(step, format!("answered {status}: {text}")))
    }

    async fn has_blob(&self, digest: &Digest) -> Result<bool, Error> {
        let url = self.url(&format!("blobs/{digest}"));
        let step = format!("HEAD {url}");
        let response = self
            .http
            .head(&url)
            .send()
            .await
            .map_err(|e| self.failed(step.clone(), full_error(&e)))?;
        match response.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            status => Err(self.failed(step, format!("answered {status}"))),
        }
    }

    /// One upload session: POST to open it, then a PUT `?digest=` carrying the whole blob,
    /// streamed from the origin's response.
    async fn push_blob(
        &self,
        digest: &Digest,
        size: u64,
        download: reqwest::Response,
    ) -> Result<(), Error> {
        let start = self.url("blobs/uploads/");
        let response = self
            .expect(
                format!("POST {start}"),
                self.http
                    .post(&start)
                    .header(CONTENT_LENGTH, 0)
                    .send()
                    .await,
                StatusCode::ACCEPTED,
            )
            .await?;
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.failed(format!("POST {start}"), "no Location header"))?;
        let mut commit = Url::parse(&start)
            .and_then(|base| base.join(location))
            .map_err(|e| self.failed(format!("POST {start}"), format!("bad Location: {e}")))?;
        commit
            .query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let body = reqwest::Body::wrap_stream(download.bytes_stream());
        let request = self
            .http
            .put(commit.clone())
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, size)
            .body(body);
        self.expect(
            format!("PUT {commit}"),
            request.send().await,
            StatusCode::CREATED,
        )
        .await?;
        Ok(())
    }

    async fn put_manifest(
        &self,
        reference: &str,
        media_type: &str,
        bytes: bytes::Bytes,
    ) -> Result<(), Error> {
        let url = self.url(&format!("manifests/{reference}"));
        let request = self
            .http
            .put(&url)
            .header(CONTENT_TYPE, media_type)
            .body(bytes);
        self.expect(
            format!("PUT {url}"),
            request.send().await,
            StatusCode::CREATED,
        )
        .await?;
        Ok(())
    }
}

/// A request error with its causes ("connection refused" sits in a source).
fn full_error(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The durable job queue: `<dir>/<hash of remote, repository, tag>.json`, each written to a
/// temporary file, synced and renamed into place, so a crash leaves the old job or the new one.
struct Queue {
    dir: PathBuf,
    /// Serialises writes with the removal of finished jobs, so a job replaced while it ran is
    /// never removed in place of its replacement.
    lock: Mutex<()>,
}

const JOB_SUFFIX: &str = ".json";
const TEMP_SUFFIX: &str = ".tmp";

impl Queue {
    fn open(dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Queue {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            lock: Mutex::new(()),
        })
    }

    fn file_name(job: &Job) -> String {
        let key = format!("{}\n{}\n{}", job.remote, job.repo, job.tag);
        format!("{}{JOB_SUFFIX}", Digest::of(key.as_bytes()).hex())
    }

    async fn write(&self, job: &Job) -> Result<(), Error> {
        let _writing = self.lock.lock().await;
        let path = self.dir.join(Self::file_name(job));
        let temp = path.with_extension(TEMP_SUFFIX.trim_start_matches('.'));
        let bytes = serde_json::to_vec(job).expect("a job serialises");
        let dir = self.dir.clone();
        let target = path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&temp, &target)?;
            // The rename is durable only once the directory entry is.
            std::fs::File::open(&dir)?.sync_all()
        })
        .await
        .expect("the queue write does not panic")
        .map_err(|source| Error::Queue { path, source })
    }

    /// Every pending job with its file name; unreadable files are logged and skipped.
    async fn list(&self) -> Result<Vec<(String, Job)>, Error> {
        let queue_error = |source| Error::Queue {
            path: self.dir.clone(),
            source,
        };
        let mut entries = tokio::fs::read_dir(&self.dir).await.map_err(queue_error)?;
        let mut jobs = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(queue_error)? {
            let file = entry.file_name().to_string_lossy().into_owned();
            if !file.ends_with(JOB_SUFFIX) {
                continue;
            }
            match tokio::fs::read(entry.path())
                .await
                .map(|bytes| serde_json::from_slice::<Job>(&bytes).map_err(std::io::Error::other))
            {
                Ok(Ok(job)) => jobs.push((file, job)),
                Ok(Err(error)) | Err(error) => {
                    warn!(path = %entry.path().display(), %error, "skipping an unreadable replication job");
                }
            }
        }
        jobs.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(jobs)
    }

    /// Removes a finished job unless a newer digest replaced it meanwhile.
    async fn complete(&self, file: &str, job: &Job) -> Result<(), Error> {
        let _writing = self.lock.lock().await;
        let path = self.dir.join(file);
        let current = match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice::<Job>(&bytes).ok(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(Error::Queue { path, source }),
        };
        if current.as_ref() != Some(job) {
            return Ok(());
        }
        tokio::fs::remove_file(&path)
            .await
            .map_err(|source| Error::Queue { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(digest: &str) -> Job {
        Job {
            remote: "http://b:5000".into(),
            repo: "repl/app".into(),
            tag: "v1".into(),
            digest: digest.into(),
        }
    }

    #[tokio::test]
    async fn a_newer_digest_replaces_the_pending_job_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path()).unwrap();
        queue.write(&job("sha256:old")).await.unwrap();
        queue.write(&job("sha256:new")).await.unwrap();
        let jobs = Queue::open(dir.path()).unwrap().list().await.unwrap();
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].1, job("sha256:new"));
    }

    #[tokio::test]
    async fn finishing_an_old_job_keeps_its_replacement() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::open(dir.path()).unwrap();
        queue.write(&job("sha256:old")).await.unwrap();
        let (file, old) = queue.list().await.unwrap().remove(0);
        queue.write(&job("sha256:new")).await.unwrap();
        queue.complete(&file, &old).await.unwrap();
        assert_eq!(queue.list().await.unwrap().len(), 1);
        let (file, new) = queue.list().await.unwrap().remove(0);
        queue.complete(&file, &new).await.unwrap();
        assert!(queue.list().await.unwrap().is_empty());
    }
}
