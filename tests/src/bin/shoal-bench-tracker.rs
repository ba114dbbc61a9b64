//! `shoal-bench-tracker`: a real `shoal-tracker` under the announces of a fleet. `--agents`
//! agents each hold a place in every one of `--blobs` swarms (a flash crowd pulling one image of
//! that many layers); the bench first records them all, then offers `--rate` announces a second
//! (agent and blob in turn, as the fleet's announce interval spreads them) for `--seconds`, and
//! reports announce latency (p50, p99), the rate achieved, the tracker's CPU time and peak RSS,
//! and the machine's CPU busy share. Stores: memory, Redis, and two trackers sharing one Redis
//! (the load split between them). Uses the binaries next to this one and `redis-server`.
//!
//!     cargo build --release --bins
//!     target/release/shoal-bench-tracker --agents 15000 --blobs 50 --rate 5000 --seconds 30

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, ValueEnum};
use serde_json::json;
use shoal_core::Digest;
use shoal_proto::v1::tracker_client::TrackerClient;
use shoal_proto::v1::{AnnounceRequest, PeerInfo, Progress};
use shoal_tests::ports::free_loopback_addr;
use shoal_tests::process::{Process, ProcessSpec, wait_until_ready};
use shoal_tests::swarm_bench::cpu_times;
use tokio::sync::Semaphore;
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Store {
    Memory,
    Redis,
    /// Two trackers sharing one Redis, each taking half the announces.
    Redis2,
}

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 15_000)]
    agents: u32,
    #[arg(long, default_value_t = 50)]
    blobs: u32,
    /// Announces offered per second in the measured phase (15,000 agents every 3 s: 5,000).
    #[arg(long, default_value_t = 5_000)]
    rate: u32,
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Announces in flight at most (beyond, the offered rate is not met and the report says so).
    #[arg(long, default_value_t = 1_000)]
    in_flight: usize,
    /// HTTP/2 connections per tracker.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Pieces per blob in the progress each announce carries (the swarm view's input).
    #[arg(long, default_value_t = 64)]
    pieces: u32,
    #[arg(long, value_enum, default_values_t = [Store::Memory, Store::Redis, Store::Redis2])]
    store: Vec<Store>,
}

/// The announce of `agent` for `blob`; a tenth of the agents are complete seeders.
fn announce(args: &Args, digests: &[Digest], agent: u32, blob: u32) -> AnnounceRequest {
    let complete = agent.is_multiple_of(10);
    let bytes = args.pieces.div_ceil(8) as usize;
    AnnounceRequest {
        digest: digests[blob as usize].to_string(),
        namespace: "bench/app".to_owned(),
        peer: Some(PeerInfo {
            peer_id: format!("agent-{agent}"),
            addr: format!(
                "10.{}.{}.{}:16001",
                agent >> 16,
                (agent >> 8) & 255,
                agent & 255
            ),
            origin: false,
            complete,
        }),
        progress: Some(Progress {
            piece_count: args.pieces,
            have: if complete {
                Vec::new()
            } else {
                vec![0x5a; bytes]
            },
            in_flight: vec![1, 2],
            bytes_from_origins: 1 << 20,
            bytes_from_peers: 3 << 20,
        }),
    }
}

struct Tracker {
    process: Process,
    addr: SocketAddr,
}

fn start_tracker(dir: &Path, name: &str, store: serde_json::Value, args: &Args) -> Result<Tracker> {
    let addr = free_loopback_addr()?;
    // The origin is never asked (announces need only its address); limits sized for the
    // fleet, all of which announces from this one address.
    let config = json!({
        "listen": addr.to_string(),
        "origins": [{"http": "127.0.0.1:9", "peer": "127.0.0.1:10"}],
        "store": store,
        "limits": {
            "announce_per_peer": {"rate": 1000, "burst": 5000},
            "announce_per_address": {"rate": 1_000_000, "burst": 1_000_000},
            "peers_per_digest": args.agents as usize + 10,
            "records": (args.agents as usize + 10) * args.blobs as usize,
        },
    });
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, serde_yaml_ng::to_string(&config)?)?;
    let process = Process::spawn(ProcessSpec {
        name: name.to_owned(),
        program: shoal_tests::binaries::path("shoal-tracker"),
        args: vec!["--config".to_owned(), path.display().to_string()],
        env: vec![("RUST_LOG".to_owned(), "warn".to_owned())],
        log: dir.join(format!("{name}.log")),
    })?;
    Ok(Tracker { process, addr })
}

