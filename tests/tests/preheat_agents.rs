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

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use shoal_client::ImageSpec;
use shoal_core::Digest;
use shoal_tests::cluster::sum_metric;
use shoal_tests::images::{generate, image_spec, layout_blobs};
use shoal_tests::ports::free_loopback_addr;
use shoal_tests::preheat::{
    SECRET, STARTUP_DEADLINE, cluster_over, index_entry, job_progress, metrics_text, poll_job,
    preheat_proxy_config, put_index, spawn_preheat_proxy, start_job, start_preheat_proxy, stored,
    wait_for_job,
};
use shoal_tests::process::{POLL_INTERVAL, Process, ProcessSpec};
use shoal_tests::swarm::{ensure_same_layout, skopeo_pull_through_agent};
use shoal_tests::tools::skopeo_push;
use shoal_tests::{Cluster, ClusterOptions, Component, ReferenceRegistry, binaries, configs};

const MIB: u64 = 1 << 20;

/// The first layer is larger than any manifest may be, so an agent asked to preheat it as a
/// manifest refuses it from its metainfo alone.
fn spec(seed: u64, tag: &str) -> ImageSpec {
    image_spec(vec![5 * MIB + 7, 90_000], seed, tag)
}

/// `preheat` settings for a test's proxy: `extra` over job retries short enough that a job
/// waiting for its image retries several times within the test.
fn quick_retries(extra: Value) -> Value {
    let mut preheat = json!({"retry_initial": "200ms", "retry_max": "1s"});
    configs::merge(&mut preheat, extra);
    preheat
}

#[tokio::test]
async fn a_job_preheats_the_image_on_the_chosen_agents_only() -> Result<()> {
    let http = shoal_service::client::builder().build()?;
    let registry = ReferenceRegistry::start().await?;
    let cluster = cluster_over(&registry, 1, 3).await?;
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
    let mut proxy = start_preheat_proxy(
        &cluster,
        listen,
        quick_retries(json!({"agents": {"members": agents, "count": 2}})),
    )
    .await?;
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
    let metrics = metrics_text(&http, &proxy_url).await?;
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
        .bearer_auth(SECRET)
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
    skopeo_pull_through_agent(&cluster, chosen, "fleet/app", "v1", &pulled).await?;
    ensure_same_layout(&image, &pulled)?;
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
    let cluster = cluster_over(&registry, 1, 0).await?;
    let work = tempfile::tempdir()?;
    // Generated but not pushed: until it is, every attempt fails to read the manifest.
    let image = generate(&work.path().join("later"), spec(0xd0ab, "v1")).await?;

    let listen = free_loopback_addr()?;
    let config =
        preheat_proxy_config(&cluster, listen, quick_retries(json!({"attempts": 10_000})))?;
    let log = cluster.dir().join("preheat-proxy.log");
    let mut proxy = spawn_preheat_proxy(&config, listen, log.clone()).await?;
    let proxy_url = format!("http://{listen}");
    let image_ref = format!("durable/app@{}", image.manifest_digest);
    let id = start_job(&http, &proxy_url, &image_ref).await?;
    poll_job(&http, &proxy_url, &id, "the job retried", |progress| {
        ensure!(progress["state"] != "succeeded", "{progress}");
        Ok(progress["attempts"].as_u64() >= Some(2) && !progress["last_error"].is_null())
    })
    .await?;

    proxy.kill()?;
    let mut proxy = spawn_preheat_proxy(&config, listen, log).await?;
    let resumed = job_progress(&http, &proxy_url, &id).await?;
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
    let metrics = metrics_text(&http, &proxy_url).await?;
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
    let cluster = Cluster::start(ClusterOptions {
        agent_overrides: json!({"preheat": {"secret": SECRET}}),
        ..ClusterOptions::with_agents(1)
    })
    .await?;
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
    let index_digest = put_index(
        &cluster.proxy_url(),
        "multi/app",
        "both",
        vec![
            index_entry(&other, "s390x-test"),
            index_entry(&ours, architecture),
        ],
    )
    .await?;

    let response = http
        .post(format!("{}/preheat", cluster.agent_url(0)))
        .bearer_auth(SECRET)
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
    // Agent 0 has the secret; agent 1 has none, so its preheat is off.
    let cluster = Cluster::start(ClusterOptions {
        agent_overrides_by_index: [(0, json!({"preheat": {"secret": SECRET}}))].into(),
        ..ClusterOptions::with_agents(2)
    })
    .await?;
    let agent = cluster.agent_url(0);
    let digest = Digest::of(b"no such manifest").to_string();
    let request = json!({"repository": "team/app", "digest": digest});
    // One request makes an agent fetch a whole image: never without the secret.
    for authorization in [None, Some("Bearer wrong"), Some("preheat-test-secre")] {
        let mut refused = http.post(format!("{agent}/preheat")).json(&request);
        if let Some(authorization) = authorization {
            refused = refused.header("authorization", authorization);
        }
        let status = refused.send().await?.status();
        ensure!(status == 401, "{authorization:?}: {status}");
    }
    let off = http
        .post(format!("{}/preheat", cluster.agent_url(1)))
        .bearer_auth(SECRET)
        .json(&request)
        .send()
        .await?;
    ensure!(
        off.status() == 403,
        "an agent without a secret: {}",
        off.status()
    );
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
            .bearer_auth(SECRET)
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
        .bearer_auth(SECRET)
        .json(&request)
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
    let unauthorized = cluster
        .metric_sum(
            component,
            "shoal_agent_preheat_requests_total",
            &[("result", "unauthorized")],
        )
        .await?;
    ensure!(
        unauthorized == 3.0,
        "{unauthorized} unauthorized requests counted"
    );
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
