//! The Registry V2 push and pull protocol, request by request, against the proxy of a real
//! cluster: chunked, streamed and monolithic uploads, upload status and cancellation, cross-repo
//! mounts, ranged blob reads, tag and catalog pagination, and manifests of all four media types.

use anyhow::{Context, Result, ensure};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use shoal_core::Digest;
use shoal_tests::images::stream_digest;
use shoal_tests::pattern::Pattern;
use shoal_tests::snapshot::{diff, snapshot};
use shoal_tests::v2::{Registry, expect_error, header};
use shoal_tests::{Cluster, ClusterOptions};

const MIB: u64 = 1 << 20;

async fn setup() -> Result<(Cluster, Registry)> {
    let cluster = Cluster::start(ClusterOptions::default()).await?;
    let registry = Registry::new(&cluster.proxy_url())?;
    Ok((cluster, registry))
}

/// PATCHes `pattern[start..end]` to `url` with `Content-Range` and `Content-Length`, expecting
/// 202; returns the next session URL.
async fn patch_range(
    registry: &Registry,
    url: reqwest::Url,
    pattern: Pattern,
    start: u64,
    end: u64,
) -> Result<reqwest::Url> {
    let response = registry
        .http
        .patch(url)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_LENGTH, end - start)
        .header(CONTENT_RANGE, format!("{start}-{}", end - 1))
        .body(pattern.body(start, end))
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::ACCEPTED,
        "PATCH {start}-{}: {}",
        end - 1,
        response.status()
    );
    ensure!(
        header(&response, "range") == format!("0-{}", end - 1),
        "PATCH answered Range {:?}, expected 0-{}",
        header(&response, "range"),
        end - 1
    );
    registry.location(&response)
}

/// PUTs `?digest=` (empty body) on the session, expecting 201 with the digest echoed.
async fn commit(registry: &Registry, mut url: reqwest::Url, digest: &Digest) -> Result<()> {
    url.query_pairs_mut()
        .append_pair("digest", &digest.to_string());
    let response = registry
        .http
        .put(url)
        .header(CONTENT_LENGTH, 0)
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::CREATED,
        "commit {digest}: {} {}",
        response.status(),
        response.text().await.unwrap_or_default()
    );
    ensure!(header(&response, "docker-content-digest") == digest.to_string());
    ensure!(
        !header(&response, "location").is_empty(),
        "commit must answer with the blob's Location"
    );
    Ok(())
}

/// GETs the whole blob, hashing the streamed body, and checks its digest and length.
async fn expect_blob(registry: &Registry, repo: &str, digest: &Digest, len: u64) -> Result<()> {
    let response = registry
        .http
        .get(registry.url(&format!("v2/{repo}/blobs/{digest}")))
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::OK,
        "GET blob: {}",
        response.status()
    );
    ensure!(header(&response, "docker-content-digest") == digest.to_string());
    let (received_digest, received) = stream_digest(response.bytes_stream())
        .await
        .context("reading the blob body")?;
    ensure!(
        received == len,
        "GET blob returned {received} bytes, expected {len}"
    );
    ensure!(received_digest == *digest, "GET blob returned other bytes");

    let head = registry
        .http
        .head(registry.url(&format!("v2/{repo}/blobs/{digest}")))
        .send()
        .await?;
    ensure!(
        head.status() == StatusCode::OK,
        "HEAD blob: {}",
        head.status()
    );
    ensure!(header(&head, "content-length") == len.to_string());
    Ok(())
}

#[tokio::test]
async fn a_100_mib_blob_uploaded_in_seven_uneven_chunks_reads_back_identical() -> Result<()> {
    let (_cluster, registry) = setup().await?;
    let pattern = Pattern::new(1, 100 * MIB);
    let digest = pattern.digest();
    // Uneven on purpose: a single byte, odd sizes, chunks that straddle MiB boundaries.
    let cuts = [
        0,
        1,
        13 * MIB + 7,
        20 * MIB,
        51 * MIB - 3,
        70 * MIB + 999,
        88 * MIB,
        100 * MIB,
    ];
    let mut url = registry.start_upload("proto/chunked").await?;
    for window in cuts.windows(2) {
        url = patch_range(&registry, url, pattern, window[0], window[1]).await?;
    }
    commit(&registry, url, &digest).await?;
    expect_blob(&registry, "proto/chunked", &digest, pattern.len).await
}

