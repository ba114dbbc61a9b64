//! The agent's readiness: it can serve pulls only while the tracker (peers, metainfo) and the
//! build-index (tags, manifest records) answer. `/readyz` asks both `/health` endpoints, at most
//! once a second whatever the probe rate, and names the one that does not answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// A dependency that has not answered `/health` within this long counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Answers are reused this long, so a flood of `/readyz` costs the dependencies nothing.
const REUSE: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Readiness {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// (name, `/health` URL) of each dependency.
    dependencies: Vec<(&'static str, String)>,
    last: Mutex<Option<(Instant, Result<(), String>)>>,
}

impl Readiness {
    /// `tracker` and `build_index` as configured (`host:port`, or a URL for the build-index);
    /// `tls`: whether they serve mutual TLS (bare addresses then mean https).
    pub fn new(http: reqwest::Client, tracker: &str, build_index: &str, tls: bool) -> Readiness {
        let health = |addr: &str| format!("{}/health", shoal_http_client::base_url(addr, tls));
        Readiness {
            inner: Arc::new(Inner {
                http,
                dependencies: vec![
                    ("tracker", health(tracker)),
                    ("build-index", health(build_index)),
                ],
                last: Mutex::new(None),
            }),
        }
    }

    /// `Ok` when every dependency answered its last probe, else which did not and why.
    pub async fn check(self) -> Result<(), String> {
        let mut last = self.inner.last.lock().await;
        if let Some((at, answer)) = &*last
            && at.elapsed() < REUSE
        {
            return answer.clone();
        }
        let http = &self.inner.http;
        let probes = self
            .inner
            .dependencies
            .iter()
            .map(|(name, url)| async move {
                let answered = http.get(url).timeout(PROBE_TIMEOUT).send().await;
                match answered {
                    Ok(response) if response.status().is_success() => Ok(()),
                    Ok(response) => Err(format!("{name} at {url} answered {}", response.status())),
                    Err(error) => Err(format!("{name} at {url} does not answer: {error}")),
                }
            });
        let answer = futures::future::join_all(probes)
            .await
            .into_iter()
            .collect::<Result<Vec<()>, String>>()
            .map(|_| ());
        *last = Some((Instant::now(), answer.clone()));
        answer
    }
}
