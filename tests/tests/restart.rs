//! Durability and shutdown: what a push acknowledged survives SIGKILL of every component,
//! SIGTERM stops each component cleanly, and an origin stopped during a write-back exits within
//! its drain deadline without losing the blob.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::TryStreamExt;
use shoal_backends::{Backend, BackendConfig, S3Backend, blob_key};
use shoal_client::RegistryClient;
use shoal_core::Digest;
use shoal_tests::configs;
use shoal_tests::images::{generate, image_spec, layout_blobs};
use shoal_tests::moto::Moto;
use shoal_tests::pattern::Pattern;
use shoal_tests::process::POLL_INTERVAL;
use shoal_tests::relay::Relay;
use shoal_tests::v2::Registry;
use shoal_tests::{Cluster, ClusterOptions, Component};

const MIB: u64 = 1 << 20;
/// The blob written back while the origin is stopped: many S3 parts.
const LARGE: u64 = 64 * MIB;
/// Bytes of the write-back the relay lets through before holding the rest.
const HOLD_AFTER: u64 = 8 * MIB;
/// The components' drain deadline (`shoal_service::shutdown::DRAIN_DEADLINE`) plus a margin for
/// a loaded 2-core machine.
const EXIT_DEADLINE: Duration = Duration::from_secs(10 + 15);

#[tokio::test]
async fn a_pushed_image_survives_sigkill_of_every_component() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("image"),
        image_spec(vec![12 * MIB + 5, MIB, 4096], 0xdead_0001, "v1"),
    )
    .await?;
    let client = RegistryClient::new(&cluster.proxy_url())?;
    for tag in ["v1", "v2"] {
        client
            .push_image(&image, "restart/app", tag, |_| {})
            .await?;
    }

    // No graceful shutdown: every acknowledged write must already be on disk.
    cluster.stop_all()?;
    for component in cluster.components() {
        cluster.restart(component).await?;
    }

    let client = RegistryClient::new(&cluster.proxy_url())?;
    for tag in ["v1", "v2"] {
        let dest = work.path().join(format!("pulled-{tag}"));
        let pulled = client.pull_image("restart/app", tag, &dest, |_| {}).await?;
        ensure!(pulled.manifest_digest == image.manifest_digest);
        ensure!(
            layout_blobs(&dest)? == layout_blobs(&image.dir)?,
            "{tag}: the pulled blobs differ from the pushed ones"
        );
    }

    let registry = Registry::new(&cluster.proxy_url())?;
    let tags: serde_json::Value = registry
        .http
        .get(registry.url("v2/restart/app/tags/list"))
        .send()
        .await?
        .json()
        .await?;
    ensure!(tags["tags"] == serde_json::json!(["v1", "v2"]), "{tags}");
    Ok(())
}

#[tokio::test]
async fn sigterm_stops_every_component_with_exit_status_zero() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    // Some traffic first, so shutdown has connections and state to deal with.
    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("image"),
        image_spec(vec![MIB], 0xdead_0002, "v1"),
    )
    .await?;
    RegistryClient::new(&cluster.proxy_url())?
        .push_image(&image, "restart/term", "v1", |_| {})
        .await?;

    for component in [Component::Proxy, Component::BuildIndex, Component::Origin] {
        let status = cluster.terminate(component)?;
        ensure!(
            status.success(),
            "{component} exited with {status} after SIGTERM\n{}",
            cluster.log_tails()
        );
    }
    Ok(())
}

/// An origin whose S3 backend (moto) is reached through a [`Relay`], so a test can hold a
/// write-back part-way; the build-index keeps its tags on a filesystem backend.
struct HeldBackend {
    cluster: Cluster,
    relay: Relay,
    moto: Moto,
    _tags: tempfile::TempDir,
}

impl HeldBackend {
    async fn start(bucket: &str) -> Result<HeldBackend> {
        let moto = Moto::start(bucket).await?;
        let relay = Relay::start(moto.addr()).await?;
        let mut s3 = moto.s3_config();
        s3.endpoint = Some(format!("http://{}", relay.addr()));
        let tags = tempfile::tempdir()?;
        let cluster = Cluster::start(ClusterOptions {
            backend: serde_json::to_value(BackendConfig::S3(s3))?,
            build_index_backend: configs::filesystem_backend(tags.path()),
            ..ClusterOptions::default()
        })
        .await?;
        Ok(HeldBackend {
            cluster,
            relay,
            moto,
            _tags: tags,
        })
    }

