//! [`Endpoint`]: a Registry V2 request's path route and method as one operation. Every
//! `/v2/…` request is turned into one here, or refused with the spec's error; a new operation
//! (blob deletes, referrers) is a new variant and a new [`crate::RegistryBackend`] method.

use http::Method;
use shoal_core::{Digest, Name, Reference, V2Route};

use crate::error::RegistryError;

/// One Registry V2 operation, with its path parameters parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET`/`HEAD /v2/`: the API version check.
    Base,
    /// `GET /v2/_catalog`
    Catalog,
    /// `GET /v2/<name>/tags/list`
    ListTags { name: Name },
    /// `GET /v2/<name>/manifests/<reference>`
    GetManifest { name: Name, reference: Reference },
    /// `HEAD /v2/<name>/manifests/<reference>`
    HeadManifest { name: Name, reference: Reference },
    /// `PUT /v2/<name>/manifests/<reference>`
    PutManifest { name: Name, reference: Reference },
    /// `DELETE /v2/<name>/manifests/<reference>`
    DeleteManifest { name: Name, reference: Reference },
    /// `GET /v2/<name>/blobs/<digest>`
    GetBlob { name: Name, digest: Digest },
    /// `HEAD /v2/<name>/blobs/<digest>`
    HeadBlob { name: Name, digest: Digest },
    /// `DELETE /v2/<name>/blobs/<digest>`
    DeleteBlob { name: Name, digest: Digest },
    /// `POST /v2/<name>/blobs/uploads/`
    StartUpload { name: Name },
    /// `PATCH /v2/<name>/blobs/uploads/<id>`
    PatchUpload { name: Name, id: String },
    /// `PUT /v2/<name>/blobs/uploads/<id>`
    CommitUpload { name: Name, id: String },
    /// `GET /v2/<name>/blobs/uploads/<id>`
    UploadStatus { name: Name, id: String },
    /// `DELETE /v2/<name>/blobs/uploads/<id>`
    CancelUpload { name: Name, id: String },
    /// `GET /v2/<name>/referrers/<digest>` (OCI 1.1)
    Referrers { name: Name, digest: Digest },
}

/// Metrics label of a path that is no Registry V2 route.
pub const INVALID_PATH_LABEL: &str = "v2_invalid_path";
/// Metrics label of a method a route does not have, or an operation a registry does not serve.
pub const UNSUPPORTED_LABEL: &str = "v2_unsupported";

impl Endpoint {
    /// The operation `method` performs on `route`; 405 UNSUPPORTED when the route has no such
    /// method.
    pub fn from_route(route: V2Route, method: &Method) -> Result<Endpoint, RegistryError> {
        let endpoint = match (route, method) {
            (V2Route::Base, &Method::GET | &Method::HEAD) => Endpoint::Base,
            (V2Route::Catalog, &Method::GET) => Endpoint::Catalog,
            (V2Route::TagsList { name }, &Method::GET) => Endpoint::ListTags { name },
            (V2Route::Manifest { name, reference }, m) if m == Method::GET => {
                Endpoint::GetManifest { name, reference }
            }
            (V2Route::Manifest { name, reference }, m) if m == Method::HEAD => {
                Endpoint::HeadManifest { name, reference }
            }
            (V2Route::Manifest { name, reference }, m) if m == Method::PUT => {
                Endpoint::PutManifest { name, reference }
            }
            (V2Route::Manifest { name, reference }, m) if m == Method::DELETE => {
                Endpoint::DeleteManifest { name, reference }
            }
            (V2Route::Blob { name, digest }, m) if m == Method::GET => {
                Endpoint::GetBlob { name, digest }
            }
            (V2Route::Blob { name, digest }, m) if m == Method::HEAD => {
                Endpoint::HeadBlob { name, digest }
            }
            (V2Route::Blob { name, digest }, m) if m == Method::DELETE => {
                Endpoint::DeleteBlob { name, digest }
            }
            (V2Route::UploadStart { name }, &Method::POST) => Endpoint::StartUpload { name },
            (V2Route::Upload { name, id }, m) if m == Method::PATCH => {
                Endpoint::PatchUpload { name, id }
            }
            (V2Route::Upload { name, id }, m) if m == Method::PUT => {
                Endpoint::CommitUpload { name, id }
            }
            (V2Route::Upload { name, id }, m) if m == Method::GET => {
                Endpoint::UploadStatus { name, id }
            }
            (V2Route::Upload { name, id }, m) if m == Method::DELETE => {
                Endpoint::CancelUpload { name, id }
            }
            (V2Route::Referrers { name, digest }, &Method::GET) => {
                Endpoint::Referrers { name, digest }
            }
            (_, method) => return Err(RegistryError::unsupported(method)),
        };
        Ok(endpoint)
    }

