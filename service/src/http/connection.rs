//! Serving one accepted connection (HTTP/1.1, or HTTP/2 with or without TLS, told apart by the
//! client's first bytes) with the header-read and idle timeouts of [`ListenerLimits`].
//!
//! hyper cannot enforce these itself: its `header_read_timeout` also bounds the wait for the next
//! request on a keep-alive connection and does not cover the protocol detection, and its HTTP/2
//! server has no idle timeout. So each connection records what it is doing in an [`Activity`]:
//! requests in flight (from the router's call until hyper drops the response body) and bytes
//! read since it last went idle. A supervisor next to the hyper connection turns that into one
//! deadline at a time:
//! - while a request is in flight, none;
//! - a new connection, or an HTTP/1.1 one that has started a request: the header-read timeout
//!   (HTTP/2 clients send pings and window updates while idle, so bytes say nothing there);
//! - otherwise the idle timeout from the end of the last request.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use http::Request;
use http_body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::limits::ListenerLimits;
use crate::tls::Caller;

/// Unanswered pings find peers that vanished (a crashed node, a half-open partition) while a
/// stream is open; without them a stalled download would hold its connection until TCP gives up
/// after many minutes. Same interval and timeout as gRPC's keepalive defaults for servers that
/// enable it.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a closing connection with no request in flight gets to finish closing (HTTP/2's
/// GOAWAY and ping exchange) before it is dropped, so a peer that stopped answering cannot hold
/// up shutdown or keep an idle connection open.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The hyper settings every connection of a listener shares: HTTP/1.1 and HTTP/2 on one port,
/// HTTP/2 keep-alive pings. No hyper header timeout: [`serve`] enforces its own.
pub(crate) fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    builder
}

/// Serves `io` with `app` until the client closes it, a timeout of `limits` closes it, or
/// `shutdown` is cancelled and the requests in flight finish. `accepted` is when the TCP
/// connection was accepted: the header-read timeout of a new connection counts from there, so
/// it includes a TLS handshake.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve<I>(
    io: I,
    peer: SocketAddr,
    caller: Caller,
    builder: &auto::Builder<TokioExecutor>,
    app: Router,
    limits: ListenerLimits,
    accepted: Instant,
    shutdown: &CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(Observed::new(io, Arc::clone(&activity)));
    let service = Tracked {
        app,
        activity: Arc::clone(&activity),
        peer,
        caller,
    };
    let mut connection = pin!(builder.serve_connection(io, service));
    let mut clock = Clock::new(accepted);
    // Once closing has begun: when to drop the connection if it has nothing in flight.
    let mut closing: Option<Instant> = None;
    loop {
        clock.observe(&activity, Instant::now());
        let deadline = match closing {
            Some(at) if !clock.busy => Some((at, Expiry::Closed)),
            Some(_) => None,
            None => clock.deadline(activity.http2.load(Ordering::Acquire), &limits),
        };
        if let Some((at, expiry)) = deadline
            && at <= Instant::now()
        {
            match expiry {
                Expiry::Closed => {
                    tracing::debug!(%peer, "dropping a connection that did not finish closing");
                    return;
                }
                Expiry::HeaderRead => {
                    tracing::debug!(%peer, "closing a connection: header read timed out");
                    return;
                }
                // HTTP/1.1 has no way to announce the close; the client sees it on its next use
                // or (usually) has dropped the connection from its pool already.
                Expiry::Idle if !activity.http2.load(Ordering::Acquire) => {
                    tracing::debug!(%peer, "closing an idle connection");
                    return;
                }
                // A GOAWAY tells the client to open a new connection for its next request.
                Expiry::Idle => {
                    tracing::debug!(%peer, "closing an idle HTTP/2 connection");
                    connection.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + CLOSE_GRACE);
                    continue;
                }
            }
        }
        let sleep = async {
            match deadline {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if closing.is_none() => {
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + CLOSE_GRACE);
            }
            () = activity.changed.notified() => {}
            () = sleep => {}
        }
    }
}

