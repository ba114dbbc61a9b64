//! The `shoal-client` push/pull client against a real registry: first the CNCF reference
//! registry (proving the client), then the Shoal proxy (proving the cluster); and the
//! registry client's cross-repository mount against the reference registry.

use std::sync::Mutex;

use anyhow::{Result, ensure};
use shoal_client::{Progress, RegistryClient};
use shoal_tests::images::{generate, image_spec, layout_blobs};
use shoal_tests::{Cluster, ClusterOptions, ReferenceRegistry};

const MIB: u64 = 1 << 20;

/// Pushes a generated image twice (the second push must skip every blob) and pulls it back,
/// checking the layout and the progress events.
async fn push_and_pull(base_url: &str) -> Result<()> {
    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("image"),
        // Over one PATCH chunk, so the multi-chunk upload path runs.
        image_spec(vec![40 * MIB + 3, 2 * MIB, 0], 0xc1_1e47, "v1"),
    )
    .await?;
    let client = RegistryClient::new(base_url)?;

    let events = Mutex::new(Vec::new());
    let record = |event: Progress| events.lock().expect("progress lock").push(event);
    let digest = client
        .push_image(&image, "client/app", "v1", record)
        .await?;
    ensure!(digest == image.manifest_digest);
    let pushed = std::mem::take(&mut *events.lock().expect("progress lock"));
    for (blob, size) in image.blobs() {
        ensure!(
            pushed.contains(&Progress::Finished {
                digest: *blob,
                total: *size,
                skipped: false
            }),
            "no upload completion reported for {blob}"
        );
    }
    let big = image.layers[0];
    ensure!(
        pushed.contains(&Progress::Advanced {
            digest: big.0,
            done: big.1,
            total: big.1
        }),
        "upload progress never reached the end of the big layer"
    );

    client
        .push_image(&image, "client/app", "v1", record)
        .await?;
    let repushed = std::mem::take(&mut *events.lock().expect("progress lock"));
    ensure!(
        repushed
            .iter()
            .all(|event| matches!(event, Progress::Finished { skipped: true, .. })),
        "a second push must skip blobs the registry has: {repushed:?}"
    );

    let dest = work.path().join("pulled");
    let pulled = client.pull_image("client/app", "v1", &dest, record).await?;
    ensure!(pulled.manifest_digest == image.manifest_digest);
    ensure!(pulled.manifest_bytes == image.manifest_bytes);
    ensure!(pulled.blobs == image.blobs().copied().collect::<Vec<_>>());
    ensure!(layout_blobs(&dest)? == layout_blobs(&image.dir)?);
    let pulled_events = events.lock().expect("progress lock");
    ensure!(
        pulled_events.contains(&Progress::Advanced {
            digest: big.0,
            done: big.1,
            total: big.1
        }),
        "download progress never reached the end of the big layer"
    );
    Ok(())
}

#[tokio::test]
async fn the_client_pushes_and_pulls_against_the_reference_registry() -> Result<()> {
    let registry = ReferenceRegistry::start().await?;
    push_and_pull(&registry.url()).await
}

#[tokio::test]
async fn the_client_pushes_and_pulls_through_the_proxy() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    push_and_pull(&cluster.proxy_url()).await
}

#[tokio::test]
async fn a_blob_mounts_from_another_repository_of_the_reference_registry() -> Result<()> {
    use shoal_core::{Digest, Name};
    use shoal_registry_client::{Mount, RegistryClient as Registry};

    let registry = ReferenceRegistry::start().await?;
    let http = shoal_service::client::builder().build()?;
    let client = Registry::new(&registry.url(), http)?;
    let (source, target) = (Name::parse("mount/source")?, Name::parse("mount/target")?);
    let blob = bytes::Bytes::from(vec![7u8; 100_000]);
    let digest = Digest::of(&blob);
    let body = futures::stream::iter([Ok::<_, std::io::Error>(blob.clone())]);
    client
        .push_blob(&source, &digest, body, Some(blob.len() as u64))
        .await?;
    ensure!(client.head_blob(&target, &digest).await?.is_none());
    let mounted = client.mount_blob(&target, &digest, &source).await?;
    ensure!(matches!(mounted, Mount::Mounted), "{mounted:?}");
    ensure!(client.head_blob(&target, &digest).await? == Some(blob.len() as u64));
    Ok(())
}
