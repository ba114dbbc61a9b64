//! Metainfo for peers: an LRU cache in front of the owning origins' HTTP API. A miss asks the
//! owners in rendezvous order (the origin pulls the blob through from the backend if needed);
//! concurrent misses for one digest share a single fetch, so a thousand agents starting the same
//! layer cost the origins one request.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use lru::LruCache;
use shoal_api::ApiError;
use shoal_core::{Digest, Metainfo, Name, lock};

use crate::metrics::{MetainfoResult, TrackerMetrics};
use crate::origins::Origins;

/// Why metainfo could not be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error("no origin has blob {0}")]
    NotFound(Digest),
    #[error("no owning origin of {digest} could answer: {reason}")]
    Unavailable { digest: Digest, reason: String },
}

type Fetch = Shared<BoxFuture<'static, Result<Arc<Metainfo>, LookupError>>>;

pub struct MetainfoCache {
    origins: Arc<Origins>,
    cache: Mutex<LruCache<Digest, Arc<Metainfo>>>,
    /// Fetches under way; an entry is removed by the first waiter to see it finish.
    inflight: Mutex<HashMap<Digest, Fetch>>,
    metrics: TrackerMetrics,
}

impl MetainfoCache {
    pub fn new(origins: Arc<Origins>, capacity: NonZeroUsize, metrics: TrackerMetrics) -> Self {
        MetainfoCache {
            origins,
            cache: Mutex::new(LruCache::new(capacity)),
            inflight: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// The blob's length when its metainfo is cached, without fetching or refreshing it.
    pub fn cached_length(&self, digest: &Digest) -> Option<u64> {
        lock(&self.cache)
            .peek(digest)
            .map(|metainfo| metainfo.length())
    }

    /// The metainfo of `digest`; `namespace` tells the origin which repository to pull it
    /// through for (it does not change the metainfo, so it is not part of the cache key).
    pub async fn get(
        &self,
        digest: Digest,
        namespace: Option<Name>,
    ) -> Result<Arc<Metainfo>, LookupError> {
        let fetch = {
            let mut inflight = lock(&self.inflight);
            // Checked under the in-flight lock: a fetch finishing meanwhile has already filled
            // the cache before leaving the in-flight map, so it is never started twice.
            if let Some(metainfo) = lock(&self.cache).get(&digest) {
                self.metrics.metainfo(MetainfoResult::Hit);
                return Ok(Arc::clone(metainfo));
            }
            inflight
                .entry(digest)
                .or_insert_with(|| {
                    fetch(Arc::clone(&self.origins), digest, namespace)
                        .boxed()
                        .shared()
                })
                .clone()
        };
        let result = fetch.clone().await;
        if let Ok(metainfo) = &result {
            lock(&self.cache).put(digest, Arc::clone(metainfo));
        }
        {
            let mut inflight = lock(&self.inflight);
            if inflight.get(&digest).is_some_and(|f| f.ptr_eq(&fetch)) {
                inflight.remove(&digest);
            }
        }
        self.metrics.metainfo(match &result {
            Ok(_) => MetainfoResult::Fetched,
            Err(LookupError::NotFound(_)) => MetainfoResult::NotFound,
            Err(LookupError::Unavailable { .. }) => MetainfoResult::Unavailable,
        });
        result
    }
}

/// Asks the owners of `digest` in rendezvous order until one has it. Origins pull through from
/// the one backend they share, so an origin answering 404 speaks for all of them: NOT_FOUND as
/// soon as the blob is absent from every owner that answered, UNAVAILABLE only when none did.
async fn fetch(
    origins: Arc<Origins>,
    digest: Digest,
    namespace: Option<Name>,
) -> Result<Arc<Metainfo>, LookupError> {
    let found = origins
        .cluster()
        .read(&digest, |origin| {
            let namespace = namespace.clone();
            async move {
                match origin.metainfo(&digest, namespace.as_ref()).await? {
                    Some(metainfo) if metainfo.digest() != digest => Err(ApiError::Protocol {
                        service: "origin".into(),
                        reason: format!(
                            "{} answered metainfo of {} instead",
                            origin.base(),
                            metainfo.digest()
                        ),
                    }),
                    found => Ok(found),
                }
            }
        })
        .await;
    match found {
        Ok(Some((metainfo, _))) => Ok(Arc::new(metainfo)),
        Ok(None) => Err(LookupError::NotFound(digest)),
        Err(failure) => Err(LookupError::Unavailable {
            digest,
            reason: failure.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use axum::Router;
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use prometheus_client::registry::Registry;
    use shoal_core::MetainfoBuilder;
    use tokio::sync::Semaphore;

    use super::*;
    use shoal_membership::MembershipMetrics;
    use shoal_service::CancellationToken;

    use crate::config::{OriginAddrs, OriginsConfig};

    /// An origin's metainfo endpoint that counts requests and holds each one until released.
    struct SlowOrigin {
        metainfo: Metainfo,
        requests: AtomicUsize,
        release: Semaphore,
    }

    async fn serve_metainfo(
        State(origin): State<Arc<SlowOrigin>>,
        Path(digest): Path<String>,
    ) -> Response {
        origin.requests.fetch_add(1, Ordering::SeqCst);
        let _permit = origin.release.acquire().await;
        if digest == origin.metainfo.digest().to_string() {
            origin.metainfo.to_json().into_response()
        } else {
            StatusCode::NOT_FOUND.into_response()
        }
    }

    async fn start(origin: Arc<SlowOrigin>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let app = Router::new()
            .route("/blobs/{digest}/metainfo", get(serve_metainfo))
            .with_state(origin);
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    async fn cache(addr: &str) -> MetainfoCache {
        let origins = Origins::start(
            &shoal_service::client::builder().build().expect("client"),
            &OriginsConfig::listed(vec![OriginAddrs {
                http: addr.into(),
                peer: "127.0.0.1:1".into(),
            }]),
            1,
            &MembershipMetrics::default(),
            CancellationToken::new(),
            &shoal_service::TaskTracker::new(),
        )
        .await
        .expect("origins");
        let metrics = TrackerMetrics::register(&mut Registry::default());
        MetainfoCache::new(Arc::new(origins), NonZeroUsize::MIN, metrics)
    }

    /// Handles on the fetch under way for `digest`: the in-flight map's, plus two per waiter
    /// (the one it keeps to recognise the fetch and the one it awaits).
    fn handles(cache: &MetainfoCache, digest: &Digest) -> usize {
        lock(&cache.inflight)
            .get(digest)
            .and_then(Shared::strong_count)
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fetch_and_later_ones_hit_the_cache() {
        let data = vec![7u8; 300 * 1024];
        let mut builder = MetainfoBuilder::new(data.len() as u64);
        builder.update(&data);
        let metainfo = builder.finish().expect("metainfo");
        let digest = metainfo.digest();
        let origin = Arc::new(SlowOrigin {
            metainfo,
            requests: AtomicUsize::new(0),
            release: Semaphore::new(0),
        });
        let cache = Arc::new(cache(&start(Arc::clone(&origin)).await).await);

        const WAITERS: usize = 8;
        let tasks: Vec<_> = (0..WAITERS)
            .map(|_| {
                let cache = Arc::clone(&cache);
                tokio::spawn(async move { cache.get(digest, None).await })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while handles(&cache, &digest) < 1 + 2 * WAITERS {
            assert!(Instant::now() < deadline, "the waiters never all joined");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        origin.release.add_permits(100);
        for task in tasks {
            let got = task.await.expect("task").expect("metainfo");
            assert_eq!(got.digest(), digest);
        }
        assert_eq!(origin.requests.load(Ordering::SeqCst), 1);
        assert!(lock(&cache.inflight).is_empty());

        cache.get(digest, None).await.expect("cached");
        assert_eq!(
            origin.requests.load(Ordering::SeqCst),
            1,
            "served from cache"
        );

        // Absence is not cached: every miss asks again.
        let other = Digest::of(b"elsewhere");
        for _ in 0..2 {
            let error = cache.get(other, None).await.expect_err("absent");
            assert!(matches!(error, LookupError::NotFound(d) if d == other));
        }
        assert_eq!(origin.requests.load(Ordering::SeqCst), 3);
    }
}
