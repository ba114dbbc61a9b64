//! The origin cluster end to end, with real binaries: a ring of three origins that loses an
//! owner to SIGKILL while agents pull, an S3 backend (moto) that goes away under a push, content
//! placed in S3 behind Shoal's back and pulled through, and an HTTP backend that serves corrupt
//! bytes before it is fixed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use shoal_backends::{Backend, ByteStream, blob_key, tag_key};
use shoal_client::{Image, RegistryClient};
use shoal_core::{Digest, Digester, rendezvous};
use shoal_tests::images::{file_digest, generate, image_spec, layout_blobs, stream_digest};
use shoal_tests::moto::Moto;
use shoal_tests::pattern::Pattern;
use shoal_tests::swarm::{
    ensure_same_image, pull_through_agent, pull_through_agent_and_check,
    pull_through_agents_and_check, push, wait_until,
};
use shoal_tests::{Cluster, ClusterOptions, Component};
use tokio_util::io::ReaderStream;

const MIB: u64 = 1 << 20;
/// Generous for a debug build on a loaded 2-core machine: background replication, fill-in and
/// agents' downloads of a few MiB normally take well under a second.
const DEADLINE: Duration = Duration::from_secs(90);
/// A backend that just came back is retried with backoff (capped by the test's `retry_max`).
const WRITEBACK_AFTER_OUTAGE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_pull_everything_after_an_owner_is_killed_and_it_catches_up_on_return() -> Result<()>
{
    let Ring {
        mut cluster,
        work,
        image,
        blobs: first,
        owners,
    } = Ring::holding_an_image(
        vec![3 * MIB + 5, 2 * MIB, 700 * 1024, 4096],
        0x0c1_0001,
        "ring/app",
    )
    .await?;
    // Kill the preferred owner of the largest layer.
    let victim = owners[0];
    let victim_component = Component::origin(victim);
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    cluster.kill(victim_component)?;

    pull_through_agents_and_check(&cluster, 0..3, &image, "ring/app", "v1", work.path()).await?;

    // A new push with an origin down: sessions open on an origin that answers and the two
    // survivors make the write quorum.
    let second = generate(
        &work.path().join("image-2"),
        image_spec(vec![2 * MIB + 3, 100 * 1024], 0x0c1_0002, "v2"),
    )
    .await?;
    push(&cluster, &second, "ring/app", "v2").await?;
    let pulled = work.path().join("pulled-v2");
    pull_through_agent_and_check(&cluster, 1, &second, "ring/app", "v2", &pulled).await?;
    let second_blobs = layout_blobs(&second.dir)?;
    ensure!(
        all_stored(&cluster, &survivors, second_blobs.keys()).await?,
        "the second image is not on both surviving owners"
    );

    cluster.restart(victim_component).await?;
    // What it held before the kill is still there; what was pushed meanwhile it fills in from
    // the other owners on the first read.
    ensure!(
        all_stored(&cluster, &[victim], first.keys()).await?,
        "origin {victim} lost blobs it held before SIGKILL"
    );
    let all: BTreeMap<Digest, u64> = first.into_iter().chain(second_blobs).collect();
    for (digest, size) in &all {
        let url = format!("http://{}/blobs/{digest}", cluster.origin_addr_at(victim));
        let got = get_blob(&url).await?;
        ensure!(
            got == Fetched::Complete(*digest, *size),
            "origin {victim} after its restart answered GET {digest} with {got:?}"
        );
    }
    ensure!(
        all_stored(&cluster, &[0, 1, 2], all.keys()).await?,
        "after the restart some owner still lacks a blob"
    );

    cluster.wait_for_writeback().await?;
    for digest in all.keys() {
        let path = cluster.backend_dir().join(blob_key(digest));
        ensure!(
            file_digest(&path)? == *digest,
            "the backend copy of {digest} is wrong"
        );
    }
    Ok(())
}

