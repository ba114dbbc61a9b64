//! What the preheat acceptance tests share: a cluster whose backend is a reference registry, a
//! second (preheating) proxy in front of it run from the cluster proxy's config, the proxy's job
//! API polled with a deadline, OCI indexes pushed by hand, and where a store keeps a blob.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use shoal_client::Image;
use shoal_core::Digest;

use crate::process::{Process, ProcessSpec, wait_until_ready};
use crate::{Cluster, ClusterOptions, Component, ReferenceRegistry, binaries, configs, v2};

/// Fetching a few MiB into the origins (and agents) is quick; this allows for a loaded 2-core
/// machine.
pub const PREHEAT_DEADLINE: Duration = Duration::from_secs(120);
/// A debug build starts in well under a second; the margin covers a loaded 2-core machine.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
/// How often a job's progress is asked for while waiting on it.
const JOB_POLL_INTERVAL: Duration = Duration::from_millis(100);
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";

/// The `preheat.secret` of the preheating proxies and of the agents of [`cluster_over`].
pub const SECRET: &str = "preheat-test-secret";

/// A cluster of `origins` origins and `agents` agents whose origins pull through from
/// `registry`; its agents take preheat requests with [`SECRET`].
pub async fn cluster_over(
    registry: &ReferenceRegistry,
    origins: usize,
    agents: usize,
) -> Result<Cluster> {
    Cluster::start(ClusterOptions {
        origins,
        backend: json!({"registry": {"url": registry.url(), "manifest_wait": "60s"}}),
        agent_overrides: json!({"preheat": {"secret": SECRET}}),
        ..ClusterOptions::with_agents(agents)
    })
    .await
}

