//! The tracker's swarm view in a real browser (headless Chromium over WebDriver) while three
//! agents pull a 64 MiB image: the layer's swarm shows the three agents and the origin, the page
//! updates itself (server-sent events, no reload) as agents gain pieces, and once the pulls are
//! done every agent is complete and some bytes came from peers. Each agent's
//! `GET /debug/downloads` adds up to its byte metrics. Screenshots go to `target/swarm-view/`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use shoal_tests::browser::Browser;
use shoal_tests::images::{generate, image_spec};
use shoal_tests::swarm::{ensure_same_layout, push, skopeo_pull_through_agent};
use shoal_tests::{Cluster, ClusterOptions, Component};

const MIB: u64 = 1 << 20;
const AGENTS: usize = 3;
/// Each agent takes at most this many bytes a second, so the pull lasts long enough (about
/// 15 s) for the page to be seen mid-way; the cluster's announces come every second.
const INGRESS_RATE: &str = "4MiB";
/// Generous for a debug-build cluster on two busy cores; every wait polls a condition.
const DEADLINE: Duration = Duration::from_secs(120);

/// What the page shows, read from its rows' data attributes.
const SNAPSHOT: &str = r#"
    const rows = [...document.querySelectorAll("tr.peer")].map(r => ({
        id: r.dataset.peer,
        origin: r.dataset.origin === "true",
        pieces: Number(r.dataset.pieces || 0),
        complete: r.dataset.complete === "true",
    }));
    const swarm = document.getElementById("swarm");
    return {
        rows,
        updates: Number(document.body.dataset.updates || 0),
        bytes_from_peers: swarm ? Number(swarm.dataset.bytesFromPeers) : 0,
    };
"#;

fn agents(snapshot: &Value) -> Vec<&Value> {
    snapshot["rows"]
        .as_array()
        .map(|rows| rows.iter().filter(|r| r["origin"] == false).collect())
        .unwrap_or_default()
}

fn origins(snapshot: &Value) -> usize {
    snapshot["rows"].as_array().map_or(0, |rows| {
        rows.iter().filter(|r| r["origin"] == true).count()
    })
}

fn artifacts() -> Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/swarm-view");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_swarm_view_follows_a_three_agent_pull_in_a_browser() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        agent_overrides: json!({"p2p": {"ingress_rate": INGRESS_RATE}}),
        ..ClusterOptions::with_agents(AGENTS)
    })
    .await?;
    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("image"),
        image_spec(vec![64 * MIB], 0x5e0_0015, "v1"),
    )
    .await?;
    push(&cluster, &image, "view/app", "v1").await?;
    let (layer, _) = image
        .blobs()
        .max_by_key(|(_, size)| *size)
        .context("the image has a layer")?;
    let layer = *layer;

    let artifacts = artifacts()?;
    let browser = Browser::start(work.path()).await?;
    let tracker = cluster.addr(Component::Tracker);
    // The empty list first: the page answers before any swarm exists.
    browser.open(&format!("http://{tracker}/ui")).await?;
    browser
        .wait_for(
            "return document.getElementById('empty') !== null",
            DEADLINE,
            |v| v == true,
        )
        .await?;

    let dests: Vec<_> = (0..AGENTS)
        .map(|i| work.path().join(format!("pulled-{i}")))
        .collect();
    let pulls = futures::future::try_join_all(
        dests
            .iter()
            .enumerate()
            .map(|(i, dest)| skopeo_pull_through_agent(&cluster, i, "view/app", "v1", dest)),
    );
    let watch = async {
        browser
            .open(&format!("http://{tracker}/ui?digest={layer}"))
            .await?;
        let first = browser
            .wait_for(SNAPSHOT, DEADLINE, |s| {
                agents(s).len() == AGENTS
                    && origins(s) >= 1
                    && agents(s).iter().any(|a| a["complete"] == false)
            })
            .await?;
        eprintln!("first snapshot: {first}");
        ensure!(origins(&first) == 1, "one origin owns the layer: {first}");
        let pieces_of = |snapshot: &Value, id: &Value| {
            agents(snapshot)
                .into_iter()
                .find(|a| &a["id"] == id)
                .map_or(0, |a| a["pieces"].as_u64().unwrap_or(0))
        };
        // The same page load, later: the rows changed through the event stream.
        let gained = browser
            .wait_for(SNAPSHOT, DEADLINE, |s| {
                agents(&first).iter().any(|a| {
                    a["complete"] == false
                        && pieces_of(s, &a["id"]) > a["pieces"].as_u64().unwrap_or(0)
                }) && s["updates"].as_u64() > first["updates"].as_u64()
            })
            .await?;
        eprintln!("a later snapshot, without reloading: {gained}");
        browser.screenshot(&artifacts.join("during.png")).await
    };
    let (pulled, watched) = tokio::join!(pulls, watch);
    pulled?;
    watched?;
    for dest in &dests {
        ensure_same_layout(&image, dest)?;
    }
    let done = browser
        .wait_for(SNAPSHOT, DEADLINE, |s| {
            agents(s).len() == AGENTS
                && agents(s).iter().all(|a| a["complete"] == true)
                && s["bytes_from_peers"].as_f64().unwrap_or(0.0) > 0.0
        })
        .await?;
    eprintln!("after the pulls: {done}");
    browser.screenshot(&artifacts.join("complete.png")).await?;
    drop(browser);

    // Each agent's per-blob report adds up to its byte counters.
    let http = shoal_service::client::builder().build()?;
    for i in 0..AGENTS {
        let report: Value = http
            .get(format!("{}/debug/downloads", cluster.agent_url(i)))
            .send()
            .await?
            .json()
            .await?;
        let sum = |field: &str| -> u64 {
            report["downloads"]
                .as_array()
                .map_or(0, |d| d.iter().filter_map(|r| r[field].as_u64()).sum())
        };
        let component = Component::Agent(i);
        for (field, from) in [
            ("bytes_from_origins", "origin"),
            ("bytes_from_peers", "agent"),
        ] {
            let metric = cluster
                .metric_sum(component, "p2p_bytes_received_total", &[("from", from)])
                .await?;
            ensure!(
                sum(field) as f64 == metric,
                "agent {i}: /debug/downloads {field} adds up to {} but the metric says {metric}: {report}",
                sum(field)
            );
        }
    }
    Ok(())
}
