//! `shoal-tracker`: parses arguments, loads the config, binds, and runs until SIGTERM/SIGINT.

use anyhow::Context;
use clap::Parser;
use shoal_service::cli::CommonArgs;
use shoal_tracker::{Listeners, TrackerConfig};
use tokio::net::TcpListener;

/// Shoal tracker: tells peers which other peers hold a blob, and serves blobs' metainfo.
#[derive(Parser, Debug)]
#[command(name = "shoal-tracker", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

// Every announce allocates its request, answer and handout; glibc's malloc was an eighth of
// the tracker's CPU under a fleet's announces.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: TrackerConfig = shoal_service::config::load(args.common.config.as_deref())?;
    shoal_service::telemetry::init(&config.log);
    let grpc = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {} (config field `listen`)", config.listen))?;
    let shutdown = shoal_service::shutdown::on_signals();
    shoal_tracker::run(config, Listeners { grpc }, shutdown).await
}
