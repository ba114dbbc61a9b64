//! Preheat: registry push notifications (`POST /registry/notifications`) and the direct API
//! (`POST /preheat`, `GET /preheat/{id}`) queue jobs; a few run at once, so the owning origins
//! hold every blob of a pushed image, with metainfo, before anyone pulls, and then (with
//! `preheat.agents`) a few chosen agents hold it in their caches too.
//!
//! The webhook and `GET /preheat/{id}` require `preheat.secret` when it is set; `POST /preheat`
//! always does (it is off without one), and webhook and API jobs are bounded apart
//! (`preheat.queue`, `preheat.api_queue`), so manual jobs cannot crowd out the webhook's.
//!
//! Requests only validate and enqueue: a registry's notification sender waits on the answer,
//! and a slow answer stalls its queue of events. Jobs wait on a `shoal_jobs` queue whose markers
//! live in `preheat.state_dir/queue` until a job succeeds or fails for good; each job's progress
//! is its own file in `preheat.state_dir`, kept as history afterwards. A restarted proxy resumes
//! the unfinished jobs under their ids.

mod agents;
mod http;
mod jobs;
pub mod notification;
mod store;
mod worker;

use std::sync::{Arc, Mutex};

use shoal_jobs::{Failure, JobsError, Queue, RetryPolicy};
use shoal_service::{CancellationToken, SharedSecret, TaskTracker};

use crate::config::PreheatConfig;
use crate::metrics::ProxyMetrics;
use crate::upstream::Upstreams;

pub use self::agents::Agents;
pub use self::http::router;
pub use self::jobs::Image;
use self::jobs::{JobTable, Marker, Progress, Source, State};
use self::store::JobStore;

/// The queue's directory under `preheat.state_dir`, beside the jobs' progress files.
const QUEUE_DIR: &str = "queue";

/// The job queue and table shared by the HTTP handlers.
#[derive(Debug, Clone)]
pub struct Preheater {
    queue: Arc<Queue<Preheat>>,
    jobs: Arc<Mutex<JobTable>>,
    metrics: ProxyMetrics,
    config: PreheatConfig,
    /// `preheat.secret` with its header; `None` when none is set.
    secret: Option<SharedSecret>,
}

/// Why a job was not queued.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// As many jobs from this source as its bound (`preheat.queue` or `preheat.api_queue`)
    /// are unfinished.
    #[error("the preheat queue for {0} jobs is full; try again later")]
    Full(Source),
    #[error("cannot queue the preheat job: {0}")]
    Unwritable(#[from] JobsError),
}

