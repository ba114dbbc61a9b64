//! Image manifests and indexes (Docker schema 2 and OCI): media types, descriptors, and the
//! validating parser that tells which blobs and child manifests a manifest references.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::digest::{Digest, DigestError};
use crate::echo::truncate;

/// Largest manifest accepted (the distribution registry's limit). Manifests are buffered in
/// memory to be parsed, so they must be bounded.
pub const MAX_MANIFEST_SIZE: usize = 4 * 1024 * 1024;

/// The manifest media types Shoal understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaType {
    DockerManifest,
    DockerManifestList,
    OciManifest,
    OciIndex,
}

impl MediaType {
    const ALL: [MediaType; 4] = [
        MediaType::DockerManifest,
        MediaType::DockerManifestList,
        MediaType::OciManifest,
        MediaType::OciIndex,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MediaType::DockerManifest => "application/vnd.docker.distribution.manifest.v2+json",
            MediaType::DockerManifestList => {
                "application/vnd.docker.distribution.manifest.list.v2+json"
            }
            MediaType::OciManifest => "application/vnd.oci.image.manifest.v1+json",
            MediaType::OciIndex => "application/vnd.oci.image.index.v1+json",
        }
    }

    /// Parses a media type or `Content-Type` value, ignoring parameters such as `; charset=utf-8`
    /// and surrounding whitespace. Media types compare case-insensitively (RFC 9110 §8.3.1).
    pub fn parse(s: &str) -> Option<MediaType> {
        let essence = s.split_once(';').map_or(s, |(essence, _)| essence).trim();
        MediaType::ALL
            .into_iter()
            .find(|media_type| media_type.as_str().eq_ignore_ascii_case(essence))
    }

    /// Whether this is a list of manifests (Docker list or OCI index) rather than an image.
    pub fn is_index(self) -> bool {
        matches!(self, MediaType::DockerManifestList | MediaType::OciIndex)
    }
}

/// A reference to content from a manifest: a config, a layer or a child manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    /// Where a client fetches the content instead of from the registry (OCI `urls`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

/// Media type prefixes of layers that may not be pushed to a registry: OCI's deprecated
/// non-distributable layers and Docker's foreign (Windows base) layers.
const NON_DISTRIBUTABLE_PREFIXES: [&str; 2] = [
    "application/vnd.oci.image.layer.nondistributable.",
    "application/vnd.docker.image.rootfs.foreign.",
];

impl Descriptor {
    /// Whether the registry need not hold this layer: it names external `urls` or has a
    /// non-distributable media type, so clients fetch it from elsewhere.
    pub fn is_non_distributable(&self) -> bool {
        !self.urls.is_empty()
            || NON_DISTRIBUTABLE_PREFIXES.iter().any(|prefix| {
                self.media_type.len() >= prefix.len()
                    && self.media_type[..prefix.len()].eq_ignore_ascii_case(prefix)
            })
    }
}

/// What the build-index records of a manifest pushed into a repository (the backend object
/// `repositories/<repo>/_manifests/sha256/<hex>`, and its API's answer): the digest is the key.
/// Records written before referrers existed hold the media type alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestRecord {
    pub media_type: String,
    /// The manifest's length in bytes.
    #[serde(default)]
    pub size: u64,
    /// The manifest this one refers to (OCI 1.1 `subject`): a signature, an SBOM, an attestation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Map<String, Value>>,
}

impl ManifestRecord {
    /// The record of `manifest`, `size` bytes long.
    pub fn new(manifest: &Manifest, size: u64) -> ManifestRecord {
        ManifestRecord {
            media_type: manifest.media_type().as_str().to_owned(),
            size,
            subject: manifest.subject().map(|subject| subject.digest),
            artifact_type: manifest.artifact_type().map(str::to_owned),
            annotations: manifest.annotations().cloned(),
        }
    }

