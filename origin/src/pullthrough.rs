//! Pull-through: a blob the store lacks but the backend has is copied into the store, verified
//! against its digest, and (for a plain GET) streamed to the client at the same time.
//!
//! The copy runs in its own task (on the origin's tracker, so shutdown waits for it), so a client
//! that disconnects does not abort storing. The last chunk is held back until the digest is
//! verified: a client never receives a complete body whose bytes failed verification; it sees
//! the stream end with an error instead.
//!
//! The answer's headers wait until the blob can be stored: its whole length is preallocated and
//! its first two chunks written (a shorter blob is verified and stored first), so a full disk is
//! a 503 before any body byte, never a 200 cut short.
//!
//! Concurrent requests for one missing blob share one copy (`flights`): the first streams it
//! while it is stored; the others wait until it is stored and then read it from the store.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use shoal_backends::blob_key;
use shoal_core::{Digest, ErrorCode, Name};
use shoal_storage::{BlobWriter, ByteStream, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::Origin;
use crate::errors::ApiError;
use crate::flights::{self, Lead, Outcome, Turn};
use crate::metrics::MismatchSource;

/// Chunks buffered between the copy task and a slow client: 16 chunks of at most 256 KiB keep
/// a pull-through's memory bounded to a few MiB while absorbing jitter on either side.
const FORWARD_BUFFER: usize = 16;

/// The client a copy streams to: told once whether the blob can be stored (after its first
/// chunk is on disk), then sent the bytes.
struct Client {
    ready: Option<oneshot::Sender<Result<(), ApiError>>>,
    bytes: Option<mpsc::Sender<io::Result<Bytes>>>,
}

/// Starts copying `digest` from the backend into the store and returns its length and a
/// stream of its bytes for the client; `None` when the backend does not have it.
pub(crate) async fn stream(
    origin: &Arc<Origin>,
    digest: Digest,
    namespace: Option<&Name>,
) -> Result<Option<(u64, ByteStream)>, ApiError> {
    let lead = match origin.flights.join(digest) {
        Turn::Lead(lead) => lead,
        Turn::Wait(slot) => {
            return match settled(&digest, flights::wait(slot).await)? {
                true => from_store(origin, &digest).await,
                false => Ok(None),
            };
        }
    };
    // The previous flight may have stored the blob since this request's store lookup.
    if let Some(stored) = from_store(origin, &digest).await? {
        lead.finish(Outcome::Stored);
        return Ok(Some(stored));
    }
    let Some((len, source, writer)) = open(origin, &digest, namespace).await? else {
        lead.finish(Outcome::Missing);
        return Ok(None);
    };
    let (tx, rx) = mpsc::channel(FORWARD_BUFFER);
    let (ready, started) = oneshot::channel();
    let client = Client {
        ready: Some(ready),
        bytes: Some(tx),
    };
    origin.tasks.spawn(copy(
        origin.clone(),
        digest,
        source,
        writer,
        Some(client),
        lead,
    ));
    match started.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(error),
        Err(_) => {
            return Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("pull-through of {digest} stopped before its first byte"),
            ));
        }
    }
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok(Some((len, body.boxed())))
}

/// Copies `digest` from the backend into the store and waits until it is verified and stored.
/// Returns `false` when the backend does not have it.
pub(crate) async fn fetch(
    origin: &Arc<Origin>,
    digest: Digest,
    namespace: Option<&Name>,
) -> Result<bool, ApiError> {
    let lead = match origin.flights.join(digest) {
        Turn::Lead(lead) => lead,
        Turn::Wait(slot) => return settled(&digest, flights::wait(slot).await),
    };
    if origin.store.stat(&digest).await?.is_some() {
        lead.finish(Outcome::Stored);
        return Ok(true);
    }
    let Some((_, source, writer)) = open(origin, &digest, namespace).await? else {
        lead.finish(Outcome::Missing);
        return Ok(false);
    };
    // Spawned so that the copy completes even if this request is abandoned.
    let copy = origin
        .tasks
        .spawn(copy(origin.clone(), digest, source, writer, None, lead));
    match copy.await {
        Ok(Ok(_)) => Ok(true),
        Ok(Err(error)) => Err(ApiError::pull_through_failed(&digest, &error)),
        Err(join) => Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("pull-through of {digest} failed: {join}"),
        )),
    }
}

/// What a waiting request makes of the leading request's outcome: stored or not there.
fn settled(digest: &Digest, outcome: Outcome) -> Result<bool, ApiError> {
    match outcome {
        Outcome::Stored => Ok(true),
        Outcome::Missing => Ok(false),
        Outcome::Failed(reason) => Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("pull-through of {digest} failed: {reason}"),
        )),
    }
}

