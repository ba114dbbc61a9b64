//! Request bodies a handler answers without reading. Over HTTP/1.1, a server that closes a
//! connection with unread bytes in its receive buffer resets it, and a sender still writing the
//! body then sees the reset instead of the answer: a proxy forwarding an upload chunk to a
//! session that is gone turned the origin's 404 into its own 503. So a body the handler dropped
//! unread is read and discarded, within bounds, before the answer goes out (what servers call a
//! lingering close). HTTP/2 ends such a stream on its own, so its requests are not wrapped.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as _, Frame, SizeHint};

/// Most bytes and longest time spent reading a refused body; beyond, the connection is reset
/// as before.
const DRAIN_BYTES: u64 = 64 << 20;
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// Where a request body the handler dropped unread is handed back.
type Slot = Arc<Mutex<Option<Body>>>;

/// Middleware: runs the handler, then drains the body it dropped unread (if any).
pub(crate) async fn drain_unread(request: Request, next: Next) -> Response {
    if request.version() >= http::Version::HTTP_2 || request.body().is_end_stream() {
        return next.run(request).await;
    }
    let slot = Slot::default();
    let handed = Arc::clone(&slot);
    let request = request.map(|inner| {
        Body::new(ReturnedIfUnread {
            inner: Some(inner),
            slot: handed,
        })
    });
    let response = next.run(request).await;
    let unread = shoal_core::lock(&slot).take();
    if let Some(body) = unread {
        drain(body).await;
    }
    response
}

/// Reads and discards `body` up to the bounds.
async fn drain(body: Body) {
    let mut stream = body.into_data_stream();
    let read = async {
        let mut read = 0u64;
        while let Some(Ok(chunk)) = futures::StreamExt::next(&mut stream).await {
            read += chunk.len() as u64;
            if read > DRAIN_BYTES {
                return;
            }
        }
    };
    // Running out of time only means the connection is reset, as without draining.
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

/// Passes `inner` through; dropped before its end (or an error), it hands `inner` to `slot`.
struct ReturnedIfUnread {
    /// `None` once the stream ended or failed: nothing is left to hand back.
    inner: Option<Body>,
    slot: Slot,
}

impl http_body::Body for ReturnedIfUnread {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            self.inner = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    // Forwarded so that extractors still see the request's declared length.
    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl Drop for ReturnedIfUnread {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take()
            && !inner.is_end_stream()
        {
            *shoal_core::lock(&self.slot) = Some(inner);
        }
    }
}
