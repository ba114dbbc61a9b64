//! The HTTP surface every component shares: `GET /health` (and `/livez`), `GET /metrics`,
//! `GET /readyz` where a component can tell ([`with_readiness`]), the metrics
//! middleware around all routes, and [`serve`] (or [`serve_tls`], [`serve_with`]) with the
//! [`ListenerLimits`] of every listener and graceful shutdown; [`with_access`] admits callers
//! by the role their certificate names under mutual TLS.
//!
//! Metrics recorded per request (see [`crate::metrics`] for names): one count by route, method
//! and status when the response headers are produced; request and response body bytes as they
//! stream through; and the duration from the request's arrival until the response body has been
//! fully sent (or abandoned by the client), so long blob downloads measure their real length.

use std::borrow::Cow;
use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponseParts, Response, ResponseParts};
use axum::routing::get;
use http::header::CONTENT_TYPE;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, RequestLabels, Route, RouteLabels, RouteMethodLabels};
use crate::ready::Readiness;

mod access;
mod connection;
mod counting;
mod limits;
mod raw;
mod server;
mod unread;

pub use access::{Access, with_access, with_source_allow_list};
pub use shoal_tls::{Caller, ServerTls};

use counting::{CountingBody, RequestBytes, ResponseTally};
pub use limits::ListenerLimits;
pub use raw::RawProtocol;

/// Content type of `GET /metrics`.
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Route label for requests no route matched and no handler named.
const UNMATCHED: &str = "unmatched";

