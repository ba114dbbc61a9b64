//! Preheat: registry push notifications (`POST /registry/notifications`) and the direct API
//! (`POST /preheat`, `GET /preheat/{id}`) queue jobs; a few background workers run them, so
//! the owning origins hold every blob of a pushed image, with metainfo, before anyone pulls,
//! and then (with `preheat.agents`) a few chosen agents hold it in their caches too.
//!
//! Requests only validate and enqueue: a registry's notification sender waits on the answer,
//! and a slow answer stalls its queue of events. Jobs live in files under `preheat.state_dir`,
//! so a restarted proxy resumes the unfinished ones under their ids.

mod agents;
mod http;
mod jobs;
mod notification;
mod store;
mod worker;

use std::io;
use std::sync::{Arc, Mutex};

use shoal_service::{CancellationToken, TaskTracker};
use tokio::sync::mpsc;

use crate::config::PreheatConfig;
use crate::metrics::ProxyMetrics;
use crate::upstream::Upstreams;

pub use self::agents::Agents;
pub use self::http::router;
use self::jobs::{Image, Job, JobTable, Progress, Source};
use self::store::JobStore;

/// The job queue and table shared by the HTTP handlers.
#[derive(Debug, Clone)]
pub struct Preheater {
    queue: mpsc::Sender<Job>,
    jobs: Arc<Mutex<JobTable>>,
    metrics: ProxyMetrics,
    config: PreheatConfig,
}

/// The queue holds `preheat.queue` jobs already.
#[derive(Debug)]
pub struct QueueFull;

impl Preheater {
    /// Loads the jobs kept in `config.state_dir`, queues the unfinished ones again and starts
    /// `config.workers` workers on `tasks` that run queued jobs until `shutdown`. Fails only when the
    /// directory cannot be created or listed; unreadable job files are skipped.
    pub fn start(
        config: PreheatConfig,
        upstreams: Arc<Upstreams>,
        agents: Option<Agents>,
        metrics: ProxyMetrics,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> io::Result<Preheater> {
        let store = Arc::new(JobStore::open(&config.state_dir)?);
        let loaded = store.load()?;
        let mut table = JobTable::new(config.history, store);
        let resumed = table.restore(loaded);
        let (queue, receiver) = mpsc::channel(config.queue);
        for job in resumed {
            tracing::info!(job = %job.id, image = %job.image, "preheat resumed after a restart");
            metrics.preheat_jobs_resumed.inc();
            // The workers may have been running a few jobs besides a full queue.
            if let Err(mpsc::error::TrySendError::Full(job)) = queue.try_send(job) {
                job.update(|p| {
                    p.state = jobs::State::Failed;
                    p.last_error = Some("the queue was full when the proxy restarted".to_owned());
                });
            }
        }
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        let context = worker::Context {
            upstreams,
            agents,
            metrics: metrics.clone(),
            config: config.clone(),
        };
        for _ in 0..config.workers {
            tasks.spawn(work(context.clone(), receiver.clone(), shutdown.clone()));
        }
        Ok(Preheater {
            queue,
            jobs: Arc::new(Mutex::new(table)),
            metrics,
            config,
        })
    }

    /// Queues a job for `image` and returns its id.
    fn enqueue(&self, image: Image, source: Source) -> Result<String, QueueFull> {
        let job = self.table().create(image, source);
        let id = job.id.clone();
        let image = job.image.to_string();
        if self.queue.try_send(job).is_err() {
            self.table().remove(&id);
            return Err(QueueFull);
        }
        self.metrics.preheat_jobs_queued.inc();
        tracing::info!(job = %id, %image, ?source, "preheat queued");
        Ok(id)
    }

    fn progress(&self, id: &str) -> Option<Progress> {
        self.table().get(id)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, JobTable> {
        self.jobs.lock().expect("job table lock poisoned")
    }
}

/// One worker: takes the next job, runs it, until shutdown. A job cut off by shutdown stays
/// running in its file, so the next start resumes it; nothing it did is harmful to repeat.
/// Unlike a write-back, a job is not given the drain deadline to finish: it waits on retries
/// with backoff and on agents for minutes, and every change to it is saved synchronously, so
/// stopping it at any await point leaves its file consistent.
async fn work(
    context: worker::Context,
    receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    shutdown: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = async { receiver.lock().await.recv().await } => next,
        };
        let Some(job) = next else { return };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = worker::run(&context, &job) => {}
        }
    }
}
