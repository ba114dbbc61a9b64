//! The piece stream: piece bytes over plain TCP beside gRPC, on the same peer port, for
//! downloaders configured with `p2p.piece_stream` (`docs/p2p.md`). Sessions, `have` notices and
//! everything else stay gRPC; only `GetPiece` has this second form. It exists because HTTP/2
//! costs the piece exchange a quarter of its throughput, and because a served piece that is in
//! the page cache can go to the socket with `sendfile`, never copied through user space
//! (`docs/BENCHMARKS.md`).
//!
//! The wire, all integers big-endian:
//! - the client opens a TCP connection and sends [`MAGIC`]; the peer listener (which tells it
//!   from HTTP by its first byte) answers [`MAGIC`]. Anything else (an HTTP error, a TLS alert,
//!   a close) means the peer does not offer the stream: the client uses gRPC with it.
//! - then requests, each a `u32` length and a `PieceRequest` (peer.proto) of at most
//!   [`MAX_REQUEST`] bytes, and answers in the same order, each a kind byte and a `u64` length,
//!   then that many bytes: the piece ([`PIECE`]), or a refusal ([`REFUSAL`]: a gRPC status code
//!   byte, a `u32` piece offered instead or `u32::MAX`, and the message). A client may send
//!   requests before the earlier ones are answered (the peer reads each once it has answered
//!   the one before). A piece answer whose bytes stop short closes the connection (the peer
//!   could not read the piece after all).
//! - a downloader keeps one connection per peer and pipelines every request to it there, as
//!   HTTP/2 does with its streams: one long-lived flow per pair of peers, whose lost segments
//!   fast retransmit repairs, where a connection per piece in flight is many short flows
//!   whose losses wait for a retransmission timeout (`docs/BENCHMARKS.md`, the test bed).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use futures::StreamExt;
use prost::Message;
use shoal_core::lock;
use shoal_proto::v1::PieceRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::server::{INSTEAD, PeerService, instead_of};
use crate::wire::{Chunk, MAX_REQUEST};
use shoal_storage::fsutil::FileRange;

/// The first bytes of a piece-stream connection, and the peer's answer. The leading NUL byte
/// starts no HTTP request and no TLS record, so the listener tells the two apart by one byte.
pub(crate) const MAGIC: &[u8; 16] = b"\0SHOAL-PIECES/1\n";
/// A refusal that offers no piece instead.
const INSTEAD_NONE: u32 = u32::MAX;
/// Answer kinds.
const PIECE: u8 = 0;
const REFUSAL: u8 = 1;
/// An answer's kind byte and length.
const ANSWER_HEADER: usize = 9;
/// A refusal's code byte and piece offered instead, before its message.
const REFUSAL_HEADER: usize = 5;
/// Refusal messages are one line; longer ones are cut.
const MAX_MESSAGE: usize = 1024;
/// A piece's bytes are read into buffers of at most this size, each handed to the hasher and
/// the file as it is.
const READ_CHUNK: usize = 256 * 1024;
/// A connection that moved no byte for this long while a request is in flight is given up:
/// the peer hung (as the HTTP/2 pings of gRPC connections find, within 30 + 20 s).
const STALL: Duration = Duration::from_secs(30);
/// Connecting and reading the peer's [`MAGIC`] take at most this long.
const HANDSHAKE: Duration = Duration::from_secs(5);
/// A connection with nothing in flight is reused within this time only: the peer closes it
/// after its listener's idle timeout (120 s), and a request must not race that close.
const REUSE_WITHIN: Duration = Duration::from_secs(60);
/// A peer that did not answer the magic is asked over gRPC for this long before it is tried
/// again (it may be upgraded, or its TLS turned off, meanwhile).
const DECLINED_FOR: Duration = Duration::from_secs(600);

/// Serves one piece-stream connection whose [`MAGIC`] the listener already read: answers the
/// magic, then each request in turn, until the client closes it, sends something malformed,
/// sits idle for `idle`, stalls a send, or `shutdown` (between requests).
pub(crate) async fn serve(
    service: Arc<PeerService>,
    mut socket: TcpStream,
    idle: Duration,
    shutdown: CancellationToken,
) {
    if let Err(error) = within(STALL, socket.write_all(MAGIC)).await {
        tracing::debug!(%error, "piece stream: answering the magic failed");
        return;
    }
    loop {
        let request = tokio::select! {
            () = shutdown.cancelled() => return,
            read = tokio::time::timeout(idle, read_request(&mut socket)) => match read {
                Err(_) | Ok(Ok(None)) => return,
                Ok(Ok(Some(request))) => request,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "piece stream: bad request; closing");
                    return;
                }
            },
        };
        if let Err(error) = answer(&service, &mut socket, request).await {
            tracing::debug!(%error, "piece stream: answering failed; closing");
            return;
        }
    }
}

