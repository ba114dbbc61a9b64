//! Generates OCI image layouts on disk (`oci-layout`, `index.json`, `blobs/sha256/…`) for tests,
//! demos and benches, with no network: each layer is an uncompressed tar holding one file of
//! seeded pseudo-random bytes, so the same spec always yields the same digests.
//!
//! Layers are generated, hashed and written in fixed-size chunks; a multi-GiB layer never sits in
//! memory. Generation is blocking file I/O: call it from `spawn_blocking` inside async code.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rand::rngs::Xoshiro256PlusPlus;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use shoal_core::{Descriptor, Digest, Digester, MediaType};

use crate::error::{Error, io_context};

/// Media type of an OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of an uncompressed OCI layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// The annotation that names a manifest's tag inside an OCI layout's `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Random bytes are produced, hashed and written this many at a time: large enough that the
/// per-call overhead vanishes, small enough to be irrelevant next to the process's memory.
const CHUNK: usize = 1 << 20;
/// Tar's block size; the file data is padded to it and the archive ends with two zero blocks.
const TAR_BLOCK: u64 = 512;

/// What image to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// Approximate size of each layer in bytes (the payload of its single file; tar framing adds
    /// a little). One entry per layer, bottom layer first.
    pub layers: Vec<u64>,
    /// Seeds the pseudo-random content: equal specs give byte-identical images.
    pub seed: u64,
    /// The tag recorded in `index.json` (`org.opencontainers.image.ref.name`).
    pub tag: String,
}

/// A generated image layout on disk.
#[derive(Debug, Clone)]
pub struct Image {
    /// The layout's root directory.
    pub dir: PathBuf,
    pub manifest_digest: Digest,
    /// The manifest exactly as stored (and as pushed; its digest is `manifest_digest`).
    pub manifest_bytes: Vec<u8>,
    /// The config blob's digest and size.
    pub config: (Digest, u64),
    /// Each layer's digest and size, bottom layer first.
    pub layers: Vec<(Digest, u64)>,
}

impl Image {
    /// Where a blob of this image lives inside the layout.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        blob_path(&self.dir, digest)
    }

    /// The manifest's media type (always an OCI image manifest for generated images).
    pub fn manifest_media_type(&self) -> MediaType {
        MediaType::OciManifest
    }

    /// Every blob the manifest references, config first, then the layers.
    pub fn blobs(&self) -> impl Iterator<Item = &(Digest, u64)> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }
}

/// Where the blob `digest` lives inside the OCI layout rooted at `dir`.
pub fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs")
        .join(digest.algorithm().as_str())
        .join(digest.hex())
}

/// Writes the image described by `spec` as an OCI layout into `dir` (created if missing).
pub fn write_layout(dir: &Path, spec: &ImageSpec) -> Result<Image, Error> {
    let blobs_dir = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs_dir).map_err(io_context(&blobs_dir))?;

    let mut rng = Xoshiro256PlusPlus::seed_from_u64(spec.seed);
    let mut layers = Vec::with_capacity(spec.layers.len());
    for (index, &payload) in spec.layers.iter().enumerate() {
        let file_name = format!("shoal-layer-{index}-{:016x}.bin", spec.seed);
        layers.push(write_layer(&blobs_dir, &file_name, payload, &mut rng)?);
    }

    let config_bytes = config_json(spec, &layers)?;
    let config = (Digest::of(&config_bytes), len_u64(&config_bytes));
    write_blob(dir, &config.0, &config_bytes)?;

    let manifest = ManifestJson {
        schema_version: 2,
        media_type: MediaType::OciManifest.as_str(),
        config: descriptor(OCI_CONFIG, &config),
        layers: layers
            .iter()
            .map(|layer| descriptor(OCI_LAYER_TAR, layer))
            .collect(),
    };
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = Digest::of(&manifest_bytes);
    write_blob(dir, &manifest_digest, &manifest_bytes)?;

    write_file(&dir.join("oci-layout"), OCI_LAYOUT)?;
    let index = index_json(
        &spec.tag,
        descriptor(
            MediaType::OciManifest.as_str(),
            &(manifest_digest, len_u64(&manifest_bytes)),
        ),
    )?;
    write_file(&dir.join("index.json"), &index)?;

    Ok(Image {
        dir: dir.to_path_buf(),
        manifest_digest,
        manifest_bytes,
        config,
        layers,
    })
}