#[tokio::test]
async fn a_monolithic_post_with_digest_stores_the_blob() -> Result<()> {
    let (_cluster, registry) = setup().await?;
    let bytes = Pattern::new(2, 300_000).range(0, 300_000);
    let digest = Digest::of(&bytes);
    let mut url = registry.url("v2/proto/monolithic/blobs/uploads/");
    url.query_pairs_mut()
        .append_pair("digest", &digest.to_string());
    let response = registry
        .http
        .post(url)
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(bytes.clone())
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::CREATED,
        "monolithic POST: {}",
        response.status()
    );
    ensure!(header(&response, "docker-content-digest") == digest.to_string());
    expect_blob(&registry, "proto/monolithic", &digest, bytes.len() as u64).await
}

#[tokio::test]
async fn a_patch_streamed_with_chunked_transfer_encoding_is_accepted() -> Result<()> {
    let (_cluster, registry) = setup().await?;
    let pattern = Pattern::new(3, 9 * MIB + 17);
    let url = registry.start_upload("proto/streamed").await?;
    // No Content-Length: reqwest sends a stream of unknown length with chunked encoding, the
    // way the Docker Engine pushes layers.
    let response = registry
        .http
        .patch(url)
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(pattern.body(0, pattern.len))
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::ACCEPTED,
        "chunked PATCH: {}",
        response.status()
    );
    ensure!(header(&response, "range") == format!("0-{}", pattern.len - 1));
    let url = registry.location(&response)?;
    commit(&registry, url, &pattern.digest()).await?;
    expect_blob(&registry, "proto/streamed", &pattern.digest(), pattern.len).await
}

#[tokio::test]
async fn the_final_chunk_may_ride_on_the_committing_put() -> Result<()> {
    let (_cluster, registry) = setup().await?;
    let pattern = Pattern::new(4, 3 * MIB + 5);
    let split = MIB + 1;
    let url = registry.start_upload("proto/final-chunk").await?;
    let mut url = patch_range(&registry, url, pattern, 0, split).await?;
    url.query_pairs_mut()
        .append_pair("digest", &pattern.digest().to_string());
    let response = registry
        .http
        .put(url)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_LENGTH, pattern.len - split)
        .body(pattern.body(split, pattern.len))
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::CREATED,
        "PUT with final chunk: {}",
        response.status()
    );
    expect_blob(
        &registry,
        "proto/final-chunk",
        &pattern.digest(),
        pattern.len,
    )
    .await
}

#[tokio::test]
async fn upload_status_reports_the_bytes_received() -> Result<()> {
    let (_cluster, registry) = setup().await?;
    let pattern = Pattern::new(5, 1000);
    let url = registry.start_upload("proto/status").await?;
    let url = patch_range(&registry, url, pattern, 0, 600).await?;
    let response = registry.http.get(url.clone()).send().await?;
    ensure!(
        response.status() == StatusCode::NO_CONTENT,
        "upload status: {}",
        response.status()
    );
    ensure!(
        header(&response, "range") == "0-599",
        "upload status Range {:?}",
        header(&response, "range")
    );
    ensure!(!header(&response, "location").is_empty());
    // The session stays usable after a status query.
    let url = patch_range(&registry, url, pattern, 600, 1000).await?;
    commit(&registry, url, &pattern.digest()).await
}

#[tokio::test]
async fn a_cross_repo_mount_of_a_known_blob_is_created_and_of_an_unknown_one_opens_a_session()
-> Result<()> {
    let (_cluster, registry) = setup().await?;
    let bytes = Pattern::new(6, 50_000).range(0, 50_000);
    let digest = registry.push_blob("proto/mount-from", &bytes).await?;

    let mut url = registry.url("v2/proto/mount-to/blobs/uploads/");
    url.query_pairs_mut()
        .append_pair("mount", &digest.to_string())
        .append_pair("from", "proto/mount-from");
    let response = registry.http.post(url).send().await?;
    ensure!(
        response.status() == StatusCode::CREATED,
        "mount of a known blob: {}",
        response.status()
    );
    ensure!(header(&response, "docker-content-digest") == digest.to_string());
    ensure!(
        header(&response, "location").ends_with(&format!("/v2/proto/mount-to/blobs/{digest}")),
        "mount Location {:?}",
        header(&response, "location")
    );
    expect_blob(&registry, "proto/mount-to", &digest, bytes.len() as u64).await?;

    let absent = Digest::of(b"never pushed");
    let mut url = registry.url("v2/proto/mount-to/blobs/uploads/");
    url.query_pairs_mut()
        .append_pair("mount", &absent.to_string())
        .append_pair("from", "proto/mount-from");
    let response = registry.http.post(url).send().await?;
    ensure!(
        response.status() == StatusCode::ACCEPTED,
        "mount of an unknown blob must fall back to a new session: {}",
        response.status()
    );
    // The fallback session is a real one: the blob can be uploaded through it.
    let session = registry.location(&response)?;
    let other = Pattern::new(7, 4096);
    let session = patch_range(&registry, session, other, 0, other.len).await?;
    commit(&registry, session, &other.digest()).await
}

