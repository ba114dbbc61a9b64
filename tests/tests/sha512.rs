//! sha512 content end to end, against a real cluster with raw HTTP: a config pushed in one PUT
//! and a layer pushed in chunks, both named by sha512 (then a single-POST push and a
//! cross-repository mount), and an OCI manifest referencing them pushed by its sha512 digest and
//! by tag, all pull back byte-identical through the proxy and through an agent (which fetches
//! the layer from the swarm: sha256 piece chain, sha512 checked whole); they land under
//! `blobs/sha512/` in the agent's store and the backend. A wrong sha512 (blob or manifest) is
//! refused with DIGEST_INVALID and leaves nothing behind. skopeo (1.9.3 here) fetches the raw
//! manifest but cannot copy sha512 content, so pulls are raw HTTP.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use reqwest::{StatusCode, Url};
use serde_json::json;
use shoal_core::{Algorithm, Digest};
use shoal_tests::pattern::Pattern;
use shoal_tests::preheat::stored;
use shoal_tests::tools::skopeo;
use shoal_tests::v2::{Registry, expect_error, header};
use shoal_tests::{Cluster, ClusterOptions};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const REPO: &str = "long/digests";
/// Several 256 KiB pieces and a short last one, so the agent assembles it from pieces.
const LAYER_LEN: u64 = 5 * 256 * 1024 + 4321;
const CHUNK: usize = 400_000;
/// How long the agent may take to commit a blob it served (a deadline, not a timing claim).
const STORE_DEADLINE: Duration = Duration::from_secs(30);

/// `PUT ?digest=` on an upload session, with `body` as the last bytes.
async fn commit(
    registry: &Registry,
    mut url: Url,
    digest: &Digest,
    body: Vec<u8>,
) -> Result<reqwest::Response> {
    url.query_pairs_mut()
        .append_pair("digest", &digest.to_string());
    Ok(registry
        .http
        .put(url)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(CONTENT_LENGTH, body.len())
        .body(body)
        .send()
        .await?)
}

/// POST then one PUT with every byte, under `digest`.
async fn push_monolithic(
    registry: &Registry,
    digest: &Digest,
    bytes: &[u8],
) -> Result<reqwest::Response> {
    let url = registry.start_upload(REPO).await?;
    commit(registry, url, digest, bytes.to_vec()).await
}

/// POST, PATCHes of `CHUNK` bytes with `Content-Range`, then an empty PUT under `digest`.
async fn push_chunked(
    registry: &Registry,
    digest: &Digest,
    bytes: &[u8],
) -> Result<reqwest::Response> {
    let mut url = registry.start_upload(REPO).await?;
    let mut start = 0;
    for chunk in bytes.chunks(CHUNK) {
        let end = start + chunk.len();
        let response = registry
            .http
            .patch(url)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, chunk.len())
            .header(CONTENT_RANGE, format!("{start}-{}", end - 1))
            .body(chunk.to_vec())
            .send()
            .await?;
        ensure!(
            response.status() == StatusCode::ACCEPTED,
            "PATCH {start}: {}",
            response.status()
        );
        url = registry.location(&response)?;
        start = end;
    }
    commit(registry, url, digest, Vec::new()).await
}

/// `GET` of `path` on `registry`: 200, the exact bytes, and `Docker-Content-Digest` when given.
async fn get_identical(
    registry: &Registry,
    path: &str,
    bytes: &[u8],
    digest: Option<&Digest>,
) -> Result<()> {
    let response = registry
        .http
        .get(registry.url(path))
        .header(ACCEPT, OCI_MANIFEST)
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::OK,
        "GET {path} on {}: {}",
        registry.base,
        response.status()
    );
    if let Some(digest) = digest {
        ensure!(
            header(&response, "docker-content-digest") == digest.to_string(),
            "GET {path}: Docker-Content-Digest {:?}",
            header(&response, "docker-content-digest")
        );
    }
    let body = response.bytes().await?;
    ensure!(
        body == bytes,
        "GET {path} on {}: {} bytes that differ",
        registry.base,
        body.len()
    );
    Ok(())
}

async fn head_status(registry: &Registry, path: &str) -> Result<StatusCode> {
    Ok(registry
        .http
        .head(registry.url(path))
        .header(ACCEPT, OCI_MANIFEST)
        .send()
        .await?
        .status())
}