/// The content of a layout's `oci-layout` file.
pub(crate) const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// A layout's `index.json` naming one manifest, tagged `tag`. Shared with the pull path, which
/// leaves a pulled image as a layout too.
pub(crate) fn index_json(tag: &str, manifest: Descriptor) -> Result<Vec<u8>, Error> {
    let index = IndexJson {
        schema_version: 2,
        media_type: MediaType::OciIndex.as_str(),
        manifests: vec![IndexEntry {
            descriptor: manifest,
            annotations: RefName { ref_name: tag },
        }],
    };
    Ok(serde_json::to_vec(&index)?)
}

/// A descriptor of blob `(digest, size)` with `media_type`.
fn descriptor(media_type: &str, (digest, size): &(Digest, u64)) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest: *digest,
        size: *size,
        urls: Vec::new(),
    }
}

/// Streams one layer (a tar with one file of `payload` random bytes) into a temporary file in
/// `blobs_dir`, hashing as it goes, then renames it to its digest.
fn write_layer(
    blobs_dir: &Path,
    file_name: &str,
    payload: u64,
    rng: &mut Xoshiro256PlusPlus,
) -> Result<(Digest, u64), Error> {
    let tmp_path = blobs_dir.join(format!(".tmp-{file_name}"));
    let file = File::create(&tmp_path).map_err(io_context(&tmp_path))?;
    let mut out = HashingWriter::new(BufWriter::with_capacity(CHUNK, file));
    let on_io = io_context(&tmp_path);

    let header = tar_header(file_name, payload).map_err(&on_io)?;
    out.write_all(header.as_bytes()).map_err(&on_io)?;

    let mut chunk = vec![0u8; CHUNK];
    let mut remaining = payload;
    while remaining > 0 {
        let n = usize::try_from(remaining).map_or(CHUNK, |r| r.min(CHUNK));
        rng.fill_bytes(&mut chunk[..n]);
        out.write_all(&chunk[..n]).map_err(&on_io)?;
        remaining -= n as u64;
    }
    // Pad the file data to a whole block, then the two zero blocks that end an archive.
    let padding = (TAR_BLOCK - payload % TAR_BLOCK) % TAR_BLOCK + 2 * TAR_BLOCK;
    io::copy(&mut io::repeat(0).take(padding), &mut out).map_err(&on_io)?;

    let (digest, size, writer) = out.finish();
    let file = writer.into_inner().map_err(|e| on_io(e.into_error()))?;
    file.sync_all().map_err(&on_io)?;
    let final_path = blobs_dir.join(digest.hex());
    fs::rename(&tmp_path, &final_path).map_err(io_context(&final_path))?;
    Ok((digest, size))
}

fn tar_header(file_name: &str, size: u64) -> io::Result<tar::Header> {
    let mut header = tar::Header::new_ustar();
    header.set_path(file_name)?;
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    Ok(header)
}

/// The image config: platform, a history entry per layer and `rootfs.diff_ids`, which equal the
/// layer digests because the layers are not compressed.
fn config_json(spec: &ImageSpec, layers: &[(Digest, u64)]) -> Result<Vec<u8>, Error> {
    let config = ConfigJson {
        created: "1970-01-01T00:00:00Z",
        architecture: "amd64",
        os: "linux",
        config: ContainerConfig {
            labels: Labels {
                seed: spec.seed.to_string(),
            },
        },
        rootfs: RootFs {
            kind: "layers",
            diff_ids: layers
                .iter()
                .map(|(digest, _)| digest.to_string())
                .collect(),
        },
        history: layers
            .iter()
            .enumerate()
            .map(|(index, _)| History {
                created: "1970-01-01T00:00:00Z",
                created_by: format!("shoal-client generated layer {index}"),
            })
            .collect(),
    };
    Ok(serde_json::to_vec(&config)?)
}

fn write_blob(dir: &Path, digest: &Digest, bytes: &[u8]) -> Result<(), Error> {
    write_file(&blob_path(dir, digest), bytes)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    fs::write(path, bytes).map_err(io_context(path))
}

fn len_u64(bytes: &[u8]) -> u64 {
    // usize → u64 never truncates on the platforms Rust supports.
    bytes.len() as u64
}

/// A writer that hashes and counts every byte on its way to the inner writer.
struct HashingWriter<W> {
    inner: W,
    digester: Digester,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            digester: Digester::new(),
            written: 0,
        }
    }

    fn finish(self) -> (Digest, u64, W) {
        (self.digester.finish(), self.written, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digester.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[derive(Serialize)]
struct ManifestJson {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Serialize)]
struct IndexJson<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'static str,
    manifests: Vec<IndexEntry<'a>>,
}

