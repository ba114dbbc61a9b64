//! The headers and response shapes every Registry V2 server answers with: blob headers, the
//! `Range` of a blob `GET`, manifest responses and the API version header.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_TYPE, RANGE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use shoal_api::wire::DOCKER_CONTENT_DIGEST;
use shoal_core::{ByteRange, Digest, ErrorCode, Manifest, MediaType, Reference, Referrer};

use crate::backend::StoredManifest;
use crate::error::RegistryError;

/// Blobs are opaque bytes to the registry; the manifest says what they are.
const BLOB_CONTENT_TYPE: &str = "application/octet-stream";

/// Every response carries `Docker-Distribution-API-Version: registry/2.0`, which docker checks
/// on `/v2/`. Use with `axum::middleware::from_fn(api_version)`.
pub(crate) async fn api_version(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response.headers_mut().insert(
        HeaderName::from_static("docker-distribution-api-version"),
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

/// The headers every successful blob response carries.
fn blob_headers(digest: &Digest) -> [(&'static str, String); 3] {
    [
        (DOCKER_CONTENT_DIGEST, digest.to_string()),
        (ACCEPT_RANGES.as_str(), "bytes".to_owned()),
        (CONTENT_TYPE.as_str(), BLOB_CONTENT_TYPE.to_owned()),
    ]
}

/// A blob `GET`: the backend's status, length and body with the blob headers.
pub(crate) fn blob(digest: &Digest, body: Response) -> Response {
    (blob_headers(digest), body).into_response()
}

/// A blob `HEAD`: its length and the blob headers.
pub(crate) fn blob_head(digest: &Digest, length: u64) -> Response {
    let length = [(CONTENT_LENGTH.as_str(), length.to_string())];
    (StatusCode::OK, blob_headers(digest), length).into_response()
}

/// The stored bytes with the media type they declare, or MANIFEST_UNKNOWN. The same response
/// serves `GET` and `HEAD`; the HTTP layer drops the body of a HEAD and keeps its
/// `Content-Length`.
pub(crate) fn manifest(
    reference: &Reference,
    stored: Option<StoredManifest>,
) -> Result<Response, RegistryError> {
    let StoredManifest { digest, bytes } =
        stored.ok_or_else(|| RegistryError::manifest_unknown(reference))?;
    // The stored bytes decide the media type; a digest naming a layer is no manifest.
    let manifest =
        Manifest::parse(&bytes, None).map_err(|_| RegistryError::manifest_unknown(reference))?;
    let headers = [
        (
            CONTENT_TYPE.as_str(),
            manifest.media_type().as_str().to_owned(),
        ),
        (DOCKER_CONTENT_DIGEST, digest.to_string()),
        (CONTENT_LENGTH.as_str(), bytes.len().to_string()),
    ];
    Ok((headers, bytes).into_response())
}

/// The OCI 1.1 referrers list: an image index of `referrers`, only those of `artifact_type`
/// when the client asked for one (then saying so in `OCI-Filters-Applied`).
pub(crate) fn referrers(mut referrers: Vec<Referrer>, artifact_type: Option<&str>) -> Response {
    if let Some(wanted) = artifact_type {
        referrers.retain(|r| r.artifact_type.as_deref() == Some(wanted));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MediaType::OciIndex.as_str(),
        "manifests": referrers,
    });
    let mut response = (
        [(CONTENT_TYPE.as_str(), MediaType::OciIndex.as_str())],
        index.to_string(),
    )
        .into_response();
    if artifact_type.is_some() {
        response.headers_mut().insert(
            HeaderName::from_static("oci-filters-applied"),
            HeaderValue::from_static("artifactType"),
        );
    }
    response
}

/// The requested range, if any. One that is not a single valid byte range is refused with 416
/// RANGE_INVALID, as the origin and the distribution registry do (RFC 9110 §14.2 allows either
/// ignoring or rejecting it).
pub(crate) fn requested_range(headers: &HeaderMap) -> Result<Option<ByteRange>, RegistryError> {
    let Some(value) = headers.get(RANGE) else {
        return Ok(None);
    };
    let malformed = |reason: String| RegistryError::new(ErrorCode::RangeInvalid, reason);
    let text = value
        .to_str()
        .map_err(|_| malformed("Range header is not ASCII".to_owned()))?;
    ByteRange::parse(text)
        .map(Some)
        .map_err(|error| malformed(error.to_string()))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn with_range(value: &'static [u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, HeaderValue::from_bytes(value).unwrap());
        headers
    }

    #[test]
    fn single_ranges_parse() {
        assert_eq!(requested_range(&HeaderMap::new()).unwrap(), None);
        for (value, expected) in [
            (
                &b"bytes=0-99"[..],
                ByteRange::Bounded { first: 0, last: 99 },
            ),
            (b"bytes=100-", ByteRange::From(100)),
            (b"bytes=-5", ByteRange::Suffix(5)),
            (b"Bytes= 7 - 7 ", ByteRange::Bounded { first: 7, last: 7 }),
            (
                b"bytes=0-18446744073709551615",
                ByteRange::Bounded {
                    first: 0,
                    last: u64::MAX,
                },
            ),
        ] {
            assert_eq!(
                requested_range(&with_range(value)).unwrap(),
                Some(expected),
                "{value:?}"
            );
        }
    }

    #[test]
    fn anything_else_is_range_invalid() {
        for value in [
            &b"bytes=5-1"[..],
            b"items=0-1",
            b"bytes=0-1,4-5",
            b"bytes=x-",
            b"bytes=-",
            b"bytes=",
            b"bytes=0-18446744073709551616",
            b"bytes=\xff-",
        ] {
            let error = requested_range(&with_range(value)).unwrap_err();
            assert_eq!(error.code(), ErrorCode::RangeInvalid, "{value:?}");
        }
    }

    #[test]
    fn manifests_are_served_with_their_own_media_type() {
        let bytes = Bytes::from_static(
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
        );
        let digest = Digest::of(&bytes);
        let reference = Reference::Digest(digest);
        let stored = StoredManifest {
            digest,
            bytes: bytes.clone(),
        };
        let response = manifest(&reference, Some(stored)).unwrap();
        let headers = response.headers();
        assert_eq!(
            headers[CONTENT_TYPE],
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(headers[DOCKER_CONTENT_DIGEST], digest.to_string().as_str());
        assert_eq!(headers[CONTENT_LENGTH], bytes.len().to_string().as_str());
    }

    #[test]
    fn absent_manifests_and_layers_are_manifest_unknown() {
        let layer = Bytes::from_static(b"\x1f\x8b not a manifest");
        let digest = Digest::of(&layer);
        let reference = Reference::Digest(digest);
        let stored = StoredManifest {
            digest,
            bytes: layer,
        };
        for stored in [None, Some(stored)] {
            let error = manifest(&reference, stored).unwrap_err();
            assert_eq!(error.code(), ErrorCode::ManifestUnknown);
        }
    }

    #[tokio::test]
    async fn referrers_are_an_index_filtered_by_artifact_type_on_request() {
        let referrer = |artifact_type: &str, seed: &[u8]| Referrer {
            media_type: MediaType::OciManifest.as_str().to_owned(),
            digest: Digest::of(seed),
            size: 10,
            artifact_type: Some(artifact_type.to_owned()),
            annotations: None,
        };
        let all = vec![
            referrer("application/sbom", b"a"),
            referrer("application/sig", b"b"),
        ];
        let body = |response: Response| async move {
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&bytes).unwrap()
        };
        let unfiltered = referrers(all.clone(), None);
        assert_eq!(
            unfiltered.headers()[CONTENT_TYPE],
            MediaType::OciIndex.as_str()
        );
        assert!(unfiltered.headers().get("oci-filters-applied").is_none());
        assert_eq!(
            body(unfiltered).await["manifests"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        let filtered = referrers(all, Some("application/sig"));
        assert_eq!(filtered.headers()["oci-filters-applied"], "artifactType");
        let index = body(filtered).await;
        assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(index["manifests"][0]["artifactType"], "application/sig");
        assert_eq!(index["schemaVersion"], 2);
    }

    #[test]
    fn blob_responses_carry_the_blob_headers() {
        let digest = Digest::of(b"layer");
        let response = blob_head(&digest, 5);
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers[DOCKER_CONTENT_DIGEST], digest.to_string().as_str());
        assert_eq!(headers[ACCEPT_RANGES], "bytes");
        assert_eq!(headers[CONTENT_TYPE], "application/octet-stream");
        assert_eq!(headers[CONTENT_LENGTH], "5");
    }
}
