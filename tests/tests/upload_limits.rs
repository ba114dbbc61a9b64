//! Upload sessions under misuse, against a real cluster through the proxy: 20,000 session
//! starts from one address are refused with 429 beyond the origin's per-client bound while
//! another client pushes and pulls, and the origin's descriptors stay bounded; a session
//! answers only through its own repository; a failed commit closes its session; a PATCH whose
//! `Content-Range` does not start at the session's offset or does not match its body is 416 and
//! changes nothing.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, RANGE};
use reqwest::{StatusCode, Url};
use shoal_client::RegistryClient;
use shoal_core::Digest;
use shoal_tests::images::{generate, image_spec, layout_blobs};
use shoal_tests::v2::{Registry, expect_error, header, status_and_code};
use shoal_tests::{Cluster, ClusterOptions, Component};

const FLOOD: usize = 20_000;
/// Connections the flood keeps busy at once.
const FLOOD_CONNECTIONS: usize = 256;
/// The origin's default `uploads.max_sessions_per_client`.
const PER_CLIENT: usize = 128;
const MIB: u64 = 1 << 20;

/// Descriptors `pid` holds: all of them, and those on files under `dir`.
fn open_fds(pid: u32, dir: &std::path::Path) -> Result<(usize, usize)> {
    let dir = dir.canonicalize()?;
    let mut total = 0;
    let mut under = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        total += 1;
        if let Ok(target) = std::fs::read_link(entry?.path())
            && target.starts_with(&dir)
        {
            under += 1;
        }
    }
    Ok((total, under))
}