#[derive(Serialize)]
struct IndexEntry<'a> {
    #[serde(flatten)]
    descriptor: Descriptor,
    annotations: RefName<'a>,
}

#[derive(Serialize)]
struct RefName<'a> {
    #[serde(rename = "org.opencontainers.image.ref.name")]
    ref_name: &'a str,
}

#[derive(Serialize)]
struct ConfigJson {
    created: &'static str,
    architecture: &'static str,
    os: &'static str,
    config: ContainerConfig,
    rootfs: RootFs,
    history: Vec<History>,
}

#[derive(Serialize)]
struct ContainerConfig {
    #[serde(rename = "Labels")]
    labels: Labels,
}

#[derive(Serialize)]
struct Labels {
    #[serde(rename = "io.shoal.seed")]
    seed: String,
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
struct History {
    created: &'static str,
    created_by: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(layers: Vec<u64>, seed: u64) -> ImageSpec {
        ImageSpec {
            layers,
            seed,
            tag: "v1".to_owned(),
        }
    }

    #[test]
    fn every_blob_is_stored_under_its_own_digest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = write_layout(dir.path(), &spec(vec![1000, 3 * CHUNK as u64 + 7], 1))
            .expect("write layout");
        let mut all: Vec<(Digest, u64)> = image.blobs().copied().collect();
        all.push((image.manifest_digest, image.manifest_bytes.len() as u64));
        for (digest, size) in all {
            let bytes = fs::read(image.blob_path(&digest)).expect("read blob");
            assert_eq!(Digest::of(&bytes), digest);
            assert_eq!(bytes.len() as u64, size);
        }
    }

    #[test]
    fn a_layer_is_a_tar_with_one_file_of_the_requested_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = write_layout(dir.path(), &spec(vec![12345], 2)).expect("write layout");
        let (digest, size) = image.layers[0];
        assert_eq!(size, 512 + 12345u64.div_ceil(512) * 512 + 1024);
        let file = File::open(image.blob_path(&digest)).expect("open layer");
        let mut archive = tar::Archive::new(file);
        let sizes: Vec<u64> = archive
            .entries()
            .expect("entries")
            .map(|entry| entry.expect("entry").header().size().expect("size"))
            .collect();
        assert_eq!(sizes, vec![12345]);
    }

    #[test]
    fn config_diff_ids_are_the_layer_digests_and_index_names_the_tag() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image = write_layout(dir.path(), &spec(vec![10, 20], 3)).expect("write layout");
        let config: serde_json::Value =
            serde_json::from_slice(&fs::read(image.blob_path(&image.config.0)).expect("config"))
                .expect("config json");
        let diff_ids: Vec<String> = image.layers.iter().map(|(d, _)| d.to_string()).collect();
        assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!(diff_ids));

        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join("index.json")).expect("index"))
                .expect("index json");
        let entry = &index["manifests"][0];
        assert_eq!(entry["digest"], image.manifest_digest.to_string());
        assert_eq!(entry["annotations"][REF_NAME_ANNOTATION], "v1");
        assert!(dir.path().join("oci-layout").is_file());
    }

    #[test]
    fn equal_specs_give_equal_images_and_seeds_differ() {
        let (a, b, c) = (
            tempfile::tempdir(),
            tempfile::tempdir(),
            tempfile::tempdir(),
        );
        let (a, b, c) = (a.expect("a"), b.expect("b"), c.expect("c"));
        let first = write_layout(a.path(), &spec(vec![4096, 100], 7)).expect("first");
        let again = write_layout(b.path(), &spec(vec![4096, 100], 7)).expect("again");
        let other = write_layout(c.path(), &spec(vec![4096, 100], 8)).expect("other");
        assert_eq!(first.manifest_digest, again.manifest_digest);
        assert_ne!(first.manifest_digest, other.manifest_digest);
        assert_ne!(first.layers[0].0, other.layers[0].0);
    }

    #[test]
    fn no_temporary_files_are_left_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_layout(dir.path(), &spec(vec![1, 2, 3], 9)).expect("write layout");
        let leftovers: Vec<_> = fs::read_dir(dir.path().join("blobs/sha256"))
            .expect("read dir")
            .filter_map(Result::ok)
            .filter(|entry| entry.file_name().to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