/// The next request, or None when the client closed the connection between requests.
async fn read_request(socket: &mut TcpStream) -> io::Result<Option<Result<PieceRequest, String>>> {
    let len = match socket.read_u32().await {
        Ok(len) => len as usize,
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    };
    if len > MAX_REQUEST {
        return Err(invalid(format!(
            "a request of {len} bytes (at most {MAX_REQUEST})"
        )));
    }
    let mut bytes = vec![0; len];
    socket.read_exact(&mut bytes).await?;
    Ok(Some(
        PieceRequest::decode(&bytes[..]).map_err(|e| format!("malformed piece request: {e}")),
    ))
}

/// Answers one request: the piece (sent from the page cache when it is all there, else read
/// and written), or the reason it is not sent.
async fn answer(
    service: &PeerService,
    socket: &mut TcpStream,
    request: Result<PieceRequest, String>,
) -> io::Result<()> {
    let admitted = match request {
        Ok(request) => service.admit(&request).await,
        Err(message) => Err(tonic::Status::invalid_argument(message)),
    };
    let admitted = match admitted {
        Ok(admitted) => admitted,
        Err(status) => return write_refusal(socket, &status).await,
    };
    let file = match service.piece_file(&admitted).await {
        Ok(file) => file,
        Err(status) => return write_refusal(socket, &status).await,
    };
    within(
        STALL,
        socket.write_all(&answer_header(PIECE, file.range.end - file.range.start)),
    )
    .await?;
    if service.sendable(&file) {
        let sent = send_file(service, socket, &file).await;
        // The upload slot is held until the piece is sent.
        drop(admitted);
        return sent;
    }
    let mut chunks = service.chunks(admitted, file);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|status| io::Error::other(status.message().to_owned()))?;
        within(STALL, socket.write_all(&chunk.data)).await?;
    }
    Ok(())
}

/// Sends `file`'s range with `sendfile`, paying egress one limiter chunk at a time.
async fn send_file(service: &PeerService, socket: &TcpStream, file: &FileRange) -> io::Result<()> {
    let limiter = service.limiter();
    let mut offset = file.range.start;
    while offset < file.range.end {
        let step = (file.range.end - offset).min(limiter.chunk_size() as u64) as usize;
        limiter.acquire(step).await;
        let mut left = step;
        while left > 0 {
            let sent = within(STALL, async {
                loop {
                    socket.writable().await?;
                    match socket.try_io(Interest::WRITABLE, || {
                        shoal_pagecache::send(socket, &file.file, offset, left)
                    }) {
                        Ok(0) => {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the piece's file ended early",
                            ));
                        }
                        Ok(sent) => return Ok(sent),
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                        Err(error) => return Err(error),
                    }
                }
            })
            .await?;
            offset += sent as u64;
            left -= sent;
        }
        service.metrics().bytes_served.inc_by(step as u64);
        service.metrics().bytes_served_zero_copy.inc_by(step as u64);
    }
    Ok(())
}

async fn write_refusal(socket: &mut TcpStream, status: &tonic::Status) -> io::Result<()> {
    let message = status.message().as_bytes();
    let message = &message[..message.len().min(MAX_MESSAGE)];
    let mut frame = BytesMut::with_capacity(ANSWER_HEADER + REFUSAL_HEADER + message.len());
    frame.put_slice(&answer_header(
        REFUSAL,
        (REFUSAL_HEADER + message.len()) as u64,
    ));
    frame.put_u8(u8::try_from(i32::from(status.code())).unwrap_or(u8::MAX));
    frame.put_u32(instead_of(status).unwrap_or(INSTEAD_NONE));
    frame.put_slice(message);
    within(STALL, socket.write_all(&frame)).await
}

