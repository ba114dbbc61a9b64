//! Peer-to-peer under faults, each with real processes: a peer that corrupts what it serves, an
//! agent killed with SIGKILL in the middle of a download, the only origin killed while agents
//! are still downloading, and a swarm crowded with hung peers that accept connections and never
//! answer.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use serde_json::json;
use shoal_client::Image;
use shoal_core::piece_length_for;
use shoal_tests::images::{generate, image_spec};
use shoal_tests::swarm::{
    ensure_same_image, fetch_blob, pull_through_agent_and_check, pull_through_agents_and_check,
    push, wait_until,
};
use shoal_tests::tarpit::Tarpits;
use shoal_tests::{Cluster, ClusterOptions, Component};

const MIB: u64 = 1 << 20;
/// Far more than a debug build needs to start moving pieces on a loaded 2-core machine.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(60);
/// More hung peers than the tracker hands out in one answer (30), so every announce an agent
/// makes can come back full of them.
const TARPITS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_from_a_corrupting_peer_are_rejected_and_the_download_still_completes() -> Result<()>
{
    let corrupt = json!({"testing": {"corrupt_served_pieces": true}});
    let cluster = Cluster::start(ClusterOptions {
        agent_overrides_by_index: BTreeMap::from([(0, corrupt)]),
        ..ClusterOptions::with_agents(4)
    })
    .await?;
    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("image"),
        image_spec(vec![40 * MIB, 3 * MIB], 0x5e0_0302, "v1"),
    )
    .await?;
    push(&cluster, &image, "faults/corrupt", "v1").await?;

    // Agent 0 completes first, so it is the complete peer the tracker hands out to the others;
    // it verifies what it receives and flips bytes only in what it serves.
    let repo = "faults/corrupt";
    let seeded = work.path().join("pulled-0");
    pull_through_agent_and_check(&cluster, 0, &image, repo, "v1", &seeded).await?;
    pull_through_agents_and_check(&cluster, 1..4, &image, repo, "v1", work.path()).await?;
    let rejected = cluster
        .agents_metric_sum("p2p_pieces_rejected_total", &[])
        .await?;
    let blacklisted = cluster
        .agents_metric_sum("p2p_peers_blacklisted_total", &[])
        .await?;
    ensure!(
        rejected > 0.0,
        "no agent rejected a piece although agent 0 corrupts every piece it serves"
    );
    ensure!(
        blacklisted > 0.0,
        "no agent blacklisted the corrupting peer"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_killed_mid_download_resumes_from_its_verified_pieces() -> Result<()> {
    // A slow seeder stretches the download over seconds so the kill lands in its middle.
    let cluster_options = ClusterOptions {
        origin_overrides: json!({"p2p": {"egress_rate": "16MiB"}}),
        ..ClusterOptions::with_agents(1)
    };
    let mut cluster = Cluster::start(cluster_options).await?;
    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("image"),
        image_spec(vec![96 * MIB], 0x5e0_0303, "v1"),
    )
    .await?;
    push(&cluster, &image, "faults/resume", "v1").await?;
    let (layer, length) = image.layers[0];
    let piece_length = piece_length_for(length);
    let agent = Component::Agent(0);

    let url = cluster.agent_url(0);
    let first = tokio::spawn(async move { fetch_blob(&url, "faults/resume", &layer).await });
    wait_until(
        &cluster,
        PROGRESS_DEADLINE,
        "agent 0 has received a quarter of the layer's pieces",
        async || {
            let received = cluster
                .metric_sum(agent, "p2p_pieces_received_total", &[])
                .await?;
            Ok(received * piece_length as f64 >= length as f64 / 4.0)
        },
    )
    .await?;
    cluster.kill(agent)?;
    ensure!(
        first.await?.is_err(),
        "the first download finished before the kill; nothing was left to resume"
    );

    cluster.restart(agent).await?;
    let (digest, got) = fetch_blob(&cluster.agent_url(0), "faults/resume", &layer).await?;
    ensure!(
        digest == layer && got == length,
        "after the restart agent 0 served {got} bytes hashing to {digest}, expected {length} \
         bytes of {layer}"
    );
    let resumed = cluster
        .metric_sum(agent, "p2p_resumed_bytes_total", &[])
        .await?;
    let received = cluster
        .metric_sum(agent, "p2p_bytes_received_total", &[])
        .await?;
    ensure!(
        resumed > 0.0,
        "the restarted agent resumed nothing from the verified pieces on its disk"
    );
    let allowed = length as f64 - resumed + 2.0 * piece_length as f64;
    ensure!(
        received <= allowed,
        "after the restart the agent fetched {received} bytes; with {resumed} bytes resumed \
         at most {allowed} (the rest plus two {piece_length}-byte pieces) were needed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_finish_from_peers_after_the_only_origin_is_killed() -> Result<()> {
    // Agents 1 and 2 download slowly, so the origin dies while they are still at it.
    let slow = json!({"p2p": {"ingress_rate": "24MiB"}});
    let mut cluster = Cluster::start(ClusterOptions {
        agent_overrides_by_index: BTreeMap::from([(1, slow.clone()), (2, slow)]),
        ..ClusterOptions::with_agents(3)
    })
    .await?;
    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("image"),
        image_spec(vec![72 * MIB, 2 * MIB], 0x5e0_0304, "v1"),
    )
    .await?;
    push(&cluster, &image, "faults/origin-loss", "v1").await?;
    let pulled = work.path().join("pulled-0");
    pull_through_agent_and_check(&cluster, 0, &image, "faults/origin-loss", "v1", &pulled).await?;

    let pulls = [1, 2].map(|i| {
        let url = cluster.agent_url(i);
        let dest = work.path().join(format!("pulled-{i}"));
        tokio::spawn(async move {
            shoal_client::RegistryClient::new(&url)?
                .pull_image("faults/origin-loss", "v1", &dest, |_| {})
                .await
                .map_err(anyhow::Error::from)
        })
    });
    wait_until(
        &cluster,
        PROGRESS_DEADLINE,
        "agents 1 and 2 have started receiving pieces",
        async || Ok(pieces_received(&cluster, &[1, 2]).await? > 0.0),
    )
    .await?;
    cluster.kill(Component::Origin)?;
    let at_kill = pieces_received(&cluster, &[1, 2]).await?;
    ensure!(
        pulls.iter().all(|pull| !pull.is_finished()),
        "a pull finished before the origin was killed"
    );

    for pull in pulls {
        ensure_same_image(&image, &pull.await??)?;
    }
    ensure!(
        pieces_received(&cluster, &[1, 2]).await? > at_kill,
        "agents 1 and 2 received no piece after the origin died"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_completes_from_the_origin_and_honest_peers_despite_100_tarpit_peers() -> Result<()>
{
    // A download that verifies no piece for this long fails. A healthy pull of this image takes
    // well under a second, so only a download kept from its seeders can reach it; the default
    // (60 s) would only make a failure slower to show.
    let stall = json!({"p2p": {"stall_timeout": "20s"}});
    let cluster = Cluster::start(ClusterOptions {
        agent_overrides: stall,
        ..ClusterOptions::with_agents(2)
    })
    .await?;
    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("image"),
        image_spec(vec![24 * MIB, MIB], 0x5e0_0306, "v1"),
    )
    .await?;
    let repo = "faults/tarpit";
    push(&cluster, &image, repo, "v1").await?;
    let tarpits = Tarpits::start(&cluster, TARPITS, repo, &image).await?;

    // Agent 0's swarm is the origin plus the tarpits: every byte must come from the origin.
    pull_timed(&cluster, 0, &image, repo, &work.path().join("pulled-0")).await?;
    let from_origin = cluster
        .metric_sum(
            Component::Agent(0),
            "p2p_bytes_received_total",
            &[("from", "origin")],
        )
        .await?;
    let layer = image.layers[0].1 as f64;
    ensure!(
        from_origin >= layer,
        "agent 0 received {from_origin} bytes from the origin, less than the {layer}-byte layer"
    );

    // Agent 1's swarm adds agent 0, a complete honest peer, to the origin and the tarpits.
    pull_timed(&cluster, 1, &image, repo, &work.path().join("pulled-1")).await?;
    for from in ["agent", "origin"] {
        let bytes = cluster
            .metric_sum(
                Component::Agent(1),
                "p2p_bytes_received_total",
                &[("from", from)],
            )
            .await?;
        eprintln!("agent 1 received {bytes} bytes from the {from}");
    }

    tarpits.close().await
}

/// Pieces the given agents have received and verified, in all.
async fn pieces_received(cluster: &Cluster, agents: &[usize]) -> Result<f64> {
    let mut total = 0.0;
    for &i in agents {
        total += cluster
            .metric_sum(Component::Agent(i), "p2p_pieces_received_total", &[])
            .await?;
    }
    Ok(total)
}

/// [`pull_through_agent_and_check`] of `repo:v1` through agent `agent`, printing how long it
/// took whether or not it succeeded.
async fn pull_timed(
    cluster: &Cluster,
    agent: usize,
    image: &Image,
    repo: &str,
    dest: &Path,
) -> Result<()> {
    let started = Instant::now();
    let pulled = pull_through_agent_and_check(cluster, agent, image, repo, "v1", dest).await;
    let outcome = if pulled.is_ok() {
        "succeeded"
    } else {
        "failed"
    };
    eprintln!(
        "agent {agent}'s pull among {TARPITS} tarpits {outcome} after {:?}",
        started.elapsed()
    );
    pulled
}
