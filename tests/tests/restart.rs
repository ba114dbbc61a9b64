//! Durability and shutdown: what a push acknowledged survives SIGKILL of every component, and
//! SIGTERM stops each component cleanly.

use anyhow::{Result, ensure};
use shoal_client::RegistryClient;
use shoal_tests::images::{generate, image_spec, layout_blobs};
use shoal_tests::v2::Registry;
use shoal_tests::{Cluster, ClusterOptions, Component};

const MIB: u64 = 1 << 20;

#[tokio::test]
async fn a_pushed_image_survives_sigkill_of_every_component() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("image"),
        image_spec(vec![12 * MIB + 5, MIB, 4096], 0xdead_0001, "v1"),
    )
    .await?;
    let client = RegistryClient::new(&cluster.proxy_url())?;
    for tag in ["v1", "v2"] {
        client
            .push_image(&image, "restart/app", tag, |_| {})
            .await?;
    }

    // No graceful shutdown: every acknowledged write must already be on disk.
    cluster.stop_all()?;
    for component in cluster.components() {
        cluster.restart(component).await?;
    }

    let client = RegistryClient::new(&cluster.proxy_url())?;
    for tag in ["v1", "v2"] {
        let dest = work.path().join(format!("pulled-{tag}"));
        let pulled = client.pull_image("restart/app", tag, &dest, |_| {}).await?;
        ensure!(pulled.manifest_digest == image.manifest_digest);
        ensure!(
            layout_blobs(&dest)? == layout_blobs(&image.dir)?,
            "{tag}: the pulled blobs differ from the pushed ones"
        );
    }

    let registry = Registry::new(&cluster.proxy_url())?;
    let tags: serde_json::Value = registry
        .http
        .get(registry.url("v2/restart/app/tags/list"))
        .send()
        .await?
        .json()
        .await?;
    ensure!(tags["tags"] == serde_json::json!(["v1", "v2"]), "{tags}");
    Ok(())
}

#[tokio::test]
async fn sigterm_stops_every_component_with_exit_status_zero() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    // Some traffic first, so shutdown has connections and state to deal with.
    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("image"),
        image_spec(vec![MIB], 0xdead_0002, "v1"),
    )
    .await?;
    RegistryClient::new(&cluster.proxy_url())?
        .push_image(&image, "restart/term", "v1", |_| {})
        .await?;

    for component in [Component::Proxy, Component::BuildIndex, Component::Origin] {
        let status = cluster.terminate(component)?;
        ensure!(
            status.success(),
            "{component} exited with {status} after SIGTERM\n{}",
            cluster.log_tails()
        );
    }
    Ok(())
}
