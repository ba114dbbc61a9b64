//! Acceptance for the two halves of preheat beyond the origins: preheating into agents, and
//! jobs that survive a proxy restart. A CNCF registry (`docker-registry`) is the backend; each
//! test runs its own preheating proxy (real binary) in front of a real cluster.
//!
//! - With three agents and `preheat.agents.count: 2`, a job leaves exactly two agents holding
//!   every blob of the image and the third none; a pull through a preheated agent then receives
//!   no piece from anyone and is byte-identical.
//! - A job that cannot finish (its image is not in the backend yet) is still known after the
//!   proxy is killed with SIGKILL and started again on the same `state_dir`, and completes once
//!   the image is pushed.
//! - An agent asked to preheat an index fetches only the image for its own platform.
//! - Bad agent preheat requests are refused with 400 and fetch nothing; an invalid share stops
//!   the proxy at start with an error naming the field.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use shoal_client::ImageSpec;
use shoal_core::Digest;
use shoal_tests::cluster::sum_metric;
use shoal_tests::images::{generate, layout_blobs, layout_manifest_digest};
use shoal_tests::ports::free_loopback_addr;
use shoal_tests::process::{POLL_INTERVAL, Process, ProcessSpec, wait_until_ready};
use shoal_tests::tools::{skopeo, skopeo_push};
use shoal_tests::{Cluster, ClusterOptions, Component, ReferenceRegistry, binaries, configs};

const MIB: u64 = 1 << 20;
/// Fetching a few MiB into an origin and two agents is quick; this allows for a loaded 2-core
/// machine.
const PREHEAT_DEADLINE: Duration = Duration::from_secs(120);
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);

/// The first layer is larger than any manifest may be, so an agent asked to preheat it as a
/// manifest refuses it from its metainfo alone.
fn spec(seed: u64, tag: &str) -> ImageSpec {
    ImageSpec {
        layers: vec![5 * MIB + 7, 90_000],
        seed,
        tag: tag.to_owned(),
    }
}

/// A cluster whose origins pull through from `registry`, with `agents` agents.
async fn cluster_over(registry: &ReferenceRegistry, agents: usize) -> Result<Cluster> {
    Cluster::start(ClusterOptions {
        backend: json!({"registry": {"url": registry.url(), "manifest_wait": "60s"}}),
        ..ClusterOptions::with_agents(agents)
    })
    .await
}