fn answer_header(kind: u8, len: u64) -> [u8; ANSWER_HEADER] {
    let mut header = [0; ANSWER_HEADER];
    header[0] = kind;
    header[1..].copy_from_slice(&len.to_be_bytes());
    header
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// `io` within `limit`, or a `TimedOut` error.
async fn within<T>(limit: Duration, io: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(limit, io)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the peer stalled"))?
}

/// A downloader's piece-stream connections, one per peer (every request to that peer goes on it,
/// answered in order), and the peers that do not offer the stream (asked over gRPC for a while).
#[derive(Default)]
pub(crate) struct StreamPool {
    peers: Mutex<Peers>,
    declined: Mutex<HashMap<String, Instant>>,
}

#[derive(Default)]
struct Peers {
    by_addr: HashMap<String, Arc<Slot>>,
    /// When unusable connections were last dropped for every peer: peers that went away are
    /// never asked again, and their sockets must not stay open.
    swept: Option<Instant>,
}

impl Peers {
    fn sweep(&mut self) {
        if self.swept.is_some_and(|at| at.elapsed() < REUSE_WITHIN) {
            return;
        }
        self.swept = Some(Instant::now());
        // A slot being connected (its connect lock held) stays.
        self.by_addr
            .retain(|_, slot| slot.connecting.try_lock().is_err() || slot.usable_conn().is_some());
    }
}

/// One peer's connection, and the lock one requester holds while connecting it, so that
/// requests made meanwhile wait for that connection instead of opening their own.
#[derive(Default)]
struct Slot {
    conn: Mutex<Option<Arc<Conn>>>,
    connecting: tokio::sync::Mutex<()>,
}

impl Slot {
    /// The connection if it is usable; an unusable one is dropped (closing it once its last
    /// reader lets go).
    fn usable_conn(&self) -> Option<Arc<Conn>> {
        let mut conn = lock(&self.conn);
        if conn.as_ref().is_some_and(|conn| !conn.usable()) {
            *conn = None;
        }
        conn.clone()
    }
}

/// One piece-stream connection. Requests are written under `writer`, and each takes its place
/// in `turns` as it is written, so answers are read in the order they come.
struct Conn {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    turns: Mutex<Turns>,
    /// Cleared when the connection breaks, so the next request opens another.
    slot: Weak<Slot>,
    /// The last round trip measured on it: from a request written to a free connection to its
    /// answer's header.
    round_trip: Mutex<Option<Duration>>,
}

struct Turns {
    /// The read half while nobody is reading or waiting to read an answer.
    idle: Option<Reading>,
    /// Requesters whose answers come next, in the order their requests were written.
    waiting: VecDeque<oneshot::Sender<Turn>>,
    /// When the last answer was read, for reuse within [`REUSE_WITHIN`].
    quiet_since: Instant,
    broken: bool,
}

/// The read half of a connection, and what it must drop before the next answer: the rest of
/// an answer whose reader went away, and the whole answers of requests given up before their
/// turn (they are on the wire before the next one's).
struct Reading {
    half: OwnedReadHalf,
    skip_bytes: u64,
    skip_answers: usize,
}

/// The right to read the next answer on a connection. Dropped, it hands the connection to the
/// next requester, leaving what is left of its own answer to be read and dropped first.
struct Turn {
    conn: Arc<Conn>,
    reading: Option<Reading>,
    /// When an earlier answer's reader handed the connection on; None when it was free as the
    /// request was written (the wait for the answer is then a whole round trip).
    handed_on: Option<Instant>,
    /// Bytes of this turn's answer still to come; None before its header is read.
    owed: Option<u64>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let Some(mut reading) = self.reading.take() {
            match self.owed {
                None => reading.skip_answers += 1,
                Some(owed) => reading.skip_bytes += owed,
            }
            self.conn.pass(reading);
        }
    }
}

impl Turn {
    /// The round trip this answer shows, its header just read: the wait since `sent` when the
    /// connection was free; else the connection's last such measure (or, before one, the wait
    /// since it was handed on), since an answer queued behind our own pieces arrives as soon as
    /// they are read and says nothing of the peer.
    fn round_trip(&self, sent: Instant) -> Duration {
        let mut last = lock(&self.conn.round_trip);
        match self.handed_on {
            None => *last.insert(sent.elapsed()),
            Some(handed_on) => last.unwrap_or_else(|| handed_on.elapsed()),
        }
    }

    fn reading(&mut self) -> &mut Reading {
        self.reading
            .as_mut()
            .expect("a turn holds the read half until it is dropped or fails")
    }

    /// The connection is in an unknown state (an error or a stall mid-answer): close it; the
    /// requests waiting on it fail.
    fn fail(mut self) {
        self.reading = None;
        self.conn.break_off();
    }
}

impl Conn {
    fn new(socket: TcpStream, slot: Weak<Slot>) -> Arc<Self> {
        let (half, writer) = socket.into_split();
        Arc::new(Self {
            writer: tokio::sync::Mutex::new(writer),
            turns: Mutex::new(Turns {
                idle: Some(Reading {
                    half,
                    skip_bytes: 0,
                    skip_answers: 0,
                }),
                waiting: VecDeque::new(),
                quiet_since: Instant::now(),
                broken: false,
            }),
            slot,
            round_trip: Mutex::new(None),
        })
    }

