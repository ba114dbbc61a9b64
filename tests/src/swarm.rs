//! What the peer-to-peer acceptance tests share: pushing an image through the proxy, pulling it
//! (through one agent or several at once, checked against what was pushed) or one blob through
//! an agent (streamed and hashed, never held in memory), the bytes an origin has served by any
//! route, polling a cluster condition with a deadline, and the benchmarks' pairs of pulls with
//! and without a fault.

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

/// A benchmark's pairs of pulls, `repeats` of them: in each, a pull without the fault it
/// measures, then one with it, each of a fresh one-layer image of `layer_bytes` that nobody
/// holds yet. Each image is generated under `work/<label>-<repeat>` (its bytes drawn from
/// `seed`, distinct per pull) and pushed through the proxy as `bench/<label>-<repeat>:v1`,
/// `labels` naming the pull without the fault and the one with it. `pull` then does the timed
/// pull, given the image, its repository, whether the fault is on and where to pull to, and
/// returns what it measured; one pair of those per repeat.
pub async fn paired_pulls<T>(
    cluster: &Cluster,
    work: &Path,
    repeats: u64,
    layer_bytes: u64,
    seed: u64,
    labels: [&str; 2],
    mut pull: impl AsyncFnMut(&Image, &str, bool, &Path) -> Result<T>,
) -> Result<Vec<[T; 2]>> {
    let mut rows = Vec::new();
    for repeat in 0..repeats {
        let mut one = async |faulty: bool| {
            let name = format!("{}-{repeat}", labels[usize::from(faulty)]);
            let seed = seed + repeat * 2 + u64::from(faulty);
            let image =
                generate(&work.join(&name), image_spec(vec![layer_bytes], seed, "v1")).await?;
            let repo = format!("bench/{name}");
            push(cluster, &image, &repo, "v1").await?;
            let dest = work.join(format!("pulled-{name}"));
            pull(&image, &repo, faulty, &dest).await
        };
        rows.push([one(false).await?, one(true).await?]);
    }
    Ok(rows)
}

/// Prints a benchmark's pairs of pulls as a Markdown table: per repeat the time of the pull
/// without the fault and with it (`columns` name them), their ratio, and the `extra` columns'
/// cells; then the median ratio.
pub fn print_pair_table(columns: [&str; 2], extra: &[&str], rows: &[([Duration; 2], Vec<String>)]) {
    let header: Vec<&str> = ["repeat", columns[0], columns[1], "ratio"]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    println!(
        "| {} |\n|{}",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    let mut ratios = Vec::new();
    for (repeat, ([clean, faulty], cells)) in rows.iter().enumerate() {
        let ratio = faulty.as_secs_f64() / clean.as_secs_f64();
        ratios.push(ratio);
        let cells: String = cells.iter().map(|cell| format!(" {cell} |")).collect();
        println!(
            "| {repeat} | {:.2} s | {:.2} s | {ratio:.2}× |{cells}",
            clean.as_secs_f64(),
            faulty.as_secs_f64()
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!("\nMedian ratio: {:.2}×", ratios[ratios.len() / 2]);
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
