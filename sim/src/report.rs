//! What a run measured: the completion-time distribution (seconds and multiples of the link
//! limit S/B) over the agents that completed, origin egress, what the churn did, and the cost of
//! the run itself.

use std::fmt;

use serde::Serialize;

use crate::config::Gone;

/// Completion-time percentiles, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Distribution {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Distribution {
    /// Nearest-rank percentiles of `times` (sorted here); None when empty.
    pub fn of(times: &mut [f64]) -> Option<Distribution> {
        if times.is_empty() {
            return None;
        }
        times.sort_by(f64::total_cmp);
        // In thousandths, so that 99.9 % is exact in integers.
        let rank = |per_mille: usize| {
            let at = (per_mille * times.len()).div_ceil(1000);
            times[at.clamp(1, times.len()) - 1]
        };
        Some(Distribution {
            p50: rank(500),
            p90: rank(900),
            p99: rank(990),
            p999: rank(999),
            max: times[times.len() - 1],
        })
    }

    /// Every figure divided by `by`.
    pub fn scaled(&self, by: f64) -> Distribution {
        Distribution {
            p50: self.p50 / by,
            p90: self.p90 / by,
            p99: self.p99 / by,
            p999: self.p999 / by,
            max: self.max / by,
        }
    }
}

/// What the churn did (all zero and None in a run without churn).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChurnReport {
    /// Agents that left mid-download: they never complete and are not in the percentiles.
    pub left_downloading: u32,
    /// Agents that left as soon as they completed: in the percentiles, but never seeded.
    pub left_complete: u32,
    /// Agents that hung mid-download: they never complete and are not in the percentiles.
    pub hung_downloading: u32,
    pub late_joiners: u32,
    /// When origin 0 stopped (virtual seconds), and how.
    pub origin_stopped: Option<(f64, Gone)>,
    /// Failure events the agents' schedulers were fed: sessions that ended (Disconnected),
    /// connections to departed or hung nodes (ConnectFailed), requests to departed ones
    /// (PieceFailed; requests to hung ones time out in the schedulers).
    pub disconnects: u64,
    pub connect_failures: u64,
    pub failed_requests: u64,
}

impl ChurnReport {
    fn is_empty(&self) -> bool {
        *self == ChurnReport::default()
    }
}

/// How busy the agents' uplinks were: every agent's upload is the swarm's supply, so each
/// second they idle is lost against S/B (docs/BENCHMARKS.md, what bounds the median).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Uplinks {
    /// Bytes the agents uploaded in each second of virtual time (the last one partial), as a
    /// share of what the agents present could upload in it.
    pub per_second: Vec<f64>,
    /// The same share from the start until the first agent completed.
    pub before_first_complete: Option<f64>,
    /// Bytes the agents uploaded in all (transfers cancelled midway included: they used the
    /// links).
    pub bytes: f64,
}

impl fmt::Display for Uplinks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "agents' uplinks busy: ")?;
        if let Some(share) = self.before_first_complete {
            write!(f, "{:.1} % until the first completion; ", share * 100.0)?;
        }
        write!(f, "per second (%):")?;
        for share in &self.per_second {
            write!(f, " {:.0}", share * 100.0)?;
        }
        Ok(())
    }
}