/// Writes the config of a preheating proxy in front of `cluster` and returns its path: the
/// cluster proxy's config with its own listen address, job directory and [`SECRET`], and
/// `preheat` merged over its `preheat` section.
pub fn preheat_proxy_config(
    cluster: &Cluster,
    listen: SocketAddr,
    preheat: Value,
) -> Result<PathBuf> {
    let base = cluster.config_path(Component::Proxy);
    let text =
        std::fs::read_to_string(&base).with_context(|| format!("reading {}", base.display()))?;
    let mut config: Value = serde_yaml_ng::from_str(&text).context("parsing the proxy config")?;
    let state_dir = cluster.dir().join("preheat-proxy-jobs");
    configs::merge(
        &mut config,
        json!({
            "listen": listen.to_string(),
            "preheat": {"state_dir": state_dir.display().to_string(), "secret": SECRET},
        }),
    );
    configs::merge(&mut config, json!({ "preheat": preheat }));
    let path = cluster.dir().join("preheat-proxy.yaml");
    std::fs::write(&path, configs::to_yaml(&config)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Starts `shoal-proxy` with `config` (listening on `listen`, logging to `log`) and waits
/// until it answers `/health`.
pub async fn spawn_preheat_proxy(
    config: &Path,
    listen: SocketAddr,
    log: PathBuf,
) -> Result<Process> {
    let mut process = Process::spawn(ProcessSpec {
        name: "preheat-proxy".to_owned(),
        program: binaries::path("shoal-proxy"),
        args: vec!["--config".to_owned(), config.display().to_string()],
        env: vec![("RUST_LOG".to_owned(), "info".to_owned())],
        log,
    })?;
    wait_until_ready(
        &mut process,
        &format!("http://{listen}/health"),
        STARTUP_DEADLINE,
    )
    .await?;
    Ok(process)
}

/// [`preheat_proxy_config`] and [`spawn_preheat_proxy`] in one, logging into the cluster dir.
pub async fn start_preheat_proxy(
    cluster: &Cluster,
    listen: SocketAddr,
    preheat: Value,
) -> Result<Process> {
    let config = preheat_proxy_config(cluster, listen, preheat)?;
    spawn_preheat_proxy(&config, listen, cluster.dir().join("preheat-proxy.log")).await
}

/// `POST /preheat` for `image` on the proxy at `proxy` (with [`SECRET`]); returns the job id.
pub async fn start_job(http: &reqwest::Client, proxy: &str, image: &str) -> Result<String> {
    let response = http
        .post(format!("{proxy}/preheat"))
        .bearer_auth(SECRET)
        .json(&json!({ "image": image }))
        .send()
        .await?;
    ensure!(
        response.status() == 202,
        "POST /preheat: {}",
        response.status()
    );
    let answer: Value = response.json().await?;
    Ok(answer["id"].as_str().context("no job id")?.to_owned())
}

/// GETs `url` (with [`SECRET`], which a proxy without one ignores), failing unless it answers
/// 200.
async fn get_ok(http: &reqwest::Client, url: &str) -> Result<reqwest::Response> {
    let response = http
        .get(url)
        .bearer_auth(SECRET)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    ensure!(response.status() == 200, "GET {url}: {}", response.status());
    Ok(response)
}

/// `GET /preheat/{id}`: the job's progress.
pub async fn job_progress(http: &reqwest::Client, proxy: &str, id: &str) -> Result<Value> {
    Ok(get_ok(http, &format!("{proxy}/preheat/{id}"))
        .await?
        .json()
        .await?)
}

/// The `/metrics` text of the proxy at `proxy`.
pub async fn metrics_text(http: &reqwest::Client, proxy: &str) -> Result<String> {
    Ok(get_ok(http, &format!("{proxy}/metrics"))
        .await?
        .text()
        .await?)
}

/// Polls the job's progress until `done` says so and returns that progress; fails when `done`
/// fails, or with `what` and the last progress after [`PREHEAT_DEADLINE`].
pub async fn poll_job(
    http: &reqwest::Client,
    proxy: &str,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> Result<bool>,
) -> Result<Value> {
    let start = Instant::now();
    loop {
        let progress = job_progress(http, proxy, id).await?;
        if done(&progress)? {
            return Ok(progress);
        }
        ensure!(
            start.elapsed() < PREHEAT_DEADLINE,
            "{what} not within {PREHEAT_DEADLINE:?}: {progress}"
        );
        tokio::time::sleep(JOB_POLL_INTERVAL).await;
    }
}

/// Polls the job until it finishes; fails unless it succeeded.
pub async fn wait_for_job(http: &reqwest::Client, proxy: &str, id: &str) -> Result<Value> {
    poll_job(
        http,
        proxy,
        id,
        "preheat job finished",
        |progress| match progress["state"].as_str() {
            Some("succeeded") => Ok(true),
            Some("failed") => bail!("preheat job failed: {progress}"),
            _ => Ok(false),
        },
    )
    .await
}

/// The entry for `image` on `linux/{architecture}` in an OCI index.
pub fn index_entry(image: &Image, architecture: &str) -> Value {
    json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": image.manifest_digest.to_string(),
        "size": image.manifest_bytes.len(),
        "platform": {"architecture": architecture, "os": "linux"},
    })
}

/// PUTs an OCI index over `entries` as `repo:tag` into the registry at `base_url`; returns the
/// index's digest.
pub async fn put_index(
    base_url: &str,
    repo: &str,
    tag: &str,
    entries: Vec<Value>,
) -> Result<Digest> {
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": entries,
    }))?;
    v2::Registry::new(base_url)?
        .put_manifest(repo, tag, INDEX_MEDIA_TYPE, &index)
        .await?;
    Ok(Digest::of(&index))
}

/// Where the store of the component with data dir `data_dir` keeps committed blob `digest`:
/// `store/blobs/<algorithm>/<2 hex>/<hex>/`, holding `data` and `metainfo.json`.
pub fn blob_dir(data_dir: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    data_dir
        .join("store/blobs")
        .join(digest.algorithm().as_str())
        .join(&hex[..2])
        .join(&hex)
}

/// Whether the store under `data_dir` holds blob `digest` (read from disk, so asking does not
/// make the component fetch anything).
pub fn stored(data_dir: &Path, digest: &Digest) -> bool {
    blob_dir(data_dir, digest).join("data").is_file()
}
