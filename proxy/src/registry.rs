//! The proxy's side of the shared Registry V2 layer: every operation, each answered by its
//! resource module against the origins and the build-index.

use std::net::IpAddr;

use async_trait::async_trait;
use axum::body::Body;
use axum::response::Response;
use http::HeaderMap;
use shoal_core::{ByteRange, Digest, Name, Reference, Referrer};
use shoal_registry_server::{Query, RegistryBackend, RegistryError, StoredManifest};

use crate::state::AppState;
use crate::{blobs, catalog, manifests, tags, uploads};

#[async_trait]
impl RegistryBackend for AppState {
    async fn manifest(
        &self,
        name: &Name,
        reference: &Reference,
    ) -> Result<Option<StoredManifest>, RegistryError> {
        manifests::get(self, name, reference).await
    }

    async fn get_blob(
        &self,
        name: &Name,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<Option<Response>, RegistryError> {
        blobs::get(self, name, digest, range).await
    }

    async fn blob_length(
        &self,
        name: &Name,
        digest: &Digest,
    ) -> Result<Option<u64>, RegistryError> {
        blobs::length(self, name, digest).await
    }

    async fn catalog(&self, query: &Query) -> Result<Response, RegistryError> {
        catalog::list(self, query).await
    }

    async fn list_tags(&self, name: &Name, query: &Query) -> Result<Response, RegistryError> {
        tags::list(self, name, query).await
    }

    async fn put_manifest(
        &self,
        name: &Name,
        reference: &Reference,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response, RegistryError> {
        manifests::put(self, name, reference, headers, body).await
    }

    async fn referrers(
        &self,
        name: &Name,
        digest: &Digest,
    ) -> Result<Vec<Referrer>, RegistryError> {
        Ok(self.upstreams.build_index().referrers(name, digest).await?)
    }

    async fn delete_manifest(
        &self,
        name: &Name,
        reference: &Reference,
    ) -> Result<Response, RegistryError> {
        manifests::delete(self, name, reference).await
    }

    async fn delete_blob(&self, _name: &Name, digest: &Digest) -> Result<Response, RegistryError> {
        blobs::delete(self, digest).await
    }

    async fn start_upload(
        &self,
        name: &Name,
        query: &Query,
        client: Option<IpAddr>,
        body: Body,
    ) -> Result<Response, RegistryError> {
        uploads::start(self, name, query, client, body).await
    }

    async fn patch_upload(
        &self,
        name: &Name,
        id: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response, RegistryError> {
        uploads::patch(self, name, id, headers, body).await
    }

    async fn commit_upload(
        &self,
        name: &Name,
        id: &str,
        query: &Query,
        body: Body,
    ) -> Result<Response, RegistryError> {
        uploads::commit(self, name, id, query, body).await
    }

    async fn upload_status(&self, name: &Name, id: &str) -> Result<Response, RegistryError> {
        uploads::status(self, name, id).await
    }

    async fn cancel_upload(&self, name: &Name, id: &str) -> Result<Response, RegistryError> {
        uploads::cancel(self, name, id).await
    }
}
