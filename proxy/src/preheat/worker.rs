//! Running one preheat job: resolve the tag, read the manifest (and an index's child manifests)
//! through the owning origins, then ask every owner of every referenced blob for its metainfo.
//! An origin lacking a blob pulls it in (from another owner, else the backend) and computes the
//! metainfo before answering, so once a job succeeds every owner holds every blob. With
//! `preheat.agents`, the chosen agents then fetch the image into their caches (from the origins
//! that now hold it, and from each other).

use std::collections::{BTreeSet, HashSet};

use futures::StreamExt;
use shoal_api::ApiError;
use shoal_core::{
    Digest, MAX_MANIFEST_SIZE, Manifest, ManifestError, ManifestWalk, Name, TooManyManifests,
};
use shoal_jobs::Failure;

use crate::config::PreheatConfig;
use crate::metrics::ProxyMetrics;
use crate::preheat::agents::Agents;
use crate::preheat::jobs::{AgentsProgress, ImageRef, Job, State};
use crate::upstream::Upstreams;

/// An index of indexes is legal but rare; this bounds the walk over a malicious one.
const MAX_MANIFESTS: usize = 1024;

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum PreheatError {
    #[error("tag {tag} of {name} is unknown to the build-index")]
    TagUnknown { name: Name, tag: String },
    #[error("manifest {digest} is not readable through the origins (yet)")]
    ManifestMissing { digest: Digest },
    #[error("{digest} is not a manifest: {source}")]
    NotAManifest {
        digest: Digest,
        #[source]
        source: ManifestError,
    },
    #[error(transparent)]
    TooManyManifests(#[from] TooManyManifests),
    #[error("origin {origin} cannot find blob {digest}")]
    BlobMissing { digest: Digest, origin: String },
    #[error("{what}: {source}")]
    Upstream {
        what: String,
        #[source]
        source: ApiError,
    },
    #[error("no agent passes its health checks")]
    NoHealthyAgents,
    #[error("{failed} of {selected} agents did not preheat the image: {last}")]
    Agents {
        failed: usize,
        selected: usize,
        last: String,
    },
}

impl PreheatError {
    /// Errors that another attempt cannot fix.
    fn is_permanent(&self) -> bool {
        matches!(
            self,
            PreheatError::NotAManifest { .. } | PreheatError::TooManyManifests(_)
        )
    }
}

/// What an attempt needs.
#[derive(Debug, Clone)]
pub struct Context {
    pub upstreams: std::sync::Arc<Upstreams>,
    /// `None` when agent preheat is off.
    pub agents: Option<Agents>,
    pub metrics: ProxyMetrics,
    pub config: PreheatConfig,
}

/// One attempt of `job`: a failure that another attempt cannot fix is permanent, any other is
/// retried by the queue until `preheat.attempts` are used up. A job resumed after a restart
/// counts on from its earlier attempts, with a fresh budget.
pub async fn attempt(context: &Context, job: &Job) -> Result<(), Failure> {
    job.update(|p| {
        p.state = State::Running;
        p.attempts += 1;
    });
    // Blobs already preheated are not asked for again in later attempts.
    let mut done = job
        .preheated
        .lock()
        .expect("preheated lock poisoned")
        .clone();
    let result = attempt_once(context, job, &mut done).await;
    let blobs = done.len();
    *job.preheated.lock().expect("preheated lock poisoned") = done;
    match result {
        Ok(()) => {
            job.update(|p| {
                p.state = State::Succeeded;
                p.last_error = None;
            });
            context.metrics.preheat_jobs_succeeded.inc();
            tracing::info!(job = %job.id, image = %job.image, blobs, "preheat succeeded");
            Ok(())
        }
        Err(error) => {
            job.update(|p| p.last_error = Some(error.to_string()));
            match error.is_permanent() {
                true => Err(Failure::permanent(error)),
                false => Err(Failure::retry(error)),
            }
        }
    }
}

/// Marks `job` failed once the queue gave up on it.
pub fn gave_up(context: &Context, job: &Job, failure: &Failure) {
    job.update(|p| p.state = State::Failed);
    context.metrics.preheat_jobs_failed.inc();
    let attempts = job.snapshot().attempts;
    tracing::warn!(job = %job.id, image = %job.image, attempts, error = %failure, "preheat failed");
}

async fn attempt_once(
    context: &Context,
    job: &Job,
    done: &mut HashSet<Digest>,
) -> Result<(), PreheatError> {
    let name = &job.image.name;
    let top = match &job.image.reference {
        ImageRef::Digest(digest) => *digest,
        ImageRef::Tag(tag) => context
            .upstreams
            .build_index()
            .get_tag(name, tag)
            .await
            .map_err(|source| PreheatError::Upstream {
                what: format!("resolving {name}:{tag}"),
                source,
            })?
            .ok_or_else(|| PreheatError::TagUnknown {
                name: name.clone(),
                tag: tag.to_string(),
            })?,
    };
    job.update(|p| p.manifest = Some(top.to_string()));
    let digests = referenced(context, name, top).await?;
    job.update(|p| {
        p.blobs_total = digests.len();
        p.blobs_done = digests.iter().filter(|d| done.contains(d)).count();
    });
    let pending: Vec<Digest> = digests.into_iter().filter(|d| !done.contains(d)).collect();
    let mut results = futures::stream::iter(pending)
        .map(|digest| async move { (digest, on_every_owner(context, name, digest).await) })
        .buffer_unordered(context.config.blob_concurrency);
    let mut failure = None;
    while let Some((digest, result)) = results.next().await {
        match result {
            Ok(()) => {
                done.insert(digest);
                context.metrics.preheat_blobs.inc();
                job.update_in_memory(|p| p.blobs_done += 1);
            }
            // The other blobs go on; the next attempt retries only the failed ones.
            Err(error) => {
                tracing::debug!(job = %job.id, %digest, %error, "preheating a blob failed");
                failure.get_or_insert(error);
            }
        }
    }
    if let Some(error) = failure {
        return Err(error);
    }
    match &context.agents {
        Some(agents) => on_agents(context, agents, job, top).await,
        None => Ok(()),
    }
}

/// Has the job's agents fetch the image; those done in an earlier attempt are not asked again.
/// The agents are chosen on the first attempt that gets here and kept for the job's lifetime.
async fn on_agents(
    context: &Context,
    agents: &Agents,
    job: &Job,
    top: Digest,
) -> Result<(), PreheatError> {
    let progress = match job.snapshot().agents {
        Some(progress) => progress,
        None => {
            let selected = agents.select(&top);
            if selected.is_empty() {
                return Err(PreheatError::NoHealthyAgents);
            }
            tracing::info!(job = %job.id, image = %job.image, ?selected, "preheating on agents");
            let progress = AgentsProgress {
                selected,
                ..AgentsProgress::default()
            };
            job.update(|p| p.agents = Some(progress.clone()));
            progress
        }
    };
    let pending: Vec<String> = progress
        .selected
        .iter()
        .filter(|agent| !progress.done.contains(agent))
        .cloned()
        .collect();
    let name = &job.image.name;
    let mut results = futures::stream::iter(pending)
        .map(|agent| async move {
            let result = agents.preheat(&agent, name, &top).await;
            (agent, result)
        })
        .buffer_unordered(agents.concurrency());
    while let Some((agent, result)) = results.next().await {
        let error = match result {
            Ok(()) => {
                context.metrics.preheat_agents_succeeded.inc();
                None
            }
            Err(error) => {
                context.metrics.preheat_agents_failed.inc();
                tracing::info!(job = %job.id, %agent, %error, "agent preheat failed");
                Some(error.to_string())
            }
        };
        job.update(|p| {
            let agents = p.agents.get_or_insert_with(AgentsProgress::default);
            agents.failed.retain(|a| *a != agent);
            match error {
                None => agents.done.push(agent),
                Some(error) => {
                    agents.failed.push(agent);
                    agents.last_error = Some(error);
                }
            }
        });
    }
    let progress = job.snapshot().agents.unwrap_or_default();
    if progress.failed.is_empty() {
        return Ok(());
    }
    Err(PreheatError::Agents {
        failed: progress.failed.len(),
        selected: progress.selected.len(),
        last: progress.last_error.unwrap_or_default(),
    })
}

/// Every manifest reachable from `top` and every blob they reference.
async fn referenced(
    context: &Context,
    name: &Name,
    top: Digest,
) -> Result<BTreeSet<Digest>, PreheatError> {
    let mut all = BTreeSet::new();
    let mut walk = ManifestWalk::new(top, MAX_MANIFESTS);
    while let Some(digest) = walk.next_manifest() {
        let manifest = fetch_manifest(context, name, digest).await?;
        all.extend(manifest.blobs().map(|d| d.digest));
        walk.queue(manifest.children().iter().map(|d| d.digest))?;
    }
    all.extend(walk.manifests());
    Ok(all)
}

/// Reads a manifest from its owners, which pull it through from the backend on a miss.
async fn fetch_manifest(
    context: &Context,
    name: &Name,
    digest: Digest,
) -> Result<Manifest, PreheatError> {
    let bytes = context
        .upstreams
        .read_blob(&digest, |origin| async move {
            origin
                .get_small_blob(&digest, Some(name), MAX_MANIFEST_SIZE)
                .await
        })
        .await
        .map_err(|source| PreheatError::Upstream {
            what: format!("reading manifest {digest}"),
            source,
        })?
        .ok_or(PreheatError::ManifestMissing { digest })?;
    Manifest::parse(&bytes, None).map_err(|source| PreheatError::NotAManifest { digest, source })
}

/// Asks each owner of `digest` in turn for its metainfo. In turn rather than at once: the first
/// owner pulls the blob from the backend, the later ones then fill in from it instead of each
/// reading the backend.
async fn on_every_owner(
    context: &Context,
    name: &Name,
    digest: Digest,
) -> Result<(), PreheatError> {
    for origin in context.upstreams.owners(&digest) {
        match origin.metainfo(&digest, Some(name)).await {
            Ok(Some(_)) => {}
            Ok(None) => {
                return Err(PreheatError::BlobMissing {
                    digest,
                    origin: origin.base().to_owned(),
                });
            }
            Err(source) => {
                return Err(PreheatError::Upstream {
                    what: format!("metainfo of {digest} from {}", origin.base()),
                    source,
                });
            }
        }
    }
    Ok(())
}
