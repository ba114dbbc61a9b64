//! `shoal-origin`: parses arguments, loads the config, binds and runs the origin.

use anyhow::Context;
use clap::Parser;
use shoal_origin::{Listeners, OriginConfig};
use shoal_service::cli::CommonArgs;
use tokio::net::TcpListener;

/// Shoal origin: stores and verifies uploaded blobs, writes them back to the backend, pulls
/// them through from it on a miss, and serves blobs and metainfo.
#[derive(Parser, Debug)]
#[command(name = "shoal-origin", version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: OriginConfig = shoal_service::config::load(args.common.config.as_deref())?;
    shoal_service::telemetry::init(&config.log);
    let http = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {} (config field `listen`)", config.listen))?;
    let peer = TcpListener::bind(config.peer_listen)
        .await
        .with_context(|| {
            format!(
                "binding {} (config field `peer_listen`)",
                config.peer_listen
            )
        })?;
    let shutdown = shoal_service::shutdown::on_signals();
    shoal_origin::run(config, Listeners { http, peer }, shutdown).await
}
