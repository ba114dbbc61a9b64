//! `shoal status`: every component's health, with each origin's ring membership and write-back
//! backlog (`GET /admin/status` on the origin). Exits non-zero when any component is down.

use std::fmt::Write;

use serde::Deserialize;

use super::{Endpoint, TargetArgs, Targets};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    targets: TargetArgs,
}

/// What the origin's `GET /admin/status` answers.
#[derive(Debug, Deserialize)]
struct OriginStatus {
    ring: Option<Ring>,
    writeback: WriteBack,
}

#[derive(Debug, Deserialize)]
struct Ring {
    advertise: String,
    members: Vec<Member>,
    replica_pushes_pending: usize,
}

#[derive(Debug, Deserialize)]
struct Member {
    addr: String,
    healthy: bool,
}

#[derive(Debug, Deserialize)]
struct WriteBack {
    pending: usize,
    oldest_age_seconds: Option<f64>,
    failures: u64,
}

/// One component's line.
struct Row {
    endpoint: Endpoint,
    /// `Ok(detail)` when up; the one-line reason when down.
    state: anyhow::Result<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let targets = args.targets.resolve()?;
    let rows = check(&targets).await?;
    print!("{}", render(&rows));
    let down: Vec<String> = rows
        .iter()
        .filter(|row| row.state.is_err())
        .map(|row| format!("{} at {}", row.endpoint.component, row.endpoint.base))
        .collect();
    match down.as_slice() {
        [] => Ok(()),
        [one] => Err(anyhow::anyhow!("{one} is down")),
        many => Err(anyhow::anyhow!(
            "{} of {} components are down: {}",
            many.len(),
            rows.len(),
            many.join(", ")
        )),
    }
}

async fn check(targets: &Targets) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    let singles = [
        ("proxy", &targets.proxy),
        ("build-index", &targets.build_index),
        ("tracker", &targets.tracker),
    ];
    for (component, addr) in singles
        .into_iter()
        .filter_map(|(component, addr)| Some((component, addr.as_ref()?)))
    {
        let endpoint = Endpoint::new(component, addr)?;
        let state = ready(&endpoint).await;
        rows.push(Row { endpoint, state });
    }
    for addr in &targets.origins {
        let endpoint = Endpoint::new("origin", addr)?;
        let state = match ready(&endpoint).await {
            Ok(_) => origin(&endpoint).await,
            Err(error) => Err(error),
        };
        rows.push(Row { endpoint, state });
    }
    for addr in &targets.agents {
        let endpoint = Endpoint::new("agent", addr)?;
        let state = ready(&endpoint).await;
        rows.push(Row { endpoint, state });
    }
    Ok(rows)
}

/// Up means ready: `/readyz` answers 200, so what the component depends on answers too.
async fn ready(endpoint: &Endpoint) -> anyhow::Result<String> {
    const PATH: &str = "/readyz";
    let response = endpoint
        .send(endpoint.request(reqwest::Method::GET, PATH))
        .await?;
    endpoint.success(PATH, response).await?;
    Ok(String::new())
}

/// The origin's ring and backlog, in one line.
async fn origin(endpoint: &Endpoint) -> anyhow::Result<String> {
    let status: OriginStatus = endpoint.get_json("/admin/status").await?;
    let mut line = String::new();
    match &status.ring {
        None => line.push_str("lone origin"),
        Some(ring) => {
            let healthy = ring.members.iter().filter(|m| m.healthy).count();
            let _ = write!(
                line,
                "ring {healthy}/{} healthy as {} [",
                ring.members.len(),
                ring.advertise
            );
            for (i, member) in ring.members.iter().enumerate() {
                let mark = if member.healthy { "" } else { " (down)" };
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(line, "{sep}{}{mark}", member.addr);
            }
            let _ = write!(
                line,
                "], {} replica pushes pending",
                ring.replica_pushes_pending
            );
        }
    }
    let writeback = &status.writeback;
    let _ = write!(line, "; write-back: {} pending", writeback.pending);
    if let Some(age) = writeback.oldest_age_seconds {
        let _ = write!(line, " (oldest {age:.0}s)");
    }
    if writeback.failures > 0 {
        let _ = write!(line, ", {} failed attempts", writeback.failures);
    }
    Ok(line)
}

fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    let width = rows
        .iter()
        .map(|row| row.endpoint.base.len())
        .max()
        .unwrap_or(0);
    for row in rows {
        let (state, detail) = match &row.state {
            Ok(detail) => ("up", detail.clone()),
            Err(error) => ("DOWN", error.to_string()),
        };
        let _ = writeln!(
            out,
            "{:<12} {:<width$}  {state:<4}  {detail}",
            row.endpoint.component, row.endpoint.base,
        );
    }
    out
}
