//! The accept loop behind every listener: TCP (with `TCP_NODELAY`), optionally TLS, a cap on
//! connections served at once, each connection in its own task (see [`super::connection`]),
//! and graceful shutdown.
//!
//! Beyond [`ListenerLimits::max_connections`], a new connection is still accepted and answered
//! with a 503 (a Registry V2 `UNAVAILABLE` error, which gRPC clients read as `UNAVAILABLE`), then
//! closed: a client learns the server is busy instead of waiting for a connection that never
//! comes. Answering costs a task, a file descriptor and, with TLS, a handshake, so only
//! [`REFUSALS_AT_ONCE`] are answered at a time, each within [`REFUSAL_DEADLINE`]; beyond that,
//! connections are closed as soon as they are accepted.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use shoal_core::{ErrorCode, error_body};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection;
use super::limits::ListenerLimits;
use super::raw::{Opening, RawProtocol};
use crate::tls::{Caller, HANDSHAKE_TIMEOUT, Identities, ServerTls};

/// A TLS listener's acceptor, and how to read client roles under mutual TLS.
#[derive(Clone)]
struct Tls {
    acceptor: TlsAcceptor,
    identities: Option<Arc<Identities>>,
}

/// Connections over the limit answered with a 503 at once; more are closed unanswered.
const REFUSALS_AT_ONCE: usize = 64;

/// Time to answer a connection over the limit (TLS handshake, reading the request, the 503).
const REFUSAL_DEADLINE: Duration = Duration::from_secs(2);

/// Pause after an accept error that is not about one connection (out of file descriptors,
/// say), so the loop does not spin while the condition lasts.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A warning that can repeat (accept errors, the connection limit) is logged at most this often.
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` (over TLS with `tls`, else with `raw` beside it) within `limits`
/// until `shutdown` is cancelled; then stops accepting, lets every connection finish its
/// requests in flight, and returns once all are closed.
pub(crate) async fn run(
    listener: TcpListener,
    tls: Option<ServerTls>,
    app: Router,
    raw: Option<RawProtocol>,
    limits: ListenerLimits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let tls = tls.map(|tls| Tls {
        acceptor: TlsAcceptor::from(tls.config),
        identities: tls.identities,
    });
    let builder = Arc::new(connection::builder());
    let refusal_builder = Arc::new(refusal_builder());
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let connections = TaskTracker::new();
    let mut accept_errors = Throttle::default();
    let mut over_limit = Throttle::default();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if is_connection_error(&error) => {
                tracing::debug!(%local, %error, "accepting a connection failed");
                continue;
            }
            Err(error) => {
                if let Some(suppressed) = accept_errors.allow(Instant::now()) {
                    tracing::warn!(%local, %error, suppressed, "accepting connections failed; pausing");
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                }
            }
        };
        let accepted = Instant::now();
        // Piece and manifest exchanges are small request/response pairs; Nagle would delay them.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        if let Ok(slot) = Arc::clone(&slots).try_acquire_owned() {
            connections.spawn(serve_connection(
                stream,
                peer,
                tls.clone(),
                raw.clone(),
                Arc::clone(&builder),
                app.clone(),
                limits,
                accepted,
                shutdown.clone(),
                slot,
            ));
            continue;
        }
        if let Some(suppressed) = over_limit.allow(Instant::now()) {
            tracing::warn!(
                %local,
                max_connections = limits.max_connections,
                suppressed,
                "connection limit reached; refusing new connections with 503"
            );
        }
        if let Ok(permit) = Arc::clone(&refusals).try_acquire_owned() {
            connections.spawn(refuse(
                stream,
                tls.clone(),
                Arc::clone(&refusal_builder),
                permit,
            ));
        }
    }
    // Closing the socket makes the kernel refuse new connections while the others finish.
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Tls>,
    raw: Option<RawProtocol>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    app: Router,
    limits: ListenerLimits,
    accepted: Instant,
    shutdown: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let Some(tls) = tls else {
        let stream = match raw {
            None => stream,
            Some(raw) => match raw
                .open(stream, accepted + limits.header_read_timeout)
                .await
            {
                Opening::Http(stream) => stream,
                Opening::Raw(stream) => {
                    raw.serve(stream, limits.idle_timeout, shutdown).await;
                    return;
                }
                Opening::Nothing => return,
            },
        };
        let caller = Caller::Unchecked;
        connection::serve(
            stream, peer, caller, &builder, app, limits, accepted, &shutdown,
        )
        .await;
        return;
    };
    let handshake = tokio::select! {
        () = shutdown.cancelled() => return,
        handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)) => handshake,
    };
    match handshake {
        Ok(Ok(stream)) => {
            let caller = match &tls.identities {
                None => Caller::Unchecked,
                Some(identities) => match stream.get_ref().1.peer_certificates() {
                    // The verifier has checked the chain to the cluster CA.
                    Some([cert, ..]) => Caller::Verified(identities.roles_of(cert)),
                    _ => Caller::Anonymous,
                },
            };
            connection::serve(
                stream, peer, caller, &builder, app, limits, accepted, &shutdown,
            )
            .await;
        }
        Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// HTTP/1.1 without keep-alive, so the connection closes after the 503.
fn refusal_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().keep_alive(false);
    builder
}

/// Answers a connection over the limit with a 503, within [`REFUSAL_DEADLINE`].
async fn refuse(
    stream: TcpStream,
    tls: Option<Tls>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    _permit: OwnedSemaphorePermit,
) {
    let refusal = async {
        match tls {
            None => answer_busy(stream, &builder).await,
            Some(tls) => {
                if let Ok(stream) = tls.acceptor.accept(stream).await {
                    answer_busy(stream, &builder).await;
                }
            }
        }
    };
    // Past the deadline the connection is simply dropped: closed.
    let _ = tokio::time::timeout(REFUSAL_DEADLINE, refusal).await;
}

async fn answer_busy<I>(io: I, builder: &auto::Builder<TokioExecutor>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let answered = Arc::new(Notify::new());
    let service = hyper::service::service_fn({
        let answered = Arc::clone(&answered);
        move |_request| {
            answered.notify_one();
            std::future::ready(Ok::<_, Infallible>(busy()))
        }
    });
    let mut connection = pin!(builder.serve_connection(TokioIo::new(io), service));
    tokio::select! {
        _ = connection.as_mut() => return,
        () = answered.notified() => {}
    }
    // HTTP/2: a GOAWAY after the 503, so the client opens no further streams here.
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

fn busy() -> Response {
    let body = error_body(
        ErrorCode::Unavailable,
        "too many connections; retry shortly",
        None,
    );
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Errors about one connection only, after which accepting the next one works at once.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Lets a repeating warning through at most once per [`WARNING_INTERVAL`], counting the ones
/// held back in between.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(number held back since the last one)` when an occurrence at `now` should be logged.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < WARNING_INTERVAL)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests;
