//! The downloader's side of the peer protocol: a session task per connected peer (handshake
//! bitfield, then have/complete notices) and a task per piece request (chunks collected into
//! exactly one piece, ingress-limited, verified and written through the partial blob). Each
//! task reports to the download's driver as scheduler events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_core::{Bitfield, Digest, PeerId};
use shoal_proto::v1::peer_client::PeerClient;
use shoal_proto::v1::{PeerInfo, PieceRequest, SessionRequest, session_event};
use shoal_storage::{PartialBlob, StoreError};
use shoal_swarm::scheduler::Event;
use tokio::sync::mpsc;

use super::Shared;
use super::report::Received;
use crate::metrics::Held;
use crate::stream::{Answer, PieceBody, StreamError};
use crate::{server, wire};

/// A peer must send its bitfield this soon after we start connecting, or the attempt fails (and
/// the scheduler shuns the peer for a while). A healthy peer answers in milliseconds; a hung one
/// (it accepts TCP, then says nothing) must not hold a connection slot for long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What tasks report to the driver.
pub(crate) enum Msg {
    /// Peers handed out by the tracker.
    Discovered(Vec<PeerInfo>),
    /// A scheduler event from a session or piece task.
    Event(Event),
    /// This node's own store failed to take a verified piece (a write error, not the peer's
    /// fault): the download cannot go on, and no peer is to blame.
    StoreFailed(String),
}

/// A session with one peer for one blob.
pub(crate) struct Session {
    pub shared: Arc<Shared>,
    pub digest: Digest,
    pub pieces: u32,
    pub peer: PeerId,
    pub addr: String,
    pub tx: mpsc::UnboundedSender<Msg>,
}

impl Session {
    pub(crate) async fn run(self) {
        let peer = self.peer.clone();
        let tx = self.tx.clone();
        let event = match self.open().await {
            Ok(mut stream) => {
                let _connected = Held::new(&self.shared.metrics.peers_connected);
                let _ = tx.send(Msg::Event(Event::Connected {
                    peer: peer.clone(),
                    bitfield: stream.have.clone(),
                }));
                match stream.follow(&self).await {
                    // A complete peer has nothing more to say; it stays usable.
                    Ok(()) => return,
                    Err(reason) => {
                        tracing::debug!(digest = %self.digest, %peer, %reason, "session ended");
                        Event::Disconnected { peer }
                    }
                }
            }
            Err(reason) => {
                tracing::debug!(digest = %self.digest, %peer, addr = %self.addr, %reason, "cannot open session");
                Event::ConnectFailed { peer }
            }
        };
        let _ = tx.send(Msg::Event(event));
    }

    /// Opens the stream and reads the handshake bitfield.
    async fn open(&self) -> Result<OpenSession, String> {
        let channel = self.shared.channel(&self.addr).map_err(|e| e.to_string())?;
        let request = SessionRequest {
            digest: self.digest.to_string(),
            peer_id: self.shared.identity.peer_id.to_string(),
            addr: self.shared.identity.addr.clone(),
        };
        let handshake = async {
            let mut stream = PeerClient::new(channel)
                .session(request)
                .await
                .map_err(|s| format!("session refused: {s}"))?
                .into_inner();
            let first = stream
                .message()
                .await
                .map_err(|s| format!("session failed: {s}"))?;
            match first.and_then(|e| e.event) {
                Some(session_event::Event::Bitfield(wire)) if wire.piece_count == self.pieces => {
                    let have = Bitfield::from_bytes(self.pieces, &wire.bits)
                        .map_err(|e| format!("malformed bitfield: {e}"))?;
                    Ok(OpenSession { stream, have })
                }
                other => Err(format!(
                    "expected a bitfield of {} pieces, got {other:?}",
                    self.pieces
                )),
            }
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| "no bitfield in time".to_owned())?
    }
}

struct OpenSession {
    stream: tonic::Streaming<shoal_proto::v1::SessionEvent>,
    have: Bitfield,
}

