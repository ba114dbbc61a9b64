//! Replication of committed blobs across the origin ring. A blob is owned by the first R origins
//! of its rendezvous ranking; the origin that commits it (from an upload session or a whole-blob
//! `PUT`) streams it from its store to every other owner (`PUT /blobs/{digest}?replica=true`),
//! and the commit is acknowledged only once W owners hold the verified blob. The pushes still
//! running at that point finish in the background.
//!
//! Every push is also a job on a durable `shoal_jobs` queue (`<data_dir>/replication/`, one
//! marker per blob and owner) from the moment the replication is decided: an owner that is down
//! or misses the push gets the blob once it is back, across restarts of this origin. An owner
//! that lacks a blob all the same (it joined after the blob was written) fills in from the other
//! owners' stores before it falls back to the backend.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use futures::future::try_join_all;
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};
use shoal_api::cluster::{Owner, WritePlan, write_quorum};
use shoal_api::relay::{Refetch, resuming_body};
use shoal_api::{OriginClient, OriginCluster};
use shoal_core::{Digest, ErrorCode, Name};
use shoal_jobs::{Failure, Job, JobsError, Queue, RetryPolicy, Stats};
use shoal_membership::{MembershipError, MembershipMetrics};
use shoal_service::{CancellationToken, TaskTracker};
use shoal_storage::{BlobStore, ByteStream};

use crate::config::ClusterConfig;
use crate::errors::ApiError;

/// Retries of the replica push a commit waits on, under the shared policy: a peer that restarts
/// or blips gets three attempts, half a second and then about a second apart, before the push is
/// left to the queue.
const PUSH_RETRY: RetryPolicy = RetryPolicy {
    min_delay: Duration::from_millis(500),
    max_delay: Duration::from_secs(2),
    max_attempts: Some(3),
};
/// Retries of a queued replica push: an owner that is down is tried again forever (until it is
/// no longer an owner), at least once a minute, so it gets its blobs within a minute of its return.
const QUEUE_RETRY: RetryPolicy = RetryPolicy {
    min_delay: Duration::from_secs(1),
    max_delay: Duration::from_secs(60),
    max_attempts: None,
};
/// Queued replica pushes at once: a returning owner is filled a few blobs at a time, without one
/// origin's backlog saturating its link.
const QUEUE_CONCURRENCY: usize = 4;

/// This origin's view of the ring, through the one origin-cluster client: owners are ranked
/// over the live membership, so a member that appears in DNS becomes an owner at once (and
/// fills in on demand), and members whose health checks fail are tried last.
#[derive(Debug)]
pub(crate) struct Ring {
    me: String,
    cluster: OriginCluster,
    quorum: usize,
    /// Where replica pushes run, so shutdown waits for those still going after an acknowledgement.
    tasks: TaskTracker,
    /// Every push not yet confirmed, durable until it is.
    queue: Arc<Queue<ReplicaPush>>,
    /// Bytes pushed to other owners (`shoal_origin_egress_bytes_total{reason="replication"}`).
    replicated: Counter,
}

/// One blob for one other owner: a queued replica push.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Replica {
    digest: Digest,
    namespace: Option<Name>,
    /// The owner's member address.
    to: String,
}

impl Replica {
    /// `<hex>-<16 hex of the owner address's sha256>`: a plain file name per blob and owner.
    fn key(&self) -> String {
        let to = Digest::of(self.to.as_bytes()).hex();
        format!("{}-{}", self.digest.hex(), &to[..16])
    }
}

/// Pushing a stored blob to one other owner.
#[derive(Debug)]
struct ReplicaPush {
    store: Arc<BlobStore>,
    cluster: OriginCluster,
    replicated: Counter,
}

impl Job for ReplicaPush {
    type Payload = Replica;
    const NAME: &'static str = "replica push";

    fn key(replica: &Replica) -> String {
        replica.key()
    }

    async fn run(&self, replica: &Replica) -> Result<(), Failure> {
        let Replica { digest, to, .. } = replica;
        // The ring may have changed since (a member removed, or one that outranks it added):
        // whoever owns the blob now fills in on demand.
        let owners = self.cluster.owners(digest);
        let Some(owner) = owners.into_iter().find(|owner| owner.addr == *to) else {
            tracing::info!(%digest, %to, "no longer an owner: replica push dropped");
            return Ok(());
        };
        match push_once(
            &self.store,
            &owner.client,
            digest,
            replica.namespace.as_ref(),
            &self.replicated,
        )
        .await
        {
            Ok(()) => {
                tracing::info!(%digest, %to, "replicated from the queue");
                Ok(())
            }
            Err(PushFailure::Peer(message)) => Err(Failure::retry(message)),
            Err(PushFailure::Store(message)) => Err(Failure::permanent(message)),
        }
    }
}

