//! The Shoal origin: the cluster's durable blob store. It accepts uploads and verifies their
//! digest before anything becomes visible, queues a durable write-back of each committed blob
//! to the backend, pulls blobs through from the backend on a miss, and computes metainfo.
//!
//! The HTTP API is specified in `docs/internal-api.md` ("Origin HTTP API"); one module per
//! resource implements it (`uploads`, `blobs`, `metainfo`), and `errors` maps every failure to
//! its JSON error in one place. A second listener serves the gRPC `Peer` service of the p2p
//! library over the store's complete blobs, so every blob the origin holds is seeded to agents
//! (the trackers hand this origin out as a seeder; it never announces or downloads itself).
//! With a `cluster:` ring configured, a committed blob is copied to its other rendezvous owners
//! (`replicate`) before the commit is acknowledged, and pushes that did not get through are
//! retried from a durable queue. With `cache.capacity` set the store is a bounded cache in front
//! of the backend (`capacity`): least recently read blobs that the backend holds are evicted.

mod admin;
mod blobs;
mod capacity;
pub mod config;
mod errors;
mod extract;
mod flights;
mod gc;
mod metainfo;
mod metrics;
mod pullthrough;
mod replicate;
mod uploads;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, patch, post};
use shoal_backends::{BackendRouter, WriteBack};
use shoal_core::Digest;
use shoal_core::chain;
use shoal_jobs::StatsCollector;
use shoal_p2p::{
    Faults, Limiter, P2pMetrics, PieceSource, Seeding, SeedingConfig, Spread, StoreSource,
};
use shoal_service::http::{Access, AdminListener, with_access, with_readiness};
use shoal_service::shutdown::DRAIN_DEADLINE;
use shoal_service::tls::{ComponentTls, Role, Roles};
use shoal_service::{CancellationToken, MetricsBuilder, Readiness, TaskTracker};
use shoal_storage::BlobStore;
use tokio::net::TcpListener;

pub use config::{
    CacheConfig, ClusterConfig, OriginConfig, SeedConfig, UploadsConfig, WriteBackConfig,
};

use metrics::OriginMetrics;

/// Sockets the origin serves on, bound by the caller (tests bind `127.0.0.1:0`).
pub struct Listeners {
    pub http: TcpListener,
    /// The gRPC `Peer` service (seeding).
    pub peer: TcpListener,
}

/// What every request handler shares.
#[derive(Debug)]
pub(crate) struct Origin {
    store: Arc<BlobStore>,
    /// The backend of each namespace (one catch-all route for a single `backend:`).
    backends: Arc<BackendRouter>,
    writeback: Arc<WriteBack>,
    /// How long a replica's write-back waits for the committing origin's (`writeback.replica_delay`).
    writeback_replica_delay: std::time::Duration,
    /// Upload session settings (`trusted_forwarders` is read per session start).
    uploads: UploadsConfig,
    /// The other origins, when this one is part of a ring.
    ring: Option<replicate::Ring>,
    /// Pull-throughs in progress, shared by concurrent requests for one blob.
    flights: flights::Flights,
    /// Keeps the store within `cache.capacity`; `None` when unlimited.
    cache: Option<Arc<capacity::StoreCache>>,
    /// When blobs were last touched, and which are condemned (garbage collection).
    touches: gc::Touches,
    /// Background work that outlives a request (pull-through copies), drained at shutdown.
    tasks: TaskTracker,
    metrics: OriginMetrics,
}

impl Origin {
    /// Marks `digest` as being read by a response until the guard is dropped (with a capacity).
    fn reading(&self, digest: Digest) -> capacity::Reading {
        self.cache.as_ref().map(|cache| cache.reader(digest))
    }

    /// The store just gained a blob: the cache checks its budget soon.
    fn stored(&self) {
        if let Some(cache) = &self.cache {
            cache.wake();
        }
    }
}