    /// The route label of the HTTP metrics, so blobs, manifests and uploads are counted apart.
    pub fn label(&self) -> &'static str {
        match self {
            Endpoint::Base => "base",
            Endpoint::Catalog => "catalog",
            Endpoint::ListTags { .. } => "tags_list",
            Endpoint::GetManifest { .. } => "manifest_get",
            Endpoint::HeadManifest { .. } => "manifest_head",
            Endpoint::PutManifest { .. } => "manifest_put",
            Endpoint::DeleteManifest { .. } => "manifest_delete",
            Endpoint::GetBlob { .. } => "blob_get",
            Endpoint::HeadBlob { .. } => "blob_head",
            Endpoint::DeleteBlob { .. } => "blob_delete",
            Endpoint::StartUpload { .. } => "upload_start",
            Endpoint::PatchUpload { .. } => "upload_patch",
            Endpoint::CommitUpload { .. } => "upload_commit",
            Endpoint::UploadStatus { .. } => "upload_status",
            Endpoint::CancelUpload { .. } => "upload_cancel",
            Endpoint::Referrers { .. } => "referrers",
        }
    }
}

#[cfg(test)]
mod tests {
    use shoal_core::{ErrorCode, Tag, parse_v2_path};

    use super::*;

    fn parse(method: &Method, path: &str) -> Result<Endpoint, RegistryError> {
        Endpoint::from_route(parse_v2_path(path)?, method)
    }

