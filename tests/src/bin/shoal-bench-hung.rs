//! `shoal-bench-hung`: how much seeders that hang mid-transfer slow a pull through an agent,
//! against the same pull with every seeder up, measured in one run. A hung node keeps its
//! sockets: here its process is stopped (SIGSTOP), so the kernel still acknowledges the bytes
//! of the sessions it holds, and requests already sent to it are never answered.
//!
//! Each repeat pushes two fresh one-layer images through the proxy. For each, agents 1..=N pull
//! it first, so they seed it (each uploading at most `--seeder-rate`, so that the pull that
//! follows takes a while), then agent 0 pulls it, timed. During the second pull, `--stop` of the
//! seeders are stopped once agent 0 has received `--stop-after-mib` MiB from peers, and continued
//! after it. Uses the component binaries next to this one; prints a Markdown table.
//!
//!     cargo build --release --bins
//!     target/release/shoal-bench-hung --seeders 5 --stop 4 --layer-mib 128 --repeats 3

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use serde_json::json;
use shoal_client::Image;
use shoal_tests::process::Stopped;
use shoal_tests::swarm::{paired_pulls, print_pair_table, pull_through_agent_and_check};
use shoal_tests::{Cluster, ClusterOptions, Component};

const MIB: u64 = 1 << 20;

/// Times a pull with and without seeders that hang during it.
#[derive(Debug, Parser)]
struct Args {
    /// Agents that pull each image first and seed it.
    #[arg(long, default_value_t = 5)]
    seeders: usize,
    /// Seeders stopped during the second pull of each repeat (at most `--seeders`).
    #[arg(long, default_value_t = 4)]
    stop: usize,
    /// Size of each image's one layer, in MiB.
    #[arg(long, default_value_t = 128)]
    layer_mib: u64,
    /// Each seeder's upload limit (`p2p.egress_rate`).
    #[arg(long, default_value = "16MiB")]
    seeder_rate: String,
    /// Agent 0's received bytes from peers, in MiB, at which the seeders are stopped.
    #[arg(long, default_value_t = 16)]
    stop_after_mib: u64,
    /// Pairs of pulls (at least one); the median ratio is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    repeats: u64,
}

/// Bytes agent 0 has received from peers of either kind.
async fn received(cluster: &Cluster) -> Result<f64> {
    cluster
        .metric_sum(Component::Agent(0), "p2p_bytes_received_total", &[])
        .await
}

/// Stops seeders 1..=`count` once agent 0 has received `after` more bytes than `before`.
async fn stop_seeders_after(
    cluster: &Cluster,
    count: usize,
    before: f64,
    after: f64,
) -> Result<Stopped> {
    while received(cluster).await? < before + after {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.hang((1..=count).map(Component::Agent))
}

#[tokio::main]
async fn main() -> Result<()> {
    shoal_service::tls::install_crypto_provider();
    let args = Args::parse();
    anyhow::ensure!(args.stop <= args.seeders, "--stop exceeds --seeders");
    let limited = json!({"p2p": {"egress_rate": args.seeder_rate}});
    let cluster = Cluster::start(ClusterOptions {
        rust_log: "warn".to_owned(),
        agent_overrides_by_index: (1..=args.seeders).map(|i| (i, limited.clone())).collect(),
        ..ClusterOptions::with_agents(args.seeders + 1)
    })
    .await?;
    let work = tempfile::tempdir()?;
    let rows = paired_pulls(
        &cluster,
        work.path(),
        args.repeats,
        args.layer_mib * MIB,
        0x8a3_0000,
        ["clean", "stopped"],
        async |image, repo, stopping, dest| {
            seed_image(&cluster, &args, image, repo, work.path()).await?;
            let stale_before = stale_requests(&cluster).await?;
            let before = received(&cluster).await?;
            let started = Instant::now();
            let pull = pull_through_agent_and_check(&cluster, 0, image, repo, "v1", dest);
            let time = if stopping {
                let after = (args.stop_after_mib * MIB) as f64;
                let stopper = stop_seeders_after(&cluster, args.stop, before, after);
                let (pulled, stopped) = tokio::join!(pull, stopper);
                let stopped = stopped?;
                pulled?;
                let time = started.elapsed();
                drop(stopped);
                time
            } else {
                pull.await?;
                started.elapsed()
            };
            let stale = stale_requests(&cluster).await? - stale_before;
            eprintln!("{repo}: pull in {:.2} s", time.as_secs_f64());
            Ok((time, stale))
        },
    )
    .await?;
    println!(
        "{} MiB layer, {} seeders at {} each, {} stopped after {} MiB, {} repeats, {} cores.\n",
        args.layer_mib,
        args.seeders,
        args.seeder_rate,
        args.stop,
        args.stop_after_mib,
        args.repeats,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let rows: Vec<_> = rows
        .into_iter()
        .map(|[(clean, stale_clean), (stopped, stale_stopped)]| {
            (
                [clean, stopped],
                vec![format!("{stale_clean} / {stale_stopped}")],
            )
        })
        .collect();
    print_pair_table(
        ["every seeder up", &format!("{} seeders stopped", args.stop)],
        &["requests gone stale (clean / stopped)"],
        &rows,
    );
    Ok(())
}

/// Agents 1..=N pull `image`, so each holds it whole and seeds it.
async fn seed_image(
    cluster: &Cluster,
    args: &Args,
    image: &Image,
    repo: &str,
    work: &std::path::Path,
) -> Result<()> {
    let pulls = (1..=args.seeders).map(|i| {
        let dest = work.join(format!("seeded-{repo}-{i}").replace('/', "-"));
        async move { pull_through_agent_and_check(cluster, i, image, repo, "v1", &dest).await }
    });
    futures::future::try_join_all(pulls).await?;
    Ok(())
}

/// Requests agent 0 counted stale so far (0 from binaries older than the count).
async fn stale_requests(cluster: &Cluster) -> Result<f64> {
    cluster
        .metric_sum(Component::Agent(0), "p2p_requests_stale_total", &[])
        .await
}
