//! The queue with real marker files in a temp directory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_jobs::{Failure, Job, Queue, RetryPolicy};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Payload {
    id: String,
    value: u32,
}

fn payload(id: &str, value: u32) -> Payload {
    Payload {
        id: id.to_owned(),
        value,
    }
}

/// A job whose attempts fail `failures[id]` times (retryably) before succeeding, fail for good
/// when `permanent[id]`, and wait for a gate permit when gated.
#[derive(Default)]
struct TestJob {
    failures: Mutex<HashMap<String, usize>>,
    permanent: Mutex<Vec<String>>,
    gate: Option<Semaphore>,
    started: AtomicUsize,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    done: Mutex<Vec<Payload>>,
    gave_up: Mutex<Vec<Payload>>,
}

impl Job for TestJob {
    type Payload = Payload;
    const NAME: &'static str = "test";

    fn key(payload: &Payload) -> String {
        payload.id.clone()
    }

    async fn run(&self, payload: &Payload) -> Result<(), Failure> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        if let Some(gate) = &self.gate {
            gate.acquire().await.expect("gate open").forget();
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.permanent.lock().unwrap().contains(&payload.id) {
            return Err(Failure::permanent("refused"));
        }
        if let Some(left) = self.failures.lock().unwrap().get_mut(&payload.id)
            && *left > 0
        {
            *left -= 1;
            return Err(Failure::retry("not yet"));
        }
        self.done.lock().unwrap().push(payload.clone());
        Ok(())
    }

    fn gave_up(&self, payload: &Payload, _failure: &Failure) {
        self.gave_up.lock().unwrap().push(payload.clone());
    }
}

fn fast(max_attempts: Option<u32>) -> RetryPolicy {
    RetryPolicy {
        min_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        max_attempts,
    }
}

async fn open(
    dir: &std::path::Path,
    policy: RetryPolicy,
    concurrency: usize,
) -> Arc<Queue<TestJob>> {
    Arc::new(
        Queue::open(dir, policy, concurrency)
            .await
            .expect("open queue"),
    )
}

fn start(
    queue: &Arc<Queue<TestJob>>,
    job: &Arc<TestJob>,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let worker = tokio::spawn(queue.clone().run(job.clone(), token.clone()));
    (token, worker)
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn marker(dir: &std::path::Path, key: &str) -> Option<Payload> {
    let bytes = std::fs::read(dir.join(format!("{key}.json"))).ok()?;
    Some(serde_json::from_slice(&bytes).expect("marker json"))
}

#[tokio::test]
async fn the_marker_is_on_disk_when_enqueue_returns_and_gone_after_success() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path(), fast(None), 4).await;
    queue.enqueue(payload("a", 1)).await.expect("enqueue");
    // No worker runs yet: only the marker can hold the job.
    assert_eq!(marker(dir.path(), "a"), Some(payload("a", 1)));
    assert!(queue.contains("a"));
    let job = Arc::new(TestJob::default());
    let (token, worker) = start(&queue, &job);
    wait_for("the job", || queue.stats().succeeded == 1).await;
    assert_eq!(marker(dir.path(), "a"), None);
    assert!(!queue.contains("a"));
    assert_eq!(*job.done.lock().unwrap(), [payload("a", 1)]);
    token.cancel();
    worker.await.unwrap();
}

#[tokio::test]
async fn jobs_left_on_disk_run_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let queue = open(dir.path(), fast(None), 4).await;
        queue.enqueue(payload("a", 1)).await.expect("enqueue");
        queue.enqueue(payload("b", 2)).await.expect("enqueue");
        // The process stops before any attempt.
    }
    // An interrupted marker write and an unreadable marker.
    std::fs::write(dir.path().join("c.1234.tmp"), b"{").unwrap();
    std::fs::write(dir.path().join("d.json"), b"garbage").unwrap();
    let queue = open(dir.path(), fast(None), 4).await;
    assert_eq!(queue.stats().queued, 2);
    assert!(queue.stats().oldest.is_some());
    assert!(!dir.path().join("c.1234.tmp").exists());
    assert!(dir.path().join("d.json.corrupt").is_file(), "set aside");
    let job = Arc::new(TestJob::default());
    let (token, worker) = start(&queue, &job);
    wait_for("both jobs", || queue.stats().succeeded == 2).await;
    let mut done = job.done.lock().unwrap().clone();
    done.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(done, [payload("a", 1), payload("b", 2)]);
    assert_eq!(queue.stats().oldest, None);
    token.cancel();
    worker.await.unwrap();
}

