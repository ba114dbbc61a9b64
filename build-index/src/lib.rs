//! The build-index: Shoal's `repo:tag → manifest digest` table and the records of the manifests
//! pushed into each repository. Tags and records are accepted only once the manifest and
//! everything it references are on the origin cluster, persisted in the backend
//! (`repositories/<repo>/_tags/<tag>`, `repositories/<repo>/_manifests/<algorithm>/<hex>`), and
//! served over the HTTP API documented in `docs/internal-api.md` ("Build-index HTTP API").

mod config;
mod error;
mod gc;
mod metrics;
mod pagination;
mod records;
mod replicate;
mod retention;
mod routes;
mod tags;
mod verify;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use shoal_backends::BackendRouter;
use shoal_core::chain;
use shoal_jobs::StatsCollector;
use shoal_service::http::{Access, AdminListener, with_access, with_readiness};
use shoal_service::shutdown::DRAIN_DEADLINE;
use shoal_service::tls::{ComponentTls, Role, Roles};
use shoal_service::{CancellationToken, MetricsBuilder, Readiness, TaskTracker};
use tokio::net::TcpListener;
use tracing::info;

pub use config::{BuildIndexConfig, InvalidConfig, RetentionConfig, RetentionRuleConfig};
pub use gc::GcConfig;

/// A tag check fetches manifests (at most 4 MiB) and stats blobs; an origin slower than this to
/// answer one of those requests is treated as unavailable rather than holding the PUT forever.
const ORIGIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Replication streams whole blobs from the origins to remote proxies, so it bounds silence, not
/// duration: a peer that sends nothing for this long is treated as down and the job retried.
const REMOTE_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The sockets the build-index serves on, bound by the caller (tests bind `127.0.0.1:0`).
pub struct Listeners {
    pub http: TcpListener,
}

/// Under mutual TLS: any cluster component reads tags; proxies (pushes) and build-indexes
/// (replication) write them.
const ACCESS: Access = Access {
    read: Roles::ANY,
    write: Roles::of(&[Role::Proxy, Role::BuildIndex]),
};

/// Serves the tag API until `shutdown` is cancelled, then finishes in-flight requests and gives
/// the background tasks (pending-tag write-back, a replication job in progress) up to
/// [`DRAIN_DEADLINE`] to end.
pub async fn run(
    config: BuildIndexConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    let backends = BackendRouter::from_config(&config.backend, &config.backends)
        .context("opening the tag backends (config fields `backend`, `backends`)")?;
    let tls = ComponentTls::load(config.tls.as_ref()).context("loading the TLS certificate")?;
    let http = tls
        .client(Roles::of(&[Role::Origin]))
        .timeout(ORIGIN_REQUEST_TIMEOUT)
        .build()
        .context("building the origin HTTP client")?;

    let mut metrics = MetricsBuilder::new("build-index");
    let tag_metrics = metrics::TagMetrics::register(metrics.registry());
    let membership_metrics = shoal_membership::MembershipMetrics::register(metrics.registry());
    let tasks = TaskTracker::new();
    let cluster = shoal_api::OriginCluster::start(
        http,
        &config.origins,
        config.replicas,
        &membership_metrics,
        shutdown.clone(),
        &tasks,
    )
    .await
    .context("following the origins (config field `origins`)")?;

    // Ready while tags can be written: to the backend, or (with `pending_dir`) kept pending
    // for it, so a backend outage takes no build-index with a pending queue out of service.
    let readiness = {
        let backends = backends.clone();
        Readiness::default().backend_or_queue(
            "backend",
            move || {
                let backends = backends.clone();
                async move { backends.answers().await.map_err(|e| chain(&e).to_string()) }
            },
            config.pending_dir.clone(),
        )
    };
    let mut tags = tags::TagStore::new(backends);
    if let Some(dir) = &config.pending_dir {
        tags = tags
            .with_pending_dir(dir)
            .await
            .context("opening the pending-tags directory (config field `pending_dir`)")?;
        tasks.spawn(tags.clone().write_back(shutdown.clone()));
        if let Some(stats) = tags.pending_stats() {
            let collector = StatsCollector::new(metrics::TAG_WRITEBACK, stats);
            metrics.registry().register_collector(collector);
        }
    }
    let origins = Arc::new(verify::Origins::new(
        cluster,
        gc::Gate::new(config.gc.grace),
    ));
    let collector = Arc::new(gc::Collector::new(
        tags.clone(),
        origins.clone(),
        &config.gc,
        metrics.registry(),
    ));
    if let Some(interval) = config.gc.interval {
        tasks.spawn(collector.clone().schedule(interval, shutdown.clone()));
    }
    let replicator = match &config.replication {
        Some(replication) => {
            let remote_http = shoal_service::client::builder()
                .read_timeout(REMOTE_READ_TIMEOUT)
                .build()
                .context("building the replication HTTP client")?;
            let replicator = replicate::Replicator::open(
                replication,
                origins.clone(),
                tags.clone(),
                remote_http,
            )
            .await
            .context("starting replication (config field `replication`)")?;
            let replicator = Arc::new(replicator);
            let queue = replicator.clone();
            let collector = StatsCollector::new(metrics::REPLICATION, move || queue.stats());
            metrics.registry().register_collector(collector);
            tasks.spawn(replicator.clone().run(shutdown.clone()));
            Some(replicator)
        }
        None => None,
    };
    let retention = match &config.retention {
        Some(retention_config) => {
            let rules = retention_config.compile()?;
            let retention = Arc::new(retention::Retention::new(
                rules,
                tags.clone(),
                tag_metrics.clone(),
            ));
            tasks.spawn(
                retention
                    .clone()
                    .run_scheduled(retention_config.interval, shutdown.clone()),
            );
            Some(retention)
        }
        None => None,
    };
    let metrics = metrics.build();
    let state = routes::AppState {
        tags,
        origins,
        replicator,
        retention,
        metrics: tag_metrics,
    };
    let (data, admin) = AdminListener::split(
        config.admin_listen,
        with_access(
            routes::router(state.clone()).merge(gc::router(collector.clone())),
            ACCESS,
        ),
        with_access(
            routes::admin_router(state).merge(gc::admin_router(collector)),
            ACCESS,
        ),
        &readiness,
    )
    .await?;
    let app = shoal_service::http::with_common_routes(with_readiness(data, readiness), metrics);

    let addr = listeners
        .http
        .local_addr()
        .context("reading the listener address")?;
    let admin_addr = admin.local_addr().map(|a| a.to_string());
    info!(%addr, admin = admin_addr, origins = %config.origins.members().source, "build-index listening");
    let served = admin
        .serve_beside(listeners.http, tls.server, app, shutdown.clone())
        .await;
    // Stop the background tasks too when serving failed on its own.
    shutdown.cancel();
    shoal_service::shutdown::drain(&tasks, DRAIN_DEADLINE, "build-index").await;
    served.context("serving the build-index HTTP API")?;
    info!("build-index stopped");
    Ok(())
}
