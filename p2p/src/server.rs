//! The gRPC `Peer` service: sessions (bitfield, then have/complete notices) and piece requests
//! answered in rate-limited chunks, over any [`PieceSource`].

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use shoal_core::{Bitfield, Digest, Metainfo, PeerId};
use shoal_proto::v1::peer_server::Peer;
use shoal_proto::v1::{PieceChunk, PieceRequest, SessionEvent, SessionRequest, session_event};
use shoal_storage::fsutil::FileRange;
use shoal_swarm::notices;
use shoal_swarm::seeding::{self, Blob, Decision, Seeder, SeedingConfig};
use shoal_swarm::slots::{PieceCopies, PieceCopy, UploadSlot, UploadSlots};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::source::{PieceSource, piece_range};
use crate::{Faults, Limiter, P2pError, P2pMetrics, PeerServer};

/// The `RESOURCE_EXHAUSTED` message of a busy answer.
pub(crate) const BUSY: &str = "busy: every upload slot is taken";
/// The `FAILED_PRECONDITION` message of a "get it elsewhere" answer (an origin's super-seeding,
/// or an agent already uploading its bound of copies of the piece).
pub(crate) const ELSEWHERE: &str = "elsewhere: other peers hold or will soon hold this piece";
/// The metadata of an "elsewhere" answer naming a piece the origin would send instead
/// (peer.proto).
pub(crate) const INSTEAD: &str = "shoal-instead";

/// An origin's "get it elsewhere" answer, naming the piece it would send `instead`.
pub(crate) fn elsewhere_status(instead: Option<u32>) -> Status {
    let mut status = Status::failed_precondition(ELSEWHERE);
    if let Some(piece) = instead {
        status.metadata_mut().insert(INSTEAD, piece.into());
    }
    status
}

/// The piece an "elsewhere" answer names instead, when it names a valid one.
pub(crate) fn instead_of(status: &Status) -> Option<u32> {
    status.metadata().get(INSTEAD)?.to_str().ok()?.parse().ok()
}

/// Which share of a blob's pieces this origin sends first in a crowd: `(index, of)` when it is
/// owner `index` of the `of` origins owning the blob, None when it owns it alone (or cannot tell).
pub type ShareOf = Arc<dyn Fn(&Digest) -> Option<(u32, u32)> + Send + Sync>;

/// An origin's super-seeding (`shoal_swarm::seeding`): the policy, and its share of each blob.
#[derive(Clone)]
pub struct Seeding {
    pub config: SeedingConfig,
    pub share: ShareOf,
}

impl Seeding {
    /// The policy for an origin that owns its blobs alone (no shares).
    pub fn alone(config: SeedingConfig) -> Seeding {
        Seeding {
            config,
            share: Arc::new(|_| None),
        }
    }
}

impl std::fmt::Debug for Seeding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seeding")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Session events buffered per stream: enough to keep the sender busy while one is on the wire,
/// few enough that a slow reader holds only a handful in memory.
const STREAM_BUFFER: usize = 4;

/// How a peer service spreads a crowd over the pieces it holds, within its upload slots: which
/// requests it answers `FAILED_PRECONDITION` "elsewhere".
#[derive(Debug, Clone)]
pub enum Spread {
    /// An agent: at most this many uploads of one piece at once
    /// (`shoal_swarm::slots::PIECE_COPIES`), unless the request insists.
    PieceCopies(usize),
    /// An origin's super-seeding: while a crowd pulls a blob, pieces it sent recently
    /// (`shoal_swarm::seeding`).
    Seeding(Seeding),
    /// None: an origin with super-seeding off serves whatever its slots allow.
    Unbounded,
}

/// The gRPC `Peer` service over `source`: egress limited by `limiter` (whose chunk size is the
/// `PieceChunk` size), at most `upload_slots` pieces served at once (the rest are answered
/// busy), requests spread as `spread` says, served bytes counted in `metrics`, `faults` for tests
/// only.
pub fn peer_service(
    source: Arc<dyn PieceSource>,
    limiter: Limiter,
    upload_slots: usize,
    metrics: P2pMetrics,
    faults: Faults,
    spread: Spread,
) -> PeerServer {
    if faults.corrupt_served_pieces {
        tracing::warn!("TEST-ONLY fault injection: every piece this peer serves will be corrupted");
    }
    PeerServer::new(Arc::new(PeerService {
        source,
        limiter,
        slots: UploadSlots::new(upload_slots),
        metrics,
        faults,
        spread: match spread {
            Spread::PieceCopies(cap) => Spreader::PieceCopies(PieceCopies::new(cap)),
            Spread::Seeding(seeding) => Spreader::Seeding(
                Mutex::new(Seeder::new(seeding.config, seeding::DEFAULT_BLOBS)),
                seeding.share,
            ),
            Spread::Unbounded => Spreader::Unbounded,
        },
        started: Instant::now(),
    }))
}

