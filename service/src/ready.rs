//! Readiness (`GET /readyz`): a component can serve while the things it depends on answer. Each
//! component names its checks ([`Readiness::check`]); one probe runs them all at once, each
//! within [`CHECK_TIMEOUT`], and the answer is reused for [`REUSE`], so a flood of probes costs
//! the dependencies one round a second. 200 `{"ready":true}`, or 503
//! `{"ready":false,"failed":{"<check>":"<why>"}}` naming every check that failed.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;
use tokio::sync::Mutex;

/// A check that has not answered within this long fails (under the chart's 3 s probe timeout).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Answers are reused this long.
pub const REUSE: Duration = Duration::from_secs(1);

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// A component's readiness checks; clones share the checks and the last answer.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, CheckFn)>,
    last: Arc<Mutex<Option<(Instant, Report)>>>,
}

/// What `/readyz` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    pub ready: bool,
    /// Each failed check and why; empty when ready.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub failed: BTreeMap<&'static str, String>,
}

impl Readiness {
    /// Adds the check `name`: `Err` says why the component cannot serve.
    pub fn check<F, Fut>(mut self, name: &'static str, check: F) -> Readiness
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks
            .push((name, Arc::new(move || Box::pin(check()) as CheckFuture)));
        self
    }

    /// Adds the check `name`: the dependency at `addr` (`host:port`, or a URL) answers its
    /// `/health`; `tls`: it serves TLS (a bare address then means https).
    pub fn health(
        self,
        name: &'static str,
        http: reqwest::Client,
        addr: &str,
        tls: bool,
    ) -> Readiness {
        self.health_any(name, http, &[addr], tls)
    }

    /// Adds the check `name`: at least one of the replicas at `addrs` answers its `/health`
    /// (the component goes on with any one of them); else it fails with each one's reason.
    pub fn health_any(
        self,
        name: &'static str,
        http: reqwest::Client,
        addrs: &[impl AsRef<str>],
        tls: bool,
    ) -> Readiness {
        let urls: Arc<[String]> = addrs
            .iter()
            .map(|addr| format!("{}/health", shoal_http_client::base_url(addr.as_ref(), tls)))
            .collect();
        self.check(name, move || {
            let (http, urls) = (http.clone(), urls.clone());
            async move {
                // Ready at the first answer: a hung replica must not hold the check up.
                let mut answers: FuturesUnordered<_> =
                    urls.iter().map(|url| http_ok(&http, url)).collect();
                let mut failures = Vec::new();
                while let Some(answer) = answers.next().await {
                    match answer {
                        Ok(()) => return Ok(()),
                        Err(why) => failures.push(why),
                    }
                }
                Err(failures.join("; "))
            }
        })
    }

    /// Adds the check `name`: a file can be written in `dir` ([`writable_dir`]).
    pub fn writable(self, name: &'static str, dir: impl Into<PathBuf>) -> Readiness {
        let dir: Arc<Path> = dir.into().into();
        self.check(name, move || {
            let dir = dir.clone();
            async move { writable_dir(&dir).await }
        })
    }

    /// Adds the check `name`: `backend` answers, or else `queue` takes work
    /// ([`backend_or_queue`]).
    pub fn backend_or_queue<F, Fut>(
        self,
        name: &'static str,
        backend: F,
        queue: Option<PathBuf>,
    ) -> Readiness
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let queue: Option<Arc<Path>> = queue.map(Into::into);
        let backend = Arc::new(backend);
        self.check(name, move || {
            let (backend, queue) = (backend.clone(), queue.clone());
            async move { backend_or_queue(backend(), queue.as_deref()).await }
        })
    }

    /// Runs every check (or reuses an answer younger than [`REUSE`]). Concurrent callers wait
    /// for the one round in flight.
    pub async fn report(&self) -> Report {
        let mut last = self.last.lock().await;
        if let Some((at, report)) = &*last
            && at.elapsed() < REUSE
        {
            return report.clone();
        }
        let rounds = self.checks.iter().map(|(name, check)| async move {
            let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
            };
            (*name, outcome)
        });
        let failed: BTreeMap<_, _> = futures::future::join_all(rounds)
            .await
            .into_iter()
            .filter_map(|(name, outcome)| outcome.err().map(|why| (name, why)))
            .collect();
        let report = Report {
            ready: failed.is_empty(),
            failed,
        };
        *last = Some((Instant::now(), report.clone()));
        report
    }
}

