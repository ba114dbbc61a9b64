//! Garbage collection against a real cluster (issue 12; `docs/gc.md`): three images sharing
//! layers, one deleted, with an untagged manifest kept by digest and a referrer; `shoal gc
//! --dry-run` changes nothing, `shoal gc` removes exactly the deleted image's own blobs from the
//! origin's store and from the backend (filesystem, and S3 on moto), logs a tombstone for each,
//! and every other image still pulls byte-identical with skopeo. An upload held open across a
//! sweep completes with its manifest; a manifest PUT during the sweep of its blob fails cleanly.
//! Blob DELETE: 405 while off; on, refused while referenced or within the grace period, 202
//! then 404. Under mutual TLS a run sweeps, and the origin's GC routes admit the build-index
//! alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};
use shoal_backends::Backend;
use shoal_core::Digest;
use shoal_tests::images::pull_identical;
use shoal_tests::moto::Moto;
use shoal_tests::pattern::Pattern;
use shoal_tests::tools::run_command;
use shoal_tests::v2::{Registry, expect_error};
use shoal_tests::{Cluster, ClusterOptions, Component, binaries};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// The build-index's `gc.grace` here: short, so the tests need not wait long for blobs to
/// become sweepable.
const GRACE: &str = "1s";
/// How long a test polls for a blob to become sweepable (the grace period, the condemnation
/// margin of 5 s, and room for a loaded machine): a deadline for the poll, not a timing claim.
const DEADLINE: Duration = Duration::from_secs(90);

fn options(backend: Value, tombstones: &Path) -> ClusterOptions {
    ClusterOptions {
        backend,
        build_index_overrides: json!({"gc": {
            "grace": GRACE,
            "tombstones": tombstones.display().to_string(),
        }}),
        ..ClusterOptions::default()
    }
}

/// An image as pushed: its manifest and every blob a pull of it brings (the manifest too).
struct Pushed {
    manifest: Digest,
    blobs: BTreeMap<Digest, u64>,
}

/// Pushes an image of `layers` with a config of its own (`label`) into `repo` under
/// `reference` (a tag; `None`: by digest only, untagged).
async fn push_image(
    registry: &Registry,
    repo: &str,
    reference: Option<&str>,
    label: &str,
    layers: &[&Pattern],
) -> Result<Pushed> {
    let config =
        json!({"architecture": "amd64", "os": "linux", "config": {"Labels": {"gc": label}}});
    let config = serde_json::to_vec(&config)?;
    let config_digest = registry.push_blob(repo, &config).await?;
    let mut blobs = BTreeMap::from([(config_digest, config.len() as u64)]);
    let mut descriptors = Vec::new();
    for layer in layers {
        let bytes = layer.range(0, LAYER_LEN);
        let digest = registry.push_blob(repo, &bytes).await?;
        blobs.insert(digest, bytes.len() as u64);
        descriptors.push(
            json!({"mediaType": OCI_LAYER, "digest": digest.to_string(), "size": bytes.len()}),
        );
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": descriptors,
    }))?;
    let digest = Digest::of(&manifest);
    let reference = reference.map_or_else(|| digest.to_string(), str::to_owned);
    registry
        .put_manifest(repo, &reference, OCI_MANIFEST, &manifest)
        .await?;
    blobs.insert(digest, manifest.len() as u64);
    Ok(Pushed {
        manifest: digest,
        blobs,
    })
}

/// Every test layer's length.
const LAYER_LEN: u64 = 96 * 1024;

/// Pulls `{proxy}/{reference}` with skopeo and checks that it is `image`, byte for byte.
async fn pull_image(proxy: &str, reference: &str, work: &Path, image: &Pushed) -> Result<()> {
    pull_identical(proxy, reference, work, image.manifest, &image.blobs).await
}

/// The digests `GET /gc/store` of the origin lists.
async fn store_blobs(cluster: &Cluster) -> Result<BTreeSet<Digest>> {
    let url = format!("http://{}/gc/store", cluster.origin_addr());
    let listed: Vec<Value> = reqwest::get(&url).await?.error_for_status()?.json().await?;
    listed
        .iter()
        .map(|blob| {
            Ok(Digest::parse(
                blob["digest"].as_str().context("no digest")?,
            )?)
        })
        .collect()
}

