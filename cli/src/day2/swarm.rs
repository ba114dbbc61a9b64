//! `shoal swarm DIGEST`: who holds a blob and how much of it, from the tracker's swarm view
//! (`GET /v1/swarms/DIGEST`, page by page).

use std::fmt::Write;

use serde::Deserialize;
use shoal_core::Digest;

use super::{TargetArgs, Targets, parse_digest, size};

/// Peers asked for per page: the tracker's largest page.
const PAGE: usize = 500;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The blob's digest (`sha256:…`).
    #[arg(value_parser = parse_digest)]
    digest: Digest,
    #[command(flatten)]
    targets: TargetArgs,
}

#[derive(Debug, Deserialize)]
struct Swarm {
    repository: Option<String>,
    size: Option<u64>,
    piece_count: Option<u32>,
    progress: f64,
    origins: Vec<Origin>,
    total: usize,
    peers: Vec<Peer>,
}

#[derive(Debug, Deserialize)]
struct Origin {
    addr: String,
}

#[derive(Debug, Deserialize)]
struct Peer {
    id: String,
    addr: String,
    complete: bool,
    pieces: u32,
    bytes_from_origins: u64,
    bytes_from_peers: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let tracker = Targets::endpoint(args.targets.resolve()?.tracker.as_ref(), "tracker")?;
    let mut swarm: Option<Swarm> = None;
    loop {
        let offset = swarm.as_ref().map_or(0, |s| s.peers.len());
        let path = format!(
            "/v1/swarms/{}?sort=peer&limit={PAGE}&offset={offset}",
            args.digest
        );
        let page: Swarm = tracker.get_json(&path).await?;
        let done = page.peers.is_empty();
        match &mut swarm {
            None => swarm = Some(page),
            Some(swarm) => swarm.peers.extend(page.peers),
        }
        let swarm = swarm.as_ref().expect("set above");
        if done || swarm.peers.len() >= swarm.total {
            break;
        }
    }
    print!("{}", render(&args.digest, &swarm.expect("one page read")));
    Ok(())
}

fn render(digest: &Digest, swarm: &Swarm) -> String {
    let mut out = String::new();
    let length = swarm.size.map_or_else(|| "size unknown".to_owned(), size);
    let _ = writeln!(
        out,
        "{digest} ({}; {length}; {} pieces): {} peers, {:.0}% held",
        swarm.repository.as_deref().unwrap_or("repository unknown"),
        swarm
            .piece_count
            .map_or_else(|| "?".to_owned(), |n| n.to_string()),
        swarm.total,
        swarm.progress * 100.0
    );
    for origin in &swarm.origins {
        let _ = writeln!(out, "  origin  {}  complete", origin.addr);
    }
    for peer in &swarm.peers {
        let held = match (peer.complete, swarm.piece_count) {
            (true, _) => "complete".to_owned(),
            (false, Some(count)) => format!("{}/{count} pieces", peer.pieces),
            (false, None) => format!("{} pieces", peer.pieces),
        };
        let _ = writeln!(
            out,
            "  peer    {}  {}  {held}  ({} from origins, {} from peers)",
            peer.addr,
            peer.id,
            size(peer.bytes_from_origins),
            size(peer.bytes_from_peers)
        );
    }
    out
}
