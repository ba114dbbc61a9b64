//! A manifest's life in a repository, against a real cluster with skopeo and raw HTTP: a delete
//! by digest takes it away from the proxy at once and from an agent within its cache TTL, while
//! an image sharing its layers, and the same manifest in another repository, still pull
//! byte-identical; manifests with non-distributable layers are accepted under the URL policy and
//! read back unchanged; OCI 1.1 referrers are listed (and filtered) by the proxy and an agent.

use std::time::Duration;

use anyhow::{Result, ensure};
use reqwest::StatusCode;
use reqwest::header::ACCEPT;
use serde_json::json;
use shoal_core::Digest;
use shoal_tests::images::{generate, image_spec, layout_blobs, pull_identical};
use shoal_tests::tools::skopeo_push;
use shoal_tests::v2::{Registry, expect_error, header};
use shoal_tests::{Cluster, ClusterOptions};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// The agents' `tag_cache_ttl` in these tests: what a deleted manifest may still be served for.
const AGENT_CACHE_TTL: Duration = Duration::from_secs(2);
/// How long the test waits for an agent to stop serving a deleted manifest: the TTL with ample
/// room for a loaded machine (a deadline for the poll, not a timing claim).
const AGENT_DEADLINE: Duration = Duration::from_secs(60);

fn options() -> ClusterOptions {
    ClusterOptions {
        agent_overrides: json!({ "tag_cache_ttl": format!("{}s", AGENT_CACHE_TTL.as_secs()) }),
        ..ClusterOptions::with_agents(1)
    }
}

/// The statuses of `HEAD` and then `GET` of `repo`'s manifest `reference`.
async fn manifest_statuses(
    registry: &Registry,
    repo: &str,
    reference: &str,
) -> Result<(StatusCode, StatusCode)> {
    let url = registry.url(&format!("v2/{repo}/manifests/{reference}"));
    let head = registry
        .http
        .head(url.clone())
        .header(ACCEPT, OCI_MANIFEST)
        .send()
        .await?;
    let get = registry
        .http
        .get(url)
        .header(ACCEPT, OCI_MANIFEST)
        .send()
        .await?;
    Ok((head.status(), get.status()))
}

/// The status of `repo`'s manifest `reference`, which `HEAD` and `GET` must agree on.
async fn manifest_status(registry: &Registry, repo: &str, reference: &str) -> Result<StatusCode> {
    let (head, get) = manifest_statuses(registry, repo, reference).await?;
    ensure!(
        head == get,
        "HEAD {repo}:{reference} answered {head} but GET {get}"
    );
    Ok(get)
}

