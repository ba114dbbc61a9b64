//! Acceptance (issue 12, origin capacity): an origin with `cache.capacity` is a bounded cache in
//! front of its backend. Scaled down for CI time from a 300 MiB budget with 500 MiB pushed to
//! 30 MiB with 50 MiB pushed (the same ratio), through the proxy, with real binaries and a
//! filesystem backend:
//!
//! 1. with the backend up, the store goes back under its high watermark and every image still
//!    pulls byte-identical, through an agent (pieces seeded by the origin) and through the proxy:
//!    evicted blobs come back through pull-through, also when an agent asks the origin for
//!    pieces of a blob it evicted (the tracker still has its metainfo);
//! 2. with the backend refusing writes (reads still work), new pushes stay in the store however
//!    far over the budget they take it, while blobs the backend holds keep being evicted;
//! 3. with the backend stopped (reads fail too), nothing is evicted and new pushes still pull;
//! 4. once the backend is back, write-backs finish, the store shrinks under its high watermark
//!    and every image pulls byte-identical.
//!
//! The build-index keeps its tags in a backend of its own, so tags stay readable meanwhile.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::json;
use shoal_client::{Image, RegistryClient};
use shoal_core::Digest;
use shoal_tests::images::{generate, image_spec, layout_blobs};
use shoal_tests::swarm::wait_until;
use shoal_tests::{Cluster, ClusterOptions, Component, configs};

const MIB: u64 = 1 << 20;
const CAPACITY: u64 = 30 * MIB;
/// `cache.high_watermark` at its default, 90 %.
const HIGH: u64 = CAPACITY / 10 * 9;
/// Per image: two layers, 5 MiB together (plus a config and a manifest).
const LAYERS: [u64; 2] = [4 * MIB, MIB];
const REPO: &str = "capacity/app";
/// Sweeps run after every commit and finished read, and at least every 30 s.
const DEADLINE: Duration = Duration::from_secs(90);