/// The blob digests under `blobs/` of a backend.
async fn backend_blobs(backend: &dyn Backend) -> Result<BTreeSet<Digest>> {
    let keys = backend.list(shoal_backends::BLOBS_PREFIX).await?;
    keys.iter()
        .map(|key| shoal_backends::parse_blob_key(key).with_context(|| format!("key {key}")))
        .collect()
}

/// `shoal gc` (with `--dry-run` when asked) against the cluster's build-index: its stdout.
async fn shoal_gc(cluster: &Cluster, dry_run: bool) -> Result<String> {
    let mut command = tokio::process::Command::new(binaries::path("shoal"));
    command.args([
        "gc",
        "--build-index",
        &cluster.build_index_addr().to_string(),
    ]);
    if dry_run {
        command.arg("--dry-run");
    }
    Ok(run_command(command).await?.stdout)
}

/// The digests a `shoal gc` report lists on lines starting with `verb`.
fn listed(report: &str, verb: &str) -> Result<BTreeSet<Digest>> {
    report
        .lines()
        .filter_map(|line| line.strip_prefix(verb))
        .map(|rest| {
            let digest = rest.split_whitespace().next().context("no digest")?;
            Ok(Digest::parse(digest)?)
        })
        .collect()
}

/// Runs dry runs until one would sweep exactly `doomed` (each blob's grace period, and the
/// condemnation margin, must pass first; until then they are reported kept). Fails on a dry run
/// that would sweep anything else.
async fn wait_until_sweepable(cluster: &Cluster, doomed: &BTreeSet<Digest>) -> Result<String> {
    let start = Instant::now();
    loop {
        let report = shoal_gc(cluster, true).await?;
        let would = listed(&report, "would sweep")?;
        ensure!(
            would.is_subset(doomed),
            "a dry run would sweep more:\n{report}"
        );
        if would == *doomed {
            return Ok(report);
        }
        if start.elapsed() > DEADLINE {
            bail!("{doomed:?} did not become sweepable:\n{report}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn delete_manifest(registry: &Registry, repo: &str, digest: &Digest) -> Result<()> {
    let url = registry.url(&format!("v2/{repo}/manifests/{digest}"));
    let response = registry.http.delete(url).send().await?;
    ensure!(
        response.status() == StatusCode::ACCEPTED,
        "delete {repo}@{digest}: {}",
        response.status()
    );
    Ok(())
}

/// Three images sharing layers, one deleted; what garbage collection must remove and keep.
async fn sweeps_exactly_the_deleted_images_own_blobs(
    cluster: &Cluster,
    backend: &dyn Backend,
    tombstones: &Path,
    work: &Path,
) -> Result<()> {
    let proxy = Registry::new(&cluster.proxy_url())?;
    let proxy_addr = cluster.proxy_addr().to_string();
    let [shared, ac, only_b, only_c, only_d] =
        [1u64, 2, 3, 4, 5].map(|seed| Pattern::new(0x6c00 + seed, LAYER_LEN));
    let a = push_image(&proxy, "gc/app", Some("a"), "a", &[&shared, &ac]).await?;
    let b = push_image(&proxy, "gc/app", Some("b"), "b", &[&shared, &only_b]).await?;
    let c = push_image(&proxy, "gc/app", Some("c"), "c", &[&shared, &ac, &only_c]).await?;
    // Untagged, kept by its record; and a referrer of `a`, recorded by digest.
    let d = push_image(&proxy, "gc/other", None, "d", &[&shared, &only_d]).await?;
    let signature = proxy
        .push_artifact(
            "gc/app",
            "application/example.sig",
            b"signed a",
            a.manifest,
            a.blobs[&a.manifest],
        )
        .await?;
    delete_manifest(&proxy, "gc/app", &b.manifest).await?;
    cluster.wait_for_writeback().await?;

    // b's own blobs: its manifest, its config and its one unshared layer.
    let doomed: BTreeSet<Digest> = b
        .blobs
        .keys()
        .filter(|blob| {
            ![&a, &c, &d]
                .iter()
                .any(|image| image.blobs.contains_key(blob))
        })
        .copied()
        .collect();
    ensure!(doomed.len() == 3, "b's own blobs: {doomed:?}");
    let (store_before, backend_before) =
        (store_blobs(cluster).await?, backend_blobs(backend).await?);
    ensure!(doomed.is_subset(&store_before) && doomed.is_subset(&backend_before));

    let dry = wait_until_sweepable(cluster, &doomed).await?;
    ensure!(dry.contains("dry run: nothing changed"), "{dry}");
    ensure!(
        store_blobs(cluster).await? == store_before,
        "a dry run changed the store"
    );
    ensure!(
        backend_blobs(backend).await? == backend_before,
        "a dry run changed the backend"
    );
    ensure!(!tombstones.exists(), "a dry run logged tombstones");

    let report = shoal_gc(cluster, false).await?;
    ensure!(
        listed(&report, "swept")? == doomed,
        "swept other blobs:\n{report}"
    );
    for blob in &doomed {
        let size = b.blobs[blob];
        ensure!(
            report.lines().any(|line| line.contains(&blob.to_string())
                && line.contains(&format!("({size} bytes)"))),
            "{blob} reported without its size {size}:\n{report}"
        );
    }
    let store_after = store_blobs(cluster).await?;
    let backend_after = backend_blobs(backend).await?;
    ensure!(
        store_after == &store_before - &doomed,
        "store after: {store_after:?}"
    );
    ensure!(
        backend_after == &backend_before - &doomed,
        "backend after: {backend_after:?}"
    );

    let log = std::fs::read_to_string(tombstones).context("reading the tombstone log")?;
    let lines: Vec<Value> = log
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let logged: BTreeSet<Digest> = lines
        .iter()
        .map(|line| {
            Ok(Digest::parse(
                line["digest"].as_str().context("no digest")?,
            )?)
        })
        .collect::<Result<_>>()?;
    ensure!(logged == doomed && lines.len() == 3, "tombstones: {log}");
    for line in &lines {
        let digest = Digest::parse(line["digest"].as_str().unwrap_or_default())?;
        ensure!(line["size"] == b.blobs[&digest], "{line}");
        ensure!(
            line["reason"] == "unreferenced" && line["run"].is_string() && line["time"].is_string(),
            "{line}"
        );
    }
    let swept = cluster
        .metric_sum(
            shoal_tests::Component::BuildIndex,
            "build_index_gc_blobs_swept_total",
            &[],
        )
        .await?;
    ensure!(swept == 3.0, "blobs swept metric: {swept}");
    let reclaimed = cluster
        .metric_sum(
            shoal_tests::Component::BuildIndex,
            "build_index_gc_reclaimed_bytes_total",
            &[("location", "backend")],
        )
        .await?;
    let doomed_bytes: u64 = doomed.iter().map(|blob| b.blobs[blob]).sum();
    ensure!(
        reclaimed == doomed_bytes as f64,
        "bytes reclaimed from the backend: {reclaimed}"
    );

    pull_image(&proxy_addr, "gc/app:a", work, &a).await?;
    pull_image(&proxy_addr, "gc/app:c", work, &c).await?;
    pull_image(&proxy_addr, &format!("gc/other@{}", d.manifest), work, &d).await?;
    let referrers = proxy.referrers("gc/app", a.manifest, None).await?;
    ensure!(referrers == [signature], "referrers of a: {referrers:?}");

    // Nothing unreferenced is left.
    let again = shoal_gc(cluster, false).await?;
    ensure!(
        listed(&again, "swept")?.is_empty(),
        "a second run swept more:\n{again}"
    );
    Ok(())
}

#[tokio::test]
async fn gc_sweeps_exactly_the_deleted_images_own_blobs_from_the_filesystem_backend() -> Result<()>
{
    let work = tempfile::tempdir()?;
    let tombstones = work.path().join("tombstones.jsonl");
    let cluster = Cluster::start(options(Value::Null, &tombstones)).await?;
    let backend = shoal_backends::FilesystemBackend::new(cluster.backend_dir())?;
    sweeps_exactly_the_deleted_images_own_blobs(&cluster, &backend, &tombstones, work.path()).await
}

#[tokio::test]
async fn gc_sweeps_exactly_the_deleted_images_own_blobs_from_s3() -> Result<()> {
    let work = tempfile::tempdir()?;
    let tombstones = work.path().join("tombstones.jsonl");
    let moto = Moto::start("shoal-gc").await?;
    let cluster = Cluster::start(options(moto.backend_config()?, &tombstones)).await?;
    let backend = moto.backend()?;
    sweeps_exactly_the_deleted_images_own_blobs(&cluster, &backend, &tombstones, work.path()).await
}

/// `POST /v1/gc` (a run that sweeps) on the build-index at `base`, through `http`: the report.
async fn collect(http: &reqwest::Client, base: &str) -> Result<Value> {
    let response = http.post(format!("{base}/v1/gc")).send().await?;
    ensure!(
        response.status() == StatusCode::OK,
        "POST /v1/gc: {}",
        response.status()
    );
    Ok(response.json().await?)
}

/// Runs collections until one sweeps `orphan` (its grace period and the condemnation margin
/// must pass first), then checks that it kept every blob of `kept` and that the proxy no
/// longer has the orphan.
async fn sweep_orphan_keeping(
    http: &reqwest::Client,
    base: &str,
    proxy: &Registry,
    orphan: Digest,
    kept: &BTreeMap<Digest, u64>,
) -> Result<()> {
    let start = Instant::now();
    let report = loop {
        let report = collect(http, base).await?;
        if swept_in(&report).contains(&orphan.to_string()) {
            break report;
        }
        ensure!(
            start.elapsed() < DEADLINE,
            "the orphan was never swept: {report}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    ensure_kept(&report, kept)?;
    let status = blob_status(proxy, orphan).await?;
    ensure!(
        status == StatusCode::NOT_FOUND,
        "orphan after the sweep: {status}"
    );
    Ok(())
}

/// Fails when `report` swept a blob of `kept`.
fn ensure_kept(report: &Value, kept: &BTreeMap<Digest, u64>) -> Result<()> {
    let swept = swept_in(report);
    ensure!(
        kept.keys().all(|blob| !swept.contains(&blob.to_string())),
        "a referenced blob was swept: {report}"
    );
    Ok(())
}

/// The status of `HEAD` of `digest` as a blob through `registry` (any repository will do:
/// blobs are shared).
async fn blob_status(registry: &Registry, digest: Digest) -> Result<StatusCode> {
    let url = registry.url(&format!("v2/gc/any/blobs/{digest}"));
    Ok(registry.http.head(url).send().await?.status())
}

fn swept_in(report: &Value) -> BTreeSet<String> {
    report["swept"]
        .as_array()
        .map(|swept| {
            swept
                .iter()
                .filter_map(|b| b["digest"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn an_upload_held_open_across_a_sweep_completes_and_a_put_racing_a_sweep_fails_cleanly()
-> Result<()> {
    let work = tempfile::tempdir()?;
    let cluster =
        Cluster::start(options(Value::Null, &work.path().join("tombstones.jsonl"))).await?;
    let proxy = Registry::new(&cluster.proxy_url())?;
    let http = &proxy.http;

    // An orphan, so the sweep below has something to do; and an upload left half done.
    let orphan = proxy.push_blob("gc/held", b"an orphan blob").await?;
    let layer = Pattern::new(0x6d01, LAYER_LEN);
    let bytes = layer.range(0, LAYER_LEN);
    let half = bytes.len() / 2;
    let session = proxy.start_upload("gc/held").await?;
    let patched = http
        .patch(session)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header("content-range", format!("0-{}", half - 1))
        .body(bytes[..half].to_vec())
        .send()
        .await?;
    ensure!(
        patched.status() == StatusCode::ACCEPTED,
        "first chunk: {}",
        patched.status()
    );
    let session = proxy.location(&patched)?;

    let build_index = format!("http://{}", cluster.build_index_addr());
    sweep_orphan_keeping(http, &build_index, &proxy, orphan, &BTreeMap::new()).await?;

    // The held upload completes, and so does its image.
    let digest = Digest::of(&bytes);
    let mut commit = session;
    commit
        .query_pairs_mut()
        .append_pair("digest", &digest.to_string());
    let committed = http
        .put(commit)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header("content-range", format!("{half}-{}", bytes.len() - 1))
        .body(bytes[half..].to_vec())
        .send()
        .await?;
    ensure!(
        committed.status() == StatusCode::CREATED,
        "commit after the sweep: {}",
        committed.status()
    );
    let image = push_image(&proxy, "gc/held", Some("v1"), "held", &[&layer]).await?;
    pull_image(
        &cluster.proxy_addr().to_string(),
        "gc/held:v1",
        work.path(),
        &image,
    )
    .await?;
    ensure_kept(&collect(http, &build_index).await?, &image.blobs)?;

    // A manifest PUT while its blob is being swept: a collector (this test, speaking the
    // origin's protocol) condemns the blob, and the PUT fails cleanly, recording nothing.
    let racing = proxy.push_blob("gc/held", b"a blob being swept").await?;
    let config = proxy.push_blob("gc/held", br#"{"os":"linux"}"#).await?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.to_string(), "size": 14},
        "layers": [{"mediaType": OCI_LAYER, "digest": racing.to_string(), "size": 18}],
    }))?;
    let origin = format!("http://{}", cluster.origin_addr());
    let condemn = |window_ms: u64| {
        http.post(format!("{origin}/gc/blobs/{racing}/condemn"))
            .json(&json!({"run": "test-run", "untouched_for_ms": window_ms}))
            .send()
    };
    let answer: Value = condemn(0).await?.error_for_status()?.json().await?;
    ensure!(answer["verdict"] == "condemned", "{answer}");
    let put = http
        .put(proxy.url("v2/gc/held/manifests/racing"))
        .header(CONTENT_TYPE, OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await?;
    expect_error(put, 400, "MANIFEST_BLOB_UNKNOWN").await?;
    let head = http
        .head(proxy.url(&format!("v2/gc/held/manifests/{}", Digest::of(&manifest))))
        .header(reqwest::header::ACCEPT, OCI_MANIFEST)
        .send()
        .await?;
    ensure!(
        head.status() == StatusCode::NOT_FOUND,
        "a refused manifest was recorded: {}",
        head.status()
    );
    let released = http
        .delete(format!("{origin}/gc/blobs/{racing}/condemn?run=test-run"))
        .send()
        .await?;
    ensure!(
        released.status() == StatusCode::NO_CONTENT,
        "release: {}",
        released.status()
    );
    // Bad input to the collector and the origin is refused and changes nothing.
    let bad = http
        .post(format!("{build_index}/v1/gc?dry_run=maybe"))
        .send()
        .await?;
    expect_internal_error(bad, 400, "SIZE_INVALID").await?;
    let bad = http
        .delete(format!("{build_index}/v1/blobs/sha256:short"))
        .send()
        .await?;
    expect_internal_error(bad, 400, "DIGEST_INVALID").await?;
    let bad = http
        .delete(format!("{origin}/gc/blobs/{racing}?run=another-run"))
        .send()
        .await?;
    expect_internal_error(bad, 403, "DENIED").await?;
    let bad = http
        .post(format!("{origin}/gc/blobs/{racing}/condemn"))
        .header(CONTENT_TYPE, "application/json")
        .body("{not json")
        .send()
        .await?;
    expect_internal_error(bad, 400, "NAME_INVALID").await?;
    let status = blob_status(&proxy, racing).await?;
    ensure!(status == StatusCode::OK, "after bad input: {status}");
    // Released, the same PUT succeeds; its touch now keeps the blob from the next condemnation.
    proxy
        .put_manifest("gc/held", "racing", OCI_MANIFEST, &manifest)
        .await?;
    let answer: Value = condemn(60_000).await?.error_for_status()?.json().await?;
    ensure!(
        answer["verdict"] == "kept",
        "a just-touched blob was condemned: {answer}"
    );
    Ok(())
}

/// Asserts an internal API's error (`{"code","message"}`) of `status`.
async fn expect_internal_error(response: reqwest::Response, status: u16, code: &str) -> Result<()> {
    let url = response.url().clone();
    let actual = response.status();
    let body: Value = response.json().await.unwrap_or_default();
    ensure!(
        actual.as_u16() == status && body["code"] == code,
        "{url}: expected {status} {code}, got {actual} {body}"
    );
    Ok(())
}

async fn delete_blob(registry: &Registry, repo: &str, digest: &str) -> Result<reqwest::Response> {
    let url = registry.url(&format!("v2/{repo}/blobs/{digest}"));
    Ok(registry.http.delete(url).send().await?)
}

#[tokio::test]
async fn blob_delete_is_off_by_default_and_on_refuses_referenced_blobs() -> Result<()> {
    let work = tempfile::tempdir()?;
    let tombstones = work.path().join("tombstones.jsonl");
    let off = Cluster::start(options(Value::Null, &tombstones)).await?;
    let proxy = Registry::new(&off.proxy_url())?;
    let blob = proxy
        .push_blob("gc/del", b"kept while deletes are off")
        .await?;
    expect_error(
        delete_blob(&proxy, "gc/del", &blob.to_string()).await?,
        405,
        "UNSUPPORTED",
    )
    .await?;
    let status = blob_status(&proxy, blob).await?;
    ensure!(status == StatusCode::OK, "after a refused delete: {status}");
    drop(off);

    let on = Cluster::start(ClusterOptions {
        proxy_overrides: json!({"storage": {"delete": {"enabled": true}}}),
        ..options(Value::Null, &tombstones)
    })
    .await?;
    let proxy = Registry::new(&on.proxy_url())?;
    let layer = Pattern::new(0x6e01, LAYER_LEN);
    let image = push_image(&proxy, "gc/del", Some("v1"), "del", &[&layer]).await?;
    let layer_digest = layer.digest();
    on.wait_for_writeback().await?;

    expect_error(
        delete_blob(&proxy, "gc/del", "sha256:short").await?,
        400,
        "DIGEST_INVALID",
    )
    .await?;
    let refused = delete_blob(&proxy, "gc/del", &layer_digest.to_string()).await?;
    let (status, body) = (refused.status(), refused.text().await?);
    ensure!(
        status == StatusCode::FORBIDDEN,
        "delete of a referenced blob: {status} {body}"
    );
    ensure!(
        body.contains("DENIED") && body.contains(&image.manifest.to_string()),
        "the refusal names the manifest: {body}"
    );

    delete_manifest(&proxy, "gc/del", &image.manifest).await?;
    // Unreferenced now, but touched by the manifest PUT a moment ago: refused until the grace
    // period (and the condemnation margin) is over, then deleted.
    let start = Instant::now();
    loop {
        let response = delete_blob(&proxy, "gc/del", &layer_digest.to_string()).await?;
        match response.status() {
            StatusCode::ACCEPTED => break,
            StatusCode::FORBIDDEN if start.elapsed() < DEADLINE => {
                let body = response.text().await?;
                ensure!(
                    body.contains("within"),
                    "refused for another reason: {body}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            status => bail!("blob delete: {status} {}", response.text().await?),
        }
    }
    let status = blob_status(&proxy, layer_digest).await?;
    ensure!(
        status == StatusCode::NOT_FOUND,
        "after the delete: {status}"
    );
    ensure!(
        !backend_blobs(&shoal_backends::FilesystemBackend::new(on.backend_dir())?)
            .await?
            .contains(&layer_digest),
        "the backend still has the deleted blob"
    );
    expect_error(
        delete_blob(&proxy, "gc/del", &layer_digest.to_string()).await?,
        404,
        "BLOB_UNKNOWN",
    )
    .await?;
    // One tombstone: the 404 delete logged nothing.
    let log = std::fs::read_to_string(&tombstones)?;
    let lines: Vec<&str> = log.lines().collect();
    ensure!(
        lines.len() == 1
            && lines[0].contains(&layer_digest.to_string())
            && lines[0].contains("blob delete"),
        "{log}"
    );
    Ok(())
}

/// A client trusting the cluster CA that presents `component`'s certificate (or none).
fn tls_client(cluster: &Cluster, component: Option<Component>) -> Result<reqwest::Client> {
    let builder = match component {
        Some(component) => {
            let loaded = shoal_tls::LoadedTls::load(&cluster.tls_config(component))?;
            shoal_service::client::cluster_builder(Some(&loaded), shoal_tls::Roles::ANY)
        }
        None => {
            let ca = std::fs::read(cluster.ca_dir().join("ca.crt"))?;
            shoal_service::client::builder().tls_certs_only([reqwest::Certificate::from_pem(&ca)?])
        }
    };
    Ok(builder.timeout(Duration::from_secs(30)).build()?)
}

#[tokio::test(flavor = "multi_thread")]
async fn gc_runs_under_mutual_tls_and_its_origin_routes_admit_the_build_index_alone() -> Result<()>
{
    let work = tempfile::tempdir()?;
    let cluster = Cluster::start(ClusterOptions {
        tls: true,
        ..options(Value::Null, &work.path().join("tombstones.jsonl"))
    })
    .await?;
    let proxy = Registry {
        http: tls_client(&cluster, None)?,
        base: reqwest::Url::parse(&cluster.proxy_url())?,
    };
    let orphan = proxy
        .push_blob("gc/tls", b"an orphan under mutual TLS")
        .await?;
    let layer = Pattern::new(0x6f01, LAYER_LEN);
    let image = push_image(&proxy, "gc/tls", Some("v1"), "tls", &[&layer]).await?;

    let as_build_index = tls_client(&cluster, Some(Component::BuildIndex))?;
    let build_index = format!("https://{}", cluster.build_index_addr());
    sweep_orphan_keeping(&as_build_index, &build_index, &proxy, orphan, &image.blobs).await?;

    // The origin's GC routes refuse every role but the build-index.
    let store = format!("https://{}/gc/store", cluster.origin_addr());
    let as_proxy = tls_client(&cluster, Some(Component::Proxy))?;
    // (The access layer answers in the Registry V2 error shape.)
    expect_error(as_proxy.get(&store).send().await?, 403, "DENIED").await?;
    let listed = as_build_index.get(&store).send().await?;
    ensure!(
        listed.status() == StatusCode::OK,
        "GET /gc/store as the build-index: {}",
        listed.status()
    );
    Ok(())
}

#[tokio::test]
async fn scheduled_runs_sweep_an_orphan_without_being_asked() -> Result<()> {
    let work = tempfile::tempdir()?;
    let mut options = options(Value::Null, &work.path().join("tombstones.jsonl"));
    shoal_tests::configs::merge(
        &mut options.build_index_overrides,
        json!({"gc": {"interval": "1s"}}),
    );
    let cluster = Cluster::start(options).await?;
    let proxy = Registry::new(&cluster.proxy_url())?;
    let orphan = proxy
        .push_blob("gc/sched", b"swept by the schedule")
        .await?;
    let layer = Pattern::new(0x7001, LAYER_LEN);
    let image = push_image(&proxy, "gc/sched", Some("v1"), "sched", &[&layer]).await?;
    let start = Instant::now();
    while blob_status(&proxy, orphan).await? != StatusCode::NOT_FOUND {
        ensure!(
            start.elapsed() < DEADLINE,
            "no scheduled run swept the orphan"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for blob in image.blobs.keys() {
        ensure!(
            blob_status(&proxy, *blob).await? == StatusCode::OK,
            "{blob} was swept"
        );
    }
    let runs = cluster
        .metric_sum(
            Component::BuildIndex,
            "build_index_gc_runs_total",
            &[("result", "swept")],
        )
        .await?;
    ensure!(runs >= 1.0, "scheduled runs counted: {runs}");
    Ok(())
}