impl Ring {
    /// Follows `config.origins` and runs the queued replica pushes kept in `queue_dir` until
    /// `shutdown`; `None` when the origin is configured alone. `config` must have been validated.
    pub(crate) async fn start(
        http: &reqwest::Client,
        config: &ClusterConfig,
        store: Arc<BlobStore>,
        queue_dir: impl Into<PathBuf>,
        metrics: &MembershipMetrics,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Option<Ring>, RingError> {
        if config.origins.is_empty() {
            return Ok(None);
        }
        let queue = Queue::open(queue_dir, QUEUE_RETRY, QUEUE_CONCURRENCY).await?;
        let cluster = OriginCluster::start(
            http.clone(),
            &config.origins,
            config.replicas,
            metrics,
            shutdown.clone(),
            tasks,
        )
        .await?;
        let queue = Arc::new(queue);
        let replicated = Counter::default();
        let job = ReplicaPush {
            store,
            cluster: cluster.clone(),
            replicated: replicated.clone(),
        };
        tasks.spawn(queue.clone().run(Arc::new(job), shutdown));
        Ok(Some(Ring {
            me: config.advertise.clone(),
            cluster,
            quorum: config.write_quorum,
            tasks: tasks.clone(),
            queue,
            replicated,
        }))
    }

    /// This origin's share of each blob's pieces for super-seeding (`shoal_p2p::ShareOf`): its
    /// place among the blob's owners that pass their health checks. Every owner computes the
    /// same owners from the same ring, so their shares are disjoint; an owner found hung drops
    /// out, so that its share is sent by the others instead of waiting on requests that insist.
    /// A piece left out (owners or their health seen differently for a moment) is still served
    /// to a request that insists.
    pub(crate) fn share_of(&self) -> shoal_p2p::ShareOf {
        let cluster = self.cluster.clone();
        let me = self.me.clone();
        Arc::new(move |digest| {
            let snapshot = cluster.snapshot();
            let owners: Vec<Owner> = cluster
                .owners(digest)
                .into_iter()
                .filter(|owner| snapshot.is_healthy(&owner.addr))
                .collect();
            let index = owners.iter().position(|owner| owner.addr == me)?;
            Some((
                u32::try_from(index).ok()?,
                u32::try_from(owners.len()).ok()?,
            ))
        })
    }

    /// Bytes pushed to the other owners so far (the counter itself, for metrics).
    pub(crate) fn replicated(&self) -> Counter {
        self.replicated.clone()
    }

    /// Drops every queued push of `digest` (garbage collection is deleting it).
    pub(crate) async fn drop_pushes(&self, digest: &Digest) -> Result<(), shoal_jobs::JobsError> {
        for replica in self.queue.payloads() {
            if replica.digest == *digest {
                self.queue.remove(&replica.key()).await?;
            }
        }
        Ok(())
    }

    /// The blobs with replica pushes still queued, for eviction to keep.
    pub(crate) fn pending_pushes(&self) -> PendingPushes {
        PendingPushes(self.queue.clone())
    }

    /// This origin's entry, every member of the ring with whether its health checks pass, and
    /// the replica pushes still queued (`GET /admin/status`).
    pub(crate) fn status(&self) -> (&str, Vec<(String, bool)>, usize) {
        let snapshot = self.cluster.snapshot();
        let members = snapshot
            .members()
            .iter()
            .map(|m| (m.clone(), snapshot.is_healthy(m)))
            .collect();
        let stats = self.queue.stats();
        (&self.me, members, stats.queued + stats.running)
    }

    /// A reading of the replica-push queue for metrics.
    pub(crate) fn queue_stats(&self) -> impl Fn() -> Stats + Send + Sync + 'static {
        let queue = self.queue.clone();
        move || queue.stats()
    }

    /// The owners of `digest` other than this origin, and how many of them must confirm before
    /// a commit here is acknowledged.
    fn plan(&self, digest: &Digest) -> WritePlan {
        self.cluster.write_plan(digest, &self.me, self.quorum)
    }

