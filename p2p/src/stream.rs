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
//! - then, one at a time: a request, a `u32` length and a `PieceRequest` (peer.proto) of at
//!   most [`MAX_REQUEST`] bytes; an answer, a kind byte and a `u64` length, then that many
//!   bytes: the piece ([`PIECE`]), or a refusal ([`REFUSAL`]: a gRPC status code byte, a `u32`
//!   piece offered instead or `u32::MAX`, and the message). A piece answer whose bytes stop
//!   short closes the connection (the peer could not read the piece after all).
//! - pieces in flight to one peer each have their own connection; idle ones are kept for the
//!   next request.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use futures::StreamExt;
use prost::Message;
use shoal_core::lock;
use shoal_proto::v1::PieceRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
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
/// Idle connections are reused within this time only: the peer closes them after its
/// listener's idle timeout (120 s), and a request must not race that close.
const REUSE_WITHIN: Duration = Duration::from_secs(60);
/// Idle connections kept per peer.
const IDLE_PER_PEER: usize = 16;
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

/// A downloader's piece-stream connections: idle ones per peer, and the peers that do not offer
/// the stream (asked over gRPC for a while).
#[derive(Default)]
pub(crate) struct StreamPool {
    idle: Mutex<Idle>,
    declined: Mutex<HashMap<String, Instant>>,
}

/// Idle connections by peer address.
#[derive(Default)]
struct Idle {
    by_peer: HashMap<String, Vec<(TcpStream, Instant)>>,
    /// When connections too old to reuse were last dropped for every peer: peers that went
    /// away are never asked again, and their sockets must not stay open.
    swept: Option<Instant>,
}

impl Idle {
    fn sweep(&mut self) {
        if self.swept.is_some_and(|at| at.elapsed() < REUSE_WITHIN) {
            return;
        }
        self.swept = Some(Instant::now());
        self.by_peer.retain(|_, sockets| {
            sockets.retain(|(_, since)| since.elapsed() < REUSE_WITHIN);
            !sockets.is_empty()
        });
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

    /// Asks the peer at `addr` for a piece of `length` bytes: on an idle connection when there
    /// is one (again on a new one if that had been closed meanwhile), else on a new one.
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
        if let Some(socket) = self.take_idle(addr) {
            // The peer may have closed it just now: that shows as an error at once, not as a
            // stall, and the request goes again on a new connection.
            match self.exchange(addr, socket, &frame, length).await {
                Ok(answer) => return Ok(answer),
                Err(error) if error.kind() == io::ErrorKind::TimedOut => {
                    return Err(StreamError::Io(error));
                }
                Err(_) => {}
            }
        }
        let socket = self.connect(addr).await?;
        self.exchange(addr, socket, &frame, length)
            .await
            .map_err(StreamError::Io)
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

    async fn exchange(
        self: &Arc<Self>,
        addr: &str,
        mut socket: TcpStream,
        request: &[u8],
        length: usize,
    ) -> io::Result<Answer> {
        within(STALL, socket.write_all(request)).await?;
        let mut header = [0; ANSWER_HEADER];
        within(STALL, socket.read_exact(&mut header)).await?;
        let mut header = &header[..];
        let kind = header.get_u8();
        let len = header.get_u64();
        match kind {
            PIECE if len == length as u64 => Ok(Answer::Piece(PieceBody {
                socket: Some(socket),
                remaining: length,
                offset: 0,
                addr: addr.to_owned(),
                pool: Arc::clone(self),
            })),
            PIECE => Err(invalid(format!(
                "a piece answer of {len} bytes for a {length}-byte piece"
            ))),
            REFUSAL
                if (REFUSAL_HEADER as u64..=(REFUSAL_HEADER + MAX_MESSAGE) as u64)
                    .contains(&len) =>
            {
                let mut body = vec![0; len as usize];
                within(STALL, socket.read_exact(&mut body)).await?;
                self.put_back(addr, socket);
                Ok(Answer::Refused(refusal(&body)))
            }
            _ => Err(invalid(format!("an answer of kind {kind} and {len} bytes"))),
        }
    }

    fn take_idle(&self, addr: &str) -> Option<TcpStream> {
        let mut idle = lock(&self.idle);
        let sockets = idle.by_peer.get_mut(addr)?;
        sockets.retain(|(_, since)| since.elapsed() < REUSE_WITHIN);
        let socket = sockets.pop().map(|(socket, _)| socket);
        if sockets.is_empty() {
            idle.by_peer.remove(addr);
        }
        socket
    }

    fn put_back(&self, addr: &str, socket: TcpStream) {
        let mut idle = lock(&self.idle);
        idle.sweep();
        let sockets = idle.by_peer.entry(addr.to_owned()).or_default();
        sockets.retain(|(_, since)| since.elapsed() < REUSE_WITHIN);
        if sockets.len() < IDLE_PER_PEER {
            sockets.push((socket, Instant::now()));
        }
    }
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

/// The bytes of a piece answer, read as they arrive; the connection goes back to the pool
/// once they are all read, and is closed if they are not.
pub(crate) struct PieceBody {
    socket: Option<TcpStream>,
    remaining: usize,
    offset: u64,
    addr: String,
    pool: Arc<StreamPool>,
}

impl PieceBody {
    /// The next bytes of the piece (at most [`READ_CHUNK`]); None once all are read.
    pub(crate) async fn next(&mut self) -> io::Result<Option<Chunk>> {
        let Some(socket) = self.socket.as_mut().filter(|_| self.remaining > 0) else {
            return Ok(None);
        };
        let want = self.remaining.min(READ_CHUNK);
        let mut buf = BytesMut::with_capacity(want);
        while buf.len() < want {
            let left = want - buf.len();
            let read = within(STALL, socket.read_buf(&mut (&mut buf).limit(left))).await?;
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the piece ended {} bytes short", self.remaining - buf.len()),
                ));
            }
        }
        let chunk = Chunk {
            offset: self.offset,
            data: vec![buf.freeze()],
        };
        self.offset += want as u64;
        self.remaining -= want;
        if self.remaining == 0
            && let Some(socket) = self.socket.take()
        {
            self.pool.put_back(&self.addr, socket);
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
}
