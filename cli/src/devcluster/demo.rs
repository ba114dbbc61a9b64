//! The devcluster demo: generate an image, push it through the proxy, pull it back through the
//! proxy and through every agent, and verify each copy; then a table per agent of where its
//! pieces came from (each agent's `GET /debug/downloads`, for the image's blobs) and the swarm
//! view's URL. Under `--tls` the proxy is reached over HTTPS trusting the devcluster's CA;
//! agents' registries are plain HTTP either way.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use shoal_client::oci::{Image, ImageSpec, write_layout};
use shoal_client::registry::{Progress, RegistryClient};
use shoal_core::Digest;

use super::certs;
use super::layout::{Layout, PROXY, TRACKER, agent};

const REPO: &str = "shoal/demo";
const TAG: &str = "latest";
/// Two layers, big enough that the progress bars move and the PATCH path splits them into chunks.
const LAYERS: [u64; 2] = [24 << 20, 8 << 20];

pub async fn run(layout: &Layout) -> anyhow::Result<()> {
    let dir = layout.data.join("demo");
    // A fresh seed per run makes fresh layers, so the push moves bytes rather than finding them present.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let image_dir = dir.join("image");
    if image_dir.exists() {
        std::fs::remove_dir_all(&image_dir)
            .with_context(|| format!("clearing {}", image_dir.display()))?;
    }
    println!(
        "demo: generating a {}-layer image in {}",
        LAYERS.len(),
        image_dir.display()
    );
    let spec = ImageSpec {
        layers: LAYERS.to_vec(),
        seed,
        tag: TAG.into(),
    };
    let image = tokio::task::spawn_blocking(move || write_layout(&image_dir, &spec))
        .await
        .context("image generator panicked")??;

    let http = certs::client(layout)?
        .build()
        .context("building the HTTP client")?;
    let client = RegistryClient::with_http_client(&layout.url(PROXY), http)?;
    println!(
        "demo: pushing {REPO}:{TAG} to the proxy at {}",
        client.base_url()
    );
    let bars = Bars::new("push".to_owned());
    let pushed = client
        .push_image(&image, REPO, TAG, |p| bars.update(p))
        .await
        .context("pushing the demo image")?;
    ensure!(
        pushed == image.manifest_digest,
        "the proxy acknowledged {pushed}, expected {}",
        image.manifest_digest
    );

    pull_and_verify(&image, "proxy", &client, &dir.join("pulled")).await?;
    let mut times = Vec::new();
    for i in 0..layout.agents {
        let client = RegistryClient::new(&format!("http://{}", agent(i)))?;
        let name = format!("agent-{i}");
        let started = Instant::now();
        pull_and_verify(&image, &name, &client, &dir.join(format!("pulled-{name}"))).await?;
        times.push(started.elapsed());
    }
    print_sources(&image, &times).await?;
    println!("demo: the swarm view: {}/ui", layout.url(TRACKER));
    Ok(())
}

/// The closing table: per agent, the pieces and bytes of the image's blobs (manifest included)
/// it received from other agents and from origins, its pull's time and speed.
async fn print_sources(image: &Image, times: &[Duration]) -> anyhow::Result<()> {
    let mut blobs: HashSet<String> = image
        .blobs()
        .map(|(digest, _)| digest.to_string())
        .collect();
    blobs.insert(image.manifest_digest.to_string());
    let size: u64 = image.blobs().map(|(_, size)| size).sum();
    let http = shoal_service::client::builder()
        .build()
        .context("building the HTTP client")?;
    println!(
        "demo: {:<8} {:>12} {:>14} {:>12} {:>14} {:>8} {:>8}",
        "agent", "pieces:peers", "pieces:origins", "bytes:peers", "bytes:origins", "time", "MB/s"
    );
    for (i, time) in (0..).zip(times) {
        let url = format!("http://{}/debug/downloads", agent(i));
        let report: serde_json::Value = http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("asking {url}"))?
            .json()
            .await
            .with_context(|| format!("reading {url}"))?;
        let sum = |field: &str| -> u64 {
            report["downloads"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["digest"].as_str().is_some_and(|d| blobs.contains(d)))
                .filter_map(|d| d[field].as_u64())
                .sum()
        };
        println!(
            "demo: {:<8} {:>12} {:>14} {:>12} {:>14} {:>7.2}s {:>8.1}",
            format!("agent-{i}"),
            sum("pieces_from_peers"),
            sum("pieces_from_origins"),
            sum("bytes_from_peers"),
            sum("bytes_from_origins"),
            time.as_secs_f64(),
            size as f64 / 1e6 / time.as_secs_f64().max(1e-3),
        );
    }
    Ok(())
}

/// Pulls the demo image through `client` (the proxy or an agent, called `via`) into a fresh
/// layout at `dest` and checks it is the pushed image.
async fn pull_and_verify(
    image: &Image,
    via: &str,
    client: &RegistryClient,
    dest: &Path,
) -> anyhow::Result<()> {
    if dest.exists() {
        std::fs::remove_dir_all(dest).with_context(|| format!("clearing {}", dest.display()))?;
    }
    println!(
        "demo: pulling {REPO}:{TAG} through {via} at {}",
        client.base_url()
    );
    let bars = Bars::new(format!("pull {via}"));
    let pulled = client
        .pull_image(REPO, TAG, dest, |p| bars.update(p))
        .await
        .with_context(|| format!("pulling the demo image through {via}"))?;
    ensure!(
        pulled.manifest_digest == image.manifest_digest,
        "{via}: pulled manifest {} differs from pushed {}",
        pulled.manifest_digest,
        image.manifest_digest
    );
    let mut expected: Vec<_> = image.blobs().copied().collect();
    let mut got = pulled.blobs.clone();
    expected.sort();
    got.sort();
    ensure!(
        expected == got,
        "{via}: pulled blobs differ from pushed blobs"
    );
    println!(
        "demo: OK via {via}: {REPO}:{TAG} = {} ({} blobs, every byte verified against its digest)",
        pulled.manifest_digest,
        got.len()
    );
    Ok(())
}

/// One progress bar per blob.
struct Bars {
    verb: String,
    multi: MultiProgress,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
}

impl Bars {
    fn new(verb: String) -> Self {
        Self {
            verb,
            multi: MultiProgress::new(),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn update(&self, progress: Progress) {
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        match progress {
            Progress::Started { digest, total } => {
                let bar = self.multi.add(ProgressBar::new(total));
                bar.set_style(
                    ProgressStyle::with_template(
                        "  {prefix} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar.set_prefix(format!("{} {}", self.verb, &digest.hex()[..12]));
                bars.insert(digest, bar);
            }
            Progress::Advanced { digest, done, .. } => {
                if let Some(bar) = bars.get(&digest) {
                    bar.set_position(done);
                }
            }
            Progress::Finished {
                digest,
                total,
                skipped,
            } => {
                let Some(bar) = bars.get(&digest) else { return };
                let note = if skipped { " (already present)" } else { "" };
                // Bars are hidden when stdout is not a terminal (CI, scripts); print a line instead.
                if bar.is_hidden() {
                    println!(
                        "  {} {} {total} bytes done{note}",
                        self.verb,
                        &digest.hex()[..12]
                    );
                }
                bar.finish_with_message(note);
            }
        }
    }
}
