//! Retention on a real `run`: `POST /v1/retention` (and its dry run) against tags written
//! through the API, tag times kept in the backend, the TTL against tags whose stored time is old,
//! protected tags, untagged records, and configs refused at start by field.

// Shared with the other suites; this one uses part of it.
#[allow(dead_code)]
mod support;

use std::path::Path;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use serde_json::Value;
use shoal_backends::{manifest_key, tag_key};
use shoal_build_index::{BuildIndexConfig, Listeners, RetentionConfig, RetentionRuleConfig};
use shoal_core::{Digest, Name, Tag};
use support::{BuildIndex, FakeOrigin, http_client, push_image, send};

fn name(s: &str) -> Name {
    Name::parse(s).expect("valid name")
}

fn tag(s: &str) -> Tag {
    Tag::parse(s).expect("valid tag")
}

/// One rule over `team/.*`; an interval long enough that only the runs the test asks for happen.
fn retention(rule: impl FnOnce(&mut RetentionRuleConfig)) -> RetentionConfig {
    let mut config = RetentionRuleConfig {
        repository: "team/.*".into(),
        keep_last: None,
        ttl: None,
        protect: Vec::new(),
        delete_untagged: false,
    };
    rule(&mut config);
    RetentionConfig {
        interval: Duration::from_secs(24 * 3600),
        rules: vec![config],
    }
}

async fn start(dir: &Path, origin: &FakeOrigin, config: RetentionConfig) -> BuildIndex {
    BuildIndex::start_with(dir, vec![origin.addr.to_string()], |c| {
        c.retention = Some(config)
    })
    .await
}

/// `POST /v1/retention` (dry or not); the JSON report.
async fn run(index: &BuildIndex, dry_run: bool) -> Value {
    let url = index.url(&format!("/v1/retention?dry_run={dry_run}"));
    let (status, _, body) = send(http_client().post(url)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).expect("JSON report")
}

/// The tags a report says went from `repo`, sorted.
fn removed(report: &Value, repo: &str) -> Vec<String> {
    let repos = report["repositories"].as_array().expect("repositories");
    let entry = repos
        .iter()
        .find(|r| r["repository"] == repo)
        .unwrap_or_else(|| panic!("{repo} not in {report}"));
    assert!(entry.get("error").is_none(), "{entry}");
    let mut tags: Vec<String> = entry["removed"]
        .as_array()
        .expect("removed")
        .iter()
        .map(|t| t["tag"].as_str().expect("tag").to_owned())
        .collect();
    tags.sort();
    tags
}

async fn tags_of(index: &BuildIndex, repo: &Name) -> Vec<String> {
    let page = index.client.list_tags(repo, None, None).await.unwrap();
    page.map(|page| page.items).unwrap_or_default()
}

/// Tags `v1`…`v5` of `repo` (v5 written last), each on its own image.
async fn push_five(index: &BuildIndex, origin: &FakeOrigin, repo: &Name) -> Vec<Digest> {
    let mut digests = Vec::new();
    for i in 1..=5 {
        let digest = Digest::of(&push_image(origin, &format!("{repo}-{i}")));
        let t = tag(&format!("v{i}"));
        index.client.put_tag(repo, &t, &digest).await.expect("tag");
        digests.push(digest);
    }
    digests
}

/// Every file under `dir`, with its bytes, sorted by path.
fn snapshot(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("list") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).expect("read");
                files.push((path, bytes));
            }
        }
    }
    files.sort();
    files
}

#[tokio::test]
async fn keep_last_removes_the_oldest_tags_and_a_dry_run_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = FakeOrigin::start().await;
    let config = retention(|rule| {
        rule.keep_last = Some(2);
        rule.delete_untagged = true;
    });
    let index = start(dir.path(), &origin, config).await;
    let repo = name("team/app");
    let other = name("other/app");
    let digests = push_five(&index, &origin, &repo).await;
    push_five(&index, &origin, &other).await;
    // Each tag's time is in the backend beside it.
    let time_key = dir.path().join("repositories/team/app/_tag_times/v1");
    let text = std::fs::read_to_string(&time_key).expect("tag time written");
    humantime_serde::re::humantime::parse_rfc3339(text.trim()).expect("RFC 3339");

    let before = snapshot(dir.path());
    let report = run(&index, true).await;
    assert_eq!(report["dry_run"], true);
    assert_eq!(removed(&report, "team/app"), ["v1", "v2", "v3"]);
    let repos = report["repositories"].as_array().expect("repositories");
    assert_eq!(repos.len(), 1, "no rule matches other/app: {report}");
    assert_eq!(snapshot(dir.path()), before, "a dry run changes nothing");

    let report = run(&index, false).await;
    assert_eq!(removed(&report, "team/app"), ["v1", "v2", "v3"]);
    assert_eq!(tags_of(&index, &repo).await, ["v4", "v5"]);
    assert_eq!(tags_of(&index, &other).await.len(), 5);
    assert!(!time_key.exists(), "the time goes with its tag");
    // delete_untagged: the records of the three manifests whose tags went are gone too.
    for (i, digest) in digests.iter().enumerate() {
        let recorded = dir.path().join(manifest_key(&repo, digest)).exists();
        assert_eq!(recorded, i >= 3, "record of v{}", i + 1);
    }
    // A second run has nothing left to remove.
    assert!(removed(&run(&index, false).await, "team/app").is_empty());
    index.stop().await;
}