/// A hung origin (stopped: its kernel still accepts connections, and nothing answers) used to
/// hold every request that reached it until the caller's timeout: the tracker's metainfo reads
/// (120 s, past the agent's own deadline, so pulls failed), the proxy's HEADs and upload
/// sessions (30 min), and agents' connections to the next owner. Now a request it has not
/// answered within a second is asked of the next owner once a health probe fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_and_pulls_go_on_while_an_owner_is_hung() -> Result<()> {
    let Ring {
        cluster,
        work,
        image,
        owners,
        ..
    } = Ring::holding_an_image(
        vec![3 * MIB + 5, 2 * MIB, 700 * 1024],
        0x0c1_0003,
        "ring/hung",
    )
    .await?;
    let stopped = cluster.hang([Component::origin(owners[0])])?;

    within_hang(
        "pulling through three agents",
        pull_through_agents_and_check(&cluster, 0..3, &image, "ring/hung", "v1", work.path()),
    )
    .await?;
    // Pushes open sessions on origins in turn, so the hung one comes up; each blob is HEADed
    // first, and misses on every owner that answers.
    for round in 0..3u64 {
        let next = generate(
            &work.path().join(format!("next-{round}")),
            image_spec(vec![MIB + round, 10 * 1024], 0x0c1_0100 + round, "v2"),
        )
        .await?;
        let tag = format!("v2-{round}");
        within_hang("pushing", push(&cluster, &next, "ring/hung", &tag)).await?;
        let pulled = work.path().join(format!("pulled-next-{round}"));
        within_hang(
            "pulling what was pushed",
            pull_through_agent_and_check(&cluster, 1, &next, "ring/hung", &tag, &pulled),
        )
        .await?;
    }
    drop(stopped);
    Ok(())
}

/// A blob GET through the proxy whose origin hangs mid-body (stopped: the connection stays
/// open and silent) goes on from the next owner where it stopped, and so does one whose origin
/// dies mid-body (SIGKILL: the connection breaks). Before, the first held the client until it
/// gave up, and the second cut the body short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_body_goes_on_from_another_owner_when_its_origin_hangs_or_dies() -> Result<()> {
    let Ring {
        mut cluster,
        image,
        owners,
        ..
    } = Ring::holding_an_image(vec![48 * MIB + 7], 0x0c1_0004, "ring/body").await?;
    let (layer, size) = image.layers[0];
    let url = format!("{}/v2/ring/body/blobs/{layer}", cluster.proxy_url());

    // The preferred owner serves the first GET; it is stopped after a MiB.
    let (got, length, stopped) = within_hang(
        "a GET whose origin hangs mid-body",
        get_breaking_it_midway(&url, || cluster.hang([Component::origin(owners[0])])),
    )
    .await?;
    ensure!(
        (got, length) == (layer, size),
        "read {got} ({length} bytes), pushed {layer} ({size} bytes)"
    );
    // The proxy found it hung: the second owner serves the next GET, and is killed after a MiB.
    let (got, length, ()) = within_hang(
        "a GET whose origin dies mid-body",
        get_breaking_it_midway(&url, || cluster.kill(Component::origin(owners[1]))),
    )
    .await?;
    ensure!(
        (got, length) == (layer, size),
        "read {got} ({length} bytes), pushed {layer} ({size} bytes)"
    );
    drop(stopped);
    Ok(())
}

/// An origin that lost its store (its disk replaced) fills in a blob from another owner on the
/// first read, as the GET streams. When that peer hangs mid-body, the fill-in goes on from the
/// third owner where it stopped. Before, it waited on the hung peer for as long as the reader
/// waited: peer reads have no overall timeout, since blob bodies may stream for minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_filling_in_goes_on_from_another_owner_when_its_peer_hangs() -> Result<()> {
    let Ring {
        mut cluster,
        image,
        owners,
        ..
    } = Ring::holding_an_image(vec![48 * MIB + 11], 0x0c1_0005, "ring/fill").await?;
    let (layer, size) = image.layers[0];
    let (refilled, peer) = (owners[0], owners[1]);
    cluster.kill(Component::origin(refilled))?;
    std::fs::remove_dir_all(cluster.origin_data_dir_at(refilled))?;
    cluster.restart(Component::origin(refilled)).await?;
    ensure!(
        !all_stored(&cluster, &[refilled], [layer].iter()).await?,
        "origin {refilled} still holds the layer after its store was emptied"
    );

    // The refilled origin asks its preferred peer first; that peer is stopped after a MiB.
    let url = format!("http://{}/blobs/{layer}", cluster.origin_addr_at(refilled));
    let (got, length, stopped) = within_hang(
        "an origin filling in from a peer that hangs mid-body",
        get_breaking_it_midway(&url, || cluster.hang([Component::origin(peer)])),
    )
    .await?;
    ensure!(
        (got, length) == (layer, size),
        "read {got} ({length} bytes), pushed {layer} ({size} bytes)"
    );
    ensure!(
        all_stored(&cluster, &[refilled], [layer].iter()).await?,
        "origin {refilled} did not store the blob it filled in"
    );
    drop(stopped);
    Ok(())
}

