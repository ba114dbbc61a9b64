//! Real container runtimes pull through an agent, each the way a node is configured in
//! production: docker straight from the agent as a registry, a private containerd through a
//! `hosts.toml` mirror (its requests carry `?ns=`), and podman through a `[[registry.mirror]]`
//! entry. The mirrored upstream name never resolves, so a pull can only succeed through the agent.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use shoal_client::Image;
use shoal_tests::containerd::Containerd;
use shoal_tests::images::{generate, image_spec};
use shoal_tests::swarm::push;
use shoal_tests::tools::{DockerImages, Podman, docker, docker_image_id};
use shoal_tests::{Cluster, ClusterOptions};

const MIB: u64 = 1 << 20;
/// A registry host under the reserved `.test` TLD: it never resolves, so there is no fallback.
const UPSTREAM: &str = "registry.shoal.test";

/// A cluster with one agent holding `repo:v1`, an image of two small layers.
async fn cluster_with_image(work: &Path, repo: &str, seed: u64) -> Result<(Cluster, Image)> {
    let cluster = Cluster::start(ClusterOptions::with_agents(1)).await?;
    let image = generate(
        &work.join("image"),
        image_spec(vec![6 * MIB, 150_000], seed, "v1"),
    )
    .await?;
    push(&cluster, &image, repo, "v1").await?;
    Ok((cluster, image))
}

#[tokio::test]
async fn docker_pulls_from_an_agent_as_a_registry() -> Result<()> {
    docker(["info"])
        .await
        .context("the Docker daemon must be running")?;
    let work = tempfile::tempdir()?;
    let (cluster, image) = cluster_with_image(work.path(), "runtimes/docker", 0x5e0_0310).await?;
    // 127.0.0.0/8 registries are plain HTTP for the Docker Engine without any configuration.
    let reference = format!("{}/runtimes/docker:v1", cluster.addr(agent()));
    let _cleanup = DockerImages(vec![reference.clone()]);
    docker(["pull", &reference]).await?;
    let id = docker_image_id(&reference).await?;
    ensure!(
        id == image.config.0.to_string(),
        "docker pulled image id {id}, expected the config digest {}",
        image.config.0
    );
    Ok(())
}

#[tokio::test]
async fn containerd_pulls_through_an_agent_as_a_hosts_toml_mirror() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (cluster, image) =
        cluster_with_image(work.path(), "runtimes/containerd", 0x5e0_0311).await?;
    let hosts = work.path().join("hosts");
    let host_dir = hosts.join(UPSTREAM);
    std::fs::create_dir_all(&host_dir)?;
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"https://{UPSTREAM}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            cluster.addr(agent())
        ),
    )?;
    let containerd = Containerd::start(&work.path().join("containerd")).await?;
    let reference = format!("{UPSTREAM}/runtimes/containerd:v1");
    containerd
        .pull_through_mirror(&hosts, &reference, &image.manifest_digest)
        .await?;
    Ok(())
}

#[tokio::test]
async fn podman_pulls_through_an_agent_as_a_registry_mirror() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (cluster, image) = cluster_with_image(work.path(), "runtimes/podman", 0x5e0_0312).await?;
    let podman = Podman::with_registries_conf(
        &work.path().join("podman"),
        &format!(
            "unqualified-search-registries = []\n\n[[registry]]\nlocation = \"{UPSTREAM}\"\n\n\
             [[registry.mirror]]\nlocation = \"{}\"\ninsecure = true\n",
            cluster.addr(agent())
        ),
    )?;
    let reference = format!("{UPSTREAM}/runtimes/podman:v1");
    podman.run(["pull", &reference]).await?;
    let id = podman
        .run(["image", "inspect", "--format", "{{.Id}}", &reference])
        .await?
        .stdout
        .trim()
        .to_owned();
    ensure!(
        id == image.config.0.hex(),
        "podman pulled image id {id}, expected the config digest {}",
        image.config.0
    );
    Ok(())
}

fn agent() -> shoal_tests::Component {
    shoal_tests::Component::Agent(0)
}
