//! Manifest references: `repo:tag` → manifest digest, and whether a manifest asked for by digest
//! is recorded in the repository (deleted ones are not), through the build-index, remembered
//! for a short TTL so that a node pulling many images (or many clients asking for the same
//! manifest at once) does not ask the build-index every time. A deleted tag or manifest is
//! therefore still served for at most that TTL. Unknown references are not remembered: a
//! manifest pushed a moment later must be visible on the next pull. While the build-index is
//! away (unreachable, failing, or hung), a reference resolved within the last hour keeps its
//! last answer, so a node pulling again what it pulled lately (a restarting pod) is not held up by
//! it; for [`AWAY_FOR`] after a failure such references are answered without asking again.

use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lru::LruCache;
use shoal_api::{ApiError, BuildIndexClient, fails_over};
use shoal_core::{Digest, Name, Reference, Referrer, Tag, lock};

/// Distinct references remembered at once; a node rarely pulls more than a few hundred images.
const CAPACITY: NonZeroUsize = NonZeroUsize::new(10_000).expect("non-zero");
/// How long past its TTL a resolved reference still answers while the build-index is away.
const STALE_IF_AWAY: Duration = Duration::from_secs(3600);
/// After the build-index failed, how long a reference with a last resolution is answered with it
/// without asking: asking a hung build-index costs a health probe of about 3 s, which every
/// manifest request of a pull would pay again. References without one still ask.
const AWAY_FOR: Duration = Duration::from_secs(10);

/// Where references are looked up; the build-index in production, a table in tests.
#[async_trait::async_trait]
pub trait TagSource: Send + Sync + 'static {
    async fn get_tag(&self, name: &Name, tag: &Tag) -> Result<Option<Digest>, ApiError>;
    /// Whether the manifest `digest` is recorded in `name`.
    async fn has_manifest(&self, name: &Name, digest: &Digest) -> Result<bool, ApiError>;
    /// The manifests of `name` whose `subject` is `digest`.
    async fn referrers(&self, name: &Name, digest: &Digest) -> Result<Vec<Referrer>, ApiError>;
}

#[async_trait::async_trait]
impl TagSource for BuildIndexClient {
    async fn get_tag(&self, name: &Name, tag: &Tag) -> Result<Option<Digest>, ApiError> {
        BuildIndexClient::get_tag(self, name, tag).await
    }

    async fn has_manifest(&self, name: &Name, digest: &Digest) -> Result<bool, ApiError> {
        Ok(self.manifest(name, digest).await?.is_some())
    }

    async fn referrers(&self, name: &Name, digest: &Digest) -> Result<Vec<Referrer>, ApiError> {
        BuildIndexClient::referrers(self, name, digest).await
    }
}

/// Resolved references with their expiry.
pub struct TagCache {
    source: Box<dyn TagSource>,
    ttl: Duration,
    entries: Mutex<LruCache<(Name, Reference), (Digest, Instant)>>,
    /// Until when the build-index counts as away, since its last failure.
    away_until: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for TagCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TagCache")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl TagCache {
    pub fn new(source: impl TagSource, ttl: Duration) -> TagCache {
        TagCache {
            source: Box::new(source),
            ttl,
            entries: Mutex::new(LruCache::new(CAPACITY)),
            away_until: Mutex::new(None),
        }
    }

    /// The manifest digest `reference` names in `name`: a tag's target, or the digest itself
    /// when the repository records it; `None` otherwise.
    pub async fn resolve(
        &self,
        name: &Name,
        reference: &Reference,
    ) -> Result<Option<Digest>, ApiError> {
        let key = (name.clone(), reference.clone());
        let now = Instant::now();
        if let Some((digest, expires)) = self.lock().get(&key)
            && *expires > now
        {
            return Ok(Some(*digest));
        }
        if self.away(now)
            && let Some(digest) = self.stale(&key, now)
        {
            return Ok(Some(digest));
        }
        let answer = match reference {
            Reference::Tag(tag) => self.source.get_tag(name, tag).await,
            Reference::Digest(digest) => self
                .source
                .has_manifest(name, digest)
                .await
                .map(|recorded| recorded.then_some(*digest)),
        };
        let resolved = match answer {
            Ok(resolved) => {
                *lock(&self.away_until) = None;
                resolved
            }
            Err(error) if fails_over(&error) => {
                *lock(&self.away_until) = Some(Instant::now() + AWAY_FOR);
                return match self.stale(&key, now) {
                    Some(digest) => {
                        tracing::warn!(%name, %reference, %digest, error = %shoal_core::chain(&error), "build-index away; answering with the reference's last resolution for {AWAY_FOR:?}");
                        Ok(Some(digest))
                    }
                    None => Err(error),
                };
            }
            Err(error) => return Err(error),
        };
        let mut entries = self.lock();
        match resolved {
            Some(digest) => {
                entries.put(key, (digest, Instant::now() + self.ttl));
            }
            None => {
                entries.pop(&key);
            }
        }
        Ok(resolved)
    }

