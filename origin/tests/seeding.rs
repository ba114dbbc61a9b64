//! The origin as a seeder: its gRPC `Peer` listener serves every blob in its store as verified
//! pieces, and the bytes it serves that way show in its metrics.

mod common;

use common::{TestOrigin, blob};
use futures::StreamExt;
use shoal_core::{Digest, MetainfoBuilder};
use shoal_proto::v1::peer_client::PeerClient;
use shoal_proto::v1::session_event::Event;
use shoal_proto::v1::{PieceRequest, SessionRequest};
use tonic::Code;
use tonic::transport::Channel;

async fn peer_client(origin: &TestOrigin) -> PeerClient<Channel> {
    PeerClient::connect(format!("http://{}", origin.peer_addr))
        .await
        .expect("connect to the origin's peer service")
}

fn session(digest: &Digest) -> SessionRequest {
    SessionRequest {
        digest: digest.to_string(),
        peer_id: "agent-1".into(),
        addr: "127.0.0.1:16001".into(),
    }
}

#[tokio::test]
async fn stored_blobs_are_seeded_as_verified_pieces_and_counted() {
    let origin = TestOrigin::start().await;
    // Several 256 KiB pieces, the last one short.
    let data = blob(3 * 256 * 1024 + 1000, 5);
    let digest = Digest::of(&data);
    origin
        .api()
        .put_blob(&digest, None, data.clone().into())
        .await
        .expect("put");
    let mut builder = MetainfoBuilder::new(data.len() as u64);
    builder.update(&data);
    let metainfo = builder.finish().expect("metainfo");

    let mut peer = peer_client(&origin).await;
    let mut events = peer
        .session(session(&digest))
        .await
        .expect("session")
        .into_inner();
    let first = events
        .next()
        .await
        .expect("a first event")
        .expect("not an error");
    let Some(Event::Bitfield(bitfield)) = first.event else {
        panic!("the session opens with a bitfield, got {first:?}");
    };
    assert_eq!(bitfield.piece_count as usize, metainfo.piece_count());
    assert_eq!(bitfield.bits, vec![0xF0], "all four pieces");

    let mut served = 0;
    for index in 0..metainfo.piece_count() {
        let mut chunks = peer
            .get_piece(PieceRequest {
                digest: digest.to_string(),
                index: index as u32,
                peer_id: "agent-1".into(),
                insist: false,
            })
            .await
            .expect("get piece")
            .into_inner();
        let mut piece = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.expect("chunk");
            assert_eq!(chunk.offset as usize, piece.len());
            piece.extend_from_slice(&chunk.data);
        }
        assert!(metainfo.verify_piece(index, &[&piece]), "piece {index}");
        served += piece.len();
    }
    assert_eq!(served, data.len());
    origin
        .wait_metric("shoal_p2p_bytes_served_total", data.len() as f64)
        .await;
    // The same bytes are the origin's egress for seeding, and nothing else left.
    origin
        .wait_metric(
            "shoal_origin_egress_bytes_total{reason=\"seed\"}",
            data.len() as f64,
        )
        .await;
    for other in ["pull_through", "replication"] {
        let sample = format!("shoal_origin_egress_bytes_total{{reason=\"{other}\"}}");
        assert_eq!(origin.metric(&sample).await, Some(0.0), "{sample}");
    }
    origin.stop().await;
}

#[tokio::test]
async fn a_blob_only_in_the_backend_is_seeded_once_its_metainfo_was_asked_for() {
    let origin = TestOrigin::start().await;
    let data = blob(100_000, 9);
    let digest = Digest::of(&data);
    origin.put_in_backend(&digest, &data);
    let mut peer = peer_client(&origin).await;

    // Seeding never pulls through on its own: an agent learns of the blob from the tracker,
    // which asked an owning origin for its metainfo, and that pulled the blob in.
    let status = peer
        .session(session(&digest))
        .await
        .expect_err("not on disk yet");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    origin
        .api()
        .metainfo(&digest, None)
        .await
        .expect("metainfo")
        .expect("pulled through");
    let mut events = peer
        .session(session(&digest))
        .await
        .expect("session")
        .into_inner();
    let first = events.next().await.expect("event").expect("ok");
    assert!(matches!(first.event, Some(Event::Bitfield(_))), "{first:?}");
    origin.stop().await;
}