#[tokio::test]
async fn a_manifest_deleted_by_digest_is_gone_while_shared_layers_still_pull() -> Result<()> {
    let cluster = Cluster::start(options()).await?;
    let proxy_addr = cluster.proxy_addr().to_string();
    let proxy = Registry::new(&cluster.proxy_url())?;
    let agent = Registry::new(&cluster.agent_url(0))?;
    let agent_addr = cluster
        .agent_url(0)
        .trim_start_matches("http://")
        .to_owned();
    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("a"),
        image_spec(vec![300_000, 70_000], 0x11f3, "a"),
    )
    .await?;
    let doomed = image.manifest_digest.to_string();
    skopeo_push(&image.dir, "a", &format!("{proxy_addr}/life/app:a")).await?;
    skopeo_push(&image.dir, "a", &format!("{proxy_addr}/life/copy:a")).await?;

    // A second image of the same layers with its own config, pushed over raw HTTP.
    let config = br#"{"architecture":"amd64","os":"linux","config":{"Labels":{"b":"1"}}}"#;
    let config_digest = proxy.push_blob("life/app", config).await?;
    let layers: Vec<_> = image
        .layers
        .iter()
        .map(|(digest, size)| {
            json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest.to_string(), "size": size})
        })
        .collect();
    let shared = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
        "layers": layers,
    }))?;
    proxy
        .put_manifest("life/app", "b", OCI_MANIFEST, &shared)
        .await?;
    let shared_digest = Digest::of(&shared);
    let mut shared_blobs: std::collections::BTreeMap<Digest, u64> =
        image.layers.iter().copied().collect();
    shared_blobs.insert(config_digest, config.len() as u64);
    shared_blobs.insert(shared_digest, shared.len() as u64);

    // The agent has read the doomed manifest (and cached that it exists).
    for reference in [doomed.as_str(), "a"] {
        let status = manifest_status(&agent, "life/app", reference).await?;
        ensure!(
            status == StatusCode::OK,
            "agent {reference} before the delete: {status}"
        );
    }

    // Bad input is refused and changes nothing.
    let delete = |registry: &Registry, repo: &str, reference: &str| {
        let url = registry.url(&format!("v2/{repo}/manifests/{reference}"));
        registry.http.delete(url).send()
    };
    expect_error(
        delete(&proxy, "life/app", "sha256:short").await?,
        400,
        "DIGEST_INVALID",
    )
    .await?;
    expect_error(
        delete(&proxy, "life/nobody", &doomed).await?,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await?;
    ensure!(manifest_status(&proxy, "life/app", &doomed).await? == StatusCode::OK);

    let deleted = delete(&proxy, "life/app", &doomed).await?;
    ensure!(
        deleted.status() == StatusCode::ACCEPTED,
        "DELETE: {}",
        deleted.status()
    );

    // The proxy: gone at once, by digest and by its tag; the same manifest in another
    // repository is untouched.
    for reference in [doomed.as_str(), "a"] {
        let status = manifest_status(&proxy, "life/app", reference).await?;
        ensure!(
            status == StatusCode::NOT_FOUND,
            "proxy {reference} after the delete: {status}"
        );
    }
    let response = proxy
        .http
        .get(proxy.url(&format!("v2/life/app/manifests/{doomed}")))
        .send()
        .await?;
    expect_error(response, 404, "MANIFEST_UNKNOWN").await?;
    ensure!(manifest_status(&proxy, "life/copy", &doomed).await? == StatusCode::OK);
    expect_error(
        delete(&proxy, "life/app", &doomed).await?,
        404,
        "MANIFEST_UNKNOWN",
    )
    .await?;

    // The agent: gone once its cached answers expire.
    let deadline = tokio::time::Instant::now() + AGENT_DEADLINE;
    loop {
        // HEAD and GET may straddle the moment a cached answer expires, so they agree only
        // once both are gone.
        let by_digest = manifest_statuses(&agent, "life/app", &doomed).await?;
        let by_tag = manifest_statuses(&agent, "life/app", "a").await?;
        let gone = (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND);
        if by_digest == gone && by_tag == gone {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the agent still serves the deleted manifest (HEAD, GET: {by_digest:?}, tag {by_tag:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(manifest_status(&agent, "life/copy", &doomed).await? == StatusCode::OK);

    // The image sharing the layers pulls byte-identical through the proxy and the agent.
    for registry in [proxy_addr.as_str(), agent_addr.as_str()] {
        pull_identical(
            registry,
            "life/app:b",
            work.path(),
            shared_digest,
            &shared_blobs,
        )
        .await?;
    }
    let copy_blobs = layout_blobs(&image.dir)?;
    pull_identical(
        &agent_addr,
        "life/copy:a",
        work.path(),
        image.manifest_digest,
        &copy_blobs,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn non_distributable_layers_are_accepted_under_the_url_policy_and_read_back_unchanged()
-> Result<()> {
    let cluster = Cluster::start(ClusterOptions {
        proxy_overrides: json!({
            "validation": {"manifests": {"urls": {
                "allow": ["^https://layers\\.example/"],
                "deny": ["/forbidden/"],
            }}}
        }),
        ..options()
    })
    .await?;
    let proxy = Registry::new(&cluster.proxy_url())?;
    let agent = Registry::new(&cluster.agent_url(0))?;
    let repo = "life/windows";
    let config = br#"{"architecture":"amd64","os":"windows"}"#;
    let config_digest = proxy.push_blob(repo, config).await?;
    let layer = b"a layer that is pushed";
    let layer_digest = proxy.push_blob(repo, layer).await?;
    // Never pushed: clients fetch it from its URL.
    let foreign = Digest::of(b"a Windows base layer");
    let manifest = |url: &str| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest.to_string(), "size": config.len()},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                 "digest": foreign.to_string(), "size": 20, "urls": [url]},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar",
                 "digest": layer_digest.to_string(), "size": layer.len()},
            ],
        }))
    };

    for refused in [
        "https://elsewhere.example/base",
        "https://layers.example/forbidden/base",
    ] {
        let bytes = manifest(refused)?;
        let response = proxy
            .http
            .put(proxy.url(&format!("v2/{repo}/manifests/refused")))
            .header(reqwest::header::CONTENT_TYPE, OCI_MANIFEST)
            .body(bytes.clone())
            .send()
            .await?;
        expect_error(response, 400, "MANIFEST_INVALID").await?;
        let digest = Digest::of(&bytes).to_string();
        ensure!(manifest_status(&proxy, repo, &digest).await? == StatusCode::NOT_FOUND);
    }

    let accepted = manifest("https://layers.example/base.tar.gz")?;
    proxy
        .put_manifest(repo, "v1", OCI_MANIFEST, &accepted)
        .await?;
    let digest = Digest::of(&accepted);
    for (registry, reference) in [
        (&proxy, "v1".to_owned()),
        (&proxy, digest.to_string()),
        (&agent, "v1".to_owned()),
        (&agent, digest.to_string()),
    ] {
        let response = registry
            .http
            .get(registry.url(&format!("v2/{repo}/manifests/{reference}")))
            .header(ACCEPT, OCI_MANIFEST)
            .send()
            .await?;
        ensure!(
            response.status() == StatusCode::OK,
            "{reference}: {}",
            response.status()
        );
        ensure!(header(&response, "docker-content-digest") == digest.to_string());
        ensure!(
            response.bytes().await? == accepted,
            "{reference}: other bytes"
        );
    }
    Ok(())
}

