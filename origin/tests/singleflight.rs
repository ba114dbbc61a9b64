//! Concurrent requests for one blob that only the backend has share a single backend fetch.

mod common;

use common::{TestOrigin, blob};
use reqwest::StatusCode;
use shoal_core::Digest;

#[tokio::test]
async fn concurrent_gets_of_a_backend_only_blob_share_one_fetch() {
    let origin = TestOrigin::start().await;
    let data = blob(8 << 20, 11);
    let digest = Digest::of(&data);
    origin.put_in_backend(&digest, &data);
    let blob_url = origin.url(&format!("/blobs/{digest}"));
    let metainfo_url = origin.url(&format!("/blobs/{digest}/metainfo"));

    // Plain GETs, ranged GETs and metainfo requests all miss at once.
    let requests = (0..9).map(|i| {
        let request = match i % 3 {
            0 => origin.http.get(&blob_url),
            1 => origin.http.get(&blob_url).header("range", "bytes=100-199"),
            _ => origin.http.get(&metainfo_url),
        };
        async move {
            let response = request.send().await.expect("send");
            let status = response.status();
            (i, status, response.bytes().await.expect("body"))
        }
    });
    for (i, status, body) in futures::future::join_all(requests).await {
        match i % 3 {
            0 => {
                assert_eq!(status, StatusCode::OK, "request {i}");
                assert!(body == data, "request {i}: wrong bytes");
            }
            1 => {
                assert_eq!(status, StatusCode::PARTIAL_CONTENT, "request {i}");
                assert_eq!(body, data[100..200], "request {i}");
            }
            _ => assert_eq!(status, StatusCode::OK, "request {i}"),
        }
    }
    assert_eq!(
        origin.metric("shoal_origin_pullthrough_total").await,
        Some(1.0),
        "one backend fetch for nine concurrent misses"
    );
    origin.stop().await;
}