/// GETs `url`, calls `breakage` once a MiB of the body has arrived, reads the rest, and returns
/// the body's digest and length with what `breakage` returned.
async fn get_breaking_it_midway<T>(
    url: &str,
    breakage: impl FnOnce() -> Result<T>,
) -> Result<(Digest, u64, T)> {
    let response = reqwest::get(url).await?.error_for_status()?;
    let mut body = response.bytes_stream();
    let mut digester = Digester::new();
    let mut length = 0u64;
    let mut breakage = Some(breakage);
    let mut broken = None;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.with_context(|| format!("reading {url} at byte {length}"))?;
        digester.update(&chunk);
        length += chunk.len() as u64;
        if length >= MIB
            && let Some(breakage) = breakage.take()
        {
            broken = Some(breakage()?);
        }
    }
    let broken = broken.context("the body ended before a MiB")?;
    Ok((digester.finish(), length, broken))
}

/// Three origins and three agents, holding an image pushed through the proxy.
struct Ring {
    cluster: Cluster,
    work: tempfile::TempDir,
    image: Image,
    blobs: BTreeMap<Digest, u64>,
    /// The owners of the image's largest layer in the order the proxy, the tracker and the
    /// other origins turn to them (the preferred owner first).
    owners: Vec<usize>,
}

impl Ring {
    /// Pushes an image of `layers` to `repo:v1` and waits until every origin stores all of it.
    async fn holding_an_image(layers: Vec<u64>, seed: u64, repo: &str) -> Result<Ring> {
        let cluster = Cluster::start(ClusterOptions {
            origins: 3,
            ..ClusterOptions::with_agents(3)
        })
        .await?;
        let work = tempfile::tempdir()?;
        let image = generate(&work.path().join("image"), image_spec(layers, seed, "v1")).await?;
        push(&cluster, &image, repo, "v1").await?;
        let blobs = layout_blobs(&image.dir)?;
        // R = 3 of 3: every origin owns every blob. The quorum (W = 2) acknowledged the push;
        // the third copy arrives in the background.
        wait_until(
            &cluster,
            DEADLINE,
            "every origin stores every blob of the image",
            async || all_stored(&cluster, &[0, 1, 2], blobs.keys()).await,
        )
        .await?;
        let addrs: Vec<String> = (0..3)
            .map(|i| cluster.origin_addr_at(i).to_string())
            .collect();
        let (largest, _) = *image
            .layers
            .iter()
            .max_by_key(|(_, size)| *size)
            .context("the image has layers")?;
        let owners = rendezvous::owners(&largest, &addrs, 3)
            .into_iter()
            .map(|owner| {
                addrs
                    .iter()
                    .position(|a| a == owner)
                    .context("the owner is one of the origins")
            })
            .collect::<Result<_>>()?;
        Ok(Ring {
            cluster,
            work,
            image,
            blobs,
            owners,
        })
    }
}

