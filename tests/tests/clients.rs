//! Real registry clients against the proxy: skopeo, the Docker Engine and podman push and pull
//! through Shoal, and every byte they get back matches what went in. The skopeo round trip also
//! runs against the CNCF registry, which tells a Shoal bug apart from a test bug.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use shoal_client::{Image, ImageSpec};
use shoal_tests::images::{generate, image_spec, layout_blobs, layout_manifest_digest};
use shoal_tests::tools::{
    DockerImages, Podman, docker, docker_image_id, ensure_docker_daemon_shares_our_loopback, skopeo,
};
use shoal_tests::{Cluster, ClusterOptions, ReferenceRegistry};

const MIB: u64 = 1 << 20;

/// skopeo pushes `image` with its digests preserved and pulls it back into a fresh layout; every
/// blob and the manifest digest must survive unchanged.
async fn skopeo_round_trip(registry: &str, image: &Image, tag: &str, work: &Path) -> Result<()> {
    let remote = format!("docker://{registry}/clients/skopeo:{tag}");
    skopeo([
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:{tag}", image.dir.display()),
        &remote,
    ])
    .await?;

    let pulled = work.join("pulled");
    skopeo([
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &remote,
        &format!("oci:{}:{tag}", pulled.display()),
    ])
    .await?;

    ensure!(
        layout_manifest_digest(&pulled)? == image.manifest_digest,
        "manifest digest changed on the round trip"
    );
    let sent = layout_blobs(&image.dir)?;
    let received = layout_blobs(&pulled)?;
    ensure!(
        sent == received,
        "blobs differ after the round trip\nsent:     {sent:?}\nreceived: {received:?}"
    );
    Ok(())
}

/// Three uncompressed layers, one of them over 64 MiB, so the big-blob paths are exercised.
fn large_image_spec(tag: &str) -> ImageSpec {
    image_spec(vec![64 * MIB + 12_345, 3 * MIB, 10_000], 0x5e0_0001, tag)
}

#[tokio::test]
async fn skopeo_copy_through_the_proxy_and_back_is_byte_identical() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let work = tempfile::tempdir()?;
    let image = generate(&work.path().join("image"), large_image_spec("v1")).await?;
    skopeo_round_trip(&cluster.proxy_addr().to_string(), &image, "v1", work.path()).await
}

#[tokio::test]
async fn skopeo_round_trip_against_the_reference_registry() -> Result<()> {
    let registry = ReferenceRegistry::start().await?;
    let work = tempfile::tempdir()?;
    let image = generate(&work.path().join("image"), large_image_spec("v1")).await?;
    skopeo_round_trip(&registry.addr().to_string(), &image, "v1", work.path()).await
}

#[tokio::test]
async fn docker_push_and_pull_through_the_proxy_keep_the_image_id() -> Result<()> {
    docker(["info"])
        .await
        .context("the Docker daemon must be running")?;
    ensure_docker_daemon_shares_our_loopback()?;
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("image"),
        image_spec(vec![6 * MIB, 200_000], 0x5e0_0002, "v1"),
    )
    .await?;

    // Unique names: the Docker Engine is shared by every test and every run on this machine.
    let unique = format!("{}-{}", std::process::id(), cluster.proxy_addr().port());
    let local = format!("shoal-test/docker-load:{unique}");
    let remote = format!("{}/clients/docker:{unique}", cluster.proxy_addr());
    let mut cleanup = DockerImages(Vec::new());

    let archive = work.path().join("image.tar");
    skopeo([
        "copy",
        &format!("oci:{}:v1", image.dir.display()),
        &format!("docker-archive:{}:{local}", archive.display()),
    ])
    .await?;
    cleanup.0.push(local.clone());
    docker(["load", "--input", &archive.display().to_string()]).await?;
    let loaded_id = docker_image_id(&local).await?;
    ensure!(
        loaded_id == image.config.0.to_string(),
        "docker load gave image id {loaded_id}, expected the config digest {}",
        image.config.0
    );

    cleanup.0.push(remote.clone());
    docker(["tag", &local, &remote]).await?;
    docker(["push", &remote]).await?;
    docker(["rmi", &local, &remote]).await?;
    ensure!(
        docker_image_id(&remote).await.is_err(),
        "the image must be gone locally before the pull"
    );

    docker(["pull", &remote]).await?;
    let pulled_id = docker_image_id(&remote).await?;
    ensure!(
        pulled_id == loaded_id,
        "pulled image id {pulled_id} differs from the pushed {loaded_id}"
    );
    Ok(())
}

#[tokio::test]
async fn podman_pulls_pushes_to_another_repo_and_pulls_back_the_same_image() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("image"),
        image_spec(vec![5 * MIB, 300_000], 0x5e0_0003, "v1"),
    )
    .await?;
    let registry = cluster.proxy_addr();
    skopeo([
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", image.dir.display()),
        &format!("docker://{registry}/clients/podman-source:v1"),
    ])
    .await?;

    let podman = Podman::new(&work.path().join("podman"))?;
    let source = format!("{registry}/clients/podman-source:v1");
    let copy = format!("{registry}/clients/podman-copy:v1");
    podman.run(["pull", "--tls-verify=false", &source]).await?;
    let id_of = |reference: String| {
        let podman = &podman;
        async move {
            Ok::<_, anyhow::Error>(
                podman
                    .run(["image", "inspect", "--format", "{{.Id}}", &reference])
                    .await?
                    .stdout
                    .trim()
                    .to_owned(),
            )
        }
    };
    let pulled_id = id_of(source.clone()).await?;
    ensure!(
        pulled_id == image.config.0.hex(),
        "podman pulled image id {pulled_id}, expected the config digest {}",
        image.config.0
    );

    podman
        .run(["push", "--tls-verify=false", &source, &copy])
        .await?;
    podman.run(["rmi", "--all", "--force"]).await?;
    podman.run(["pull", "--tls-verify=false", &copy]).await?;
    let copied_id = id_of(copy.clone()).await?;
    ensure!(
        copied_id == pulled_id,
        "image id changed through podman push and pull: {pulled_id} → {copied_id}"
    );

    // The registry's copy must reference the very config blob that went in.
    let raw = skopeo([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{copy}"),
    ])
    .await?;
    let manifest: serde_json::Value = serde_json::from_str(&raw.stdout)?;
    ensure!(
        manifest["config"]["digest"] == image.config.0.to_string(),
        "the pushed copy's manifest names config {}, expected {}",
        manifest["config"]["digest"],
        image.config.0
    );
    Ok(())
}
