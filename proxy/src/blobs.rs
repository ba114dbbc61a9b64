//! `GET`, `HEAD` and `DELETE /v2/<name>/blobs/<digest>`: blobs stream from their owning origin straight to
//! the client, honouring `Range`; nothing is buffered in the proxy. An owner that is down or lacks
//! the blob passes the request on to the next owner, and a body that breaks off or stops
//! (its origin hung) goes on from the next owner where it stopped. A delete is garbage
//! collection's, run by the build-index (`docs/gc.md`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use http::StatusCode;
use http::header::{CONTENT_LENGTH, CONTENT_RANGE};
use shoal_api::cluster::PROBE_AFTER;
use shoal_api::{ApiError, OriginClient};
use shoal_core::{ByteRange, ContentRange, Digest, ErrorCode, Name};
use shoal_registry_server::RegistryError;
use tokio::time::{Instant, Sleep};

use crate::metrics::counted;
use crate::state::AppState;
use crate::upstream::Upstreams;

/// How many times one answer's body goes on from another owner before it fails.
const RESUMES: usize = 3;

/// Streams the blob (or the requested range of it) from the origin; `None` when no owner has
/// it.
pub async fn get(
    state: &AppState,
    name: &Name,
    digest: &Digest,
    range: Option<ByteRange>,
) -> Result<Option<Response>, RegistryError> {
    let range = range.map(|range| range.to_string());
    let fetched = fetch(&state.upstreams, name, digest, range.as_deref()).await;
    let (upstream, origin) = match fetched {
        Ok(Some(upstream)) => upstream,
        Ok(None) => return Ok(None),
        Err(error) if is_unknown(&error) => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let mut response = Response::builder().status(upstream.status());
    if let Some(headers) = response.headers_mut() {
        for name in [CONTENT_LENGTH, CONTENT_RANGE] {
            if let Some(value) = upstream.headers().get(&name) {
                headers.insert(name, value.clone());
            }
        }
    }
    let body = match span(&upstream) {
        Some((next, end)) => Relay {
            upstreams: state.upstreams.clone(),
            name: name.clone(),
            digest: *digest,
            origin,
            body: upstream.bytes_stream().boxed(),
            next,
            end,
            resumes: 0,
            stall: Box::pin(tokio::time::sleep(PROBE_AFTER)),
            armed_at: next,
        }
        .stream()
        .boxed(),
        // Without a length to resume against, the body is passed on as it comes.
        None => upstream
            .bytes_stream()
            .map(|chunk| chunk.map_err(io::Error::other))
            .boxed(),
    };
    let body = counted(body, state.metrics.blob_bytes_out.clone());
    response
        .body(Body::from_stream(body))
        .map(Some)
        .map_err(RegistryError::unavailable)
}

/// Starts `GET` of `digest` (or `range` of it, a raw `Range` value) on the first owner that
/// answers, with the origin that did; `None` when no owner has it.
async fn fetch(
    upstreams: &Upstreams,
    name: &Name,
    digest: &Digest,
    range: Option<&str>,
) -> Result<Option<(reqwest::Response, OriginClient)>, ApiError> {
    upstreams
        .read_blob(digest, |origin| async move {
            match origin.get_blob(digest, Some(name), range).await {
                Ok(response) => Ok(Some((response, origin))),
                Err(error) if is_unknown(&error) => Ok(None),
                Err(error) => Err(error),
            }
        })
        .await
}

/// The blob offsets `[first, end)` an answer's body carries: a 206's `Content-Range`, or a
/// 200's `Content-Length` from 0.
fn span(response: &reqwest::Response) -> Option<(u64, u64)> {
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

/// A blob body relayed to the client that goes on from another owner (a `Range` request for
/// what is left) when its origin breaks off, or stops sending for [`PROBE_AFTER`] and then
/// fails a health probe: a hung origin (stopped, its kernel still holding the connection open)
/// would otherwise hold the client until it gives up. The bytes are the same from any owner:
/// they are named by their digest.
struct Relay {
    upstreams: Arc<Upstreams>,
    name: Name,
    digest: Digest,
    origin: OriginClient,
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    /// The offset of the next byte the client gets, and one past the last.
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
                if moved || !self.upstreams.origins().found_hung(&self.origin).await {
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
        let (response, origin) = fetch(&self.upstreams, &self.name, &self.digest, Some(&range))
            .await
            .map_err(|error| gone(shoal_core::chain(&error).to_string()))?
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

/// Answers from the origin's stat, which never downloads the blob.
pub async fn length(
    state: &AppState,
    name: &Name,
    digest: &Digest,
) -> Result<Option<u64>, RegistryError> {
    Ok(state
        .upstreams
        .read_blob(digest, |origin| async move {
            origin.stat_blob(digest, Some(name)).await
        })
        .await?)
}

/// A missing blob is reported with the digest asked for.
fn is_unknown(error: &ApiError) -> bool {
    error.is(ErrorCode::BlobUnknown) || matches!(error, ApiError::Remote { status: 404, .. })
}

/// `DELETE /v2/<name>/blobs/<digest>`, with `storage.delete.enabled`: the build-index deletes
/// the blob from every origin and the backend unless a recorded manifest of any repository
/// references it (403 DENIED, naming it). Blobs are shared by every repository, so the name
/// only decides who may delete.
pub async fn delete(state: &AppState, digest: &Digest) -> Result<Response, RegistryError> {
    if !state.blob_delete {
        return Err(RegistryError::new(
            ErrorCode::Unsupported,
            "blob deletes are disabled (proxy config `storage.delete.enabled`)",
        ));
    }
    state
        .upstreams
        .build_index()
        .gc()
        .delete_blob(digest)
        .await?;
    let mut response = Response::new(Body::empty());
    *response.status_mut() = http::StatusCode::ACCEPTED;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_404s_are_unknown_blobs() {
        let error = ApiError::Remote {
            service: "origin".into(),
            status: 404,
            code: None,
            message: String::new(),
        };
        assert!(is_unknown(&error));
        let error = ApiError::Remote {
            service: "origin".into(),
            status: 503,
            code: Some(ErrorCode::Unavailable),
            message: String::new(),
        };
        assert!(!is_unknown(&error));
    }
}