    /// Whether a request may go on this connection: not broken, and busy or quiet for less
    /// than [`REUSE_WITHIN`] (the peer closes quiet ones after its idle timeout, and a request
    /// must not race that close).
    fn usable(&self) -> bool {
        let turns = lock(&self.turns);
        !turns.broken && (turns.idle.is_none() || turns.quiet_since.elapsed() < REUSE_WITHIN)
    }

    /// Writes `request` and waits for the turn to read its answer.
    async fn ask(self: &Arc<Self>, request: &[u8]) -> io::Result<Turn> {
        let closed = || io::Error::new(io::ErrorKind::ConnectionAborted, "the connection broke");
        let mut writer = self.writer.lock().await;
        let (tx, turn) = oneshot::channel();
        {
            let mut turns = lock(&self.turns);
            if turns.broken {
                return Err(closed());
            }
            match turns.idle.take() {
                Some(reading) => {
                    let _ = tx.send(Turn {
                        conn: Arc::clone(self),
                        reading: Some(reading),
                        handed_on: None,
                        owed: None,
                    });
                }
                None => turns.waiting.push_back(tx),
            }
        }
        // A request cut off mid-write (an error, or this future dropped) leaves the wire
        // unreadable for every request on it.
        let written = BreakUnlessDone(self);
        within(STALL, writer.write_all(request)).await?;
        written.done();
        drop(writer);
        turn.await.map_err(|_| closed())
    }

    /// Hands the read half to the next requester still waiting; with none, keeps it idle, or
    /// closes the connection if answers nobody wants are still to come (their sender's upload
    /// slot must not wait on us).
    fn pass(self: &Arc<Self>, mut reading: Reading) {
        let mut turns = lock(&self.turns);
        if turns.broken {
            return;
        }
        while let Some(next) = turns.waiting.pop_front() {
            let turn = Turn {
                conn: Arc::clone(self),
                reading: Some(reading),
                handed_on: Some(Instant::now()),
                owed: None,
            };
            match next.send(turn) {
                Ok(()) => return,
                // Given up before its turn: its answer is skipped.
                Err(mut turn) => {
                    reading = turn.reading.take().expect("the turn was just made");
                    reading.skip_answers += 1;
                }
            }
        }
        if reading.skip_bytes > 0 || reading.skip_answers > 0 {
            drop(turns);
            self.break_off();
            return;
        }
        turns.idle = Some(reading);
        turns.quiet_since = Instant::now();
    }

    /// Closes the connection: the read half now, the socket once the last requester lets go
    /// of it; the requests waiting on it fail, and the next one opens another connection.
    fn break_off(self: &Arc<Self>) {
        {
            let mut turns = lock(&self.turns);
            turns.broken = true;
            turns.idle = None;
            turns.waiting.clear();
        }
        if let Some(slot) = self.slot.upgrade() {
            let mut conn = lock(&slot.conn);
            if conn.as_ref().is_some_and(|conn| Arc::ptr_eq(conn, self)) {
                *conn = None;
            }
        }
    }
}

/// Breaks the connection when dropped before [`BreakUnlessDone::done`].
struct BreakUnlessDone<'a>(&'a Arc<Conn>);

impl BreakUnlessDone<'_> {
    fn done(self) {
        std::mem::forget(self);
    }
}

impl Drop for BreakUnlessDone<'_> {
    fn drop(&mut self) {
        self.0.break_off();
    }
}

/// Why a piece could not be asked over the stream.
#[derive(Debug)]
pub(crate) enum StreamError {
    /// The peer does not offer the stream (an older version, or a TLS listener): use gRPC.
    Declined,
    Io(io::Error),
}

/// A peer's answer to a piece request.
pub(crate) enum Answer {
    /// The piece's bytes follow.
    Piece(PieceBody),
    /// Not sent: the status the peer gave (busy, elsewhere, not found, …).
    Refused(tonic::Status),
}

impl StreamPool {
    /// Whether the stream is worth trying with the peer at `addr` (it did not decline lately).
    pub(crate) fn offered(&self, addr: &str) -> bool {
        let mut declined = lock(&self.declined);
        match declined.get(addr) {
            Some(at) if at.elapsed() < DECLINED_FOR => false,
            Some(_) => {
                declined.remove(addr);
                true
            }
            None => true,
        }
    }

