//! The one client of the origin cluster. Everything that talks to origins by digest (the proxy,
//! the build-index, the tracker, and the origins replicating to each other) asks it:
//!
//! - who owns a digest: the first R members of its rendezvous ranking
//!   (`shoal_core::rendezvous`) over the live membership, healthy owners first;
//! - a read: the owners in that order until one has the digest, passing over an owner that is
//!   unreachable or failing on its side ([`fails_over`]) or lacks it;
//! - a write with quorum: a push to each owner, answered once W of them hold the blob, the rest
//!   finishing in the background.
//!
//! The protocol is in `docs/internal-api.md` ("The origin ring").

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use shoal_core::{Digest, Suspects, rendezvous};
use shoal_membership::{Membership, MembershipError, MembershipMetrics, Snapshot};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::error::ApiError;
use crate::origin::OriginClient;
use crate::origins_config::OriginsConfig;
use crate::transport::stops_answering;

/// The origin cluster as one client: a live member list (static or DNS, health-checked) and R.
#[derive(Clone, Debug)]
pub struct OriginCluster {
    http: reqwest::Client,
    members: Membership,
    replicas: usize,
    /// Origins this process found hung, and when: asked after the others until they answer
    /// again or [`SUSPECT_FOR`] passes, so that only the first request meeting a hung origin
    /// waits for its probe, not every request until the health checks mark it.
    suspects: Arc<Suspects>,
}

/// One owner of a digest: its member address (as ranked) and a client for it.
#[derive(Clone, Debug)]
pub struct Owner {
    pub addr: String,
    pub client: OriginClient,
}

/// Whether a failed request is worth repeating on another origin: the origin was unreachable,
/// broke off, or failed on its side. A client error (a bad range, a body over a limit) would
/// fail the same everywhere.
pub fn fails_over(error: &ApiError) -> bool {
    match error {
        ApiError::Transport { .. } | ApiError::Protocol { .. } | ApiError::Unresponsive { .. } => {
            true
        }
        ApiError::Remote { status, .. } => *status >= 500,
        ApiError::RangeNotSatisfiable { .. } | ApiError::TooLarge { .. } => false,
    }
}

/// A read that found nothing to return: every owner tried failed, or there were none.
#[derive(Debug)]
pub struct ReadFailure {
    /// Each failure in the order the owners were tried; the last one ended the read. Empty when
    /// the cluster had no member to ask.
    pub failures: Vec<(String, ApiError)>,
}

impl ReadFailure {
    /// The failure that ended the read (with the origin's base URL); `None` when no origin was
    /// asked.
    pub fn last(self) -> Option<(String, ApiError)> {
        self.failures.into_iter().last()
    }
}

