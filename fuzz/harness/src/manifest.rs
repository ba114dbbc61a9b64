//! `Manifest::parse`: manifest PUT bodies (with their `Content-Type`), manifests read back from
//! origins and backends, and the walk through an index's children.

use shoal_core::{Digest, Manifest, ManifestWalk, MediaType};

const CONTENT_TYPES: [Option<&str>; 7] = [
    None,
    Some("application/vnd.docker.distribution.manifest.v2+json"),
    Some("application/vnd.docker.distribution.manifest.list.v2+json"),
    Some("application/vnd.oci.image.manifest.v1+json"),
    Some("application/vnd.oci.image.index.v1+json; charset=utf-8"),
    Some("application/json"),
    Some("application/octet-stream"),
];

/// The walk's bound in the proxy's preheat and the build-index's verification is of this order.
const WALK_LIMIT: usize = 16;

/// The first byte picks the `Content-Type`; the rest is the body.
pub fn run(data: &[u8]) {
    let Some((content_type, body)) = crate::selector(data) else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(content_type) % CONTENT_TYPES.len()];
    let Ok(manifest) = Manifest::parse(body, content_type) else {
        return;
    };
    let media_type = manifest.media_type();
    assert_eq!(MediaType::parse(media_type.as_str()), Some(media_type));
    if media_type.is_index() {
        assert!(manifest.config().is_none() && manifest.layers().is_empty());
        assert!(manifest.children_for("linux", "amd64").count() <= manifest.children().len());
        let mut walk = ManifestWalk::new(Digest::of(body), WALK_LIMIT);
        let _ = walk.next_manifest();
        let queued = walk.queue(manifest.children().iter().map(|child| child.digest));
        assert!(walk.manifests().len() <= WALK_LIMIT);
        if queued.is_ok() {
            assert!(walk.manifests().len() <= manifest.children().len() + 1);
        }
    } else {
        assert!(manifest.config().is_some() && manifest.children().is_empty());
        assert_eq!(manifest.blobs().count(), manifest.layers().len() + 1);
    }
}