    /// The manifests of `name` whose `subject` is `digest`, asked for every time: a new
    /// signature must be listed on the next request.
    pub async fn referrers(&self, name: &Name, digest: &Digest) -> Result<Vec<Referrer>, ApiError> {
        self.source.referrers(name, digest).await
    }

    /// The last resolution of `key`, if it is recent enough to answer while the build-index
    /// is away.
    fn stale(&self, key: &(Name, Reference), now: Instant) -> Option<Digest> {
        let (digest, expired) = self.lock().peek(key).copied()?;
        (expired + STALE_IF_AWAY > now).then_some(digest)
    }

    fn away(&self, now: Instant) -> bool {
        lock(&self.away_until).is_some_and(|until| until > now)
    }

    fn lock(&self) -> MutexGuard<'_, LruCache<(Name, Reference), (Digest, Instant)>> {
        lock(&self.entries)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    /// A build-index stand-in whose table the test changes, counting lookups; tag lookups fail
    /// as a hung build-index's do while `away` is set.
    #[derive(Clone, Default)]
    struct Table {
        tags: Arc<Mutex<HashMap<String, Digest>>>,
        lookups: Arc<AtomicUsize>,
        away: Arc<AtomicBool>,
    }

    impl Table {
        fn set(&self, tag: &str, digest: Option<Digest>) {
            let mut tags = self.tags.lock().unwrap();
            match digest {
                Some(digest) => tags.insert(tag.to_owned(), digest),
                None => tags.remove(tag),
            };
        }
    }

    #[async_trait::async_trait]
    impl TagSource for Table {
        async fn get_tag(&self, _: &Name, tag: &Tag) -> Result<Option<Digest>, ApiError> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            if self.away.load(Ordering::SeqCst) {
                return Err(ApiError::Unresponsive {
                    service: "build-index".into(),
                });
            }
            Ok(self.tags.lock().unwrap().get(tag.as_str()).copied())
        }

        async fn referrers(&self, _: &Name, _: &Digest) -> Result<Vec<Referrer>, ApiError> {
            Ok(Vec::new())
        }