/// Names the route of a request in the HTTP metrics. Handlers behind a catch-all route (like the
/// Registry V2 `/v2/{*path}`) insert it into the response extensions so that blobs, manifests
/// and uploads are counted apart; otherwise the router's matched path pattern is used.
/// Either `response.extensions_mut().insert(RouteLabel("blob"))` or return it as a response
/// part: `(RouteLabel("blob"), body)`.
#[derive(Clone, Copy, Debug)]
pub struct RouteLabel(pub &'static str);

impl IntoResponseParts for RouteLabel {
    type Error = Infallible;

    fn into_response_parts(self, mut parts: ResponseParts) -> Result<ResponseParts, Infallible> {
        parts.extensions_mut().insert(self);
        Ok(parts)
    }
}

/// Adds `GET /health` and `GET /metrics` to `app` and wraps every route (including these two
/// and the fallback) in the metrics middleware and in one that reads the body of an HTTP/1.1
/// request answered unread (see `unread`). `app` must not define either path itself.
pub fn with_common_routes(app: Router, metrics: Arc<Metrics>) -> Router {
    let scrape = Arc::clone(&metrics);
    with_liveness(app)
        .route(
            "/metrics",
            get(move || async move { ([(CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], scrape.encode()) }),
        )
        .layer(middleware::from_fn(unread::drain_unread))
        // `Router::layer` runs after routing, so `MatchedPath` is visible to the middleware.
        .layer(middleware::from_fn_with_state(metrics, record))
}

/// `/health` and `/livez`: the process serves requests. Readiness, where a component has one, is
/// `/readyz` ([`with_readiness`]).
fn with_liveness(app: Router) -> Router {
    app.route("/health", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
}

/// Adds `GET /readyz` to `app`: 200 while `readiness` says the component can serve (its
/// dependencies answer), else 503 naming what failed (JSON, see [`crate::ready`]), for a
/// readiness probe that takes the pod out of its Service while `/livez` keeps it alive. Add it
/// before [`with_common_routes`], so it is counted like any route.
pub fn with_readiness(app: Router, readiness: Readiness) -> Router {
    app.route(
        "/readyz",
        get(move || async move {
            let report = readiness.report().await;
            let status = if report.ready {
                http::StatusCode::OK
            } else {
                http::StatusCode::SERVICE_UNAVAILABLE
            };
            (status, axum::Json(report))
        }),
    )
}

/// Serves `app` on `listener` with the default [`ListenerLimits`] until `shutdown` is
/// cancelled, then stops accepting and waits for in-flight requests to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_with(listener, None, app, ListenerLimits::default(), shutdown).await
}

/// [`serve`] over TLS with `tls` (see [`crate::tls::TlsConfig::server`]): HTTP/2 or
/// HTTP/1.1 as the client's ALPN asks.
pub async fn serve_tls(
    listener: TcpListener,
    tls: ServerTls,
    app: Router,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_with(
        listener,
        Some(tls),
        app,
        ListenerLimits::default(),
        shutdown,
    )
    .await
}

/// Serves `app` on `listener`, over TLS when `tls` is given, within `limits`:
/// - every request carries the [`Caller`] (a request extension): who the client's certificate
///   says it is, under mutual TLS (see [`with_access`]);
/// - HTTP/1.1 and HTTP/2 (h2c, or h2 by ALPN) on the one port, with `TCP_NODELAY`;
/// - a connection that takes longer than the header-read timeout to send a request's headers,
///   or stays idle between requests longer than the idle timeout, is closed; a request in flight
///   is never cut;
/// - at most `limits.max_connections` connections at once; beyond that, new connections are
///   answered with 503 and closed, and accept errors (out of file descriptors) pause accepting
///   briefly instead of spinning.
///
/// When `shutdown` is cancelled it stops accepting, lets in-flight requests finish (HTTP/2
/// clients get a GOAWAY), and returns once every connection has closed.
pub async fn serve_with(
    listener: TcpListener,
    tls: Option<ServerTls>,
    app: Router,
    limits: ListenerLimits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    raise_open_file_limit();
    server::run(listener, tls, app, None, limits, shutdown).await
}

/// [`serve_maybe_tls`], with a second protocol beside HTTP on the same port when it is plain TCP:
/// connections that open with `raw`'s magic are served by it, under the same connection limit.
/// Over TLS the listener serves HTTP alone.
pub async fn serve_with_raw(
    listener: TcpListener,
    tls: Option<ServerTls>,
    app: Router,
    raw: RawProtocol,
    shutdown: CancellationToken,
) -> io::Result<()> {
    raise_open_file_limit();
    let raw = tls.is_none().then_some(raw);
    server::run(listener, tls, app, raw, ListenerLimits::default(), shutdown).await
}

/// [`serve`], over TLS when the component's `tls:` section is set.
pub async fn serve_maybe_tls(
    listener: TcpListener,
    tls: Option<ServerTls>,
    app: Router,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_with(listener, tls, app, ListenerLimits::default(), shutdown).await
}

/// A component's admin routes (the day-2 tools' endpoints: status, cache, GC and retention runs,
/// the swarm view) on their own listener, when `admin_listen` is set: the data listener can then
/// face the nodes while the admin one stays on a private network.
pub struct AdminListener(Option<(TcpListener, Router, Readiness)>);

impl AdminListener {
    /// Binds `admin_listen` for `admin`, and returns what the data listener serves: `data`
    /// alone, or `data` with `admin` merged in when no admin listener is configured. The admin
    /// listener answers the component's `readiness` too.
    pub async fn split(
        admin_listen: Option<std::net::SocketAddr>,
        data: Router,
        admin: Router,
        readiness: &Readiness,
    ) -> io::Result<(Router, AdminListener)> {
        match admin_listen {
            None => Ok((data.merge(admin), AdminListener(None))),
            Some(addr) => {
                let listener = TcpListener::bind(addr).await.map_err(|e| {
                    io::Error::new(e.kind(), format!("binding admin_listen {addr}: {e}"))
                })?;
                Ok((
                    data,
                    AdminListener(Some((listener, admin, readiness.clone()))),
                ))
            }
        }
    }

    /// The admin listener's address, when there is one.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.0.as_ref().and_then(|(l, _, _)| l.local_addr().ok())
    }

    /// Serves `app` on the data `listener` and the admin routes beside it, both with `tls`,
    /// until `shutdown`; the first listener to fail ends both.
    pub async fn serve_beside(
        self,
        listener: TcpListener,
        tls: Option<ServerTls>,
        app: Router,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        tokio::try_join!(
            serve_maybe_tls(listener, tls.clone(), app, shutdown.clone()),
            self.serve(tls, shutdown),
        )
        .map(|_| ())
    }

    /// Serves the admin routes, with `/health`, `/livez` and `/readyz` for the tools that check
    /// them first and the component's TLS, until `shutdown`; returns at once without an admin listener.
    pub async fn serve(
        self,
        tls: Option<ServerTls>,
        shutdown: CancellationToken,
    ) -> io::Result<()> {
        match self.0 {
            Some((listener, admin, readiness)) => {
                let admin = with_readiness(with_liveness(admin), readiness);
                serve_maybe_tls(listener, tls, admin, shutdown).await
            }
            None => Ok(()),
        }
    }
}

/// Raises the process's soft limit on open files to its hard limit, once: a listener may hold
/// thousands of connections, and the usual soft limit (1024) would run out long before
/// `max_connections`, while the hard limit an operator set is the real bound (Go does the same).
fn raise_open_file_limit() {
    static RAISED: std::sync::Once = std::sync::Once::new();
    RAISED.call_once(|| {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let raised = getrlimit(Resource::RLIMIT_NOFILE).and_then(|(soft, hard)| {
            if soft < hard {
                setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
            }
            Ok((soft, hard))
        });
        match raised {
            Ok((soft, hard)) if soft < hard => {
                tracing::debug!(from = soft, to = hard, "raised the open-file limit");
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
        }
    });
}

async fn record(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = method_label(request.method().as_str());
    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let request_bytes = Arc::new(RequestBytes::default());
    let counted = Arc::clone(&request_bytes);
    let request = request.map(|body| Body::new(CountingBody::new(body, counted)));

    // Everything a handler logs carries the request's route, method and path (the digest,
    // repository or upload), as span fields in text and JSON logs alike.
    let span = tracing::info_span!(
        "request",
        route = matched.as_deref().unwrap_or(UNMATCHED),
        method,
        path = request.uri().path(),
    );
    let response = tracing::Instrument::instrument(next.run(request), span).await;

    let route: Route = match response.extensions().get::<RouteLabel>() {
        Some(RouteLabel(name)) => Cow::Borrowed(name),
        None => matched.map_or(Cow::Borrowed(UNMATCHED), Cow::Owned),
    };
    let http = &metrics.http;
    http.requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            method,
            status: response.status().as_u16(),
        })
        .inc();
    let by_route = RouteLabels {
        route: route.clone(),
    };
    request_bytes.resolve(http.request_bytes.get_or_create(&by_route).clone());
    let tally = ResponseTally {
        bytes: http.response_bytes.get_or_create(&by_route).clone(),
        duration: http
            .duration
            .get_or_create(&RouteMethodLabels { route, method })
            .clone(),
        start,
    };
    response.map(|body| Body::new(CountingBody::new(body, tally)))
}

/// Maps the method to a fixed set of label values so that clients cannot create unbounded
/// label sets with made-up methods.
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests;
