//! Registry V2 request paths: turns a raw URL path into a typed route, shared by the proxy and
//! the agent so both accept exactly the same names, references and upload ids.

use thiserror::Error;

use crate::digest::{Digest, DigestError};
use crate::echo::truncate;
use crate::error::ErrorCode;
use crate::name::{Name, NameError, Reference, ReferenceError, TagError};

/// Upload ids Shoal hands out are UUIDs; anything longer than this is not one of ours.
const MAX_UPLOAD_ID_LEN: usize = 128;

/// A Registry V2 endpoint, with its path parameters parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum V2Route {
    /// `/v2/`: the API version check.
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    TagsList { name: Name },
    /// `/v2/<name>/manifests/<reference>`
    Manifest { name: Name, reference: Reference },
    /// `/v2/<name>/blobs/<digest>`
    Blob { name: Name, digest: Digest },
    /// `/v2/<name>/blobs/uploads/`
    UploadStart { name: Name },
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload { name: Name, id: String },
    /// `/v2/<name>/referrers/<digest>` (OCI 1.1)
    Referrers { name: Name, digest: Digest },
}

/// Why a path is not a valid Registry V2 route.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum V2PathError {
    #[error("not a registry v2 endpoint")]
    NotFound,
    #[error(transparent)]
    Name(#[from] NameError),
    #[error(transparent)]
    Digest(#[from] DigestError),
    #[error(transparent)]
    Tag(#[from] TagError),
    #[error("invalid upload id {id:?}: expected 1 to 128 characters of [A-Za-z0-9_-]")]
    UploadId { id: String },
}

impl V2PathError {
    /// The Registry V2 error code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            V2PathError::NotFound => ErrorCode::NameUnknown,
            V2PathError::Name(_) => ErrorCode::NameInvalid,
            V2PathError::Digest(_) => ErrorCode::DigestInvalid,
            V2PathError::Tag(_) => ErrorCode::TagInvalid,
            V2PathError::UploadId { .. } => ErrorCode::BlobUploadUnknown,
        }
    }
}

impl From<ReferenceError> for V2PathError {
    fn from(error: ReferenceError) -> Self {
        match error {
            ReferenceError::Digest(error) => V2PathError::Digest(error),
            ReferenceError::Tag(error) => V2PathError::Tag(error),
        }
    }
}

/// Routes a raw URL path (no query string). The endpoint is decided by the trailing segments,
/// so a repository name may itself contain `blobs`, `manifests` or `tags` components.
pub fn parse_v2_path(path: &str) -> Result<V2Route, V2PathError> {
    if path == "/v2" || path == "/v2/" {
        return Ok(V2Route::Base);
    }
    let rest = path.strip_prefix("/v2/").ok_or(V2PathError::NotFound)?;
    if rest == "_catalog" {
        return Ok(V2Route::Catalog);
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Ok(V2Route::UploadStart {
            name: Name::parse(name)?,
        });
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(V2Route::TagsList {
            name: Name::parse(name)?,
        });
    }
    let (head, last) = rest.rsplit_once('/').ok_or(V2PathError::NotFound)?;
    if let Some(name) = head.strip_suffix("/blobs/uploads") {
        let name = Name::parse(name)?;
        check_upload_id(last)?;
        return Ok(V2Route::Upload {
            name,
            id: last.to_owned(),
        });
    }
    if let Some(name) = head.strip_suffix("/blobs") {
        let name = Name::parse(name)?;
        return Ok(V2Route::Blob {
            name,
            digest: Digest::parse(last)?,
        });
    }
    if let Some(name) = head.strip_suffix("/referrers") {
        let name = Name::parse(name)?;
        return Ok(V2Route::Referrers {
            name,
            digest: Digest::parse(last)?,
        });
    }
    if let Some(name) = head.strip_suffix("/manifests") {
        let name = Name::parse(name)?;
        return Ok(V2Route::Manifest {
            name,
            reference: Reference::parse(last)?,
        });
    }
    Err(V2PathError::NotFound)
}

