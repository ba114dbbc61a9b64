//! The `shoal-agent` binary: parses arguments, loads the config, binds and runs until SIGTERM.

use clap::Parser;
use shoal_agent::{AgentConfig, Listeners};
use shoal_service::cli::CommonArgs;

/// Shoal's node agent: a local Registry V2 read API (registry or mirror for docker, containerd
/// and podman) whose blobs come piece by piece from other agents and the origins.
#[derive(Parser, Debug)]
#[command(name = "shoal-agent", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: AgentConfig = shoal_service::config::load(args.common.config.as_deref())?;
    shoal_service::telemetry::init(&config.log);
    let listeners = Listeners::bind(&config).await?;
    shoal_agent::run(config, listeners, shoal_service::shutdown::on_signals()).await
}
