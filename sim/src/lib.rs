//! A discrete-event, virtual-time simulator of a Shoal swarm: thousands of agents pulling one
//! blob from each other and from origins, each agent driven by the same piece scheduler the
//! real agents run (`shoal_swarm::scheduler`), over a flow-level bandwidth model. No sockets, no
//! threads, no clocks: a seed gives the same run every time. It measures what one machine
//! cannot host — completion-time distributions and origin egress at 1,000 to 15,000 agents.

mod churn;
mod config;
mod flows;
mod queue;
mod reader;
mod report;
mod swarm;
mod tracker;

pub use config::{
    Churn, ConfigError, Gone, HandoutPolicy, OriginStop, RATING_INTERVAL, SimConfig, TrackerModel,
};
pub use queue::Nanos;
pub use report::{ChurnReport, Distribution, Report};
pub use swarm::{Swarm, simulate};