#[tokio::test]
async fn sha512_blobs_and_manifests_push_and_pull_through_the_proxy_and_an_agent() -> Result<()> {
    let cluster = Cluster::start(ClusterOptions::with_agents(1)).await?;
    let proxy = Registry::new(&cluster.proxy_url())?;
    let agent = Registry::new(&cluster.agent_url(0))?;
    let sha512 = |bytes: &[u8]| Algorithm::Sha512.digest(bytes);

    let layer = Pattern::new(512, LAYER_LEN).range(0, LAYER_LEN);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha512(&layer).to_string()]},
    }))?;
    let (config_digest, layer_digest) = (sha512(&config), sha512(&layer));

    // A wrong sha512, in one PUT and after chunks: refused, and neither the claimed digest nor
    // the bytes' own digests appear.
    let claimed = sha512(b"not these bytes");
    for response in [
        push_monolithic(&proxy, &claimed, &layer).await?,
        push_chunked(&proxy, &claimed, &layer).await?,
    ] {
        expect_error(response, 400, "DIGEST_INVALID").await?;
    }
    for digest in [claimed, layer_digest, Digest::of(&layer)] {
        let status = head_status(&proxy, &format!("v2/{REPO}/blobs/{digest}")).await?;
        ensure!(
            status == StatusCode::NOT_FOUND,
            "{digest} after a refused push: {status}"
        );
    }

    let response = push_monolithic(&proxy, &config_digest, &config).await?;
    ensure!(
        response.status() == StatusCode::CREATED,
        "config: {}",
        response.status()
    );
    ensure!(header(&response, "docker-content-digest") == config_digest.to_string());
    let response = push_chunked(&proxy, &layer_digest, &layer).await?;
    ensure!(
        response.status() == StatusCode::CREATED,
        "layer: {}",
        response.status()
    );
    ensure!(header(&response, "docker-content-digest") == layer_digest.to_string());

    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest.to_string(), "size": layer.len()}],
    }))?;
    let (manifest_sha512, manifest_sha256) = (sha512(&manifest), Digest::of(&manifest));

    // A manifest put under a sha512 it does not have: refused, nothing recorded.
    let response = proxy
        .http
        .put(proxy.url(&format!("v2/{REPO}/manifests/{claimed}")))
        .header(CONTENT_TYPE, OCI_MANIFEST)
        .body(manifest.clone())
        .send()
        .await?;
    expect_error(response, 400, "DIGEST_INVALID").await?;
    for digest in [claimed, manifest_sha512, manifest_sha256] {
        let status = head_status(&proxy, &format!("v2/{REPO}/manifests/{digest}")).await?;
        ensure!(
            status == StatusCode::NOT_FOUND,
            "manifest {digest}: {status}"
        );
    }

    // By its sha512, the manifest is named by its sha512; by tag, by its sha256.
    let response = proxy
        .put_manifest(REPO, &manifest_sha512.to_string(), OCI_MANIFEST, &manifest)
        .await?;
    ensure!(header(&response, "docker-content-digest") == manifest_sha512.to_string());
    let response = proxy
        .put_manifest(REPO, "v1", OCI_MANIFEST, &manifest)
        .await?;
    ensure!(
        header(&response, "docker-content-digest") == manifest_sha256.to_string(),
        "by tag: {:?}",
        header(&response, "docker-content-digest")
    );

    for registry in [&proxy, &agent] {
        get_identical(
            registry,
            &format!("v2/{REPO}/manifests/{manifest_sha512}"),
            &manifest,
            Some(&manifest_sha512),
        )
        .await?;
        get_identical(
            registry,
            &format!("v2/{REPO}/manifests/v1"),
            &manifest,
            None,
        )
        .await?;
        for (digest, bytes) in [(config_digest, &config), (layer_digest, &layer)] {
            get_identical(
                registry,
                &format!("v2/{REPO}/blobs/{digest}"),
                bytes,
                Some(&digest),
            )
            .await?;
        }
    }

    // A single-POST push and a cross-repository mount take sha512 digests too.
    let other = "long/other";
    let mut url = proxy.url(&format!("v2/{other}/blobs/uploads/"));
    url.query_pairs_mut()
        .append_pair("digest", &config_digest.to_string());
    let response = proxy
        .http
        .post(url)
        .header(CONTENT_TYPE, "application/octet-stream")
        .body(config.clone())
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::CREATED,
        "single POST: {}",
        response.status()
    );
    let mut url = proxy.url(&format!("v2/{other}/blobs/uploads/"));
    url.query_pairs_mut()
        .append_pair("mount", &layer_digest.to_string())
        .append_pair("from", REPO);
    let response = proxy
        .http
        .post(url)
        .header(CONTENT_LENGTH, 0)
        .send()
        .await?;
    ensure!(
        response.status() == StatusCode::CREATED,
        "mount: {}",
        response.status()
    );
    ensure!(header(&response, "docker-content-digest") == layer_digest.to_string());
    for (digest, bytes) in [(config_digest, &config), (layer_digest, &layer)] {
        get_identical(
            &proxy,
            &format!("v2/{other}/blobs/{digest}"),
            bytes,
            Some(&digest),
        )
        .await?;
    }

    // skopeo 1.9.3 reads the manifest by either reference but cannot copy or inspect sha512
    // content (its containers/image hashes everything with sha256 and reports a mismatch), so
    // it is checked only on the raw manifest it fetches.
    for url in [cluster.proxy_url(), cluster.agent_url(0)] {
        let host = url.trim_start_matches("http://");
        for reference in [format!("@{manifest_sha512}"), ":v1".to_owned()] {
            let raw = skopeo([
                "inspect",
                "--tls-verify=false",
                "--raw",
                &format!("docker://{host}/{REPO}{reference}"),
            ])
            .await?;
            ensure!(
                raw.stdout.as_bytes() == manifest,
                "skopeo read other bytes from {host} by {reference}"
            );
        }
    }

    // The agent commits what it served into its store under the blobs' algorithm (just after
    // the last byte went out: polled, with a deadline for a loaded machine), and the write-back
    // put them in the backend under theirs.
    let deadline = Instant::now() + STORE_DEADLINE;
    for digest in [config_digest, layer_digest] {
        while !stored(&cluster.agent_data_dir(0), &digest) {
            ensure!(Instant::now() < deadline, "agent store lacks {digest}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    cluster.wait_for_writeback().await?;
    for digest in [config_digest, layer_digest, manifest_sha512] {
        let key = cluster
            .backend_dir()
            .join(shoal_backends::blob_key(&digest));
        ensure!(key.is_file(), "backend lacks {}", key.display());
    }
    Ok(())
}