/// Bounds a push or pull beside a hung origin: far below the timeouts it cost before (120 s at
/// the tracker, 30 min at the proxy), and far above what a debug build takes here.
async fn within_hang<T>(what: &str, work: impl Future<Output = Result<T>>) -> Result<T> {
    let started = std::time::Instant::now();
    let done = tokio::time::timeout(Duration::from_secs(60), work)
        .await
        .with_context(|| format!("{what} waited on the hung origin"))?;
    eprintln!("{what} beside the hung origin: {:?}", started.elapsed());
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_during_an_s3_outage_is_written_back_once_s3_returns() -> Result<()> {
    let work = tempfile::tempdir()?;
    let mut outage = S3Outage::push(
        "shoal-outage",
        ClusterOptions {
            origins: 3,
            // The build-index keeps its tags in S3 too: it holds the tag locally until S3
            // returns.
            ..ClusterOptions::default()
        },
        work.path(),
        vec![3 * MIB + 1, 512 * 1024],
        0x0c1_0003,
        "outage/app",
    )
    .await?;
    ensure!(
        writeback_queued(&outage.cluster, 3).await? > 0.0,
        "nothing is waiting for write-back although S3 is down"
    );
    outage.end().await?;
    // The tag accepted during the outage reaches S3 as well.
    let key = tag_key(
        &shoal_core::Name::parse("outage/app")?,
        &shoal_core::Tag::parse("v1")?,
    );
    let s3 = outage.moto.backend()?;
    let deadline = std::time::Instant::now() + WRITEBACK_AFTER_OUTAGE;
    loop {
        if let Some(body) = s3.get(&key, None).await? {
            let text: Vec<u8> = body
                .map(|chunk| chunk.map(|c| c.to_vec()))
                .try_concat()
                .await?;
            ensure!(
                text == outage.image.manifest_digest.to_string().as_bytes(),
                "S3 holds tag {key} as {:?}",
                String::from_utf8_lossy(&text)
            );
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the tag pushed during the outage never reached S3"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_back_queued_during_an_s3_outage_survives_sigkill_of_the_origin() -> Result<()> {
    let work = tempfile::tempdir()?;
    let mut outage = S3Outage::push(
        "shoal-outage-kill",
        ClusterOptions {
            build_index_backend: json!({"filesystem": {"root": work.path().join("tags")}}),
            ..ClusterOptions::default()
        },
        work.path(),
        vec![2 * MIB + 7, 300 * 1024],
        0x0c1_0004,
        "outage/kill",
    )
    .await?;
    outage.cluster.kill(Component::Origin)?;
    outage.cluster.restart(Component::Origin).await?;
    let queued = writeback_queued(&outage.cluster, 1).await?;
    ensure!(
        queued > 0.0,
        "the restarted origin has no write-back queued: the queue did not survive SIGKILL"
    );
    outage.end().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_placed_in_s3_behind_shoals_back_is_pulled_through() -> Result<()> {
    let moto = Moto::start("shoal-direct").await?;
    let cluster = Cluster::start(ClusterOptions {
        backend: moto.backend_config()?,
        ..ClusterOptions::with_agents(1)
    })
    .await?;
    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("image"),
        image_spec(vec![3 * MIB + 11, 64 * 1024], 0x0c1_0005, "v1"),
    )
    .await?;
    let s3 = moto.backend()?;
    for (digest, size) in layout_blobs(&image.dir)? {
        let file = tokio::fs::File::open(image.blob_path(&digest)).await?;
        let body: ByteStream = ReaderStream::new(file).boxed();
        s3.put(&blob_key(&digest), body, Some(size)).await?;
    }
    let repo = shoal_core::Name::parse("direct/app")?;
    let tag = shoal_core::Tag::parse("v1")?;
    let text = Bytes::from(image.manifest_digest.to_string());
    let len = text.len() as u64;
    s3.put(
        &tag_key(&repo, &tag),
        futures::stream::once(async move { Ok(text) }).boxed(),
        Some(len),
    )
    .await?;

    // One blob straight through the proxy, then the whole image through the agent and the proxy.
    let (layer, size) = image.layers[0];
    let got = get_blob(&format!(
        "{}/v2/direct/app/blobs/{layer}",
        cluster.proxy_url()
    ))
    .await?;
    ensure!(
        got == Fetched::Complete(layer, size),
        "the proxy answered GET {layer} with {got:?}"
    );
    let pulled =
        pull_through_agent(&cluster, 0, "direct/app", "v1", &work.path().join("agent")).await?;
    ensure_same_image(&image, &pulled)?;
    let pulled = RegistryClient::new(&cluster.proxy_url())?
        .pull_image("direct/app", "v1", &work.path().join("proxy"), |_| {})
        .await?;
    ensure_same_image(&image, &pulled)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_backend_copy_fails_cleanly_and_is_not_kept() -> Result<()> {
    let len = 3 * MIB + 17;
    let blob = Bytes::from(Pattern::new(0x0c1_0006, len).range(0, len));
    let digest = Digest::of(&blob);
    let server = BlobServer::start(digest, blob.clone()).await?;
    let cluster = Cluster::start(ClusterOptions {
        backend: json!({"http": {"url": format!("http://{}/{{digest}}", server.addr)}}),
        ..ClusterOptions::with_agents(1)
    })
    .await?;
    let agent_url = format!("{}/v2/corrupt/app/blobs/{digest}", cluster.agent_url(0));
    let proxy_url = format!("{}/v2/corrupt/app/blobs/{digest}", cluster.proxy_url());

    for url in [&agent_url, &proxy_url] {
        let got = tokio::time::timeout(DEADLINE, get_blob(url))
            .await
            .with_context(|| format!("GET {url} hung on a corrupt backend copy"))??;
        ensure!(
            matches!(got, Fetched::Status(status) if status >= 500) || got == Fetched::BodyError,
            "GET {url} of a corrupt backend copy answered {got:?}, expected an error"
        );
    }
    let mismatches = cluster
        .metric_sum(
            Component::Origin,
            "origin_digest_mismatch_total",
            &[("source", "backend")],
        )
        .await?;
    ensure!(
        mismatches >= 1.0,
        "the origin did not count the backend's digest mismatch"
    );
    let stored = get_blob(&format!(
        "http://{}/blobs/{digest}?replica=true",
        cluster.origin_addr()
    ))
    .await?;
    ensure!(
        stored == Fetched::Status(404),
        "the origin kept the corrupt copy: its store answered {stored:?}"
    );

    server.fixed.store(true, Ordering::SeqCst);
    let served_before = server.gets.load(Ordering::SeqCst);
    for url in [&agent_url, &proxy_url] {
        let got = get_blob(url).await?;
        ensure!(
            got == Fetched::Complete(digest, blob.len() as u64),
            "GET {url} after the backend was fixed answered {got:?}"
        );
    }
    ensure!(
        server.gets.load(Ordering::SeqCst) > served_before,
        "the fixed backend was never asked again"
    );
    Ok(())
}

/// How a blob GET ended.
#[derive(Debug, PartialEq, Eq)]
enum Fetched {
    /// A 2xx with a complete body: what it hashed to and its length.
    Complete(Digest, u64),
    /// A non-2xx status.
    Status(u16),
    /// A 2xx whose body broke off.
    BodyError,
}

/// GETs `url`, streaming and hashing the body.
async fn get_blob(url: &str) -> Result<Fetched> {
    let response = shoal_service::client::builder()
        .build()?
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !response.status().is_success() {
        return Ok(Fetched::Status(response.status().as_u16()));
    }
    Ok(match stream_digest(response.bytes_stream()).await {
        Ok((digest, length)) => Fetched::Complete(digest, length),
        Err(_) => Fetched::BodyError,
    })
}

/// Whether every origin in `origins` holds every blob of `digests` in its own store (not pulled
/// through on demand), with the right bytes.
async fn all_stored<'a>(
    cluster: &Cluster,
    origins: &[usize],
    digests: impl Iterator<Item = &'a Digest> + Clone,
) -> Result<bool> {
    for &i in origins {
        for digest in digests.clone() {
            let url = format!(
                "http://{}/blobs/{digest}?replica=true",
                cluster.origin_addr_at(i)
            );
            match get_blob(&url).await? {
                Fetched::Complete(got, _) if got == *digest => {}
                Fetched::Status(404) => return Ok(false),
                other => bail!("origin {i} answered GET {digest} with {other:?}"),
            }
        }
    }
    Ok(true)
}

/// Blobs waiting for write-back, summed over the first `origins` origins.
async fn writeback_queued(cluster: &Cluster, origins: usize) -> Result<f64> {
    let mut total = 0.0;
    for i in 0..origins {
        total += cluster
            .metric_sum(Component::origin(i), "origin_writeback_queue_depth", &[])
            .await?;
    }
    Ok(total)
}

/// A cluster whose origins write back to S3 (moto), and an image pushed to it while S3 was down.
struct S3Outage {
    moto: Moto,
    cluster: Cluster,
    image: Image,
}

impl S3Outage {
    /// Starts moto with `bucket` and a cluster of `options` over it, generates an image of
    /// `layers` from `seed` under `work`, stops S3 and pushes the image as `repo:v1`.
    async fn push(
        bucket: &str,
        options: ClusterOptions,
        work: &Path,
        layers: Vec<u64>,
        seed: u64,
        repo: &str,
    ) -> Result<S3Outage> {
        let mut moto = Moto::start(bucket).await?;
        let cluster = Cluster::start(ClusterOptions {
            backend: moto.backend_config()?,
            // Short write-back retries, so that a backend that comes back is noticed within
            // seconds.
            origin_overrides: json!({"writeback": {"retry_initial": "200ms", "retry_max": "2s"}}),
            ..options
        })
        .await?;
        let image = generate(&work.join("image"), image_spec(layers, seed, "v1")).await?;
        moto.stop()?;
        push(&cluster, &image, repo, "v1").await?;
        Ok(S3Outage {
            moto,
            cluster,
            image,
        })
    }

    /// Brings S3 back, waits until the origins have written back what they queued and checks
    /// that every blob of the image is in S3.
    async fn end(&mut self) -> Result<()> {
        self.moto.restart().await?;
        self.cluster
            .wait_for_writeback_within(WRITEBACK_AFTER_OUTAGE)
            .await?;
        ensure_in_s3(&self.moto, &self.image).await
    }
}

/// Reads every blob of `image` back from the bucket, bypassing Shoal, and checks its bytes.
async fn ensure_in_s3(moto: &Moto, image: &Image) -> Result<()> {
    let s3 = moto.backend()?;
    for (digest, size) in layout_blobs(&image.dir)? {
        let body = s3
            .get(&blob_key(&digest), None)
            .await?
            .with_context(|| format!("{digest} is not in S3 after the write-back"))?;
        let (got, length) = stream_digest(body)
            .await
            .with_context(|| format!("reading {digest} from S3"))?;
        ensure!(
            got == digest && length == size,
            "S3 holds {length} bytes under {digest} that do not hash to it"
        );
    }
    Ok(())
}

/// A read-only HTTP blob server on loopback standing in for an HTTP backend: it serves one blob
/// at `/<digest>`, with its last byte flipped until `fixed` is set.
struct BlobServer {
    addr: SocketAddr,
    fixed: Arc<AtomicBool>,
    /// GETs of the blob answered so far.
    gets: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl BlobServer {
    async fn start(digest: Digest, blob: Bytes) -> Result<BlobServer> {
        let mut corrupt = blob.to_vec();
        *corrupt.last_mut().context("the blob is not empty")? ^= 0xff;
        let corrupt = Bytes::from(corrupt);
        let fixed = Arc::new(AtomicBool::new(false));
        let gets = Arc::new(AtomicUsize::new(0));
        let (served_fixed, served_gets) = (fixed.clone(), gets.clone());
        let app = axum::Router::new().route(
            "/{digest}",
            axum::routing::get(
                move |method: axum::http::Method,
                      axum::extract::Path(path): axum::extract::Path<String>| {
                    let (fixed, gets) = (served_fixed.clone(), served_gets.clone());
                    let (blob, corrupt) = (blob.clone(), corrupt.clone());
                    async move {
                        if path != digest.to_string() {
                            return Err(axum::http::StatusCode::NOT_FOUND);
                        }
                        if method == axum::http::Method::GET {
                            gets.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(if fixed.load(Ordering::SeqCst) {
                            blob
                        } else {
                            corrupt
                        })
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                eprintln!("blob server stopped: {error}");
            }
        });
        Ok(BlobServer {
            addr,
            fixed,
            gets,
            task,
        })
    }
}

impl Drop for BlobServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
