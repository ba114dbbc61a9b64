//! The listener limits on a real `shoal-proxy` with its default limits: 2,000 idle connections
//! and 500 slowloris ones (one header line every 5 s, as in the security review) are closed
//! within the header-read timeout, while a push and a pull through the same listener succeed;
//! and a proxy out of file descriptors neither spins on accept errors nor floods its log, and
//! serves again once connections close.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures::future::join_all;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use serde_json::{Value, json};
use shoal_client::RegistryClient;
use shoal_service::http::ListenerLimits;
use shoal_tests::images::{generate, image_spec, layout_blobs};
use shoal_tests::ports::free_loopback_addr;
use shoal_tests::process::{Process, ProcessSpec, wait_until_ready};
use shoal_tests::{Cluster, ClusterOptions, Component, binaries, configs};
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

/// CPU time (user + system) `pid` has used, in clock ticks: 1/100 s on Linux (`USER_HZ`).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces; the fields after it are plain numbers.
    let after_name = &stat[stat.rfind(')').context("no command name in stat")? + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

/// Starts another proxy of `cluster` under `prlimit --nofile=<nofile>` (prlimit sets the limit
/// and then execs the proxy, keeping its PID); returns it with its address and log path.
async fn spawn_proxy_with_nofile(
    cluster: &Cluster,
    nofile: &str,
) -> Result<(Process, std::net::SocketAddr, std::path::PathBuf)> {
    let listen = free_loopback_addr()?;
    let mut config: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(
        cluster.config_path(Component::Proxy),
    )?)?;
    configs::merge(
        &mut config,
        json!({
            "listen": listen.to_string(),
            "preheat": {"state_dir": cluster.dir().join("limited-jobs").display().to_string()},
        }),
    );
    let config_path = cluster.dir().join("limited-proxy.yaml");
    std::fs::write(&config_path, configs::to_yaml(&config)?)?;
    let log = cluster.dir().join("limited-proxy.log");
    let mut proxy = Process::spawn(ProcessSpec {
        name: "limited-proxy".to_owned(),
        program: "prlimit".into(),
        args: vec![
            format!("--nofile={nofile}"),
            binaries::path("shoal-proxy").display().to_string(),
            "--config".to_owned(),
            config_path.display().to_string(),
        ],
        env: vec![("RUST_LOG".to_owned(), "info".to_owned())],
        log: log.clone(),
    })?;
    let health = format!("http://{listen}/health");
    wait_until_ready(&mut proxy, &health, Duration::from_secs(30)).await?;
    Ok((proxy, listen, log))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_raises_its_soft_open_file_limit_to_the_hard_one() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let (proxy, _, _) = spawn_proxy_with_nofile(&cluster, "256:4096").await?;
    let pid = proxy.pid().context("the proxy exited")?;
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .context("no open-file limit in /proc/PID/limits")?;
    let values: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    ensure!(
        values == ["4096", "4096"],
        "the proxy's open-file limit is {line:?}, expected soft 4096 (its hard limit)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_out_of_file_descriptors_pauses_accepting_and_recovers() -> Result<()> {
    // Room to start and reach the origin, not for the connections opened below.
    const FD_LIMIT: usize = 128;
    // Enough to run out, few enough that the rest fit in the listen backlog (128 for listeners
    // bound through std) and connect at once.
    const CONNECTIONS: usize = FD_LIMIT + 64;
    const WATCH: Duration = Duration::from_secs(3);
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let (proxy, listen, log) =
        spawn_proxy_with_nofile(&cluster, &format!("{FD_LIMIT}:{FD_LIMIT}")).await?;
    let health = format!("http://{listen}/health");
    let pid = proxy.pid().context("the proxy exited")?;

    // The kernel completes these handshakes whether or not the proxy can accept them.
    let mut held = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        held.push(TcpStream::connect(listen).await?);
    }
    let warning = "accepting connections failed; pausing";
    let deadline = Instant::now() + MARGIN;
    while !std::fs::read_to_string(&log)?.contains(warning) {
        if Instant::now() > deadline {
            bail!(
                "the proxy never ran out of file descriptors\n{}",
                proxy.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = cpu_ticks(pid)?;
    tokio::time::sleep(WATCH).await;
    let used = cpu_ticks(pid)? - before;
    eprintln!("the proxy used {used} CPU ticks in {WATCH:?} out of file descriptors");
    // A loop retrying accept at once would use a core (300 ticks), or a good part of one on a
    // busy machine; pausing between attempts uses next to nothing.
    ensure!(
        used < 50,
        "the proxy used {used} ticks of CPU in {WATCH:?} while out of file descriptors"
    );
    let warnings = std::fs::read_to_string(&log)?.matches(warning).count();
    ensure!(
        warnings <= 2,
        "{warnings} accept warnings in {WATCH:?}; they should be rate-limited\n{}",
        proxy.log_tail()
    );

    // Closing the connections frees descriptors (the proxy sees them close, or times them
    // out), and it serves again.
    drop(held);
    let http = shoal_tests::v2::http();
    let deadline = Instant::now() + ListenerLimits::default().header_read_timeout + MARGIN;
    loop {
        if let Ok(response) = http.get(&health).send().await
            && response.status() == 200
        {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the proxy does not serve after the connections closed\n{}",
                proxy.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
