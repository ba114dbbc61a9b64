//! Checking that a manifest is complete on the origin cluster before a tag may point at it: the
//! manifest itself, every blob it references and, for an index, every child manifest and the
//! blobs of each child. Each digest is looked up on the origins that own it, in rendezvous order:
//! an owner that is down or lacks it passes the lookup on to the next.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::io;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt, stream};
use shoal_api::relay::{Refetch, resuming_body};
use shoal_api::{ApiError, OriginClient, OriginCluster};
use shoal_core::{Descriptor, Digest, MAX_MANIFEST_SIZE, Manifest, ManifestRecord, Name};

use crate::error::Error;
use crate::gc::Gate;

/// Blob stats one tag check keeps in flight: enough to hide round trips for an image with dozens
/// of layers, without flooding the origins.
const STAT_CONCURRENCY: usize = 16;
/// Child manifests fetched at once for an index. Each is buffered (up to 4 MiB) to be parsed, so
/// this bounds a check's memory as well as its load on the origins.
const MANIFEST_CONCURRENCY: usize = 4;
/// Indexes may nest (an index of indexes); a deeper chain than this is refused as malformed
/// instead of being followed without bound.
const MAX_INDEX_DEPTH: usize = 4;

/// The origin cluster, as seen by the build-index: the one origin-cluster client (live
/// membership, static or DNS, health-checked).
pub struct Origins {
    cluster: OriginCluster,
    /// Orders manifest PUTs against garbage collection's marks.
    pub gate: Gate,
}

impl Origins {
    pub fn new(cluster: OriginCluster, gate: Gate) -> Self {
        Self { cluster, gate }
    }

    pub fn cluster(&self) -> &OriginCluster {
        &self.cluster
    }

    /// Checks the manifest `digest` of repository `name` and everything it references; returns
    /// the record of every manifest of the tree (the root first, then an index's children).
    pub async fn verify(
        &self,
        name: &Name,
        digest: Digest,
    ) -> Result<Vec<(Digest, ManifestRecord)>, Error> {
        let (bytes, root) = self
            .fetch_manifest(name, digest, None)
            .await?
            .ok_or(Error::ManifestUnknown(digest))?;
        let mut manifests = Vec::new();

        // Walk the tree level by level: an image manifest has no children, an index has one
        // level of them (more only when indexes nest). Blobs are collected and deduplicated
        // across the whole tree, since platforms of one image often share layers: the map goes
        // from (blob, size) to the first manifest found referencing it, named in errors.
        let mut blobs = BTreeMap::new();
        let mut seen = HashSet::from([digest]);
        let mut level = vec![(digest, root, bytes.len() as u64)];
        for depth in 0.. {
            let mut children = Vec::new();
            for (manifest_digest, manifest, size) in &level {
                manifests.push((*manifest_digest, ManifestRecord::new(manifest, *size)));
                for blob in manifest.blobs() {
                    blobs
                        .entry((blob.digest, blob.size))
                        .or_insert(*manifest_digest);
                }
                for child in manifest.children() {
                    if seen.insert(child.digest) {
                        children.push((*manifest_digest, child.clone()));
                    }
                }
            }
            if children.is_empty() {
                break;
            }
            if depth == MAX_INDEX_DEPTH {
                return Err(Error::ManifestInvalid {
                    digest,
                    reason: format!("indexes nest deeper than {MAX_INDEX_DEPTH} levels"),
                });
            }
            level = stream::iter(children)
                .map(|(parent, child)| self.fetch_child(name, parent, child))
                .buffer_unordered(MANIFEST_CONCURRENCY)
                .try_collect()
                .await?;
        }

        // The manifests are touched too: garbage collection must keep them as it keeps blobs.
        for (manifest, record) in &manifests {
            blobs.entry((*manifest, record.size)).or_insert(*manifest);
        }
        stream::iter(blobs)
            .map(|((blob, size), manifest)| self.check_blob(name, manifest, blob, size))
            .buffer_unordered(STAT_CONCURRENCY)
            .try_collect::<()>()
            .await?;
        Ok(manifests)
    }

    /// A child manifest of the index `parent`: it must exist, match its descriptor and parse.
    async fn fetch_child(
        &self,
        name: &Name,
        parent: Digest,
        child: Descriptor,
    ) -> Result<(Digest, Manifest, u64), Error> {
        let (_, manifest) = self
            .fetch_manifest(name, child.digest, Some(&child))
            .await?
            .ok_or(Error::BlobUnknown {
                manifest: parent,
                blob: child.digest,
            })?;
        // `fetch_manifest` checked the size against the descriptor.
        Ok((child.digest, manifest, child.size))
    }