fn start_redis(dir: &Path) -> Result<(Process, SocketAddr)> {
    let addr = free_loopback_addr()?;
    let process = Process::spawn(shoal_tests::redis::spec(dir, addr))?;
    Ok((process, addr))
}

/// user + system CPU seconds and peak RSS (MiB) of `pid`.
fn usage(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').context("stat")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are 11 and 12 after the name and state.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("VmHWM")?
        .trim()
        .trim_end_matches(" kB")
        .parse::<f64>()?;
    Ok((ticks / 100.0, hwm / 1024.0))
}

/// Latency above which an announce counts as slow: the p99 target.
const SLOW: Duration = Duration::from_millis(20);

struct Phase {
    sent: u64,
    failed: u64,
    latencies_us: Vec<u32>,
    /// Seconds since the phase began in which an announce sent was slower than [`SLOW`]:
    /// few seconds holding every slow announce means stalls, many means steady queueing.
    slow_seconds: BTreeMap<u64, u32>,
    elapsed: Duration,
}

/// Sends announces `(agent, blob)` for `indices` through `clients` in turn, `rate` a second
/// (0: as fast as `in_flight` allows).
async fn drive(
    args: &Args,
    digests: &[Digest],
    clients: &[TrackerClient<Channel>],
    indices: std::ops::Range<u64>,
    rate: u32,
) -> Result<Phase> {
    let gate = Arc::new(Semaphore::new(args.in_flight));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let total_pairs = u64::from(args.agents) * u64::from(args.blobs);
    for (n, index) in indices.clone().enumerate() {
        if rate > 0 {
            let due = started + Duration::from_secs_f64(n as f64 / f64::from(rate));
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = Arc::clone(&gate).acquire_owned().await?;
        let pair = index % total_pairs;
        let (agent, blob) = (
            (pair / u64::from(args.blobs)) as u32,
            (pair % u64::from(args.blobs)) as u32,
        );
        let request = announce(args, digests, agent, blob);
        let mut client = clients[n % clients.len()].clone();
        let tx = tx.clone();
        tasks.spawn(async move {
            let sent = Instant::now();
            let ok = client.announce(request).await.is_ok();
            let _ = tx.send((ok, sent.duration_since(started), sent.elapsed()));
            drop(permit);
        });
        // Reap finished tasks as we go so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    drop(tx);
    let elapsed = started.elapsed();
    let mut phase = Phase {
        sent: 0,
        failed: 0,
        latencies_us: Vec::new(),
        slow_seconds: Default::default(),
        elapsed,
    };
    while let Some((ok, at, latency)) = rx.recv().await {
        phase.sent += 1;
        if latency > SLOW {
            *phase.slow_seconds.entry(at.as_secs()).or_default() += 1;
        }
        if ok {
            phase
                .latencies_us
                .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        } else {
            phase.failed += 1;
        }
    }
    phase.latencies_us.sort_unstable();
    Ok(phase)
}

fn quantile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

async fn run(args: &Args, store: Store) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let mut redis = None;
    let store_config = match store {
        Store::Memory => json!("memory"),
        Store::Redis | Store::Redis2 => {
            let (process, addr) = start_redis(dir.path())?;
            redis = Some(process);
            json!({"redis": {"url": format!("redis://{addr}")}})
        }
    };
    let count = if store == Store::Redis2 { 2 } else { 1 };
    let mut trackers = Vec::new();
    for i in 0..count {
        let mut tracker = start_tracker(
            dir.path(),
            &format!("tracker-{i}"),
            store_config.clone(),
            args,
        )?;
        let health = format!("http://{}/health", tracker.addr);
        wait_until_ready(&mut tracker.process, &health, Duration::from_secs(20)).await?;
        trackers.push(tracker);
    }
    let mut clients = Vec::new();
    for _ in 0..args.connections {
        for tracker in &trackers {
            let channel = Channel::from_shared(format!("http://{}", tracker.addr))?
                .connect()
                .await?;
            clients.push(TrackerClient::new(channel));
        }
    }
    let digests: Vec<Digest> = (0..args.blobs)
        .map(|i| Digest::of(format!("bench-layer-{i}").as_bytes()))
        .collect();

    // Fill: every agent in every swarm once, as fast as the tracker takes it.
    let pairs = u64::from(args.agents) * u64::from(args.blobs);
    let fill = drive(args, &digests, &clients, 0..pairs, 0).await?;
    ensure!(
        fill.failed == 0,
        "{} of {} fill announces failed",
        fill.failed,
        fill.sent
    );

    let pids: Vec<u32> = trackers
        .iter()
        .map(|t| t.process.pid().context("tracker running"))
        .collect::<Result<_>>()?;
    let cpu_before: f64 = pids
        .iter()
        .map(|&p| usage(p).map(|u| u.0))
        .sum::<Result<f64>>()?;
    let redis_before = match &redis {
        Some(r) => usage(r.pid().context("redis running")?)?.0,
        None => 0.0,
    };
    let machine_before = cpu_times()?;
    let measured = u64::from(args.rate) * args.seconds;
    let phase = drive(args, &digests, &clients, pairs..pairs + measured, args.rate).await?;
    let busy = cpu_times()?.busy_since(machine_before);
    let mut cpu = 0.0;
    let mut rss: f64 = 0.0;
    for &pid in &pids {
        let (c, r) = usage(pid)?;
        cpu += c;
        rss = rss.max(r);
    }
    let cpu = cpu - cpu_before;
    let redis_cpu = match &redis {
        Some(r) => usage(r.pid().context("redis running")?)?.0 - redis_before,
        None => 0.0,
    };
    let secs = phase.elapsed.as_secs_f64();
    let achieved = (phase.sent - phase.failed) as f64 / secs;
    for tracker in &mut trackers {
        tracker.process.kill()?;
    }
    if let Some(mut redis) = redis {
        redis.kill()?;
    }
    if phase.failed > 0 {
        bail!(
            "{} of {} measured announces failed",
            phase.failed,
            phase.sent
        );
    }
    let name = match store {
        Store::Memory => "memory",
        Store::Redis => "redis",
        Store::Redis2 => "2 trackers, one redis",
    };
    eprintln!(
        "{store:?}: announces over {} ms by second of the measured phase: {:?}",
        SLOW.as_millis(),
        phase.slow_seconds
    );
    let slow = phase
        .latencies_us
        .partition_point(|&us| u128::from(us) <= SLOW.as_micros());
    let slow = phase.latencies_us.len() - slow;
    Ok(format!(
        "| {name} | {} | {:.0}/s ({:.2}× offered) | {:.0} s fill | {:.2} ms | {:.2} ms | {} ({:.2} %) in {} of {} s | {:.1} s ({:.0} µs/announce) | {:.1} s | {:.0} MiB | {:.0} % |",
        u64::from(args.agents) * u64::from(args.blobs),
        achieved,
        achieved / f64::from(args.rate),
        fill.elapsed.as_secs_f64(),
        quantile(&phase.latencies_us, 0.5),
        quantile(&phase.latencies_us, 0.99),
        slow,
        slow as f64 * 100.0 / phase.latencies_us.len().max(1) as f64,
        phase.slow_seconds.len(),
        secs.ceil(),
        cpu,
        cpu * 1e6 / phase.sent as f64,
        redis_cpu,
        rss,
        busy * 100.0,
    ))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    println!(
        "{} agents × {} blobs, {} announces/s offered for {} s, progress of {} pieces per announce\n",
        args.agents, args.blobs, args.rate, args.seconds, args.pieces
    );
    println!(
        "| store | records | announces achieved | fill | p50 | p99 | over {} ms, in how many seconds | tracker CPU | redis CPU | tracker peak RSS | machine CPU busy |",
        SLOW.as_millis()
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for store in args.store.clone() {
        println!("{}", run(&args, store).await?);
    }
    Ok(())
}
