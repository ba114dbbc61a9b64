//! The day-2 CLI (`shoal status`, `preheat`, `cache ls|evict`, `swarm`) against a real cluster:
//! each command's output for an image pushed through the proxy and pulled through an agent, and
//! the one-line error naming the component and its address once that component is down.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use reqwest::StatusCode;
use serde_json::json;
use shoal_tests::cluster::Component;
use shoal_tests::v2::Registry;
use shoal_tests::{Cluster, ClusterOptions, binaries};

const SECRET: &str = "preheat-secret";
/// How long the test waits for the agent's announce to reach the tracker's swarm view: a
/// deadline for the poll on a loaded machine, not a timing claim.
const DEADLINE: Duration = Duration::from_secs(60);

struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `shoal COMMAND FLAGS` to completion.
async fn shoal(command: &[&str], flags: &[String]) -> Result<Output> {
    let output = tokio::process::Command::new(binaries::path("shoal"))
        .args(command)
        .args(flags)
        .env("RUST_BACKTRACE", "1")
        .env_remove("SHOAL_PREHEAT_SECRET")
        .kill_on_drop(true)
        .output()
        .await
        .context("running shoal")?;
    Ok(Output {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Every component's address as `shoal` flags.
fn targets(cluster: &Cluster) -> Vec<String> {
    let mut flags = Vec::new();
    for (flag, component) in [
        ("--proxy", Component::Proxy),
        ("--build-index", Component::BuildIndex),
        ("--origin", Component::Origin),
        ("--tracker", Component::Tracker),
        ("--agent", Component::Agent(0)),
    ] {
        flags.push(flag.to_owned());
        flags.push(cluster.addr(component).to_string());
    }
    flags
}

/// Runs `shoal COMMAND FLAGS` until `done` holds for its output (the cluster catching up: a blob
/// committed to the cache, an announce reaching the tracker, a read finishing), or [`DEADLINE`].
async fn shoal_until(
    command: &[&str],
    flags: &[String],
    done: impl Fn(&Output) -> bool,
) -> Result<Output> {
    let waited = tokio::time::timeout(DEADLINE, async {
        loop {
            let out = shoal(command, flags).await?;
            if done(&out) {
                return anyhow::Ok(out);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    waited
        .await
        .with_context(|| format!("shoal {command:?} never got there"))?
}

/// `stderr` is exactly one line, an error naming `component` at `addr` as down.
fn one_line_down(output: &Output, component: &str, addr: &str) -> Result<()> {
    ensure!(!output.success, "succeeded with {component} down");
    let lines: Vec<&str> = output.stderr.lines().collect();
    ensure!(
        lines.len() == 1
            && lines[0].starts_with(&format!("Error: {component} at http://{addr}"))
            && lines[0].contains("down"),
        "expected one line naming {component} at {addr}, got:\n{}",
        output.stderr
    );
    Ok(())
}

#[tokio::test]
async fn day2_commands_against_a_cluster_and_with_components_down() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        proxy_overrides: json!({"preheat": {"secret": SECRET}}),
        ..ClusterOptions::with_agents(1)
    })
    .await?;
    let registry = Registry::new(&cluster.proxy_url())?;
    let image = registry.push_small_image("day2/app", "v1", "day2").await?;
    let flags = targets(&cluster);

    // status: every component up, the origin alone with nothing left to write back.
    // (The agent's readiness may still be catching up with its tracker right after start.)
    let status = shoal_until(&["status"], &flags, |out| out.success).await?;
    for component in ["proxy", "build-index", "tracker", "origin", "agent"] {
        ensure!(
            status
                .stdout
                .lines()
                .any(|line| line.starts_with(component) && line.contains(" up ")),
            "{component} not up:\n{}",
            status.stdout
        );
    }
    ensure!(
        status.stdout.contains("lone origin; write-back: 0 pending"),
        "{}",
        status.stdout
    );

    // preheat: waits for the job and reports it done; a wrong secret is refused.
    let preheat = ["preheat", "day2/app:v1", "--secret", SECRET];
    let done = shoal(&preheat, &flags).await?;
    ensure!(done.success, "preheat: {}{}", done.stdout, done.stderr);
    ensure!(
        done.stdout.contains("succeeded: 3/3 blobs"),
        "{}",
        done.stdout
    );
    let wrong = ["preheat", "day2/app:v1", "--secret", "wrong"];
    let refused = shoal(&wrong, &flags).await?;
    ensure!(
        !refused.success && refused.stderr.contains("401"),
        "{}",
        refused.stderr
    );

    // Pull through the agent so its cache holds the layer.
    let agent = Registry::new(&cluster.agent_url(0))?;
    let layer = agent
        .http
        .get(agent.url(&format!("v2/day2/app/blobs/{}", image.layer)))
        .send()
        .await?;
    ensure!(
        layer.status() == StatusCode::OK,
        "agent pull: {}",
        layer.status()
    );
    ensure!(layer.bytes().await?.len() as u64 == image.layer_size);

    // cache ls lists it with its size.
    let ls = ["cache", "ls"];
    let layer_text = image.layer.to_string();
    let listed = shoal_until(&ls, &flags, |out| out.stdout.contains(&layer_text)).await?;
    let layer_line = listed
        .stdout
        .lines()
        .find(|line| line.starts_with(&image.layer.to_string()))
        .with_context(|| format!("layer not listed:\n{}", listed.stdout))?;
    ensure!(
        layer_line.contains(&format!("{} B", image.layer_size)),
        "{layer_line}"
    );

    // swarm: the agent shows up as a complete peer once it has announced.
    let agent_peer = cluster
        .peer_addr(Component::Agent(0))
        .context("agent peer address")?
        .to_string();
    let swarm = ["swarm", layer_text.as_str()];
    let shown = shoal_until(&swarm, &flags, |out| {
        out.success && out.stdout.contains(&agent_peer)
    })
    .await?;
    let peer_line = shown
        .stdout
        .lines()
        .find(|line| line.contains(&agent_peer))
        .expect("found above");
    ensure!(peer_line.contains("complete"), "{}", shown.stdout);
    let manifest_text = image.manifest.to_string();
    let unknown = shoal(&["swarm", manifest_text.as_str()], &flags).await?;
    ensure!(
        !unknown.success && unknown.stderr.contains("404"),
        "{}",
        unknown.stderr
    );

    // evict: gone from the listing; a second evict says it is not cached.
    let evict = ["cache", "evict", layer_text.as_str()];
    // Refused (409) while the pull's read is still being released.
    let evicted = shoal_until(&evict, &flags, |out| !out.stderr.contains("being read")).await?;
    ensure!(evicted.success, "evict: {}", evicted.stderr);
    let listed = shoal(&ls, &flags).await?;
    ensure!(
        !listed.stdout.contains(&image.layer.to_string()),
        "{}",
        listed.stdout
    );
    let again = shoal(&evict, &flags).await?;
    ensure!(
        !again.success && again.stderr.contains("not in this agent's cache"),
        "{}",
        again.stderr
    );

    // The agent down: status names it and exits non-zero; cache ls is one line naming it.
    let agent_addr = cluster.addr(Component::Agent(0)).to_string();
    cluster.kill(Component::Agent(0))?;
    let status = shoal(&["status"], &flags).await?;
    one_line_down(&status, "agent", &agent_addr)?;
    ensure!(
        status
            .stdout
            .lines()
            .any(|line| line.starts_with("agent") && line.contains("DOWN")),
        "{}",
        status.stdout
    );
    one_line_down(&shoal(&ls, &flags).await?, "agent", &agent_addr)?;

    // The proxy and tracker down: preheat and swarm name them.
    let proxy_addr = cluster.proxy_addr().to_string();
    cluster.kill(Component::Proxy)?;
    one_line_down(&shoal(&preheat, &flags).await?, "proxy", &proxy_addr)?;
    let tracker_addr = cluster.addr(Component::Tracker).to_string();
    cluster.kill(Component::Tracker)?;
    one_line_down(&shoal(&swarm, &flags).await?, "tracker", &tracker_addr)?;
    cluster.stop_all()?;
    Ok(())
}

#[tokio::test]
async fn status_shows_the_origin_ring_and_a_member_that_went_down() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        origins: 2,
        ..ClusterOptions::default()
    })
    .await?;
    let (first, second) = (cluster.origin_addr_at(0), cluster.origin_addr_at(1));
    // This cluster runs no tracker and no agent: the targets file leaves them out.
    let targets = cluster.dir().join("targets.yaml");
    std::fs::write(
        &targets,
        format!(
            "proxy: {}\nbuild_index: {}\norigins: [{first}, {second}]\ntracker: null\nagents: []\n",
            cluster.proxy_addr(),
            cluster.build_index_addr()
        ),
    )?;
    let flags = vec!["--targets".to_owned(), targets.display().to_string()];
    let both = shoal_until(&["status"], &flags, |out| {
        out.stdout.matches("ring 2/2 healthy").count() == 2
    })
    .await?;
    ensure!(both.success, "{}{}", both.stdout, both.stderr);
    ensure!(both.stdout.lines().count() == 4, "{}", both.stdout);

    cluster.kill(Component::origin(1))?;
    // Once the first origin's health checks see the second gone, its ring line says so.
    let one = shoal_until(&["status"], &flags, |out| {
        out.stdout.contains("ring 1/2 healthy")
    })
    .await?;
    one_line_down(&one, "origin", &second.to_string())?;
    ensure!(
        one.stdout.contains(&format!("{second} (down)")),
        "{}",
        one.stdout
    );
    cluster.stop_all()?;
    Ok(())
}
