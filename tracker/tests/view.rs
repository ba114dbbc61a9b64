//! The swarm view over a real tracker: the page and its JSON answer with no swarm and with a
//! swarm of 4,096-piece blobs, progress from announces shows up per peer and in the totals,
//! malformed requests are 400 (never 500) and change nothing, and the event stream sends the
//! document at once and again after a change.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::{Tracker, announce};
use serde_json::Value;
use shoal_core::Digest;
use shoal_proto::v1::Progress;
use shoal_tracker::{OriginAddrs, OriginsConfig, TrackerConfig};

const PIECES: u32 = 4096;

fn config() -> TrackerConfig {
    TrackerConfig {
        // A closed loopback port: the origin is an owner the view lists, never asked here.
        origins: OriginsConfig::listed(vec![OriginAddrs {
            http: "127.0.0.1:9".into(),
            peer: "127.0.0.1:10".into(),
        }]),
        replicas: 1,
        ..TrackerConfig::default()
    }
}

/// Progress holding pieces `0..held` of [`PIECES`], with `in_flight` requested.
fn progress(held: u32, in_flight: Vec<u32>, from_origins: u64, from_peers: u64) -> Progress {
    let mut have = vec![0u8; (PIECES / 8) as usize];
    for i in 0..held {
        have[(i / 8) as usize] |= 0x80 >> (i % 8);
    }
    Progress {
        piece_count: PIECES,
        have,
        in_flight,
        bytes_from_origins: from_origins,
        bytes_from_peers: from_peers,
    }
}

async fn json(tracker: &Tracker, path: &str) -> (StatusCode, Value) {
    let (status, body) = tracker.http_get(path).await;
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, value)
}