fn check_upload_id(id: &str) -> Result<(), V2PathError> {
    let valid = (1..=MAX_UPLOAD_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(V2PathError::UploadId { id: truncate(id) })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::name::Tag;

    fn name(s: &str) -> Name {
        Name::parse(s).expect("valid name")
    }

    #[test]
    fn routes_every_endpoint() {
        let digest = Digest::of(b"blob");
        let cases = [
            ("/v2", V2Route::Base),
            ("/v2/", V2Route::Base),
            ("/v2/_catalog", V2Route::Catalog),
            (
                "/v2/library/ubuntu/tags/list",
                V2Route::TagsList {
                    name: name("library/ubuntu"),
                },
            ),
            (
                "/v2/library/ubuntu/manifests/latest",
                V2Route::Manifest {
                    name: name("library/ubuntu"),
                    reference: Reference::Tag(Tag::parse("latest").expect("valid tag")),
                },
            ),
            (
                &format!("/v2/a/manifests/{digest}"),
                V2Route::Manifest {
                    name: name("a"),
                    reference: Reference::Digest(digest),
                },
            ),
            (
                &format!("/v2/a/b/blobs/{digest}"),
                V2Route::Blob {
                    name: name("a/b"),
                    digest,
                },
            ),
            (
                "/v2/a/blobs/uploads",
                V2Route::UploadStart { name: name("a") },
            ),
            (
                "/v2/a/blobs/uploads/",
                V2Route::UploadStart { name: name("a") },
            ),
            (
                "/v2/a/blobs/uploads/0f9e2c1a-7b3d-4c5e-8f60-1a2b3c4d5e6f",
                V2Route::Upload {
                    name: name("a"),
                    id: "0f9e2c1a-7b3d-4c5e-8f60-1a2b3c4d5e6f".to_owned(),
                },
            ),
        ];
        for (path, expected) in cases {
            assert_eq!(parse_v2_path(path), Ok(expected), "{path}");
        }
    }

    #[test]
    fn sha512_digests_route_like_sha256_ones() {
        let long = crate::Algorithm::Sha512.digest(b"blob");
        assert_eq!(
            parse_v2_path(&format!("/v2/a/blobs/{long}")),
            Ok(V2Route::Blob {
                name: name("a"),
                digest: long
            })
        );
    }

    #[test]
    fn names_may_contain_route_words() {
        let digest = Digest::of(b"blob");
        assert_eq!(
            parse_v2_path(&format!("/v2/a/blobs/b/blobs/{digest}")),
            Ok(V2Route::Blob {
                name: name("a/blobs/b"),
                digest
            })
        );
        assert_eq!(
            parse_v2_path(&format!("/v2/x/blobs/uploads/blobs/{digest}")),
            Ok(V2Route::Blob {
                name: name("x/blobs/uploads"),
                digest
            })
        );
        assert_eq!(
            parse_v2_path("/v2/manifests/tags/list"),
            Ok(V2Route::TagsList {
                name: name("manifests")
            })
        );
        assert_eq!(
            parse_v2_path("/v2/a/manifests/blobs/uploads/"),
            Ok(V2Route::UploadStart {
                name: name("a/manifests")
            })
        );
        assert!(matches!(
            parse_v2_path("/v2/tags/manifests/list"),
            Ok(V2Route::Manifest { .. })
        ));
    }

    #[test]
    fn errors_map_to_registry_codes() {
        let cases = [
            ("/", ErrorCode::NameUnknown),
            ("/v1/a/manifests/latest", ErrorCode::NameUnknown),
            ("/v2x/a/manifests/latest", ErrorCode::NameUnknown),
            ("/v2/library/ubuntu", ErrorCode::NameUnknown),
            ("/v2/_catalog/", ErrorCode::NameUnknown),
            ("/v2/a/tags/list/", ErrorCode::NameUnknown),
            ("/v2/UPPER/manifests/latest", ErrorCode::NameInvalid),
            ("/v2/../etc/blobs/uploads/", ErrorCode::NameInvalid),
            ("/v2/a//b/tags/list", ErrorCode::NameInvalid),
            ("/v2/a%2Fb/manifests/latest", ErrorCode::NameInvalid),
            ("/v2//manifests/latest", ErrorCode::NameInvalid),
            ("/v2/a/blobs/sha256:abc", ErrorCode::DigestInvalid),
            ("/v2/a/blobs/latest", ErrorCode::DigestInvalid),
            ("/v2/a/manifests/sha384:00", ErrorCode::DigestInvalid),
            ("/v2/a/manifests/sha512:00", ErrorCode::DigestInvalid),
            ("/v2/a/manifests/-bad", ErrorCode::TagInvalid),
            ("/v2/a/manifests/", ErrorCode::TagInvalid),
            (
                "/v2/a/blobs/uploads/id.with.dots",
                ErrorCode::BlobUploadUnknown,
            ),
        ];
        for (path, code) in cases {
            let err = parse_v2_path(path).expect_err(path);
            assert_eq!(err.code(), code, "{path}: {err}");
        }
        let long_id = format!("/v2/a/blobs/uploads/{}", "x".repeat(129));
        assert!(matches!(
            parse_v2_path(&long_id),
            Err(V2PathError::UploadId { .. })
        ));
        let max_id = format!("/v2/a/blobs/uploads/{}", "x".repeat(128));
        assert!(matches!(parse_v2_path(&max_id), Ok(V2Route::Upload { .. })));
    }

    const COMPONENT: &str = "[a-z0-9]{1,5}((\\.|_|__|-{1,2})[a-z0-9]{1,5}){0,2}";

    fn valid_name() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                4 => COMPONENT.boxed(),
                1 => prop_oneof![Just("blobs"), Just("uploads"), Just("manifests"), Just("tags"), Just("list")]
                    .prop_map(str::to_owned)
                    .boxed(),
            ],
            1..5,
        )
        .prop_map(|components| components.join("/"))
    }

    proptest! {
        #[test]
        fn routes_roundtrip(
            name_text in valid_name(),
            bytes in any::<[u8; 32]>(),
            tag in "[A-Za-z0-9_][A-Za-z0-9._-]{0,20}",
            id in "[A-Za-z0-9_-]{1,40}",
        ) {
            let name = Name::parse(&name_text).expect("generated names are valid");
            let digest = Digest::from_bytes(bytes);
            let tag = Tag::parse(&tag).expect("generated tags are valid");
            let cases = [
                (format!("/v2/{name}/tags/list"), V2Route::TagsList { name: name.clone() }),
                (format!("/v2/{name}/blobs/{digest}"), V2Route::Blob { name: name.clone(), digest }),
                (format!("/v2/{name}/referrers/{digest}"), V2Route::Referrers { name: name.clone(), digest }),
                (format!("/v2/{name}/blobs/uploads/"), V2Route::UploadStart { name: name.clone() }),
                (format!("/v2/{name}/blobs/uploads/{id}"), V2Route::Upload { name: name.clone(), id: id.clone() }),
                (
                    format!("/v2/{name}/manifests/{tag}"),
                    V2Route::Manifest { name: name.clone(), reference: Reference::Tag(tag.clone()) },
                ),
                (
                    format!("/v2/{name}/manifests/{digest}"),
                    V2Route::Manifest { name: name.clone(), reference: Reference::Digest(digest) },
                ),
            ];
            for (path, expected) in cases {
                prop_assert_eq!(parse_v2_path(&path), Ok(expected), "{}", path);
            }
        }

        #[test]
        fn parse_never_panics(path in prop_oneof!["\\PC{0,120}", "/v2/[a-z/._:-]{0,40}"]) {
            match parse_v2_path(&path) {
                Ok(_) => prop_assert!(path.starts_with("/v2")),
                Err(error) => {
                    let _ = error.code();
                }
            }
        }
    }
}