#[tokio::test]
async fn referrers_list_the_artifacts_of_a_subject_on_the_proxy_and_an_agent() -> Result<()> {
    let cluster = Cluster::start(options()).await?;
    let proxy = Registry::new(&cluster.proxy_url())?;
    let agent = Registry::new(&cluster.agent_url(0))?;
    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("img"),
        image_spec(vec![50_000], 0x5e1f, "v1"),
    )
    .await?;
    let repo = "life/signed";
    skopeo_push(
        &image.dir,
        "v1",
        &format!("{}/{repo}:v1", cluster.proxy_addr()),
    )
    .await?;
    let subject = image.manifest_digest;
    let subject_size = image.manifest_bytes.len() as u64;

    for registry in [&proxy, &agent] {
        ensure!(registry.referrers(repo, subject, None).await?.is_empty());
    }
    const SBOM: &str = "application/vnd.example.sbom+json";
    const SIGNATURE: &str = "application/vnd.example.signature";
    let sbom = proxy
        .push_artifact(repo, SBOM, b"{\"packages\":[]}", subject, subject_size)
        .await?;
    let signature = proxy
        .push_artifact(repo, SIGNATURE, b"signed", subject, subject_size)
        .await?;
    let mut both = vec![sbom, signature];
    both.sort();
    for registry in [&proxy, &agent] {
        ensure!(registry.referrers(repo, subject, None).await? == both);
        ensure!(registry.referrers(repo, subject, Some(SBOM)).await? == [sbom]);
        ensure!(
            registry
                .referrers(repo, subject, Some("application/none"))
                .await?
                .is_empty()
        );
        // Referrers are per repository.
        ensure!(
            registry
                .referrers("life/other", subject, None)
                .await?
                .is_empty()
        );
    }

    let deleted = proxy
        .http
        .delete(proxy.url(&format!("v2/{repo}/manifests/{sbom}")))
        .send()
        .await?;
    ensure!(
        deleted.status() == StatusCode::ACCEPTED,
        "DELETE: {}",
        deleted.status()
    );
    for registry in [&proxy, &agent] {
        ensure!(registry.referrers(repo, subject, None).await? == [signature]);
    }
    Ok(())
}