/// What a connection is doing, updated by its I/O and its requests, read by its supervisor.
#[derive(Debug, Default)]
struct Activity {
    in_flight: AtomicUsize,
    /// Counts the times `in_flight` fell to zero, so the supervisor sees every idle period begin
    /// even when it missed the busy time in between.
    idle_periods: AtomicU64,
    /// Bytes arrived since the connection last went idle.
    read_since_idle: AtomicBool,
    /// The client opened with the HTTP/2 preface.
    http2: AtomicBool,
    /// Woken on every change above that can move a deadline.
    changed: Notify,
}

impl Activity {
    fn read(&self) {
        // Only the first read of an idle period wakes the supervisor; bulk uploads read freely.
        if !self.read_since_idle.load(Ordering::Relaxed)
            && !self.read_since_idle.swap(true, Ordering::AcqRel)
        {
            self.changed.notify_one();
        }
    }
}

/// The supervisor's view of an [`Activity`], with the times it saw things change.
#[derive(Debug)]
struct Clock {
    idle_periods: u64,
    busy: bool,
    /// When the current idle period began (the connection was accepted or its last request
    /// ended).
    idle_since: Instant,
    /// When the request now being read began: accept time for a new connection, else the first
    /// byte read while idle.
    header_since: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
enum Expiry {
    HeaderRead,
    Idle,
    Closed,
}

impl Clock {
    fn new(accepted: Instant) -> Self {
        Self {
            idle_periods: 0,
            busy: false,
            idle_since: accepted,
            header_since: Some(accepted),
        }
    }

    fn observe(&mut self, activity: &Activity, now: Instant) {
        let idle_periods = activity.idle_periods.load(Ordering::Acquire);
        if idle_periods != self.idle_periods {
            self.idle_periods = idle_periods;
            self.idle_since = now;
            self.header_since = None;
        }
        self.busy = activity.in_flight.load(Ordering::Acquire) > 0;
        if !self.busy
            && self.header_since.is_none()
            && activity.read_since_idle.load(Ordering::Acquire)
        {
            self.header_since = Some(now);
        }
    }

    fn deadline(&self, http2: bool, limits: &ListenerLimits) -> Option<(Instant, Expiry)> {
        if self.busy {
            return None;
        }
        // A timeout too long to add to the clock never expires.
        match self.header_since {
            Some(since) if !http2 => since
                .checked_add(limits.header_read_timeout)
                .map(|at| (at, Expiry::HeaderRead)),
            _ => self
                .idle_since
                .checked_add(limits.idle_timeout)
                .map(|at| (at, Expiry::Idle)),
        }
    }
}

/// One request in flight on a connection; dropped with the response body (or with the request,
/// when the client gives up before the response).
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: Arc<Activity>) -> Self {
        if activity.in_flight.fetch_add(1, Ordering::AcqRel) == 0 {
            activity.changed.notify_one();
        }
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity.read_since_idle.store(false, Ordering::Release);
            activity.idle_periods.fetch_add(1, Ordering::AcqRel);
            activity.changed.notify_one();
        }
    }
}

/// The router as a hyper service that counts its requests in flight.
#[derive(Clone)]
struct Tracked {
    app: Router,
    activity: Arc<Activity>,
    /// The client's address, handed to handlers as axum's `ConnectInfo<SocketAddr>` (per-client
    /// bounds, logs).
    peer: SocketAddr,
    /// Who the client's certificate says it is (under mutual TLS), for [`super::with_access`].
    caller: Caller,
}

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response, std::convert::Infallible>> + Send + 'static>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        request.extensions_mut().insert(self.caller);
        let in_flight = InFlight::enter(Arc::clone(&self.activity));
        // A `Router` is always ready (its `poll_ready` returns at once), so it is called directly.
        let response = self.app.clone().call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| {
                Body::new(Guarded {
                    body,
                    _in_flight: in_flight,
                })
            }))
        })
    }
}

pin_project! {
    /// A response body that holds its request's [`InFlight`] until hyper drops it.
    struct Guarded<B> {
        #[pin]
        body: B,
        _in_flight: InFlight,
    }
}

