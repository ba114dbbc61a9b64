//! The live member list of a group of nodes (the origin ring, build-index nodes), from a static
//! list or a DNS name, with active `GET /health` checks.
//!
//! [`Membership::start`] spawns one task per group (on the caller's [`TaskTracker`]) that re-resolves the DNS name every
//! `dns.interval` (keeping the last good answer when resolution fails or comes back empty) and
//! probes every member every `health.interval`. Each change is published as a new immutable
//! [`Snapshot`]: readers take one with [`Membership::snapshot`] (an `Arc` clone) and can await
//! the next with [`Membership::changed`].

mod config;
mod dns;
mod health;
mod metrics;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{DnsConfig, HealthConfig, MembersConfig, Scheme, Source, Written};
pub use health::Health;
pub use metrics::MembershipMetrics;

use dns::Dns;

/// Why a group's membership could not be started.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("setting up the DNS resolver for {name:?}: {source}")]
    Resolver {
        name: String,
        source: hickory_resolver::net::NetError,
    },
}

/// One published view of a group.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    members: Vec<String>,
    unhealthy: BTreeSet<String>,
}

impl Snapshot {
    /// Every member: a static list in its configured order, DNS answers sorted.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// The members whose health checks pass, in [`Snapshot::members`] order.
    pub fn healthy(&self) -> impl Iterator<Item = &String> {
        self.members.iter().filter(|m| !self.unhealthy.contains(*m))
    }

    /// False only for a member whose last `fall` probes failed (and unknown addresses).
    pub fn is_healthy(&self, member: &str) -> bool {
        self.members.iter().any(|m| m == member) && !self.unhealthy.contains(member)
    }

    /// `members` reordered so that healthy ones come first; order is otherwise kept. Callers
    /// pass a rendezvous ranking and get the order to try them in.
    pub fn healthy_first<'m, M: AsRef<str>>(&self, members: Vec<&'m M>) -> Vec<&'m M> {
        let (mut ordered, unhealthy): (Vec<&M>, Vec<&M>) = members
            .into_iter()
            .partition(|m| !self.unhealthy.contains(m.as_ref()));
        ordered.extend(unhealthy);
        ordered
    }
}

/// A handle on a group's live membership; clones share the background task, which stops at
/// `shutdown` or when the last handle is dropped.
#[derive(Clone, Debug)]
pub struct Membership {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    http: reqwest::Client,
    health: HealthConfig,
}

