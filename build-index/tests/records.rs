//! The records of the manifests pushed into each repository, end to end on a real `run`: put,
//! get and delete by digest (with the tags pointing at it), refusals that change nothing, and
//! manifests tagged before records existed.

mod support;

use reqwest::StatusCode;
use shoal_api::ApiError;
use shoal_backends::{manifest_key, tag_key};
use shoal_core::{Digest, ErrorCode, Name, Tag};
use support::{
    BuildIndex, FakeOrigin, OCI_INDEX, OCI_MANIFEST, error_code, http_client, index_manifest,
    push_image, send,
};

fn name(s: &str) -> Name {
    Name::parse(s).expect("valid name")
}

fn tag(s: &str) -> Tag {
    Tag::parse(s).expect("valid tag")
}

#[tokio::test]
async fn deleting_a_manifest_by_digest_removes_its_record_and_the_tags_pointing_at_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = FakeOrigin::start().await;
    let index = BuildIndex::start(dir.path(), vec![origin.addr.to_string()]).await;
    let client = &index.client;
    let (repo, other_repo) = (name("team/app"), name("team/other"));
    let doomed = Digest::of(&push_image(&origin, "doomed"));
    let kept = Digest::of(&push_image(&origin, "kept"));

    assert_eq!(client.manifest(&repo, &doomed).await.unwrap(), None);
    client.put_manifest(&repo, &doomed).await.expect("record");
    let record = client.manifest(&repo, &doomed).await.unwrap();
    assert_eq!(record.expect("recorded").media_type, OCI_MANIFEST);
    // Records are per repository.
    assert_eq!(client.manifest(&other_repo, &doomed).await.unwrap(), None);
    for (t, digest) in [("v1", doomed), ("latest", doomed), ("stable", kept)] {
        client.put_tag(&repo, &tag(t), &digest).await.expect("tag");
    }

    let untagged = client.delete_manifest(&repo, &doomed).await.unwrap();
    let mut untagged = untagged.expect("deleted");
    untagged.sort();
    assert_eq!(untagged, ["latest", "v1"]);
    assert_eq!(client.manifest(&repo, &doomed).await.unwrap(), None);
    assert!(!dir.path().join(manifest_key(&repo, &doomed)).exists());
    let tags = client.list_tags(&repo, None, None).await.unwrap();
    assert_eq!(tags.expect("tags").items, ["stable"]);
    // The manifest tagged with another tag is untouched, and the bytes stay on the origins.
    assert!(client.manifest(&repo, &kept).await.unwrap().is_some());
    assert_eq!(
        client.get_tag(&repo, &tag("stable")).await.unwrap(),
        Some(kept)
    );

    // Deleting again: nothing left to delete.
    assert_eq!(client.delete_manifest(&repo, &doomed).await.unwrap(), None);
    index.stop().await;
}

#[tokio::test]
async fn a_record_needs_its_manifest_on_the_origins_and_bad_input_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = FakeOrigin::start().await;
    let index = BuildIndex::start(dir.path(), vec![origin.addr.to_string()]).await;
    let repo = name("team/app");
    let absent = Digest::of(b"never pushed");
    let refused = index.client.put_manifest(&repo, &absent).await;
    match refused {
        Err(error @ ApiError::Remote { .. }) => {
            assert_eq!(error.code(), ErrorCode::ManifestUnknown)
        }
        other => panic!("expected MANIFEST_UNKNOWN, got {other:?}"),
    }
    let digest = Digest::of(&push_image(&origin, "app"));
    let path = |repo: &str, digest: &str| format!("/v1/repositories/{repo}/manifests/{digest}");
    for (method, repo, digest, code) in [
        (
            reqwest::Method::PUT,
            "team%2Fapp",
            "sha256:short",
            ErrorCode::DigestInvalid,
        ),
        (
            reqwest::Method::GET,
            "team%2Fapp",
            "latest",
            ErrorCode::DigestInvalid,
        ),
        (
            reqwest::Method::DELETE,
            "team%2Fapp",
            "sha256:zz",
            ErrorCode::DigestInvalid,
        ),
        (
            reqwest::Method::PUT,
            "Team%2FApp",
            &digest.to_string(),
            ErrorCode::NameInvalid,
        ),
        (
            reqwest::Method::DELETE,
            "UPPER",
            &digest.to_string(),
            ErrorCode::NameInvalid,
        ),
    ] {
        let request = http_client().request(method.clone(), index.url(&path(repo, digest)));
        let (status, _, body) = send(request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {repo} {digest}");
        assert_eq!(error_code(&body), code, "{method} {repo} {digest}");
    }
    // Deleting what an unknown repository never had is MANIFEST_UNKNOWN.
    let request = http_client().delete(index.url(&path("nobody", &digest.to_string())));
    let (status, _, body) = send(request).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), ErrorCode::ManifestUnknown);
    assert!(
        !dir.path().join("repositories").exists(),
        "a refused request wrote nothing"
    );
    index.stop().await;
}