impl fmt::Display for ReadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.failures.is_empty() {
            return f.write_str("the origin cluster has no members");
        }
        for (i, (_, error)) in self.failures.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Which owners a committed blob goes to and how many must confirm (see
/// [`OriginCluster::write_plan`]).
#[derive(Debug)]
pub struct WritePlan {
    /// The owners to push to, healthy ones first, otherwise in rendezvous order.
    pub targets: Vec<Owner>,
    /// How many of `targets` must confirm before the write is acknowledged.
    pub needed: usize,
}

/// A write that did not reach its quorum.
#[derive(Debug, thiserror::Error)]
#[error("reached {acked} of the {needed} owners the write quorum needs: {}", failures.join("; "))]
pub struct QuorumError {
    pub acked: usize,
    pub needed: usize,
    pub failures: Vec<String>,
}

impl OriginCluster {
    /// Starts following `config`: its membership task (DNS re-resolution, health checks) runs
    /// on `tasks` until `shutdown`. `replicas` is R, the owners per digest.
    pub async fn start(
        http: reqwest::Client,
        config: &OriginsConfig,
        replicas: usize,
        metrics: &MembershipMetrics,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<OriginCluster, MembershipError> {
        let members = Membership::start(
            "origins",
            config.members(),
            http.clone(),
            metrics,
            shutdown,
            tasks,
        )
        .await?;
        Ok(OriginCluster {
            http,
            members,
            replicas,
            suspects: Arc::new(Suspects::new(SUSPECT_FOR)),
        })
    }

    /// The same cluster, with requests sent through `http` (a client with other timeouts).
    pub fn with_http(&self, http: reqwest::Client) -> OriginCluster {
        OriginCluster {
            http,
            ..self.clone()
        }
    }

    /// The current membership view.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.members.snapshot()
    }

    /// A client for the member `addr`; `None` when `addr` is not a current member, so that an
    /// address a caller was handed (an upload handle) never sends a request anywhere else.
    pub fn member(&self, addr: &str) -> Option<OriginClient> {
        self.snapshot()
            .members()
            .iter()
            .any(|m| m == addr)
            .then(|| self.client(addr))
    }

    fn client(&self, addr: &str) -> OriginClient {
        OriginClient::new(self.http.clone(), addr)
    }

    /// The owners of `digest`: healthy ones first, otherwise most preferred first.
    pub fn owners(&self, digest: &Digest) -> Vec<Owner> {
        let snapshot = self.snapshot();
        let ranked = rendezvous::owners(digest, snapshot.members(), self.replicas);
        self.trusted_first(&snapshot, ranked)
    }

    /// Every member in turn from position `first` (wrapping), healthy ones first: where
    /// upload sessions go, spread over the ring.
    pub fn members_in_turn(&self, first: usize) -> Vec<Owner> {
        let snapshot = self.snapshot();
        let members = snapshot.members();
        let count = members.len().max(1);
        let first = first % count;
        let in_turn = (0..members.len())
            .map(|i| &members[(first + i) % count])
            .collect();
        self.trusted_first(&snapshot, in_turn)
    }

    /// `addrs` with the members that pass their health checks and were not found hung here
    /// first; the order is otherwise kept.
    fn trusted_first(&self, snapshot: &Snapshot, addrs: Vec<&String>) -> Vec<Owner> {
        let mut ordered = snapshot.healthy_first(addrs);
        ordered.sort_by_key(|addr| !self.trusted(snapshot, addr));
        ordered
            .into_iter()
            .map(|addr| Owner {
                addr: addr.clone(),
                client: self.client(addr),
            })
            .collect()
    }

    /// Whether `addr` passes its health checks and was not found hung here lately.
    fn trusted(&self, snapshot: &Snapshot, addr: &str) -> bool {
        snapshot.is_healthy(addr) && !self.suspects.suspected(addr, Instant::now())
    }

    /// Whether `origin`, which has stopped sending a body it started, fails a health probe now:
    /// then it is found hung (and asked after the others for a while), and a reader goes on
    /// from another owner.
    pub async fn found_hung(&self, origin: &OriginClient) -> bool {
        let snapshot = self.snapshot();
        let Some(addr) = snapshot
            .members()
            .iter()
            .find(|member| self.client(member).base() == origin.base())
        else {
            return false;
        };
        if self.members.probe(addr).await {
            return false;
        }
        self.suspect(addr, true);
        true
    }

    /// Records what a request to `addr` showed: hung, or answering.
    fn suspect(&self, addr: &str, hung: bool) {
        self.suspects.record(addr, hung, Instant::now());
    }

    /// Runs `read` on the owners of `digest` in [`OriginCluster::owners`] order, passing over
    /// owners that fail, lack it or hang; see [`OriginCluster::ask_in_turn`].
    pub async fn read<T, F, Fut>(
        &self,
        digest: &Digest,
        read: F,
    ) -> Result<Option<(T, OriginClient)>, ReadFailure>
    where
        F: FnMut(OriginClient) -> Fut,
        Fut: Future<Output = Result<Option<T>, ApiError>>,
    {
        let found = self
            .ask_in_turn(self.owners(digest), read)
            .instrument(tracing::warn_span!("origin read", %digest))
            .await?;
        Ok(found.map(|(found, owner)| (found, owner.client)))
    }

    /// Runs `ask` on `origins` in order and returns the first answer that found something (a
    /// blob, an upload session), with the origin that gave it. An origin that [`fails_over`] or
    /// answers `None` (it lacks the digest: it may have joined after the blob was written)
    /// passes the question on to the next, and so does one that is hung (see [`PROBE_AFTER`]);
    /// the hung one is still waited for beside the next and may answer first. `Ok(None)` when
    /// every origin that answered had nothing; the failures when none answered, or at once on
    /// an error that would fail the same everywhere.
    pub async fn ask_in_turn<T, F, Fut>(
        &self,
        origins: Vec<Owner>,
        mut ask: F,
    ) -> Result<Option<(T, Owner)>, ReadFailure>
    where
        F: FnMut(OriginClient) -> Fut,
        Fut: Future<Output = Result<Option<T>, ApiError>>,
    {
        let mut origins = origins.into_iter();
        let mut asked = FuturesUnordered::new();
        let mut answered = false;
        let mut failures = Vec::new();
        // The origin asked last, while its answer is awaited; `hung` resolves if it stops
        // answering. Every other request in flight went to an origin found hung.
        let mut watched: Option<Owner> = None;
        let mut hung: BoxFuture<'_, ()> = Box::pin(std::future::pending());
        loop {
            if watched.is_none() {
                // Once an origin answered that it has nothing, one failing its health checks
                // is not asked: it would only cost the wait for its probe.
                let snapshot = self.snapshot();
                let next = origins
                    .by_ref()
                    .find(|origin| !answered || self.trusted(&snapshot, &origin.addr));
                // A hung origin's answer is waited for only while another is awaited.
                let Some(origin) = next else { break };
                let asking = ask(origin.client.clone());
                let (members, addr) = (&self.members, origin.addr.clone());
                hung = Box::pin(async move { stops_answering(|| members.probe(&addr)).await });
                watched = Some(origin.clone());
                asked.push(async move { (origin, asking.await) });
            }
            tokio::select! {
                Some((origin, result)) = asked.next() => {
                    let found_hung = watched.as_ref().is_none_or(|w| w.addr != origin.addr);
                    if !found_hung {
                        watched = None;
                        hung = Box::pin(std::future::pending());
                    }
                    if !matches!(&result, Err(error) if fails_over(error)) {
                        self.suspect(&origin.addr, false);
                    }
                    match result {
                        Ok(Some(found)) => return Ok(Some((found, origin))),
                        Ok(None) => answered = true,
                        // A hung origin's failure is on the list already.
                        Err(error) if fails_over(&error) && found_hung => {}
                        Err(error) if fails_over(&error) => {
                            tracing::warn!(origin = origin.client.base(), error = %shoal_core::chain(&error), "origin failed; asking the next");
                            failures.push((origin.client.base().to_owned(), error));
                        }
                        Err(error) => {
                            failures.push((origin.client.base().to_owned(), error));
                            return Err(ReadFailure { failures });
                        }
                    }
                }
                () = &mut hung => {
                    if let Some(origin) = watched.take() {
                        self.suspect(&origin.addr, true);
                        let base = origin.client.base().to_owned();
                        tracing::warn!(origin = base, "origin has not answered and fails its health probe; asking the next as well");
                        failures.push((base, ApiError::Unresponsive { service: "origin".into() }));
                    }
                    hung = Box::pin(std::future::pending());
                }
            }
        }
        if answered {
            Ok(None)
        } else {
            Err(ReadFailure { failures })
        }
    }

    /// Where a blob committed on the member `me` goes: the owners other than `me`, and how many
    /// of them must hold it before the commit is acknowledged. W is capped by the number of
    /// owners, and `me` counts toward it when it is an owner (it holds the blob already).
    pub fn write_plan(&self, digest: &Digest, me: &str, quorum: usize) -> WritePlan {
        let owners = self.owners(digest);
        let quorum = quorum.min(owners.len());
        let (mine, targets): (Vec<Owner>, Vec<Owner>) =
            owners.into_iter().partition(|owner| owner.addr == me);
        WritePlan {
            targets,
            needed: quorum.saturating_sub(mine.len()),
        }
    }
}

/// How long [`OriginCluster::ask_in_turn`] waits on an origin before probing its health. One
/// that has not answered by then and fails the probe is taken for hung (a stopped process still
/// has its connections accepted by the kernel, and would hold the request until its timeout), so
/// the next is asked beside it. A live origin keeps the request however long it takes (a
/// pull-through from the backend comes before the answer) and is probed again after as long.
pub const PROBE_AFTER: Duration = Duration::from_secs(1);

/// How long an origin found hung is asked after the others (unless it answers meanwhile):
/// longer than the health checks take by default to mark it (two failed probes, 5 s apart).
const SUSPECT_FOR: Duration = Duration::from_secs(30);

/// Runs `push` for every target of `plan`, each as its own task on `tasks` (so it completes
/// after the acknowledgement too, and shutdown waits for it), and returns once `plan.needed` of
/// them succeeded; a [`QuorumError`] once too many failed for that.
pub async fn write_quorum<F, Fut>(
    plan: WritePlan,
    tasks: &TaskTracker,
    mut push: F,
) -> Result<(), QuorumError>
where
    F: FnMut(Owner) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let WritePlan { targets, needed } = plan;
    if targets.is_empty() {
        return Ok(());
    }
    let (tx, mut rx) = mpsc::channel(targets.len());
    for target in targets {
        let tx = tx.clone();
        let pushed = push(target);
        tasks.spawn(async move {
            // The writer may have stopped listening once the quorum was reached.
            let _ = tx.send(pushed.await).await;
        });
    }
    drop(tx);
    let (mut acked, mut failures) = (0, Vec::new());
    while acked < needed {
        match rx.recv().await {
            Some(Ok(())) => acked += 1,
            Some(Err(error)) => failures.push(error),
            None => {
                return Err(QuorumError {
                    acked,
                    needed,
                    failures,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use shoal_membership::{HealthConfig, MembersConfig, Source};

    use super::*;

    const NODES: [&str; 4] = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"];

    async fn cluster(config: OriginsConfig, replicas: usize) -> OriginCluster {
        OriginCluster::start(
            http(),
            &config,
            replicas,
            &MembershipMetrics::default(),
            CancellationToken::new(),
            &TaskTracker::new(),
        )
        .await
        .unwrap()
    }

    fn http() -> reqwest::Client {
        shoal_http_client::builder().build().unwrap()
    }

    fn failure(status: u16) -> ApiError {
        ApiError::Remote {
            service: "origin".into(),
            status,
            code: None,
            message: "test".into(),
        }
    }

    fn transport() -> ApiError {
        // A refused connection: the kind of error an origin that is down gives.
        let error = http().get("http://").build().expect_err("no host");
        ApiError::Transport {
            service: "origin".into(),
            source: error,
        }
    }

    #[test]
    fn only_unreachable_or_failing_origins_fail_over() {
        assert!(fails_over(&transport()));
        assert!(fails_over(&ApiError::Protocol {
            service: "origin".into(),
            reason: "bad header".into(),
        }));
        assert!(fails_over(&failure(500)));
        assert!(fails_over(&failure(503)));
        assert!(!fails_over(&failure(400)));
        assert!(!fails_over(&failure(404)));
        assert!(!fails_over(&ApiError::RangeNotSatisfiable {
            service: "origin".into(),
            length: Some(3),
        }));
        assert!(!fails_over(&ApiError::TooLarge {
            service: "origin".into(),
            limit: 1,
        }));
    }

    #[tokio::test]
    async fn owners_are_the_rendezvous_top_r_in_order() {
        let cluster = cluster(OriginsConfig::fixed(NODES), 3).await;
        for byte in 0..32u8 {
            let digest = Digest::of(&[byte]);
            let expected: Vec<String> = rendezvous::owners(&digest, &NODES, 3)
                .into_iter()
                .map(|a| a.to_string())
                .collect();
            let owners: Vec<String> = cluster
                .owners(&digest)
                .into_iter()
                .map(|o| o.addr)
                .collect();
            assert_eq!(owners, expected);
        }
        assert!(cluster.member("127.0.0.1:2").is_some());
        assert!(cluster.member("127.0.0.1:9").is_none());
    }

    #[tokio::test]
    async fn reads_fail_over_in_rendezvous_order() {
        let cluster = cluster(OriginsConfig::fixed(NODES), 3).await;
        let digest = Digest::of(b"layer");
        let ranked: Vec<String> = rendezvous::owners(&digest, &NODES, 3)
            .iter()
            .map(|a| format!("http://{a}"))
            .collect();
        let asked = Mutex::new(Vec::new());
        // The first owner is down, the second lacks the blob, the third has it.
        let (found, from) = cluster
            .read(&digest, |origin| {
                let base = origin.base().to_owned();
                asked.lock().unwrap().push(base.clone());
                let position = ranked.iter().position(|r| *r == base);
                async move {
                    match position {
                        Some(0) => Err(failure(503)),
                        Some(1) => Ok(None),
                        _ => Ok(Some(base)),
                    }
                }
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(found, ranked[2]);
        assert_eq!(from.base(), ranked[2]);
        assert_eq!(
            *asked.lock().unwrap(),
            ranked,
            "only the R owners, in order"
        );

        // Absent wherever an owner answered: a miss, not an error.
        let missing = cluster
            .read(&digest, |origin| {
                let first = origin.base() == ranked[0];
                async move {
                    if first {
                        Err(transport())
                    } else {
                        Ok(None::<()>)
                    }
                }
            })
            .await
            .unwrap();
        assert!(missing.is_none());

        // No owner answered: every failure, the last one ending the read.
        let down = cluster
            .read(&digest, |_| async { Err::<Option<()>, _>(failure(503)) })
            .await
            .unwrap_err();
        assert_eq!(down.failures.len(), 3);
        let (origin, error) = down.last().unwrap();
        assert_eq!(origin, ranked[2]);
        assert!(matches!(error, ApiError::Remote { status: 503, .. }));

        // A client error is the same on every owner: no failover.
        let calls = AtomicUsize::new(0);
        let bad = cluster
            .read(&digest, |_| {
                calls.fetch_add(1, Ordering::Relaxed);
                async { Err::<Option<()>, _>(failure(400)) }
            })
            .await
            .unwrap_err();
        assert_eq!(calls.into_inner(), 1);
        assert_eq!(bad.failures.len(), 1);
    }

    #[tokio::test]
    async fn an_empty_cluster_reads_nothing_and_says_so() {
        let cluster = cluster(OriginsConfig::default(), 3).await;
        let failure = cluster
            .read(&Digest::of(b"x"), |_| async { Ok(Some(())) })
            .await
            .unwrap_err();
        assert!(failure.failures.is_empty());
        assert_eq!(failure.to_string(), "the origin cluster has no members");
    }

    #[tokio::test]
    async fn owners_failing_health_checks_are_tried_last() {
        let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let down_addr = down.local_addr().unwrap().to_string();
        drop(down);
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap().to_string();
        let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
        let server = tokio::spawn(async move { axum::serve(live, app).await });
        let config = OriginsConfig::from(MembersConfig {
            source: Source::Static(vec![down_addr.clone(), live_addr.clone()]),
            health: HealthConfig {
                interval: Duration::from_millis(20),
                ..HealthConfig::default()
            },
        });
        let cluster = cluster(config, 2).await;
        let pair = [&down_addr, &live_addr];
        let digest = (0..=255u8)
            .map(|byte| Digest::of(&[byte]))
            .find(|digest| *rendezvous::owners(digest, &pair, 1)[0] == &down_addr)
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while cluster.snapshot().is_healthy(&down_addr) {
            assert!(
                std::time::Instant::now() < deadline,
                "never marked unhealthy"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let owners: Vec<String> = cluster
            .owners(&digest)
            .into_iter()
            .map(|o| o.addr)
            .collect();
        assert_eq!(owners, [live_addr.clone(), down_addr]);
        // Once a healthy owner answered that it lacks the digest, an unhealthy one is not
        // asked: it would only cost the wait for its probe.
        let asked = Mutex::new(Vec::new());
        let missing = cluster
            .read(&digest, |origin| {
                asked.lock().unwrap().push(origin.base().to_owned());
                async { Ok(None::<()>) }
            })
            .await
            .unwrap();
        assert!(missing.is_none());
        assert_eq!(*asked.lock().unwrap(), [format!("http://{live_addr}")]);
        server.abort();
    }

    /// Origins on real sockets: `hung` accept connections (the kernel does, into the listen
    /// backlog) and never answer anything; the others answer their health probes. Health is
    /// probed once at start only, so no owner is marked unhealthy and the rendezvous order
    /// holds; a probe times out after 200 ms.
    struct Ring {
        cluster: OriginCluster,
        hung: Vec<String>,
        _listeners: Vec<std::net::TcpListener>,
        servers: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    }

    impl Ring {
        async fn start(hung: usize, live: usize) -> Ring {
            let mut members = Vec::new();
            let mut listeners = Vec::new();
            for _ in 0..hung {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                members.push(listener.local_addr().unwrap().to_string());
                listeners.push(listener);
            }
            let hung = members.clone();
            let mut servers = Vec::new();
            for _ in 0..live {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                members.push(listener.local_addr().unwrap().to_string());
                let app =
                    axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
                servers.push(tokio::spawn(
                    async move { axum::serve(listener, app).await },
                ));
            }
            let replicas = members.len();
            let config = OriginsConfig::from(MembersConfig {
                source: Source::Static(members),
                health: HealthConfig {
                    interval: Duration::from_secs(3600),
                    timeout: Duration::from_millis(200),
                    ..HealthConfig::default()
                },
            });
            Ring {
                cluster: cluster(config, replicas).await,
                hung,
                _listeners: listeners,
                servers,
            }
        }

        /// A digest whose first owner is hung.
        fn digest_owned_first_by_a_hung_origin(&self) -> Digest {
            (0..=255u8)
                .map(|byte| Digest::of(&[byte]))
                .find(|digest| self.hung.contains(&self.cluster.owners(digest)[0].addr))
                .unwrap()
        }

        fn is_hung(&self, origin: &OriginClient) -> bool {
            self.hung
                .iter()
                .any(|addr| origin.base().ends_with(addr.as_str()))
        }
    }

    impl Drop for Ring {
        fn drop(&mut self) {
            for server in &self.servers {
                server.abort();
            }
        }
    }

    /// Bounds a read that would otherwise wait for a hung origin's request timeout.
    async fn within<T>(read: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .expect("the read waited on a hung origin")
    }

    #[tokio::test]
    async fn a_read_passes_over_an_owner_that_never_answers() {
        let ring = Ring::start(1, 2).await;
        let digest = ring.digest_owned_first_by_a_hung_origin();
        let owners = ring.cluster.owners(&digest);
        let read = ring.cluster.read(&digest, |origin| {
            let hung = ring.is_hung(&origin);
            async move {
                if hung {
                    std::future::pending::<()>().await;
                }
                Ok(Some(origin.base().to_owned()))
            }
        });
        let (found, from) = within(read).await.unwrap().unwrap();
        assert_eq!(found, from.base());
        assert!(found.ends_with(owners[1].addr.as_str()), "{found}");

        // Found hung here, it is asked after the others until it answers again (its health
        // checks have not marked it yet).
        assert!(ring.cluster.snapshot().is_healthy(&owners[0].addr));
        let reordered: Vec<String> = ring
            .cluster
            .owners(&digest)
            .into_iter()
            .map(|o| o.addr)
            .collect();
        assert_eq!(reordered.last(), Some(&owners[0].addr));
        let hung_asked = AtomicUsize::new(0);
        let again = ring.cluster.read(&digest, |origin| {
            if ring.is_hung(&origin) {
                hung_asked.fetch_add(1, Ordering::Relaxed);
            }
            async { Ok(Some(())) }
        });
        within(again).await.unwrap().unwrap();
        assert_eq!(hung_asked.load(Ordering::Relaxed), 0);

        // Every owner that answers lacks it: a miss, without waiting for the hung one.
        let missing = within(ring.cluster.read(&digest, |origin| {
            let hung = ring.is_hung(&origin);
            async move {
                if hung {
                    std::future::pending::<()>().await;
                }
                Ok(None::<()>)
            }
        }))
        .await
        .unwrap();
        assert!(missing.is_none());
    }

    #[tokio::test]
    async fn a_read_of_only_hung_owners_fails_and_names_them() {
        let ring = Ring::start(2, 0).await;
        let digest = Digest::of(b"blob");
        let failure = within(ring.cluster.read(&digest, |_| async {
            std::future::pending::<()>().await;
            Ok(Some(()))
        }))
        .await
        .unwrap_err();
        assert_eq!(failure.failures.len(), 2, "{failure}");
        assert!(
            failure
                .failures
                .iter()
                .all(|(_, error)| matches!(error, ApiError::Unresponsive { .. })),
            "{failure}"
        );
    }

    #[tokio::test]
    async fn a_slow_owner_that_answers_its_probes_keeps_the_read() {
        let ring = Ring::start(0, 2).await;
        let digest = Digest::of(b"slow");
        let first = ring.cluster.owners(&digest)[0].client.base().to_owned();
        let others = AtomicUsize::new(0);
        // Slower than two probe rounds: a pull-through from the backend before the answer.
        let slow = PROBE_AFTER * 5 / 2;
        let (found, _) = ring
            .cluster
            .read(&digest, |origin| {
                let first = origin.base() == first;
                if !first {
                    others.fetch_add(1, Ordering::Relaxed);
                }
                async move {
                    tokio::time::sleep(slow).await;
                    Ok(Some(first))
                }
            })
            .await
            .unwrap()
            .unwrap();
        assert!(found, "answered by another owner");
        assert_eq!(others.into_inner(), 0, "another owner was asked");
    }

    #[tokio::test]
    async fn an_owner_counts_itself_toward_the_quorum() {
        let cluster = cluster(OriginsConfig::fixed(NODES), 3).await;
        for byte in 0..16u8 {
            let digest = Digest::of(&[byte]);
            let owners = rendezvous::owners(&digest, &NODES, 3);
            let outsider = NODES.iter().find(|n| !owners.contains(n)).unwrap();

            let plan = cluster.write_plan(&digest, owners[1], 2);
            let targets: Vec<&str> = plan.targets.iter().map(|o| o.addr.as_str()).collect();
            assert_eq!(targets, [*owners[0], *owners[2]]);
            assert_eq!(plan.needed, 1);

            // A committing origin that is not an owner sends to all R and waits for W.
            let plan = cluster.write_plan(&digest, outsider, 2);
            assert_eq!(plan.targets.len(), 3);
            assert_eq!(plan.needed, 2);
        }
        // W is capped by the owners there are.
        let plan = cluster.write_plan(&Digest::of(b"x"), "elsewhere:1", 8);
        assert_eq!(plan.needed, 3);
    }

    #[tokio::test]
    async fn quorum_writes_answer_once_w_owners_hold_the_blob() {
        let cluster = cluster(OriginsConfig::fixed(NODES), 3).await;
        let digest = Digest::of(b"blob");
        let tasks = TaskTracker::new();
        let owners = cluster.owners(&digest);
        let slow = owners[2].addr.clone();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = Arc::new(Mutex::new(Some(released)));
        // Two fast owners meet W = 2 while the third is still pushing.
        let plan = cluster.write_plan(&digest, "elsewhere:1", 2);
        write_quorum(plan, &tasks, |owner| {
            let wait = (owner.addr == slow).then(|| released.lock().unwrap().take().unwrap());
            async move {
                if let Some(wait) = wait {
                    let _ = wait.await;
                }
                Ok(())
            }
        })
        .await
        .unwrap();
        tasks.close();
        assert!(!tasks.is_empty(), "the third push is still running");
        release.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .unwrap();

        // One owner failing still meets W = 2 of 3; two failing do not.
        for (failing, ok) in [(1, true), (2, false)] {
            let plan = cluster.write_plan(&digest, "elsewhere:1", 2);
            let bad: Vec<String> = owners[..failing].iter().map(|o| o.addr.clone()).collect();
            let result = write_quorum(plan, &TaskTracker::new(), |owner| {
                let fail = bad.contains(&owner.addr);
                async move {
                    if fail {
                        Err(format!("{} down", owner.addr))
                    } else {
                        Ok(())
                    }
                }
            })
            .await;
            assert_eq!(result.is_ok(), ok, "{failing} failing: {result:?}");
            if let Err(error) = result {
                assert_eq!((error.acked, error.needed), (1, 2));
                assert_eq!(error.failures.len(), 2);
            }
        }
    }
}
