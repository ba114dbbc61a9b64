//! The Shoal tracker: which peers hold which blob, and the blobs' metainfo. Peers announce each
//! blob they download or seed and get back a sample of its swarm (the owning origins first) and
//! when to announce again; `GetMetainfo` serves piece hashes, fetched from the owning origins and
//! cached. The gRPC `Tracker` service and `/health`, `/metrics` share one listener (HTTP/1 and
//! h2c). Announces are held to rate limits per peer and per address, and the peer store to caps
//! on records per swarm and in total (`config.limits`). Contracts: `docs/p2p.md` ("tracker")
//! and `proto/proto/shoal/v1/tracker.proto`.

mod addr;
pub mod config;
mod error;
mod handout;
mod limits;
mod metainfo;
mod metrics;
mod origins;
mod peers;
mod service;
mod view;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shoal_core::chain;
use shoal_proto::v1::tracker_server::TrackerServer;
use shoal_service::http::{Access, AdminListener, with_access, with_readiness};
use shoal_service::shutdown::DRAIN_DEADLINE;
use shoal_service::tls::{ComponentTls, Role, Roles};
use shoal_service::{CancellationToken, MetricsBuilder, Readiness, TaskTracker};
use tokio::net::TcpListener;

pub use config::{
    InvalidConfig, LimitsConfig, OriginAddrs, OriginsConfig, RateConfig, StoreConfig,
    TrackerConfig, ViewConfig,
};
pub use error::RETRY_PUSHBACK;
pub use peers::{
    Admission, Announced, MemoryStore, PeerRecord, PeerStore, RecordLimits, RedisStore, StoreError,
};

use crate::limits::{AnnounceLimiter, PRUNE_INTERVAL};