    /// Asks the peer at `addr` for a piece of `length` bytes on its connection, opening one if
    /// there is none. A connection found open that fails before the answer (the peer closed it
    /// meanwhile) is replaced and the request asked once more; a stall is not retried.
    pub(crate) async fn request(
        self: &Arc<Self>,
        addr: &str,
        request: &PieceRequest,
        length: usize,
    ) -> Result<Answer, StreamError> {
        let mut frame = BytesMut::with_capacity(4 + request.encoded_len());
        frame.put_u32(request.encoded_len() as u32);
        request
            .encode(&mut frame)
            .map_err(|e| StreamError::Io(io::Error::other(e)))?;
        let mut retried = false;
        loop {
            let (conn, opened) = self.conn(addr).await?;
            let sent = Instant::now();
            let answer = match conn.ask(&frame).await {
                Ok(turn) => read_answer(turn, length, sent).await,
                Err(error) => Err(error),
            };
            match answer {
                Ok(answer) => return Ok(answer),
                Err(error) if opened || retried || error.kind() == io::ErrorKind::TimedOut => {
                    return Err(StreamError::Io(error));
                }
                Err(_) => retried = true,
            }
        }
    }

    /// The peer's usable connection, or a new one (true) if it has none.
    async fn conn(&self, addr: &str) -> Result<(Arc<Conn>, bool), StreamError> {
        let slot = {
            let mut peers = lock(&self.peers);
            peers.sweep();
            Arc::clone(peers.by_addr.entry(addr.to_owned()).or_default())
        };
        if let Some(conn) = slot.usable_conn() {
            return Ok((conn, false));
        }
        let _connecting = slot.connecting.lock().await;
        if let Some(conn) = slot.usable_conn() {
            return Ok((conn, false));
        }
        let conn = Conn::new(self.connect(addr).await?, Arc::downgrade(&slot));
        *lock(&slot.conn) = Some(Arc::clone(&conn));
        Ok((conn, true))
    }

    async fn connect(&self, addr: &str) -> Result<TcpStream, StreamError> {
        let mut socket = within(HANDSHAKE, TcpStream::connect(addr))
            .await
            .map_err(StreamError::Io)?;
        socket.set_nodelay(true).map_err(StreamError::Io)?;
        within(HANDSHAKE, socket.write_all(MAGIC))
            .await
            .map_err(StreamError::Io)?;
        let mut answer = [0; MAGIC.len()];
        match within(HANDSHAKE, socket.read_exact(&mut answer)).await {
            Ok(_) if &answer == MAGIC => Ok(socket),
            // Not hung (that is a timeout): it answered, or closed, in another protocol.
            Ok(_) => Err(self.decline(addr)),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                ) =>
            {
                Err(self.decline(addr))
            }
            Err(error) => Err(StreamError::Io(error)),
        }
    }

    fn decline(&self, addr: &str) -> StreamError {
        tracing::debug!(%addr, "peer does not offer the piece stream: using gRPC with it");
        let mut declined = lock(&self.declined);
        declined.retain(|_, at| at.elapsed() < DECLINED_FOR);
        declined.insert(addr.to_owned(), Instant::now());
        StreamError::Declined
    }
}

/// Reads the answer this turn is for (its request written at `sent`), after dropping what
/// earlier readers left on the wire.
async fn read_answer(mut turn: Turn, length: usize, sent: Instant) -> io::Result<Answer> {
    let header = async {
        let reading = turn.reading();
        // The last piece's reads left the connection waking only for more than a header.
        shoal_pagecache::set_recv_lowat(reading.half.as_ref(), 1)?;
        skip_unwanted(reading).await?;
        let mut header = [0; ANSWER_HEADER];
        within(STALL, reading.half.read_exact(&mut header)).await?;
        let mut header = &header[..];
        Ok::<_, io::Error>((header.get_u8(), header.get_u64()))
    };
    let (kind, len) = match header.await {
        Ok(header) => header,
        Err(error) => {
            turn.fail();
            return Err(error);
        }
    };
    match kind {
        PIECE if len == length as u64 => {
            turn.owed = Some(len);
            Ok(Answer::Piece(PieceBody {
                round_trip: turn.round_trip(sent),
                turn: (length > 0).then_some(turn),
                remaining: length,
                offset: 0,
            }))
        }
        REFUSAL
            if (REFUSAL_HEADER as u64..=(REFUSAL_HEADER + MAX_MESSAGE) as u64).contains(&len) =>
        {
            let mut body = vec![0; len as usize];
            if let Err(error) = within(STALL, turn.reading().half.read_exact(&mut body)).await {
                turn.fail();
                return Err(error);
            }
            turn.owed = Some(0);
            Ok(Answer::Refused(refusal(&body)))
        }
        _ => {
            turn.fail();
            Err(invalid(match kind {
                PIECE => format!("a piece answer of {len} bytes for a {length}-byte piece"),
                _ => format!("an answer of kind {kind} and {len} bytes"),
            }))
        }
    }
}