impl<B: http_body::Body> http_body::Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    // Forwarded so that hyper still sends `Content-Length` for sized responses.
    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A connection's I/O, passed through unchanged while reporting reads to its [`Activity`] and
/// checking the first bytes for the HTTP/2 preface.
struct Observed<I> {
    io: I,
    activity: Arc<Activity>,
    /// Preface bytes matched so far; `None` once the preface matched or failed to.
    preface: Option<usize>,
}

impl<I> Observed<I> {
    fn new(io: I, activity: Arc<Activity>) -> Self {
        Self {
            io,
            activity,
            preface: Some(0),
        }
    }

    fn saw(&mut self, bytes: &[u8]) {
        if let Some(matched) = self.preface {
            let expected = &H2_PREFACE[matched..];
            let len = expected.len().min(bytes.len());
            self.preface = if bytes[..len] != expected[..len] {
                None
            } else if matched + len == H2_PREFACE.len() {
                self.activity.http2.store(true, Ordering::Release);
                None
            } else {
                Some(matched + len)
            };
        }
        self.activity.read();
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Observed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && buf.filled().len() > before
        {
            this.saw(&buf.filled()[before..]);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Observed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed() -> Observed<tokio::io::Empty> {
        Observed::new(tokio::io::empty(), Arc::default())
    }

    #[test]
    fn the_preface_is_recognised_across_reads() {
        let mut io = observed();
        io.saw(&H2_PREFACE[..5]);
        assert!(!io.activity.http2.load(Ordering::Acquire));
        io.saw(&H2_PREFACE[5..]);
        assert!(io.activity.http2.load(Ordering::Acquire));
    }

    #[test]
    fn an_http1_request_is_not_taken_for_http2() {
        let mut io = observed();
        io.saw(b"PRI * HTTP/1.1\r\n");
        io.saw(&H2_PREFACE[16..]);
        assert!(!io.activity.http2.load(Ordering::Acquire));
    }

    #[test]
    fn deadlines_follow_the_connection_through_a_request() {
        let limits = ListenerLimits {
            header_read_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            max_connections: 1,
        };
        let activity = Arc::new(Activity::default());
        let start = Instant::now();
        let mut clock = Clock::new(start);
        let at = |seconds| start + Duration::from_secs(seconds);

        // New: the headers are due a header timeout after accept, even with no bytes yet.
        clock.observe(&activity, at(0));
        assert!(
            matches!(clock.deadline(false, &limits), Some((t, Expiry::HeaderRead)) if t == at(1))
        );
        // ...but an HTTP/2 connection (preface read) is only bound by the idle timeout.
        assert!(matches!(clock.deadline(true, &limits), Some((t, Expiry::Idle)) if t == at(10)));

        // A request in flight: no deadline at all.
        let request = InFlight::enter(Arc::clone(&activity));
        activity.read();
        clock.observe(&activity, at(0));
        assert!(clock.deadline(false, &limits).is_none());

        // It ended at 20 s: idle from there.
        drop(request);
        clock.observe(&activity, at(20));
        assert!(matches!(clock.deadline(false, &limits), Some((t, Expiry::Idle)) if t == at(30)));

        // The next request's first bytes at 25 s: its headers are due at 26 s.
        activity.read();
        clock.observe(&activity, at(25));
        assert!(
            matches!(clock.deadline(false, &limits), Some((t, Expiry::HeaderRead)) if t == at(26))
        );
        // HTTP/2 ignores bytes between streams (pings, window updates).
        assert!(matches!(clock.deadline(true, &limits), Some((t, Expiry::Idle)) if t == at(30)));
    }

    #[test]
    fn a_timeout_too_long_for_the_clock_never_expires() {
        let limits = ListenerLimits {
            header_read_timeout: Duration::MAX,
            idle_timeout: Duration::MAX,
            max_connections: 1,
        };
        let clock = Clock::new(Instant::now());
        assert!(clock.deadline(false, &limits).is_none());
        assert!(clock.deadline(true, &limits).is_none());
    }
}
