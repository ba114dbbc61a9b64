//! Tag resolution: `repo:tag` → manifest digest through the build-index, remembered for a short
//! TTL so that a node pulling many images (or many clients asking for the same tag at once) does
//! not ask the build-index every time. Unknown tags are not remembered: a tag pushed a moment
//! later must be visible on the next pull.

use std::num::NonZeroUsize;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use lru::LruCache;
use shoal_api::{ApiError, BuildIndexClient};
use shoal_core::{Digest, Name, Tag};

/// Distinct tags remembered at once; a node rarely pulls more than a few hundred images.
const CAPACITY: NonZeroUsize = NonZeroUsize::new(10_000).expect("non-zero");

/// Where tags are looked up; the build-index in production, a table in tests.
#[async_trait::async_trait]
pub trait TagSource: Send + Sync + 'static {
    async fn get_tag(&self, name: &Name, tag: &Tag) -> Result<Option<Digest>, ApiError>;
}

#[async_trait::async_trait]
impl TagSource for BuildIndexClient {
    async fn get_tag(&self, name: &Name, tag: &Tag) -> Result<Option<Digest>, ApiError> {
        BuildIndexClient::get_tag(self, name, tag).await
    }
}

/// Resolved tags with their expiry.
pub struct TagCache {
    source: Box<dyn TagSource>,
    ttl: Duration,
    entries: Mutex<LruCache<(Name, Tag), (Digest, Instant)>>,
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
        }
    }

    /// The digest `name:tag` points at, or `None` when the tag does not exist.
    pub async fn resolve(&self, name: &Name, tag: &Tag) -> Result<Option<Digest>, ApiError> {
        let key = (name.clone(), tag.clone());
        let now = Instant::now();
        if let Some((digest, expires)) = self.lock().get(&key)
            && *expires > now
        {
            return Ok(Some(*digest));
        }
        let resolved = self.source.get_tag(name, tag).await?;
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

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<(Name, Tag), (Digest, Instant)>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A build-index stand-in whose table the test changes, counting lookups.
    #[derive(Clone, Default)]
    struct Table {
        tags: Arc<Mutex<HashMap<String, Digest>>>,
        lookups: Arc<AtomicUsize>,
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
            Ok(self.tags.lock().unwrap().get(tag.as_str()).copied())
        }
    }

    fn key(tag: &str) -> (Name, Tag) {
        (
            Name::parse("library/app").unwrap(),
            Tag::parse(tag).unwrap(),
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
}