    /// The manifest's entry in its subject's referrers list.
    pub fn referrer(&self, digest: Digest) -> Referrer {
        Referrer {
            media_type: self.media_type.clone(),
            digest,
            size: self.size,
            artifact_type: self.artifact_type.clone(),
            annotations: self.annotations.clone(),
        }
    }
}

/// A descriptor of the OCI referrers list (`GET /v2/<name>/referrers/<digest>`): a manifest whose
/// `subject` is the digest asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Referrer {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Map<String, Value>>,
}

/// The `platform` of an index entry: the OS and CPU its child manifest runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
}

/// Why a manifest was rejected.
#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("manifest is {size} bytes, larger than the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest must be a JSON object")]
    NotAnObject,
    #[error("manifest schemaVersion must be 2, found {found}")]
    SchemaVersion { found: String },
    #[error("unsupported manifest media type {media_type:?}")]
    UnsupportedMediaType { media_type: String },
    #[error("manifest media type mismatch: Content-Type says {declared:?}, body says {body:?}")]
    MediaTypeMismatch { declared: String, body: String },
    #[error("manifest has no mediaType and neither a manifests array nor config and layers")]
    UnknownKind,
    #[error("manifest field {field} is missing")]
    MissingField { field: String },
    #[error("manifest field {field} is invalid: {reason}")]
    InvalidField { field: String, reason: &'static str },
    #[error("manifest field {field} has an invalid digest: {source}")]
    Digest {
        field: String,
        #[source]
        source: DigestError,
    },
}

/// A parsed image manifest or index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    media_type: MediaType,
    config: Option<Descriptor>,
    layers: Vec<Descriptor>,
    children: Vec<Descriptor>,
    /// The platform of each child, when its entry names one (same order as `children`).
    platforms: Vec<Option<Platform>>,
    /// OCI 1.1: the manifest this one refers to.
    subject: Option<Descriptor>,
    /// OCI 1.1 `artifactType`.
    artifact_type: Option<String>,
    annotations: Option<Map<String, Value>>,
}

