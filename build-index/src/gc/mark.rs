//! The mark: every manifest a tag of any repository points at or any repository records (so
//! untagged manifests pushed by digest and referrers, which are recorded, are kept), each
//! index's children, and every config and layer of each. A recorded manifest that cannot be
//! read fails the whole mark: what it references is unknown, so nothing may be swept.

use std::collections::{HashMap, HashSet};

use futures::{StreamExt, stream};
use shoal_core::{Digest, Name};

use super::GcError;
use crate::error::Error;
use crate::tags::TagStore;
use crate::verify::Origins;

/// Manifests fetched at once (each is buffered, up to 4 MiB, to be parsed).
const FETCH_CONCURRENCY: usize = 8;

/// Where a marked blob was first found referenced.
#[derive(Debug, Clone)]
pub struct Reference {
    pub repository: Name,
    pub manifest: Digest,
}

/// Every reachable blob (manifests included) with a manifest that references it.
#[derive(Debug, Default)]
pub struct Marked {
    pub blobs: HashMap<Digest, Reference>,
    pub manifests: usize,
}

/// Marks from every tag and record of every repository.
pub async fn mark(tags: &TagStore, origins: &Origins) -> Result<Marked, GcError> {
    let mut level = Vec::new();
    for repository in tags.all_repositories().await.map_err(unreadable_store)? {
        let records = tags.records(&repository).await.map_err(unreadable_store)?;
        level.extend(records.into_iter().map(|(d, _)| (repository.clone(), d)));
        for tag in tags.tags(&repository).await.map_err(unreadable_store)? {
            let Ok(tag) = shoal_core::Tag::parse(&tag) else {
                continue;
            };
            if let Some(target) = tags
                .get(&repository, &tag)
                .await
                .map_err(unreadable_store)?
            {
                level.push((repository.clone(), target));
            }
        }
    }
    let mut marked = Marked::default();
    let mut seen = HashSet::new();
    // Level by level: roots, then children of indexes (nesting is bounded by the PUT check).
    while !level.is_empty() {
        level.retain(|(_, digest)| seen.insert(*digest));
        let fetched: Vec<_> = stream::iter(level)
            .map(|(repository, digest)| async move {
                let manifest = origins.fetch_manifest(&repository, digest, None).await;
                (repository, digest, manifest)
            })
            .buffer_unordered(FETCH_CONCURRENCY)
            .collect()
            .await;
        level = Vec::new();
        for (repository, digest, manifest) in fetched {
            let manifest = match manifest {
                Ok(Some((_, manifest))) => manifest,
                Ok(None) => return Err(unreadable(&repository, digest, "no origin has it")),
                Err(error) => return Err(unreadable(&repository, digest, &error.to_string())),
            };
            marked.manifests += 1;
            let reference = Reference {
                repository: repository.clone(),
                manifest: digest,
            };
            marked
                .blobs
                .entry(digest)
                .or_insert_with(|| reference.clone());
            // Every layer, non-distributable ones too: a client may have pushed those.
            for blob in manifest.config().into_iter().chain(manifest.layers()) {
                marked
                    .blobs
                    .entry(blob.digest)
                    .or_insert_with(|| reference.clone());
            }
            for child in manifest.children() {
                level.push((repository.clone(), child.digest));
            }
        }
    }
    Ok(marked)
}

fn unreadable(repository: &Name, digest: Digest, reason: &str) -> GcError {
    GcError::Unreadable {
        repository: repository.to_string(),
        digest,
        reason: reason.to_owned(),
    }
}

/// The tag store itself failed: nothing is known, nothing may be swept.
fn unreadable_store(error: Error) -> GcError {
    GcError::Records(error.to_string())
}