#[tokio::test]
async fn a_deleted_upload_is_gone_and_leaves_no_files() -> Result<()> {
    let (cluster, registry) = setup().await?;
    let data_dir = cluster.origin_data_dir();
    let before = snapshot(&[&data_dir])?;

    let pattern = Pattern::new(8, 2 * MIB);
    let url = registry.start_upload("proto/cancel").await?;
    let url = patch_range(&registry, url, pattern, 0, MIB).await?;
    let response = registry.http.delete(url.clone()).send().await?;
    ensure!(
        response.status() == StatusCode::NO_CONTENT,
        "DELETE upload: {}",
        response.status()
    );

    let response = registry
        .http
        .patch(url)
        .header(CONTENT_RANGE, format!("{MIB}-{}", 2 * MIB - 1))
        .header(CONTENT_LENGTH, MIB)
        .body(pattern.body(MIB, 2 * MIB))
        .send()
        .await?;
    expect_error(response, 404, "BLOB_UPLOAD_UNKNOWN").await?;

    let after = snapshot(&[&data_dir])?;
    ensure!(
        before == after,
        "the cancelled upload left files in the origin's data dir:\n{}",
        diff(&before, &after)
    );
    Ok(())
}

#[tokio::test]
async fn a_ranged_blob_read_returns_exactly_those_bytes() -> Result<()> {
    let (_cluster, registry) = setup().await?;
    let pattern = Pattern::new(9, 5 * MIB + 3);
    let url = registry.start_upload("proto/range").await?;
    let url = patch_range(&registry, url, pattern, 0, pattern.len).await?;
    commit(&registry, url, &pattern.digest()).await?;

    let blob_url = registry.url(&format!("v2/proto/range/blobs/{}", pattern.digest()));
    for (start, end) in [
        (0, 0),
        (1_000_003, 2 * MIB + 9),
        (pattern.len - 10, pattern.len - 1),
    ] {
        let response = registry
            .http
            .get(blob_url.clone())
            .header(RANGE, format!("bytes={start}-{end}"))
            .send()
            .await?;
        ensure!(
            response.status() == StatusCode::PARTIAL_CONTENT,
            "Range {start}-{end}: {}",
            response.status()
        );
        ensure!(
            header(&response, "content-range") == format!("bytes {start}-{end}/{}", pattern.len),
            "Content-Range {:?}",
            header(&response, "content-range")
        );
        let body = response.bytes().await?;
        ensure!(
            body.as_ref() == pattern.range(start, end + 1).as_slice(),
            "Range {start}-{end} returned other bytes ({} bytes)",
            body.len()
        );
    }
    Ok(())
}