    /// A stream of `digest` from the first other owner whose store has it, with its length;
    /// `None` when no peer has it. Peers that fail or hang are passed over, and a body that
    /// breaks off or stops (its peer hung) goes on from the next owner where it stopped.
    pub(crate) async fn fetch_from_peers(&self, digest: &Digest) -> Option<(u64, ByteStream)> {
        let (response, origin) = from_peers(&self.cluster, &self.me, digest, None).await?;
        let len = response.content_length()?;
        let refetch: Refetch = {
            let (cluster, me, digest) = (self.cluster.clone(), self.me.clone(), *digest);
            Box::new(move |range| {
                let (cluster, me) = (cluster.clone(), me.clone());
                Box::pin(async move { Ok(from_peers(&cluster, &me, &digest, Some(&range)).await) })
            })
        };
        let body = resuming_body(self.cluster.clone(), *digest, response, origin, refetch);
        Some((len, body))
    }
}

/// `GET` of `digest` (or `range` of it) from the store of the first owner other than `me` that
/// holds it ([`OriginCluster::ask_in_turn`]); `None` when none answers that it does.
async fn from_peers(
    cluster: &OriginCluster,
    me: &str,
    digest: &Digest,
    range: Option<&str>,
) -> Option<(reqwest::Response, OriginClient)> {
    let peers = cluster
        .owners(digest)
        .into_iter()
        .filter(|owner| owner.addr != me)
        .collect();
    let asked = cluster
        .ask_in_turn(peers, |peer| async move {
            peer.get_replica(digest, range).await
        })
        .await;
    match asked {
        Ok(found) => found.map(|(response, peer)| (response, peer.client)),
        Err(failure) => {
            tracing::warn!(%digest, %failure, "no peer origin answered for fill-in");
            None
        }
    }
}

/// The replica-push queue as eviction sees it: which blobs it still has to read from the store.
#[derive(Debug, Clone)]
pub(crate) struct PendingPushes(Arc<Queue<ReplicaPush>>);

impl PendingPushes {
    /// Every blob with a push to some owner not yet confirmed.
    pub(crate) fn digests(&self) -> impl Iterator<Item = Digest> {
        self.0.payloads().into_iter().map(|replica| replica.digest)
    }
}