/// The outcome of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub peers: u32,
    /// Agents that did not leave mid-download, which should all complete.
    pub stayed: u32,
    /// Agents that completed (those that left on completing included).
    pub complete: u32,
    pub every_stayer_complete: bool,
    pub blob_size: u64,
    pub piece_length: u64,
    pub pieces: u64,
    /// S/B in seconds.
    pub link_limit: f64,
    /// Per-agent time from arrival to complete, seconds (None when no agent completed).
    pub seconds: Option<Distribution>,
    /// The same as multiples of S/B.
    pub ratio: Option<Distribution>,
    /// Per-agent time from arrival until its client read the whole blob (`--client-rate`),
    /// seconds, and as multiples of S/B.
    pub read: Option<Distribution>,
    pub read_ratio: Option<Distribution>,
    pub origin_egress_bytes: u64,
    /// Origin egress divided by S.
    pub origin_egress_ratio: f64,
    pub uplinks: Uplinks,
    /// Requests answered "busy" for lack of an upload slot, by origins and by agents.
    pub busy_from_origins: u64,
    pub busy_from_agents: u64,
    /// Requests gone stale: far older than their download's others, their pieces asked of
    /// other holders too.
    pub stale_requests: u64,
    pub churn: ChurnReport,
    /// Requests origins answered "get it elsewhere" (`shoal_swarm::seeding`).
    pub elsewhere_from_origins: u64,
    /// Requests agents answered "elsewhere" for their bound of copies of the piece
    /// (`shoal_swarm::slots::PIECE_COPIES`).
    pub elsewhere_from_agents: u64,
    /// Requests to origins that insisted (refused before, and still held by no peer in reach).
    pub insisting_to_origins: u64,
    /// Virtual time when the last agent completed (or the run stopped), seconds.
    pub virtual_seconds: f64,
    pub events: u64,
    pub wall_seconds: f64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} of {} staying agents complete; blob {} bytes in {} pieces of {} bytes; S/B = {:.3} s",
            self.complete,
            self.stayed,
            self.blob_size,
            self.pieces,
            self.piece_length,
            self.link_limit
        )?;
        if let (Some(s), Some(r)) = (&self.seconds, &self.ratio) {
            writeln!(f, "completion   p50      p90      p99      p99.9    max")?;
            writeln!(
                f,
                "seconds      {:<8.2} {:<8.2} {:<8.2} {:<8.2} {:.2}",
                s.p50, s.p90, s.p99, s.p999, s.max
            )?;
            writeln!(
                f,
                "× S/B        {:<8.3} {:<8.3} {:<8.3} {:<8.3} {:.3}",
                r.p50, r.p90, r.p99, r.p999, r.max
            )?;
        }
        if let Some(r) = &self.read_ratio {
            writeln!(
                f,
                "client read  {:<8.3} {:<8.3} {:<8.3} {:<8.3} {:.3}  (× S/B)",
                r.p50, r.p90, r.p99, r.p999, r.max
            )?;
        }
        writeln!(
            f,
            "origin egress {} bytes = {:.2} × S",
            self.origin_egress_bytes, self.origin_egress_ratio
        )?;
        writeln!(f, "{}", self.uplinks)?;
        writeln!(
            f,
            "busy answers: {} from origins, {} from agents; requests gone stale: {}",
            self.busy_from_origins, self.busy_from_agents, self.stale_requests
        )?;
        let churn = &self.churn;
        if !churn.is_empty() {
            write!(
                f,
                "churn: of {} agents, {} left mid-download, {} left on completing, {} hung mid-download, {} joined late",
                self.peers,
                churn.left_downloading,
                churn.left_complete,
                churn.hung_downloading,
                churn.late_joiners
            )?;
            match churn.origin_stopped {
                Some((at, Gone::Exited)) => writeln!(f, "; origin 0 died at {at:.2} s")?,
                Some((at, Gone::Hung)) => writeln!(f, "; origin 0 hung at {at:.2} s")?,
                None => writeln!(f)?,
            }
            writeln!(
                f,
                "agents saw {} sessions drop, {} connects fail, {} requests fail",
                churn.disconnects, churn.connect_failures, churn.failed_requests
            )?;
        }
        writeln!(
            f,
            "elsewhere answers from origins: {}, from agents (copies of a piece): {}; requests that insisted: {}",
            self.elsewhere_from_origins, self.elsewhere_from_agents, self.insisting_to_origins
        )?;
        write!(
            f,
            "{} events in {:.2} s wall time ({:.1} s virtual)",
            self.events, self.wall_seconds, self.virtual_seconds
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut times: Vec<f64> = (1..=1000).rev().map(f64::from).collect();
        let d = Distribution::of(&mut times).expect("non-empty");
        assert_eq!(
            (d.p50, d.p90, d.p99, d.p999, d.max),
            (500.0, 900.0, 990.0, 999.0, 1000.0)
        );
        assert_eq!(Distribution::of(&mut []), None);
        let one = Distribution::of(&mut [2.0]).expect("non-empty");
        assert_eq!((one.p50, one.max), (2.0, 2.0));
    }

    #[test]
    fn uplinks_print_as_percentages() {
        let uplinks = Uplinks {
            per_second: vec![0.314, 0.9, 0.925],
            before_first_complete: Some(0.8642),
            bytes: 1e9,
        };
        assert_eq!(
            uplinks.to_string(),
            "agents' uplinks busy: 86.4 % until the first completion; per second (%): 31 90 92"
        );
    }
}
