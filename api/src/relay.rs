//! A blob body read from an origin that goes on from another owner when its origin breaks off,
//! or stops sending for [`PROBE_AFTER`] and then fails a health probe. A hung origin (stopped,
//! its kernel still holding the connection open) would otherwise hold the reader until its
//! timeout. The bytes are the same from any owner: they are named by their digest. The proxy
//! relays blob GETs through it and origins fill in from their peers through it.

use std::io;
use std::pin::Pin;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use http::StatusCode;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE};
use reqwest::Response;
use shoal_core::{ContentRange, Digest};
use tokio::time::{Instant, Sleep};

use crate::cluster::{OriginCluster, PROBE_AFTER};
use crate::origin::OriginClient;

/// How many times one body goes on from another owner before it fails.
const RESUMES: usize = 3;

/// Asks the owners for the blob from a raw `Range` value on: the answer and the origin that gave
/// it, `None` when no owner has the blob. The error is each caller's own.
pub type Refetch = Box<dyn FnMut(String) -> BoxFuture<'static, Refetched> + Send>;

/// What a [`Refetch`] found.
pub type Refetched =
    Result<Option<(Response, OriginClient)>, Box<dyn std::error::Error + Send + Sync>>;

/// The body of `response` (from `origin`, a GET of `digest` or a range of it), going on from
/// the owners `refetch` finds when it breaks off or its origin hangs. An answer without a
/// length to resume against is passed on as it comes.
pub fn resuming_body(
    cluster: OriginCluster,
    digest: Digest,
    response: Response,
    origin: OriginClient,
    refetch: Refetch,
) -> BoxStream<'static, io::Result<Bytes>> {
    let Some((next, end)) = span(&response) else {
        return response
            .bytes_stream()
            .map(|chunk| chunk.map_err(io::Error::other))
            .boxed();
    };
    Relay {
        cluster,
        refetch,
        digest,
        origin,
        body: response.bytes_stream().boxed(),
        next,
        end,
        resumes: 0,
        stall: Box::pin(tokio::time::sleep(PROBE_AFTER)),
        armed_at: next,
    }
    .stream()
    .boxed()
}

/// The blob offsets `[first, end)` an answer's body carries: a 206's `Content-Range`, or a
/// 200's `Content-Length` from 0.
fn span(response: &Response) -> Option<(u64, u64)> {
    let header = |name| response.headers().get(name)?.to_str().ok();
    match response.status() {
        StatusCode::OK => Some((0, header(CONTENT_LENGTH)?.parse().ok()?)),
        StatusCode::PARTIAL_CONTENT => {
            let range = ContentRange::parse(header(CONTENT_RANGE)?).ok()?;
            Some((range.first, range.last + 1))
        }
        _ => None,
    }
}

struct Relay {
    cluster: OriginCluster,
    refetch: Refetch,
    digest: Digest,
    origin: OriginClient,
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    /// The offset of the next byte the reader gets, and one past the last.
    next: u64,
    end: u64,
    resumes: usize,
    /// Fires [`PROBE_AFTER`] after it was armed at offset `armed_at`; a body that moved since
    /// re-arms it. One timer a second rather than one per chunk, so a stall shows after one
    /// to two seconds.
    stall: Pin<Box<Sleep>>,
    armed_at: u64,
}

/// Why a body is taken over by another owner.
enum Broke {
    Early,
    Failed(reqwest::Error),
    Hung,
}

impl Relay {
    fn stream(self) -> impl futures::Stream<Item = io::Result<Bytes>> + Send {
        futures::stream::unfold(Some(self), |relay| async move {
            let mut relay = relay?;
            match relay.next_chunk().await {
                Some(Ok(chunk)) => Some((Ok(chunk), Some(relay))),
                Some(Err(error)) => Some((Err(error), None)),
                None => None,
            }
        })
    }

    async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        loop {
            let broke = tokio::select! {
                chunk = self.body.next() => match chunk {
                    Some(Ok(chunk)) => {
                        self.next += chunk.len() as u64;
                        return Some(Ok(chunk));
                    }
                    None if self.next >= self.end => return None,
                    None => Broke::Early,
                    Some(Err(error)) => Broke::Failed(error),
                },
                () = &mut self.stall => Broke::Hung,
            };
            if let Broke::Hung = broke {
                let moved = self.next > self.armed_at;
                self.rearm();
                if moved || !self.cluster.found_hung(&self.origin).await {
                    continue;
                }
            }
            if let Err(error) = self.resume(broke).await {
                return Some(Err(error));
            }
        }
    }

    /// Asks the owners for the rest of the body, from `next`.
    async fn resume(&mut self, broke: Broke) -> io::Result<()> {
        let why = match broke {
            Broke::Early => "ended early".to_owned(),
            Broke::Failed(error) => shoal_core::chain(&error).to_string(),
            Broke::Hung => "stopped sending and fails its health probe".to_owned(),
        };
        let gone = |reason: String| {
            io::Error::other(format!(
                "the body of {} broke off at byte {} ({why}): {reason}",
                self.digest, self.next
            ))
        };
        if self.resumes == RESUMES {
            return Err(gone(format!("given up after {RESUMES} other owners")));
        }
        self.resumes += 1;
        tracing::warn!(digest = %self.digest, origin = self.origin.base(), offset = self.next, %why, "blob body broke off; going on from another owner");
        let range = format!("bytes={}-{}", self.next, self.end - 1);
        let (response, origin) = (self.refetch)(range.clone())
            .await
            .map_err(|error| gone(shoal_core::chain(error.as_ref()).to_string()))?
            .ok_or_else(|| gone("no owner has the blob".to_owned()))?;
        if span(&response) != Some((self.next, self.end)) {
            return Err(gone(format!(
                "{} answered {} for {range}",
                origin.base(),
                response.status()
            )));
        }
        self.body = response.bytes_stream().boxed();
        self.origin = origin;
        self.rearm();
        Ok(())
    }

    fn rearm(&mut self) {
        self.armed_at = self.next;
        self.stall.as_mut().reset(Instant::now() + PROBE_AFTER);
    }
}
