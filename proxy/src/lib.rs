//! `shoal-proxy`: the Registry V2 front door. Clients push and pull through it with the
//! distribution API; blob bytes stream to and from the origin that owns each digest, upload
//! sessions live on origins, and tags go to the build-index. The proxy keeps no state of its own
//! beyond its preheat jobs (files under `preheat.state_dir`, one directory per replica), so any
//! number of replicas can run behind one address.
//!
//! The Registry V2 routing, errors and common responses are shoal-registry-server's; `registry`
//! implements its backend over `state` with one module per resource (`blobs`, `uploads`,
//! `manifests`, `tags`, `catalog`).
//! `preheat` receives registry push notifications and has the origins (and optionally a few
//! agents) pull pushed images in.

mod blobs;
mod catalog;
pub mod config;
mod manifests;
mod metrics;
mod pagination;
mod preheat;
mod registry;
mod state;
mod tags;
mod uploads;
mod upstream;
mod validation;

/// The parsers of the preheat requests (a registry's notification envelope, `POST /preheat`'s
/// image), for the fuzz targets (`fuzz/`).
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::preheat::{Image, notification};
}

use std::sync::Arc;

use anyhow::Context;
use shoal_service::http::with_readiness;
use shoal_service::shutdown::DRAIN_DEADLINE;
use shoal_service::tls::{ComponentTls, Role, Roles};
use shoal_service::{CancellationToken, MetricsBuilder, Readiness, SharedSecret, TaskTracker};
use tokio::net::TcpListener;

pub use config::ProxyConfig;

use crate::metrics::ProxyMetrics;
use crate::state::AppState;
use crate::upstream::Upstreams;

/// The proxy's pre-bound sockets.
#[derive(Debug)]
pub struct Listeners {
    /// Registry V2 API, `/health` and `/metrics`.
    pub http: TcpListener,
}

impl Listeners {
    /// Binds the addresses named in `config`.
    pub async fn bind(config: &ProxyConfig) -> anyhow::Result<Listeners> {
        let http = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding the registry listener on {}", config.listen))?;
        Ok(Listeners { http })
    }
}

/// Serves the Registry V2 API until `shutdown` is cancelled, then lets in-flight requests (an
/// upload streaming to an origin, say) finish and waits (at most [`DRAIN_DEADLINE`]) for the
/// background tasks: health checks and preheat workers.
pub async fn run(
    config: ProxyConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.validate()?;
    // Read the certificate before anything starts, so a bad file stops the proxy at once.
    let tls = ComponentTls::load(config.tls.as_ref())?;
    // Read the htpasswd file or the token root bundle now too, for the same reason.
    let auth = config
        .auth
        .as_ref()
        .map(shoal_registry_server::Auth::load)
        .transpose()?;
    let auth_mode = match &config.auth {
        None => "none",
        Some(auth) if auth.htpasswd.is_some() => "htpasswd",
        Some(_) => "token",
    };
    let http = tls
        .client(Roles::of(&[Role::Origin, Role::BuildIndex]))
        .build()
        .context("building the HTTP client for origins and build-index")?;
    let mut builder = MetricsBuilder::new("proxy");
    let membership_metrics = shoal_membership::MembershipMetrics::register(builder.registry());
    let (metrics, registry) = ProxyMetrics::register(builder);
    let tasks = TaskTracker::new();
    let upstreams = Arc::new(
        Upstreams::start(
            http.clone(),
            &config,
            &membership_metrics,
            shutdown.clone(),
            &tasks,
        )
        .await
        .context("health-checking the origins (config field `origins`)")?,
    );
    // Ready while pushes and pulls can go through: the build-index and some origin answer.
    let readiness = {
        let mutual = config.tls.as_ref().is_some_and(|tls| tls.mutual());
        let (probes, origins) = (http.clone(), upstreams.clone());
        Readiness::default()
            .health_any(
                "build-index",
                http.clone(),
                config.build_index.as_slice(),
                mutual,
            )
            .check("origins", move || {
                let (probes, members) = (probes.clone(), origins.origin_members());
                async move { any_answers(&probes, &members, mutual).await }
            })
    };
    let preheat_secret = SharedSecret::new(&config.preheat.secret_header, &config.preheat.secret)
        .context("config field `preheat.secret_header`")?;
    let agents = preheat::Agents::start(
        &config.preheat.agents,
        preheat_secret,
        http,
        &membership_metrics,
        shutdown.clone(),
        &tasks,
    )
    .await
    .context("following the agents (config field `preheat.agents.members`)")?;
    let preheater = preheat::Preheater::start(
        config.preheat.clone(),
        upstreams.clone(),
        agents,
        metrics.clone(),
        shutdown.clone(),
        &tasks,
    )
    .await
    .with_context(|| {
        format!(
            "loading preheat jobs from {} (config field `preheat.state_dir`)",
            config.preheat.state_dir.display()
        )
    })?;
    let state = AppState {
        upstreams,
        metrics,
        manifest_urls: Arc::new(config.validation.manifests.urls.clone()),
        blob_delete: config.storage.delete.enabled,
    };
    let app = shoal_service::http::with_common_routes(
        with_readiness(
            shoal_registry_server::router_with_auth(state, auth).merge(preheat::router(preheater)),
            readiness,
        ),
        registry,
    );
    tracing::info!(
        listen = %listeners.http.local_addr()?,
        scheme = if tls.server.is_some() { "https" } else { "http" },
        origins = %config.origins.members().source,
        build_index = %config.build_index,
        auth = auth_mode,
        "proxy serving"
    );
    let served = match tls.server {
        Some(tls) => {
            shoal_service::http::serve_tls(listeners.http, tls, app, shutdown.clone()).await
        }
        None => shoal_service::http::serve(listeners.http, app, shutdown.clone()).await,
    };
    // Stop the background tasks too when serving failed on its own.
    shutdown.cancel();
    shoal_service::shutdown::drain(&tasks, DRAIN_DEADLINE, "proxy").await;
    served.context("serving the registry API")
}

/// `Ok` when one of `origins` answers its `/health` (asked all at once), else why none did.
async fn any_answers(http: &reqwest::Client, origins: &[String], tls: bool) -> Result<(), String> {
    if origins.is_empty() {
        return Err("no origin known".to_owned());
    }
    let asked = origins.iter().map(|origin| {
        let url = format!("{}/health", shoal_http_client::base_url(origin, tls));
        async move { shoal_service::ready::http_ok(http, &url).await }
    });
    let answers = futures::future::join_all(asked).await;
    if answers.iter().any(Result::is_ok) {
        return Ok(());
    }
    Err(answers
        .into_iter()
        .filter_map(Result::err)
        .collect::<Vec<_>>()
        .join("; "))
}