/// Reads and drops the rest of an answer whose reader went away, and the answers of requests
/// given up before their turn.
async fn skip_unwanted(reading: &mut Reading) -> io::Result<()> {
    let mut scratch = Vec::new();
    while reading.skip_bytes > 0 || reading.skip_answers > 0 {
        if reading.skip_bytes == 0 {
            let mut header = [0; ANSWER_HEADER];
            within(STALL, reading.half.read_exact(&mut header)).await?;
            reading.skip_answers -= 1;
            reading.skip_bytes = (&header[1..]).get_u64();
            continue;
        }
        scratch.resize(READ_CHUNK, 0);
        let want = usize::try_from(reading.skip_bytes).map_or(READ_CHUNK, |n| n.min(READ_CHUNK));
        let read = within(STALL, reading.half.read(&mut scratch[..want])).await?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed mid-answer",
            ));
        }
        reading.skip_bytes -= read as u64;
    }
    Ok(())
}

/// A refusal's body as the status the peer gave.
fn refusal(mut body: &[u8]) -> tonic::Status {
    let code = tonic::Code::from_i32(i32::from(body.get_u8()));
    let instead = body.get_u32();
    let mut status = tonic::Status::new(code, String::from_utf8_lossy(body));
    if instead != INSTEAD_NONE {
        status.metadata_mut().insert(INSTEAD, instead.into());
    }
    status
}

/// The bytes of a piece answer, read as they arrive; the connection goes on to the next
/// answer once they are all read, and skips what is left of them if this is dropped first.
pub(crate) struct PieceBody {
    /// None once every byte is read.
    turn: Option<Turn>,
    round_trip: Duration,
    remaining: usize,
    offset: u64,
}

impl PieceBody {
    /// The round trip to the peer as this answer shows it (the scheduler's depth covers it):
    /// not the time it waited behind the answers before it, which was the link busy with our
    /// own pieces and, counted, would argue for asking ever more.
    pub(crate) fn round_trip(&self) -> Duration {
        self.round_trip
    }

