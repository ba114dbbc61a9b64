//! A `GetPiece` response as the downloading peer reads it (`PieceStream`): gRPC message framing
//! and `PieceChunk`s decoded by hand as slices of the HTTP/2 DATA frames they arrived in.

use bytes::Bytes;
use futures::stream;
use http::HeaderMap;
use http_body::Frame;
use http_body_util::StreamBody;
use shoal_p2p::PieceStream;
use tonic::body::Body;

/// Small, so that the length check is reached often; the agents' is the piece chunk size.
const MAX_CHUNK: usize = 1024;

/// The first byte is the size of the DATA frames the rest is cut into (plus one), so the same
/// message arrives split at different places; the call then ends with status OK.
pub fn run(data: &[u8]) {
    let Some((frame_size, body)) = crate::selector(data) else {
        return;
    };
    let frames: Vec<Result<Frame<Bytes>, tonic::Status>> = body
        .chunks(usize::from(frame_size) + 1)
        .map(|frame| Ok(Frame::data(Bytes::copy_from_slice(frame))))
        .chain(std::iter::once(Ok(Frame::trailers(ok_trailers()))))
        .collect();
    let mut pieces = PieceStream::new(Body::new(StreamBody::new(stream::iter(frames))), MAX_CHUNK);
    futures::executor::block_on(async {
        let mut received = 0;
        while let Ok(Some(chunk)) = pieces.message().await {
            assert!(chunk.length() <= MAX_CHUNK + 32);
            received += chunk.length();
            assert!(received <= body.len());
        }
    });
}

fn ok_trailers() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    trailers
}
