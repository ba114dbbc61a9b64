//! Peer-to-peer under faults, each with real processes: a peer that corrupts what it serves, an
//! agent killed with SIGKILL in the middle of a download, and the only origin killed while
//! agents are still downloading.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Result, ensure};
use serde_json::json;
use shoal_core::piece_length_for;
use shoal_tests::images::{generate, image_spec};
use shoal_tests::swarm::{
    ensure_same_image, fetch_blob, pull_through_agent_and_check, pull_through_agents_and_check,
    push, wait_until,
};
use shoal_tests::{Cluster, ClusterOptions, Component};

const MIB: u64 = 1 << 20;
/// Far more than a debug build needs to start moving pieces on a loaded 2-core machine.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(60);

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
