//! The queue: one marker file `<key>.json` per job in its directory (the payload as JSON,
//! written atomically and durably), an in-memory table of the jobs with their retry state, and
//! the dispatcher that runs due jobs with bounded concurrency.
//!
//! Enqueueing a key that is already queued with another payload replaces it (a newer digest for
//! the same tag): the marker is rewritten, and an attempt of the old payload still in flight
//! neither removes the new marker nor spends its retries; the new payload runs after it.

use std::collections::HashMap;
use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, Semaphore};
use tokio::task::{Id, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::durable::{IoContext, TEMP_SUFFIX, temp_name, write_atomic};
use crate::error::{Failure, JobsError};
use crate::policy::{Backoff, RetryPolicy};

const MARKER_SUFFIX: &str = ".json";
/// A marker that cannot be read is renamed with this suffix: kept for a human, never loaded again.
const CORRUPT_SUFFIX: &str = ".corrupt";
/// Marker writes and removals of one key are serialised (so an older payload never lands after
/// a newer one) on one of this many locks, picked by the key's hash: different keys rarely wait
/// on each other's fsyncs.
const WRITE_LOCKS: usize = 16;

/// A kind of job: its payload (what one job is), its key and how to run it.
pub trait Job: Send + Sync + 'static {
    /// What a marker holds. Enqueueing an equal payload for a queued key does nothing.
    type Payload: Serialize + DeserializeOwned + Clone + PartialEq + Debug + Send + Sync + 'static;
    /// The kind's name in logs and errors, singular (`write-back`): logs add an `s` for several.
    const NAME: &'static str;
    /// Whether an attempt in flight at shutdown may finish within the component's drain
    /// deadline (`true`), or is cut at once (`false`, for attempts that wait minutes on others).
    /// Either way a job cut off keeps its marker and runs again after a restart.
    const FINISH_ON_SHUTDOWN: bool = true;

    /// The job's identity and marker file name: `[A-Za-z0-9._-]`, not starting with a dot.
    fn key(payload: &Self::Payload) -> String;

    /// The payload of a marker that does not parse, rebuilt from its key alone; `None` (the
    /// default) sets the marker aside as `<key>.json.corrupt`.
    fn rebuild(_key: &str) -> Option<Self::Payload> {
        None
    }

    /// One attempt.
    fn run(&self, payload: &Self::Payload) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Called once a job failed for good (a permanent failure or its last attempt), after its
    /// marker was removed.
    fn gave_up(&self, _payload: &Self::Payload, _failure: &Failure) {}
}

/// A snapshot of a queue for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Jobs waiting for their first attempt or their next retry.
    pub queued: usize,
    /// Jobs with an attempt in flight.
    pub running: usize,
    /// Jobs that succeeded since this process started.
    pub succeeded: u64,
    /// Jobs that failed for good since this process started.
    pub failed: u64,
    /// Failed attempts that were scheduled again since this process started.
    pub retries: u64,
    /// When the oldest job still queued or running was enqueued (wall clock, so it survives a
    /// restart: a recovered marker's modification time).
    pub oldest: Option<SystemTime>,
}

#[derive(Debug)]
struct Entry<P> {
    payload: P,
    /// Unique per enqueue, so an attempt can tell whether its payload was replaced meanwhile.
    generation: u64,
    enqueued: SystemTime,
    not_before: Instant,
    running: bool,
    /// Not attempted until released ([`Queue::enqueue_held`]).
    held: bool,
    backoff: Backoff,
}

/// A job taken for an attempt.
struct Due<P> {
    key: String,
    payload: P,
    generation: u64,
}

/// A durable job queue of one kind of job. See the module docs.
#[derive(Debug)]
pub struct Queue<J: Job> {
    dir: PathBuf,
    policy: RetryPolicy,
    concurrency: usize,
    entries: Mutex<HashMap<String, Entry<J::Payload>>>,
    write_locks: Vec<tokio::sync::Mutex<()>>,
    generations: AtomicU64,
    wake: Notify,
    succeeded: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
}

