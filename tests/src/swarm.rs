//! What the peer-to-peer acceptance tests share: pushing an image through the proxy, pulling it
//! (through one agent or several at once, checked against what was pushed) or one blob through
//! an agent (streamed and hashed, never held in memory), the bytes an origin has served by any
//! route, and polling a cluster condition with a deadline.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use shoal_client::{Image, PulledImage, RegistryClient};
use shoal_core::Digest;

use crate::cluster::{Cluster, Component};
use crate::images::{generate, image_spec, layout_blobs, layout_manifest_digest, stream_digest};
use crate::process::POLL_INTERVAL;
use crate::tools::skopeo;

/// Pushes `image` as `repo:tag` through the proxy (client crate).
pub async fn push(cluster: &Cluster, image: &Image, repo: &str, tag: &str) -> Result<()> {
    let client = RegistryClient::new(&cluster.proxy_url())?;
    let pushed = client
        .push_image(image, repo, tag, |_| {})
        .await
        .with_context(|| format!("pushing {repo}:{tag} through the proxy"))?;
    ensure!(
        pushed == image.manifest_digest,
        "the proxy acknowledged {pushed}, expected {}",
        image.manifest_digest
    );
    Ok(())
}

/// Generates a fresh image of one `layer_bytes` layer (its bytes drawn from `seed`) under
/// `work/<name>` and pushes it through the proxy as `bench/<name>:v1`; returns the image and
/// its repository (the benchmarks' pairs of pulls, each of a blob nobody holds yet).
pub async fn push_fresh_image(
    cluster: &Cluster,
    work: &Path,
    name: &str,
    layer_bytes: u64,
    seed: u64,
) -> Result<(Image, String)> {
    let image = generate(&work.join(name), image_spec(vec![layer_bytes], seed, "v1")).await?;
    let repo = format!("bench/{name}");
    push(cluster, &image, &repo, "v1").await?;
    Ok((image, repo))
}

/// Pulls `repo:tag` through agent `agent` into an OCI layout at `dest` (client crate; every blob
/// is verified against its digest on the way).
pub async fn pull_through_agent(
    cluster: &Cluster,
    agent: usize,
    repo: &str,
    tag: &str,
    dest: &Path,
) -> Result<PulledImage> {
    RegistryClient::new(&cluster.agent_url(agent))?
        .pull_image(repo, tag, dest, |_| {})
        .await
        .with_context(|| format!("pulling {repo}:{tag} through agent {agent}"))
}

/// Pulls `repo:tag` through agent `agent` with skopeo (a real registry client) into an OCI
/// layout at `dest`, digests preserved.
pub async fn skopeo_pull_through_agent(
    cluster: &Cluster,
    agent: usize,
    repo: &str,
    tag: &str,
    dest: &Path,
) -> Result<()> {
    let url = cluster.agent_url(agent);
    let host = url.trim_start_matches("http://");
    skopeo([
        "copy".to_owned(),
        "--preserve-digests".to_owned(),
        "--src-tls-verify=false".to_owned(),
        format!("docker://{host}/{repo}:{tag}"),
        format!("oci:{}:{tag}", dest.display()),
    ])
    .await
    .with_context(|| format!("skopeo pulling {repo}:{tag} through agent {agent}"))?;
    Ok(())
}

/// Pulls `repo:tag` through agent `agent` into `dest` (as [`pull_through_agent`]) and checks it
/// is exactly `image`.
pub async fn pull_through_agent_and_check(
    cluster: &Cluster,
    agent: usize,
    image: &Image,
    repo: &str,
    tag: &str,
    dest: &Path,
) -> Result<()> {
    let pulled = pull_through_agent(cluster, agent, repo, tag, dest).await?;
    ensure_same_image(image, &pulled)
}

/// Pulls `repo:tag` through every agent of `agents` at once, each into `work/pulled-<agent>`,
/// and checks that every copy is exactly `image`.
pub async fn pull_through_agents_and_check(
    cluster: &Cluster,
    agents: impl IntoIterator<Item = usize>,
    image: &Image,
    repo: &str,
    tag: &str,
    work: &Path,
) -> Result<()> {
    let pulls = agents.into_iter().map(|i| {
        let dest = work.join(format!("pulled-{i}"));
        async move { pull_through_agent(cluster, i, repo, tag, &dest).await }
    });
    for pulled in futures::future::try_join_all(pulls).await? {
        ensure_same_image(image, &pulled)?;
    }
    Ok(())
}

/// Checks that the layout at `pulled` holds exactly `image`: the same manifest digest and the
/// same blobs, each re-hashed from disk.
pub fn ensure_same_image(image: &Image, pulled: &PulledImage) -> Result<()> {
    ensure!(
        pulled.manifest_digest == image.manifest_digest,
        "pulled manifest {} differs from the pushed {}",
        pulled.manifest_digest,
        image.manifest_digest
    );
    ensure_same_blobs(image, &pulled.dir)
}

/// Checks that the OCI layout at `dir` (written by any client) holds exactly `image`: the same
/// manifest digest and the same blobs, each re-hashed from disk.
pub fn ensure_same_layout(image: &Image, dir: &Path) -> Result<()> {
    let manifest = layout_manifest_digest(dir)?;
    ensure!(
        manifest == image.manifest_digest,
        "{}: manifest {manifest} differs from the pushed {}",
        dir.display(),
        image.manifest_digest
    );
    ensure_same_blobs(image, dir)
}

fn ensure_same_blobs(image: &Image, dir: &Path) -> Result<()> {
    let sent = layout_blobs(&image.dir)?;
    let received = layout_blobs(dir)?;
    ensure!(
        sent == received,
        "{}: blobs differ from the pushed image\nsent:     {sent:?}\nreceived: {received:?}",
        dir.display()
    );
    Ok(())
}

/// GETs `repo`'s blob `digest` from the registry at `base_url`, streaming and hashing the body;
/// returns the digest and length of what arrived.
pub async fn fetch_blob(base_url: &str, repo: &str, digest: &Digest) -> Result<(Digest, u64)> {
    let url = format!("{base_url}/v2/{repo}/blobs/{digest}");
    let response = shoal_service::client::builder()
        .build()?
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("GET {url}"))?;
    stream_digest(response.bytes_stream())
        .await
        .with_context(|| format!("reading the body of GET {url}"))
}

/// Blob bytes the origin has sent by any route: its HTTP API plus pieces it seeded over gRPC.
pub async fn origin_bytes_served(cluster: &Cluster) -> Result<f64> {
    let http = cluster
        .metric_sum(Component::Origin, "origin_blob_bytes_served_total", &[])
        .await?;
    let p2p = cluster
        .metric_sum(Component::Origin, "p2p_bytes_served_total", &[])
        .await?;
    Ok(http + p2p)
}

/// Polls `check` until it returns true; fails with `what` and the cluster's logs after
/// `deadline`.
pub async fn wait_until(
    cluster: &Cluster,
    deadline: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> Result<bool>,
) -> Result<()> {
    let start = Instant::now();
    loop {
        if check().await? {
            return Ok(());
        }
        if start.elapsed() > deadline {
            bail!(
                "timed out after {deadline:?} waiting until {what}\n{}",
                cluster.log_tails()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
