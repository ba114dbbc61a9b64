//! The `Peer` service's messages: the `GetPiece` request body (decoded by hand from its gRPC
//! framing) and `SessionRequest` as the serving peer checks them, and the `SessionEvent`s a
//! downloading peer reads (the handshake bitfield).

use bytes::Bytes;
use prost::Message;
use shoal_p2p::fuzzing::{
    MAX_REQUEST, MESSAGE_HEADER, parse_digest, parse_request, parse_session_request,
};
use shoal_proto::v1::{SessionEvent, SessionRequest, session_event};
use tonic::Code;

/// The first byte picks the message: 0 a `GetPiece` body, 1 a `SessionRequest`, 2 a
/// `SessionEvent`.
pub fn run(data: &[u8]) {
    let Some((kind, message)) = crate::selector(data) else {
        return;
    };
    match kind % 3 {
        0 => get_piece(message),
        1 => session(message),
        _ => session_event(message),
    }
}

fn get_piece(body: &[u8]) {
    // The server stops reading a body beyond this.
    if body.len() > MESSAGE_HEADER + MAX_REQUEST {
        return;
    }
    match parse_request(Bytes::copy_from_slice(body)) {
        Ok(request) => {
            if let Ok(digest) = parse_digest(&request.digest) {
                assert_eq!(digest.to_string(), request.digest);
            }
        }
        Err(status) => assert_eq!(status.code(), Code::InvalidArgument),
    }
}

fn session(message: &[u8]) {
    let Ok(request) = SessionRequest::decode(message) else {
        return;
    };
    match parse_session_request(&request) {
        Ok((digest, caller)) => {
            assert_eq!(digest.to_string(), request.digest);
            assert_eq!(caller.as_str(), request.peer_id);
        }
        Err(status) => assert_eq!(status.code(), Code::InvalidArgument),
    }
}

/// The handshake's bitfield, checked as the downloading peer checks it.
fn session_event(message: &[u8]) {
    if let Ok(SessionEvent {
        event: Some(session_event::Event::Bitfield(wire)),
    }) = SessionEvent::decode(message)
    {
        crate::bitfield::check(wire.piece_count, &wire.bits);
    }
}