    /// The next bytes of the piece (at most [`READ_CHUNK`]); None once all are read.
    pub(crate) async fn next(&mut self) -> io::Result<Option<Chunk>> {
        let Some(turn) = self.turn.as_mut() else {
            return Ok(None);
        };
        let want = self.remaining.min(READ_CHUNK);
        let mut buf = BytesMut::with_capacity(want);
        let reading = turn.reading();
        while buf.len() < want {
            let left = want - buf.len();
            // Woken once the bytes this chunk needs are all there, not per arriving segment
            // (on a connection kept full by pipelined requests, twice the system time without
            // it); the next answer's reader sets it back. Only an optimisation if it fails.
            let _ = shoal_pagecache::set_recv_lowat(reading.half.as_ref(), left);
            let read = within(STALL, reading.half.read_buf(&mut (&mut buf).limit(left))).await;
            let error = match read {
                Ok(0) => io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the piece ended {} bytes short", self.remaining - buf.len()),
                ),
                Ok(_) => continue,
                Err(error) => error,
            };
            if let Some(turn) = self.turn.take() {
                turn.fail();
            }
            return Err(error);
        }
        let chunk = Chunk {
            offset: self.offset,
            data: vec![buf.freeze()],
        };
        self.offset += want as u64;
        self.remaining -= want;
        turn.owed = Some(self.remaining as u64);
        if self.remaining == 0 {
            // Dropping the turn hands the connection to the next answer's reader.
            self.turn = None;
        }
        Ok(Some(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_magic_starts_no_http_request_and_no_tls_record() {
        // HTTP/1.1 methods and the HTTP/2 preface start with a letter; TLS records with 20–24.
        assert_eq!(MAGIC[0], 0);
        assert!(!MAGIC[0].is_ascii_alphabetic());
        assert!(!(20..=24).contains(&MAGIC[0]));
    }

    #[test]
    fn a_refusal_carries_its_code_message_and_piece_offered_instead() {
        for (status, instead) in [
            (crate::server::elsewhere_status(Some(7)), Some(7)),
            (crate::server::elsewhere_status(None), None),
            (tonic::Status::resource_exhausted("busy"), None),
        ] {
            let mut body = vec![u8::try_from(i32::from(status.code())).unwrap()];
            body.extend_from_slice(&instead_of(&status).unwrap_or(INSTEAD_NONE).to_be_bytes());
            body.extend_from_slice(status.message().as_bytes());
            let read = refusal(&body);
            assert_eq!(read.code(), status.code());
            assert_eq!(read.message(), status.message());
            assert_eq!(instead_of(&read), instead);
        }
    }

    #[test]
    fn answer_headers_are_a_kind_and_a_big_endian_length() {
        let header = answer_header(PIECE, 0x0102_0304_0506_0708);
        assert_eq!(header, [0, 1, 2, 3, 4, 5, 6, 7, 8]);
    }

    /// Bytes of every piece the fake peer sends: more than two reads of the client's.
    const LEN: usize = 600 * 1024;

    /// A peer speaking the piece stream by hand: it answers a request for piece `i` with `LEN`
    /// bytes of value `i`, each once the test lets it (`go`), and reports the requests it read
    /// and the connections it accepted and saw end.
    struct FakePeer {
        addr: String,
        go: Arc<tokio::sync::Semaphore>,
        requests: tokio::sync::mpsc::UnboundedReceiver<u32>,
        accepted: Arc<std::sync::atomic::AtomicUsize>,
        ended: Arc<std::sync::atomic::AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for FakePeer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn fake_peer() -> FakePeer {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let go = Arc::new(tokio::sync::Semaphore::new(0));
        let (tx, requests) = tokio::sync::mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let (go2, accepted2, ended2) = (go.clone(), accepted.clone(), ended.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut socket, _)) = listener.accept().await {
                accepted2.fetch_add(1, Ordering::SeqCst);
                let (go, tx, ended) = (go2.clone(), tx.clone(), ended2.clone());
                connections.spawn(async move {
                    let _ = answer_in_turn(&mut socket, &go, &tx).await;
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        FakePeer {
            addr,
            go,
            requests,
            accepted,
            ended,
            task,
        }
    }

    /// The fake peer's side of one connection, until it fails or closes.
    async fn answer_in_turn(
        socket: &mut TcpStream,
        go: &tokio::sync::Semaphore,
        requests: &tokio::sync::mpsc::UnboundedSender<u32>,
    ) -> io::Result<()> {
        let mut magic = [0; MAGIC.len()];
        socket.read_exact(&mut magic).await?;
        socket.write_all(MAGIC).await?;
        loop {
            let mut request = vec![0; socket.read_u32().await? as usize];
            socket.read_exact(&mut request).await?;
            let index = PieceRequest::decode(&request[..]).unwrap().index;
            let _ = requests.send(index);
            go.acquire().await.unwrap().forget();
            socket.write_all(&answer_header(PIECE, LEN as u64)).await?;
            socket.write_all(&vec![index as u8; LEN]).await?;
        }
    }

    fn piece(index: u32) -> PieceRequest {
        PieceRequest {
            digest: String::new(),
            index,
            peer_id: String::new(),
            insist: false,
        }
    }

    async fn body(pool: &Arc<StreamPool>, addr: &str, index: u32) -> io::Result<PieceBody> {
        match pool.request(addr, &piece(index), LEN).await {
            Ok(Answer::Piece(body)) => Ok(body),
            Ok(Answer::Refused(status)) => Err(io::Error::other(status.to_string())),
            Err(StreamError::Declined) => Err(io::Error::other("declined")),
            Err(StreamError::Io(error)) => Err(error),
        }
    }

    async fn read_all(pool: &Arc<StreamPool>, addr: &str, index: u32) -> io::Result<Vec<u8>> {
        let mut body = body(pool, addr, index).await?;
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await? {
            assert_eq!(chunk.offset, bytes.len() as u64);
            for data in chunk.data {
                bytes.extend_from_slice(&data);
            }
        }
        Ok(bytes)
    }

    #[tokio::test]
    async fn requests_to_one_peer_share_one_connection_and_are_answered_in_order() {
        let peer = fake_peer().await;
        peer.go.add_permits(100);
        let pool = Arc::new(StreamPool::default());
        let mut fetches = tokio::task::JoinSet::new();
        for index in 0..8 {
            let (pool, addr) = (pool.clone(), peer.addr.clone());
            fetches.spawn(async move { (index, read_all(&pool, &addr, index).await) });
        }
        while let Some(fetched) = fetches.join_next().await {
            let (index, bytes) = fetched.unwrap();
            assert!(bytes.unwrap() == vec![index as u8; LEN], "piece {index}");
        }
        assert_eq!(peer.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn answers_given_up_are_skipped_and_the_connection_goes_on() {
        let mut peer = fake_peer().await;
        let pool = Arc::new(StreamPool::default());
        peer.go.add_permits(1);
        let mut first = body(&pool, &peer.addr, 0).await.unwrap();
        assert!(first.next().await.unwrap().is_some());
        // Two more requests go out while piece 0 is being read; the first is given up while
        // it waits for its turn, then piece 0 is dropped half read.
        let (pool1, addr1) = (pool.clone(), peer.addr.clone());
        let given_up = tokio::spawn(async move { read_all(&pool1, &addr1, 1).await });
        let (pool2, addr2) = (pool.clone(), peer.addr.clone());
        let wanted = tokio::spawn(async move { read_all(&pool2, &addr2, 2).await });
        // Both are written (the peer reads them once it has sent piece 0) and wait their turn.
        let conn = lock(&pool.peers).by_addr[&peer.addr]
            .conn
            .lock()
            .unwrap()
            .clone()
            .unwrap();
        while lock(&conn.turns).waiting.len() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        given_up.abort();
        assert!(given_up.await.unwrap_err().is_cancelled());
        drop(first);
        peer.go.add_permits(2);
        assert!(wanted.await.unwrap().unwrap() == vec![2; LEN]);
        let mut asked = Vec::new();
        while let Ok(index) = peer.requests.try_recv() {
            asked.push(index);
        }
        assert_eq!(asked, [0, 1, 2]);
        // And the connection serves the next request.
        peer.go.add_permits(1);
        assert!(read_all(&pool, &peer.addr, 3).await.unwrap() == vec![3; LEN]);
        assert_eq!(peer.accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_pipelined_answer_reports_the_round_trip_not_its_wait_behind_earlier_ones() {
        let peer = fake_peer().await;
        peer.go.add_permits(10);
        let pool = Arc::new(StreamPool::default());
        // Asked on a free connection: the wait is the round trip.
        let mut first = body(&pool, &peer.addr, 0).await.unwrap();
        let round_trip = first.round_trip();
        let (pool2, addr2) = (pool.clone(), peer.addr.clone());
        let second = tokio::spawn(async move {
            let asked = Instant::now();
            let body = body(&pool2, &addr2, 1).await.unwrap();
            (asked.elapsed(), body.round_trip())
        });
        // The second answer waits behind the first's bytes, read late.
        tokio::time::sleep(Duration::from_millis(300)).await;
        while first.next().await.unwrap().is_some() {}
        let (waited, reported) = second.await.unwrap();
        assert!(waited >= Duration::from_millis(300), "{waited:?}");
        assert_eq!(reported, round_trip);
    }

    #[tokio::test]
    async fn an_answer_of_the_wrong_length_fails_and_the_next_request_opens_a_new_connection() {
        use std::sync::atomic::Ordering;
        let peer = fake_peer().await;
        peer.go.add_permits(2);
        let pool = Arc::new(StreamPool::default());
        // The peer sends LEN bytes for a piece we know to be shorter.
        let error = match pool.request(&peer.addr, &piece(0), LEN - 1).await {
            Err(StreamError::Io(error)) => error,
            Ok(_) => panic!("an answer of the wrong length was taken"),
            Err(StreamError::Declined) => panic!("declined"),
        };
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
        assert!(error.to_string().contains("for a"), "{error}");
        // What follows its header cannot be trusted: the connection is not used again.
        assert!(read_all(&pool, &peer.addr, 1).await.unwrap() == vec![1; LEN]);
        assert_eq!(peer.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_left_with_an_answer_nobody_reads_is_closed() {
        use std::sync::atomic::Ordering;
        let peer = fake_peer().await;
        let pool = Arc::new(StreamPool::default());
        peer.go.add_permits(2);
        let mut first = body(&pool, &peer.addr, 0).await.unwrap();
        assert!(first.next().await.unwrap().is_some());
        drop(first);
        // The peer is not left sending into a connection nobody reads.
        tokio::time::timeout(Duration::from_secs(10), async {
            while peer.ended.load(Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the connection was closed");
        assert!(read_all(&pool, &peer.addr, 1).await.unwrap() == vec![1; LEN]);
        assert_eq!(peer.accepted.load(Ordering::SeqCst), 2);
    }
}