/// Pushes a one-layer OCI image to `repo` and tags it with each of `tags`.
async fn push_tagged_image(registry: &Registry, repo: &str, tags: &[&str]) -> Result<Digest> {
    let config_bytes: &[u8] = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer_bytes: &[u8] = b"layer bytes for tag tests";
    let config = registry.push_blob(repo, config_bytes).await?;
    let layer = registry.push_blob(repo, layer_bytes).await?;
    let manifest = oci_manifest(
        &config,
        config_bytes.len() as u64,
        &layer,
        layer_bytes.len() as u64,
    );
    for tag in tags {
        registry
            .put_manifest(repo, tag, OCI_MANIFEST, manifest.as_bytes())
            .await?;
    }
    Ok(Digest::of(manifest.as_bytes()))
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Deliberately not in serde_json's canonical form (spacing, key order, trailing newline), so a
/// registry that re-serialises instead of storing the bytes changes the digest and fails.
fn oci_manifest(config: &Digest, config_size: u64, layer: &Digest, layer_size: u64) -> String {
    format!(
        "{{\n   \"schemaVersion\": 2,\n   \"mediaType\": \"{OCI_MANIFEST}\",\n   \"config\": \
         {{ \"mediaType\": \"application/vnd.oci.image.config.v1+json\", \"size\": \
         {config_size}, \"digest\": \"{config}\" }},\n   \"layers\": [ {{ \"mediaType\": \
         \"application/vnd.oci.image.layer.v1.tar\", \"size\": {layer_size}, \"digest\": \
         \"{layer}\" }} ]\n}}\n"
    )
}

#[tokio::test]
async fn tags_list_pages_with_n_last_and_a_link_header() -> Result<()> {
    let (_cluster, registry) = setup().await?;
    let tags = ["alpha", "beta", "delta", "epsilon", "gamma"];
    push_tagged_image(&registry, "proto/tags", &tags).await?;

    let response = registry
        .http
        .get(registry.url("v2/proto/tags/tags/list"))
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::OK,
        "tags list: {}",
        response.status()
    );
    let all: serde_json::Value = response.json().await?;
    ensure!(all["name"] == "proto/tags", "{all}");
    ensure!(all["tags"] == serde_json::json!(tags), "{all}");

    // Follow the Link headers two at a time and collect every page.
    let mut next = Some(registry.url("v2/proto/tags/tags/list?n=2"));
    let mut pages = Vec::new();
    while let Some(url) = next.take() {
        ensure!(pages.len() < tags.len(), "pagination does not terminate");
        let response = registry.http.get(url).send().await?;
        ensure!(
            response.status() == StatusCode::OK,
            "page: {}",
            response.status()
        );
        let link = header(&response, "link").to_owned();
        let page: serde_json::Value = response.json().await?;
        pages.push(page["tags"].clone());
        if !link.is_empty() {
            ensure!(link.ends_with("rel=\"next\""), "Link {link:?}");
            let target = link
                .trim_start_matches('<')
                .split('>')
                .next()
                .context("Link without <…>")?;
            next = Some(registry.base.join(target)?);
        }
    }
    ensure!(
        pages
            == vec![
                serde_json::json!(["alpha", "beta"]),
                serde_json::json!(["delta", "epsilon"]),
                serde_json::json!(["gamma"]),
            ],
        "pages {pages:?}"
    );

    let response = registry
        .http
        .get(registry.url("v2/proto/tags/tags/list?n=10&last=delta"))
        .send()
        .await?;
    let after: serde_json::Value = response.json().await?;
    ensure!(
        after["tags"] == serde_json::json!(["epsilon", "gamma"]),
        "{after}"
    );
    Ok(())
}

#[tokio::test]
async fn the_catalog_lists_every_repository_in_pages() -> Result<()> {
    let (_cluster, registry) = setup().await?;
    for repo in ["catalog/b", "catalog/a", "catalog/c"] {
        push_tagged_image(&registry, repo, &["v1"]).await?;
    }
    let response = registry
        .http
        .get(registry.url("v2/_catalog"))
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::OK,
        "catalog: {}",
        response.status()
    );
    let all: serde_json::Value = response.json().await?;
    ensure!(
        all["repositories"] == serde_json::json!(["catalog/a", "catalog/b", "catalog/c"]),
        "{all}"
    );

    let response = registry
        .http
        .get(registry.url("v2/_catalog?n=2"))
        .send()
        .await?;
    let link = header(&response, "link").to_owned();
    let first: serde_json::Value = response.json().await?;
    ensure!(
        first["repositories"] == serde_json::json!(["catalog/a", "catalog/b"]),
        "{first}"
    );
    ensure!(
        link.contains("n=2") && link.contains("last=catalog") && link.ends_with("rel=\"next\""),
        "catalog Link {link:?}"
    );
    let response = registry
        .http
        .get(registry.url("v2/_catalog?n=2&last=catalog%2Fb"))
        .send()
        .await?;
    let rest: serde_json::Value = response.json().await?;
    ensure!(
        rest["repositories"] == serde_json::json!(["catalog/c"]),
        "{rest}"
    );
    Ok(())
}

/// PUTs `bytes` as `media_type` under `tag`, then reads it back by tag and by digest with GET
/// and HEAD: the same bytes, the stored media type and the digest header every time.
async fn manifest_round_trip(
    registry: &Registry,
    repo: &str,
    tag: &str,
    media_type: &str,
    bytes: &str,
) -> Result<Digest> {
    let digest = Digest::of(bytes.as_bytes());
    let response = registry
        .put_manifest(repo, tag, media_type, bytes.as_bytes())
        .await?;
    ensure!(
        header(&response, "docker-content-digest") == digest.to_string(),
        "PUT {media_type}: digest header {:?}",
        header(&response, "docker-content-digest")
    );
    for reference in [tag.to_owned(), digest.to_string()] {
        let url = registry.url(&format!("v2/{repo}/manifests/{reference}"));
        let accept = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", ");
        let get = registry
            .http
            .get(url.clone())
            .header(ACCEPT, &accept)
            .send()
            .await?;
        ensure!(
            get.status() == StatusCode::OK,
            "GET {reference}: {}",
            get.status()
        );
        ensure!(
            header(&get, "content-type") == media_type,
            "GET {reference}: Content-Type {:?}, stored {media_type}",
            header(&get, "content-type")
        );
        ensure!(header(&get, "docker-content-digest") == digest.to_string());
        let body = get.bytes().await?;
        ensure!(
            body.as_ref() == bytes.as_bytes(),
            "GET {reference}: bytes changed"
        );

        let head = registry
            .http
            .head(url)
            .header(ACCEPT, &accept)
            .send()
            .await?;
        ensure!(
            head.status() == StatusCode::OK,
            "HEAD {reference}: {}",
            head.status()
        );
        ensure!(header(&head, "content-type") == media_type);
        ensure!(header(&head, "docker-content-digest") == digest.to_string());
        ensure!(header(&head, "content-length") == bytes.len().to_string());
    }
    Ok(digest)
}

