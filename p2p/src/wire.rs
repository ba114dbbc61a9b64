//! `GetPiece` framed by hand on both ends, so piece bytes are never copied in user space; the
//! wire format is gRPC's, and every other call goes through tonic's generated code.
//! - Client: the response's HTTP/2 DATA frames are kept as the `Bytes` hyper delivered, and each
//!   `PieceChunk`'s data is a list of slices of them. tonic would copy every received byte into
//!   one buffer per message first (a memmove of the whole blob, and a fresh multi-MiB allocation
//!   per chunk).
//! - Server: each chunk goes out as two body frames, its few header bytes and its data as read
//!   (for a resident blob, pages of the page cache), which HTTP/2 writes to the socket as they
//!   are. tonic would encode every chunk into a fresh buffer first (a copy of every served byte).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt;
use futures::future::BoxFuture;
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use prost::encoding::{WireType, decode_key, decode_varint, encode_key, encode_varint};
use shoal_proto::v1::{PieceChunk, PieceRequest, peer_server};
use shoal_service::http::RawProtocol;
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::Channel;
use tower::{Service, ServiceExt};

use crate::server::{PeerService, PieceChunks};

const GET_PIECE: &str = "/shoal.v1.Peer/GetPiece";
/// A gRPC message's prefix: the compressed flag and the length.
pub const MESSAGE_HEADER: usize = 5;
/// A `PieceRequest` is a digest, an index and a peer id: far below this.
pub const MAX_REQUEST: usize = 4096;
/// Fields of `PieceChunk` (peer.proto).
const OFFSET_FIELD: u32 = 1;
const DATA_FIELD: u32 = 2;

/// One `PieceChunk` as slices of the received frames.
#[derive(Debug)]
pub struct Chunk {
    pub offset: u64,
    pub data: Vec<Bytes>,
}

impl Chunk {
    /// The chunk's length in bytes.
    pub fn length(&self) -> usize {
        self.data.iter().map(Bytes::len).sum()
    }
}

/// The chunks of one `GetPiece` answer, read as they arrive.
pub struct PieceStream {
    body: Body,
    frames: Frames,
    /// No chunk may be longer: bounds what a misbehaving peer can make us buffer.
    max_message: usize,
}

/// Calls `GetPiece` and returns its chunk stream, or the call's status (busy, not found, …).
/// Chunks longer than `max_chunk` bytes end the stream with an error.
pub async fn get_piece(
    channel: Channel,
    request: &PieceRequest,
    max_chunk: usize,
) -> Result<PieceStream, Status> {
    let mut body = BytesMut::with_capacity(MESSAGE_HEADER + request.encoded_len());
    put_message_header(request.encoded_len(), &mut body);
    request
        .encode(&mut body)
        .map_err(|e| Status::internal(format!("encoding the piece request: {e}")))?;
    let http = http::Request::post(GET_PIECE)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(Body::new(http_body_util::Full::new(body.freeze())))
        .map_err(|e| Status::internal(format!("building the piece request: {e}")))?;
    let response = channel
        .oneshot(http)
        .await
        .map_err(|e| Status::unavailable(format!("piece request: {e}")))?;
    if response.status() != http::StatusCode::OK {
        return Err(Status::unknown(format!(
            "piece request answered HTTP {}",
            response.status()
        )));
    }
    // A call refused at once (busy, not found) answers with its status in the headers.
    if let Some(status) = Status::from_header_map(response.headers())
        && status.code() != tonic::Code::Ok
    {
        return Err(status);
    }
    Ok(PieceStream::new(response.into_body(), max_chunk))
}

impl PieceStream {
    /// The chunks of a `GetPiece` response `body` whose call was answered OK; chunks longer
    /// than `max_chunk` bytes end the stream with an error. Public for the fuzz targets.
    #[doc(hidden)]
    pub fn new(body: Body, max_chunk: usize) -> PieceStream {
        PieceStream {
            body,
            frames: Frames::default(),
            // The chunk's own field keys and lengths are a few bytes beyond its data.
            max_message: max_chunk + 32,
        }
    }