#[tokio::test]
async fn failed_attempts_are_retried_until_they_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path(), fast(None), 4).await;
    let job = Arc::new(TestJob::default());
    job.failures.lock().unwrap().insert("a".into(), 3);
    let (token, worker) = start(&queue, &job);
    queue.enqueue(payload("a", 1)).await.expect("enqueue");
    wait_for("the job", || queue.stats().succeeded == 1).await;
    let stats = queue.stats();
    assert_eq!((stats.retries, stats.failed, stats.queued), (3, 0, 0));
    assert_eq!(job.started.load(Ordering::SeqCst), 4);
    token.cancel();
    worker.await.unwrap();
}

#[tokio::test]
async fn a_permanent_failure_or_the_last_attempt_drops_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path(), fast(Some(3)), 4).await;
    let job = Arc::new(TestJob::default());
    job.permanent.lock().unwrap().push("refused".into());
    job.failures.lock().unwrap().insert("flaky".into(), 100);
    let (token, worker) = start(&queue, &job);
    queue.enqueue(payload("refused", 1)).await.expect("enqueue");
    queue.enqueue(payload("flaky", 2)).await.expect("enqueue");
    wait_for("both to fail", || queue.stats().failed == 2).await;
    // One attempt for the refused job, three for the flaky one.
    assert_eq!(job.started.load(Ordering::SeqCst), 4);
    assert_eq!(queue.stats().retries, 2);
    assert_eq!(marker(dir.path(), "refused"), None);
    assert_eq!(marker(dir.path(), "flaky"), None);
    let mut gave_up = job.gave_up.lock().unwrap().clone();
    gave_up.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(gave_up, [payload("flaky", 2), payload("refused", 1)]);
    token.cancel();
    worker.await.unwrap();
}

#[tokio::test]
async fn no_more_than_the_concurrency_run_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path(), fast(None), 2).await;
    let job = Arc::new(TestJob {
        gate: Some(Semaphore::new(0)),
        ..TestJob::default()
    });
    for id in ["a", "b", "c", "d", "e"] {
        queue.enqueue(payload(id, 0)).await.expect("enqueue");
    }
    let (token, worker) = start(&queue, &job);
    wait_for("two attempts", || job.started.load(Ordering::SeqCst) == 2).await;
    let stats = queue.stats();
    assert_eq!((stats.running, stats.queued), (2, 3));
    job.gate.as_ref().unwrap().add_permits(5);
    wait_for("every job", || queue.stats().succeeded == 5).await;
    assert_eq!(job.most_in_flight.load(Ordering::SeqCst), 2);
    token.cancel();
    worker.await.unwrap();
}

#[tokio::test]
async fn a_newer_payload_replaces_a_queued_one_and_outlives_an_attempt_of_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path(), fast(None), 4).await;
    let job = Arc::new(TestJob {
        gate: Some(Semaphore::new(0)),
        ..TestJob::default()
    });
    queue.enqueue(payload("a", 1)).await.expect("enqueue");
    let (token, worker) = start(&queue, &job);
    wait_for("the old attempt", || {
        job.started.load(Ordering::SeqCst) == 1
    })
    .await;
    queue.enqueue(payload("a", 2)).await.expect("replace");
    assert_eq!(marker(dir.path(), "a"), Some(payload("a", 2)));
    // The old attempt finishes; the new payload's marker stays and the new payload runs.
    job.gate.as_ref().unwrap().add_permits(2);
    wait_for("both attempts", || job.done.lock().unwrap().len() == 2).await;
    wait_for("the marker's removal", || !queue.contains("a")).await;
    assert_eq!(
        *job.done.lock().unwrap(),
        [payload("a", 1), payload("a", 2)]
    );
    assert_eq!(marker(dir.path(), "a"), None);
    // An equal payload for a queued key changes nothing.
    token.cancel();
    worker.await.unwrap();
    queue.enqueue(payload("b", 1)).await.expect("enqueue");
    queue.enqueue(payload("b", 1)).await.expect("enqueue again");
    assert_eq!(queue.stats().queued, 1);
}

