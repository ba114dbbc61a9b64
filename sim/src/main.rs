//! `shoal-sim`: runs one swarm simulation and prints (or writes as JSON) its report.

use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use bytesize::ByteSize;
use clap::Parser;
use shoal_sim::{Churn, Gone, HandoutPolicy, OriginStop, SimConfig, TrackerModel, simulate};
use shoal_swarm::scheduler::SchedulerConfig;
use shoal_swarm::seeding::SeedingConfig;
use shoal_swarm::slots::{DEFAULT_UPLOAD_SLOTS, PIECE_COPIES};

/// Simulates N agents pulling one blob through Shoal's scheduler, in virtual time.
#[derive(Parser, Debug)]
#[command(name = "shoal-sim", version)]
struct Args {
    /// Agents pulling the blob.
    #[arg(long, default_value_t = 1000)]
    peers: u32,
    /// Blob size (`3GB` = 3·10⁹ bytes, `3GiB` = 3·2³⁰).
    #[arg(long, default_value = "3GB", value_parser = bytes)]
    size: u64,
    /// Piece length (default: Shoal's, `shoal_core::piece_length_for`).
    #[arg(long, value_parser = bytes)]
    piece_length: Option<u64>,
    /// Each agent's upload and download rate, per second (`300MB/s`).
    #[arg(long, default_value = "300MB/s", value_parser = rate)]
    peer_rate: f64,
    /// Each agent's upload rate, if different from --peer-rate.
    #[arg(long, value_parser = rate)]
    peer_upload: Option<f64>,
    #[arg(long, default_value_t = 3)]
    origins: u32,
    /// Each origin's upload rate, per second.
    #[arg(long, default_value = "1GB/s", value_parser = rate)]
    origin_rate: f64,
    /// One-way latency between nodes (`1ms`, `500us`, `0`).
    #[arg(long, default_value = "1ms", value_parser = duration)]
    latency: Duration,
    /// The flows' max-min rates are recomputed at most this often (`0`: at every start and
    /// finish, exact but slow beyond a few hundred agents; default: `shoal_sim::RATING_INTERVAL`).
    #[arg(long, value_parser = duration)]
    rating_interval: Option<Duration>,
    /// While pieces keep landing, a node tells its sessions about them at most this often
    /// (`0`: every notice at once; default: the peer service's `shoal_swarm::notices::HAVE_BATCH`).
    #[arg(long, value_parser = duration)]
    have_batch: Option<Duration>,
    /// Agents arrive uniformly within this window (`0`: all at once).
    #[arg(long, default_value = "0", value_parser = duration)]
    arrival_spread: Duration,
    /// Tracker handout policy.
    #[arg(long, value_enum, default_value_t = HandoutPolicy::OriginsFirst)]
    policy: HandoutPolicy,
    #[arg(long, default_value_t = 30)]
    handout_limit: usize,
    #[arg(long, default_value = "3s", value_parser = duration)]
    announce_interval: Duration,
    /// The tracker hands an agent out for this long after its last announce (`peer_ttl`), so a
    /// departed agent is handed out until then.
    #[arg(long, default_value = "30s", value_parser = duration)]
    peer_ttl: Duration,
    /// Churn: share of agents leaving mid-download (`0.2` or `20%`), each after a random number
    /// of pieces.
    #[arg(long, default_value = "0", value_parser = share)]
    leave_downloading: f64,
    /// Churn: share of agents leaving as soon as they complete (they never seed).
    #[arg(long, default_value = "0", value_parser = share)]
    leave_complete: f64,
    /// Churn: share of agents hanging mid-download, each after a random number of pieces: they
    /// stop answering with their sockets open (sessions stand, requests and handshakes time out).
    #[arg(long, default_value = "0", value_parser = share)]
    hang_downloading: f64,
    /// Churn: share of agents joining late, uniformly within --late-window after the start.
    #[arg(long, default_value = "0", value_parser = share)]
    late_join: f64,
    #[arg(long, default_value = "10s", value_parser = duration)]
    late_window: Duration,
    /// Churn: origin 0 stops once the agents have verified this share of all the bytes they
    /// need, peers × size (`0.5` or `50%`).
    #[arg(long, value_parser = share)]
    origin_dies_at: Option<f64>,
    /// Churn: origin 0 hangs (stops answering, its sockets open) once the agents have verified
    /// this share of all the bytes they need, peers × size.
    #[arg(long, value_parser = share, conflicts_with = "origin_dies_at")]
    origin_hangs_at: Option<f64>,
    /// Pieces an agent uploads at once; more requests are answered busy (`p2p.upload_slots`).
    #[arg(long, default_value_t = DEFAULT_UPLOAD_SLOTS)]
    upload_slots: usize,
    /// Pieces an origin uploads at once (the origin's `p2p.upload_slots`).
    #[arg(long, default_value_t = DEFAULT_UPLOAD_SLOTS)]
    origin_upload_slots: usize,
    /// Copies of one piece an agent uploads at once; more requests for it are answered
    /// "elsewhere" (`0`: unbounded).
    #[arg(long, default_value_t = PIECE_COPIES)]
    piece_copies: usize,
    /// Origins owning the blob (the tracker hands out only these).
    #[arg(long, default_value_t = 3)]
    replicas: u32,
    /// Scheduler: connections per blob.
    #[arg(long, default_value_t = SchedulerConfig::default().max_peers)]
    max_peers: usize,
    /// Scheduler: piece requests in flight per peer.
    #[arg(long, default_value_t = SchedulerConfig::default().max_pipeline)]
    max_pipeline: usize,
    /// Scheduler: endgame starts with this many pieces missing.
    #[arg(long, default_value_t = SchedulerConfig::default().endgame_pieces)]
    endgame_pieces: usize,
    /// Scheduler: a request not delivered within this time is cancelled and counts as a failure.
    #[arg(long, default_value = "15s", value_parser = duration)]
    piece_timeout: Duration,
    /// Scheduler: consecutive failed requests after which a peer is dropped.
    #[arg(long, default_value_t = SchedulerConfig::default().max_failures)]
    max_failures: u32,
    /// Scheduler: rest after a peer's first busy answer (doubling per busy answer in a row).
    #[arg(long, default_value = "250ms", value_parser = duration)]
    busy_backoff: Duration,
    /// Origins serve every request a slot allows (no super-seeding, `shoal_swarm::seeding`).
    #[arg(long)]
    no_seeding: bool,
    /// Super-seeding: in a crowd, an origin refuses a piece it sent this recently.
    #[arg(long, default_value = "2s", value_parser = duration)]
    seeding_recent: Duration,
    /// Super-seeding: requests from two peers within this window make a crowd.
    #[arg(long, default_value = "5s", value_parser = duration)]
    seeding_crowd_window: Duration,
    /// Scheduler: an origin that answered "elsewhere" for a piece is not asked for it this long.
    #[arg(long, default_value = "3s", value_parser = duration)]
    elsewhere_wait: Duration,
    /// A client streams the blob out of each agent at this rate, in order as the prefix
    /// grows; the report adds when each client has read it all.
    #[arg(long, value_parser = rate)]
    client_rate: Option<f64>,
    /// Pieces over the piece stream (`p2p.piece_stream`): each peer answers a downloader's
    /// requests in order, one after the other, instead of sharing its link among them.
    #[arg(long)]
    piece_stream: bool,
    /// Stop after this much virtual time.
    #[arg(long, default_value = "1h", value_parser = duration)]
    time_limit: Duration,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn bytes(text: &str) -> Result<u64, String> {
    ByteSize::from_str(text.trim()).map(|size| size.as_u64())
}

/// `300MB/s`, `1Gbit/s` is not supported: sizes are bytes.
fn rate(text: &str) -> Result<f64, String> {
    let size = text.trim().strip_suffix("/s").unwrap_or(text.trim());
    Ok(bytes(size)? as f64)
}

/// `0.2` or `20%`; the range is checked with the rest of the configuration.
fn share(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let (number, scale) = match text.strip_suffix('%') {
        Some(percent) => (percent, 100.0),
        None => (text, 1.0),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a share like 0.2 or 20%"))?;
    Ok(value / scale)
}

fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 1ms, 3s, 1h"))?;
    let seconds = match unit {
        "" if value == 0.0 => 0.0,
        "ns" => value / 1e9,
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("{text:?}: unit must be ns, us, ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let peer_download = args.peer_rate;
    let config = SimConfig {
        peers: args.peers,
        blob_size: args.size,
        piece_length: args.piece_length,
        peer_upload: args.peer_upload.unwrap_or(peer_download),
        peer_download,
        origins: args.origins,
        origin_upload: args.origin_rate,
        latency: args.latency,
        rating_interval: args.rating_interval.unwrap_or(shoal_sim::RATING_INTERVAL),
        have_batch: args.have_batch.unwrap_or(shoal_swarm::notices::HAVE_BATCH),
        arrival_spread: args.arrival_spread,
        tracker: TrackerModel {
            policy: args.policy,
            handout_limit: args.handout_limit,
            announce_interval: args.announce_interval,
            replicas: args.replicas,
            peer_ttl: args.peer_ttl,
        },
        churn: Churn {
            leave_downloading: args.leave_downloading,
            leave_complete: args.leave_complete,
            hang_downloading: args.hang_downloading,
            late_join: args.late_join,
            late_window: args.late_window,
            origin_stops: args
                .origin_dies_at
                .map(|at| OriginStop {
                    at,
                    how: Gone::Exited,
                })
                .or(args.origin_hangs_at.map(|at| OriginStop {
                    at,
                    how: Gone::Hung,
                })),
        },
        scheduler: SchedulerConfig {
            max_peers: args.max_peers,
            max_pipeline: args.max_pipeline,
            endgame_pieces: args.endgame_pieces,
            max_failures: args.max_failures,
            piece_timeout: args.piece_timeout,
            busy_backoff: args.busy_backoff,
            elsewhere_wait: args.elsewhere_wait,
            ..SchedulerConfig::default()
        },
        seeding: (!args.no_seeding).then_some(SeedingConfig {
            recent: args.seeding_recent,
            crowd_window: args.seeding_crowd_window,
        }),
        upload_slots: args.upload_slots,
        origin_upload_slots: args.origin_upload_slots,
        piece_copies: (args.piece_copies > 0).then_some(args.piece_copies),
        client_rate: args.client_rate,
        in_order: args.piece_stream,
        time_limit: args.time_limit,
        seed: args.seed,
        ..SimConfig::default()
    };
    let report = simulate(config.clone()).context("invalid simulation parameters")?;
    if args.json {
        let out = serde_json::json!({ "config": config, "report": report });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{report}");
    }
    if !report.every_stayer_complete {
        if !args.json {
            eprintln!("not every agent that stayed completed within --time-limit");
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use anyhow::bail;

    use super::*;

    #[test]
    fn parses_sizes_rates_and_durations() -> anyhow::Result<()> {
        assert_eq!(bytes("3GB").map_err(anyhow::Error::msg)?, 3_000_000_000);
        assert_eq!(rate("300MB/s").map_err(anyhow::Error::msg)?, 300e6);
        assert_eq!(
            duration("1ms").map_err(anyhow::Error::msg)?,
            Duration::from_millis(1)
        );
        assert_eq!(duration("0").map_err(anyhow::Error::msg)?, Duration::ZERO);
        assert_eq!(
            duration("1.5s").map_err(anyhow::Error::msg)?,
            Duration::from_millis(1500)
        );
        assert!(duration("3 parsecs").is_err());
        assert_eq!(share("20%").map_err(anyhow::Error::msg)?, 0.2);
        assert_eq!(share("0.5").map_err(anyhow::Error::msg)?, 0.5);
        assert!(share("half").is_err());
        if rate("fast").is_ok() {
            bail!("a rate without a number parsed");
        }
        Ok(())
    }
}
