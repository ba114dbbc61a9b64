//! Acceptance: with the origin's disk full, a blob that only the backend holds is refused with
//! 503 UNAVAILABLE before any body byte (at the origin and through the proxy, for whole and
//! ranged pulls), never a 200 cut short; once space is freed the same pull succeeds, verified.
//! The origin's data dir is a real small filesystem (a tmpfs with `size=`).

use anyhow::{Context, Result, ensure};
use reqwest::header::{CONTENT_LENGTH, RANGE};
use serde_json::json;
use shoal_core::Digest;
use shoal_tests::pattern::Pattern;
use shoal_tests::small_disk::SmallDisk;
use shoal_tests::v2::{http, status_and_code};
use shoal_tests::{Cluster, ClusterOptions};

/// Big enough to hold the origin's own files and the blob once the filler is gone.
const DISK: u64 = 16 * 1024 * 1024;
/// Larger than what is left free, and than one chunk of the backend's stream: only a check
/// made before the headers (the preallocation) catches it.
const BLOB: u64 = 4 * 1024 * 1024;
/// What the filler leaves: room for a first chunk, not for the blob.
const LEFT_FREE: u64 = 512 * 1024;

#[tokio::test]
async fn a_full_origin_disk_answers_503_before_any_byte_and_serves_once_freed() -> Result<()> {
    // Dropped after the cluster (declared first), so the origin is gone before the unmount.
    let disk = SmallDisk::tmpfs(DISK)?;
    let data_dir = disk.path().join("origin");
    std::fs::create_dir(&data_dir)?;
    let cluster = Cluster::start(ClusterOptions {
        origin_overrides: json!({"data_dir": data_dir.display().to_string()}),
        ..ClusterOptions::default()
    })
    .await?;

    // The blob is in the backend only, as after an origin's disk was replaced or evicted.
    let blob = Pattern::new(16, BLOB).range(0, BLOB);
    let digest = Digest::of(&blob);
    let key = cluster
        .backend_dir()
        .join("blobs/sha256")
        .join(digest.hex());
    std::fs::create_dir_all(key.parent().context("key dir")?)?;
    std::fs::write(&key, &blob)?;
    disk.fill_leaving(LEFT_FREE)?;

    let client = http();
    let origin = format!("http://{}/blobs/{digest}", cluster.origin_addr());
    let proxy = format!("{}/v2/team/app/blobs/{digest}", cluster.proxy_url());
    for (url, range) in [
        (&origin, None),
        (&proxy, None),
        (&origin, Some("bytes=0-99")),
        (&proxy, Some("bytes=100-")),
    ] {
        let mut request = client.get(url.as_str());
        if let Some(range) = range {
            request = request.header(RANGE, range);
        }
        let response = request.send().await?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("{url} {range:?}: {status}, then the body broke off"))?;
        ensure!(
            status == 503,
            "{url} {range:?} with a full disk: {status}, {} body bytes",
            text.len()
        );
        let body: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{url}: the 503's body is not JSON: {text:.200}"))?;
        let (code, message) = if url == &proxy {
            (&body["errors"][0]["code"], &body["errors"][0]["message"])
        } else {
            (&body["code"], &body["message"])
        };
        ensure!(code == "UNAVAILABLE", "{url} {range:?}: {body}");
        ensure!(
            message
                .as_str()
                .is_some_and(|m| m.contains("no disk space")),
            "{url} {range:?}: the error does not say the disk is full: {body}"
        );
    }
    let staged = std::fs::read_dir(data_dir.join("store/tmp"))
        .map(|dir| dir.count())
        .unwrap_or(0);
    ensure!(
        staged == 0,
        "{staged} staged files left behind on the full disk"
    );

    disk.free()?;
    let response = client.get(&proxy).send().await?;
    ensure!(
        response.status() == 200,
        "after freeing space: {}",
        response.status()
    );
    ensure!(
        response.headers()[CONTENT_LENGTH] == BLOB.to_string().as_str(),
        "Content-Length {:?}",
        response.headers()[CONTENT_LENGTH]
    );
    let served = response.bytes().await?;
    ensure!(
        served.len() as u64 == BLOB && Digest::of(&served) == digest,
        "the pull after freeing space served {} bytes that do not match",
        served.len()
    );
    // Stored this time: the origin serves it from its disk even with the backend copy gone.
    std::fs::remove_file(&key)?;
    let (status, code) = status_and_code(client.get(&origin).send().await?).await;
    ensure!(status == 200, "from the origin's store: {status} {code:?}");
    drop(cluster);
    drop(disk);
    Ok(())
}
