//! The `shoal-proxy` binary: parses arguments, loads the config, binds and runs until SIGTERM.

use clap::Parser;
use shoal_proxy::{Listeners, ProxyConfig};
use shoal_service::cli::CommonArgs;

/// Shoal's Registry V2 front door: push and pull images; blobs go to the origins, tags to the
/// build-index.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: ProxyConfig = shoal_service::config::load(args.common.config.as_deref())?;
    shoal_service::telemetry::init(&config.log);
    let listeners = Listeners::bind(&config).await?;
    shoal_proxy::run(config, listeners, shoal_service::shutdown::on_signals()).await
}
