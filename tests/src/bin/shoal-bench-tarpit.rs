//! `shoal-bench-tarpit`: how much hung peers (they accept TCP and never answer) slow a pull
//! through an agent, against the same pull with none, measured in one run. Each repeat pushes two
//! fresh images of the same size through the proxy; agent 0 pulls the first with a clean swarm,
//! then the second with `--tarpits` hung peers announced (and re-announced) as complete seeders of
//! its every blob. Uses the component binaries next to this one; prints a Markdown table.
//!
//!     cargo build --release --bins
//!     target/release/shoal-bench-tarpit --tarpits 100 --layer-mib 64 --repeats 3

use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use shoal_tests::swarm::{paired_pulls, print_pair_table, pull_through_agent_and_check};
use shoal_tests::tarpit::Tarpits;
use shoal_tests::{Cluster, ClusterOptions};

const MIB: u64 = 1 << 20;

/// Times a pull with and without hung peers in the swarm.
#[derive(Debug, Parser)]
struct Args {
    /// Hung peers announced for every blob of the second image.
    #[arg(long, default_value_t = 100)]
    tarpits: usize,
    /// Size of each image's one layer, in MiB.
    #[arg(long, default_value_t = 64)]
    layer_mib: u64,
    /// Pairs of pulls (at least one); the median ratio is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    repeats: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    shoal_service::tls::install_crypto_provider();
    let args = Args::parse();
    let cluster = Cluster::start(ClusterOptions::with_agents(1)).await?;
    let work = tempfile::tempdir()?;
    let rows = paired_pulls(
        &cluster,
        work.path(),
        args.repeats,
        args.layer_mib * MIB,
        0x7a2_0000,
        ["clean", "tarpits"],
        async |image, repo, with_tarpits, dest| {
            let tarpits = match with_tarpits {
                true => Some(Tarpits::start(&cluster, args.tarpits, repo, image).await?),
                false => None,
            };
            let started = Instant::now();
            pull_through_agent_and_check(&cluster, 0, image, repo, "v1", dest).await?;
            let time = started.elapsed();
            if let Some(tarpits) = tarpits {
                tarpits.close().await?;
            }
            eprintln!("{repo}: pull in {:.2} s", time.as_secs_f64());
            Ok(time)
        },
    )
    .await?;
    println!(
        "{} MiB layer, {} hung peers, {} repeats, {} cores.\n",
        args.layer_mib,
        args.tarpits,
        args.repeats,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    let rows: Vec<_> = rows.into_iter().map(|pair| (pair, Vec::new())).collect();
    print_pair_table(["clean pull", "with hung peers"], &[], &rows);
    Ok(())
}
