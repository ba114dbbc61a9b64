//! Retention: tags removed by repository rule (`retention:` in the config), every `interval` and
//! on demand (`POST /v1/retention`, `?dry_run=true` to only report).
//!
//! In a repository the first rule matches, tags matching a `protect` regex stay and are not
//! counted. The others are ranked newest first by the time each was last written (a tag without
//! one, written before tag times were kept or in a registry backend, ranks below every tag with
//! one, by name). A tag is removed when every limit the rule sets says so: it is past the newest
//! `keep_last`, and it was written longer than `ttl` ago (a tag without a time never is). A
//! removal is a tag DELETE ([`records::untag`]). With `delete_untagged`, the record of a manifest
//! no tag of the repository points at any more afterwards goes too (its index children's records
//! stay), so garbage collection no longer keeps it.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use humantime_serde::re::humantime;
use regex::Regex;
use serde::Serialize;
use shoal_core::{Digest, Name, Tag};
use shoal_service::CancellationToken;
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::error::Error;
use crate::metrics::TagMetrics;
use crate::records;
use crate::tags::{Entry, TagStore, lookup_all};

/// A rule of `retention.rules`, checked (see [`crate::config::RetentionConfig::compile`]):
/// at least one of `keep_last` and `ttl`, each above zero.
#[derive(Debug, Clone)]
pub struct Rule {
    pub repository: Regex,
    pub keep_last: Option<usize>,
    pub ttl: Option<Duration>,
    pub protect: Vec<Regex>,
    pub delete_untagged: bool,
}

/// What a run removed (or, dry, would remove), per repository a rule matched.
#[derive(Debug, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub repositories: Vec<RepositoryReport>,
}

#[derive(Debug, Serialize)]
pub struct RepositoryReport {
    pub repository: String,
    /// Index of the rule in `retention.rules`.
    pub rule: usize,
    pub removed: Vec<RemovedTag>,
    /// Tags left (protected ones included).
    pub kept: usize,
    /// Manifest records removed with `delete_untagged`.
    pub records_removed: Vec<Digest>,
    /// Why the repository could not be processed; the run goes on with the next one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RemovedTag {
    pub tag: String,
    pub digest: Digest,
    /// RFC 3339; absent when the tag has no recorded time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// A tag of a repository, as retention ranks it.
struct Candidate {
    tag: Tag,
    digest: Digest,
    updated_at: Option<SystemTime>,
}

pub struct Retention {
    rules: Vec<Rule>,
    tags: TagStore,
    metrics: TagMetrics,
    /// One run at a time: a scheduled run and one asked for over HTTP never interleave.
    running: Mutex<()>,
}

impl Retention {
    pub fn new(rules: Vec<Rule>, tags: TagStore, metrics: TagMetrics) -> Self {
        Self {
            rules,
            tags,
            metrics,
            running: Mutex::new(()),
        }
    }

    /// Runs every `interval` until `shutdown`.
    pub async fn run_scheduled(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let start = tokio::time::Instant::now() + interval;
        let mut ticker = tokio::time::interval_at(start, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let report = tokio::select! {
                () = shutdown.cancelled() => return,
                report = self.run(false) => report,
            };
            let removed: usize = report.repositories.iter().map(|r| r.removed.len()).sum();
            let failed = report.repositories.iter().filter(|r| r.error.is_some());
            info!(
                removed,
                failed = failed.count(),
                "scheduled retention run done"
            );
        }
    }

    /// One pass over every repository; with `dry_run` nothing is changed, only reported.
    pub async fn run(&self, dry_run: bool) -> Report {
        let _running = self.running.lock().await;
        let mut report = Report {
            dry_run,
            repositories: Vec::new(),
        };
        let repositories = match self.tags.repositories().await {
            Ok(repositories) => repositories,
            Err(error) => {
                warn!(%error, "retention: listing the repositories failed");
                return report;
            }
        };
        for repo in repositories {
            let Ok(name) = Name::parse(&repo) else {
                continue;
            };
            let Some((index, rule)) = self
                .rules
                .iter()
                .enumerate()
                .find(|(_, rule)| rule.repository.is_match(&repo))
            else {
                continue;
            };
            let mut entry = RepositoryReport {
                repository: repo,
                rule: index,
                removed: Vec::new(),
                kept: 0,
                records_removed: Vec::new(),
                error: None,
            };
            if let Err(error) = self.apply(&name, rule, dry_run, &mut entry).await {
                warn!(repo = %name, %error, "retention: repository skipped");
                entry.error = Some(error.to_string());
            }
            report.repositories.push(entry);
        }
        report
    }

