//! `shoal-agent`: runs on every node and serves the Registry V2 read API to the node's container
//! runtimes (as their registry or as a mirror). Blobs come through the p2p engine: from the
//! local store, or piece by piece from other agents and the origins, every piece verified; the
//! agent seeds what it has on its gRPC `Peer` listener and keeps its disk cache within budget.
//!
//! Modules: `registry` implements the read side of shoal-registry-server's backend over
//! `state`; `manifests` reads manifests whole; `tags` resolves and caches tags; `namespace` maps
//! containerd's `?ns=`; the disk cache is shoal-storage's `cache` (no pins: every blob exists
//! elsewhere); `peer_id` names the agent in the swarm; `preheat` fetches
//! a whole image into the cache when the proxy asks (`POST /preheat`, beside the `/v2/` API).

mod admin;
pub mod config;
mod manifests;
mod metrics;
mod namespace;
mod peer_id;
mod preheat;
mod registry;
mod state;
mod tags;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use shoal_api::BuildIndexClient;
use shoal_p2p::{ClusterTls, Engine, Identity, Limiter, Network, P2pMetrics, PIECE_COPIES, Spread};
use shoal_service::http::{
    Access, AdminListener, with_access, with_readiness, with_source_allow_list,
};
use shoal_service::shutdown::DRAIN_DEADLINE;
use shoal_service::tls::{ComponentTls, Role, Roles};
use shoal_service::{CancellationToken, MetricsBuilder, Readiness, SharedSecret, TaskTracker};
use shoal_storage::BlobStore;
use shoal_storage::cache::{Cache, Unpinned};
use tokio::net::TcpListener;

pub use config::AgentConfig;

use crate::metrics::AgentMetrics;
use crate::namespace::Namespaces;
use crate::state::AppState;
use crate::tags::TagCache;

/// How long pieces in flight to other peers may take to finish after shutdown starts. Peer
/// sessions are long-lived streams that a peer may keep open indefinitely, so graceful shutdown
/// cannot wait for them to end; a peer cut off re-requests its pieces elsewhere.
const PEER_DRAIN: Duration = Duration::from_secs(5);

/// The agent's pre-bound sockets (tests bind `127.0.0.1:0`).
#[derive(Debug)]
pub struct Listeners {
    /// Registry V2 read API, `/health` and `/metrics`.
    pub http: TcpListener,
    /// gRPC `Peer` service.
    pub peer: TcpListener,
}

impl Listeners {
    /// Binds the addresses named in `config`.
    pub async fn bind(config: &AgentConfig) -> anyhow::Result<Listeners> {
        let http = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding the registry listener on {}", config.listen))?;
        let peer = TcpListener::bind(config.peer_listen)
            .await
            .with_context(|| format!("binding the peer listener on {}", config.peer_listen))?;
        Ok(Listeners { http, peer })
    }
}

/// `GET /debug/downloads`: each blob this agent downloads or downloaded (the latest 256), with
/// its pieces and the bytes it got from origins and from other agents.
async fn downloads(State(state): State<AppState>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "downloads": state.engine.downloads() }))
}

