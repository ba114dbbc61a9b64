//! Several build-index nodes and several origins: tags written on one node are read on another
//! through the shared backend, and tag checks pass over an origin that is down.

// This binary uses only part of the shared harness.
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use shoal_core::{Digest, Name, Tag, rendezvous};
use support::{BuildIndex, FakeOrigin, push_image};

/// What the issue asks of a tag update: visible on every node within 5 s (the nodes read the
/// shared backend on every lookup, so it is in practice immediate).
const TAG_VISIBLE_WITHIN: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_tag_changed_on_one_node_is_read_on_another() {
    let backend = tempfile::tempdir().expect("tempdir");
    let origin = FakeOrigin::start().await;
    let origins = vec![origin.addr.to_string()];
    let first = BuildIndex::start(backend.path(), origins.clone()).await;
    let second = BuildIndex::start(backend.path(), origins).await;
    let (name, tag) = (
        Name::parse("team/app").unwrap(),
        Tag::parse("stable").unwrap(),
    );

    for seed in ["v1", "v2"] {
        let manifest = Digest::of(&push_image(&origin, seed));
        first
            .client
            .put_tag(&name, &tag, &manifest)
            .await
            .expect("tag");
        let deadline = Instant::now() + TAG_VISIBLE_WITHIN;
        loop {
            let seen = second.client.get_tag(&name, &tag).await.expect("get");
            if seen == Some(manifest) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node 2 still reads {seen:?} for the tag set to {manifest} ({seed}) on node 1"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn tag_checks_pass_over_an_origin_that_is_down() {
    let backend = tempfile::tempdir().expect("tempdir");
    let origin = FakeOrigin::start().await;
    // A port nothing listens on any more: connections are refused.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr")
        .to_string();
    let origins = vec![dead.clone(), origin.addr.to_string()];
    let index = BuildIndex::start(backend.path(), origins.clone()).await;
    let name = Name::parse("team/app").unwrap();

    // Images until the dead origin has ranked first for two of them (the ranking depends on the
    // port it got, so a fixed set of images could miss it; 64 tries fail with odds 2^-64).
    let mut dead_first = 0;
    for i in 0..64 {
        if dead_first >= 2 {
            break;
        }
        let seed = format!("s{i}");
        let seed = seed.as_str();
        let manifest = push_image(&origin, seed);
        let digest = Digest::of(&manifest);
        if *rendezvous::owners(&digest, &origins, 1)[0] == dead {
            dead_first += 1;
        }
        let tag = Tag::parse(seed).unwrap();
        index
            .client
            .put_tag(&name, &tag, &digest)
            .await
            .unwrap_or_else(|e| panic!("tag {seed} with one origin down: {e}"));
        assert_eq!(
            index.client.get_tag(&name, &tag).await.unwrap(),
            Some(digest)
        );
    }
    assert!(
        dead_first >= 2,
        "the dead origin ranked first for only {dead_first} of 64 manifests"
    );
    index.stop().await;
}