/// Metainfo of a blob the origin must first pull through from the backend and hash can take a
/// while for multi-gigabyte layers; beyond this the origin is treated as unavailable.
const ORIGIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// A dead origin must not stall failover to the next owner.
const ORIGIN_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest gRPC request decoded. The largest valid request (an announce with a 255-byte
/// namespace, a 64-byte peer id and a 259-byte address) is well under 1 KiB; anything bigger is
/// refused from its length prefix, before it is buffered.
const MAX_REQUEST_SIZE: usize = 4 * 1024;

/// The checks a request passes before it reaches the limiter, the peer store or the origins,
/// for the fuzz targets (`fuzz/`); the service itself calls the same functions.
#[doc(hidden)]
pub mod fuzzing {
    use shoal_core::{Digest, Name};
    use shoal_proto::v1::{AnnounceRequest, MetainfoRequest};
    use tonic::Status;

    use crate::PeerRecord;

    /// Longer requests are refused before they are decoded.
    pub const MAX_REQUEST_SIZE: usize = super::MAX_REQUEST_SIZE;

    pub fn parse_announce(request: AnnounceRequest) -> Result<(Digest, PeerRecord), Status> {
        crate::service::parse_announce(request)
            .map(|announce| (announce.digest, announce.peer))
            .map_err(Status::from)
    }

    pub fn parse_metainfo_request(
        request: &MetainfoRequest,
    ) -> Result<(Digest, Option<Name>), Status> {
        crate::service::parse_metainfo_request(request).map_err(Status::from)
    }
}

/// The socket the tracker serves on, bound by the caller (tests bind `127.0.0.1:0`).
pub struct Listeners {
    pub grpc: TcpListener,
}

/// Serves the tracker until `shutdown` is cancelled, then finishes in-flight requests and waits
/// (at most [`DRAIN_DEADLINE`]) for its background tasks: the origins' health checks and the
/// pruning of rate-limit buckets.
pub async fn run(
    config: TrackerConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let record_limits = RecordLimits {
        per_swarm: config.limits.peers_per_digest,
        total: config.limits.records,
    };
    let store: Arc<dyn PeerStore> = match &config.store {
        StoreConfig::Memory => Arc::new(MemoryStore::new(config.peer_ttl, record_limits)),
        StoreConfig::Redis { url } => Arc::new(
            RedisStore::connect(url, config.peer_ttl, record_limits)
                .await
                .context("connecting to the redis peer store (config field `store.redis.url`)")?,
        ),
    };
    let tls = ComponentTls::load(config.tls.as_ref()).context("loading the TLS certificate")?;
    let http = tls
        .client(Roles::of(&[Role::Origin]))
        .timeout(ORIGIN_REQUEST_TIMEOUT)
        .connect_timeout(ORIGIN_CONNECT_TIMEOUT)
        .build()
        .context("building the origin HTTP client")?;
    let mut registry = MetricsBuilder::new("tracker");
    let metrics = metrics::TrackerMetrics::register(registry.registry());
    let membership_metrics = shoal_membership::MembershipMetrics::register(registry.registry());
    let tasks = TaskTracker::new();
    let origins = Arc::new(
        origins::Origins::start(
            &http,
            &config.origins,
            config.replicas,
            &membership_metrics,
            shutdown.clone(),
            &tasks,
        )
        .await?,
    );
    let capacity = NonZeroUsize::new(config.metainfo_cache)
        .context("config field `metainfo_cache` must be at least 1")?;
    let limiter = Arc::new(AnnounceLimiter::new(&config.limits));
    let board = Arc::new(view::Board::new(record_limits));
    tasks.spawn(prune(
        Arc::clone(&limiter),
        Arc::clone(&board),
        config.peer_ttl,
        shutdown.clone(),
    ));
    let metainfo = Arc::new(metainfo::MetainfoCache::new(
        Arc::clone(&origins),
        capacity,
        metrics.clone(),
    ));
    let view = view::router(
        Arc::new(view::View {
            board: Arc::clone(&board),
            origins: Arc::clone(&origins),
            metainfo: Arc::clone(&metainfo),
            stall_after: config.view.stall_after,
        }),
        shutdown.clone(),
    );
    // Ready while announces can be recorded and answered with a seeder: the peer store answers
    // and some origin passes its health checks.
    let readiness = {
        let (peers, known) = (Arc::clone(&store), Arc::clone(&origins));
        Readiness::default()
            .check("peer-store", move || {
                let peers = Arc::clone(&peers);
                async move { peers.ping().await.map_err(|e| chain(&e).to_string()) }
            })
            .check("origins", move || {
                let snapshot = known.cluster().snapshot();
                let healthy = snapshot.healthy().count();
                let members = snapshot.members().len();
                async move {
                    if healthy > 0 {
                        Ok(())
                    } else {
                        Err(format!("none of {members} known origins is healthy"))
                    }
                }
            })
    };
    let service = service::TrackerService {
        store,
        limiter,
        metainfo,
        board,
        origins,
        handout_limit: config.handout_limit,
        interval_ms: u32::try_from(config.announce_interval.as_millis())
            .context("config field `announce_interval` is too long")?,
        metrics,
    };
    let grpc = tonic::service::Routes::new(
        TrackerServer::new(service).max_decoding_message_size(MAX_REQUEST_SIZE),
    )
    .into_axum_router();
    // Under mutual TLS, only agents and origins announce and ask for metainfo.
    let grpc = with_access(grpc, Access::only(Roles::of(&[Role::Agent, Role::Origin])));
    // The swarm view only reads: open to any caller, like `/metrics` (see `view`).
    let (data, admin) = AdminListener::split(config.admin_listen, grpc, view, &readiness).await?;
    let app =
        shoal_service::http::with_common_routes(with_readiness(data, readiness), registry.build());

    let addr = listeners
        .grpc
        .local_addr()
        .context("reading the listen address")?;
    let store = match &config.store {
        StoreConfig::Memory => "memory",
        StoreConfig::Redis { .. } => "redis",
    };
    let admin_addr = admin.local_addr().map(|a| a.to_string());
    tracing::info!(%addr, admin = admin_addr, origins = %config.origins.members().source, store, "tracker serving");
    let served = admin
        .serve_beside(listeners.grpc, tls.server, app, shutdown.clone())
        .await;
    // Stop the background tasks too when serving failed on its own.
    shutdown.cancel();
    shoal_service::shutdown::drain(&tasks, DRAIN_DEADLINE, "tracker").await;
    served.context("serving the tracker")?;
    tracing::info!("tracker stopped");
    Ok(())
}

/// Forgets idle rate-limit buckets, and the view's peers silent for `peer_ttl`, every
/// [`PRUNE_INTERVAL`] until `shutdown`.
async fn prune(
    limiter: Arc<AnnounceLimiter>,
    board: Arc<view::Board>,
    peer_ttl: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(PRUNE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                limiter.prune();
                board.prune(peer_ttl).await;
            }
        }
    }
}