    fn name(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    #[test]
    fn every_path_shape_and_method_has_its_endpoint() {
        let digest = Digest::of(b"blob");
        let nested = name("team/sub/app");
        let tag = Reference::Tag(Tag::parse("v1").unwrap());
        let id = "0f9e2c1a-7b3d-4c5e-8f60-1a2b3c4d5e6f".to_owned();
        let cases = [
            (Method::GET, "/v2/".to_owned(), Endpoint::Base),
            (Method::HEAD, "/v2".to_owned(), Endpoint::Base),
            (Method::GET, "/v2/_catalog".to_owned(), Endpoint::Catalog),
            (
                Method::GET,
                "/v2/team/sub/app/tags/list".to_owned(),
                Endpoint::ListTags {
                    name: nested.clone(),
                },
            ),
            (
                Method::GET,
                "/v2/team/sub/app/manifests/v1".to_owned(),
                Endpoint::GetManifest {
                    name: nested.clone(),
                    reference: tag.clone(),
                },
            ),
            (
                Method::HEAD,
                format!("/v2/team/sub/app/manifests/{digest}"),
                Endpoint::HeadManifest {
                    name: nested.clone(),
                    reference: Reference::Digest(digest),
                },
            ),
            (
                Method::PUT,
                "/v2/team/sub/app/manifests/v1".to_owned(),
                Endpoint::PutManifest {
                    name: nested.clone(),
                    reference: tag.clone(),
                },
            ),
            (
                Method::DELETE,
                "/v2/team/sub/app/manifests/v1".to_owned(),
                Endpoint::DeleteManifest {
                    name: nested.clone(),
                    reference: tag,
                },
            ),
            (
                Method::GET,
                format!("/v2/team/sub/app/blobs/{digest}"),
                Endpoint::GetBlob {
                    name: nested.clone(),
                    digest,
                },
            ),
            (
                Method::HEAD,
                format!("/v2/team/sub/app/blobs/{digest}"),
                Endpoint::HeadBlob {
                    name: nested.clone(),
                    digest,
                },
            ),
            (
                Method::DELETE,
                format!("/v2/team/sub/app/blobs/{digest}"),
                Endpoint::DeleteBlob {
                    name: nested.clone(),
                    digest,
                },
            ),
            (
                Method::POST,
                "/v2/team/sub/app/blobs/uploads/".to_owned(),
                Endpoint::StartUpload {
                    name: nested.clone(),
                },
            ),
            (
                Method::PATCH,
                format!("/v2/team/sub/app/blobs/uploads/{id}"),
                Endpoint::PatchUpload {
                    name: nested.clone(),
                    id: id.clone(),
                },
            ),
            (
                Method::PUT,
                format!("/v2/team/sub/app/blobs/uploads/{id}"),
                Endpoint::CommitUpload {
                    name: nested.clone(),
                    id: id.clone(),
                },
            ),
            (
                Method::GET,
                format!("/v2/team/sub/app/blobs/uploads/{id}"),
                Endpoint::UploadStatus {
                    name: nested.clone(),
                    id: id.clone(),
                },
            ),
            (
                Method::DELETE,
                format!("/v2/team/sub/app/blobs/uploads/{id}"),
                Endpoint::CancelUpload {
                    name: nested.clone(),
                    id,
                },
            ),
            (
                Method::GET,
                format!("/v2/team/sub/app/referrers/{digest}"),
                Endpoint::Referrers {
                    name: nested,
                    digest,
                },
            ),
        ];
        let mut labels = std::collections::HashSet::new();
        for (method, path, expected) in cases {
            let endpoint = parse(&method, &path).expect(&path);
            assert_eq!(endpoint, expected, "{method} {path}");
            labels.insert(endpoint.label());
        }
        assert_eq!(labels.len(), 16, "every endpoint has a label of its own");
    }

    #[test]
    fn methods_a_route_lacks_are_unsupported() {
        let digest = Digest::of(b"blob");
        for (method, path) in [
            (Method::POST, "/v2/".to_owned()),
            (Method::DELETE, "/v2/_catalog".to_owned()),
            (Method::PUT, "/v2/a/tags/list".to_owned()),
            (Method::POST, "/v2/a/manifests/v1".to_owned()),
            (Method::PUT, format!("/v2/a/blobs/{digest}")),
            (Method::GET, "/v2/a/blobs/uploads/".to_owned()),
            (Method::POST, "/v2/a/blobs/uploads/abc".to_owned()),
            (Method::OPTIONS, "/v2/a/manifests/v1".to_owned()),
            (Method::PUT, format!("/v2/a/referrers/{digest}")),
        ] {
            let error = parse(&method, &path).unwrap_err();
            assert_eq!(error.code(), ErrorCode::Unsupported, "{method} {path}");
        }
    }

    #[test]
    fn bad_paths_keep_their_path_codes() {
        for (path, code) in [
            ("/v2/library/ubuntu", ErrorCode::NameUnknown),
            ("/v2/UPPER/manifests/latest", ErrorCode::NameInvalid),
            ("/v2/a/blobs/latest", ErrorCode::DigestInvalid),
            ("/v2/a/manifests/-bad", ErrorCode::TagInvalid),
            (
                "/v2/a/blobs/uploads/id.with.dots",
                ErrorCode::BlobUploadUnknown,
            ),
        ] {
            let error = parse(&Method::GET, path).unwrap_err();
            assert_eq!(error.code(), code, "{path}");
        }
    }
}