/// Why the ring could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RingError {
    #[error(transparent)]
    Membership(#[from] MembershipError),
    #[error("opening the replica-push queue: {0}")]
    Queue(#[from] JobsError),
}

/// Copies the committed `digest` to its other owners and returns once enough of them hold it.
pub(crate) async fn replicate(
    ring: &Ring,
    store: &Arc<BlobStore>,
    digest: &Digest,
    namespace: Option<&Name>,
) -> Result<(), ApiError> {
    let plan = ring.plan(digest);
    let replica = |to: &str| Replica {
        digest: *digest,
        namespace: namespace.cloned(),
        to: to.to_owned(),
    };
    // Every push is durable before it starts, so before the commit is answered and whatever
    // happens next: a crash mid-push or after the acknowledgement, or a quorum that fails (the
    // blob stays committed here), leaves a marker for each owner that has not confirmed, and
    // the queue pushes it after the restart. A marker written only after the quorum would miss
    // a crash between the acknowledgement and its write. The markers are held: the queue
    // takes over a push only once the direct attempt below has failed.
    let markers = plan
        .targets
        .iter()
        .map(|target| ring.queue.enqueue_held(replica(&target.addr)));
    try_join_all(markers).await?;
    // Each push is its own task so that it completes after the acknowledgement too (and
    // shutdown waits for it: a push cut off keeps its marker and runs after the restart).
    write_quorum(plan, &ring.tasks, |target| {
        let key = replica(&target.addr).key();
        let (store, queue, digest, namespace, replicated) = (
            store.clone(),
            ring.queue.clone(),
            *digest,
            namespace.cloned(),
            ring.replicated.clone(),
        );
        async move {
            let result = push(
                &store,
                &target.client,
                &digest,
                namespace.as_ref(),
                &replicated,
            )
            .await;
            match &result {
                Ok(()) => {
                    tracing::info!(%digest, to = %target.addr, "replicated");
                    if let Err(error) = queue.remove(&key).await {
                        // The queued push runs once more; the owner answers it at once.
                        tracing::warn!(%digest, %error, "cannot drop a replica push that is done");
                    }
                }
                Err(error) => {
                    tracing::warn!(%digest, to = %target.addr, %error, "replication failed; queued for retries");
                    queue.release(&key);
                }
            }
            result
        }
    })
    .await
    .map_err(|error| ApiError::new(ErrorCode::Unavailable, format!("{digest} {error}")))
}

/// Why one replica push attempt failed.
enum PushFailure {
    /// The peer failed: another attempt may succeed.
    Peer(String),
    /// The blob cannot be read here: no attempt will.
    Store(String),
}

/// Streams the stored blob to one peer, retrying under [`PUSH_RETRY`] while the peer fails.
async fn push(
    store: &BlobStore,
    client: &OriginClient,
    digest: &Digest,
    namespace: Option<&Name>,
    replicated: &Counter,
) -> Result<(), String> {
    PUSH_RETRY
        .retry(
            || push_once(store, client, digest, namespace, replicated),
            |failure| matches!(failure, PushFailure::Peer(_)),
        )
        .await
        .map_err(|(PushFailure::Peer(message) | PushFailure::Store(message))| message)
}

/// One attempt: streams the stored blob to one peer.
async fn push_once(
    store: &BlobStore,
    client: &OriginClient,
    digest: &Digest,
    namespace: Option<&Name>,
    replicated: &Counter,
) -> Result<(), PushFailure> {
    let file = match store.open_blob(digest).await {
        Ok(Some(file)) => file,
        Ok(None) => {
            return Err(PushFailure::Store(format!(
                "{digest} is no longer in the store"
            )));
        }
        Err(error) => return Err(PushFailure::Store(format!("opening {digest}: {error}"))),
    };
    let len = file.len();
    let replicated = replicated.clone();
    // Counted as the bytes are read for sending: a push cut off counts what it sent.
    let sent = file.stream(0..len).inspect_ok(move |chunk| {
        replicated.inc_by(chunk.len() as u64);
    });
    let body = reqwest::Body::wrap_stream(sent);
    client
        .put_replica(digest, namespace, body)
        .await
        .map_err(|error| {
            tracing::debug!(%digest, to = client.base(), %error, "replica push failed");
            PushFailure::Peer(format!("{}: {error}", client.base()))
        })
}

#[cfg(test)]
mod tests {
    use shoal_api::OriginsConfig;
    use shoal_core::rendezvous;

    use super::*;

    /// A ring of four with `me` in it, and the directory holding its queue.
    async fn ring(me: &str, replicas: usize, quorum: usize) -> (tempfile::TempDir, Ring) {
        let config = ClusterConfig {
            origins: OriginsConfig::fixed(["a:1", "b:1", "c:1", "d:1"]),
            advertise: me.into(),
            replicas,
            write_quorum: quorum,
        };
        let http = shoal_service::client::builder().build().expect("client");
        let metrics = MembershipMetrics::default();
        let dir = tempfile::tempdir().expect("tempdir");
        let store = BlobStore::open(dir.path().join("store"))
            .await
            .expect("store");
        let ring = Ring::start(
            &http,
            &config,
            Arc::new(store),
            dir.path().join("replication"),
            &metrics,
            CancellationToken::new(),
            &TaskTracker::new(),
        )
        .await
        .expect("start")
        .expect("ring");
        (dir, ring)
    }

    #[tokio::test]
    async fn an_owner_counts_itself_toward_the_quorum() {
        let nodes = ["a:1", "b:1", "c:1", "d:1"];
        for byte in 0..16u8 {
            let digest = Digest::of(&[byte]);
            let owners = rendezvous::owners(&digest, &nodes, 3);
            let outsider = nodes.iter().find(|n| !owners.contains(n)).expect("4 > 3");

            let (_dir, owner) = ring(owners[1], 3, 2).await;
            let plan = owner.plan(&digest);
            let addrs: Vec<&str> = plan.targets.iter().map(|m| m.addr.as_str()).collect();
            assert_eq!(addrs, [*owners[0], *owners[2]]);
            assert_eq!(plan.needed, 1);

            // A session origin that is not an owner sends to all R and waits for W of them.
            let (_dir, outside) = ring(outsider, 3, 2).await;
            let plan = outside.plan(&digest);
            assert_eq!(plan.targets.len(), 3);
            assert_eq!(plan.needed, 2);
        }
    }

    #[tokio::test]
    async fn queued_pushes_are_pending_until_removed() {
        let (_dir, ring) = ring("a:1", 3, 2).await;
        let digest = Digest::of(b"late owner");
        let replica = Replica {
            digest,
            namespace: None,
            to: "b:1".into(),
        };
        assert_eq!(ring.pending_pushes().digests().count(), 0);
        ring.queue
            .enqueue_held(replica.clone())
            .await
            .expect("enqueue");
        let pending: Vec<Digest> = ring.pending_pushes().digests().collect();
        assert_eq!(pending, [digest]);
        ring.queue.remove(&replica.key()).await.expect("remove");
        assert_eq!(ring.pending_pushes().digests().count(), 0);
    }

    #[tokio::test]
    async fn the_quorum_is_capped_by_the_ring_size() {
        let digest = Digest::of(b"x");
        let (_dir, small) = ring("a:1", 8, 8).await;
        let plan = small.plan(&digest);
        assert_eq!(plan.targets.len(), 3);
        assert_eq!(plan.needed, 3);
    }
}
