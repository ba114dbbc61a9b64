//! Acceptance for preheat: a CNCF registry (`docker-registry`) is the backend of a three-origin
//! cluster and notifies a Shoal proxy of every push. After `skopeo copy` of an image into that
//! registry, every blob of the image and its metainfo are on every owning origin before anyone
//! pulls, and a pull through an agent then makes no origin fetch anything. A Harbor-style
//! payload for an index posted to the proxy does the same for the index and its image. Bad
//! webhook bodies are answered fast with 4xx or 200-and-ignored, and the proxy keeps running.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use shoal_client::{Image, ImageSpec};
use shoal_core::Digest;
use shoal_tests::cluster::sum_metric;
use shoal_tests::images::{generate, image_spec, layout_blobs};
use shoal_tests::ports::free_loopback_addr;
use shoal_tests::preheat::{
    PREHEAT_DEADLINE, blob_dir, cluster_over, index_entry, metrics_text, poll_job, put_index,
    start_job, start_preheat_proxy, wait_for_job,
};
use shoal_tests::reference_registry::RegistryAuth;
use shoal_tests::swarm::{ensure_same_layout, skopeo_pull_through_agent};
use shoal_tests::tools::skopeo_push;
use shoal_tests::{Cluster, ClusterOptions, Component, ReferenceRegistry};

const MIB: u64 = 1 << 20;
const ORIGINS: usize = 3;
const SECRET: &str = "preheat-test-secret";
/// The bound for answering a webhook.
const ANSWER_BOUND: Duration = Duration::from_secs(1);

fn spec(seed: u64, tag: &str) -> ImageSpec {
    image_spec(vec![3 * MIB + 11, 70_000], seed, tag)
}

async fn push(image: &Image, tag: &str, remote: &str) -> Result<()> {
    skopeo_push(&image.dir, tag, remote).await
}

/// Whether origin `i`'s own store holds `digest` with its metainfo (files on disk, so asking
/// does not make the origin fetch anything).
fn stored_with_metainfo(cluster: &Cluster, i: usize, digest: &Digest) -> bool {
    let dir = blob_dir(&cluster.origin_data_dir_at(i), digest);
    dir.join("data").is_file() && dir.join("metainfo.json").is_file()
}

fn ensure_on_every_origin(cluster: &Cluster, image: &Image) -> Result<()> {
    for digest in layout_blobs(&image.dir)?.keys() {
        for i in 0..ORIGINS {
            ensure!(
                stored_with_metainfo(cluster, i, digest),
                "origin {i} lacks {digest} or its metainfo"
            );
        }
    }
    Ok(())
}

async fn origin_fetches(cluster: &Cluster) -> Result<f64> {
    let mut total = 0.0;
    for i in 0..ORIGINS {
        total += cluster
            .metric_sum(Component::origin(i), "shoal_origin_pullthrough_total", &[])
            .await?;
    }
    Ok(total)
}

