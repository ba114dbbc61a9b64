//! The tracker over the network: a real tracker in process on `127.0.0.1:0`, driven with the
//! generated tonic client and plain HTTP, in front of origin doubles that serve metainfo.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use shoal_core::{Digest, Metainfo, MetainfoBuilder, rendezvous};
use shoal_proto::v1::{MetainfoRequest, PeerInfo};
use shoal_tracker::{OriginAddrs, OriginsConfig, TrackerConfig};
use tokio::net::TcpListener;
use tonic::Code;

use crate::common::{Tracker, announce};

/// An origin's HTTP API reduced to `GET /blobs/{digest}/metainfo`, counting requests.
#[derive(Default)]
struct OriginDouble {
    blobs: HashMap<String, Metainfo>,
    requests: AtomicUsize,
}

async fn metainfo(State(origin): State<Arc<OriginDouble>>, Path(digest): Path<String>) -> Response {
    origin.requests.fetch_add(1, Ordering::SeqCst);
    match origin.blobs.get(&digest) {
        Some(metainfo) => metainfo.to_json().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

fn serve_origin(listener: TcpListener, origin: Arc<OriginDouble>) {
    let app = Router::new()
        .route("/blobs/{digest}/metainfo", get(metainfo))
        .with_state(origin);
    tokio::spawn(async move { axum::serve(listener, app).await });
}

/// An address nothing listens on.
async fn dead_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr").to_string()
}

fn blob_metainfo(seed: u32) -> Metainfo {
    let data: Vec<u8> = (0..600 * 1024u32)
        .map(|i| (i.wrapping_mul(31) ^ seed) as u8)
        .collect();
    let mut builder = MetainfoBuilder::new(data.len() as u64);
    builder.update(&data);
    builder.finish().expect("metainfo")
}

fn origin_addrs(http: &str, peer: &str) -> OriginAddrs {
    OriginAddrs {
        http: http.into(),
        peer: peer.into(),
    }
}

fn ids(peers: &[PeerInfo]) -> Vec<&str> {
    peers.iter().map(|p| p.peer_id.as_str()).collect()
}

#[tokio::test]
async fn announces_hand_out_the_owning_origins_first_then_complete_peers_never_the_caller() {
    let origins = vec![
        origin_addrs("10.0.0.1:15100", "10.0.0.1:15101"),
        origin_addrs("10.0.0.2:15100", "10.0.0.2:15101"),
        origin_addrs("10.0.0.3:15100", "10.0.0.3:15101"),
    ];
    let tracker = Tracker::start(TrackerConfig {
        origins: OriginsConfig::listed(origins.clone()),
        replicas: 2,
        announce_interval: Duration::from_millis(1500),
        ..TrackerConfig::default()
    })
    .await;
    let mut client = tracker.client().await;
    let digest = Digest::of(b"layer");
    let http: Vec<&str> = origins.iter().map(|o| o.http.as_str()).collect();
    let owners: Vec<String> = rendezvous::owners(&digest, &http, 2)
        .into_iter()
        .map(|http| http.replace(":15100", ":15101"))
        .collect();

    let first = client
        .announce(announce(&digest, "a", false))
        .await
        .expect("announce")
        .into_inner();
    assert_eq!(first.interval_ms, 1500);
    assert_eq!(first.swarm_size, 1, "the caller is the swarm's only member");
    let mut handed: Vec<&str> = ids(&first.peers);
    handed.sort_unstable();
    let mut expected: Vec<&str> = owners.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(handed, expected, "only the two owners of the digest");
    for peer in &first.peers {
        assert!(peer.origin && peer.complete, "{peer:?}");
        assert_eq!(peer.addr, peer.peer_id);
    }

    client
        .announce(announce(&digest, "b", false))
        .await
        .expect("announce");
    client
        .announce(announce(&digest, "c", true))
        .await
        .expect("announce");
    let again = client
        .announce(announce(&digest, "a", false))
        .await
        .expect("announce")
        .into_inner();
    let handed = ids(&again.peers);
    assert_eq!(handed.len(), 4, "{handed:?}");
    assert_eq!(again.swarm_size, 3, "a, b and c, the caller counted once");
    assert_eq!(&handed[2..], ["c", "b"], "complete peers before the rest");
    assert!(!handed.contains(&"a"), "never the caller");
    let c = &again.peers[2];
    assert_eq!(
        (c.addr.as_str(), c.origin, c.complete),
        ("c.agents:16001", false, true)
    );

    // A peer claiming to be an origin is handed out as what it is: a peer.
    let mut claim = announce(&digest, "d", true);
    if let Some(peer) = claim.peer.as_mut() {
        peer.origin = true;
    }
    client.announce(claim).await.expect("announce");
    let view = client
        .announce(announce(&digest, "b", false))
        .await
        .expect("announce")
        .into_inner();
    let d = view
        .peers
        .iter()
        .find(|p| p.peer_id == "d")
        .expect("d handed out");
    assert!(!d.origin);

    // Swarms are per digest.
    let other = client
        .announce(announce(&Digest::of(b"other"), "a", false))
        .await
        .expect("announce")
        .into_inner();
    assert!(other.peers.iter().all(|p| p.origin), "{:?}", other.peers);
}

#[tokio::test]
async fn malformed_requests_are_invalid_arguments_and_the_connection_survives() {
    let tracker = Tracker::start(TrackerConfig::default()).await;
    let mut client = tracker.client().await;
    let digest = Digest::of(b"layer");

    let mut bad_digest = announce(&digest, "a", false);
    bad_digest.digest = "sha256:nothex".into();
    let mut no_peer = announce(&digest, "a", false);
    no_peer.peer = None;
    let bad_id = announce(&digest, "not a peer id", false);
    let mut bad_addr = announce(&digest, "a", false);
    if let Some(peer) = bad_addr.peer.as_mut() {
        peer.addr = "nowhere".into();
    }
    let mut bad_namespace = announce(&digest, "a", false);
    bad_namespace.namespace = "UPPER/case".into();
    for (what, request) in [
        ("digest", bad_digest),
        ("peer", no_peer),
        ("peer.peer_id", bad_id),
        ("peer.addr", bad_addr),
        ("namespace", bad_namespace),
    ] {
        let status = client.announce(request).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(status.message().contains(what), "{what}: {status:?}");
    }
    let status = client
        .get_metainfo(MetainfoRequest {
            digest: "md5:abc".into(),
            namespace: String::new(),
        })
        .await
        .expect_err("bad digest");
    assert_eq!(status.code(), Code::InvalidArgument);

    client
        .announce(announce(&digest, "a", false))
        .await
        .expect("a good announce on the same connection");
}

#[tokio::test]
async fn metainfo_comes_from_an_owner_with_failover_and_is_cached() {
    let dead = dead_addr().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let live = listener.local_addr().expect("addr").to_string();
    // A blob whose first rendezvous owner is the dead origin, so the tracker must fail over.
    let nodes = [dead.clone(), live.clone()];
    let metainfo = (0..)
        .map(blob_metainfo)
        .find(|m| rendezvous::owners(&m.digest(), &nodes, 2)[0] == &dead)
        .expect("some blob ranks the dead origin first");
    let mut origin = OriginDouble::default();
    origin
        .blobs
        .insert(metainfo.digest().to_string(), metainfo.clone());
    let origin = Arc::new(origin);
    serve_origin(listener, Arc::clone(&origin));

    let tracker = Tracker::start(TrackerConfig {
        origins: OriginsConfig::listed(vec![
            origin_addrs(&dead, "127.0.0.1:15101"),
            origin_addrs(&live, "127.0.0.1:15111"),
        ]),
        ..TrackerConfig::default()
    })
    .await;
    let mut client = tracker.client().await;
    let request = |digest: &Digest| MetainfoRequest {
        digest: digest.to_string(),
        namespace: "library/alpine".into(),
    };

    let got = client
        .get_metainfo(request(&metainfo.digest()))
        .await
        .expect("metainfo")
        .into_inner();
    assert_eq!(got.digest, metainfo.digest().to_string());
    assert_eq!(got.length, metainfo.length());
    assert_eq!(got.piece_length, metainfo.piece_length());
    assert_eq!(got.piece_hashes.len(), metainfo.piece_count());
    for (i, hash) in got.piece_hashes.iter().enumerate() {
        assert_eq!(
            Some(hash.as_slice()),
            metainfo.piece_hash(i).map(|h| h.as_bytes())
        );
    }
    client
        .get_metainfo(request(&metainfo.digest()))
        .await
        .expect("cached");
    assert_eq!(
        origin.requests.load(Ordering::SeqCst),
        1,
        "the second is a cache hit"
    );

    let status = client
        .get_metainfo(request(&Digest::of(b"nowhere")))
        .await
        .expect_err("absent");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    let (_, metrics) = tracker.http_get("/metrics").await;
    for line in [
        "shoal_tracker_metainfo_requests_total{result=\"fetched\"} 1",
        "shoal_tracker_metainfo_requests_total{result=\"hit\"} 1",
        "shoal_tracker_metainfo_requests_total{result=\"not_found\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}

#[tokio::test]
async fn metainfo_is_unavailable_when_no_owner_answers() {
    let tracker = Tracker::start(TrackerConfig {
        origins: OriginsConfig::listed(vec![
            origin_addrs(&dead_addr().await, "127.0.0.1:15101"),
            origin_addrs(&dead_addr().await, "127.0.0.1:15111"),
        ]),
        ..TrackerConfig::default()
    })
    .await;
    let status = tracker
        .client()
        .await
        .get_metainfo(MetainfoRequest {
            digest: Digest::of(b"layer").to_string(),
            namespace: String::new(),
        })
        .await
        .expect_err("origins down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[tokio::test]
async fn health_and_metrics_share_the_grpc_port() {
    let tracker = Tracker::start(TrackerConfig::default()).await;
    let mut client = tracker.client().await;
    let digest = Digest::of(b"layer");
    for id in ["a", "b", "c"] {
        client
            .announce(announce(&digest, id, false))
            .await
            .expect("announce");
    }

    assert_eq!(
        tracker.http_get("/health").await,
        (StatusCode::OK, "ok".into())
    );
    let (status, metrics) = tracker.http_get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    for line in [
        "shoal_tracker_announces_total 3",
        "shoal_tracker_swarm_peers_count 3",
        // Swarm sizes 1, 2 and 3 were observed.
        "shoal_tracker_swarm_peers_sum 6.0",
        "shoal_build_info{component=\"tracker\"",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
}