/// Runs the origin until `shutdown` is cancelled and in-flight requests have finished, then gives
/// its background tasks (write-back uploads, replica pushes, pull-through copies in flight) up to
/// [`DRAIN_DEADLINE`] to end.
pub async fn run(
    config: OriginConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid origin config: {e}"))?;
    let store_dir = config.data_dir.join("store");
    let store = BlobStore::open(&store_dir)
        .await
        .with_context(|| format!("opening the blob store in {}", store_dir.display()))?;
    let queue_dir = config.data_dir.join("writeback");
    let writeback = WriteBack::open(&queue_dir)
        .await
        .with_context(|| format!("opening the write-back queue in {}", queue_dir.display()))?
        .with_retry(config.writeback.into());
    let backends = Arc::new(
        BackendRouter::from_config(&config.backend, &config.backends)
            .context("setting up the backends")?,
    );

    store.set_upload_limits(shoal_storage::UploadLimits {
        total: config.uploads.max_sessions,
        per_client: config.uploads.max_sessions_per_client,
    });
    let (store, writeback) = (Arc::new(store), Arc::new(writeback));
    let mut registry = MetricsBuilder::new("origin");
    let metrics = OriginMetrics::register(registry.registry(), writeback.clone(), store.clone());
    // Includes `shoal_p2p_bytes_served_total`: blob bytes that left as pieces rather than HTTP.
    let p2p_metrics = P2pMetrics::new(registry.registry());
    let membership_metrics = shoal_membership::MembershipMetrics::register(registry.registry());
    let tls = ComponentTls::load(config.tls.as_ref()).context("loading the TLS certificate")?;
    let http = tls
        .client(Roles::of(&[Role::Origin]))
        .build()
        .context("building the HTTP client for peer origins")?;
    let tasks = TaskTracker::new();
    let ring = replicate::Ring::start(
        &http,
        &config.cluster,
        store.clone(),
        config.data_dir.join("replication"),
        &membership_metrics,
        shutdown.clone(),
        &tasks,
    )
    .await
    .context("starting the origin ring")?;
    if let Some(ring) = &ring {
        let collector = StatsCollector::new(metrics::REPLICATION, ring.queue_stats());
        registry.registry().register_collector(collector);
    }
    metrics.register_egress(
        registry.registry(),
        &p2p_metrics,
        ring.as_ref()
            .map(replicate::Ring::replicated)
            .unwrap_or_default(),
    );
    tasks.spawn(
        writeback
            .clone()
            .run(store.clone(), (*backends).clone(), shutdown.clone()),
    );
    tasks.spawn(expire_idle_uploads(
        store.clone(),
        config.uploads.idle_timeout,
        shutdown.clone(),
    ));

    let cache = config.cache.budget().map(|budget| {
        let pins = capacity::BackendPins {
            writeback: writeback.clone(),
            replication: ring.as_ref().map(replicate::Ring::pending_pushes),
            backends: backends.clone(),
        };
        let cache_metrics = metrics::register_cache(registry.registry());
        Arc::new(capacity::StoreCache::new(
            store.clone(),
            budget,
            pins,
            cache_metrics,
        ))
    });
    if let Some(cache) = &cache {
        tasks.spawn(cache.clone().run(shutdown.clone()));
    }
    // Ready while blobs can be stored and reach the backend, at once or through the write-back
    // queue: a backend outage leaves pushes working, so it takes no origin out of service (the
    // write-back backlog metric and alert tell it).
    let readiness = {
        let backends = backends.clone();
        Readiness::default()
            .writable("store", store_dir)
            .backend_or_queue(
                "backend",
                move || {
                    let backends = backends.clone();
                    async move { backends.answers().await.map_err(|e| chain(&e).to_string()) }
                },
                Some(queue_dir),
            )
    };
    let origin = Arc::new(Origin {
        store,
        backends,
        writeback,
        writeback_replica_delay: config.writeback.replica_delay,
        uploads: config.uploads.clone(),
        ring,
        flights: flights::Flights::default(),
        cache,
        touches: gc::Touches::default(),
        tasks: tasks.clone(),
        metrics,
    });
    let source: Arc<dyn PieceSource> = match &origin.cache {
        Some(_) => Arc::new(capacity::ReadCounted(origin.clone())),
        None => Arc::new(StoreSource(origin.store.clone())),
    };
    let seed = config.p2p.engine();
    // Super-seeding: in a ring, each owner of a blob first sends its own share of the pieces.
    let seeding = config.p2p.super_seeding.then(|| match &origin.ring {
        Some(ring) => Seeding {
            config: SeedingConfig::default(),
            share: ring.share_of(),
        },
        None => Seeding::alone(SeedingConfig::default()),
    });
    let peer = shoal_p2p::peer_service(
        source,
        Limiter::new(seed.egress_rate, seed.chunk_size),
        seed.upload_slots,
        p2p_metrics,
        Faults::default(),
        seeding.map_or(Spread::Unbounded, Spread::Seeding),
    );
    let piece_stream = peer.piece_stream();
    let peer_app = tonic::service::Routes::new(peer).into_axum_router();
    let (data, admin) = AdminListener::split(
        config.admin_listen,
        with_access(router(origin.clone()), ACCESS).merge(with_access(
            gc_router(origin.clone()),
            Access::only(GC_CALLERS),
        )),
        with_access(admin::router(origin), ACCESS),
        &readiness,
    )
    .await?;
    let app =
        shoal_service::http::with_common_routes(with_readiness(data, readiness), registry.build());
    let peer_app = with_access(peer_app, Access::only(PIECE_CALLERS));
    let addr = listeners
        .http
        .local_addr()
        .context("reading the listen address")?;
    let peer_addr = listeners
        .peer
        .local_addr()
        .context("reading the peer listen address")?;
    let admin_addr = admin.local_addr().map(|a| a.to_string());
    tracing::info!(%addr, %peer_addr, admin = admin_addr, data_dir = %config.data_dir.display(), "origin serving");
    let served = tokio::try_join!(
        async {
            shoal_service::http::serve_maybe_tls(
                listeners.http,
                tls.server.clone(),
                app,
                shutdown.clone(),
            )
            .await
            .context("serving HTTP")
        },
        async {
            shoal_service::http::serve_with_raw(
                listeners.peer,
                tls.server.clone(),
                peer_app,
                piece_stream,
                shutdown.clone(),
            )
            .await
            .context("serving the gRPC peer service")
        },
        async {
            admin
                .serve(tls.server.clone(), shutdown.clone())
                .await
                .context("serving the admin listener")
        },
    );
    // Stop the background tasks too when serving failed on its own.
    shutdown.cancel();
    shoal_service::shutdown::drain(&tasks, DRAIN_DEADLINE, "origin").await;
    served?;
    tracing::info!("origin stopped");
    Ok(())
}