#[tokio::test]
async fn registry_pushes_are_preheated_on_every_owning_origin_before_any_pull() -> Result<()> {
    let http = shoal_service::client::builder().build()?;
    // The registry must know where to send notifications before the cluster (whose backend it
    // is) exists, so the receiving proxy gets an address picked now and starts last; until it
    // does, the registry retries.
    let preheat_listen = free_loopback_addr()?;
    let notifications = format!(
        "notifications:\n  events:\n    includereferences: true\n  endpoints:\n    \
         - name: shoal\n      url: http://{preheat_listen}/registry/notifications\n      \
         headers:\n        Authorization: [\"Bearer {SECRET}\"]\n      \
         timeout: 1s\n      threshold: 5\n      backoff: 1s\n"
    );
    let registry =
        ReferenceRegistry::start_configured(RegistryAuth::Anonymous, &notifications).await?;
    let cluster = cluster_over(&registry, ORIGINS, 1).await?;
    let mut preheat_proxy =
        start_preheat_proxy(&cluster, preheat_listen, json!({ "secret": SECRET })).await?;
    let preheat_url = format!("http://{preheat_listen}");
    let work = tempfile::tempdir()?;

    // Pushed straight into the registry: only its notification tells Shoal.
    let image = generate(&work.path().join("pushed"), spec(0x9e47, "v1")).await?;
    push(&image, "v1", &format!("{}/preheat/app:v1", registry.addr())).await?;
    let start = Instant::now();
    loop {
        let text = metrics_text(&http, &preheat_url).await?;
        let failed = sum_metric(&text, "shoal_proxy_preheat_jobs_failed_total", &[]);
        ensure!(
            failed == 0.0,
            "a preheat job failed\n{}",
            cluster.log_tails()
        );
        if sum_metric(&text, "shoal_proxy_preheat_jobs_succeeded_total", &[]) >= 1.0 {
            break;
        }
        ensure!(
            start.elapsed() < PREHEAT_DEADLINE,
            "no preheat job succeeded within {PREHEAT_DEADLINE:?}\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every blob (manifest, config, layers) is on all three owners with metainfo, before any pull.
    ensure_on_every_origin(&cluster, &image)?;

    // The first pull through an agent makes no origin fetch anything from the registry.
    let fetched_before = origin_fetches(&cluster).await?;
    let pulled = work.path().join("via-agent");
    skopeo_pull_through_agent(&cluster, 0, "preheat/app", "v1", &pulled).await?;
    ensure_same_layout(&image, &pulled)?;
    let fetched_after = origin_fetches(&cluster).await?;
    ensure!(
        fetched_after == fetched_before,
        "the pull made origins fetch {} blobs",
        fetched_after - fetched_before
    );

    // The direct API resolves the tag through the build-index and finds it all in place.
    let id = start_job(&http, &preheat_url, "preheat/app:v1").await?;
    let progress = wait_for_job(&http, &preheat_url, &id).await?;
    ensure!(
        progress["blobs_total"] == 4 && progress["blobs_done"] == 4,
        "manifest, config and two layers: {progress}"
    );
    ensure!(
        progress["manifest"] == image.manifest_digest.to_string(),
        "{progress}"
    );

    // Harbor's variant. The registry must not preheat this image itself: with the notified
    // proxy gone, its notifications fail (and are retried in the background).
    preheat_proxy.kill()?;
    let harbor_image = generate(&work.path().join("harbor"), spec(0x9e48, "v2")).await?;
    push(
        &harbor_image,
        "v2",
        &format!("{}/library/harbor:v2", registry.addr()),
    )
    .await?;
    // An index over it, so the job has to walk to the child manifest.
    let index_digest = put_index(
        &registry.url(),
        "library/harbor",
        "multi",
        vec![index_entry(&harbor_image, "amd64")],
    )
    .await?;
    for digest in layout_blobs(&harbor_image.dir)?
        .keys()
        .chain([&index_digest])
    {
        ensure!(
            !(0..ORIGINS).any(|i| stored_with_metainfo(&cluster, i, digest)),
            "{digest} reached an origin before the Harbor payload"
        );
    }
    // The cluster's own proxy runs without a secret.
    let harbor = json!({"Events": [{
        "Id": "8a0a5cc9-ba7a-4e0b-9f7c-2e5c7f6a1d11",
        "TimeStamp": 1_700_000_000,
        "Action": "push",
        "Target": {
            "MediaType": "application/vnd.oci.image.index.v1+json",
            "Digest": index_digest.to_string(),
            "Repository": "library/harbor",
            "Tag": "multi",
            "Url": format!("{}/v2/library/harbor/manifests/multi", registry.url()),
        }
    }]});
    let proxy_url = format!("http://{}", cluster.proxy_addr());
    let response = http
        .post(format!("{proxy_url}/registry/notifications"))
        .header("content-type", "application/json")
        .json(&harbor)
        .send()
        .await?;
    ensure!(
        response.status() == 200,
        "Harbor payload: {}",
        response.status()
    );
    let answer: Value = response.json().await?;
    let id = answer["jobs"][0]
        .as_str()
        .with_context(|| format!("no job in {answer}"))?;
    let progress = wait_for_job(&http, &proxy_url, id).await?;
    ensure!(
        progress["blobs_total"] == 5 && progress["blobs_done"] == 5,
        "index, manifest, config and two layers: {progress}"
    );
    ensure_on_every_origin(&cluster, &harbor_image)?;
    for i in 0..ORIGINS {
        ensure!(
            stored_with_metainfo(&cluster, i, &index_digest),
            "origin {i} lacks the index"
        );
    }
    Ok(())
}

/// POSTs `body` to the webhook and returns the status and body, failing when the answer takes
/// longer than the issue allows.
async fn post_timed(
    http: &reqwest::Client,
    url: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Result<(u16, Value)> {
    let start = Instant::now();
    let response = http
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    let took = start.elapsed();
    ensure!(
        took < ANSWER_BOUND,
        "answered {status} after {took:?}: {text}"
    );
    Ok((
        status,
        serde_json::from_str(&text).with_context(|| format!("body {text:?}"))?,
    ))
}

#[tokio::test]
async fn bad_webhook_bodies_are_answered_fast_and_change_nothing() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let http = shoal_service::client::builder().build()?;
    let url = format!("{}/registry/notifications", cluster.proxy_url());
    const V1: &str = "application/vnd.docker.distribution.events.v1+json";
    let digest = format!("sha256:{}", "5".repeat(64));
    let push = |media_type: &str, repository: &str| {
        serde_json::to_vec(&json!({"events": [{"action": "push", "target": {
            "mediaType": media_type, "repository": repository, "digest": digest}}]}))
        .unwrap()
    };
    let cases: Vec<(&str, &str, Vec<u8>, u16)> = vec![
        ("invalid JSON", V1, b"{\"events\": [".to_vec(), 400),
        ("not an envelope", V1, b"[1, 2]".to_vec(), 400),
        ("no events", V1, b"{\"Evnts\": []}".to_vec(), 400),
        (
            "no target",
            V1,
            b"{\"events\": [{\"action\": \"push\"}]}".to_vec(),
            400,
        ),
        (
            "no repository",
            V1,
            serde_json::to_vec(&json!({"events": [{"action": "push", "target": {
                "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest}}]}))?,
            400,
        ),
        (
            "bad repository",
            V1,
            push("application/vnd.oci.image.manifest.v1+json", "../etc"),
            400,
        ),
        ("over 1 MiB", V1, vec![b' '; 2 << 20], 413),
        (
            "form body",
            "application/x-www-form-urlencoded",
            push("x", "a/b"),
            415,
        ),
        (
            "unknown media type",
            V1,
            push("application/vnd.example.thing+json", "a/b"),
            200,
        ),
        (
            "blob push",
            V1,
            push("application/octet-stream", "a/b"),
            200,
        ),
    ];
    for (what, content_type, body, expected) in cases {
        let (status, answer) = post_timed(&http, &url, content_type, body).await?;
        ensure!(
            status == expected,
            "{what}: expected {expected}, got {status}: {answer}"
        );
        if status == 200 {
            ensure!(
                answer["ignored"] == 1 && answer["jobs"] == json!([]),
                "{what}: {answer}"
            );
        } else {
            ensure!(
                answer["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{what}: {answer}"
            );
        }
    }
    let queued = cluster
        .metric_sum(
            Component::Proxy,
            "shoal_proxy_preheat_jobs_queued_total",
            &[],
        )
        .await?;
    ensure!(queued == 0.0, "{queued} jobs queued from bad bodies");

    // A push for a repository nobody has is accepted (the registry said it exists) and its job
    // keeps failing in the background, reported by the progress endpoint.
    let (status, answer) = post_timed(
        &http,
        &url,
        "application/json",
        push(
            "application/vnd.docker.distribution.manifest.v2+json",
            "nobody/here",
        ),
    )
    .await?;
    ensure!(status == 200, "{answer}");
    let id = answer["jobs"][0].as_str().context("no job id")?.to_owned();
    poll_job(
        &http,
        &cluster.proxy_url(),
        &id,
        "the job reported its repository as not readable",
        |progress| {
            Ok(progress["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("not readable")))
        },
    )
    .await?;
    ensure!(cluster.is_running(Component::Proxy)?, "the proxy died");
    Ok(())
}