#[tokio::test]
async fn a_bounded_origin_keeps_pulls_working_and_never_evicts_what_its_backend_lacks() -> Result<()>
{
    let work = tempfile::tempdir()?;
    let mut cluster = Cluster::start(ClusterOptions {
        build_index_backend: configs::filesystem_backend(&work.path().join("tags")),
        origin_overrides: json!({
            "cache": {"capacity": "30MiB"},
            // A backend that comes back is retried within a second.
            "writeback": {"retry_initial": "100ms", "retry_max": "1s"},
        }),
        ..ClusterOptions::with_agents(2)
    })
    .await?;
    let client = RegistryClient::new(&cluster.proxy_url())?;
    let store = cluster.origin_data_dir().join("store");
    let mut pushed = Images::default();

    // 1. 50 MiB through a 30 MiB origin, the backend up.
    for i in 0..10 {
        pushed.push(&client, work.path(), &format!("up{i}")).await?;
    }
    cluster.wait_for_writeback().await?;
    wait_until(
        &cluster,
        DEADLINE,
        "the store is under its high watermark",
        async || Ok(stored_bytes(&store)? <= HIGH),
    )
    .await?;
    ensure!(evictions(&cluster).await? > 0.0, "nothing was evicted");
    // Through an agent: metainfo pulls an evicted blob back in, then the origin seeds pieces.
    let agent = RegistryClient::new(&cluster.agent_url(0))?;
    pushed.pull(&agent, work.path(), 3).await?;
    let seeded = cluster
        .metric_sum(Component::Origin, "p2p_bytes_served_total", &[])
        .await?;
    ensure!(seeded > 0.0, "the agent got no piece from the origin");
    pushed.pull_all(&client, work.path()).await?;
    let pulled_through = cluster
        .metric_sum(Component::Origin, "origin_pullthrough_total", &[])
        .await?;
    ensure!(
        pulled_through > 0.0,
        "no evicted blob came back through pull-through"
    );
    // The first image, read least recently, is evicted again, and the only agent holding it
    // stops: another agent gets the metainfo the tracker cached and asks the origin, which
    // pulls the blob back in for it.
    let first = pushed.first();
    wait_until(
        &cluster,
        DEADLINE,
        "the first image is evicted again",
        async || Ok(first.stored(&store).is_empty()),
    )
    .await?;
    cluster.kill(Component::Agent(0))?;
    first
        .pull_all(&RegistryClient::new(&cluster.agent_url(1))?, work.path())
        .await?;

    // 2. The backend refuses writes (its staging directory is a file now), reads still work.
    let backend = cluster.backend_dir();
    let staging = backend.join(".shoal-tmp");
    std::fs::remove_dir_all(&staging)?;
    std::fs::write(&staging, b"")?;
    let mut stuck = Images::default();
    // 30 MiB: the whole budget by themselves.
    for i in 0..6 {
        stuck
            .push(&client, work.path(), &format!("stuck{i}"))
            .await?;
    }
    let stuck_bytes = stuck.layer_bytes();
    wait_until(
        &cluster,
        DEADLINE,
        "a sweep pins the pending pushes",
        async || Ok(pinned(&cluster).await? >= stuck_bytes as f64),
    )
    .await?;
    let evicted_before = evictions(&cluster).await?;
    // Pulling the older images brings them back and, once read, the sweeps evict them again.
    pushed.pull_all(&client, work.path()).await?;
    wait_until(
        &cluster,
        DEADLINE,
        "blobs the backend holds are evicted",
        async || Ok(evictions(&cluster).await? > evicted_before),
    )
    .await?;
    stuck.ensure_stored(&store)?;
    ensure!(
        stored_bytes(&store)? > HIGH,
        "the pending pushes alone exceed the high watermark"
    );
    stuck.pull_all(&client, work.path()).await?;

    // 3. The backend stopped: reads fail too.
    let stopped = backend.with_file_name("backend-stopped");
    std::fs::rename(&backend, &stopped)?;
    std::fs::write(&backend, b"")?;
    let mut offline = Images::default();
    for i in 0..2 {
        offline
            .push(&client, work.path(), &format!("offline{i}"))
            .await?;
    }
    let pending = (stuck_bytes + offline.layer_bytes()) as f64;
    wait_until(
        &cluster,
        DEADLINE,
        "a sweep pins every pending push",
        async || Ok(pinned(&cluster).await? >= pending),
    )
    .await?;
    let evicted_before = evictions(&cluster).await?;
    stuck.pull_all(&client, work.path()).await?;
    offline.pull_all(&client, work.path()).await?;
    stuck.ensure_stored(&store)?;
    offline.ensure_stored(&store)?;
    ensure!(
        evictions(&cluster).await? == evicted_before,
        "something was evicted while the backend could not be reached"
    );

    // 4. The backend is back: everything is written back, the store shrinks, every image pulls.
    std::fs::remove_file(&backend)?;
    std::fs::rename(&stopped, &backend)?;
    std::fs::remove_file(&staging)?;
    std::fs::create_dir(&staging)?;
    cluster.wait_for_writeback_within(DEADLINE).await?;
    // Reads wake the sweeper; the pulls below also bring evicted blobs back.
    offline.pull_all(&client, work.path()).await?;
    wait_until(
        &cluster,
        DEADLINE,
        "the store is under its high watermark again",
        async || Ok(stored_bytes(&store)? <= HIGH),
    )
    .await?;
    // The sweep that got it there may have run before the last write-backs ended.
    wait_until(&cluster, DEADLINE, "no pins are left", async || {
        Ok(pinned(&cluster).await? == 0.0)
    })
    .await?;
    for images in [&pushed, &stuck, &offline] {
        images.pull_all(&client, work.path()).await?;
    }
    Ok(())
}

