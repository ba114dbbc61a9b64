//! Origins in a ring: a committed blob reaches its other owners, the commit is acknowledged only
//! once the write quorum holds it, and a replica pushed by a peer is not passed on again.

mod common;

use common::{TestOrigin, blob, wait_for};
use shoal_core::{Digest, ErrorCode, Name};

fn holders(ring: &[TestOrigin], digest: &Digest) -> usize {
    ring.iter()
        .filter(|origin| origin.store_blob(digest).exists())
        .count()
}

#[tokio::test]
async fn a_commit_is_acknowledged_once_the_write_quorum_holds_it() {
    let ring = TestOrigin::start_ring(3, 3, 2).await;
    let namespace = Name::parse("team/app").unwrap();
    let bytes = blob(300_000, 7);
    let digest = Digest::of(&bytes);

    // Through an upload session on one origin, as the proxy does.
    let api = ring[0].api();
    let id = api
        .start_upload(Some(&namespace), None)
        .await
        .expect("start");
    api.patch_upload(&id, Some(&namespace), Some(0), None, bytes.clone().into())
        .await
        .expect("patch");
    api.commit_upload(&id, &digest, Some(&namespace), None)
        .await
        .expect("commit");
    assert!(
        holders(&ring, &digest) >= 2,
        "acknowledged before two owners held the blob"
    );
    wait_for("the third owner to catch up", || {
        holders(&ring, &digest) == 3
    })
    .await;
    for origin in &ring {
        assert_eq!(std::fs::read(origin.store_blob(&digest)).unwrap(), bytes);
    }
    // The committing origin pushed the blob to both other owners: its replication egress.
    ring[0]
        .wait_metric(
            "shoal_origin_egress_bytes_total{reason=\"replication\"}",
            2.0 * bytes.len() as f64,
        )
        .await;

    // A whole-blob PUT replicates too.
    let second = blob(10_000, 9);
    let digest = Digest::of(&second);
    ring[1]
        .api()
        .put_blob(&digest, None, second.into())
        .await
        .expect("put");
    assert!(holders(&ring, &digest) >= 2);
    wait_for("every owner to hold the PUT blob", || {
        holders(&ring, &digest) == 3
    })
    .await;
    for origin in ring {
        origin.stop().await;
    }
}

#[tokio::test]
async fn without_the_write_quorum_a_commit_fails() {
    let mut ring = TestOrigin::start_ring(3, 3, 3).await;
    let bytes = blob(20_000, 1);
    let digest = Digest::of(&bytes);
    ring[0]
        .api()
        .put_blob(&digest, None, bytes.into())
        .await
        .expect("all three owners are up");
    assert_eq!(holders(&ring, &digest), 3);

    ring.pop().expect("three").stop().await;
    let bytes = blob(20_000, 2);
    let digest = Digest::of(&bytes);
    let error = ring[0]
        .api()
        .put_blob(&digest, None, bytes.into())
        .await
        .expect_err("only two of three owners can hold it");
    assert!(error.is(ErrorCode::Unavailable), "{error}");
    for origin in ring {
        origin.stop().await;
    }
}

#[tokio::test]
async fn a_replica_from_a_peer_is_stored_but_not_passed_on() {
    let ring = TestOrigin::start_ring(3, 3, 3).await;
    let bytes = blob(5_000, 3);
    let digest = Digest::of(&bytes);
    ring[1]
        .api()
        .put_replica(&digest, None, bytes.into())
        .await
        .expect("replica");
    assert_eq!(holders(&ring[1..2], &digest), 1);
    // Had the replica been forwarded with W = 3, the PUT would only have been acknowledged
    // once the others held it; they do not.
    assert_eq!(holders(&ring, &digest), 1);
    for origin in ring {
        origin.stop().await;
    }
}

#[tokio::test]
async fn an_owner_lacking_a_blob_fills_in_from_a_peer() {
    let ring = TestOrigin::start_ring(3, 3, 2).await;
    let bytes = blob(1_000_000, 4);
    let digest = Digest::of(&bytes);
    // Only origin 0 holds it (as if the others had joined after it was written); no backend has it.
    ring[0]
        .api()
        .put_replica(&digest, None, bytes.clone().into())
        .await
        .expect("replica");
    assert_eq!(
        ring[2]
            .api()
            .get_replica(&digest, None)
            .await
            .expect("get")
            .map(|_| ()),
        None,
        "a store-only read must not fill in"
    );

    let response = ring[1]
        .api()
        .get_blob(&digest, None, None)
        .await
        .expect("filled in from origin 0");
    assert_eq!(response.bytes().await.expect("body"), bytes);
    assert_eq!(std::fs::read(ring[1].store_blob(&digest)).unwrap(), bytes);
    assert!(!ring[2].store_blob(&digest).exists());
    for origin in ring {
        origin.stop().await;
    }
}
