//! Test images and their comparison: generate an OCI layout with the client crate off the async
//! runtime, list a layout's blobs, and hash files and streamed bodies without holding them whole.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use futures::{Stream, StreamExt};
use shoal_client::{Image, ImageSpec};
use shoal_core::{Digest, Digester};

/// Generates `spec` as an OCI layout in `dir` (blocking work, moved off the runtime).
pub async fn generate(dir: &Path, spec: ImageSpec) -> Result<Image> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || shoal_client::write_layout(&dir, &spec))
        .await
        .context("layout generation panicked")?
        .context("generating the OCI layout")
}

/// The spec of an image of `layers` (their sizes in bytes) generated from `seed`, tagged `tag`.
pub fn image_spec(layers: Vec<u64>, seed: u64, tag: &str) -> ImageSpec {
    ImageSpec {
        layers,
        seed,
        tag: tag.to_owned(),
    }
}

/// The digest and length of a streamed body (an HTTP response, an S3 object), hashed chunk by
/// chunk; the first chunk that fails ends it with that error.
pub async fn stream_digest<B: AsRef<[u8]>, E>(
    body: impl Stream<Item = Result<B, E>>,
) -> Result<(Digest, u64), E> {
    let mut body = std::pin::pin!(body);
    let mut digester = Digester::new();
    let mut length = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        digester.update(chunk.as_ref());
        length += chunk.as_ref().len() as u64;
    }
    Ok((digester.finish(), length))
}

/// The sha256 of a file, streamed.
pub fn file_digest(path: &Path) -> Result<Digest> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut digester = Digester::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(digester.finish());
        }
        digester.update(&buf[..n]);
    }
}

/// Every blob in an OCI layout's `blobs/sha256/` (digest → size), each checked to hash to its
/// file name.
pub fn layout_blobs(dir: &Path) -> Result<BTreeMap<Digest, u64>> {
    let blobs_dir = dir.join("blobs").join("sha256");
    let mut blobs = BTreeMap::new();
    for entry in
        std::fs::read_dir(&blobs_dir).with_context(|| format!("listing {}", blobs_dir.display()))?
    {
        let entry = entry.with_context(|| format!("listing {}", blobs_dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let named = Digest::parse(&format!("sha256:{name}"))
            .with_context(|| format!("{}: not a digest file name", entry.path().display()))?;
        let actual = file_digest(&entry.path())?;
        if actual != named {
            bail!("{} hashes to {actual}", entry.path().display());
        }
        let size = entry
            .metadata()
            .with_context(|| format!("stat {}", entry.path().display()))?
            .len();
        blobs.insert(named, size);
    }
    Ok(blobs)
}

/// The digest of the manifest an OCI layout's `index.json` names first.
pub fn layout_manifest_digest(dir: &Path) -> Result<Digest> {
    let path = dir.join("index.json");
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))?;
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .with_context(|| format!("{} names no manifest", path.display()))?;
    Digest::parse(digest).with_context(|| format!("{}: bad digest", path.display()))
}

/// Pulls `docker://{registry}/{reference}` with skopeo (digests preserved) into a fresh layout
/// under `work`, and checks that it is the image of manifest `manifest` with exactly `blobs`
/// (digest → size, the manifest included), each byte-identical.
pub async fn pull_identical(
    registry: &str,
    reference: &str,
    work: &Path,
    manifest: Digest,
    blobs: &BTreeMap<Digest, u64>,
) -> Result<()> {
    let into =
        work.join(format!("pulled-{registry}-{reference}").replace([':', '.', '/', '@'], "-"));
    crate::tools::skopeo([
        "copy",
        "--src-tls-verify=false",
        "--preserve-digests",
        &format!("docker://{registry}/{reference}"),
        &format!("oci:{}:pulled", into.display()),
    ])
    .await
    .with_context(|| format!("pulling {reference} from {registry}"))?;
    anyhow::ensure!(
        layout_manifest_digest(&into)? == manifest,
        "{registry}/{reference}: other manifest"
    );
    let received = layout_blobs(&into)?;
    anyhow::ensure!(
        received == *blobs,
        "{registry}/{reference}: blobs differ\nexpected: {blobs:?}\nreceived: {received:?}"
    );
    Ok(())
}