    /// The next chunk; `None` once the call ended with status OK.
    pub async fn message(&mut self) -> Result<Option<Chunk>, Status> {
        if !self.fill(MESSAGE_HEADER).await? {
            return if self.frames.remaining() == 0 {
                Ok(None)
            } else {
                Err(Status::internal(
                    "piece stream ended inside a message header",
                ))
            };
        }
        let compressed = self.frames.get_u8();
        let len = self.frames.get_u32() as usize;
        if compressed != 0 {
            return Err(Status::internal(
                "piece chunk is compressed; none was negotiated",
            ));
        }
        if len > self.max_message {
            return Err(Status::out_of_range(format!(
                "piece chunk of {len} bytes exceeds {} bytes",
                self.max_message
            )));
        }
        if !self.fill(len).await? {
            return Err(Status::internal("piece stream ended inside a chunk"));
        }
        let mut message = self.frames.split(len);
        parse_chunk(&mut message).map(Some)
    }

    /// Buffers at least `n` bytes; false when the body ended first. The body's end carries the
    /// call's status, which must be OK.
    async fn fill(&mut self, n: usize) -> Result<bool, Status> {
        while self.frames.remaining() < n {
            let Some(frame) = self.body.frame().await else {
                return Err(Status::internal("piece stream ended without a status"));
            };
            let frame = frame?;
            match frame.into_data() {
                Ok(data) => self.frames.push(data),
                Err(frame) => {
                    let status = frame
                        .trailers_ref()
                        .and_then(Status::from_header_map)
                        .unwrap_or_else(|| Status::internal("piece stream trailers lack a status"));
                    return if status.code() == tonic::Code::Ok {
                        Ok(false)
                    } else {
                        Err(status)
                    };
                }
            }
        }
        Ok(true)
    }
}

/// Parses a `PieceChunk` whose bytes are `message`, keeping its data as slices.
fn parse_chunk(message: &mut Frames) -> Result<Chunk, Status> {
    let malformed = |e: prost::DecodeError| Status::internal(format!("malformed piece chunk: {e}"));
    let mut chunk = Chunk {
        offset: 0,
        data: Vec::new(),
    };
    while message.has_remaining() {
        let (field, wire_type) = decode_key(message).map_err(malformed)?;
        match (field, wire_type) {
            (OFFSET_FIELD, WireType::Varint) => {
                chunk.offset = decode_varint(message).map_err(malformed)?
            }
            (DATA_FIELD, WireType::LengthDelimited) => {
                let len = decode_varint(message).map_err(malformed)?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&len| len <= message.remaining())
                    .ok_or_else(|| Status::internal("piece chunk data overruns its message"))?;
                // proto3: a repeated scalar field's last value wins.
                chunk.data = message.split(len).frames.into();
            }
            (_, wire_type) => {
                prost::encoding::skip_field(
                    wire_type,
                    field,
                    message,
                    prost::encoding::DecodeContext::default(),
                )
                .map_err(malformed)?;
            }
        }
    }
    Ok(chunk)
}

/// Received bytes as the frames they came in, read through [`Buf`] and split without copying.
#[derive(Debug, Default)]
struct Frames {
    frames: VecDeque<Bytes>,
    remaining: usize,
}

impl Frames {
    fn push(&mut self, frame: Bytes) {
        if !frame.is_empty() {
            self.remaining += frame.len();
            self.frames.push_back(frame);
        }
    }

    /// The next `n` bytes (at most what is buffered), as slices of the frames.
    fn split(&mut self, mut n: usize) -> Frames {
        let mut taken = Frames::default();
        while n > 0 {
            let Some(front) = self.frames.front_mut() else {
                break;
            };
            let part = if front.len() <= n {
                self.frames.pop_front().expect("front exists")
            } else {
                front.split_to(n)
            };
            n -= part.len();
            self.remaining -= part.len();
            taken.push(part);
        }
        taken
    }
}

impl Buf for Frames {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.frames.front().map_or(&[], |frame| frame.as_ref())
    }

    fn advance(&mut self, mut cnt: usize) {
        while cnt > 0 {
            let front = self.frames.front_mut().expect("advance within remaining");
            let step = cnt.min(front.len());
            front.advance(step);
            if front.is_empty() {
                self.frames.pop_front();
            }
            cnt -= step;
            self.remaining -= step;
        }
    }
}

/// The `Peer` gRPC service: `GetPiece` answered here, everything else by tonic's generated
/// server over the same [`PeerService`].
#[derive(Clone)]
pub struct PeerServer {
    service: Arc<PeerService>,
    generated: peer_server::PeerServer<PeerService>,
}

impl PeerServer {
    pub(crate) fn new(service: Arc<PeerService>) -> PeerServer {
        PeerServer {
            generated: peer_server::PeerServer::from_arc(service.clone()),
            service,
        }
    }

