//! Preheat: registry push notifications (`POST /registry/notifications`) and the direct API
//! (`POST /preheat`, `GET /preheat/{id}`) queue jobs; a few background workers run them, so
//! the owning origins hold every blob of a pushed image, with metainfo, before anyone pulls.
//!
//! Requests only validate and enqueue: a registry's notification sender waits on the answer,
//! and a slow answer stalls its queue of events.

mod http;
mod jobs;
mod notification;
mod worker;

use std::sync::{Arc, Mutex};

use shoal_service::CancellationToken;
use tokio::sync::mpsc;

use crate::config::PreheatConfig;
use crate::metrics::ProxyMetrics;
use crate::upstream::Upstreams;

pub use self::http::router;
use self::jobs::{Image, Job, JobTable, Progress, Source};

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
    /// Starts `config.workers` workers that run queued jobs until `shutdown`.
    pub fn start(
        config: PreheatConfig,
        upstreams: Arc<Upstreams>,
        metrics: ProxyMetrics,
        shutdown: CancellationToken,
    ) -> Preheater {
        let (queue, receiver) = mpsc::channel(config.queue);
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        let context = worker::Context {
            upstreams,
            metrics: metrics.clone(),
            config: config.clone(),
        };
        for _ in 0..config.workers {
            tokio::spawn(work(context.clone(), receiver.clone(), shutdown.clone()));
        }
        Preheater {
            queue,
            jobs: Arc::new(Mutex::new(JobTable::new(config.history))),
            metrics,
            config,
        }
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

/// One worker: takes the next job, runs it, until shutdown. A job cut off by shutdown is
/// marked failed; nothing it did is harmful to leave half done.
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
            _ = shutdown.cancelled() => {
                job.update(|p| {
                    p.state = jobs::State::Failed;
                    p.last_error = Some("the proxy shut down".to_owned());
                });
                return;
            }
            () = worker::run(&context, &job) => {}
        }
    }
}
