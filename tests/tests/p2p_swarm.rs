//! The reason Shoal exists: six agents pulling the same large image at once get most of it from
//! each other. Tracker, build-index, proxy, one origin and six agents run as separate processes;
//! the origin's own byte counters prove it did not serve six copies.

use std::path::Path;

use anyhow::{Result, ensure};
use futures::future::try_join_all;
use shoal_client::Image;
use shoal_tests::images::{generate, image_spec};
use shoal_tests::swarm::{
    ensure_same_layout, origin_bytes_served, push, skopeo_pull_through_agent,
};
use shoal_tests::{Cluster, ClusterOptions, Component};

const MIB: u64 = 1 << 20;
const AGENTS: usize = 6;
/// Six full copies from the origin would be 6×; anything up to 2.5× still means most bytes
/// moved between agents.
const MAX_ORIGIN_COPIES: f64 = 2.5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_agents_pulling_at_once_get_most_bytes_from_each_other() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::with_agents(AGENTS)).await?;
    let work = tempfile::tempdir()?;
    // Two layers, 264 MiB in all, in 256 KiB pieces: hundreds per layer to spread.
    let image = generate(
        &work.path().join("image"),
        image_spec(vec![200 * MIB, 64 * MIB + 4321], 0x5e0_0301, "v1"),
    )
    .await?;
    let image_size: u64 =
        image.blobs().map(|(_, size)| size).sum::<u64>() + image.manifest_bytes.len() as u64;
    ensure!(
        image_size >= 256 * MIB,
        "the image must be at least 256 MiB"
    );
    push(&cluster, &image, "swarm/app", "v1").await?;
    let served_before = origin_bytes_served(&cluster).await?;

    pull_through_every_agent(&cluster, AGENTS, &image, "swarm/app", work.path()).await?;

    let served = origin_bytes_served(&cluster).await? - served_before;
    let from_agents = cluster
        .agents_metric_sum("p2p_bytes_received_total", &[("from", "agent")])
        .await?;
    let from_origin = cluster
        .agents_metric_sum("p2p_bytes_received_total", &[("from", "origin")])
        .await?;
    eprintln!(
        "image {image_size} B; origin served {served} B ({:.2}×); agents received {from_agents} B \
         from agents and {from_origin} B from the origin",
        served / image_size as f64
    );
    ensure!(
        served <= MAX_ORIGIN_COPIES * image_size as f64,
        "the origin served {served} bytes for a {image_size}-byte image pulled by {AGENTS} \
         agents: more than {MAX_ORIGIN_COPIES}× means the agents did not share pieces"
    );
    ensure!(
        from_agents > 0.0,
        "no agent reports bytes received from another agent"
    );
    Ok(())
}

/// The same with `p2p.piece_stream` on every agent: pieces travel over the plain-TCP piece
/// stream beside gRPC, the origin's and the agents' sent from their page cache with
/// `sendfile`, and every pull is byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_on_the_piece_stream_pull_identical_images_from_each_other() -> Result<()> {
    const STREAM_AGENTS: usize = 3;
    let cluster = Cluster::start(ClusterOptions {
        agent_overrides: serde_json::json!({"p2p": {"piece_stream": true}}),
        ..ClusterOptions::with_agents(STREAM_AGENTS)
    })
    .await?;
    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("image"),
        image_spec(vec![48 * MIB, 16 * MIB + 99], 0x5e0_0302, "v1"),
    )
    .await?;
    push(&cluster, &image, "stream/app", "v1").await?;
    pull_through_every_agent(&cluster, STREAM_AGENTS, &image, "stream/app", work.path()).await?;
    let streamed = cluster
        .agents_metric_sum("p2p_stream_pieces_received_total", &[])
        .await?;
    let received = cluster
        .agents_metric_sum("p2p_pieces_received_total", &[])
        .await?;
    let zero_copy = cluster
        .metric_sum(Component::Origin, "p2p_bytes_served_zero_copy_total", &[])
        .await?;
    eprintln!(
        "{streamed} of {received} pieces over the stream; origin sent {zero_copy} B with sendfile"
    );
    ensure!(
        streamed > 0.0 && streamed >= received,
        "{streamed} of {received} pieces came over the piece stream"
    );
    ensure!(zero_copy > 0.0, "the origin sent nothing with sendfile");
    Ok(())
}

/// A real client (skopeo) per agent pulls `repo:v1`, all at once; each verifies digests as it
/// pulls, and every copy must be `image`'s layout.
async fn pull_through_every_agent(
    cluster: &Cluster,
    agents: usize,
    image: &Image,
    repo: &str,
    work: &Path,
) -> Result<()> {
    let dests: Vec<_> = (0..agents)
        .map(|i| work.join(format!("pulled-{i}")))
        .collect();
    let pulls = dests
        .iter()
        .enumerate()
        .map(|(i, dest)| skopeo_pull_through_agent(cluster, i, repo, "v1", dest));
    try_join_all(pulls).await?;
    for dest in &dests {
        ensure_same_layout(image, dest)?;
    }
    Ok(())
}