impl Manifest {
    /// Parses and validates a manifest body. `content_type` is the request or response
    /// `Content-Type`; it is used only when it names a manifest media type.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_SIZE {
            return Err(ManifestError::TooLarge {
                size: bytes.len(),
                limit: MAX_MANIFEST_SIZE,
            });
        }
        let value: Value = serde_json::from_slice(bytes)?;
        let Value::Object(object) = value else {
            return Err(ManifestError::NotAnObject);
        };
        match object.get("schemaVersion") {
            Some(version) if version.as_u64() == Some(2) => {}
            Some(other) => {
                return Err(ManifestError::SchemaVersion {
                    found: truncate(&other.to_string()),
                });
            }
            None => return Err(missing("schemaVersion")),
        }
        let media_type = resolve_media_type(&object, content_type)?;
        let subject = match object.get("subject") {
            Some(subject) => Some(descriptor(subject, "subject".to_owned())?),
            None => None,
        };
        let artifact_type = match object.get("artifactType") {
            None => None,
            Some(Value::String(artifact_type)) => Some(artifact_type.clone()),
            Some(_) => return Err(invalid("artifactType".to_owned(), "must be a string")),
        };
        let annotations = match object.get("annotations") {
            None => None,
            Some(Value::Object(annotations)) => Some(annotations.clone()),
            Some(_) => return Err(invalid("annotations".to_owned(), "must be an object")),
        };
        if media_type.is_index() {
            let children = descriptor_list(&object, "manifests")?;
            let platforms = child_platforms(&object);
            Ok(Manifest {
                media_type,
                config: None,
                layers: Vec::new(),
                children,
                platforms,
                subject,
                artifact_type,
                annotations,
            })
        } else {
            let config = object.get("config").ok_or_else(|| missing("config"))?;
            let config = descriptor(config, "config".to_owned())?;
            let layers = descriptor_list(&object, "layers")?;
            Ok(Manifest {
                media_type,
                config: Some(config),
                layers,
                children: Vec::new(),
                platforms: Vec::new(),
                subject,
                artifact_type,
                annotations,
            })
        }
    }

    pub fn media_type(&self) -> MediaType {
        self.media_type
    }

    /// The manifest this one refers to (OCI 1.1 `subject`), if any.
    pub fn subject(&self) -> Option<&Descriptor> {
        self.subject.as_ref()
    }

    /// What kind of artifact this is, as the referrers list reports it: `artifactType`, else an
    /// image manifest's config media type (OCI distribution spec, "Listing Referrers").
    pub fn artifact_type(&self) -> Option<&str> {
        self.artifact_type
            .as_deref()
            .or_else(|| self.config.as_ref().map(|c| c.media_type.as_str()))
    }

    /// The manifest's `annotations`, if any.
    pub fn annotations(&self) -> Option<&Map<String, Value>> {
        self.annotations.as_ref()
    }

    /// The image config; `None` for an index.
    pub fn config(&self) -> Option<&Descriptor> {
        self.config.as_ref()
    }

    /// The image layers; empty for an index.
    pub fn layers(&self) -> &[Descriptor] {
        &self.layers
    }

    /// Every blob an image manifest references that the registry must hold: the config, then
    /// the layers that are not [non-distributable](Descriptor::is_non_distributable).
    pub fn blobs(&self) -> impl Iterator<Item = &Descriptor> {
        let layers = self.layers.iter().filter(|l| !l.is_non_distributable());
        self.config.iter().chain(layers)
    }

    /// The layers clients fetch from elsewhere (their `urls`), which the registry need not hold.
    pub fn non_distributable_layers(&self) -> impl Iterator<Item = &Descriptor> {
        self.layers.iter().filter(|l| l.is_non_distributable())
    }

    /// The child manifests of an index; empty for an image manifest.
    pub fn children(&self) -> &[Descriptor] {
        &self.children
    }

    /// The children of an index whose entry names platform `os`/`architecture` (OCI names:
    /// `linux`, `amd64`, `arm64`). Entries without a platform (attestations, say) never match.
    pub fn children_for(&self, os: &str, architecture: &str) -> impl Iterator<Item = &Descriptor> {
        self.children
            .iter()
            .zip(&self.platforms)
            .filter(move |(_, platform)| {
                platform
                    .as_ref()
                    .is_some_and(|p| p.os == os && p.architecture == architecture)
            })
            .map(|(child, _)| child)
    }
}

/// Each entry's `platform.os` and `platform.architecture`; an entry lacking either (or with
/// other types) has none. Only a filter reads them, so they are not validated further.
fn child_platforms(object: &Map<String, Value>) -> Vec<Option<Platform>> {
    let entries = object.get("manifests").and_then(Value::as_array);
    entries
        .into_iter()
        .flatten()
        .map(|entry| {
            let platform = entry.get("platform")?;
            Some(Platform {
                os: platform.get("os")?.as_str()?.to_owned(),
                architecture: platform.get("architecture")?.as_str()?.to_owned(),
            })
        })
        .collect()
}

/// The body's `mediaType` wins, then a manifest `Content-Type`, then the shape of the body.
fn resolve_media_type(
    object: &Map<String, Value>,
    content_type: Option<&str>,
) -> Result<MediaType, ManifestError> {
    // application/json, application/octet-stream and the like say nothing about the kind.
    let declared =
        content_type.and_then(|ct| MediaType::parse(ct).map(|media_type| (ct, media_type)));
    match object.get("mediaType") {
        Some(Value::String(body)) => {
            let media_type =
                MediaType::parse(body).ok_or_else(|| ManifestError::UnsupportedMediaType {
                    media_type: truncate(body),
                })?;
            match declared {
                Some((ct, declared)) if declared != media_type => {
                    Err(ManifestError::MediaTypeMismatch {
                        declared: truncate(ct),
                        body: truncate(body),
                    })
                }
                _ => Ok(media_type),
            }
        }
        Some(_) => Err(invalid("mediaType".to_owned(), "must be a string")),
        None => match declared {
            Some((_, declared)) => Ok(declared),
            None if object.get("manifests").is_some_and(Value::is_array) => Ok(MediaType::OciIndex),
            None if object.contains_key("config") && object.contains_key("layers") => {
                Ok(MediaType::OciManifest)
            }
            None => Err(ManifestError::UnknownKind),
        },
    }
}