    /// PUTs `blob` to the origin (committed and queued for write-back when this returns) and
    /// waits until the write-back is held by the relay part-way through.
    async fn push_and_hold(&self, blob: Pattern) -> Result<Digest> {
        let digest = blob.digest();
        self.relay.hold_after(HOLD_AFTER);
        let before = self.relay.forwarded();
        let url = format!("http://{}/blobs/{digest}", self.cluster.origin_addr());
        let response = reqwest::Client::new()
            .put(&url)
            .body(blob.body(0, blob.len))
            .send()
            .await?;
        ensure!(
            response.status() == reqwest::StatusCode::CREATED,
            "PUT {url}: {}",
            response.status()
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.relay.forwarded() < before + HOLD_AFTER {
            if Instant::now() > deadline {
                bail!(
                    "the write-back never reached the relay's hold ({} bytes through)\n{}",
                    self.relay.forwarded() - before,
                    self.cluster.log_tails()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Ok(digest)
    }

    fn marker(&self, digest: &Digest) -> std::path::PathBuf {
        self.cluster
            .origin_data_dir()
            .join("writeback")
            .join(format!("{}.json", digest.hex()))
    }

    /// The blob's bytes as the bucket holds them (read past the relay); `None` when absent.
    async fn in_backend(&self, digest: &Digest) -> Result<Option<Digest>> {
        let s3: S3Backend = self.moto.backend()?;
        let Some(stream) = s3.get(&blob_key(digest), None).await? else {
            return Ok(None);
        };
        let chunks: Vec<bytes::Bytes> = stream.try_collect().await?;
        Ok(Some(Digest::of(&chunks.concat())))
    }
}

/// Waits until `log` holds `line` (the component logs it once it reached that point).
async fn wait_for_log(log: &Path, line: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(line) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{} never logged {line:?}", log.display());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_a_write_back_in_flight_to_finish() -> Result<()> {
    let mut held = HeldBackend::start("shoal-drain-finish").await?;
    let blob = Pattern::new(0x5167_0001, LARGE);
    let digest = held.push_and_hold(blob).await?;

    // The signal lands while the upload hangs; it may go on only once shutdown has begun.
    held.cluster.send_sigterm(Component::Origin)?;
    let log = held.cluster.log_path(Component::Origin);
    wait_for_log(&log, "shutdown: finishing the write-backs in flight").await?;
    held.relay.release();
    let status = held.cluster.wait_exit(Component::Origin, EXIT_DEADLINE)?;
    ensure!(status.success(), "the origin exited with {status}");

    // Finished before the exit: in the bucket, off the queue, with no restart needed.
    ensure!(
        held.in_backend(&digest).await? == Some(digest),
        "the write-back in flight at SIGTERM did not reach the backend\n{}",
        held.cluster.log_tails()
    );
    ensure!(
        !held.marker(&digest).exists(),
        "the write-back finished but its marker is still queued"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_stuck_write_back_exits_in_time_and_the_blob_is_written_after_restart()
-> Result<()> {
    let mut held = HeldBackend::start("shoal-drain-stuck").await?;
    let blob = Pattern::new(0x5167_0002, LARGE);
    let digest = held.push_and_hold(blob).await?;

    // The upload never finishes while the origin runs: it must give up at its drain deadline.
    let start = Instant::now();
    held.cluster.send_sigterm(Component::Origin)?;
    let status = held.cluster.wait_exit(Component::Origin, EXIT_DEADLINE)?;
    ensure!(status.success(), "the origin exited with {status}");
    eprintln!("the origin exited {:?} after SIGTERM", start.elapsed());
    ensure!(
        held.marker(&digest).exists(),
        "the abandoned write-back is no longer queued"
    );
    ensure!(
        held.in_backend(&digest).await?.is_none(),
        "the held upload reached the backend"
    );

    // Restarted with the backend reachable, the origin writes the queued blob back.
    held.relay.release();
    held.cluster.restart(Component::Origin).await?;
    held.cluster
        .wait_for_writeback_within(Duration::from_secs(120))
        .await
        .context("the queued blob was not written back after the restart")?;
    ensure!(
        held.in_backend(&digest).await? == Some(digest),
        "the blob in the backend differs from the one pushed"
    );
    Ok(())
}
