//! Seeding: complete blobs are announced to the tracker (as complete) until `seed_ttl` has
//! passed since their last use, so that nodes pulling the same blob later find them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use shoal_core::{Digest, Name};
use shoal_proto::v1::Progress;

use super::download::Download;
use super::tracker::FALLBACK_INTERVAL;
use super::{Shared, lock};

/// Blobs being seeded, with when each was last used.
#[derive(Default)]
pub(crate) struct Seeds(Mutex<HashMap<Digest, Arc<Mutex<Instant>>>>);

impl Shared {
    /// Seeds a complete local blob (or extends its seeding): it was just used.
    pub(crate) fn seed(self: &Arc<Self>, digest: &Digest, namespace: Option<&Name>) {
        self.seed_since(digest, namespace, Instant::now(), None);
    }

    /// Seeds a blob whose download just completed; its announces carry the download's byte
    /// counts, so the tracker's view keeps where its bytes came from.
    pub(crate) fn seed_after(self: &Arc<Self>, download: &Download, namespace: Option<&Name>) {
        self.seed_since(
            &download.digest,
            namespace,
            download.last_use(),
            Some(download.progress(true)),
        );
    }

    fn seed_since(
        self: &Arc<Self>,
        digest: &Digest,
        namespace: Option<&Name>,
        used: Instant,
        progress: Option<Progress>,
    ) {
        let mut seeds = lock(&self.seeds.0);
        if let Some(last_use) = seeds.get(digest) {
            let mut last_use = lock(last_use);
            *last_use = (*last_use).max(used);
            return;
        }
        let last_use = Arc::new(Mutex::new(used));
        seeds.insert(*digest, last_use.clone());
        self.tasks.spawn(announce(
            self.clone(),
            *digest,
            namespace.cloned(),
            last_use,
            progress,
        ));
    }
}

/// Announces `digest` as complete at the tracker's interval until it is unused for `seed_ttl`.
async fn announce(
    shared: Arc<Shared>,
    digest: Digest,
    namespace: Option<Name>,
    last_use: Arc<Mutex<Instant>>,
    progress: Option<Progress>,
) {
    loop {
        let announced = tokio::select! {
            // A tracker that does not answer must not hold up shutdown until its timeout.
            () = shared.shutdown.cancelled() => return,
            announced = shared
                .tracker
                .call(&digest, |tracker| tracker.announce(&digest, namespace.as_ref(), &shared.identity, true, progress.clone())) => announced,
        };
        let interval = match announced {
            Ok(announced) => announced.interval,
            Err(e) => {
                tracing::debug!(%digest, error = %e, "seeding announce failed; retrying");
                FALLBACK_INTERVAL
            }
        };
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let mut seeds = lock(&shared.seeds.0);
        if lock(&last_use).elapsed() >= shared.config.seed_ttl {
            if seeds
                .get(&digest)
                .is_some_and(|l| Arc::ptr_eq(l, &last_use))
            {
                seeds.remove(&digest);
            }
            tracing::debug!(%digest, "seeding ended");
            return;
        }
    }
}