pub(crate) struct PeerService {
    source: Arc<dyn PieceSource>,
    limiter: Limiter,
    /// One slot per piece being served, held until its last chunk is sent.
    slots: Arc<UploadSlots>,
    metrics: P2pMetrics,
    faults: Faults,
    spread: Spreader,
    /// The seeder's clock.
    started: Instant,
}

/// [`Spread`]'s state.
enum Spreader {
    /// Uploads in flight per (blob, piece).
    PieceCopies(Arc<PieceCopies<(Digest, u32)>>),
    /// An origin's super-seeding ledgers (the blobs served most recently) and its share of each.
    Seeding(Mutex<Seeder<Digest>>, ShareOf),
    Unbounded,
}

pub fn parse_digest(text: &str) -> Result<Digest, Status> {
    Digest::parse(text).map_err(|e| Status::invalid_argument(format!("digest {text:?}: {e}")))
}

fn parse_peer(text: &str) -> Result<PeerId, Status> {
    PeerId::parse(text).map_err(|e| Status::invalid_argument(format!("peer_id {text:?}: {e}")))
}

/// The blob a session is about and the caller's id, as every `Session` call is checked.
pub fn parse_session_request(request: &SessionRequest) -> Result<(Digest, PeerId), Status> {
    Ok((
        parse_digest(&request.digest)?,
        parse_peer(&request.peer_id)?,
    ))
}

fn event(event: session_event::Event) -> Result<SessionEvent, Status> {
    Ok(SessionEvent { event: Some(event) })
}

#[tonic::async_trait]
impl Peer for PeerService {
    type SessionStream = ReceiverStream<Result<SessionEvent, Status>>;
    type GetPieceStream = PieceChunks;