impl OpenSession {
    /// Relays have/complete notices. Ok when the peer is complete and the stream ended; Err
    /// when the session broke before that.
    async fn follow(&mut self, session: &Session) -> Result<(), String> {
        loop {
            let message = match self.stream.message().await {
                Ok(message) => message,
                Err(status) if self.have.is_complete() => {
                    tracing::trace!(%status, "session with a complete peer ended");
                    return Ok(());
                }
                Err(status) => return Err(status.to_string()),
            };
            let Some(message) = message else {
                return if self.have.is_complete() {
                    Ok(())
                } else {
                    Err("the peer closed the session".to_owned())
                };
            };
            let newly: Vec<u32> = match message.event {
                Some(session_event::Event::Have(piece)) if piece < session.pieces => {
                    if self.have.set(piece) {
                        vec![piece]
                    } else {
                        Vec::new()
                    }
                }
                Some(session_event::Event::Complete(_)) => {
                    let missing: Vec<u32> = self.have.zeros().collect();
                    for &piece in &missing {
                        self.have.set(piece);
                    }
                    missing
                }
                other => return Err(format!("unexpected session event {other:?}")),
            };
            for piece in newly {
                let have = Event::Have {
                    peer: session.peer.clone(),
                    piece,
                };
                if session.tx.send(Msg::Event(have)).is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// One piece request.
pub(crate) struct PieceFetch {
    pub shared: Arc<Shared>,
    pub partial: PartialBlob,
    /// The download's bytes by sender kind.
    pub received: Arc<Received>,
    pub peer: PeerId,
    pub addr: String,
    pub origin: bool,
    pub piece: u32,
    /// The scheduler's `insist`: the peer refused this piece before and nobody else has it.
    pub insist: bool,
    pub tx: mpsc::UnboundedSender<Msg>,
}

/// How a piece request ended.
enum Outcome {
    /// Verified and written; the request was answered after `rtt`, `in_order` after the pieces
    /// asked of the peer before it (the piece stream) or interleaved with them (HTTP/2).
    Done { rtt: Duration, in_order: bool },
    /// The bytes were not the piece (hash, length or framing): the peer is bad.
    Corrupt(String),
    /// Transport error, or the peer lacks the piece.
    Failed(String),
    /// The piece was good but our store could not write it.
    StoreFailed(String),
    /// The peer refused at once: its upload slots are all taken.
    Busy,
    /// The peer (an origin serving a crowd) refused at once: other peers hold the piece; it
    /// may name one it would send instead.
    Elsewhere(Option<u32>),
}

impl PieceFetch {
    pub(crate) async fn run(self) {
        let (peer, piece) = (self.peer.clone(), self.piece);
        let event = match self.fetch().await {
            Outcome::Done { rtt, in_order } => Event::PieceDone {
                peer,
                piece,
                rtt,
                in_order,
            },
            Outcome::Corrupt(reason) => {
                tracing::warn!(digest = %self.partial.metainfo().digest(), %peer, piece, %reason, "rejected a bad piece");
                self.shared.metrics.pieces_rejected.inc();
                Event::PieceCorrupt { peer, piece }
            }
            Outcome::Failed(reason) => {
                tracing::debug!(digest = %self.partial.metainfo().digest(), %peer, piece, %reason, "piece request failed");
                Event::PieceFailed { peer, piece }
            }
            Outcome::StoreFailed(reason) => {
                let reason = format!("storing piece {piece} failed: {reason}");
                let _ = self.tx.send(Msg::StoreFailed(reason));
                return;
            }
            Outcome::Busy => {
                self.shared.metrics.busy_received.inc();
                Event::PieceBusy { peer, piece }
            }
            Outcome::Elsewhere(instead) => {
                self.shared.metrics.elsewhere_received.inc();
                Event::PieceElsewhere {
                    peer,
                    piece,
                    instead,
                }
            }
        };
        let _ = self.tx.send(Msg::Event(event));
    }

    async fn fetch(&self) -> Outcome {
        let metainfo = self.partial.metainfo();
        let Some(range) = metainfo.piece_range(self.piece as usize) else {
            return Outcome::Failed(format!("piece {} is out of range", self.piece));
        };
        // Pieces are at most tens of MiB (`shoal_core::piece_length_for`), so this bound is small.
        let length = usize::try_from(range.end - range.start).unwrap_or(usize::MAX);
        let request = PieceRequest {
            digest: metainfo.digest().to_string(),
            index: self.piece,
            peer_id: self.shared.identity.peer_id.to_string(),
            insist: self.insist,
        };
        let sent = Instant::now();
        let mut body = match self.ask(&request, length).await {
            Ok(body) => body,
            Err(status) if status.code() == tonic::Code::ResourceExhausted => return Outcome::Busy,
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                return Outcome::Elsewhere(server::instead_of(&status));
            }
            Err(status) => return Outcome::Failed(status.to_string()),
        };
        // The answer's headers come before any of the piece's bytes: this is the round trip
        // (and the peer's time to start serving) that the scheduler's depth covers. The piece
        // stream's pipelined answers wait behind our own pieces; it measures its own.
        let (rtt, streamed) = match &body {
            Body::Stream(body) => (body.round_trip(), true),
            Body::Grpc(_) => (sent.elapsed(), false),
        };
        // The chunks are the buffers the bytes were received in; the store hashes and writes
        // them as they are.
        let mut chunks = Vec::new();
        let mut received = 0;
        loop {
            let chunk = match body.next().await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => break,
                Err(reason) => return Outcome::Failed(reason),
            };
            let len = chunk.length();
            if chunk.offset != received as u64 || received + len > length {
                return Outcome::Corrupt(format!(
                    "chunk of {len} bytes at offset {} does not fit the {length}-byte piece (have {received})",
                    chunk.offset,
                ));
            }
            self.shared.ingress.acquire(len).await;
            self.shared.metrics.received(self.origin, len as u64);
            self.received.add(self.origin, len as u64);
            received += len;
            chunks.extend(chunk.data);
        }
        if received != length {
            return Outcome::Failed(format!("piece ended after {received} of {length} bytes"));
        }
        match self.partial.write_piece(self.piece, chunks).await {
            Ok(newly) => {
                if newly {
                    self.shared.metrics.pieces_received.inc();
                    self.received.piece(self.origin);
                }
                if streamed {
                    self.shared.metrics.stream_pieces_received.inc();
                }
                Outcome::Done {
                    rtt,
                    in_order: streamed,
                }
            }
            Err(e @ StoreError::PieceMismatch { .. }) => Outcome::Corrupt(e.to_string()),
            // The bytes matched their hash: whatever else failed (a write error, a disk gone
            // read-only) is this node's, and would fail for every sender alike.
            Err(e) => Outcome::StoreFailed(e.to_string()),
        }
    }
}

impl PieceFetch {
    /// Asks the peer for the piece: over the piece stream when it is on and the peer offers
    /// it, else with a gRPC `GetPiece` call. A refusal is the status the peer gave.
    async fn ask(&self, request: &PieceRequest, length: usize) -> Result<Body, tonic::Status> {
        if let Some(streams) = self
            .shared
            .streams
            .as_ref()
            .filter(|streams| streams.offered(&self.addr))
        {
            match streams.request(&self.addr, request, length).await {
                Ok(Answer::Piece(body)) => return Ok(Body::Stream(body)),
                Ok(Answer::Refused(status)) => return Err(status),
                Err(StreamError::Declined) => {}
                Err(StreamError::Io(error)) => {
                    return Err(tonic::Status::unavailable(format!("piece stream: {error}")));
                }
            }
        }
        let channel = self
            .shared
            .channel(&self.addr)
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(Body::Grpc(wire::get_piece(channel, request, length).await?))
    }
}

/// A piece answer's bytes as they arrive, over gRPC or the piece stream.
enum Body {
    Grpc(wire::PieceStream),
    Stream(PieceBody),
}

impl Body {
    async fn next(&mut self) -> Result<Option<wire::Chunk>, String> {
        match self {
            Body::Grpc(stream) => stream.message().await.map_err(|s| s.to_string()),
            Body::Stream(body) => body.next().await.map_err(|e| e.to_string()),
        }
    }
}