fn descriptor_list(
    object: &Map<String, Value>,
    field: &'static str,
) -> Result<Vec<Descriptor>, ManifestError> {
    let entries = object
        .get(field)
        .ok_or_else(|| missing(field))?
        .as_array()
        .ok_or_else(|| invalid(field.to_owned(), "must be an array"))?;
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| descriptor(entry, format!("{field}[{index}]")))
        .collect()
}

/// Reads the descriptor fields Shoal needs (media type, digest, size, urls); others
/// (annotations, platform) are allowed and ignored.
fn descriptor(value: &Value, path: String) -> Result<Descriptor, ManifestError> {
    let object = value
        .as_object()
        .ok_or_else(|| invalid(path.clone(), "must be an object"))?;
    let field = |name: &str| {
        object.get(name).ok_or_else(|| ManifestError::MissingField {
            field: format!("{path}.{name}"),
        })
    };
    let media_type = field("mediaType")?
        .as_str()
        .ok_or_else(|| invalid(format!("{path}.mediaType"), "must be a string"))?
        .to_owned();
    let digest = field("digest")?
        .as_str()
        .ok_or_else(|| invalid(format!("{path}.digest"), "must be a string"))?;
    let digest = Digest::parse(digest).map_err(|source| ManifestError::Digest {
        field: format!("{path}.digest"),
        source,
    })?;
    let size = field("size")?
        .as_u64()
        .ok_or_else(|| invalid(format!("{path}.size"), "must be a non-negative integer"))?;
    let urls = match object.get("urls") {
        None => Vec::new(),
        Some(Value::Array(urls)) => urls
            .iter()
            .map(|url| url.as_str().map(str::to_owned))
            .collect::<Option<_>>()
            .ok_or_else(|| invalid(format!("{path}.urls"), "must be strings"))?,
        Some(_) => return Err(invalid(format!("{path}.urls"), "must be an array")),
    };
    Ok(Descriptor {
        media_type,
        digest,
        size,
        urls,
    })
}

/// The walk over an image's manifests stopped at its bound: an index of indexes is legal but
/// rare, and the bound keeps a malicious one from reading without end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("the image references more than {limit} manifests")]
pub struct TooManyManifests {
    pub limit: usize,
}

/// A bounded walk from a top manifest through the child manifests of indexes: the caller reads
/// each digest [`ManifestWalk::next_manifest`] hands out and queues the children it wants with
/// [`ManifestWalk::queue`]. Each digest is handed out once, and at most `limit` in all.
#[derive(Debug)]
pub struct ManifestWalk {
    pending: Vec<Digest>,
    seen: Vec<Digest>,
    limit: usize,
}

impl ManifestWalk {
    pub fn new(top: Digest, limit: usize) -> ManifestWalk {
        ManifestWalk {
            pending: vec![top],
            seen: vec![top],
            limit,
        }
    }

    /// The next manifest to read; None when every queued one was handed out.
    pub fn next_manifest(&mut self) -> Option<Digest> {
        self.pending.pop()
    }

    /// Queues the children not seen before; Err once more than `limit` manifests were queued.
    pub fn queue(
        &mut self,
        children: impl IntoIterator<Item = Digest>,
    ) -> Result<(), TooManyManifests> {
        for child in children {
            if self.seen.contains(&child) {
                continue;
            }
            if self.seen.len() >= self.limit {
                return Err(TooManyManifests { limit: self.limit });
            }
            self.seen.push(child);
            self.pending.push(child);
        }
        Ok(())
    }

