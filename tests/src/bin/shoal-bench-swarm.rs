//! `shoal-bench-swarm`: the swarm benchmark on the network-namespace test bed. N agents on shaped
//! hosts pull one image through Shoal, then from docker-registry on the origin's host; prints the
//! Markdown report, appends it to docs/BENCHMARKS.md and draws the completion times to an SVG.
//! Ctrl-C or SIGTERM tears the bed down (namespaces, processes, files) before exiting.
//!
//!     cargo build --release --bins
//!     target/release/shoal-bench-swarm --agents 20 --image-mib 256 --layers 2 \
//!         --agent-rate 100mbit --origin-rate 100mbit

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Parser;
use shoal_tests::netbed::Rate;
use shoal_tests::svg_plot::{Series, completion_chart};
use shoal_tests::swarm_bench::{self, SwarmParams, rate_text};
use tokio::signal::unix::{SignalKind, signal};

/// Measures N agents pulling one image at once, against the CNCF registry.
#[derive(Debug, Parser)]
struct Args {
    /// Agents, each on its own network namespace host.
    #[arg(long, default_value_t = 20)]
    agents: usize,
    /// Total layer size in MiB.
    #[arg(long, default_value_t = 256)]
    image_mib: u64,
    /// Layers the image is split into (equal sizes).
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Each agent host's link rate (both directions).
    #[arg(long, default_value = "100mbit")]
    agent_rate: Rate,
    /// The origin host's link rate; docker-registry runs on that host for the baseline.
    #[arg(long, default_value = "100mbit")]
    origin_rate: Rate,
    /// The tracker's, build-index's and proxy's link rates.
    #[arg(long, default_value = "1gbit")]
    service_rate: Rate,
    /// Where the component binaries are (default: next to this executable).
    #[arg(long)]
    binaries: Option<PathBuf>,
    /// Markdown file the report is appended to.
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    report: PathBuf,
    /// Directory the SVG chart is written to (`swarm-<N>-agents.svg`).
    #[arg(long, default_value = "docs")]
    svg_dir: PathBuf,
    /// `RUST_LOG` for the components.
    #[arg(long, default_value = "warn")]
    rust_log: String,
    /// Agents fetch pieces over the piece stream (`p2p.piece_stream`) instead of gRPC.
    #[arg(long)]
    piece_stream: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    shoal_service::tls::install_crypto_provider();
    let args = Args::parse();
    let binaries = match &args.binaries {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()
            .context("this executable's path")?
            .parent()
            .context("this executable's directory")?
            .to_path_buf(),
    };
    let params = SwarmParams {
        agents: args.agents,
        image_bytes: args.image_mib << 20,
        layers: args.layers,
        agent_rate: args.agent_rate,
        origin_rate: args.origin_rate,
        service_rate: args.service_rate,
        binaries,
        rust_log: args.rust_log.clone(),
        piece_stream: args.piece_stream,
    };
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    // Dropping the benchmark's future on a signal runs every teardown guard it holds.
    let report = tokio::select! {
        report = swarm_bench::run(&params) => report?,
        _ = interrupt.recv() => bail!("interrupted; the test bed was torn down"),
        _ = terminate.recv() => bail!("terminated; the test bed was torn down"),
    };

    let svg_name = format!("swarm-{}-agents.svg", params.agents);
    let svg_path = args.svg_dir.join(&svg_name);
    let title = format!(
        "{} agents pulling {} MiB over {} links",
        params.agents,
        args.image_mib,
        rate_text(params.agent_rate)
    );
    let chart = completion_chart(
        &title,
        &[
            Series {
                label: "Shoal (p2p through the agents)",
                times: &report.shoal.times,
            },
            Series {
                label: "docker-registry (central)",
                times: &report.registry.times,
            },
        ],
        report.link_limit(),
    );
    std::fs::write(&svg_path, chart).with_context(|| format!("writing {}", svg_path.display()))?;

    let command = std::iter::once("target/release/shoal-bench-swarm".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let date = utc_date()?;
    let markdown = report.markdown(&command, &date, Some(&svg_name));
    println!("{markdown}");
    let mut existing = match std::fs::read_to_string(&args.report) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(e).with_context(|| format!("reading {}", args.report.display()));
        }
    };
    if !existing.ends_with('\n') {
        existing.push('\n');
    }
    existing.push('\n');
    existing.push_str(&markdown);
    std::fs::write(&args.report, existing)
        .with_context(|| format!("writing {}", args.report.display()))?;
    eprintln!(
        "appended to {}, chart in {}",
        args.report.display(),
        svg_path.display()
    );
    Ok(())
}

/// The UTC date and time, for the report's heading.
fn utc_date() -> Result<String> {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .context("running date")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