    async fn apply(
        &self,
        name: &Name,
        rule: &Rule,
        dry_run: bool,
        report: &mut RepositoryReport,
    ) -> Result<(), Error> {
        let tags = &self.tags;
        let targets = records::tag_targets(tags, name).await?;
        let timed = lookup_all(targets, |(tag, digest)| async move {
            let updated_at = tags.updated_at(name, &tag).await?;
            Ok(Some(Candidate {
                tag,
                digest,
                updated_at,
            }))
        })
        .await?;
        let (doomed, kept) = select(rule, timed.into_iter().map(|(_, c)| c), SystemTime::now());
        report.kept = kept.len();
        for candidate in &doomed {
            // Gone already (deleted meanwhile) or not: either way it is not there any more.
            if !dry_run && records::untag(tags, name, &candidate.tag).await? {
                self.metrics.retention_tag_removed();
            }
            report.removed.push(RemovedTag {
                tag: candidate.tag.to_string(),
                digest: candidate.digest,
                updated_at: candidate
                    .updated_at
                    .map(|time| humantime::format_rfc3339_millis(time).to_string()),
            });
        }
        if !rule.delete_untagged || doomed.is_empty() {
            return Ok(());
        }
        // Read again after the removals, so a tag pushed meanwhile keeps its manifest's record.
        let still_tagged: BTreeSet<Digest> = if dry_run {
            kept.iter().map(|c| c.digest).collect()
        } else {
            let targets = records::tag_targets(tags, name).await?;
            targets.into_iter().map(|(_, digest)| digest).collect()
        };
        let untagged: BTreeSet<Digest> = doomed
            .iter()
            .map(|c| c.digest)
            .filter(|digest| !still_tagged.contains(digest))
            .collect();
        for digest in untagged {
            if dry_run || tags.delete(name, &Entry::Manifest(digest)).await? {
                if !dry_run {
                    self.metrics.retention_record_removed();
                    info!(repo = %name, %digest, "retention: untagged manifest record removed");
                }
                report.records_removed.push(digest);
            }
        }
        Ok(())
    }
}

/// Splits a repository's tags into those `rule` removes and those it keeps, at time `now`.
fn select(
    rule: &Rule,
    tags: impl IntoIterator<Item = Candidate>,
    now: SystemTime,
) -> (Vec<Candidate>, Vec<Candidate>) {
    let (protected, mut ranked): (Vec<_>, Vec<_>) = tags
        .into_iter()
        .partition(|c| rule.protect.iter().any(|p| p.is_match(c.tag.as_str())));
    // Newest first; a tag without a time after every tag with one (`None < Some`).
    ranked.sort_by_key(|c| Reverse((c.updated_at, c.tag.to_string())));
    let mut kept = protected;
    let mut doomed = Vec::new();
    for (rank, candidate) in ranked.into_iter().enumerate() {
        let past_keep = rule.keep_last.is_none_or(|n| rank >= n);
        let expired = rule.ttl.is_none_or(|ttl| {
            candidate
                .updated_at
                .is_some_and(|time| now.duration_since(time).is_ok_and(|age| age > ttl))
        });
        if past_keep && expired {
            doomed.push(candidate);
        } else {
            kept.push(candidate);
        }
    }
    (doomed, kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(keep_last: Option<usize>, ttl: Option<u64>, protect: &[&str]) -> Rule {
        Rule {
            repository: Regex::new(".*").unwrap(),
            keep_last,
            ttl: ttl.map(Duration::from_secs),
            protect: protect
                .iter()
                .map(|p| crate::config::whole_name_regex(p).unwrap())
                .collect(),
            delete_untagged: false,
        }
    }

    /// Tags `v1`…`v5` written 1…5 hours before `now` (v5 the oldest), plus `legacy` without a
    /// time.
    fn tags(now: SystemTime) -> Vec<Candidate> {
        let mut tags: Vec<Candidate> = (1..=5)
            .map(|i| Candidate {
                tag: Tag::parse(&format!("v{i}")).unwrap(),
                digest: Digest::of(format!("m{i}").as_bytes()),
                updated_at: Some(now - Duration::from_secs(3600 * i)),
            })
            .collect();
        tags.push(Candidate {
            tag: Tag::parse("legacy").unwrap(),
            digest: Digest::of(b"legacy"),
            updated_at: None,
        });
        tags
    }

    fn names(candidates: &[Candidate]) -> Vec<String> {
        let mut names: Vec<String> = candidates.iter().map(|c| c.tag.to_string()).collect();
        names.sort();
        names
    }

    #[test]
    fn keep_last_keeps_the_newest_and_ranks_tags_without_a_time_last() {
        let now = SystemTime::now();
        let (doomed, kept) = select(&rule(Some(2), None, &[]), tags(now), now);
        assert_eq!(names(&kept), ["v1", "v2"]);
        assert_eq!(names(&doomed), ["legacy", "v3", "v4", "v5"]);
    }

    #[test]
    fn ttl_removes_only_tags_known_to_be_older() {
        let now = SystemTime::now();
        let (doomed, _) = select(&rule(None, Some(3 * 3600 + 60), &[]), tags(now), now);
        assert_eq!(names(&doomed), ["v4", "v5"]);
    }

    #[test]
    fn with_both_limits_a_tag_goes_only_when_both_say_so() {
        let now = SystemTime::now();
        let (doomed, _) = select(&rule(Some(4), Some(60), &[]), tags(now), now);
        assert_eq!(names(&doomed), ["v5"]);
    }

    #[test]
    fn protected_tags_stay_and_are_not_counted() {
        let now = SystemTime::now();
        let (doomed, kept) = select(&rule(Some(1), None, &["v[12]", "leg.*"]), tags(now), now);
        assert_eq!(names(&kept), ["legacy", "v1", "v2", "v3"]);
        assert_eq!(names(&doomed), ["v4", "v5"]);
    }
}