/// Starts `FLOOD` sessions from `source`, `FLOOD_CONNECTIONS` at a time; (accepted, refused).
async fn flood(registry: &Registry, source: IpAddr) -> Result<(usize, usize)> {
    let http = reqwest::Client::builder()
        .local_address(source)
        .pool_max_idle_per_host(FLOOD_CONNECTIONS)
        .build()?;
    let url = registry.url("v2/flood/app/blobs/uploads/");
    let (accepted, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut requests = futures::stream::iter(0..FLOOD)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            let (accepted, refused) = (accepted.clone(), refused.clone());
            async move {
                let response = http.post(url).header(CONTENT_LENGTH, 0).send().await?;
                match status_and_code(response).await {
                    (StatusCode::ACCEPTED, _) => accepted.fetch_add(1, Ordering::Relaxed),
                    (StatusCode::TOO_MANY_REQUESTS, Some(code)) if code == "TOOMANYREQUESTS" => {
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                    other => anyhow::bail!("a flood POST answered {other:?}"),
                };
                anyhow::Ok(())
            }
        })
        .buffer_unordered(FLOOD_CONNECTIONS);
    while let Some(result) = requests.next().await {
        result?;
    }
    Ok((
        accepted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_flood_from_one_address_leaves_pushes_and_pulls_working() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let registry = Registry::new(&cluster.proxy_url())?;
    let origin_pid = cluster.pid(Component::Origin).context("the origin runs")?;
    let uploads_dir = cluster.origin_data_dir().join("store").join("uploads");

    // The flood comes from 127.0.0.2; the honest client below from 127.0.0.1.
    let flooding = flood(&registry, "127.0.0.2".parse()?);
    let honest = async {
        let work = tempfile::tempdir()?;
        let image = generate(
            &work.path().join("image"),
            image_spec(vec![3 * MIB, 1000], 0x10_ad, "v1"),
        )
        .await?;
        let client = RegistryClient::new(&cluster.proxy_url())?;
        let pushed = client
            .push_image(&image, "honest/app", "v1", |_| {})
            .await
            .context("pushing during the flood")?;
        ensure!(pushed == image.manifest_digest);
        let dest = work.path().join("pulled");
        let pulled = client
            .pull_image("honest/app", "v1", &dest, |_| {})
            .await
            .context("pulling during the flood")?;
        ensure!(pulled.manifest_digest == image.manifest_digest);
        ensure!(layout_blobs(&dest)? == layout_blobs(&image.dir)?);
        anyhow::Ok(())
    };
    let (flooded, honest) = tokio::join!(flooding, honest);
    honest?;
    let (accepted, refused) = flooded?;
    ensure!(
        accepted == PER_CLIENT && refused == FLOOD - PER_CLIENT,
        "{accepted} sessions accepted and {refused} refused; expected {PER_CLIENT} and the rest"
    );

    // The flood's sessions are open, but hold no descriptor: the origin's count is a few dozen
    // files and sockets plus the proxy's pooled connections, nowhere near one per session.
    let (total, on_uploads) = open_fds(origin_pid, &uploads_dir)?;
    ensure!(
        on_uploads == 0,
        "{on_uploads} descriptors on staged uploads"
    );
    ensure!(
        total < 1000,
        "the origin holds {total} descriptors after the flood"
    );
    let sessions = cluster
        .metric(Component::Origin, "shoal_origin_upload_sessions")
        .await?;
    ensure!(
        sessions == Some(PER_CLIENT as f64),
        "open sessions: {sessions:?}"
    );
    let refused_metric = cluster
        .metric_sum(
            Component::Origin,
            "shoal_origin_upload_sessions_refused_total",
            &[("scope", "client")],
        )
        .await?;
    ensure!(
        refused_metric == (FLOOD - PER_CLIENT) as f64,
        "refusals counted: {refused_metric:?}"
    );
    // And the origin still answers.
    let health = reqwest::get(format!("http://{}/health", cluster.origin_addr())).await?;
    ensure!(health.status() == StatusCode::OK);
    Ok(())
}

/// The session's URL under another repository's path.
fn through(url: &Url, repo: &str) -> Url {
    let id = url.path().rsplit('/').next().unwrap_or_default();
    let mut other = url.clone();
    other.set_path(&format!("/v2/{repo}/blobs/uploads/{id}"));
    other
}

/// The `Range` a session's status reports.
async fn held(registry: &Registry, url: &Url) -> Result<String> {
    let response = registry.http.get(url.clone()).send().await?;
    ensure!(
        response.status() == StatusCode::NO_CONTENT,
        "upload status: {}",
        response.status()
    );
    Ok(header(&response, RANGE.as_str()).to_owned())
}

async fn patch(
    registry: &Registry,
    url: &Url,
    range: Option<&str>,
    body: &'static [u8],
) -> Result<reqwest::Response> {
    let mut request = registry.http.patch(url.clone()).body(body);
    if let Some(range) = range {
        request = request.header(CONTENT_RANGE, range);
    }
    Ok(request.send().await?)
}

#[tokio::test]
async fn sessions_are_bound_to_their_repository_and_failed_commits_close_them() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let registry = Registry::new(&cluster.proxy_url())?;

    let url = registry.start_upload("mine/app").await?;
    let url = registry.location(&patch(&registry, &url, Some("0-2"), b"abc").await?)?;
    let foreign = through(&url, "theirs/app");
    let digest = Digest::of(b"abcdef");
    let mut commit = foreign.clone();
    commit
        .query_pairs_mut()
        .append_pair("digest", &digest.to_string());
    let attempts = [
        registry.http.patch(foreign.clone()).body("def"),
        registry.http.get(foreign.clone()),
        registry.http.put(commit).body("def"),
        registry.http.delete(foreign.clone()),
    ];
    for attempt in attempts {
        expect_error(attempt.send().await?, 404, "BLOB_UPLOAD_UNKNOWN").await?;
    }
    // Nothing changed: the session holds its 3 bytes and commits through its own repository.
    ensure!(held(&registry, &url).await? == "0-2");
    let mut commit = url.clone();
    commit
        .query_pairs_mut()
        .append_pair("digest", &digest.to_string());
    let committed = registry.http.put(commit).body("def").send().await?;
    ensure!(
        committed.status() == StatusCode::CREATED,
        "commit: {}",
        committed.status()
    );
    let blob = registry
        .http
        .head(registry.url(&format!("v2/mine/app/blobs/{digest}")))
        .send()
        .await?;
    ensure!(blob.status() == StatusCode::OK);

    // A commit with an unusable digest answers 400 and closes its session.
    let sha384 = format!("sha384:{}", "ab".repeat(48));
    for digest in ["garbage", "sha256:nothex", sha384.as_str()] {
        let url = registry.start_upload("mine/app").await?;
        let url = registry.location(&patch(&registry, &url, None, b"bytes").await?)?;
        let mut commit = url.clone();
        commit.query_pairs_mut().append_pair("digest", digest);
        let response = registry.http.put(commit).send().await?;
        expect_error(response, 400, "DIGEST_INVALID").await?;
        let status = registry.http.get(url.clone()).send().await?;
        expect_error(status, 404, "BLOB_UPLOAD_UNKNOWN")
            .await
            .with_context(|| format!("the session after a commit with {digest:?}"))?;
    }
    // So does one whose bytes do not match.
    let url = registry.start_upload("mine/app").await?;
    let mut commit = url.clone();
    commit
        .query_pairs_mut()
        .append_pair("digest", &Digest::of(b"other").to_string());
    expect_error(
        registry.http.put(commit).body("bytes").send().await?,
        400,
        "DIGEST_INVALID",
    )
    .await?;
    expect_error(
        registry.http.get(url).send().await?,
        404,
        "BLOB_UPLOAD_UNKNOWN",
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn chunks_whose_content_range_does_not_fit_are_416_and_change_nothing() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let registry = Registry::new(&cluster.proxy_url())?;
    let url = registry.start_upload("ranges/app").await?;
    let url = registry.location(&patch(&registry, &url, Some("0-9"), b"0123456789").await?)?;
    ensure!(held(&registry, &url).await? == "0-9");

    // A chunked (no Content-Length) 3-byte body claiming 10 bytes.
    let streamed = |bytes: &'static [u8]| {
        reqwest::Body::wrap_stream(futures::stream::iter([Ok::<_, std::io::Error>(
            bytes::Bytes::from_static(bytes),
        )]))
    };
    let short = registry
        .http
        .patch(url.clone())
        .header(CONTENT_RANGE, "10-19")
        .body(streamed(b"abc"))
        .send()
        .await?;
    expect_error(short, 416, "RANGE_INVALID").await?;
    // A chunk that does not start at the session's offset, with and without a length.
    expect_error(
        patch(&registry, &url, Some("13-15"), b"abc").await?,
        416,
        "RANGE_INVALID",
    )
    .await?;
    let out_of_order = registry
        .http
        .patch(url.clone())
        .header(CONTENT_RANGE, "5-7")
        .body(streamed(b"abc"))
        .send()
        .await?;
    expect_error(out_of_order, 416, "RANGE_INVALID").await?;
    // A Content-Length that contradicts the range.
    let contradicting = registry
        .http
        .patch(url.clone())
        .header(CONTENT_RANGE, "10-14")
        .body("abc")
        .send()
        .await?;
    expect_error(contradicting, 416, "RANGE_INVALID").await?;

    ensure!(
        held(&registry, &url).await? == "0-9",
        "a refused chunk changed the session"
    );
    let url = registry.location(&patch(&registry, &url, Some("10-12"), b"abc").await?)?;
    let digest = Digest::of(b"0123456789abc");
    let mut commit = url.clone();
    commit
        .query_pairs_mut()
        .append_pair("digest", &digest.to_string());
    let committed = registry
        .http
        .put(commit)
        .header(CONTENT_LENGTH, 0)
        .send()
        .await?;
    ensure!(
        committed.status() == StatusCode::CREATED,
        "commit after the refused chunks: {}",
        committed.status()
    );
    Ok(())
}
