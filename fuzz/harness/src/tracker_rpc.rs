//! The tracker's gRPC requests as its service decodes and checks them: `AnnounceRequest` (digest,
//! namespace, peer id, peer address) and `MetainfoRequest`.

use prost::Message;
use shoal_proto::v1::{AnnounceRequest, MetainfoRequest};
use shoal_tracker::fuzzing::{MAX_REQUEST_SIZE, parse_announce, parse_metainfo_request};
use tonic::Code;

/// The first byte picks the call (even: `Announce`, odd: `GetMetainfo`); the rest is the
/// message as it arrives, after the gRPC framing.
pub fn run(data: &[u8]) {
    let Some((call, message)) = crate::selector(data) else {
        return;
    };
    if message.len() > MAX_REQUEST_SIZE {
        return;
    }
    if call % 2 == 0 {
        let Ok(request) = AnnounceRequest::decode(message) else {
            return;
        };
        let announced = request.peer.clone();
        match parse_announce(request.clone()) {
            Ok((digest, peer)) => {
                let announced = announced.expect("an accepted announce names its peer");
                assert_eq!(digest.to_string(), request.digest);
                assert_eq!(peer.id.as_str(), announced.peer_id);
                assert_eq!(peer.addr, announced.addr);
                assert_eq!(peer.complete, announced.complete);
            }
            Err(status) => assert_eq!(status.code(), Code::InvalidArgument),
        }
    } else {
        let Ok(request) = MetainfoRequest::decode(message) else {
            return;
        };
        match parse_metainfo_request(&request) {
            Ok((digest, namespace)) => {
                assert_eq!(digest.to_string(), request.digest);
                assert_eq!(
                    namespace.map(|name| name.to_string()).unwrap_or_default(),
                    request.namespace
                );
            }
            Err(status) => assert_eq!(status.code(), Code::InvalidArgument),
        }
    }
}