/// Why preheat could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("config field `preheat.secret_header`: {0}")]
    SecretHeader(#[from] ::http::Error),
    #[error("cannot read the preheat job files: {0}")]
    Files(#[from] std::io::Error),
    #[error(transparent)]
    Queue(#[from] JobsError),
}

/// Running preheat jobs off the queue, one attempt per call.
#[derive(Debug)]
struct Preheat {
    context: worker::Context,
    jobs: Arc<Mutex<JobTable>>,
}

impl shoal_jobs::Job for Preheat {
    type Payload = Marker;
    const NAME: &'static str = "preheat";
    /// An attempt waits on origins and agents for minutes, and every change to a job is saved
    /// synchronously, so it is cut at any await point with its file consistent; it runs again
    /// after the restart, and nothing it did is harmful to repeat.
    const FINISH_ON_SHUTDOWN: bool = false;

    fn key(marker: &Marker) -> String {
        marker.id.clone()
    }

    async fn run(&self, marker: &Marker) -> Result<(), Failure> {
        let job = lock(&self.jobs).job(marker);
        worker::attempt(&self.context, &job).await
    }

    fn gave_up(&self, marker: &Marker, failure: &Failure) {
        let job = lock(&self.jobs).job(marker);
        worker::gave_up(&self.context, &job, failure);
    }
}

impl Preheater {
    /// Loads the jobs kept in `config.state_dir`, queues the unfinished ones again and runs
    /// queued jobs on `tasks`, `config.workers` at once, until `shutdown`. Fails only when the
    /// directories cannot be created or listed; unreadable job files are set aside.
    pub async fn start(
        config: PreheatConfig,
        upstreams: Arc<Upstreams>,
        agents: Option<Agents>,
        metrics: ProxyMetrics,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Preheater, StartError> {
        let secret = SharedSecret::new(&config.secret_header, &config.secret)?;
        let policy = RetryPolicy {
            min_delay: config.retry_initial,
            max_delay: config.retry_max,
            max_attempts: Some(config.attempts),
        };
        let queue = Queue::open(config.state_dir.join(QUEUE_DIR), policy, config.workers).await?;
        let store = Arc::new(JobStore::open(&config.state_dir)?);
        let mut table = JobTable::new(config.history, store.clone());
        let resumed = table.restore(with_markers(store.load()?, &queue.payloads()));
        for job in resumed {
            tracing::info!(job = %job.id, image = %job.image, "preheat resumed after a restart");
            metrics.preheat_jobs_resumed.inc();
            // A job of an earlier version, or one whose marker a crash lost on its way out.
            if !queue.contains(&job.id) {
                queue.enqueue(job.marker()).await?;
            }
        }
        let (queue, jobs) = (Arc::new(queue), Arc::new(Mutex::new(table)));
        let preheat = Preheat {
            context: worker::Context {
                upstreams,
                agents,
                metrics: metrics.clone(),
                config: config.clone(),
            },
            jobs: jobs.clone(),
        };
        tasks.spawn(queue.clone().run(Arc::new(preheat), shutdown));
        Ok(Preheater {
            queue,
            jobs,
            metrics,
            config,
            secret,
        })
    }

    /// Queues a job for `image` and returns its id once its marker is durable.
    async fn enqueue(&self, image: Image, source: Source) -> Result<String, EnqueueError> {
        let bound = match source {
            Source::Webhook => self.config.queue,
            Source::Api => self.config.api_queue,
        };
        if self.table().unfinished(source) >= bound {
            return Err(EnqueueError::Full(source));
        }
        let job = self.table().create(image, source);
        if let Err(error) = self.queue.enqueue(job.marker()).await {
            self.table().remove(&job.id);
            tracing::warn!(job = %job.id, %error, "queueing a preheat job failed");
            return Err(error.into());
        }
        self.metrics.preheat_jobs_queued.inc();
        tracing::info!(job = %job.id, image = %job.image, ?source, "preheat queued");
        Ok(job.id)
    }

    fn progress(&self, id: &str) -> Option<Progress> {
        self.table().get(id)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, JobTable> {
        lock(&self.jobs)
    }
}

fn lock(jobs: &Mutex<JobTable>) -> std::sync::MutexGuard<'_, JobTable> {
    jobs.lock().expect("job table lock poisoned")
}

/// The loaded job records, with every job that still has a marker unfinished: one whose record
/// was lost gets a fresh one, and one whose record says it is over (it ended just before a
/// crash, with its marker not yet removed) runs again.
fn with_markers(mut loaded: Vec<Progress>, markers: &[Marker]) -> Vec<Progress> {
    for marker in markers {
        match loaded.iter_mut().find(|progress| progress.id == marker.id) {
            Some(progress) if progress.state.is_finished() => progress.state = State::Queued,
            Some(_) => {}
            None => loaded.push(Progress::new(
                marker.id.clone(),
                &marker.image,
                marker.source,
            )),
        }
    }
    loaded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_with_a_marker_is_unfinished_and_every_marker_has_a_record() {
        let image = Image::parse("team/app:v1").unwrap();
        let record = |id: &str, state: State| Progress {
            state,
            ..Progress::new(id.to_owned(), &image, Source::Api)
        };
        let marker = |id: &str| Marker {
            id: id.to_owned(),
            image: image.clone(),
            source: Source::Webhook,
        };
        let loaded = vec![
            record("1-1", State::Succeeded),
            record("1-2", State::Running),
            record("1-3", State::Failed),
        ];
        let merged = with_markers(loaded, &[marker("1-1"), marker("1-2"), marker("1-4")]);
        let states: Vec<(&str, State)> = merged.iter().map(|p| (p.id.as_str(), p.state)).collect();
        assert_eq!(
            states,
            [
                ("1-1", State::Queued),
                ("1-2", State::Running),
                ("1-3", State::Failed),
                ("1-4", State::Queued),
            ]
        );
        assert_eq!(merged[3].source, Source::Webhook);
    }
}
