//! The listener limits on a real `shoal-proxy` with its default limits: 2,000 idle connections
//! and 500 slowloris ones (one header line every 5 s, as in the security review) are closed
//! within the header-read timeout, while a push and a pull through the same listener succeed.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use futures::future::join_all;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use shoal_client::RegistryClient;
use shoal_service::http::ListenerLimits;
use shoal_tests::images::{generate, image_spec, layout_blobs};
use shoal_tests::{Cluster, ClusterOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const IDLE: usize = 2000;
const SLOWLORIS: usize = 500;
/// The slowloris clients' pace.
const HEADER_LINE_EVERY: Duration = Duration::from_secs(5);
/// Beyond the timeout, for a debug build on a loaded 2-core machine to get round to closing.
const MARGIN: Duration = Duration::from_secs(15);
const MIB: u64 = 1 << 20;

/// Raises this process's soft file descriptor limit (inherited by the proxy it starts) so
/// that it can hold `needed` connections on top of its usual files.
fn raise_fd_limit(needed: u64) -> Result<()> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let wanted = (needed + 1024).max(soft);
    ensure!(
        wanted <= hard,
        "the test needs {wanted} file descriptors; the hard limit is {hard}"
    );
    setrlimit(Resource::RLIMIT_NOFILE, wanted, hard)?;
    Ok(())
}

/// Reads until the server closes `stream` (or resets it); how long after `since` that was, or
/// `None` if it was still open at `deadline`.
async fn closed_by(stream: &mut TcpStream, since: Instant, deadline: Instant) -> Option<Duration> {
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Opens a connection, sends a request line and then one header line every
/// [`HEADER_LINE_EVERY`], never ending the headers; how long the server kept it open, or `None`
/// if it was still open at `deadline`.
async fn slowloris(addr: std::net::SocketAddr, deadline: Instant) -> Result<Option<Duration>> {
    let mut stream = TcpStream::connect(addr).await?;
    let opened = Instant::now();
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: shoal\r\n")
        .await?;
    let mut line = 0;
    loop {
        line += 1;
        let next = (Instant::now() + HEADER_LINE_EVERY).min(deadline);
        if let Some(open) = closed_by(&mut stream, opened, next).await {
            return Ok(Some(open));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        let header = format!("X-Slow-{line}: {}\r\n", "a".repeat(32));
        if stream.write_all(header.as_bytes()).await.is_err() {
            return Ok(Some(opened.elapsed()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_connections_are_closed_while_push_and_pull_succeed() -> Result<()> {
    raise_fd_limit((IDLE + SLOWLORIS) as u64)?;
    let limits = ListenerLimits::default();
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let proxy = cluster.proxy_addr();
    let deadline = Instant::now() + limits.header_read_timeout + MARGIN;

    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let stream = TcpStream::connect(proxy)
            .await
            .with_context(|| format!("opening idle connection {i}"))?;
        idle.push((stream, Instant::now()));
    }
    let slow = tokio::spawn(join_all(
        (0..SLOWLORIS).map(move |_| slowloris(proxy, deadline)),
    ));

    // Meanwhile a client pushes and pulls an image through the same listener.
    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("image"),
        image_spec(vec![3 * MIB, 1000], 0x11_5e, "v1"),
    )
    .await?;
    let client = RegistryClient::new(&cluster.proxy_url())?;
    let pushed = client
        .push_image(&image, "limits/app", "v1", |_| {})
        .await
        .context("pushing while the idle and slowloris connections are open")?;
    ensure!(pushed == image.manifest_digest);
    let dest = work.path().join("pulled");
    let pulled = client
        .pull_image("limits/app", "v1", &dest, |_| {})
        .await
        .context("pulling while the idle and slowloris connections are open")?;
    ensure!(pulled.manifest_digest == image.manifest_digest);
    ensure!(layout_blobs(&dest)? == layout_blobs(&image.dir)?);

    let idle_closed = join_all(
        idle.iter_mut()
            .map(|(stream, opened)| closed_by(stream, *opened, deadline)),
    )
    .await;
    let still_idle = idle_closed.iter().filter(|closed| closed.is_none()).count();
    ensure!(
        still_idle == 0,
        "{still_idle} of {IDLE} idle connections still open {:?} after they were opened \
         (header-read timeout {:?})",
        limits.header_read_timeout + MARGIN,
        limits.header_read_timeout,
    );
    let slow_closed = slow.await?.into_iter().collect::<Result<Vec<_>>>()?;
    let still_slow = slow_closed.iter().filter(|closed| closed.is_none()).count();
    ensure!(
        still_slow == 0,
        "{still_slow} of {SLOWLORIS} slowloris connections still open after {:?}",
        limits.header_read_timeout + MARGIN,
    );
    let longest = idle_closed
        .iter()
        .chain(&slow_closed)
        .flatten()
        .max()
        .context("no connection closed")?;
    eprintln!("the longest-lived idle or slowloris connection was closed after {longest:?}");

    // The proxy is still serving.
    let response = shoal_tests::v2::http()
        .get(format!("{}/health", cluster.proxy_url()))
        .send()
        .await?;
    ensure!(response.status() == 200, "health: {}", response.status());
    Ok(())
}