#[tokio::test]
async fn manifests_of_all_four_media_types_round_trip_byte_for_byte() -> Result<()> {
    let (_cluster, registry) = setup().await?;
    let repo = "proto/manifests";
    let config_bytes = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"}}"#;
    let config = registry.push_blob(repo, config_bytes).await?;
    let layer_bytes = b"pretend this is a gzipped tar";
    let layer = registry.push_blob(repo, layer_bytes).await?;
    let (config_size, layer_size) = (config_bytes.len(), layer_bytes.len());

    let oci = oci_manifest(&config, config_size as u64, &layer, layer_size as u64);
    let oci_digest = manifest_round_trip(&registry, repo, "oci", OCI_MANIFEST, &oci).await?;

    let docker = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{DOCKER_MANIFEST}\",\"config\":{{\"mediaType\":\
         \"application/vnd.docker.container.image.v1+json\",\"size\":{config_size},\"digest\":\
         \"{config}\"}},\"layers\":[{{\"mediaType\":\
         \"application/vnd.docker.image.rootfs.diff.tar.gzip\",\"size\":{layer_size},\
         \"digest\":\"{layer}\"}}]}}"
    );
    let docker_digest =
        manifest_round_trip(&registry, repo, "docker", DOCKER_MANIFEST, &docker).await?;

    let index = format!(
        "{{ \"schemaVersion\": 2, \"mediaType\": \"{OCI_INDEX}\", \"manifests\": [ {{ \
         \"mediaType\": \"{OCI_MANIFEST}\", \"size\": {}, \"digest\": \"{oci_digest}\", \
         \"platform\": {{ \"architecture\": \"amd64\", \"os\": \"linux\" }} }} ] }}",
        oci.len()
    );
    manifest_round_trip(&registry, repo, "index", OCI_INDEX, &index).await?;

    let list = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{DOCKER_LIST}\",\"manifests\":[{{\"mediaType\":\
         \"{DOCKER_MANIFEST}\",\"size\":{},\"digest\":\"{docker_digest}\",\"platform\":{{\
         \"architecture\":\"amd64\",\"os\":\"linux\"}}}}]}}",
        docker.len()
    );
    manifest_round_trip(&registry, repo, "list", DOCKER_LIST, &list).await?;
    Ok(())
}

#[tokio::test]
async fn deleting_a_manifest_by_tag_removes_the_tag() -> Result<()> {
    let (_cluster, registry) = setup().await?;
    let digest = push_tagged_image(&registry, "proto/delete", &["keep", "drop"]).await?;
    let response = registry
        .http
        .delete(registry.url("v2/proto/delete/manifests/drop"))
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::ACCEPTED,
        "DELETE manifest by tag: {}",
        response.status()
    );
    let response = registry
        .http
        .get(registry.url("v2/proto/delete/manifests/drop"))
        .header(ACCEPT, OCI_MANIFEST)
        .send()
        .await?;
    expect_error(response, 404, "MANIFEST_UNKNOWN").await?;

    let tags: serde_json::Value = registry
        .http
        .get(registry.url("v2/proto/delete/tags/list"))
        .send()
        .await?
        .json()
        .await?;
    ensure!(tags["tags"] == serde_json::json!(["keep"]), "{tags}");
    // The other tag and the manifest by digest are untouched.
    for reference in ["keep".to_owned(), digest.to_string()] {
        let response = registry
            .http
            .get(registry.url(&format!("v2/proto/delete/manifests/{reference}")))
            .header(ACCEPT, OCI_MANIFEST)
            .send()
            .await?;
        ensure!(
            response.status() == StatusCode::OK,
            "GET {reference} after deleting another tag: {}",
            response.status()
        );
    }
    Ok(())
}