#[tokio::test]
async fn an_attempt_in_flight_at_shutdown_finishes_and_none_starts() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path(), fast(None), 1).await;
    let job = Arc::new(TestJob {
        gate: Some(Semaphore::new(0)),
        ..TestJob::default()
    });
    queue.enqueue(payload("a", 1)).await.expect("enqueue");
    queue.enqueue(payload("b", 2)).await.expect("enqueue");
    let (token, worker) = start(&queue, &job);
    wait_for("the first attempt", || {
        job.started.load(Ordering::SeqCst) == 1
    })
    .await;
    token.cancel();
    // The worker cannot end while the attempt waits; give it every chance to (wrongly) return.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert!(!worker.is_finished(), "returned with an attempt in flight");
    job.gate.as_ref().unwrap().add_permits(2);
    worker.await.unwrap();
    assert_eq!(
        job.started.load(Ordering::SeqCst),
        1,
        "no attempt starts after shutdown"
    );
    assert_eq!(queue.stats().succeeded, 1);
    // The job that never started is still on disk for the next start.
    let reopened = open(dir.path(), fast(None), 1).await;
    assert_eq!(reopened.stats().queued, 1);
}

#[tokio::test]
async fn removing_a_job_drops_its_marker() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path(), fast(None), 1).await;
    queue.enqueue(payload("a", 1)).await.expect("enqueue");
    assert_eq!(queue.get("a"), Some(payload("a", 1)));
    assert!(queue.remove("a").await.expect("remove"));
    assert!(!queue.remove("a").await.expect("remove again"));
    assert_eq!(marker(dir.path(), "a"), None);
    assert!(open(dir.path(), fast(None), 1).await.payloads().is_empty());
}

#[tokio::test]
async fn a_key_that_is_not_a_plain_file_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path(), fast(None), 1).await;
    for id in ["../x", ".hidden", "a/b", ""] {
        assert!(queue.enqueue(payload(id, 0)).await.is_err(), "{id:?}");
    }
}

#[tokio::test]
async fn a_held_job_waits_for_its_release_and_runs_at_once_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let queue = open(dir.path(), fast(None), 2).await;
    let job = Arc::new(TestJob::default());
    let (token, worker) = start(&queue, &job);
    queue.enqueue_held(payload("held", 1)).await.expect("hold");
    queue.enqueue_held(payload("done", 1)).await.expect("hold");
    assert_eq!(marker(dir.path(), "held"), Some(payload("held", 1)));
    // Another job runs meanwhile, so the worker has looked at the queue since.
    queue.enqueue(payload("other", 1)).await.expect("enqueue");
    wait_for("the other job", || job.done.lock().unwrap().len() == 1).await;
    assert_eq!(job.started.load(Ordering::SeqCst), 1, "a held job ran");

    // The caller did "done" itself; "held" it leaves to the queue.
    assert!(queue.remove("done").await.expect("remove"));
    assert!(queue.release("held"));
    assert!(!queue.release("held"), "released twice");
    wait_for("the released job", || job.done.lock().unwrap().len() == 2).await;
    token.cancel();
    worker.await.unwrap();
    assert_eq!(
        *job.done.lock().unwrap(),
        [payload("other", 1), payload("held", 1)]
    );

    // The hold is not kept on disk: whoever held the job is gone after a restart.
    queue.enqueue_held(payload("crash", 1)).await.expect("hold");
    drop(queue);
    let reopened = open(dir.path(), fast(None), 1).await;
    let job = Arc::new(TestJob::default());
    let (token, worker) = start(&reopened, &job);
    wait_for("the job held before the restart", || {
        job.done.lock().unwrap().len() == 1
    })
    .await;
    token.cancel();
    worker.await.unwrap();
}