    /// The piece stream (`crate::stream`) as the second protocol of the peer listener
    /// (`shoal_service::http::serve_with_raw`), beside this gRPC service.
    pub fn piece_stream(&self) -> RawProtocol {
        let service = self.service.clone();
        RawProtocol::new(crate::stream::MAGIC, move |socket, idle, shutdown| {
            Box::pin(crate::stream::serve(
                service.clone(),
                socket,
                idle,
                shutdown,
            ))
        })
    }
}

impl NamedService for PeerServer {
    const NAME: &'static str = peer_server::SERVICE_NAME;
}

impl Service<http::Request<Body>> for PeerServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Neither path has back-pressure of its own: upload slots answer busy instead.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != GET_PIECE {
            return Box::pin(self.generated.call(request));
        }
        let service = self.service.clone();
        Box::pin(async move {
            let response = match read_request(request.into_body()).await {
                Ok(request) => service.start_piece(request).await,
                Err(status) => Err(status),
            };
            Ok(match response {
                Ok(chunks) => http::Response::builder()
                    .header(http::header::CONTENT_TYPE, "application/grpc")
                    .body(Body::new(ChunkFrames {
                        chunks,
                        data: None,
                        ended: false,
                    }))
                    .expect("static headers are valid"),
                // Trailers-only: the status in the headers, as tonic answers.
                Err(status) => status.into_http(),
            })
        })
    }
}

/// Decodes the single `PieceRequest` of a call's body.
async fn read_request(body: Body) -> Result<PieceRequest, Status> {
    let bytes = http_body_util::Limited::new(body, MESSAGE_HEADER + MAX_REQUEST)
        .collect()
        .await
        .map_err(|e| Status::invalid_argument(format!("reading the piece request: {e}")))?
        .to_bytes();
    parse_request(bytes)
}

/// Decodes a `GetPiece` call's body: one uncompressed gRPC message holding a `PieceRequest`.
pub fn parse_request(mut bytes: Bytes) -> Result<PieceRequest, Status> {
    if bytes.len() < MESSAGE_HEADER {
        return Err(Status::invalid_argument("piece request without a message"));
    }
    let compressed = bytes.get_u8();
    let len = bytes.get_u32() as usize;
    if compressed != 0 || len != bytes.len() {
        return Err(Status::invalid_argument(
            "piece request must be one uncompressed message",
        ));
    }
    PieceRequest::decode(bytes)
        .map_err(|e| Status::invalid_argument(format!("malformed piece request: {e}")))
}

/// A `GetPiece` response body: two frames per chunk (header bytes, then the data untouched),
/// then the call's status as trailers.
struct ChunkFrames {
    chunks: PieceChunks,
    /// The current chunk's data, sent after its header.
    data: Option<Bytes>,
    ended: bool,
}

impl http_body::Body for ChunkFrames {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(data) = this.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        let status = match ready!(this.chunks.poll_next_unpin(cx)) {
            Some(Ok(chunk)) => {
                let header = chunk_header(&chunk);
                this.data = Some(chunk.data).filter(|data| !data.is_empty());
                return Poll::Ready(Some(Ok(Frame::data(header))));
            }
            Some(Err(status)) => status,
            None => Status::ok(""),
        };
        this.ended = true;
        let mut trailers = http::HeaderMap::new();
        if let Err(e) = status.add_header(&mut trailers) {
            return Poll::Ready(Some(Err(e)));
        }
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }
}

/// Writes the prefix of an uncompressed gRPC message of `len` bytes.
fn put_message_header(len: usize, buf: &mut impl BufMut) {
    buf.put_u8(0);
    buf.put_u32(len as u32);
}

