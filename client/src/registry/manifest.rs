//! Manifest transfer: the registry client's `PUT` and `GET` (every supported media type
//! accepted, digests checked both ways), as the layout code wants them.

use shoal_core::{Digest, Manifest};

use super::{RegistryClient, name, reference};
use crate::error::Error;

/// A manifest as the registry served it.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub digest: Digest,
    /// The registry's `Content-Type`.
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl RegistryClient {
    /// `PUT` a manifest under `reference` (tag or digest) with its media type; returns the
    /// digest the registry reports, checked against the bytes sent.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, Error> {
        let (repo, reference) = (name(repo)?, self::reference(reference)?);
        let bytes = bytes::Bytes::copy_from_slice(bytes);
        Ok(self
            .registry
            .put_manifest(&repo, &reference, media_type, bytes)
            .await?)
    }

    /// `GET` a manifest by tag or digest, accepting OCI and Docker schema 2 manifests and
    /// indexes. The bytes are checked against the requested digest or `Docker-Content-Digest`.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<FetchedManifest, Error> {
        let what = format!("{repo}:{reference}");
        let fetched = self
            .registry
            .get_manifest(&name(repo)?, &self::reference(reference)?)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("manifest {what}"),
            })?;
        let media_type = fetched.media_type.ok_or_else(|| Error::BadResponse {
            context: format!("manifest {what}"),
            reason: "no Content-Type on a manifest".to_owned(),
        })?;
        Ok(FetchedManifest {
            digest: fetched.digest,
            media_type,
            bytes: fetched.bytes.to_vec(),
        })
    }
}

pub(crate) fn parse_manifest(
    fetched: &FetchedManifest,
    reference: &str,
) -> Result<Manifest, Error> {
    Manifest::parse(&fetched.bytes, Some(&fetched.media_type)).map_err(|source| {
        Error::BadManifest {
            reference: reference.to_owned(),
            source,
        }
    })
}
