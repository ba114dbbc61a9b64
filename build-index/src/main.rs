//! `shoal-build-index`: parses arguments, loads the config, binds, and runs until SIGTERM/SIGINT.

use anyhow::Context;
use clap::Parser;
use shoal_build_index::{BuildIndexConfig, Listeners};
use shoal_service::cli::CommonArgs;

#[derive(Parser)]
#[command(
    version,
    about = "Shoal build-index: maps repository tags to manifest digests, checked against the origins and persisted in the backend"
)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: BuildIndexConfig = shoal_service::config::load(args.common.config.as_deref())?;
    shoal_service::telemetry::init(&config.log);
    let http = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "binding the HTTP listener on {} (config field `listen`)",
                config.listen
            )
        })?;
    let shutdown = shoal_service::shutdown::on_signals();
    shoal_build_index::run(config, Listeners { http }, shutdown).await
}
