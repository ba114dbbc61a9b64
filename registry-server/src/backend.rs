//! [`RegistryBackend`]: what a component implements to serve the Registry V2 API. The shared
//! layer parses the request, calls one method per [`crate::Endpoint`] and shapes the response;
//! an operation a component does not override answers 405 UNSUPPORTED.

use async_trait::async_trait;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, Method};
use shoal_core::{ByteRange, Digest, Name, Reference, Referrer};

use crate::error::RegistryError;
use crate::query::Query;

/// A manifest as stored: the blob's digest and its bytes.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: Digest,
    pub bytes: Bytes,
}

/// A component's side of the Registry V2 API. The pull operations are required; the rest
/// default to 405 UNSUPPORTED.
#[async_trait]
pub trait RegistryBackend: Send + Sync + 'static {
    /// The repository a request for `name` reads or writes (a mirror may map `?ns=` hosts to a
    /// prefix); applied to every endpoint that names a repository before it is dispatched.
    fn repository(&self, name: Name, _query: &Query) -> Result<Name, RegistryError> {
        Ok(name)
    }

    /// The manifest `reference` names, or `None` when it is unknown (or too large to be a
    /// manifest). Serves `GET` and `HEAD`: the shared layer answers with the bytes, their
    /// media type, digest and length, or MANIFEST_UNKNOWN.
    async fn manifest(
        &self,
        name: &Name,
        reference: &Reference,
    ) -> Result<Option<StoredManifest>, RegistryError>;

    /// The blob, or the part of it `range` asks for: the response's status (200 or 206),
    /// `Content-Length`, `Content-Range` and streamed body, to which the shared layer adds the
    /// headers of every blob response. `None` is BLOB_UNKNOWN.
    async fn get_blob(
        &self,
        name: &Name,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> Result<Option<Response>, RegistryError>;

    /// The blob's length for a `HEAD`, without downloading it; `None` is BLOB_UNKNOWN.
    async fn blob_length(&self, name: &Name, digest: &Digest)
    -> Result<Option<u64>, RegistryError>;

    /// `GET /v2/_catalog`.
    async fn catalog(&self, _query: &Query) -> Result<Response, RegistryError> {
        Err(RegistryError::unsupported(&Method::GET))
    }

    /// `GET /v2/<name>/tags/list`.
    async fn list_tags(&self, _name: &Name, _query: &Query) -> Result<Response, RegistryError> {
        Err(RegistryError::unsupported(&Method::GET))
    }

    /// `PUT /v2/<name>/manifests/<reference>`.
    async fn put_manifest(
        &self,
        _name: &Name,
        _reference: &Reference,
        _headers: &HeaderMap,
        _body: Body,
    ) -> Result<Response, RegistryError> {
        Err(RegistryError::unsupported(&Method::PUT))
    }

    /// `GET /v2/<name>/referrers/<digest>`: the manifests of `name` whose `subject` is `digest`;
    /// the shared layer filters them and answers the image index.
    async fn referrers(
        &self,
        _name: &Name,
        _digest: &Digest,
    ) -> Result<Vec<Referrer>, RegistryError> {
        Err(RegistryError::unsupported(&Method::GET))
    }

    /// `DELETE /v2/<name>/manifests/<reference>`.
    async fn delete_manifest(
        &self,
        _name: &Name,
        _reference: &Reference,
    ) -> Result<Response, RegistryError> {
        Err(RegistryError::unsupported(&Method::DELETE))
    }

    /// `DELETE /v2/<name>/blobs/<digest>`.
    async fn delete_blob(&self, _name: &Name, _digest: &Digest) -> Result<Response, RegistryError> {
        Err(RegistryError::unsupported(&Method::DELETE))
    }

    /// `POST /v2/<name>/blobs/uploads/`: a session, a monolithic push or a mount. `client` is
    /// the caller's address (when the listener knows it), for bounds on sessions per client.
    async fn start_upload(
        &self,
        _name: &Name,
        _query: &Query,
        _client: Option<std::net::IpAddr>,
        _body: Body,
    ) -> Result<Response, RegistryError> {
        Err(RegistryError::unsupported(&Method::POST))
    }

    /// `PATCH /v2/<name>/blobs/uploads/<id>`: appends a chunk.
    async fn patch_upload(
        &self,
        _name: &Name,
        _id: &str,
        _headers: &HeaderMap,
        _body: Body,
    ) -> Result<Response, RegistryError> {
        Err(RegistryError::unsupported(&Method::PATCH))
    }

    /// `PUT /v2/<name>/blobs/uploads/<id>?digest=`: commits.
    async fn commit_upload(
        &self,
        _name: &Name,
        _id: &str,
        _query: &Query,
        _body: Body,
    ) -> Result<Response, RegistryError> {
        Err(RegistryError::unsupported(&Method::PUT))
    }

    /// `GET /v2/<name>/blobs/uploads/<id>`: the session's progress.
    async fn upload_status(&self, _name: &Name, _id: &str) -> Result<Response, RegistryError> {
        Err(RegistryError::unsupported(&Method::GET))
    }

    /// `DELETE /v2/<name>/blobs/uploads/<id>`.
    async fn cancel_upload(&self, _name: &Name, _id: &str) -> Result<Response, RegistryError> {
        Err(RegistryError::unsupported(&Method::DELETE))
    }
}