    async fn session(
        &self,
        request: Request<SessionRequest>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let request = request.into_inner();
        let (digest, caller) = parse_session_request(&request)?;
        let (_, have) = self
            .source
            .lookup(&digest)
            .await
            .ok_or(P2pError::NotFound { digest })?;
        tracing::debug!(%digest, %caller, addr = %request.addr, "session opened");
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        // Untracked: the task feeds this response stream and ends with it, and the server's
        // graceful shutdown waits for (or, in the agent, cuts) the stream.
        tokio::spawn(notify(have, tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_piece(
        &self,
        request: Request<PieceRequest>,
    ) -> Result<Response<Self::GetPieceStream>, Status> {
        Ok(Response::new(self.start_piece(request.into_inner()).await?))
    }
}

/// A piece request that passed every check: it holds an upload slot (and, on an agent, a count
/// of the piece's uploads) until it drops.
pub(crate) struct Admitted {
    pub digest: Digest,
    pub metainfo: Metainfo,
    pub index: u32,
    slot: UploadSlot,
    copy: Option<PieceCopy<(Digest, u32)>>,
}

impl PeerService {
    /// Starts serving a piece: its chunks (or an error) come from the returned stream.
    pub(crate) async fn start_piece(&self, request: PieceRequest) -> Result<PieceChunks, Status> {
        let admitted = self.admit(&request).await?;
        let file = self.piece_file(&admitted).await?;
        Ok(self.chunks(admitted, file))
    }

    /// Checks a piece request (the blob and piece held here, a free upload slot, the spread
    /// policy), or answers why not.
    pub(crate) async fn admit(&self, request: &PieceRequest) -> Result<Admitted, Status> {
        let digest = parse_digest(&request.digest)?;
        let index = request.index;
        let (metainfo, have) = self
            .source
            .lookup(&digest)
            .await
            .ok_or(P2pError::NotFound { digest })?;
        piece_range(&metainfo, index)?;
        if !have.borrow().get(index) {
            return Err(Status::not_found(format!(
                "piece {index} of {digest} is not held here"
            )));
        }
        // Refuse rather than queue (`shoal_swarm::slots`): another holder is asked at once.
        let Some(slot) = self.slots.try_take() else {
            self.metrics.busy_answered.inc();
            return Err(Status::resource_exhausted(BUSY));
        };
        let copy = match self.spread(
            &digest,
            u32::try_from(metainfo.piece_count()).unwrap_or(u32::MAX),
            request,
        ) {
            Ok(copy) => copy,
            Err(instead) => {
                self.metrics.elsewhere_answered.inc();
                return Err(elsewhere_status(instead));
            }
        };
        Ok(Admitted {
            digest,
            metainfo,
            index,
            slot,
            copy,
        })
    }

    /// Where an admitted piece's bytes are: a range of an open file.
    pub(crate) async fn piece_file(&self, admitted: &Admitted) -> Result<FileRange, Status> {
        Ok(self
            .source
            .piece_file(&admitted.digest, &admitted.metainfo, admitted.index)
            .await?)
    }

    /// An admitted piece's bytes, read from `file`, as rate-limited chunks.
    pub(crate) fn chunks(&self, admitted: Admitted, file: FileRange) -> PieceChunks {
        PieceChunks {
            bytes: Some(file.stream()),
            pending: Bytes::new(),
            waiting: None,
            offset: 0,
            limiter: self.limiter.clone(),
            metrics: self.metrics.clone(),
            faults: self.faults,
            _slot: admitted.slot,
            _copy: admitted.copy,
        }
    }

    /// Whether a piece's `file` range can go to a socket with `sendfile`: all of it in the page
    /// cache (else reading it could wait on the disk, which [`PeerService::chunks`] does off
    /// the runtime), and no test fault to apply to the bytes.
    pub(crate) fn sendable(&self, file: &FileRange) -> bool {
        !self.faults.corrupt_served_pieces
            && shoal_pagecache::resident(
                &file.file,
                file.range.start,
                file.range.end - file.range.start,
            )
    }

    pub(crate) fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    pub(crate) fn metrics(&self) -> &P2pMetrics {
        &self.metrics
    }
}

impl PeerService {
    /// Whether this request is served (with the piece's copy counted, for an agent) or sent
    /// elsewhere, naming the piece an origin would send instead (its slot, taken just before,
    /// is then given back). An origin records served requests in the blob's ledger.
    fn spread(
        &self,
        digest: &Digest,
        pieces: u32,
        request: &PieceRequest,
    ) -> Result<Option<PieceCopy<(Digest, u32)>>, Option<u32>> {
        let (seeder, share) = match &self.spread {
            Spreader::Unbounded => return Ok(None),
            Spreader::PieceCopies(copies) => {
                return match copies.try_take((*digest, request.index), request.insist) {
                    Some(copy) => Ok(Some(copy)),
                    None => Err(None),
                };
            }
            Spreader::Seeding(seeder, share) => (seeder, share),
        };
        let blob = Blob {
            pieces,
            share: share(digest),
        };
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let requester = seeding::requester_key(&request.peer_id);
        // A poisoned lock only means a panic elsewhere mid-update of counters: keep using them.
        let mut seeder = seeder.lock().unwrap_or_else(|e| e.into_inner());
        match seeder.decide(
            digest,
            blob,
            requester,
            request.index,
            request.insist,
            now_ms,
        ) {
            Decision::Serve => Ok(None),
            Decision::Elsewhere { instead } => Err(instead),
        }
    }
}

/// Sends the bitfield, then a `have` for each newly verified piece, then `complete`. Ends after
/// `complete`, when the caller goes away, or when the source stops updating (blob dropped).
/// While pieces keep landing, their notices go out in batches at most
/// [`notices::HAVE_BATCH`] apart, written to the connection together.
async fn notify(
    mut have: watch::Receiver<Bitfield>,
    tx: mpsc::Sender<Result<SessionEvent, Status>>,
) {
    // tokio's clock, the one the batch's sleep runs on.
    let mut last_sent: Option<tokio::time::Instant> = None;
    let mut sent = have.borrow_and_update().clone();
    let first = session_event::Event::Bitfield(shoal_proto::v1::Bitfield {
        // Callers know whom they dialled (the tracker's PeerInfo); the service has no identity.
        peer_id: String::new(),
        piece_count: sent.len(),
        bits: sent.as_bytes().to_vec(),
    });
    if tx.send(event(first)).await.is_err() {
        return;
    }
    loop {
        if sent.is_complete() {
            let _ = tx.send(event(session_event::Event::Complete(true))).await;
            return;
        }
        tokio::select! {
            () = tx.closed() => return,
            changed = have.changed() => if changed.is_err() { return },
        }
        let delay = notices::have_delay(last_sent.map(|at| at.elapsed()), notices::HAVE_BATCH);
        if !delay.is_zero() {
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
        last_sent = Some(tokio::time::Instant::now());
        let now = have.borrow_and_update().clone();
        for piece in now.ones().filter(|&p| !sent.get(p)) {
            if tx
                .send(event(session_event::Event::Have(piece)))
                .await
                .is_err()
            {
                return;
            }
        }
        sent = now;
    }
}

/// One piece as `PieceChunk`s of at most the limiter's chunk size, each paying egress before it
/// is yielded. Polled by the response body itself: no task and no channel per piece, whose
/// wake-ups cost more than a small piece's bytes. The upload slot is released when it drops.
pub(crate) struct PieceChunks {
    /// The piece's bytes still to be read; None once they ended or failed.
    bytes: Option<shoal_storage::ByteStream>,
    /// Read but not yet cut into chunks.
    pending: Bytes,
    /// A chunk waiting for the limiter.
    waiting: Option<(Bytes, BoxFuture<'static, ()>)>,
    offset: u64,
    limiter: Limiter,
    metrics: P2pMetrics,
    faults: Faults,
    _slot: UploadSlot,
    /// An agent's count of this piece's uploads, held as long as the slot.
    _copy: Option<PieceCopy<(Digest, u32)>>,
}

impl Stream for PieceChunks {
    type Item = Result<PieceChunk, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some((_, admitted)) = &mut this.waiting {
                ready!(admitted.as_mut().poll(cx));
                let (chunk, _) = this.waiting.take().expect("a chunk is waiting");
                let len = chunk.len() as u64;
                let data = if this.faults.corrupt_served_pieces {
                    corrupt(chunk)
                } else {
                    chunk
                };
                let offset = this.offset;
                this.offset += len;
                this.metrics.bytes_served.inc_by(len);
                return Poll::Ready(Some(Ok(PieceChunk { offset, data })));
            }
            if !this.pending.is_empty() {
                let take = this.pending.len().min(this.limiter.chunk_size());
                let chunk = this.pending.split_to(take);
                let limiter = this.limiter.clone();
                this.waiting = Some((chunk, Box::pin(async move { limiter.acquire(take).await })));
                continue;
            }
            let Some(bytes) = &mut this.bytes else {
                return Poll::Ready(None);
            };
            match ready!(bytes.poll_next_unpin(cx)) {
                Some(Ok(data)) => this.pending = data,
                Some(Err(e)) => {
                    this.bytes = None;
                    return Poll::Ready(Some(Err(Status::internal(format!(
                        "reading the piece: {e}"
                    )))));
                }
                None => this.bytes = None,
            }
        }
    }
}

/// TEST-ONLY (`Faults::corrupt_served_pieces`): flips every bit of the chunk's first byte.
fn corrupt(chunk: Bytes) -> Bytes {
    let mut data = bytes::BytesMut::from(chunk);
    if let Some(first) = data.first_mut() {
        *first ^= 0xff;
    }
    data.freeze()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_elsewhere_answer_carries_the_piece_offered_instead_through_http_headers() {
        // As the hand-framed GetPiece answers (trailers-only) and its client reads the answer.
        let through_http = |status: Status| {
            let response = status.into_http::<tonic::body::Body>();
            Status::from_header_map(response.headers()).expect("a status in the headers")
        };
        let answer = through_http(elsewhere_status(Some(7)));
        assert_eq!(answer.code(), tonic::Code::FailedPrecondition);
        assert_eq!(answer.message(), ELSEWHERE);
        assert_eq!(instead_of(&answer), Some(7));
        assert_eq!(instead_of(&through_http(elsewhere_status(None))), None);
        // Garbage from a peer is no offer.
        let mut garbage = Status::failed_precondition(ELSEWHERE);
        garbage
            .metadata_mut()
            .insert(INSTEAD, "-1".parse().expect("ascii"));
        assert_eq!(instead_of(&through_http(garbage)), None);
    }

    /// The next session event, as the variant it carries.
    async fn next(rx: &mut mpsc::Receiver<Result<SessionEvent, Status>>) -> session_event::Event {
        rx.recv()
            .await
            .expect("the session is open")
            .expect("no error")
            .event
            .expect("an event")
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_have_goes_at_once_and_the_next_ones_wait_for_the_batch() {
        let (have_tx, have_rx) = watch::channel(Bitfield::new(4));
        let (tx, mut rx) = mpsc::channel(STREAM_BUFFER);
        let task = tokio::spawn(notify(have_rx, tx));
        assert!(matches!(
            next(&mut rx).await,
            session_event::Event::Bitfield(_)
        ));
        let start = tokio::time::Instant::now();
        have_tx.send_modify(|b| {
            b.set(0);
        });
        assert_eq!(next(&mut rx).await, session_event::Event::Have(0));
        assert_eq!(start.elapsed(), Duration::ZERO);
        // Landing right after the first, these two wait for the batch and go out together.
        have_tx.send_modify(|b| {
            b.set(2);
        });
        tokio::task::yield_now().await;
        have_tx.send_modify(|b| {
            b.set(1);
        });
        assert_eq!(next(&mut rx).await, session_event::Event::Have(1));
        assert_eq!(next(&mut rx).await, session_event::Event::Have(2));
        assert_eq!(start.elapsed(), notices::HAVE_BATCH);
        // After a quiet spell the next one goes at once again, then `complete`.
        tokio::time::sleep(notices::HAVE_BATCH * 4).await;
        let quiet = tokio::time::Instant::now();
        have_tx.send_modify(|b| {
            b.set(3);
        });
        assert_eq!(next(&mut rx).await, session_event::Event::Have(3));
        assert_eq!(quiet.elapsed(), Duration::ZERO);
        assert_eq!(next(&mut rx).await, session_event::Event::Complete(true));
        task.await.expect("notify ends after complete");
    }
}
