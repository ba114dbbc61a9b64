//! `shoal cache ls|evict`: an agent's cache (`GET /admin/cache`, `DELETE /admin/cache/DIGEST`).

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use shoal_core::Digest;

use super::{Endpoint, TargetArgs, parse_digest, size};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// List the blobs the agent holds, with their size and last use.
    Ls {
        #[command(flatten)]
        targets: TargetArgs,
    },
    /// Evict one blob from the agent's cache now (refused while it is being read).
    Evict {
        /// The blob's digest (`sha256:…`).
        #[arg(value_parser = parse_digest)]
        digest: Digest,
        #[command(flatten)]
        targets: TargetArgs,
    },
}

#[derive(Debug, Deserialize)]
struct Listing {
    blobs: Vec<Blob>,
    total_bytes: u64,
}

#[derive(Debug, Deserialize)]
struct Blob {
    digest: String,
    size: u64,
    last_used_unix_ms: u64,
    readers: usize,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (Command::Ls { targets } | Command::Evict { targets, .. }) = &args.command;
    let targets = targets.resolve()?;
    // The first agent listed (`--agent`, the targets file, or the devcluster's first).
    let addr = targets
        .agents
        .first()
        .ok_or_else(|| anyhow::anyhow!("no agent given: pass --agent HOST:PORT"))?;
    let agent = Endpoint::new("agent", addr)?;
    match args.command {
        Command::Ls { .. } => {
            let listing: Listing = agent.get_json("/admin/cache").await?;
            print!("{}", render(&listing, SystemTime::now()));
        }
        Command::Evict { digest, .. } => {
            let path = format!("/admin/cache/{digest}");
            let response = agent
                .send(agent.request(reqwest::Method::DELETE, &path))
                .await?;
            agent.success(&path, response).await?;
            println!("evicted {digest} from the agent at {}", agent.base);
        }
    }
    Ok(())
}

fn render(listing: &Listing, now: SystemTime) -> String {
    let mut out = String::new();
    for blob in &listing.blobs {
        let used = UNIX_EPOCH + Duration::from_millis(blob.last_used_unix_ms);
        let age = now.duration_since(used).unwrap_or_default().as_secs();
        let reading = if blob.readers > 0 {
            format!("  ({} reading)", blob.readers)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{}  {:>10}  used {age}s ago{reading}",
            blob.digest,
            size(blob.size)
        );
    }
    let _ = writeln!(
        out,
        "{} blobs, {}",
        listing.blobs.len(),
        size(listing.total_bytes)
    );
    out
}