impl<J: Job> Queue<J> {
    /// Opens (creating if needed) the queue directory and queues every marker in it: jobs left
    /// by a crash or a shutdown run again. Temporary files of interrupted marker writes are
    /// removed (their enqueue never returned).
    pub async fn open(
        dir: impl Into<PathBuf>,
        policy: RetryPolicy,
        concurrency: usize,
    ) -> Result<Queue<J>, JobsError> {
        let dir = dir.into();
        tokio::fs::create_dir_all(&dir)
            .await
            .ctx("create directory", &dir)?;
        let queue = Queue {
            dir,
            policy,
            concurrency: concurrency.max(1),
            entries: Mutex::default(),
            write_locks: (0..WRITE_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            generations: AtomicU64::new(0),
            wake: Notify::new(),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        };
        queue.recover().await?;
        Ok(queue)
    }

    /// Replaces the retry policy; jobs already queued start over with the new one.
    pub fn with_policy(mut self, policy: RetryPolicy) -> Queue<J> {
        self.policy = policy;
        let entries = self
            .entries
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for entry in entries.values_mut() {
            entry.backoff = policy.backoff();
        }
        self
    }

    async fn recover(&self) -> Result<(), JobsError> {
        let dir = &self.dir;
        let mut listing = tokio::fs::read_dir(dir).await.ctx("list", dir)?;
        while let Some(file) = listing.next_entry().await.ctx("list", dir)? {
            let path = file.path();
            let Ok(name) = file.file_name().into_string() else {
                continue;
            };
            if name.ends_with(TEMP_SUFFIX) {
                tokio::fs::remove_file(&path).await.ctx("remove", &path)?;
                continue;
            }
            let Some(key) = name.strip_suffix(MARKER_SUFFIX) else {
                continue;
            };
            if !valid_key(key) {
                continue;
            }
            let bytes = tokio::fs::read(&path).await.ctx("read", &path)?;
            let payload = match serde_json::from_slice::<J::Payload>(&bytes) {
                Ok(payload) if J::key(&payload) == key => Some(payload),
                parsed => {
                    let rebuilt = J::rebuild(key);
                    tracing::warn!(job = J::NAME, path = %path.display(), error = %parsed.err().map_or_else(|| "written for another key".to_owned(), |e| e.to_string()), rebuilt = rebuilt.is_some(), "unreadable job marker");
                    rebuilt
                }
            };
            let Some(payload) = payload else {
                let aside = dir.join(format!("{name}{CORRUPT_SUFFIX}"));
                tokio::fs::rename(&path, &aside)
                    .await
                    .ctx("set aside", &path)?;
                continue;
            };
            let modified = file.metadata().await.and_then(|m| m.modified());
            let enqueued = modified.unwrap_or_else(|_| SystemTime::now());
            let entry = self.entry(payload, enqueued, Duration::ZERO);
            self.entries().insert(key.to_owned(), entry);
        }
        let pending = self.entries().len();
        if pending > 0 {
            tracing::info!(job = J::NAME, pending, dir = %dir.display(), "resuming queued jobs");
        }
        Ok(())
    }

    fn entry(
        &self,
        payload: J::Payload,
        enqueued: SystemTime,
        delay: Duration,
    ) -> Entry<J::Payload> {
        Entry {
            payload,
            generation: self.generations.fetch_add(1, Ordering::Relaxed),
            enqueued,
            not_before: Instant::now() + delay,
            running: false,
            held: false,
            backoff: self.policy.backoff(),
        }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry<J::Payload>>> {
        shoal_core::lock(&self.entries)
    }

    fn write_lock(&self, key: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, RandomState};
        // Any hash spreads keys; it only has to be stable within this process.
        static HASHER: std::sync::LazyLock<RandomState> =
            std::sync::LazyLock::new(RandomState::new);
        &self.write_locks[(HASHER.hash_one(key) % WRITE_LOCKS as u64) as usize]
    }

    fn marker_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}{MARKER_SUFFIX}"))
    }

    /// Queues `payload`. Returns once its marker is durable on disk. A key already queued with
    /// an equal payload is left as it is; with another payload, the new one replaces it.
    pub async fn enqueue(&self, payload: J::Payload) -> Result<(), JobsError> {
        self.enqueue_after(payload, Duration::ZERO).await
    }

    /// Like [`Queue::enqueue`], but the first attempt waits `delay`. The delay is not kept on
    /// disk: after a restart the job is attempted at once.
    pub async fn enqueue_after(
        &self,
        payload: J::Payload,
        delay: Duration,
    ) -> Result<(), JobsError> {
        self.write(payload, delay, false).await
    }

    /// Like [`Queue::enqueue`], but no attempt starts until [`Queue::release`]: for work the
    /// caller first does itself (a replica push a commit waits on) and whose marker must be
    /// durable before it starts. The caller then [`Queue::remove`]s the job once its own attempt
    /// succeeded, or releases it to the queue's retries. The hold is not kept on disk: after a
    /// restart the job is attempted at once. A key already queued with an equal payload is left
    /// as it is, not held.
    pub async fn enqueue_held(&self, payload: J::Payload) -> Result<(), JobsError> {
        self.write(payload, Duration::ZERO, true).await
    }

    /// Lets a held job run, at once; `false` when `key` is not held.
    pub fn release(&self, key: &str) -> bool {
        let mut entries = self.entries();
        let Some(entry) = entries.get_mut(key).filter(|e| e.held) else {
            return false;
        };
        entry.held = false;
        entry.not_before = Instant::now();
        drop(entries);
        self.wake.notify_one();
        true
    }

    async fn write(
        &self,
        payload: J::Payload,
        delay: Duration,
        held: bool,
    ) -> Result<(), JobsError> {
        let key = J::key(&payload);
        if !valid_key(&key) {
            return Err(JobsError::BadKey { job: J::NAME, key });
        }
        let _writing = self.write_lock(&key).lock().await;
        if self
            .entries()
            .get(&key)
            .is_some_and(|e| e.payload == payload)
        {
            return Ok(());
        }
        let json = serde_json::to_vec(&payload).map_err(|source| JobsError::Encode {
            job: J::NAME,
            key: key.clone(),
            source,
        })?;
        let target = self.marker_path(&key);
        write_atomic(self.dir.join(temp_name(&key)), &target, &json).await?;
        let mut replacement = self.entry(payload, SystemTime::now(), delay);
        replacement.held = held;
        let mut entries = self.entries();
        match entries.get_mut(&key) {
            // The attempt in flight (if any) finishes first; it then sees the new generation.
            Some(entry) => {
                entry.payload = replacement.payload;
                entry.generation = replacement.generation;
                entry.backoff = replacement.backoff;
                entry.not_before = replacement.not_before;
                entry.held = replacement.held;
            }
            None => {
                entries.insert(key, replacement);
            }
        }
        drop(entries);
        self.wake.notify_one();
        Ok(())
    }

    /// Drops a queued job and its marker (its work was done another way); `false` when `key`
    /// was not queued. An attempt in flight finishes but changes nothing.
    pub async fn remove(&self, key: &str) -> Result<bool, JobsError> {
        let _writing = self.write_lock(key).lock().await;
        if self.entries().remove(key).is_none() {
            return Ok(false);
        }
        remove_marker(&self.marker_path(key)).await?;
        Ok(true)
    }

    /// Whether `key` is queued or running.
    pub fn contains(&self, key: &str) -> bool {
        self.entries().contains_key(key)
    }

    /// The payload queued under `key`.
    pub fn get(&self, key: &str) -> Option<J::Payload> {
        self.entries().get(key).map(|e| e.payload.clone())
    }

    /// Every queued payload, in no particular order.
    pub fn payloads(&self) -> Vec<J::Payload> {
        self.entries().values().map(|e| e.payload.clone()).collect()
    }

    pub fn stats(&self) -> Stats {
        let entries = self.entries();
        let running = entries.values().filter(|e| e.running).count();
        Stats {
            queued: entries.len() - running,
            running,
            succeeded: self.succeeded.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            oldest: entries.values().map(|e| e.enqueued).min(),
        }
    }

    /// Runs due jobs with `job`, at most `concurrency` at once, oldest first, until `shutdown`.
    /// Then no attempt starts; those in flight finish (or, for a kind that does not
    /// [`Job::FINISH_ON_SHUTDOWN`], are cut) before this returns. Spawn it on the component's
    /// task tracker: a caller that stops waiting at its drain deadline abandons the attempts in
    /// flight, whose markers stay, so they run again after the restart.
    pub async fn run(self: Arc<Self>, job: Arc<J>, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.concurrency));
        let mut attempts = JoinSet::new();
        let mut running: HashMap<Id, String> = HashMap::new();
        loop {
            let (due, next_due) = self.take_due(permits.available_permits());
            for Due {
                key,
                payload,
                generation,
            } in due
            {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    unreachable!("take_due takes no more jobs than there are permits");
                };
                let (this, job, attempt_key) = (self.clone(), job.clone(), key.clone());
                let handle = attempts.spawn(async move {
                    let result = job.run(&payload).await;
                    drop(permit);
                    this.settle(&job, &attempt_key, generation, result).await;
                });
                running.insert(handle.id(), key);
            }
            let timer = async {
                match next_due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = timer => {}
                Some(joined) = attempts.join_next_with_id() => self.joined(joined, &mut running),
            }
        }
        if !running.is_empty() {
            let keys: Vec<&String> = running.values().collect();
            match J::FINISH_ON_SHUTDOWN {
                true => tracing::info!(?keys, "shutdown: finishing the {}s in flight", J::NAME),
                false => {
                    tracing::info!(
                        ?keys,
                        "shutdown: stopping the {}s in flight (they run again after a restart)",
                        J::NAME
                    );
                    attempts.abort_all();
                }
            }
        }
        while let Some(joined) = attempts.join_next_with_id().await {
            self.joined(joined, &mut running);
        }
    }

    /// Marks up to `slots` due jobs as running, oldest first, and returns them, together with
    /// the earliest time a waiting job becomes due.
    fn take_due(&self, slots: usize) -> (Vec<Due<J::Payload>>, Option<Instant>) {
        let now = Instant::now();
        let mut entries = self.entries();
        let mut due: Vec<(SystemTime, &String)> = entries
            .iter()
            .filter(|(_, e)| !e.running && !e.held && e.not_before <= now)
            .map(|(key, e)| (e.enqueued, key))
            .collect();
        due.sort();
        let keys: Vec<String> = due
            .into_iter()
            .take(slots)
            .map(|(_, k)| k.clone())
            .collect();
        let mut taken = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(entry) = entries.get_mut(&key) {
                entry.running = true;
                let (payload, generation) = (entry.payload.clone(), entry.generation);
                taken.push(Due {
                    key,
                    payload,
                    generation,
                });
            }
        }
        let next_due = entries
            .values()
            .filter(|e| !e.running && !e.held && e.not_before > now)
            .map(|e| e.not_before)
            .min();
        (taken, next_due)
    }

    /// Records how an attempt of the job under `key` enqueued as `generation` ended.
    async fn settle(&self, job: &J, key: &str, generation: u64, result: Result<(), Failure>) {
        let _writing = self.write_lock(key).lock().await;
        let replaced = {
            let mut entries = self.entries();
            // Removed while it ran: whoever removed it took care of the marker.
            let Some(entry) = entries.get_mut(key) else {
                return;
            };
            let replaced = entry.generation != generation;
            if replaced {
                // A new payload: it runs at once with a fresh set of retries (set by enqueue).
                entry.running = false;
            }
            replaced
        };
        if replaced {
            if result.is_ok() {
                self.succeeded.fetch_add(1, Ordering::Relaxed);
            }
            self.wake.notify_one();
            return;
        }
        let failure = match result {
            Ok(()) => match remove_marker(&self.marker_path(key)).await {
                Ok(()) => {
                    self.entries().remove(key);
                    self.succeeded.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(job = J::NAME, key, "job done");
                    return;
                }
                // The job stays queued as long as its marker does.
                Err(error) => Failure::retry(error),
            },
            Err(failure) => failure,
        };
        let delay = {
            let mut entries = self.entries();
            let Some(entry) = entries.get_mut(key) else {
                return;
            };
            let delay = match &failure {
                Failure::Retry(_) => entry.backoff.next(),
                Failure::Permanent(_) => None,
            };
            if let Some(delay) = delay {
                entry.running = false;
                entry.not_before = Instant::now() + delay;
            }
            delay
        };
        match delay {
            Some(delay) => {
                self.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(job = J::NAME, key, error = %failure, retry_in = ?delay, "job attempt failed");
                self.wake.notify_one();
            }
            None => {
                tracing::warn!(job = J::NAME, key, error = %failure, "job failed for good");
                if let Err(error) = remove_marker(&self.marker_path(key)).await {
                    tracing::warn!(job = J::NAME, key, %error, "cannot remove the marker of a failed job (it runs again after a restart)");
                }
                let removed = self.entries().remove(key);
                self.failed.fetch_add(1, Ordering::Relaxed);
                if let Some(entry) = removed {
                    job.gave_up(&entry.payload, &failure);
                }
            }
        }
    }

    /// Records an attempt task that ended: a panic is retried like a failed attempt.
    fn joined(&self, joined: Result<(Id, ()), JoinError>, running: &mut HashMap<Id, String>) {
        let error = match joined {
            Ok((id, ())) => {
                running.remove(&id);
                return;
            }
            Err(error) => error,
        };
        let Some(key) = running.remove(&error.id()) else {
            return;
        };
        if !error.is_panic() {
            // Cut at shutdown: the marker stays for the next start.
            return;
        }
        let mut entries = self.entries();
        if let Some(entry) = entries.get_mut(&key) {
            let delay = entry.backoff.next().unwrap_or(self.policy.max_delay);
            entry.running = false;
            entry.not_before = Instant::now() + delay;
            self.retries.fetch_add(1, Ordering::Relaxed);
            tracing::error!(job = J::NAME, key, %error, retry_in = ?delay, "job attempt panicked");
        }
    }
}

/// Removes a marker; one already gone is fine. No directory fsync: a marker brought back by a
/// crash only runs its job once more, and every job is safe to repeat.
async fn remove_marker(path: &Path) -> Result<(), JobsError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).ctx("remove", path).map_err(JobsError::from),
    }
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