impl Membership {
    /// Starts following `config` for the group named `group` (a metrics label, e.g.
    /// `"origins"`). A DNS source is resolved once before this returns, so the first snapshot
    /// already holds the members when DNS answers. `http` sends the health probes. The group's
    /// task runs on `tasks` until `shutdown`.
    pub async fn start(
        group: &'static str,
        config: &MembersConfig,
        http: reqwest::Client,
        metrics: &MembershipMetrics,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Membership, MembershipError> {
        let mut group_state = Group {
            name: group,
            members: BTreeMap::new(),
            order: Vec::new(),
            health: config.health,
            metrics: metrics.clone(),
        };
        let dns = match &config.source {
            Source::Static(members) => {
                group_state.set_members(members.clone());
                None
            }
            Source::Dns(dns) => {
                let resolver = Dns::new(dns)?;
                group_state.resolve(&resolver).await;
                Some((resolver, dns.interval))
            }
        };
        let (tx, snapshots) = watch::channel(Arc::new(group_state.snapshot()));
        group_state.publish_metrics();
        tasks.spawn(group_state.run(dns, http.clone(), tx, shutdown));
        Ok(Membership {
            snapshots,
            http,
            health: config.health,
        })
    }

    /// Probes `member` once, now, as the periodic checks do; the verdict is not recorded. A
    /// caller waiting long on a member asks this to tell a busy member from a hung one.
    pub async fn probe(&self, member: &str) -> bool {
        probe(&self.http, member, self.health.timeout).await
    }

    /// The current view (cheap: an `Arc` clone).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// Waits until the view differs from the last one this handle saw, and returns it. `None`
    /// once the group has stopped.
    pub async fn changed(&mut self) -> Option<Arc<Snapshot>> {
        self.snapshots.changed().await.ok()?;
        Some(self.snapshots.borrow_and_update().clone())
    }
}

/// The background task's state of one group.
struct Group {
    name: &'static str,
    /// Every current member's health.
    members: BTreeMap<String, Health>,
    /// The members in published order.
    order: Vec<String>,
    health: HealthConfig,
    metrics: MembershipMetrics,
}

impl Group {
    async fn run(
        mut self,
        dns: Option<(Dns, Duration)>,
        http: reqwest::Client,
        tx: watch::Sender<Arc<Snapshot>>,
        shutdown: CancellationToken,
    ) {
        let mut probes = tokio::time::interval(self.health.interval);
        probes.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first resolution happened in `start`; a static source never re-resolves.
        let resolve_every = dns
            .as_ref()
            .map_or(self.health.interval, |(_, every)| *every);
        let mut resolves = tokio::time::interval_at(Instant::now() + resolve_every, resolve_every);
        resolves.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tx.closed() => return,
                _ = probes.tick() => self.probe(&http).await,
                _ = resolves.tick(), if dns.is_some() => {
                    if let Some((dns, _)) = &dns {
                        self.resolve(dns).await;
                    }
                }
            }
            let snapshot = self.snapshot();
            tx.send_if_modified(|current| {
                if **current == snapshot {
                    return false;
                }
                *current = Arc::new(snapshot);
                true
            });
            self.publish_metrics();
        }
    }

    async fn resolve(&mut self, dns: &Dns) {
        match dns.resolve().await {
            Ok(members) => self.set_members(members),
            Err(error) if self.order.is_empty() => {
                tracing::warn!(group = self.name, %error, "DNS resolution failed; no members yet");
            }
            Err(error) => {
                tracing::warn!(group = self.name, %error, kept = self.order.len(), "DNS resolution failed; keeping the last good members");
            }
        }
    }

    /// Replaces the member list; members that stay keep their health, new ones start healthy.
    fn set_members(&mut self, members: Vec<String>) {
        if members != self.order {
            tracing::info!(group = self.name, ?members, "members changed");
        }
        let mut previous = std::mem::take(&mut self.members);
        self.members = members
            .iter()
            .map(|m| (m.clone(), previous.remove(m).unwrap_or_default()))
            .collect();
        self.order = members;
    }

    /// Probes every member once, concurrently, and feeds the results to their state machines.
    async fn probe(&mut self, http: &reqwest::Client) {
        let timeout = self.health.timeout;
        let results = join_all(
            self.order
                .iter()
                .map(|member| async move { (member.clone(), probe(http, member, timeout).await) }),
        )
        .await;
        let HealthConfig { fall, rise, .. } = self.health;
        for (member, ok) in results {
            if let Some(health) = self.members.get_mut(&member)
                && health.observe(ok, fall, rise)
            {
                if ok {
                    tracing::info!(group = self.name, %member, "member is healthy again");
                } else {
                    tracing::warn!(group = self.name, %member, fall, "member is unhealthy");
                }
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            members: self.order.clone(),
            unhealthy: self
                .members
                .iter()
                .filter(|(_, health)| !health.is_healthy())
                .map(|(member, _)| member.clone())
                .collect(),
        }
    }

    fn publish_metrics(&self) {
        let healthy = self.members.values().filter(|h| h.is_healthy()).count();
        self.metrics.set(self.name, self.order.len(), healthy);
    }
}

/// Whether `member` (`host:port` or a base URL) answers `GET /health` with a 2xx within
/// `timeout`: the one health probe, of members here and of single servers elsewhere.
pub async fn probe(http: &reqwest::Client, member: &str, timeout: Duration) -> bool {
    let outcome = tokio::time::timeout(timeout, http.get(health_url(member)).send()).await;
    matches!(&outcome, Ok(Ok(response)) if response.status().is_success())
}

/// Members are written `host:port` (plain HTTP) or with their scheme.
fn health_url(member: &str) -> String {
    format!("{}/health", shoal_http_client::base_url(member, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_urls_accept_both_address_forms() {
        assert_eq!(health_url("a:1"), "http://a:1/health");
        assert_eq!(health_url("http://a:1/"), "http://a:1/health");
        assert_eq!(health_url("https://a:1"), "https://a:1/health");
        assert_eq!(health_url("[::1]:1"), "http://[::1]:1/health");
    }

    #[test]
    fn snapshots_order_healthy_members_first() {
        let snapshot = Snapshot {
            members: vec!["a".into(), "b".into(), "c".into()],
            unhealthy: BTreeSet::from(["a".to_owned()]),
        };
        assert_eq!(snapshot.healthy().collect::<Vec<_>>(), ["b", "c"]);
        assert!(!snapshot.is_healthy("a"));
        assert!(snapshot.is_healthy("b"));
        assert!(!snapshot.is_healthy("z"));
        let ranking = ["c".to_owned(), "a".to_owned(), "b".to_owned()];
        let ordered = snapshot.healthy_first(ranking.iter().collect());
        assert_eq!(ordered, [&ranking[0], &ranking[2], &ranking[1]]);
    }
}
