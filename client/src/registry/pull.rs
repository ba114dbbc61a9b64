//! The pull path: a manifest (and an index's children), then every blob streamed to a temporary
//! file while hashed, renamed into an OCI layout only once digest and size match.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use shoal_core::{Algorithm, Descriptor, Digest, Hasher, Manifest};
use shoal_registry_client::Blob;
use tokio::fs::{self, File};
use tokio::io::AsyncWriteExt;

use super::manifest::parse_manifest;
use super::{Progress, RegistryClient, name};
use crate::error::{Error, io_context};
use crate::oci;

/// An image pulled into an OCI layout.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The layout's root directory (`oci-layout`, `index.json`, `blobs/sha256/…`).
    pub dir: PathBuf,
    pub manifest_digest: Digest,
    pub media_type: String,
    pub manifest_bytes: Vec<u8>,
    /// Child manifests of an index or manifest list (empty for a single image), in index order.
    pub child_manifests: Vec<(Digest, u64)>,
    /// Every config and layer blob, deduplicated, in the order they were fetched.
    pub blobs: Vec<(Digest, u64)>,
}

impl RegistryClient {
    /// Pulls `repo:tag` (an image or an index with all its children) into an OCI layout at
    /// `dest_dir`, verifying every byte against its digest.
    pub async fn pull_image(
        &self,
        repo: &str,
        tag: &str,
        dest_dir: &Path,
        progress: impl Fn(Progress),
    ) -> Result<PulledImage, Error> {
        for algorithm in Algorithm::ALL {
            let blobs_dir = dest_dir.join("blobs").join(algorithm.as_str());
            fs::create_dir_all(&blobs_dir)
                .await
                .map_err(io_context(&blobs_dir))?;
        }

        let top = self.get_manifest(repo, tag).await?;
        write_file(&oci::blob_path(dest_dir, &top.digest), &top.bytes).await?;
        let top_manifest = parse_manifest(&top, &format!("{repo}:{tag}"))?;

        // An index lists child manifests; fetch each one and collect its blobs.
        let mut images = Vec::new();
        let mut child_manifests = Vec::new();
        if top_manifest.media_type().is_index() {
            for child in top_manifest.children() {
                let fetched = self.get_manifest(repo, &child.digest.to_string()).await?;
                let actual = fetched.bytes.len() as u64;
                if actual != child.size {
                    return Err(Error::SizeMismatch {
                        digest: child.digest,
                        expected: child.size,
                        actual,
                    });
                }
                let reference = format!("{repo}@{}", child.digest);
                let manifest = parse_manifest(&fetched, &reference)?;
                if manifest.media_type().is_index() {
                    return Err(Error::BadResponse {
                        context: reference,
                        reason: "an index nested in an index is not supported".to_owned(),
                    });
                }
                write_file(&oci::blob_path(dest_dir, &child.digest), &fetched.bytes).await?;
                child_manifests.push((child.digest, child.size));
                images.push(manifest);
            }
        } else {
            images.push(top_manifest);
        }

        let mut seen = HashSet::new();
        let mut blobs = Vec::new();
        for blob in images.iter().flat_map(Manifest::blobs) {
            if seen.insert(blob.digest) {
                self.pull_blob(repo, &blob.digest, blob.size, dest_dir, &progress)
                    .await?;
                blobs.push((blob.digest, blob.size));
            }
        }

        let layout_path = dest_dir.join("oci-layout");
        write_file(&layout_path, oci::OCI_LAYOUT).await?;
        let index = oci::index_json(
            tag,
            Descriptor {
                media_type: top.media_type.clone(),
                digest: top.digest,
                size: top.bytes.len() as u64,
                urls: Vec::new(),
            },
        )?;
        write_file(&dest_dir.join("index.json"), &index).await?;

        Ok(PulledImage {
            dir: dest_dir.to_path_buf(),
            manifest_digest: top.digest,
            media_type: top.media_type,
            manifest_bytes: top.bytes,
            child_manifests,
            blobs,
        })
    }

    /// Downloads blob `digest` (`size` bytes) into the layout at `dest_dir`, streaming it to a
    /// temporary file and hashing on the way; the file gets its final name only when digest
    /// and size match. A blob already present in the layout is not fetched again.
    pub async fn pull_blob(
        &self,
        repo: &str,
        digest: &Digest,
        size: u64,
        dest_dir: &Path,
        progress: &impl Fn(Progress),
    ) -> Result<(), Error> {
        let final_path = oci::blob_path(dest_dir, digest);
        if fs::try_exists(&final_path)
            .await
            .map_err(io_context(&final_path))?
        {
            progress(Progress::finished(digest, size, true));
            return Ok(());
        }
        progress(Progress::Started {
            digest: *digest,
            total: size,
        });
        let blob = self
            .registry
            .get_blob(&name(repo)?, digest, None)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("blob {repo}@{digest}"),
            })?;

        let tmp_path = final_path.with_file_name(format!(".tmp-{}", digest.hex()));
        let result = download(blob, &tmp_path, digest, size, progress).await;
        if let Err(e) = result {
            // Best effort: the download already failed, a leftover temp file is harmless.
            let _ = fs::remove_file(&tmp_path).await;
            return Err(e);
        }
        fs::rename(&tmp_path, &final_path)
            .await
            .map_err(io_context(&final_path))?;
        progress(Progress::finished(digest, size, false));
        Ok(())
    }
}

/// Streams `blob` into `tmp_path`, checking the digest (its own algorithm) and length against `digest`/`size`.
async fn download(
    blob: Blob,
    tmp_path: &Path,
    digest: &Digest,
    size: u64,
    progress: &impl Fn(Progress),
) -> Result<(), Error> {
    let mut file = File::create(tmp_path).await.map_err(io_context(tmp_path))?;
    let mut digester = Hasher::new(digest.algorithm());
    let mut done = 0u64;
    let mut body = std::pin::pin!(blob.into_stream());
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        done += chunk.len() as u64;
        if done > size {
            return Err(Error::SizeMismatch {
                digest: *digest,
                expected: size,
                actual: done,
            });
        }
        digester.update(&chunk);
        file.write_all(&chunk).await.map_err(io_context(tmp_path))?;
        progress(Progress::Advanced {
            digest: *digest,
            done,
            total: size,
        });
    }
    if done != size {
        return Err(Error::SizeMismatch {
            digest: *digest,
            expected: size,
            actual: done,
        });
    }
    let actual = digester.finish();
    if actual != *digest {
        return Err(Error::DigestMismatch {
            expected: *digest,
            actual,
        });
    }
    file.sync_all().await.map_err(io_context(tmp_path))
}

async fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    fs::write(path, bytes).await.map_err(io_context(path))
}
