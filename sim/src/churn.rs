//! Churn: which agents leave, when, and which join late. Drawn once per run from the seed, with a
//! generator of its own, so a run without churn is exactly the run it was before churn existed.

use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use crate::config::Churn;
use crate::queue::Nanos;

/// Keeps the churn generator's stream apart from the swarm's for the same seed.
const CHURN_STREAM: u64 = 0x6368_7572_6e00_0001;

/// How an agent leaves the swarm, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Downloads to completion and keeps seeding for the rest of the run.
    Stays,
    /// Its process exits once it has verified this many pieces (1 to all but one).
    Downloading { after: u32 },
    /// Its process exits as soon as it completes: it never seeds.
    Complete,
    /// Its process stops answering once it has verified this many pieces (1 to all but one);
    /// its sockets stay open.
    Hangs { after: u32 },
}

/// One agent's part in the churn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AgentPlan {
    pub(crate) exit: Exit,
    /// When it arrives, if it joins late.
    pub(crate) late: Option<Nanos>,
}

/// Agents a share of `agents` stands for.
fn count(share: f64, agents: usize) -> usize {
    ((share * agents as f64).round() as usize).min(agents)
}

/// The plan of each of `agents` agents for a blob of `pieces` pieces (validated config: leaving
/// mid-download implies at least 2 pieces).
pub(crate) fn plan(churn: &Churn, agents: u32, pieces: u32, seed: u64) -> Vec<AgentPlan> {
    let agents = agents as usize;
    let mut plans = vec![
        AgentPlan {
            exit: Exit::Stays,
            late: None,
        };
        agents
    ];
    if !churn.is_active() {
        return plans;
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ CHURN_STREAM);
    let mut order: Vec<usize> = (0..agents).collect();
    order.shuffle(&mut rng);
    let downloading = count(churn.leave_downloading, agents);
    let complete = count(churn.leave_complete, agents).min(agents - downloading);
    for &agent in &order[..downloading] {
        let after = rng.random_range(1..pieces);
        plans[agent].exit = Exit::Downloading { after };
    }
    for &agent in &order[downloading..downloading + complete] {
        plans[agent].exit = Exit::Complete;
    }
    // Drawn after the leavers, so runs without hung agents draw what they drew before.
    let leavers = downloading + complete;
    let hanging = count(churn.hang_downloading, agents).min(agents - leavers);
    for &agent in &order[leavers..leavers + hanging] {
        let after = rng.random_range(1..pieces);
        plans[agent].exit = Exit::Hangs { after };
    }
    // Late joiners are drawn apart from the leavers: a late joiner may leave too.
    order.shuffle(&mut rng);
    let window = u64::try_from(churn.late_window.as_nanos()).unwrap_or(Nanos::MAX);
    for &agent in &order[..count(churn.late_join, agents)] {
        plans[agent].late = Some(rng.random_range(0..window));
    }
    plans
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn shares_become_whole_agents_each_leaving_mid_download() {
        let churn = Churn {
            leave_downloading: 0.2,
            leave_complete: 0.1,
            hang_downloading: 0.05,
            late_join: 0.25,
            late_window: Duration::from_secs(4),
            origin_stops: None,
        };
        let plans = plan(&churn, 200, 10, 1);
        let leaving: Vec<u32> = plans
            .iter()
            .filter_map(|p| match p.exit {
                Exit::Downloading { after } => Some(after),
                _ => None,
            })
            .collect();
        assert_eq!(leaving.len(), 40);
        assert!(leaving.iter().all(|&after| (1..10).contains(&after)));
        let complete = plans.iter().filter(|p| p.exit == Exit::Complete).count();
        assert_eq!(complete, 20);
        let hanging: Vec<u32> = plans
            .iter()
            .filter_map(|p| match p.exit {
                Exit::Hangs { after } => Some(after),
                _ => None,
            })
            .collect();
        assert_eq!(hanging.len(), 10);
        assert!(hanging.iter().all(|&after| (1..10).contains(&after)));
        let late: Vec<Nanos> = plans.iter().filter_map(|p| p.late).collect();
        assert_eq!(late.len(), 50);
        assert!(late.iter().all(|&at| at < 4_000_000_000));
        assert_eq!(plans, plan(&churn, 200, 10, 1), "the seed fixes the plan");
    }

    #[test]
    fn no_churn_plans_everyone_to_stay_from_the_start() {
        let plans = plan(&Churn::default(), 50, 10, 1);
        assert!(
            plans
                .iter()
                .all(|p| p.exit == Exit::Stays && p.late.is_none())
        );
    }
}
