//! Cross-cluster replication: a stored tag whose repository matches a rule becomes one job per
//! remote on a `shoal_jobs` queue, kept durably in the queue directory before the PUT is
//! answered; the queue copies each job's image to the remote proxy over Registry V2 (blobs, then
//! manifests by digest, then the manifests whose `subject` is the tagged one, then the tag) and
//! retries failures with the shared backoff. A referrer pushed after the job ran follows with the
//! tag's next job.

use std::sync::Arc;

use futures::future::BoxFuture;
use regex::Regex;
use serde::{Deserialize, Serialize};
use shoal_core::{Descriptor, Digest, Manifest, Name, Reference, Tag};
use shoal_jobs::{Failure, Job, Queue, RetryPolicy, Stats};
use shoal_registry_client::RegistryClient;
use shoal_service::CancellationToken;
use tracing::info;

use crate::config::{ReplicationConfig, whole_name_regex};
use crate::error::Error;
use crate::records;
use crate::tags::TagStore;
use crate::verify::Origins;

/// Indexes may nest; the build-index refuses deeper trees when tagging, so none is replicated.
const MAX_INDEX_DEPTH: usize = 4;
/// Copies in flight at once: one, so a remote cluster's proxy sees one image stream from this
/// build-index at a time (a failing copy waits out its backoff without holding up the others).
const MAX_CONCURRENT_COPIES: usize = 1;

/// One tag to copy to one remote: the marker `<sha256 of remote, repository and tag>.json`, so a
/// newer digest for the same tag replaces a pending older one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Replication {
    remote: String,
    repo: Name,
    tag: Tag,
    digest: Digest,
}

/// Copying a tag's image, and its referrers, from the local origins to a remote cluster's proxy.
struct TagCopy {
    origins: Arc<Origins>,
    /// Where the referrers of the tagged manifest are listed.
    tags: TagStore,
    http: reqwest::Client,
}

impl Job for TagCopy {
    type Payload = Replication;
    const NAME: &'static str = "replication";

    fn key(job: &Replication) -> String {
        let key = format!("{}\n{}\n{}", job.remote, job.repo, job.tag);
        Digest::of(key.as_bytes()).hex()
    }

    /// Every failure is retried: a remote that refuses today may be fixed by its operator.
    async fn run(&self, job: &Replication) -> Result<(), Failure> {
        let (remote, repo, tag, digest) = (&job.remote, &job.repo, &job.tag, &job.digest);
        match self.copy(job).await {
            Ok(()) => {
                info!(%remote, %repo, %tag, %digest, "tag replicated");
                Ok(())
            }
            Err(error) => Err(Failure::retry(format!(
                "replicating {repo}:{tag} to {remote}: {error}"
            ))),
        }
    }
}

/// Copies tags to remote clusters by rule.
pub struct Replicator {
    rules: Vec<(Regex, Vec<String>)>,
    queue: Arc<Queue<TagCopy>>,
    copy: Arc<TagCopy>,
}

impl std::fmt::Debug for Replicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicator")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl Replicator {
    /// Compiles the rules and opens the queue, queueing again the jobs an earlier run left.
    pub async fn open(
        config: &ReplicationConfig,
        origins: Arc<Origins>,
        tags: TagStore,
        http: reqwest::Client,
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
        let policy = RetryPolicy {
            min_delay: config.retry_initial,
            max_delay: config.retry_max,
            max_attempts: None,
        };
        let queue = Queue::open(&config.queue_dir, policy, MAX_CONCURRENT_COPIES).await?;
        Ok(Self {
            rules,
            queue: Arc::new(queue),
            copy: Arc::new(TagCopy {
                origins,
                tags,
                http,
            }),
        })
    }

    /// Records a job for every remote whose rule matches `name`, durably. A newer digest for
    /// the same (remote, repository, tag) replaces a pending older one.
    pub async fn enqueue(&self, name: &Name, tag: &Tag, digest: &Digest) -> Result<(), Error> {
        for (regex, remotes) in &self.rules {
            if !regex.is_match(name.as_str()) {
                continue;
            }
            for remote in remotes {
                let job = Replication {
                    remote: remote.trim_end_matches('/').to_owned(),
                    repo: name.clone(),
                    tag: tag.clone(),
                    digest: *digest,
                };
                self.queue.enqueue(job).await?;
            }
        }
        Ok(())
    }

    /// Runs queued jobs (those left by an earlier run included) until `shutdown`; the copy in
    /// progress then finishes before this returns (cut off at the drain deadline, it stays
    /// queued and is redone: every step is idempotent).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        self.queue.clone().run(self.copy.clone(), shutdown).await;
    }

    /// The queue's depth and counters, for metrics.
    pub fn stats(&self) -> Stats {
        self.queue.stats()
    }
}