    /// Opens a streamed download of `blob` from its owners; `None` when none has it. `http` is
    /// the caller's: a whole blob can take longer than the lookup client's request timeout.
    pub async fn open_blob(
        &self,
        http: &reqwest::Client,
        name: &Name,
        blob: Digest,
    ) -> Result<Option<BoxStream<'static, io::Result<Bytes>>>, Error> {
        let cluster = self.cluster.with_http(http.clone());
        let Some((response, origin)) = get_blob(&cluster, name, blob, None).await? else {
            return Ok(None);
        };
        let refetch: Refetch = {
            let (cluster, name) = (cluster.clone(), name.clone());
            Box::new(move |range| {
                let (cluster, name) = (cluster.clone(), name.clone());
                Box::pin(async move { Ok(get_blob(&cluster, &name, blob, Some(&range)).await?) })
            })
        };
        Ok(Some(resuming_body(
            cluster, blob, response, origin, refetch,
        )))
    }

    /// Downloads and parses a manifest, returning its bytes too; `None` when the origins do not
    /// have it. `descriptor` is what the referencing index says about it (size, media type), if
    /// any.
    pub async fn fetch_manifest(
        &self,
        name: &Name,
        digest: Digest,
        descriptor: Option<&Descriptor>,
    ) -> Result<Option<(bytes::Bytes, Manifest)>, Error> {
        let fetched = on_owners(&self.cluster, digest, |origin| async move {
            origin
                .get_small_blob(&digest, Some(name), MAX_MANIFEST_SIZE)
                .await
        })
        .await;
        let (bytes, origin) = match fetched {
            Ok(Some(found)) => found,
            Ok(None) => return Ok(None),
            Err(Error::OriginUnavailable {
                source: ApiError::TooLarge { .. },
                ..
            }) => {
                return Err(Error::ManifestInvalid {
                    digest,
                    reason: format!("larger than {MAX_MANIFEST_SIZE} bytes"),
                });
            }
            Err(error) => return Err(error),
        };
        // The origin verified the digest when the manifest was stored; checking again is cheap
        // and keeps a faulty origin from making a tag point at content it does not name.
        let actual = digest.algorithm().digest(&bytes);
        if actual != digest {
            return Err(Error::OriginCorrupt {
                origin: origin.base().to_owned(),
                expected: digest,
                actual,
            });
        }
        if let Some(size) = descriptor
            .map(|d| d.size)
            .filter(|&size| size != bytes.len() as u64)
        {
            return Err(Error::ManifestInvalid {
                digest,
                reason: format!(
                    "its descriptor says {size} bytes but it has {}",
                    bytes.len()
                ),
            });
        }
        // The index's descriptor media type must agree with the child's own `mediaType`.
        Manifest::parse(&bytes, descriptor.map(|d| d.media_type.as_str()))
            .map(|manifest| Some((bytes, manifest)))
            .map_err(|e| Error::ManifestInvalid {
                digest,
                reason: e.to_string(),
            })
    }

    /// A blob `manifest` references must exist with the size its descriptor announces. It is
    /// looked up with a touch, so garbage collection keeps it for its grace period
    /// (`docs/gc.md`): a blob being swept is not found.
    async fn check_blob(
        &self,
        name: &Name,
        manifest: Digest,
        blob: Digest,
        size: u64,
    ) -> Result<(), Error> {
        let stat = on_owners(&self.cluster, blob, |origin| async move {
            origin.gc().touch(&blob, Some(name)).await
        })
        .await?;
        match stat {
            Some((len, _)) if len == size => Ok(()),
            None if blob == manifest => Err(Error::ManifestUnknown(blob)),
            Some((len, _)) => Err(Error::ManifestInvalid {
                digest: manifest,
                reason: format!(
                    "its descriptor gives blob {blob} {size} bytes but the blob has {len}"
                ),
            }),
            None => Err(Error::BlobUnknown { manifest, blob }),
        }
    }
}

/// `GET` of `blob` (or `range` of it) from the first owner that has it, with that owner.
async fn get_blob(
    cluster: &OriginCluster,
    name: &Name,
    blob: Digest,
    range: Option<&str>,
) -> Result<Option<(reqwest::Response, OriginClient)>, Error> {
    on_owners(cluster, blob, |origin| async move {
        match origin.get_blob(&blob, Some(name), range).await {
            Ok(response) => Ok(Some(response)),
            Err(ApiError::Remote { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    })
    .await
}

/// Runs `read` on the owners of `digest` (healthy ones first, otherwise in rendezvous order) and
/// returns the first answer that found it, with the origin that gave it. Owners that are
/// unreachable, failing on their side, or lacking the digest pass on to the next; `None` when
/// every owner that answered lacks it, the failure that ended the read (named by origin) when
/// none answered.
async fn on_owners<T, F, Fut>(
    cluster: &OriginCluster,
    digest: Digest,
    read: F,
) -> Result<Option<(T, OriginClient)>, Error>
where
    F: FnMut(OriginClient) -> Fut,
    Fut: Future<Output = Result<Option<T>, ApiError>>,
{
    cluster
        .read(&digest, read)
        .await
        .map_err(|failure| match failure.last() {
            Some((origin, source)) => Error::OriginUnavailable {
                origin,
                digest,
                source,
            },
            None => Error::NoOrigins,
        })
}