#[tokio::test]
async fn ttl_removes_tags_written_long_ago_but_not_protected_or_untimed_ones() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = FakeOrigin::start().await;
    let config = retention(|rule| {
        rule.ttl = Some(Duration::from_secs(24 * 3600));
        rule.protect = vec!["v1|release-.*".into()];
    });
    let index = start(dir.path(), &origin, config).await;
    let repo = name("team/app");
    let digests = push_five(&index, &origin, &repo).await;
    let release = tag("release-1");
    let client = &index.client;
    client.put_tag(&repo, &release, &digests[0]).await.unwrap();
    // v1, v2, v3 and release-1 were written two days ago; v4 before tag times were kept.
    let two_days_ago = SystemTime::now() - Duration::from_secs(48 * 3600);
    let old = humantime_serde::re::humantime::format_rfc3339_millis(two_days_ago).to_string();
    for t in ["v1", "v2", "v3", "release-1"] {
        let path = dir
            .path()
            .join(format!("repositories/team/app/_tag_times/{t}"));
        std::fs::write(path, &old).expect("age the tag");
    }
    std::fs::remove_file(dir.path().join("repositories/team/app/_tag_times/v4")).unwrap();

    let report = run(&index, false).await;
    assert_eq!(removed(&report, "team/app"), ["v2", "v3"]);
    assert_eq!(
        tags_of(&index, &repo).await,
        ["release-1", "v1", "v4", "v5"]
    );
    // Without delete_untagged, records stay.
    assert!(dir.path().join(manifest_key(&repo, &digests[1])).exists());
    assert!(!dir.path().join(tag_key(&repo, &tag("v2"))).exists());
    index.stop().await;
}

#[tokio::test]
async fn without_retention_the_endpoint_refuses_and_bad_queries_change_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let origin = FakeOrigin::start().await;
    let index = BuildIndex::start(dir.path(), vec![origin.addr.to_string()]).await;
    let (status, _, body) = send(http_client().post(index.url("/v1/retention"))).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body}");
    assert!(body.contains("`retention`"), "{body}");
    index.stop().await;

    let index = start(dir.path(), &origin, retention(|r| r.keep_last = Some(1))).await;
    let repo = name("team/app");
    push_five(&index, &origin, &repo).await;
    let before = snapshot(dir.path());
    for query in ["dry_run=maybe", "dryrun=true"] {
        let url = index.url(&format!("/v1/retention?{query}"));
        let (status, _, body) = send(http_client().post(url)).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{query}: {body}");
        assert!(body.contains("retention query"), "{query}: {body}");
    }
    assert_eq!(snapshot(dir.path()), before);
    index.stop().await;
}

#[tokio::test]
async fn a_bad_retention_config_is_refused_at_start_naming_the_field() {
    for (edit, field) in [
        (
            Box::new(|r: &mut RetentionRuleConfig| r.repository = "team/(".into())
                as Box<dyn Fn(&mut RetentionRuleConfig)>,
            "retention.rules[0].repository",
        ),
        (
            Box::new(|r| r.protect = vec!["ok".into(), "v[".into()]),
            "retention.rules[0].protect[1]",
        ),
        (
            Box::new(|r| r.keep_last = Some(0)),
            "retention.rules[0].keep_last",
        ),
        (
            Box::new(|r| r.keep_last = Some(-1)),
            "retention.rules[0].keep_last",
        ),
        (
            Box::new(|r| r.ttl = Some(Duration::ZERO)),
            "retention.rules[0].ttl",
        ),
        (
            Box::new(|r| {
                r.keep_last = None;
                r.ttl = None;
            }),
            "retention.rules[0]",
        ),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut retention = retention(|r| r.keep_last = Some(3));
        edit(&mut retention.rules[0]);
        let config = BuildIndexConfig {
            listen: listener.local_addr().unwrap(),
            backend: shoal_backends::BackendConfig::Filesystem {
                root: dir.path().join("backend"),
            },
            retention: Some(retention),
            ..Default::default()
        };
        let shutdown = shoal_service::CancellationToken::new();
        let error = shoal_build_index::run(config, Listeners { http: listener }, shutdown)
            .await
            .expect_err("refused");
        let message = format!("{error:#}");
        assert!(
            message.contains(&format!("`{field}`")),
            "{field}: {message}"
        );
        assert!(!dir.path().join("backend").exists(), "nothing was created");
    }
}
