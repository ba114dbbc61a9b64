//! `shoal`, the operator tool. Today it runs a whole cluster on one machine (`shoal devcluster`).

pub mod devcluster;
mod gc;

use clap::{Parser, Subcommand};

/// Shoal: peer-to-peer container image distribution.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a local cluster (build-index, origin, proxy) as child processes on loopback.
    Devcluster(devcluster::Args),
    /// Garbage-collect blobs no tag or recorded manifest references (`--dry-run`: report only).
    Gc(gc::Args),
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        shoal_service::telemetry::init(&shoal_service::LogConfig::default());
        match self.command {
            Command::Devcluster(args) => devcluster::run(args).await,
            Command::Gc(args) => gc::run(args).await,
        }
    }
}