#[tokio::test]
async fn a_tag_records_every_manifest_of_its_tree() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = FakeOrigin::start().await;
    let index = BuildIndex::start(dir.path(), vec![origin.addr.to_string()]).await;
    let repo = name("team/multi");
    let (amd64, arm64) = (push_image(&origin, "amd64"), push_image(&origin, "arm64"));
    let top = index_manifest(&[&amd64, &arm64]);
    origin.put(top.clone());
    let top = Digest::of(&top);
    index.client.put_tag(&repo, &tag("v1"), &top).await.unwrap();
    let record = index.client.manifest(&repo, &top).await.unwrap();
    assert_eq!(record.expect("index recorded").media_type, OCI_INDEX);
    for child in [&amd64, &arm64] {
        let on_disk = dir.path().join(manifest_key(&repo, &Digest::of(child)));
        assert!(on_disk.is_file(), "child recorded with the tag");
    }
    index.stop().await;
}

#[tokio::test]
async fn manifests_tagged_before_records_existed_are_adopted_on_the_first_miss() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = FakeOrigin::start().await;
    let repo = name("team/legacy");
    let child = push_image(&origin, "child");
    let top = index_manifest(&[&child]);
    origin.put(top.clone());
    let (top, child) = (Digest::of(&top), Digest::of(&child));
    // An image whose config the origins lost since it was tagged.
    let broken = push_image(&origin, "broken");
    let config = br#"{"config":"broken"}"#;
    origin.remove(&Digest::of(config));
    let broken = Digest::of(&broken);
    // What an earlier version left: tag objects and no records.
    for (t, digest) in [("old", top), ("broken", broken)] {
        let tag_file = dir.path().join(tag_key(&repo, &tag(t)));
        std::fs::create_dir_all(tag_file.parent().unwrap()).unwrap();
        std::fs::write(&tag_file, digest.to_string()).unwrap();
    }

    let index = BuildIndex::start(dir.path(), vec![origin.addr.to_string()]).await;
    let record = index.client.manifest(&repo, &child).await.unwrap();
    assert_eq!(record.expect("adopted child").media_type, OCI_MANIFEST);
    assert!(dir.path().join(manifest_key(&repo, &top)).is_file());
    // An incomplete tree is not adopted, and its manifest is not served by digest.
    assert_eq!(index.client.manifest(&repo, &broken).await.unwrap(), None);

    // From then on it is an ordinary manifest: deleting the index leaves its child.
    let untagged = index.client.delete_manifest(&repo, &top).await.unwrap();
    assert_eq!(untagged.expect("deleted"), ["old"]);
    assert_eq!(index.client.manifest(&repo, &top).await.unwrap(), None);
    assert!(
        index
            .client
            .manifest(&repo, &child)
            .await
            .unwrap()
            .is_some()
    );
    index.stop().await;
}
