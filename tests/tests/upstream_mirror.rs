//! Acceptance: agents mirror an upstream registry that Shoal was never pushed to. The upstream is
//! a CNCF registry with basic auth, routed as `registry.upstream.test/…` with its prefix
//! stripped; containerd pulls through one agent with the catch-all `_default` hosts.toml mirror,
//! two more agents pull by HTTP with `?ns=`, and the upstream's access log shows every blob
//! fetched once for all three.

use std::collections::BTreeMap;

use anyhow::{Result, ensure};
use serde_json::json;
use shoal_core::Digest;
use shoal_tests::containerd::Containerd;
use shoal_tests::images::{generate, image_spec};
use shoal_tests::reference_registry::RegistryAuth;
use shoal_tests::tools::skopeo;
use shoal_tests::{Cluster, ClusterOptions, ReferenceRegistry};

const MIB: u64 = 1 << 20;
/// The upstream's name inside Shoal, under the reserved `.test` TLD: it never resolves, so a
/// pull can only succeed through the agent.
const UPSTREAM: &str = "registry.upstream.test";
const USER: &str = "mirror";
const PASSWORD: &str = "upstream-secret";

fn htpasswd_line(user: &str, password: &str) -> Result<String> {
    // The minimum cost: the test checks the protocol, not the hash's strength.
    let hash = bcrypt::hash_with_result(password, 4)?.format_for_version(bcrypt::Version::TwoY);
    Ok(format!("{user}:{hash}\n"))
}

/// GETs `path` (with `?ns=`) from an agent and checks the body hashes to `digest`.
async fn fetch_checked(
    http: &reqwest::Client,
    agent: &str,
    path: &str,
    digest: &Digest,
) -> Result<()> {
    let url = format!("{agent}{path}?ns={UPSTREAM}");
    let response = http
        .get(&url)
        .header(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .await?;
    let status = response.status();
    let body = response.bytes().await?;
    ensure!(
        status.is_success(),
        "GET {url}: {status}: {}",
        String::from_utf8_lossy(&body)
    );
    ensure!(
        Digest::of(&body) == *digest,
        "GET {url}: body does not hash to {digest}"
    );
    Ok(())
}

#[tokio::test]
async fn agents_mirror_an_upstream_registry_fetching_each_blob_once() -> Result<()> {
    let upstream =
        ReferenceRegistry::start_with(RegistryAuth::Htpasswd(htpasswd_line(USER, PASSWORD)?))
            .await?;
    let work = tempfile::tempdir()?;
    let image = generate(
        &work.path().join("image"),
        image_spec(vec![6 * MIB, 3 * MIB + 11, 150_000], 0x0075_7057, "v1"),
    )
    .await?;
    // Pushed to the upstream only, as `mirror/app`; Shoal knows it as `<UPSTREAM>/mirror/app`.
    skopeo([
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        &format!("{USER}:{PASSWORD}"),
        &format!("oci:{}:v1", image.dir.display()),
        &format!("docker://{}/mirror/app:v1", upstream.addr()),
    ])
    .await?;
    let pushed = upstream.requests()?.len();

    let route = json!([{
        "namespace": format!("{UPSTREAM}/.*"),
        "backend": {"registry": {
            "url": upstream.url(),
            "username": USER,
            "password": PASSWORD,
            "strip_prefix": UPSTREAM,
        }},
    }]);
    let cluster = Cluster::start(ClusterOptions {
        origin_overrides: json!({"backends": route}),
        build_index_overrides: json!({"backends": route}),
        agent_overrides: json!({"namespaces": {"hosts": {UPSTREAM: UPSTREAM}}}),
        ..ClusterOptions::with_agents(3)
    })
    .await?;

    // containerd, with only the catch-all mirror: every registry goes through agent 0.
    let hosts = work.path().join("hosts");
    std::fs::create_dir_all(hosts.join("_default"))?;
    std::fs::write(
        hosts.join("_default").join("hosts.toml"),
        format!(
            "[host.\"{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            cluster.agent_url(0)
        ),
    )?;
    let containerd = Containerd::start(&work.path().join("containerd")).await?;
    let reference = format!("{UPSTREAM}/mirror/app:v1");
    containerd
        .pull_through_mirror(&hosts, &reference, &image.manifest_digest)
        .await?;

    // Agents 1 and 2 at once, as a node's runtime asks: manifest by tag, then every blob.
    let http = reqwest::Client::new();
    let pulls = (1..3).map(|i| {
        let (http, image, agent) = (&http, &image, cluster.agent_url(i));
        async move {
            fetch_checked(
                http,
                &agent,
                "/v2/mirror/app/manifests/v1",
                &image.manifest_digest,
            )
            .await?;
            for (digest, _) in image.layers.iter().chain([&image.config]) {
                fetch_checked(
                    http,
                    &agent,
                    &format!("/v2/mirror/app/blobs/{digest}"),
                    digest,
                )
                .await?;
            }
            anyhow::Ok(())
        }
    });
    futures::future::try_join_all(pulls).await?;

    // Each blob left the upstream once, whole, for the three agents.
    let mut fetched: BTreeMap<Digest, usize> = BTreeMap::new();
    for (method, path, status) in &upstream.requests()?[pushed..] {
        let Some((_, digest)) = path.split_once("/blobs/") else {
            continue;
        };
        if method == "GET" && (200..300).contains(status) {
            *fetched.entry(Digest::parse(digest)?).or_default() += 1;
        }
    }
    let expected: BTreeMap<Digest, usize> = image
        .layers
        .iter()
        .chain([&image.config])
        .map(|(digest, _)| (*digest, 1))
        .collect();
    ensure!(
        fetched == expected,
        "upstream blob fetches {fetched:?}, expected each blob once: {expected:?}"
    );
    Ok(())
}