impl TagCopy {
    /// Copies the job's manifest tree, its referrers and then the tag to its remote.
    async fn copy(&self, job: &Replication) -> Result<(), Error> {
        let remote = Remote {
            client: RegistryClient::new(&job.remote, self.http.clone())
                .map_err(|e| remote_error(&job.remote, "connecting", &e))?,
            base: &job.remote,
            repo: &job.repo,
        };
        let (bytes, manifest) = self
            .copy_manifest(&job.repo, job.digest, None, &remote, 0)
            .await?;
        // Before the tag: whoever pulls it there finds its signatures and SBOMs too.
        for referrer in records::referrers(&self.tags, &job.repo, &job.digest).await? {
            self.copy_manifest(&job.repo, referrer.digest, None, &remote, 0)
                .await?;
        }
        remote
            .put_manifest(
                Reference::Tag(job.tag.clone()),
                manifest.media_type().as_str(),
                bytes,
            )
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
                    Reference::Digest(digest),
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
        let step = || format!("copying blob {}", blob.digest);
        let present = remote.client.head_blob(remote.repo, &blob.digest).await;
        if present
            .map_err(|e| remote_error(remote.base, &step(), &e))?
            .is_some()
        {
            return Ok(());
        }
        let body = self
            .origins
            .open_blob(&self.http, name, blob.digest)
            .await?
            .ok_or(Error::BlobUnknown {
                manifest,
                blob: blob.digest,
            })?;
        // One upload session, filled and committed by one PUT streamed from the origins.
        remote
            .client
            .push_blob(remote.repo, &blob.digest, body, Some(blob.size))
            .await
            .map_err(|e| remote_error(remote.base, &step(), &e))
    }
}

/// A remote cluster's proxy, for one repository.
struct Remote<'a> {
    client: RegistryClient,
    base: &'a str,
    repo: &'a Name,
}

impl Remote<'_> {
    async fn put_manifest(
        &self,
        reference: Reference,
        media_type: &str,
        bytes: bytes::Bytes,
    ) -> Result<(), Error> {
        self.client
            .put_manifest(self.repo, &reference, media_type, bytes)
            .await
            .map_err(|e| remote_error(self.base, &format!("putting manifest {reference}"), &e))?;
        Ok(())
    }
}

fn remote_error(remote: &str, step: &str, error: &shoal_registry_client::Error) -> Error {
    Error::Remote {
        remote: remote.to_owned(),
        step: step.to_owned(),
        reason: full_error(error),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job(digest: &[u8]) -> Replication {
        Replication {
            remote: "http://b:5000".into(),
            repo: Name::parse("repl/app").unwrap(),
            tag: Tag::parse("v1").unwrap(),
            digest: Digest::of(digest),
        }
    }

    /// The name earlier versions gave this job's file: sha256 of "remote\nrepo\ntag".
    const FILE: &str = "f1546645c921f40d560d0ec27acfd05c015019dfc54ea2a742ea352e56221ab1.json";

    #[tokio::test]
    async fn a_newer_digest_replaces_the_job_of_its_remote_and_tag_in_the_file_of_earlier_versions()
    {
        let dir = tempfile::tempdir().unwrap();
        let policy = RetryPolicy::default();
        let queue = Queue::<TagCopy>::open(dir.path(), policy, 1).await.unwrap();
        queue.enqueue(job(b"old")).await.unwrap();
        queue.enqueue(job(b"new")).await.unwrap();
        let on_disk: Replication =
            serde_json::from_slice(&std::fs::read(dir.path().join(FILE)).unwrap()).unwrap();
        assert_eq!(on_disk, job(b"new"));
        let reopened = Queue::<TagCopy>::open(dir.path(), policy, 1).await.unwrap();
        assert_eq!(reopened.payloads(), [job(b"new")]);
    }

    #[tokio::test]
    async fn a_job_file_written_by_an_earlier_version_is_queued_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let digest = Digest::of(b"manifest");
        let old = format!(
            r#"{{"remote":"http://b:5000","repo":"repl/app","tag":"v1","digest":"{digest}"}}"#
        );
        std::fs::write(dir.path().join(FILE), old).unwrap();
        let queue = Queue::<TagCopy>::open(dir.path(), RetryPolicy::default(), 1)
            .await
            .unwrap();
        assert_eq!(queue.payloads(), [job(b"manifest")]);
    }
}