    /// Every manifest queued so far, the top one first.
    pub fn manifests(&self) -> &[Digest] {
        &self.seen
    }
}

fn missing(field: &str) -> ManifestError {
    ManifestError::MissingField {
        field: field.to_owned(),
    }
}

fn invalid(field: String, reason: &'static str) -> ManifestError {
    ManifestError::InvalidField { field, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_walk_hands_out_each_digest_once_and_stops_at_its_bound() {
        let d = |n: u8| Digest::of(&[n]);
        let mut walk = ManifestWalk::new(d(0), 3);
        assert_eq!(walk.next_manifest(), Some(d(0)));
        walk.queue([d(1), d(2), d(0), d(1)])
            .expect("within the bound");
        let mut handed = vec![walk.next_manifest().unwrap(), walk.next_manifest().unwrap()];
        handed.sort();
        let mut expected = vec![d(1), d(2)];
        expected.sort();
        assert_eq!(handed, expected);
        assert_eq!(walk.next_manifest(), None);
        assert_eq!(walk.manifests(), &[d(0), d(1), d(2)]);
        // Seen ones never count again; a fourth new one is over the bound.
        walk.queue([d(2)]).expect("already seen");
        assert_eq!(walk.queue([d(3)]), Err(TooManyManifests { limit: 3 }));
    }

    fn digest(seed: &str) -> String {
        Digest::of(seed.as_bytes()).to_string()
    }

    fn docker_schema2() -> String {
        format!(
            r#"{{
  "schemaVersion": 2,
  "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
  "config": {{
    "mediaType": "application/vnd.docker.container.image.v1+json",
    "size": 1469,
    "digest": "{}"
  }},
  "layers": [
    {{
      "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
      "size": 2811478,
      "digest": "{}"
    }},
    {{
      "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
      "size": 317,
      "digest": "{}"
    }}
  ]
}}"#,
            digest("config"),
            digest("layer0"),
            digest("layer1")
        )
    }

    fn oci_manifest(with_media_type: bool) -> String {
        let media_type = if with_media_type {
            r#""mediaType": "application/vnd.oci.image.manifest.v1+json","#
        } else {
            ""
        };
        format!(
            r#"{{
  "schemaVersion": 2,
  {media_type}
  "artifactType": "application/vnd.example+type",
  "config": {{
    "mediaType": "application/vnd.oci.image.config.v1+json",
    "digest": "{}",
    "size": 7023
  }},
  "layers": [
    {{
      "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
      "digest": "{}",
      "size": 32654,
      "annotations": {{ "org.opencontainers.image.title": "rootfs.tar.gz" }}
    }}
  ],
  "subject": {{
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": "{}",
    "size": 7682
  }},
  "annotations": {{ "com.example.key1": "value1" }}
}}"#,
            digest("oci-config"),
            digest("oci-layer"),
            digest("subject")
        )
    }

    fn index(media_type: &str) -> String {
        format!(
            r#"{{
  "schemaVersion": 2,
  "mediaType": "{media_type}",
  "manifests": [
    {{
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "size": 7143,
      "digest": "{}",
      "platform": {{ "architecture": "ppc64le", "os": "linux" }}
    }},
    {{
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "size": 7682,
      "digest": "{}",
      "platform": {{ "architecture": "amd64", "os": "linux" }}
    }}
  ],
  "annotations": {{ "com.example.key1": "value1" }}
}}"#,
            digest("ppc64le"),
            digest("amd64")
        )
    }

    #[test]
    fn media_types_parse_with_parameters_and_whitespace() {
        for media_type in MediaType::ALL {
            assert_eq!(MediaType::parse(media_type.as_str()), Some(media_type));
            let decorated = format!("  {}; charset=utf-8 ", media_type.as_str());
            assert_eq!(MediaType::parse(&decorated), Some(media_type));
        }
        assert_eq!(
            MediaType::parse("Application/VND.OCI.Image.Index.v1+JSON"),
            Some(MediaType::OciIndex)
        );
        assert_eq!(MediaType::parse("application/json"), None);
        assert_eq!(
            MediaType::parse("application/vnd.docker.distribution.manifest.v1+json"),
            None
        );
        assert!(MediaType::OciIndex.is_index());
        assert!(MediaType::DockerManifestList.is_index());
        assert!(!MediaType::OciManifest.is_index());
        assert!(!MediaType::DockerManifest.is_index());
    }

    #[test]
    fn parses_docker_schema2() {
        let manifest = Manifest::parse(docker_schema2().as_bytes(), None).expect("valid");
        assert_eq!(manifest.media_type(), MediaType::DockerManifest);
        let config = manifest.config().expect("image has a config");
        assert_eq!(config.digest.to_string(), digest("config"));
        assert_eq!(config.size, 1469);
        assert_eq!(
            config.media_type,
            "application/vnd.docker.container.image.v1+json"
        );
        assert_eq!(manifest.layers().len(), 2);
        let blobs: Vec<String> = manifest.blobs().map(|d| d.digest.to_string()).collect();
        assert_eq!(
            blobs,
            [digest("config"), digest("layer0"), digest("layer1")]
        );
        assert!(manifest.children().is_empty());
    }

    #[test]
    fn parses_oci_manifest_with_extra_fields() {
        let manifest = Manifest::parse(oci_manifest(true).as_bytes(), None).expect("valid");
        assert_eq!(manifest.media_type(), MediaType::OciManifest);
        assert_eq!(manifest.layers()[0].size, 32654);
        // subject is not a blob this manifest needs.
        assert_eq!(manifest.blobs().count(), 2);
    }

    #[test]
    fn parses_oci_index_and_docker_list() {
        for media_type in [MediaType::OciIndex, MediaType::DockerManifestList] {
            let manifest =
                Manifest::parse(index(media_type.as_str()).as_bytes(), None).expect("valid");
            assert_eq!(manifest.media_type(), media_type);
            assert_eq!(manifest.children().len(), 2);
            assert_eq!(manifest.children()[1].digest.to_string(), digest("amd64"));
            assert!(manifest.config().is_none());
            assert!(manifest.layers().is_empty());
            assert_eq!(manifest.blobs().count(), 0);
            let amd64: Vec<_> = manifest.children_for("linux", "amd64").collect();
            assert_eq!(amd64, [&manifest.children()[1]]);
            assert_eq!(manifest.children_for("linux", "arm64").count(), 0);
            assert_eq!(manifest.children_for("windows", "amd64").count(), 0);
        }
    }

    #[test]
    fn media_type_comes_from_content_type_or_shape_when_body_has_none() {
        let body = oci_manifest(false);
        let from_header = Manifest::parse(
            body.as_bytes(),
            Some("application/vnd.docker.distribution.manifest.v2+json"),
        )
        .expect("valid");
        assert_eq!(from_header.media_type(), MediaType::DockerManifest);
        for content_type in [
            None,
            Some("application/json"),
            Some("application/octet-stream"),
        ] {
            let inferred = Manifest::parse(body.as_bytes(), content_type).expect("valid");
            assert_eq!(inferred.media_type(), MediaType::OciManifest);
        }
        let bare_index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"x","digest":"{}","size":1}}]}}"#,
            digest("child")
        );
        let inferred = Manifest::parse(bare_index.as_bytes(), None).expect("valid");
        assert_eq!(inferred.media_type(), MediaType::OciIndex);
        assert!(matches!(
            Manifest::parse(br#"{"schemaVersion":2}"#, None),
            Err(ManifestError::UnknownKind)
        ));
    }

    #[test]
    fn content_type_must_agree_with_body() {
        let body = docker_schema2();
        let same = Manifest::parse(
            body.as_bytes(),
            Some("application/vnd.docker.distribution.manifest.v2+json; charset=utf-8"),
        );
        assert!(same.is_ok());
        let err = Manifest::parse(
            body.as_bytes(),
            Some("application/vnd.oci.image.manifest.v1+json"),
        )
        .expect_err("mismatch");
        assert!(
            matches!(err, ManifestError::MediaTypeMismatch { .. }),
            "{err}"
        );
        assert!(Manifest::parse(body.as_bytes(), Some("application/json")).is_ok());
    }

    #[test]
    fn rejects_malformed_manifests() {
        let good_layer = format!(r#"{{"mediaType":"l","digest":"{}","size":1}}"#, digest("l"));
        let image = |config: &str, layers: &str| {
            format!(r#"{{"schemaVersion":2,"config":{config},"layers":{layers}}}"#)
        };
        let cases: Vec<(String, &str)> = vec![
            ("not json".to_owned(), "Json"),
            ("[]".to_owned(), "NotAnObject"),
            (r#"{"schemaVersion":1,"fsLayers":[]}"#.to_owned(), "SchemaVersion"),
            (r#"{"schemaVersion":"2"}"#.to_owned(), "SchemaVersion"),
            (r#"{"config":{},"layers":[]}"#.to_owned(), "MissingField"),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.example"}"#.to_owned(),
                "UnsupportedMediaType",
            ),
            (r#"{"schemaVersion":2,"mediaType":7}"#.to_owned(), "InvalidField"),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#
                    .to_owned(),
                "MissingField",
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json"}"#
                    .to_owned(),
                "MissingField",
            ),
            (
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":{}}"#
                    .to_owned(),
                "InvalidField",
            ),
            (image(&good_layer, "{}"), "InvalidField"),
            (image("[]", "[]"), "InvalidField"),
            (image(&good_layer, r#"[{"mediaType":"l","size":1}]"#), "MissingField"),
            (
                image(&good_layer, r#"[{"mediaType":"l","digest":"sha256:00","size":1}]"#),
                "Digest",
            ),
            (
                image(
                    &good_layer,
                    &format!(r#"[{{"mediaType":"l","digest":"{}","size":-1}}]"#, digest("l")),
                ),
                "InvalidField",
            ),
            (
                image(
                    &good_layer,
                    &format!(r#"[{{"mediaType":5,"digest":"{}","size":1}}]"#, digest("l")),
                ),
                "InvalidField",
            ),
        ];
        for (body, expected) in cases {
            let err = Manifest::parse(body.as_bytes(), None).expect_err(&body);
            let variant = format!("{err:?}");
            assert!(
                variant.starts_with(expected),
                "{body}: expected {expected}, got {variant}"
            );
        }
    }

    #[test]
    fn descriptor_errors_name_the_field() {
        let body = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"c","digest":"{}","size":1}},"layers":[{{"mediaType":"l","digest":"{}","size":1}},{{"mediaType":"l","digest":"md5:00","size":1}}]}}"#,
            digest("c"),
            digest("l")
        );
        let err = Manifest::parse(body.as_bytes(), None).expect_err("bad digest");
        assert!(err.to_string().contains("layers[1].digest"), "{err}");
    }

    #[test]
    fn rejects_oversized_manifests() {
        let body = vec![b' '; MAX_MANIFEST_SIZE + 1];
        assert!(matches!(
            Manifest::parse(&body, None),
            Err(ManifestError::TooLarge { .. })
        ));
    }

    #[test]
    fn layers_with_urls_or_a_non_distributable_media_type_are_not_blobs_to_hold() {
        let (config, plain, foreign, hosted, windows) = (
            digest("config"),
            digest("plain"),
            digest("foreign"),
            digest("hosted"),
            digest("windows"),
        );
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":1,"digest":"{config}"}},
            "layers":[
              {{"mediaType":"application/vnd.oci.image.layer.v1.tar","size":1,"digest":"{plain}"}},
              {{"mediaType":"application/vnd.oci.image.layer.nondistributable.v1.tar+gzip","size":1,"digest":"{foreign}"}},
              {{"mediaType":"application/vnd.oci.image.layer.v1.tar","size":1,"digest":"{hosted}","urls":["https://x.example/l"]}},
              {{"mediaType":"application/vnd.docker.image.rootfs.foreign.diff.tar.gzip","size":1,"digest":"{windows}"}}
            ]}}"#
        );
        let manifest = Manifest::parse(body.as_bytes(), None).expect("valid");
        let held: Vec<String> = manifest.blobs().map(|d| d.digest.to_string()).collect();
        assert_eq!(held, [config.clone(), plain]);
        let elsewhere: Vec<String> = manifest
            .non_distributable_layers()
            .map(|d| d.digest.to_string())
            .collect();
        assert_eq!(elsewhere, [foreign, hosted.clone(), windows]);
        let urls = &manifest.layers()[2].urls;
        assert_eq!(urls, &["https://x.example/l"]);

        let bad = body.replace(r#"["https://x.example/l"]"#, "[1]");
        assert!(matches!(
            Manifest::parse(bad.as_bytes(), None),
            Err(ManifestError::InvalidField { field, .. }) if field == "layers[2].urls"
        ));
    }

    #[test]
    fn records_carry_the_subject_artifact_type_and_annotations_of_an_artifact() {
        let (config, subject) = (digest("config"), digest("subject"));
        let artifact = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "artifactType":"application/vnd.example.sbom",
            "config":{{"mediaType":"application/vnd.oci.empty.v1+json","size":2,"digest":"{config}"}},
            "layers":[],
            "subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","size":7,"digest":"{subject}"}},
            "annotations":{{"created":"today"}}}}"#
        );
        let manifest = Manifest::parse(artifact.as_bytes(), None).expect("valid");
        let record = ManifestRecord::new(&manifest, artifact.len() as u64);
        assert_eq!(record.subject.map(|d| d.to_string()), Some(subject));
        assert_eq!(
            record.artifact_type.as_deref(),
            Some("application/vnd.example.sbom")
        );
        assert_eq!(record.annotations.as_ref().unwrap()["created"], "today");
        let referrer = record.referrer(Digest::of(artifact.as_bytes()));
        assert_eq!(referrer.size, artifact.len() as u64);
        // Without artifactType, an image manifest's config media type stands for it.
        let image = artifact.replace(r#""artifactType":"application/vnd.example.sbom","#, "");
        let manifest = Manifest::parse(image.as_bytes(), None).expect("valid");
        assert_eq!(
            manifest.artifact_type(),
            Some("application/vnd.oci.empty.v1+json")
        );
        // A record written before referrers existed reads back without them.
        let old: ManifestRecord =
            serde_json::from_str(r#"{"mediaType":"application/vnd.oci.image.index.v1+json"}"#)
                .expect("old record");
        assert_eq!((old.size, old.subject), (0, None));
        let bad = artifact.replace(
            r#""annotations":{"created":"today"}"#,
            r#""annotations":[]"#,
        );
        assert!(Manifest::parse(bad.as_bytes(), None).is_err());
    }

    #[test]
    fn descriptor_serde_uses_oci_field_names() {
        let descriptor = Descriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar".to_owned(),
            digest: Digest::of(b"d"),
            size: 3,
            urls: Vec::new(),
        };
        let json = serde_json::to_value(&descriptor).expect("serialize");
        assert_eq!(json["mediaType"], "application/vnd.oci.image.layer.v1.tar");
        let back: Descriptor = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, descriptor);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            content_type in proptest::option::of("\\PC{0,60}"),
        ) {
            let _ = Manifest::parse(&body, content_type.as_deref());
        }
    }
}