/// Everything of `chunk`'s gRPC message but its data bytes: the message prefix, the offset
/// field and the data field's key and length (field order and encoding as prost's).
fn chunk_header(chunk: &PieceChunk) -> Bytes {
    let mut header = BytesMut::with_capacity(32);
    put_message_header(chunk.encoded_len(), &mut header);
    if chunk.offset != 0 {
        encode_key(OFFSET_FIELD, WireType::Varint, &mut header);
        encode_varint(chunk.offset, &mut header);
    }
    if !chunk.data.is_empty() {
        encode_key(DATA_FIELD, WireType::LengthDelimited, &mut header);
        encode_varint(chunk.data.len() as u64, &mut header);
    }
    header.freeze()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// `message` encoded as a gRPC response body, cut into frames of `frame` bytes.
    fn framed(message: &PieceChunk, frame: usize) -> Frames {
        let mut encoded = Vec::new();
        put_message_header(message.encoded_len(), &mut encoded);
        message.encode(&mut encoded).unwrap();
        let encoded = Bytes::from(encoded);
        let mut frames = Frames::default();
        for start in (0..encoded.len()).step_by(frame) {
            frames.push(encoded.slice(start..(start + frame).min(encoded.len())));
        }
        frames
    }

    #[test]
    fn a_chunk_parses_from_any_framing_into_slices_of_the_frames() {
        let data: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        let message = PieceChunk {
            offset: 1 << 40,
            data: Bytes::from(data.clone()),
        };
        for frame in [1, 3, 4096, 16_384, 70_000, 1 << 20] {
            let mut frames = framed(&message, frame);
            assert_eq!(frames.get_u8(), 0);
            let len = frames.get_u32() as usize;
            assert_eq!(len, frames.remaining());
            let chunk = parse_chunk(&mut frames.split(len)).unwrap();
            assert_eq!(chunk.offset, 1 << 40, "frame {frame}");
            assert_eq!(chunk.data.concat(), data, "frame {frame}");
            assert_eq!(chunk.length(), data.len());
            // Slices, not copies: as many as the frames the data spans (at most).
            assert!(chunk.data.len() <= data.len().div_ceil(frame) + 1);
        }
    }

    #[test]
    fn a_chunk_header_and_its_data_are_the_message_prost_encodes() {
        for (offset, len) in [(0, 0), (0, 5), (7, 0), (1 << 33, 300), (1, 1 << 20)] {
            let chunk = PieceChunk {
                offset,
                data: Bytes::from(vec![9; len]),
            };
            let mut sent = chunk_header(&chunk).to_vec();
            sent.extend_from_slice(&chunk.data);
            let mut expected = vec![0];
            expected.extend_from_slice(&(chunk.encoded_len() as u32).to_be_bytes());
            chunk.encode(&mut expected).unwrap();
            assert_eq!(sent, expected, "offset {offset} len {len}");
        }
    }

    #[test]
    fn an_empty_chunk_and_unknown_fields_parse() {
        let mut frames = Frames::default();
        // Field 9 (varint 7), then field 1 (offset 5): no data field at all.
        frames.push(Bytes::from_static(&[0x48, 0x07, 0x08, 0x05]));
        let chunk = parse_chunk(&mut frames).unwrap();
        assert_eq!(chunk.offset, 5);
        assert_eq!(chunk.length(), 0);
    }

    #[test]
    fn data_that_overruns_its_message_is_refused() {
        let mut frames = Frames::default();
        // Field 2, length 10, but only 3 bytes follow.
        frames.push(Bytes::from_static(&[0x12, 0x0a, 1, 2, 3]));
        let error = parse_chunk(&mut frames).unwrap_err();
        assert!(error.message().contains("overruns"), "{error}");
        let mut truncated = Frames::default();
        truncated.push(Bytes::from_static(&[0x08]));
        assert!(parse_chunk(&mut truncated).is_err());
    }

    proptest! {
        #[test]
        fn chunks_parse_back_however_the_frames_are_cut(
            offset in any::<u64>(),
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            cuts in proptest::collection::vec(1usize..64, 1..8),
        ) {
            let message = PieceChunk { offset, data: Bytes::from(data.clone()) };
            let encoded = message.encode_to_vec();
            let mut frames = Frames::default();
            let (mut start, mut sizes) = (0, cuts.iter().cycle());
            while start < encoded.len() {
                let end = (start + sizes.next().expect("cycle")).min(encoded.len());
                frames.push(Bytes::copy_from_slice(&encoded[start..end]));
                start = end;
            }
            let chunk = parse_chunk(&mut frames).expect("an encoded chunk parses");
            prop_assert_eq!(chunk.offset, offset);
            prop_assert_eq!(chunk.data.concat(), data);
        }

        #[test]
        fn arbitrary_messages_parse_or_fail_without_panicking(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut frames = Frames::default();
            frames.push(Bytes::from(bytes.clone()));
            if let Ok(chunk) = parse_chunk(&mut frames) {
                prop_assert!(chunk.length() <= bytes.len());
            }
        }
    }
}