/// Serves the registry API and the peer service until `shutdown` is cancelled, then lets
/// in-flight requests finish and waits (at most [`DRAIN_DEADLINE`]) for the background tasks:
/// the cache sweeper and the engine's download drivers and seed announcers.
pub async fn run(
    config: AgentConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    config
        .p2p
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid agent config: {e}"))?;
    tokio::fs::create_dir_all(&config.data_dir)
        .await
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let peer_id = match &config.peer_id {
        Some(peer_id) => peer_id.clone(),
        None => peer_id::load_or_create(&config.data_dir).await?,
    };
    let store_dir = config.data_dir.join("store");
    let store = Arc::new(
        BlobStore::open(&store_dir)
            .await
            .with_context(|| format!("opening the blob store in {}", store_dir.display()))?,
    );

    let mut builder = MetricsBuilder::new("agent");
    let metrics = AgentMetrics::register(builder.registry());
    let p2p_metrics = P2pMetrics::new(builder.registry());
    let registry = builder.build();

    let identity = Identity {
        peer_id: peer_id.clone(),
        addr: config.advertised(),
        origin: false,
    };
    let tls = ComponentTls::load(config.tls.as_ref()).context("loading the TLS certificate")?;
    let cluster_tls = ClusterTls::new(tls.loaded());
    let tasks = TaskTracker::new();
    let engine = Engine::new(
        config.p2p.clone(),
        identity,
        store.clone(),
        Network {
            trackers: config.tracker.as_slice().to_vec(),
            tls: cluster_tls,
        },
        p2p_metrics.clone(),
        shutdown.clone(),
        &tasks,
    );
    let cache = Arc::new(Cache::new(
        store.clone(),
        config.cache.budget(),
        Unpinned,
        metrics.cache.clone(),
    ));
    tasks.spawn(cache.clone().run(shutdown.clone()));

    let http = tls
        .client(Roles::of(&[Role::BuildIndex]))
        .build()
        .context("building the HTTP client for the build-index")?;
    let state = AppState {
        engine: engine.clone(),
        store,
        cache,
        tags: Arc::new(TagCache::new(
            BuildIndexClient::new(http, &config.build_index),
            config.tag_cache_ttl,
        )),
        namespaces: Arc::new(Namespaces::new(config.namespaces.hosts.clone())),
        metrics,
        preheat_secret: SharedSecret::new(&config.preheat.secret_header, &config.preheat.secret)
            .context("config field `preheat.secret_header`")?,
    };
    // Preheat is no Registry V2 endpoint: beside the router, without its API version header.
    let preheat = Router::new()
        .route("/preheat", post(preheat::handle))
        .with_state(state.clone());
    // The day-2 tools' routes: the cache and the download report.
    let admin_routes = Router::new()
        .route("/debug/downloads", get(downloads))
        .with_state(state.clone())
        .merge(admin::router(state.clone()));
    // Pulls need the tracker (peers, metainfo) and the build-index (tags, manifest records).
    let probes = tls
        .client(Roles::of(&[Role::Tracker, Role::BuildIndex]))
        .build()
        .context("building the HTTP client for readiness probes")?;
    let mutual = config.tls.as_ref().is_some_and(|tls| tls.mutual());
    let readiness = Readiness::default()
        .health_any("tracker", probes.clone(), config.tracker.as_slice(), mutual)
        .health_any("build-index", probes, config.build_index.as_slice(), mutual);
    let (data, admin) = AdminListener::split(
        config.admin_listen,
        with_source_allow_list(
            shoal_registry_server::router(state).merge(preheat),
            &config.allowed_clients,
        ),
        with_source_allow_list(admin_routes, &config.allowed_clients),
        &readiness,
    )
    .await?;
    let app = shoal_service::http::with_common_routes(with_readiness(data, readiness), registry);
    let limiter = Limiter::new(config.p2p.egress_rate, config.p2p.chunk_size);
    let peer = shoal_p2p::peer_service(
        engine.source(),
        limiter,
        config.p2p.upload_slots,
        p2p_metrics,
        config.testing,
        // Super-seeding is an origin's policy; an agent bounds the copies of each piece.
        Spread::PieceCopies(PIECE_COPIES),
    );
    let piece_stream = peer.piece_stream();
    // Under mutual TLS, pieces go to agents and origins only.
    let peer_app = with_access(
        tonic::service::Routes::new(peer).into_axum_router(),
        Access::only(Roles::of(&[Role::Agent, Role::Origin])),
    );

    tracing::info!(
        listen = %listeners.http.local_addr()?,
        peer_listen = %listeners.peer.local_addr()?,
        admin = admin.local_addr().map(|a| a.to_string()),
        advertise = %config.advertised(),
        %peer_id,
        trackers = %config.tracker,
        build_index = %config.build_index,
        data_dir = %config.data_dir.display(),
        "agent serving"
    );
    let peer_served = async {
        let serving = shoal_service::http::serve_with_raw(
            listeners.peer,
            tls.server.clone(),
            peer_app,
            piece_stream,
            shutdown.clone(),
        );
        let drained = async {
            shutdown.cancelled().await;
            tokio::time::sleep(PEER_DRAIN).await;
        };
        tokio::select! {
            served = serving => served,
            () = drained => {
                tracing::info!("peer sessions still open after the drain period: closing them");
                Ok(())
            }
        }
    };
    let served = tokio::try_join!(
        shoal_service::http::serve(listeners.http, app, shutdown.clone()),
        peer_served,
        // Plain HTTP, as the registry listener: the node's own tools call it.
        admin.serve(None, shutdown.clone()),
    );
    // Stop the other listener and the background tasks too when one listener failed on its own.
    shutdown.cancel();
    shoal_service::shutdown::drain(&tasks, DRAIN_DEADLINE, "agent").await;
    served.context("serving")?;
    tracing::info!("agent stopped");
    Ok(())
}