#[tokio::test]
async fn the_view_shows_announced_progress_and_refuses_malformed_requests() {
    let tracker = Tracker::start(config()).await;
    let (status, page) = tracker.http_get("/ui").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<title>Shoal swarms</title>"), "{page}");
    let (status, empty) = json(&tracker, "/v1/swarms").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(empty["total"], 0);
    assert_eq!(empty["swarms"], Value::Array(vec![]));

    let digest = Digest::of(b"a 4,096-piece layer");
    let mut client = tracker.client().await;
    let mut slow = announce(&digest, "slow", false);
    slow.progress = Some(progress(10, vec![10, 11], 10, 0));
    let mut fast = announce(&digest, "fast", false);
    fast.progress = Some(progress(2048, vec![], 100, 900));
    let mut done = announce(&digest, "done", true);
    done.progress = Some(Progress {
        have: Vec::new(),
        ..progress(0, vec![], 50, 4000)
    });
    for request in [slow, fast.clone(), done] {
        client.announce(request).await.expect("announce");
    }

    let (status, list) = json(&tracker, "/v1/swarms").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 1);
    let swarm = &list["swarms"][0];
    assert_eq!(swarm["digest"], digest.to_string());
    assert_eq!(swarm["repository"], "library/alpine");
    assert_eq!(swarm["piece_count"], PIECES);
    assert_eq!(swarm["peer_counts"]["origins"], 1);
    assert_eq!(swarm["peer_counts"]["complete"], 1);
    assert_eq!(swarm["peer_counts"]["downloading"], 2);
    assert_eq!(swarm["bytes_from_origins"], 160);
    assert_eq!(swarm["bytes_from_peers"], 4900);
    let expected = f64::from(10 + 2048 + PIECES) / f64::from(3 * PIECES);
    assert!((swarm["progress"].as_f64().expect("progress") - expected).abs() < 1e-9);

    let path = format!("/v1/swarms/{digest}");
    let (status, detail) = json(&tracker, &path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["total"], 3);
    assert_eq!(detail["peer_counts"]["downloading"], 2);
    assert_eq!(detail["peer_counts"]["stalled"], 0);
    assert_eq!(detail["origins"][0]["addr"], "127.0.0.1:10");
    let peers = detail["peers"].as_array().expect("peers");
    let ids: Vec<&str> = peers
        .iter()
        .map(|p| p["id"].as_str().expect("id"))
        .collect();
    // Slowest first: equal rates (a first announce has none), then the fewest pieces.
    assert_eq!(ids, ["slow", "fast", "done"]);
    assert_eq!(peers[0]["pieces"], 10);
    assert_eq!(peers[0]["in_flight"], serde_json::json!([10, 11]));
    let have = peers[0]["have"].as_str().expect("bits as hex");
    assert_eq!(have.len(), (PIECES / 4) as usize);
    assert!(have.starts_with("ffc0"), "{have}");
    assert_eq!(peers[2]["pieces"], PIECES);
    assert_eq!(peers[2]["have"], Value::Null);
    assert_eq!(peers[2]["bytes_from_peers"], 4000);

    let (status, page) = json(&tracker, &format!("{path}?sort=peer&offset=1&limit=1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["peers"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["peers"][0]["id"], "fast");

    for bad in [
        "/v1/swarms?limit=0".to_owned(),
        "/v1/swarms?limit=501".to_owned(),
        "/v1/swarms?limit=ten".to_owned(),
        "/v1/swarms?offset=-1".to_owned(),
        "/v1/swarms?bogus=1".to_owned(),
        "/v1/swarms/sha256:nothex".to_owned(),
        "/v1/swarms/not-a-digest".to_owned(),
        format!("{path}?sort=fastest"),
        format!("{path}?offset=99999999999999999999999"),
        "/v1/swarms/events?digest=sha256:12".to_owned(),
        "/v1/swarms/events?sort=slowest".to_owned(),
        "/v1/swarms/events?limit=0".to_owned(),
    ] {
        let (status, error) = json(&tracker, &bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {error}");
        assert!(
            error["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{bad}"
        );
    }
    let (status, _) = json(&tracker, &format!("/v1/swarms/{}", Digest::of(b"nobody"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // An announce whose progress does not describe its pieces is refused and changes nothing.
    let mut bad = announce(&digest, "slow", false);
    bad.progress = Some(Progress {
        have: vec![0xff; 3],
        ..progress(0, vec![], 0, 0)
    });
    let refused = client.announce(bad).await.expect_err("bad progress");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("progress.have"), "{refused}");
    let (_, after) = json(&tracker, &path).await;
    assert_eq!(after["peers"][0]["pieces"], 10);

    // Events: the document at once, and again once an announce changes it.
    let http = shoal_service::client::builder().build().expect("client");
    let mut events = http
        .get(format!(
            "http://{}/v1/swarms/events?digest={digest}",
            tracker.addr
        ))
        .send()
        .await
        .expect("events");
    assert_eq!(events.status(), StatusCode::OK);
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut announced = false;
    while text.matches("event: swarm\n").count() < 2 {
        assert!(Instant::now() < deadline, "no second event in {text}");
        let chunk = tokio::time::timeout(Duration::from_secs(5), events.chunk())
            .await
            .expect("an event within 5 s")
            .expect("stream")
            .expect("not ended");
        text.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        if !announced && text.contains("event: swarm\n") {
            fast.progress = Some(progress(3000, vec![], 100, 2000));
            client.announce(fast.clone()).await.expect("announce");
            announced = true;
        }
    }
    let last = text
        .rsplit("event: swarm\ndata: ")
        .next()
        .and_then(|data| data.lines().next())
        .expect("data line");
    let last: Value = serde_json::from_str(last).expect("event JSON");
    assert_eq!(last["bytes_from_peers"], 4000 + 2000);
}

/// A large swarm is served a page at a time, slowest first, and the pages cover every peer once.
#[tokio::test]
async fn a_large_swarm_is_paged_slowest_first() {
    const PEERS: u32 = 1_000;
    const LIMIT: usize = 300;
    let tracker = Tracker::start(config()).await;
    let mut client = tracker.client().await;
    let digest = Digest::of(b"a layer a thousand nodes pull");
    // Peer i holds i pieces: without rates yet, the slowest is the one holding fewest.
    for i in (0..PEERS).rev() {
        let mut request = announce(&digest, &format!("peer-{i:04}"), false);
        request.progress = Some(progress(i, vec![], 0, 0));
        client.announce(request).await.expect("announce");
    }
    let mut seen = Vec::new();
    for offset in (0..PEERS as usize).step_by(LIMIT) {
        let (status, page) = json(
            &tracker,
            &format!("/v1/swarms/{digest}?offset={offset}&limit={LIMIT}"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(page["total"], PEERS);
        let rows = page["peers"].as_array().expect("rows");
        assert!(rows.len() <= LIMIT);
        seen.extend(rows.iter().map(|r| r["pieces"].as_u64().expect("pieces")));
    }
    let expected: Vec<u64> = (0..u64::from(PEERS)).collect();
    assert_eq!(seen, expected);
    let (status, page) = json(&tracker, &format!("/v1/swarms/{digest}?offset=5000")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["peers"], Value::Array(vec![]));
}
