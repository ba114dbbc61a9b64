//! Acceptance: a CNCF registry (`docker-registry`) as the long-term backend of a whole cluster.
//! An image pushed straight to that registry with skopeo pulls through a Shoal agent, and an
//! image pushed through Shoal's proxy is written back into the registry, where skopeo reads it
//! without Shoal.

use anyhow::{Result, ensure};
use serde_json::json;
use shoal_client::{Image, ImageSpec};
use shoal_tests::images::{generate, image_spec, layout_blobs, layout_manifest_digest};
use shoal_tests::tools::{skopeo, skopeo_push};
use shoal_tests::{Cluster, ClusterOptions, Component, ReferenceRegistry};

const MIB: u64 = 1 << 20;

fn spec(seed: u64, tag: &str) -> ImageSpec {
    image_spec(vec![5 * MIB + 7, 40_000], seed, tag)
}

async fn push(image: &Image, tag: &str, remote: &str) -> Result<()> {
    skopeo_push(&image.dir, tag, remote).await
}

/// Pulls `remote` into a fresh layout and checks it is `image`, byte for byte.
async fn pull_and_compare(image: &Image, remote: &str, into: &std::path::Path) -> Result<()> {
    skopeo([
        "copy",
        "--src-tls-verify=false",
        "--preserve-digests",
        &format!("docker://{remote}"),
        &format!("oci:{}:pulled", into.display()),
    ])
    .await?;
    ensure!(
        layout_manifest_digest(into)? == image.manifest_digest,
        "{remote}: manifest digest differs"
    );
    let (sent, received) = (layout_blobs(&image.dir)?, layout_blobs(into)?);
    ensure!(
        sent == received,
        "{remote}: blobs differ\nsent:     {sent:?}\nreceived: {received:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_registry_backend_feeds_agents_and_receives_pushes() -> Result<()> {
    let upstream = ReferenceRegistry::start().await?;
    let cluster = Cluster::start(ClusterOptions {
        backend: json!({"registry": {"url": upstream.url(), "manifest_wait": "60s"}}),
        ..ClusterOptions::with_agents(1)
    })
    .await?;
    let work = tempfile::tempdir()?;

    // Pushed to the upstream registry only: Shoal has never seen it.
    let upstream_image = generate(&work.path().join("upstream"), spec(0x7e61, "v1")).await?;
    push(
        &upstream_image,
        "v1",
        &format!("{}/mirror/app:v1", upstream.addr()),
    )
    .await?;
    let agent = cluster.addr(Component::Agent(0));
    pull_and_compare(
        &upstream_image,
        &format!("{agent}/mirror/app:v1"),
        &work.path().join("via-agent"),
    )
    .await?;
    // The manifest, the config and both layers came out of the registry through the origin.
    let pulled_through = cluster
        .metric_sum(Component::Origin, "shoal_origin_pullthrough_total", &[])
        .await?;
    ensure!(
        pulled_through >= 4.0,
        "only {pulled_through} blobs were pulled through from the registry"
    );

    // Pushed through Shoal: the tag reaches the registry with the manifest and its blobs.
    let pushed = generate(&work.path().join("pushed"), spec(0x7e62, "v2")).await?;
    push(
        &pushed,
        "v2",
        &format!("{}/team/pushed:v2", cluster.proxy_addr()),
    )
    .await?;
    cluster.wait_for_writeback().await?;
    pull_and_compare(
        &pushed,
        &format!("{}/team/pushed:v2", upstream.addr()),
        &work.path().join("from-upstream"),
    )
    .await?;
    Ok(())
}
