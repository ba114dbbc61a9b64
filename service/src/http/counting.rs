//! Body wrappers that count bytes as they stream through, for the HTTP byte counters.
//!
//! Counting per frame (rather than trusting `Content-Length`) makes chunked uploads, streamed
//! downloads and aborted transfers all count what actually moved.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

/// Where a [`CountingBody`] reports the data bytes it passed on.
pub(crate) trait ByteSink {
    fn add(&self, bytes: u64);
}

pin_project! {
    /// Passes `inner` through unchanged (frames, size hint, end of stream) while reporting the
    /// size of every data frame to `sink`.
    pub(crate) struct CountingBody<B, S> {
        #[pin]
        inner: B,
        sink: S,
    }
}

impl<B, S> CountingBody<B, S> {
    pub(crate) fn new(inner: B, sink: S) -> Self {
        Self { inner, sink }
    }
}

impl<B: Body, S: ByteSink> Body for CountingBody<B, S> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            this.sink.add(data.remaining() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    // Forwarded so that hyper still sends `Content-Length` (not chunked) for sized responses
    // and extractors still see the request's declared length.
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Request body bytes. The route label is only final once the handler has answered (a
/// [`crate::http::RouteLabel`] in the response wins), so bytes read before that wait in
/// `Pending` and are flushed into the route's counter by [`RequestBytes::resolve`].
#[derive(Debug, Default)]
pub(crate) struct RequestBytes {
    state: Mutex<RequestState>,
}

#[derive(Debug)]
enum RequestState {
    Pending(u64),
    Resolved(Counter),
}

impl Default for RequestState {
    fn default() -> Self {
        Self::Pending(0)
    }
}

impl RequestBytes {
    /// Attaches the route's counter; bytes read so far are added now, later ones directly.
    pub(crate) fn resolve(&self, counter: Counter) {
        // Poisoning cannot leave the state inconsistent (every update is a single assignment).
        let mut state = shoal_core::lock(&self.state);
        if let RequestState::Pending(bytes) = *state {
            counter.inc_by(bytes);
        }
        *state = RequestState::Resolved(counter);
    }
}

impl ByteSink for Arc<RequestBytes> {
    fn add(&self, bytes: u64) {
        let mut state = shoal_core::lock(&self.state);
        match &mut *state {
            RequestState::Pending(pending) => *pending += bytes,
            RequestState::Resolved(counter) => {
                counter.inc_by(bytes);
            }
        }
    }
}

/// Response body bytes, plus the request duration, observed when the body is dropped: hyper
/// drops it as soon as the last byte is written or the client goes away.
#[derive(Debug)]
pub(crate) struct ResponseTally {
    pub bytes: Counter,
    pub duration: Histogram,
    pub start: Instant,
}

impl ByteSink for ResponseTally {
    fn add(&self, bytes: u64) {
        self.bytes.inc_by(bytes);
    }
}

impl Drop for ResponseTally {
    fn drop(&mut self) {
        self.duration.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body as AxumBody;
    use bytes::Bytes;
    use futures::StreamExt;

    use super::*;

    fn chunks(sizes: &[usize]) -> AxumBody {
        let frames: Vec<Result<Bytes, std::io::Error>> = sizes
            .iter()
            .map(|&size| Ok(Bytes::from(vec![7u8; size])))
            .collect();
        AxumBody::from_stream(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn bytes_before_resolve_are_flushed_and_later_ones_count_directly() {
        let tally = Arc::new(RequestBytes::default());
        let body = AxumBody::new(CountingBody::new(chunks(&[10, 20, 30]), tally.clone()));
        let mut stream = body.into_data_stream();
        let mut seen = 0;
        for _ in 0..2 {
            seen += stream.next().await.unwrap().unwrap().len();
        }
        assert_eq!(seen, 30);
        let counter = Counter::default();
        tally.resolve(counter.clone());
        assert_eq!(counter.get(), 30);
        stream.next().await.unwrap().unwrap();
        assert!(stream.next().await.is_none());
        assert_eq!(counter.get(), 60);
    }

    #[tokio::test]
    async fn size_hint_is_forwarded() {
        let tally = Arc::new(RequestBytes::default());
        let body = CountingBody::new(AxumBody::from("twelve bytes"), tally);
        assert_eq!(body.size_hint().exact(), Some(12));
    }

    #[tokio::test]
    async fn response_duration_is_observed_once_on_drop() {
        let tally = ResponseTally {
            bytes: Counter::default(),
            duration: Histogram::new([1.0]),
            start: Instant::now(),
        };
        let (bytes, duration) = (tally.bytes.clone(), tally.duration.clone());
        let body = AxumBody::new(CountingBody::new(chunks(&[5, 6]), tally));
        let collected = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        assert_eq!(collected.len(), 11);
        assert_eq!(bytes.get(), 11);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("duration", "test", duration);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("duration_count 1\n"), "{text}");
    }
}
