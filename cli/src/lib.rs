//! `shoal`, the operator tool. Today it runs a whole cluster on one machine (`shoal devcluster`).

mod day2;
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
    /// Health of every component, with the origins' ring and write-back backlog.
    Status(day2::status::Args),
    /// Have the proxy preheat an image onto its origins, and follow the job.
    Preheat(day2::preheat::Args),
    /// List or evict the blobs of an agent's cache.
    Cache(day2::cache::Args),
    /// Who holds a blob in the swarm, and how much of it (from the tracker).
    Swarm(day2::swarm::Args),
    /// Garbage-collect blobs no tag or recorded manifest references (`--dry-run`: report only).
    Gc(gc::Args),
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        shoal_service::telemetry::init(&shoal_service::LogConfig::default());
        match self.command {
            Command::Devcluster(args) => devcluster::run(args).await,
            Command::Status(args) => day2::status::run(args).await,
            Command::Preheat(args) => day2::preheat::run(args).await,
            Command::Cache(args) => day2::cache::run(args).await,
            Command::Swarm(args) => day2::swarm::run(args).await,
            Command::Gc(args) => gc::run(args).await,
        }
    }
}