/// Images pushed under `REPO`, by tag.
#[derive(Default)]
struct Images(BTreeMap<String, Image>);

impl Images {
    /// Generates an image of [`LAYERS`] (distinct per tag) and pushes it through the proxy.
    async fn push(&mut self, client: &RegistryClient, work: &Path, tag: &str) -> Result<()> {
        let seed = Digest::of(tag.as_bytes()).hex()[..15].to_owned();
        let seed = u64::from_str_radix(&seed, 16)?;
        let image = generate(
            &work.join("images").join(tag),
            image_spec(LAYERS.to_vec(), seed, tag),
        )
        .await?;
        client
            .push_image(&image, REPO, tag, |_| {})
            .await
            .with_context(|| format!("pushing {tag}"))?;
        self.0.insert(tag.to_owned(), image);
        Ok(())
    }

    /// Pulls every image and checks it byte for byte against what was pushed.
    async fn pull_all(&self, client: &RegistryClient, work: &Path) -> Result<()> {
        self.pull(client, work, self.0.len()).await
    }

    /// Pulls the first `count` images (by tag) and checks them byte for byte.
    async fn pull(&self, client: &RegistryClient, work: &Path, count: usize) -> Result<()> {
        for (tag, image) in self.0.iter().take(count) {
            let dest = work.join("pulled").join(tag);
            if dest.exists() {
                std::fs::remove_dir_all(&dest)?;
            }
            let pulled = client
                .pull_image(REPO, tag, &dest, |_| {})
                .await
                .with_context(|| format!("pulling {tag}"))?;
            ensure!(
                pulled.manifest_digest == image.manifest_digest,
                "{tag}: manifest"
            );
            ensure!(
                layout_blobs(&dest)? == layout_blobs(&image.dir)?,
                "{tag}: the pulled blobs differ from the pushed ones"
            );
        }
        Ok(())
    }

    /// Bytes of the layers of these images.
    fn layer_bytes(&self) -> u64 {
        self.0.len() as u64 * LAYERS.iter().sum::<u64>()
    }

    fn blobs(&self) -> BTreeMap<Digest, u64> {
        self.0
            .values()
            .flat_map(|image| layout_blobs(&image.dir).expect("a generated layout lists"))
            .collect()
    }

    /// The first image (by tag) alone.
    fn first(&self) -> Images {
        Images(
            self.0
                .iter()
                .take(1)
                .map(|(t, i)| (t.clone(), i.clone()))
                .collect(),
        )
    }

    /// The blobs of these images that are in the origin's store.
    fn stored(&self, store: &Path) -> Vec<Digest> {
        self.blobs()
            .into_keys()
            .filter(|digest| {
                let hex = digest.hex();
                let data = store
                    .join("blobs/sha256")
                    .join(&hex[..2])
                    .join(&hex)
                    .join("data");
                data.is_file()
            })
            .collect()
    }

    /// Every blob of these images is in the origin's store.
    fn ensure_stored(&self, store: &Path) -> Result<()> {
        let stored = self.stored(store).len();
        let all = self.blobs().len();
        ensure!(
            stored == all,
            "{} blobs evicted before the backend had them",
            all - stored
        );
        Ok(())
    }
}

/// Bytes of the committed blobs in the origin's store, as on disk.
fn stored_bytes(store: &Path) -> Result<u64> {
    let mut total = 0;
    for shard in std::fs::read_dir(store.join("blobs/sha256"))? {
        for blob in std::fs::read_dir(shard?.path())? {
            if let Ok(meta) = std::fs::metadata(blob?.path().join("data")) {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

async fn evictions(cluster: &Cluster) -> Result<f64> {
    cluster
        .metric_sum(Component::Origin, "origin_cache_evictions_total", &[])
        .await
}

async fn pinned(cluster: &Cluster) -> Result<f64> {
    cluster
        .metric_sum(Component::Origin, "origin_cache_pinned_bytes", &[])
        .await
}
