//! The records of the manifests pushed into each repository: a manifest is readable by digest
//! in a repository only while its record there exists, and deleting it by digest removes the
//! record and every tag of the repository pointing at it. Records are [`Entry::Manifest`]s of
//! the tag store, persisted and kept pending exactly as tags are.
//!
//! A tag PUT records every manifest of the tree it points at (an index's children first, the
//! root last), so a tagged manifest always has its record. Manifests tagged before records
//! existed have none: the first lookup that misses in a repository adopts them, recording the
//! tree of every tag target that lacks a record (see `adopt_legacy`).

use std::collections::BTreeSet;

use shoal_core::{Digest, ManifestRecord, Name, Referrer, Tag};
use tracing::{info, warn};

use crate::error::Error;
use crate::tags::{Entry, TagStore, Value, lookup_all};
use crate::verify::Origins;

/// Checks the manifest tree `digest` names on the origins and records each of its manifests in
/// `name`, the root last.
pub async fn record_tree(
    tags: &TagStore,
    origins: &Origins,
    name: &Name,
    digest: Digest,
) -> Result<(), Error> {
    // The push race with garbage collection is closed here (docs/gc.md): the check touches
    // every blob on the origins (failing for one being swept), the pass keeps a mark from
    // starting until the records are written, and a record must follow its touches within
    // `gc.grace` (the window a sweep leaves touched blobs alone).
    let pass = origins.gate.enter().await;
    let tree = origins.verify(name, digest).await?;
    pass.check()?;
    for (manifest, record) in tree.into_iter().rev() {
        tags.put(name, Value::Manifest { manifest, record }).await?;
    }
    Ok(())
}

/// The record of `digest` in `name`, adopting the repository's manifests tagged before records
/// existed when there is none.
pub async fn find(
    tags: &TagStore,
    origins: &Origins,
    name: &Name,
    digest: &Digest,
) -> Result<Option<ManifestRecord>, Error> {
    if let Some(record) = tags.record(name, digest).await? {
        return Ok(Some(record));
    }
    adopt_legacy(tags, origins, name).await?;
    tags.record(name, digest).await
}

/// Deletes the manifest `digest` from `name`: every tag pointing at it, then its record (in
/// that order, so a crash in between leaves the manifest readable and the delete repeatable,
/// never a tag whose target is gone). Returns the tags removed; MANIFEST_UNKNOWN when the
/// repository has neither a record of it nor a tag pointing at it.
pub async fn delete(
    tags: &TagStore,
    origins: &Origins,
    name: &Name,
    digest: &Digest,
) -> Result<Vec<Tag>, Error> {
    let targets = adopt_legacy(tags, origins, name).await?;
    let mut untagged = Vec::new();
    for (tag, target) in targets {
        if target == *digest && tags.delete(name, &Entry::Tag(tag.clone())).await? {
            untagged.push(tag);
        }
    }
    let recorded = tags.delete(name, &Entry::Manifest(*digest)).await?;
    if !recorded && untagged.is_empty() {
        return Err(Error::ManifestUnknown(*digest));
    }
    info!(repo = %name, %digest, ?untagged, "manifest deleted");
    Ok(untagged)
}

/// Removes tag `tag` of `name` (its record stays): what a tag DELETE and retention both do.
/// `false` when there was no such tag.
pub async fn untag(tags: &TagStore, name: &Name, tag: &Tag) -> Result<bool, Error> {
    let deleted = tags.delete(name, &Entry::Tag(tag.clone())).await?;
    if deleted {
        info!(repo = %name, %tag, "tag deleted");
    }
    Ok(deleted)
}

/// The manifests of `name` whose `subject` is `digest`, in digest order.
pub async fn referrers(
    tags: &TagStore,
    name: &Name,
    digest: &Digest,
) -> Result<Vec<Referrer>, Error> {
    let records = tags.records(name).await?;
    Ok(records
        .into_iter()
        .filter(|(_, record)| record.subject == Some(*digest))
        .map(|(manifest, record)| record.referrer(manifest))
        .collect())
}

/// Records the trees of the tag targets of `name` that have no record (tagged before records
/// existed; a tag written since always has one) and returns every tag with its target. A tree
/// the origins no longer hold whole is left as it is, and its manifests stay unreadable by
/// digest.
async fn adopt_legacy(
    tags: &TagStore,
    origins: &Origins,
    name: &Name,
) -> Result<Vec<(Tag, Digest)>, Error> {
    let targets = tag_targets(tags, name).await?;
    let roots: BTreeSet<Digest> = targets.iter().map(|(_, digest)| *digest).collect();
    for root in roots {
        if tags.record(name, &root).await?.is_some() {
            continue;
        }
        match record_tree(tags, origins, name, root).await {
            Ok(()) => {
                info!(repo = %name, digest = %root, "manifest tagged before records existed recorded")
            }
            Err(
                error @ (Error::ManifestUnknown(_)
                | Error::BlobUnknown { .. }
                | Error::ManifestInvalid { .. }),
            ) => {
                warn!(repo = %name, digest = %root, error = %shoal_core::chain(&error), "tagged manifest not recorded: incomplete on the origins");
            }
            Err(error) => return Err(error),
        }
    }
    Ok(targets)
}

/// Every tag of `name` with the digest it points at.
pub async fn tag_targets(tags: &TagStore, name: &Name) -> Result<Vec<(Tag, Digest)>, Error> {
    let names = tags.tags(name).await?;
    let names = names.into_iter().filter_map(|tag| Tag::parse(&tag).ok());
    lookup_all(names, |tag| async move { tags.get(name, &tag).await }).await
}