/// Discards abandoned upload sessions until shutdown. Sweeps often enough that a session lives
/// at most about 1.5 × the idle timeout, and at least once a minute.
async fn expire_idle_uploads(store: Arc<BlobStore>, idle: Duration, shutdown: CancellationToken) {
    let period = (idle / 2).clamp(Duration::from_millis(10), Duration::from_secs(60));
    let mut sweep = tokio::time::interval(period);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = sweep.tick() => {
                let expired = store.expire_uploads(idle);
                if expired > 0 {
                    tracing::info!(expired, "discarded idle upload sessions");
                }
            }
        }
    }
}

/// Under mutual TLS: any cluster component reads blobs and metainfo; uploads, replicated
/// blobs and deletes come from proxies and other origins only.
const ACCESS: Access = Access {
    read: Roles::ANY,
    write: Roles::of(&[Role::Proxy, Role::Origin]),
};

/// Under mutual TLS, garbage collection (touches before a manifest is recorded, sweeps) is the
/// build-index's alone.
const GC_CALLERS: Roles = Roles::of(&[Role::BuildIndex]);

/// Under mutual TLS, pieces go to agents and origins only.
const PIECE_CALLERS: Roles = Roles::of(&[Role::Agent, Role::Origin]);

fn router(origin: Arc<Origin>) -> Router {
    Router::new()
        .route("/uploads", post(uploads::start))
        .route(
            "/uploads/{id}",
            patch(uploads::append)
                .get(uploads::status)
                .put(uploads::commit)
                .delete(uploads::cancel),
        )
        .route(
            "/blobs/{digest}",
            get(blobs::get).head(blobs::head).put(blobs::put),
        )
        .route("/blobs/{digest}/metainfo", get(metainfo::get))
        // Blob bodies are streamed to disk, never buffered, so the size limit meant for
        // in-memory extractors does not apply.
        .layer(DefaultBodyLimit::disable())
        .with_state(origin)
}

/// Garbage collection's routes (`gc`), admitted apart from the rest.
fn gc_router(origin: Arc<Origin>) -> Router {
    Router::new()
        .route("/blobs/{digest}/touch", post(gc::touch))
        .route("/gc/store", get(gc::store_blobs))
        .route("/gc/backend", get(gc::backend_blobs))
        .route("/gc/blobs/{digest}", delete(gc::delete))
        .route(
            "/gc/blobs/{digest}/condemn",
            post(gc::condemn).delete(gc::release),
        )
        .with_state(origin)
}
