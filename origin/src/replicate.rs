//! Replication of committed blobs across the origin ring. A blob is owned by the first R origins
//! of its rendezvous ranking; the origin that commits it (from an upload session or a whole-blob
//! `PUT`) streams it from its store to every other owner (`PUT /blobs/{digest}?replica=true`),
//! and the commit is acknowledged only once W owners hold the verified blob. The pushes still
//! running at that point finish in the background. An owner that lacks a blob (it joined after
//! the blob was written, or missed the push) fills in from the other owners' stores before it
//! falls back to the backend.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use shoal_api::OriginClient;
use shoal_api::OriginCluster;
use shoal_api::cluster::{WritePlan, write_quorum};
use shoal_core::{Digest, ErrorCode, Name};
use shoal_jobs::RetryPolicy;
use shoal_membership::{MembershipError, MembershipMetrics};
use shoal_service::{CancellationToken, TaskTracker};
use shoal_storage::{BlobStore, ByteStream};

use crate::config::ClusterConfig;
use crate::errors::ApiError;

/// Retries of one replica push, under the shared policy: a peer that restarts or blips gets three
/// attempts, half a second and then about a second apart, before the blob is left to be filled
/// in on demand.
const PUSH_RETRY: RetryPolicy = RetryPolicy {
    min_delay: Duration::from_millis(500),
    max_delay: Duration::from_secs(2),
    max_attempts: Some(3),
};

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
}

impl Ring {
    /// Follows `config.origins`; `None` when the origin is configured alone. `config` must have
    /// been validated.
    pub(crate) async fn start(
        http: &reqwest::Client,
        config: &ClusterConfig,
        metrics: &MembershipMetrics,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Option<Ring>, MembershipError> {
        if config.origins.is_empty() {
            return Ok(None);
        }
        let cluster = OriginCluster::start(
            http.clone(),
            &config.origins,
            config.replicas,
            metrics,
            shutdown,
            tasks,
        )
        .await?;
        Ok(Some(Ring {
            me: config.advertise.clone(),
            cluster,
            quorum: config.write_quorum,
            tasks: tasks.clone(),
        }))
    }

    /// The owners of `digest` other than this origin, and how many of them must confirm before
    /// a commit here is acknowledged.
    fn plan(&self, digest: &Digest) -> WritePlan {
        self.cluster.write_plan(digest, &self.me, self.quorum)
    }

    /// A stream of `digest` from the first other owner whose store has it, with its length.
    /// Failing peers are skipped; `None` when no peer has it.
    pub(crate) async fn fetch_from_peers(&self, digest: &Digest) -> Option<(u64, ByteStream)> {
        for peer in self.plan(digest).targets {
            match peer.client.get_replica(digest).await {
                Ok(Some(response)) => {
                    let Some(len) = response.content_length() else {
                        continue;
                    };
                    let stream = response.bytes_stream().map_err(io::Error::other).boxed();
                    return Some((len, stream));
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%digest, peer = %peer.addr, %error, "peer origin unavailable for fill-in");
                }
            }
        }
        None
    }
}

/// Copies the committed `digest` to its other owners and returns once enough of them hold it.
pub(crate) async fn replicate(
    ring: &Ring,
    store: &Arc<BlobStore>,
    digest: &Digest,
    namespace: Option<&Name>,
) -> Result<(), ApiError> {
    // Each push is its own task so that it completes after the acknowledgement too (and
    // shutdown waits for it: a push cut off would leave the owner to fill in on demand).
    write_quorum(ring.plan(digest), &ring.tasks, |target| {
        let (store, digest, namespace) = (store.clone(), *digest, namespace.cloned());
        async move {
            let result = push(&store, &target.client, &digest, namespace.as_ref()).await;
            match &result {
                Ok(()) => tracing::info!(%digest, to = %target.addr, "replicated"),
                Err(error) => {
                    tracing::warn!(%digest, to = %target.addr, %error, "replication failed")
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
) -> Result<(), String> {
    let attempt = || async {
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
        let body = reqwest::Body::wrap_stream(file.stream(0..len));
        client
            .put_replica(digest, namespace, body)
            .await
            .map_err(|error| {
                tracing::debug!(%digest, to = client.base(), %error, "replica push failed");
                PushFailure::Peer(format!("{}: {error}", client.base()))
            })
    };
    PUSH_RETRY
        .retry(attempt, |failure| matches!(failure, PushFailure::Peer(_)))
        .await
        .map_err(|(PushFailure::Peer(message) | PushFailure::Store(message))| message)
}

#[cfg(test)]
mod tests {
    use shoal_api::OriginsConfig;
    use shoal_core::rendezvous;

    use super::*;

    async fn ring(me: &str, replicas: usize, quorum: usize) -> Ring {
        let config = ClusterConfig {
            origins: OriginsConfig::fixed(["a:1", "b:1", "c:1", "d:1"]),
            advertise: me.into(),
            replicas,
            write_quorum: quorum,
        };
        let http = shoal_service::client::builder().build().expect("client");
        let metrics = MembershipMetrics::default();
        Ring::start(
            &http,
            &config,
            &metrics,
            CancellationToken::new(),
            &TaskTracker::new(),
        )
        .await
        .expect("start")
        .expect("ring")
    }

    #[tokio::test]
    async fn an_owner_counts_itself_toward_the_quorum() {
        let nodes = ["a:1", "b:1", "c:1", "d:1"];
        for byte in 0..16u8 {
            let digest = Digest::of(&[byte]);
            let owners = rendezvous::owners(&digest, &nodes, 3);
            let outsider = nodes.iter().find(|n| !owners.contains(n)).expect("4 > 3");

            let owner = ring(owners[1], 3, 2).await;
            let plan = owner.plan(&digest);
            let addrs: Vec<&str> = plan.targets.iter().map(|m| m.addr.as_str()).collect();
            assert_eq!(addrs, [*owners[0], *owners[2]]);
            assert_eq!(plan.needed, 1);

            // A session origin that is not an owner sends to all R and waits for W of them.
            let outside = ring(outsider, 3, 2).await;
            let plan = outside.plan(&digest);
            assert_eq!(plan.targets.len(), 3);
            assert_eq!(plan.needed, 2);
        }
    }

    #[tokio::test]
    async fn the_quorum_is_capped_by_the_ring_size() {
        let digest = Digest::of(b"x");
        let small = ring("a:1", 8, 8).await;
        let plan = small.plan(&digest);
        assert_eq!(plan.targets.len(), 3);
        assert_eq!(plan.needed, 3);
    }
}