/// The whole stored blob as a stream; `None` when the store lacks it.
async fn from_store(
    origin: &Origin,
    digest: &Digest,
) -> Result<Option<(u64, ByteStream)>, ApiError> {
    Ok(origin.store.open_blob(digest).await?.map(|file| {
        let len = file.len();
        (len, file.stream(0..len))
    }))
}

/// Finds the blob on another owner of the ring, then in the backend `namespace` routes to
/// (every backend in turn without one), and reserves room for it in the store. Either source is
/// verified as it is stored.
async fn open(
    origin: &Origin,
    digest: &Digest,
    namespace: Option<&Name>,
) -> Result<Option<(u64, ByteStream, BlobWriter)>, ApiError> {
    if let Some(ring) = &origin.ring
        && let Some((len, source)) = ring.fetch_from_peers(digest).await
    {
        let writer = staging(origin, digest, len).await?;
        return Ok(Some((len, source, writer)));
    }
    let key = blob_key(digest);
    let Some((backend, len)) = origin.backends.locate(namespace, &key).await? else {
        return Ok(None);
    };
    // The object may vanish between stat and get; that is a miss, not an error.
    let Some(source) = backend.get(&key, None).await? else {
        return Ok(None);
    };
    let writer = staging(origin, digest, len).await?;
    Ok(Some((len, source, writer)))
}

/// A writer for `digest` with its `len` bytes preallocated: a full disk fails the request here.
async fn staging(origin: &Origin, digest: &Digest, len: u64) -> Result<BlobWriter, ApiError> {
    let staged = async {
        let mut writer = origin.store.writer(*digest).await?;
        writer.preallocate(len).await?;
        Ok(writer)
    };
    staged.await.map_err(|error: StoreError| {
        tracing::warn!(%digest, len, error = %shoal_core::chain(&error), "cannot store a blob pulled through");
        ApiError::pull_through_failed(digest, &error)
    })
}

/// Moves bytes from `source` into `writer` (and to `client` while it listens), then commits.
/// The client is told it may start once two chunks are on disk (or the blob is stored, for a
/// shorter one); a failure before then reaches it as an error response, not a cut body.
async fn copy(
    origin: Arc<Origin>,
    digest: Digest,
    mut source: ByteStream,
    mut writer: BlobWriter,
    mut client: Option<Client>,
    lead: Lead,
) -> Result<u64, StoreError> {
    let mut held: Option<Bytes> = None;
    let stored = async {
        while let Some(chunk) = source.next().await {
            let chunk = chunk.map_err(|source| StoreError::Body { source })?;
            writer.write(&chunk).await?;
            if let Some(previous) = held.replace(chunk) {
                // Headers go once a second chunk is on disk: a blob of one chunk is verified
                // before them, so a corrupt one is an error response, not a cut body.
                if client.as_ref().is_some_and(|client| client.ready.is_some()) {
                    writer.flush().await?;
                    start(&mut client, Ok(()));
                }
                forward(&mut client, Ok(previous)).await;
            }
        }
        writer.commit().await
    }
    .await;
    lead.finish(match &stored {
        Ok(_) => Outcome::Stored,
        Err(error) => Outcome::Failed(error.to_string()),
    });
    match &stored {
        Ok(len) => {
            origin.metrics.pulled_through();
            origin.stored();
            tracing::info!(%digest, len = *len, "pulled through from the backend");
            start(&mut client, Ok(()));
            if let Some(last) = held {
                forward(&mut client, Ok(last)).await;
            }
        }
        Err(error) => {
            if let StoreError::DigestMismatch { .. } = error {
                origin.metrics.digest_mismatch(MismatchSource::Backend);
            }
            tracing::error!(%digest, error = %shoal_core::chain(error), "pull-through from the backend failed; nothing stored");
            if !start(
                &mut client,
                Err(ApiError::pull_through_failed(&digest, error)),
            ) {
                let message = format!("pull-through of {digest} failed: {error}");
                forward(&mut client, Err(io::Error::other(message))).await;
            }
        }
    }
    stored
}

/// Tells a client still waiting for its headers how the copy started; `false` when it was told
/// already (or there is none).
fn start(client: &mut Option<Client>, outcome: Result<(), ApiError>) -> bool {
    let Some(ready) = client.as_mut().and_then(|client| client.ready.take()) else {
        return false;
    };
    if ready.send(outcome).is_err() {
        // The request was abandoned while waiting: nobody reads the bytes.
        *client = None;
    }
    true
}

/// Sends to the client unless it went away; a vanished client stops receiving, not the copy.
async fn forward(client: &mut Option<Client>, item: io::Result<Bytes>) {
    if let Some(tx) = client.as_ref().and_then(|client| client.bytes.as_ref())
        && tx.send(item).await.is_err()
    {
        *client = None;
    }
}