        /// A manifest is recorded while the table holds it under its digest's text.
        async fn has_manifest(&self, _: &Name, digest: &Digest) -> Result<bool, ApiError> {
            self.lookups.fetch_add(1, Ordering::SeqCst);
            let tags = self.tags.lock().unwrap();
            Ok(tags.get(&digest.to_string()) == Some(digest))
        }
    }

    fn key(tag: &str) -> (Name, Reference) {
        (
            Name::parse("library/app").unwrap(),
            Reference::Tag(Tag::parse(tag).unwrap()),
        )
    }

    #[tokio::test]
    async fn resolved_tags_are_reused_within_the_ttl() {
        let table = Table::default();
        let (one, two) = (Digest::of(b"1"), Digest::of(b"2"));
        table.set("v1", Some(one));
        let cache = TagCache::new(table.clone(), Duration::from_secs(3600));
        let (name, tag) = key("v1");
        assert_eq!(cache.resolve(&name, &tag).await.unwrap(), Some(one));
        // Re-pointed upstream, but the cached answer holds until the TTL passes.
        table.set("v1", Some(two));
        assert_eq!(cache.resolve(&name, &tag).await.unwrap(), Some(one));
        assert_eq!(table.lookups.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn expired_tags_are_looked_up_again() {
        let table = Table::default();
        let (one, two) = (Digest::of(b"1"), Digest::of(b"2"));
        table.set("v1", Some(one));
        let cache = TagCache::new(table.clone(), Duration::ZERO);
        let (name, tag) = key("v1");
        assert_eq!(cache.resolve(&name, &tag).await.unwrap(), Some(one));
        table.set("v1", Some(two));
        assert_eq!(cache.resolve(&name, &tag).await.unwrap(), Some(two));
        table.set("v1", None);
        assert_eq!(cache.resolve(&name, &tag).await.unwrap(), None);
        assert_eq!(table.lookups.load(Ordering::SeqCst), 3);
    }

    /// A build-index that does not answer.
    struct Away;

    #[async_trait::async_trait]
    impl TagSource for Away {
        async fn get_tag(&self, _: &Name, _: &Tag) -> Result<Option<Digest>, ApiError> {
            Err(ApiError::Unresponsive {
                service: "build-index".into(),
            })
        }

        async fn referrers(&self, _: &Name, _: &Digest) -> Result<Vec<Referrer>, ApiError> {
            Ok(Vec::new())
        }

        async fn has_manifest(&self, _: &Name, _: &Digest) -> Result<bool, ApiError> {
            Err(ApiError::Remote {
                service: "build-index".into(),
                status: 503,
                code: None,
                message: "unavailable".into(),
            })
        }
    }

    #[tokio::test]
    async fn while_the_build_index_is_away_an_expired_reference_keeps_its_last_answer() {
        let digest = Digest::of(b"1");
        let (name, tag) = key("v1");
        let by_digest = Reference::Digest(digest);
        let cache = TagCache::new(Away, Duration::ZERO);
        cache
            .lock()
            .put((name.clone(), tag.clone()), (digest, Instant::now()));
        cache
            .lock()
            .put((name.clone(), by_digest.clone()), (digest, Instant::now()));
        assert_eq!(cache.resolve(&name, &tag).await.unwrap(), Some(digest));
        assert_eq!(
            cache.resolve(&name, &by_digest).await.unwrap(),
            Some(digest)
        );
        // Never resolved, or resolved too long ago: the failure is the answer.
        let (_, other) = key("v2");
        assert!(cache.resolve(&name, &other).await.is_err());
        let long_ago = Instant::now() - STALE_IF_AWAY - Duration::from_secs(1);
        cache
            .lock()
            .put((name.clone(), tag.clone()), (digest, long_ago));
        assert!(cache.resolve(&name, &tag).await.is_err());
    }

    #[tokio::test]
    async fn after_a_failure_last_answers_are_given_without_asking_until_the_window_ends() {
        let table = Table::default();
        let digest = Digest::of(b"1");
        table.set("v1", Some(digest));
        let cache = TagCache::new(table.clone(), Duration::ZERO);
        let (name, tag) = key("v1");
        assert_eq!(cache.resolve(&name, &tag).await.unwrap(), Some(digest));
        table.away.store(true, Ordering::SeqCst);
        // The first failure is paid once; within the window the last answer comes at once.
        for _ in 0..3 {
            assert_eq!(cache.resolve(&name, &tag).await.unwrap(), Some(digest));
        }
        assert_eq!(table.lookups.load(Ordering::SeqCst), 2);
        // A reference with no last answer still asks: the build-index may be back.
        let (_, other) = key("v2");
        assert!(cache.resolve(&name, &other).await.is_err());
        assert_eq!(table.lookups.load(Ordering::SeqCst), 3);
        // Once the window ends the build-index is asked again, and its answer is taken.
        *lock(&cache.away_until) = Some(Instant::now());
        table.away.store(false, Ordering::SeqCst);
        let moved = Digest::of(b"2");
        table.set("v1", Some(moved));
        assert_eq!(cache.resolve(&name, &tag).await.unwrap(), Some(moved));
        assert_eq!(table.lookups.load(Ordering::SeqCst), 4);
        assert!(!cache.away(Instant::now()));
    }

    #[tokio::test]
    async fn unknown_tags_are_not_remembered() {
        let table = Table::default();
        let cache = TagCache::new(table.clone(), Duration::from_secs(3600));
        let (name, tag) = key("later");
        assert_eq!(cache.resolve(&name, &tag).await.unwrap(), None);
        let digest = Digest::of(b"pushed");
        table.set("later", Some(digest));
        assert_eq!(cache.resolve(&name, &tag).await.unwrap(), Some(digest));
    }

    #[tokio::test]
    async fn a_deleted_manifest_is_served_by_digest_until_the_ttl_passes() {
        let table = Table::default();
        let digest = Digest::of(b"manifest");
        table.set(&digest.to_string(), Some(digest));
        let name = Name::parse("library/app").unwrap();
        let by_digest = Reference::Digest(digest);
        let cached = TagCache::new(table.clone(), Duration::from_secs(3600));
        let expiring = TagCache::new(table.clone(), Duration::ZERO);
        for cache in [&cached, &expiring] {
            assert_eq!(
                cache.resolve(&name, &by_digest).await.unwrap(),
                Some(digest)
            );
        }
        table.set(&digest.to_string(), None);
        assert_eq!(
            cached.resolve(&name, &by_digest).await.unwrap(),
            Some(digest)
        );
        assert_eq!(expiring.resolve(&name, &by_digest).await.unwrap(), None);
        // A digest never recorded is unknown, and not remembered as such.
        let other = Reference::Digest(Digest::of(b"other"));
        assert_eq!(cached.resolve(&name, &other).await.unwrap(), None);
    }
}
