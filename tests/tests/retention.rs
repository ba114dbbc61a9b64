//! Retention against a real cluster (issue 12): five tags pushed through the proxy into a
//! repository whose rule keeps the last two; the build-index's scheduled run leaves the two
//! newest, the manifests the others pointed at answer 404 by digest (`delete_untagged`), a
//! repository no rule matches keeps every tag, and an on-demand dry run finds nothing left.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use reqwest::StatusCode;
use serde_json::{Value, json};
use shoal_core::Digest;
use shoal_tests::cluster::Component;
use shoal_tests::v2::Registry;
use shoal_tests::{Cluster, ClusterOptions};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// How long the test waits for a scheduled run (every second) to have removed the tags: a
/// deadline for the poll on a loaded machine, not a timing claim.
const DEADLINE: Duration = Duration::from_secs(60);

async fn tags(registry: &Registry, repo: &str) -> Result<Vec<String>> {
    let response = registry
        .http
        .get(registry.url(&format!("v2/{repo}/tags/list")))
        .send()
        .await?;
    ensure!(response.status() == StatusCode::OK, "tags/list {repo}");
    let body: Value = response.json().await?;
    let mut tags: Vec<String> = serde_json::from_value(body["tags"].clone())?;
    tags.sort();
    Ok(tags)
}

async fn manifest_status(registry: &Registry, repo: &str, digest: &Digest) -> Result<StatusCode> {
    let response = registry
        .http
        .head(registry.url(&format!("v2/{repo}/manifests/{digest}")))
        .header(reqwest::header::ACCEPT, OCI_MANIFEST)
        .send()
        .await?;
    Ok(response.status())
}

#[tokio::test]
async fn keep_last_two_leaves_the_two_newest_tags_after_a_scheduled_run() -> Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        build_index_overrides: json!({"retention": {
            "interval": "1s",
            "rules": [{"repository": "ret/.*", "keep_last": 2, "delete_untagged": true}],
        }}),
        ..ClusterOptions::default()
    })
    .await?;
    let registry = Registry::new(&cluster.proxy_url())?;
    let mut digests = Vec::new();
    for i in 1..=5 {
        let image = registry
            .push_small_image("ret/app", &format!("v{i}"), &format!("ret-{i}"))
            .await?;
        digests.push(image.manifest);
        registry
            .push_small_image("keep/app", &format!("v{i}"), &format!("keep-{i}"))
            .await?;
    }

    // A run removes the tags, then the records: it is over once the third record has gone.
    const RECORDS_REMOVED: &str = "shoal_build_index_retention_records_removed_total";
    let waited = tokio::time::timeout(DEADLINE, async {
        while cluster
            .metric(Component::BuildIndex, RECORDS_REMOVED)
            .await?
            != Some(3.0)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::Ok(())
    })
    .await;
    waited.context("no retention run removed the tags and their records")??;
    assert_eq!(tags(&registry, "ret/app").await?, ["v4", "v5"]);
    assert_eq!(tags(&registry, "keep/app").await?.len(), 5);
    for (i, digest) in digests.iter().enumerate() {
        let expected = if i >= 3 {
            StatusCode::OK
        } else {
            StatusCode::NOT_FOUND
        };
        let status = manifest_status(&registry, "ret/app", digest).await?;
        assert_eq!(status, expected, "v{} by digest", i + 1);
    }

    let removed = cluster
        .metric(
            Component::BuildIndex,
            "shoal_build_index_retention_tags_removed_total",
        )
        .await?;
    assert_eq!(removed, Some(3.0));

    // On demand: a dry run finds nothing more to remove.
    let url = format!(
        "http://{}/v1/retention?dry_run=true",
        cluster.build_index_addr()
    );
    let report: Value = registry.http.post(url).send().await?.json().await?;
    assert_eq!(report["dry_run"], true, "{report}");
    assert_eq!(report["repositories"][0]["repository"], "ret/app");
    assert_eq!(report["repositories"][0]["removed"], json!([]), "{report}");
    cluster.stop_all()?;
    Ok(())
}