/// `Ok` when `url` (a dependency's `/health`) answers a success status.
pub async fn http_ok(http: &reqwest::Client, url: &str) -> Result<(), String> {
    match http.get(url).timeout(CHECK_TIMEOUT).send().await {
        Ok(response) if response.status().is_success() => Ok(()),
        Ok(response) => Err(format!("{url} answered {}", response.status())),
        Err(error) => Err(format!(
            "{url} does not answer: {}",
            shoal_core::chain(&error)
        )),
    }
}

/// `Ok` when a file can be created, written, synced and removed in `dir`.
pub async fn writable_dir(dir: &Path) -> Result<(), String> {
    // One probe file per process: two components sharing a directory do not collide.
    let probe = dir.join(format!(".readyz-{}", std::process::id()));
    let written = async {
        let mut file = tokio::fs::File::create(&probe).await?;
        tokio::io::AsyncWriteExt::write_all(&mut file, b"ready").await?;
        file.sync_all().await
    }
    .await;
    let removed = tokio::fs::remove_file(&probe).await;
    written
        .and(removed)
        .map_err(|error| format!("{} is not writable: {error}", dir.display()))
}

/// A store whose writes can wait in a durable queue (the origin's write-back, the
/// build-index's pending tags) can take them while its backend is down, so it stays ready: `Ok`
/// when `backend` answers, or else when `queue` is set and writable; else both reasons.
pub async fn backend_or_queue(
    backend: impl Future<Output = Result<(), String>>,
    queue: Option<&Path>,
) -> Result<(), String> {
    let Err(down) = backend.await else {
        return Ok(());
    };
    match queue {
        None => Err(down),
        Some(queue) => writable_dir(queue)
            .await
            .map_err(|full| format!("{down}; and the queue: {full}")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn names_each_failed_check_and_reuses_the_answer_for_a_second() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let readiness = Readiness::default()
            .check("store", || async { Ok(()) })
            .check("backend", move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { Err("down".to_owned()) }
            });
        let report = readiness.report().await;
        assert!(!report.ready);
        assert_eq!(
            serde_json::to_string(&report).unwrap(),
            r#"{"ready":false,"failed":{"backend":"down"}}"#
        );
        // A second probe right away is answered from the first round.
        assert_eq!(readiness.clone().report().await, report);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn ready_without_failures() {
        let report = Readiness::default()
            .check("store", || async { Ok(()) })
            .report()
            .await;
        assert_eq!(serde_json::to_string(&report).unwrap(), r#"{"ready":true}"#);
    }

    #[tokio::test]
    async fn a_backend_outage_is_ready_while_its_queue_takes_work() {
        let dir = tempfile::tempdir().unwrap();
        let down = || async { Err("backend down".to_owned()) };
        backend_or_queue(async { Ok(()) }, None).await.unwrap();
        backend_or_queue(down(), Some(dir.path())).await.unwrap();
        assert_eq!(
            backend_or_queue(down(), None).await.unwrap_err(),
            "backend down"
        );
        let error = backend_or_queue(down(), Some(&dir.path().join("gone")))
            .await
            .unwrap_err();
        assert!(
            error.starts_with("backend down; and the queue: "),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_directory_is_writable_until_it_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        writable_dir(dir.path()).await.unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let gone = dir.path().join("gone");
        let error = writable_dir(&gone).await.unwrap_err();
        assert!(error.contains("gone is not writable"), "{error}");
    }
}