/// The config of a preheating proxy in front of `cluster`: the cluster proxy's config with its
/// own listen address, job directory and `preheat` settings merged over it.
fn preheat_proxy_config(
    cluster: &Cluster,
    listen: std::net::SocketAddr,
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
            "preheat": {
                "state_dir": state_dir.display().to_string(),
                "retry_initial": "200ms",
                "retry_max": "1s",
            },
        }),
    );
    configs::merge(&mut config, json!({ "preheat": preheat }));
    let path = cluster.dir().join("preheat-proxy.yaml");
    std::fs::write(&path, configs::to_yaml(&config)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

async fn spawn_proxy(config: &Path, listen: std::net::SocketAddr, log: PathBuf) -> Result<Process> {
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

/// `POST /preheat` for `image`; returns the job id.
async fn start_job(http: &reqwest::Client, proxy: &str, image: &str) -> Result<String> {
    let response = http
        .post(format!("{proxy}/preheat"))
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

async fn progress(http: &reqwest::Client, proxy: &str, id: &str) -> Result<Value> {
    let url = format!("{proxy}/preheat/{id}");
    let response = http
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    ensure!(response.status() == 200, "GET {url}: {}", response.status());
    Ok(response.json().await?)
}

/// Polls the job until it finishes; fails unless it succeeded.
async fn wait_for_job(http: &reqwest::Client, proxy: &str, id: &str) -> Result<Value> {
    let start = Instant::now();
    loop {
        let progress = progress(http, proxy, id).await?;
        match progress["state"].as_str() {
            Some("succeeded") => return Ok(progress),
            Some("failed") => bail!("preheat job failed: {progress}"),
            _ if start.elapsed() > PREHEAT_DEADLINE => {
                bail!("preheat job unfinished after {PREHEAT_DEADLINE:?}: {progress}")
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Where a store keeps a committed blob: `store/blobs/sha256/<2 hex>/<hex>/data`.
fn stored(data_dir: &Path, digest: &Digest) -> bool {
    let hex = digest.hex();
    data_dir
        .join("store/blobs/sha256")
        .join(&hex[..2])
        .join(&hex)
        .join("data")
        .is_file()
}

#[tokio::test]
async fn a_job_preheats_the_image_on_the_chosen_agents_only() -> Result<()> {
    let http = shoal_service::client::builder().build()?;
    let registry = ReferenceRegistry::start().await?;
    let cluster = cluster_over(&registry, 3).await?;
    let work = tempfile::tempdir()?;
    let image = generate(&work.path().join("pushed"), spec(0xa6e1, "v1")).await?;
    skopeo_push(
        &image.dir,
        "v1",
        &format!("{}/fleet/app:v1", registry.addr()),
    )
    .await?;

    let agents: Vec<String> = (0..3)
        .map(|i| cluster.addr(Component::Agent(i)).to_string())
        .collect();
    let listen = free_loopback_addr()?;
    let config = preheat_proxy_config(
        &cluster,
        listen,
        json!({"agents": {"members": agents, "count": 2}}),
    )?;
    let mut proxy = spawn_proxy(&config, listen, cluster.dir().join("preheat-proxy.log")).await?;
    let proxy_url = format!("http://{listen}");

    let id = start_job(
        &http,
        &proxy_url,
        &format!("fleet/app@{}", image.manifest_digest),
    )
    .await?;
    let done = wait_for_job(&http, &proxy_url, &id)
        .await
        .with_context(|| cluster.log_tails())?;
    let phase = &done["agents"];
    let strings = |value: &Value| -> Vec<String> {
        value
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect()
    };
    let (selected, finished) = (strings(&phase["selected"]), strings(&phase["done"]));
    ensure!(selected.len() == 2, "two agents chosen: {done}");
    let mut sorted = finished.clone();
    sorted.sort();
    let mut expected = selected.clone();
    expected.sort();
    ensure!(sorted == expected, "both chosen agents are done: {done}");
    ensure!(strings(&phase["failed"]).is_empty(), "{done}");

    // The chosen two hold the manifest, config and layers; the third holds none of them.
    let mut blobs: Vec<Digest> = layout_blobs(&image.dir)?.into_keys().collect();
    blobs.push(image.manifest_digest);
    for (i, agent) in agents.iter().enumerate() {
        let data = cluster.agent_data_dir(i);
        let held = blobs.iter().filter(|d| stored(&data, d)).count();
        if selected.contains(agent) {
            ensure!(
                held == blobs.len(),
                "chosen agent {i} holds {held} of {} blobs",
                blobs.len()
            );
            let ok = cluster
                .metric_sum(
                    Component::Agent(i),
                    "shoal_agent_preheat_requests_total",
                    &[("result", "ok")],
                )
                .await?;
            ensure!(ok == 1.0, "agent {i} answered {ok} preheats");
        } else {
            ensure!(held == 0, "agent {i} was not chosen but holds {held} blobs");
        }
    }
    let metrics = reqwest::get(format!("{proxy_url}/metrics"))
        .await?
        .text()
        .await?;
    ensure!(
        sum_metric(&metrics, "shoal_proxy_preheat_agents_succeeded_total", &[]) == 2.0,
        "{metrics}"
    );

    // A layer's digest is no manifest: refused, and the (large) layer is not downloaded.
    let unchosen = agents
        .iter()
        .position(|a| !selected.contains(a))
        .context("an agent not chosen")?;
    let layer = image.layers[0].0;
    let refused = http
        .post(format!("{}/preheat", cluster.agent_url(unchosen)))
        .json(&json!({"repository": "fleet/app", "digest": layer.to_string()}))
        .send()
        .await?;
    ensure!(
        refused.status() == 404,
        "a layer as manifest: {}",
        refused.status()
    );

    // A pull through a preheated agent is served from its cache: no piece bytes from anyone.
    let chosen = agents
        .iter()
        .position(|a| selected.contains(a))
        .context("a chosen agent")?;
    let received = "shoal_p2p_bytes_received_total";
    let before = cluster
        .metric_sum(Component::Agent(chosen), received, &[])
        .await?;
    let pulled = work.path().join("pulled");
    skopeo([
        "copy",
        "--src-tls-verify=false",
        "--preserve-digests",
        &format!(
            "docker://{}/fleet/app:v1",
            cluster.addr(Component::Agent(chosen))
        ),
        &format!("oci:{}:pulled", pulled.display()),
    ])
    .await?;
    ensure!(layout_manifest_digest(&pulled)? == image.manifest_digest);
    ensure!(
        layout_blobs(&pulled)? == layout_blobs(&image.dir)?,
        "pulled blobs differ"
    );
    let after = cluster
        .metric_sum(Component::Agent(chosen), received, &[])
        .await?;
    ensure!(
        after == before,
        "the pull received {} piece bytes",
        after - before
    );
    let unchosen_received = cluster
        .metric_sum(Component::Agent(unchosen), received, &[])
        .await?;
    ensure!(
        unchosen_received == 0.0 && !stored(&cluster.agent_data_dir(unchosen), &layer),
        "the refused layer was downloaded ({unchosen_received} bytes)"
    );
    proxy.kill()?;
    Ok(())
}

#[tokio::test]
async fn an_unfinished_job_survives_a_killed_proxy_and_completes() -> Result<()> {
    let http = shoal_service::client::builder().build()?;
    let registry = ReferenceRegistry::start().await?;
    let cluster = cluster_over(&registry, 0).await?;
    let work = tempfile::tempdir()?;
    // Generated but not pushed: until it is, every attempt fails to read the manifest.
    let image = generate(&work.path().join("later"), spec(0xd0ab, "v1")).await?;

    let listen = free_loopback_addr()?;
    let config = preheat_proxy_config(&cluster, listen, json!({"attempts": 10_000}))?;
    let log = cluster.dir().join("preheat-proxy.log");
    let mut proxy = spawn_proxy(&config, listen, log.clone()).await?;
    let proxy_url = format!("http://{listen}");
    let image_ref = format!("durable/app@{}", image.manifest_digest);
    let id = start_job(&http, &proxy_url, &image_ref).await?;
    let start = Instant::now();
    loop {
        let progress = progress(&http, &proxy_url, &id).await?;
        ensure!(progress["state"] != "succeeded", "{progress}");
        if progress["attempts"].as_u64() >= Some(2) && !progress["last_error"].is_null() {
            break;
        }
        ensure!(
            start.elapsed() < PREHEAT_DEADLINE,
            "the job never retried: {progress}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }

    proxy.kill()?;
    let mut proxy = spawn_proxy(&config, listen, log).await?;
    let resumed = progress(&http, &proxy_url, &id).await?;
    ensure!(resumed["image"] == image_ref.as_str(), "{resumed}");
    ensure!(
        matches!(resumed["state"].as_str(), Some("queued" | "running")),
        "{resumed}"
    );

    skopeo_push(
        &image.dir,
        "v1",
        &format!("{}/durable/app:v1", registry.addr()),
    )
    .await?;
    let done = wait_for_job(&http, &proxy_url, &id)
        .await
        .with_context(|| cluster.log_tails())?;
    ensure!(
        done["blobs_total"] == 4 && done["blobs_done"] == 4,
        "manifest, config and two layers: {done}"
    );
    let origin = cluster.origin_data_dir_at(0);
    for digest in layout_blobs(&image.dir)?
        .keys()
        .chain([&image.manifest_digest])
    {
        ensure!(stored(&origin, digest), "the origin lacks {digest}");
    }
    let metrics = reqwest::get(format!("{proxy_url}/metrics"))
        .await?
        .text()
        .await?;
    ensure!(
        sum_metric(&metrics, "shoal_proxy_preheat_jobs_resumed_total", &[]) == 1.0,
        "{metrics}"
    );
    proxy.kill()?;
    Ok(())
}

#[tokio::test]
async fn an_index_is_preheated_for_the_agents_own_platform_only() -> Result<()> {
    let http = shoal_service::client::builder().build()?;
    let cluster = Cluster::start(ClusterOptions::with_agents(1)).await?;
    let work = tempfile::tempdir()?;
    let proxy = cluster.proxy_addr();
    let ours = generate(&work.path().join("ours"), spec(0x1d01, "ours")).await?;
    let other = generate(&work.path().join("other"), spec(0x1d02, "other")).await?;
    skopeo_push(&ours.dir, "ours", &format!("{proxy}/multi/app:ours")).await?;
    skopeo_push(&other.dir, "other", &format!("{proxy}/multi/app:other")).await?;
    // The agent's own platform in OCI names, and one no test machine has.
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let entry = |image: &shoal_client::Image, architecture: &str| {
        json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": image.manifest_digest.to_string(),
            "size": image.manifest_bytes.len(),
            "platform": {"architecture": architecture, "os": "linux"},
        })
    };
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(&other, "s390x-test"), entry(&ours, architecture)],
    }))?;
    let index_digest = Digest::of(&index);
    let response = http
        .put(format!(
            "{}/v2/multi/app/manifests/both",
            cluster.proxy_url()
        ))
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(index)
        .send()
        .await?;
    ensure!(response.status() == 201, "PUT index: {}", response.status());

    let response = http
        .post(format!("{}/preheat", cluster.agent_url(0)))
        .json(&json!({"repository": "multi/app", "digest": index_digest.to_string()}))
        .send()
        .await?;
    ensure!(
        response.status() == 200,
        "agent preheat: {}",
        response.status()
    );
    let summary: Value = response.json().await?;
    ensure!(
        summary["platform"] == format!("linux/{architecture}")
            && summary["images"] == 1
            && summary["blobs"] == 5,
        "the index, our manifest, config and two layers: {summary}"
    );
    let data = cluster.agent_data_dir(0);
    for digest in layout_blobs(&ours.dir)?.keys().chain([&index_digest]) {
        ensure!(stored(&data, digest), "the agent lacks {digest}");
    }
    for digest in layout_blobs(&other.dir)?.keys() {
        ensure!(
            !stored(&data, digest),
            "the other platform's {digest} was fetched"
        );
    }
    Ok(())
}

#[tokio::test]
async fn bad_preheat_requests_and_settings_are_refused() -> Result<()> {
    let http = shoal_service::client::builder().build()?;
    let cluster = Cluster::start(ClusterOptions::with_agents(1)).await?;
    let agent = cluster.agent_url(0);
    let digest = Digest::of(b"no such manifest").to_string();
    for (body, reason) in [
        ("{not json".to_owned(), "expected"),
        (
            json!({"repository": "team/app", "digest": "sha256:1234"}).to_string(),
            "digest",
        ),
        (
            json!({"repository": "Team/App", "digest": digest}).to_string(),
            "repository",
        ),
        (json!({"digest": digest}).to_string(), "repository"),
    ] {
        let response = http
            .post(format!("{agent}/preheat"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        ensure!(response.status() == 400, "{body}: {}", response.status());
        let answer: Value = response.json().await?;
        let message = answer["error"].as_str().unwrap_or_default();
        ensure!(message.contains(reason), "{body}: {answer}");
    }
    let unknown = http
        .post(format!("{agent}/preheat"))
        .json(&json!({"repository": "team/app", "digest": digest}))
        .send()
        .await?;
    ensure!(
        unknown.status() == 404,
        "unknown manifest: {}",
        unknown.status()
    );
    let component = Component::Agent(0);
    let refused = cluster
        .metric_sum(
            component,
            "shoal_agent_preheat_requests_total",
            &[("result", "bad_request")],
        )
        .await?;
    ensure!(refused == 4.0, "{refused} bad requests counted");
    let received = cluster
        .metric_sum(component, "shoal_p2p_bytes_received_total", &[])
        .await?;
    ensure!(received == 0.0, "refused requests fetched {received} bytes");
    let blobs = cluster.agent_data_dir(0).join("store/blobs/sha256");
    let held = std::fs::read_dir(&blobs).map_or(0, Iterator::count);
    ensure!(held == 0, "the agent's store holds {held} blob directories");

    // A share above 1 stops the proxy at start, naming the field.
    let listen = free_loopback_addr()?;
    let config = preheat_proxy_config(
        &cluster,
        listen,
        json!({"agents": {"members": [cluster.addr(component).to_string()], "share": 1.5}}),
    )?;
    let log = cluster.dir().join("bad-proxy.log");
    let mut process = Process::spawn(ProcessSpec {
        name: "bad-proxy".to_owned(),
        program: binaries::path("shoal-proxy"),
        args: vec!["--config".to_owned(), config.display().to_string()],
        env: Vec::new(),
        log: log.clone(),
    })?;
    let start = Instant::now();
    let status = loop {
        if let Some(status) = process.try_exit_status()? {
            break status;
        }
        ensure!(
            start.elapsed() < STARTUP_DEADLINE,
            "the proxy kept running with share 1.5\n{}",
            process.log_tail()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    ensure!(!status.success(), "the proxy exited 0 with share 1.5");
    let output = std::fs::read_to_string(&log)?;
    ensure!(output.contains("preheat.agents.share"), "{output}");
    Ok(())
}
