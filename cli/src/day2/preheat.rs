//! `shoal preheat IMAGE`: asks the proxy to preheat an image (`POST /preheat`) and, unless
//! `--no-wait`, follows the job (`GET /preheat/ID`) printing its progress until it ends.

use std::time::Duration;

use anyhow::bail;
use serde::Deserialize;

use super::{TargetArgs, Targets};

/// How often the job's progress is read.
const POLL: Duration = Duration::from_millis(500);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `repository:tag` or `repository@sha256:…`, as pushed to Shoal.
    image: String,
    /// The proxy's `preheat.secret` (sent as `Authorization: Bearer …`).
    #[arg(long, env = "SHOAL_PREHEAT_SECRET", hide_env_values = true)]
    secret: String,
    /// Print the job id and return without waiting for the job.
    #[arg(long)]
    no_wait: bool,
    #[command(flatten)]
    targets: TargetArgs,
}

#[derive(Debug, Deserialize)]
struct Created {
    id: String,
}

#[derive(Debug, Deserialize, PartialEq)]
struct Progress {
    state: String,
    blobs_done: usize,
    blobs_total: usize,
    last_error: Option<String>,
    /// The agents phase, with `preheat.agents` configured on the proxy.
    agents: Option<Agents>,
}

#[derive(Debug, Deserialize, PartialEq)]
struct Agents {
    selected: Vec<String>,
    done: Vec<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let proxy = Targets::endpoint(args.targets.resolve()?.proxy.as_ref(), "proxy")?;
    let auth = format!("Bearer {}", args.secret);
    let request = proxy
        .request(reqwest::Method::POST, "/preheat")
        .header(reqwest::header::AUTHORIZATION, &auth)
        .json(&serde_json::json!({ "image": args.image }));
    let response = proxy.send(request).await?;
    let Created { id } = proxy.json("/preheat", response).await?;
    println!("preheat job {id} for {}", args.image);
    if args.no_wait {
        return Ok(());
    }
    let path = format!("/preheat/{id}");
    let mut last = None;
    loop {
        let request = proxy
            .request(reqwest::Method::GET, &path)
            .header(reqwest::header::AUTHORIZATION, &auth);
        let response = proxy.send(request).await?;
        let progress: Progress = proxy.json(&path, response).await?;
        if last.as_ref() != Some(&progress) {
            println!("{}", line(&progress));
        }
        match progress.state.as_str() {
            "succeeded" => return Ok(()),
            "failed" => bail!(
                "preheat of {} failed: {}",
                args.image,
                progress.last_error.as_deref().unwrap_or("no reason given")
            ),
            _ => {}
        }
        last = Some(progress);
        tokio::time::sleep(POLL).await;
    }
}

/// One progress line: `running: 2/5 blobs on their origins, 0/2 agents hold it`.
fn line(progress: &Progress) -> String {
    let agents = progress.agents.as_ref().map_or_else(String::new, |agents| {
        let (done, selected) = (agents.done.len(), agents.selected.len());
        format!(", {done}/{selected} agents hold it")
    });
    format!(
        "{}: {}/{} blobs on their origins{agents}",
        progress.state, progress.blobs_done, progress.blobs_total
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_count_blobs_and_agents() {
        let job = r#"{"id":"p-1","state":"running","blobs_done":2,"blobs_total":5,"last_error":null,"image":"a:b",
            "agents":{"selected":["a:1","a:2"],"done":["a:1"],"failed":[],"last_error":null}}"#;
        let progress: Progress = serde_json::from_str(job).unwrap();
        assert_eq!(
            line(&progress),
            "running: 2/5 blobs on their origins, 1/2 agents hold it"
        );
        let progress = Progress {
            agents: None,
            ..progress
        };
        assert_eq!(line(&progress), "running: 2/5 blobs on their origins");
    }
}
