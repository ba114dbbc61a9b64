//! The engine agents run: one shared download per blob (metainfo and peers from the tracker,
//! pieces from peers through the [`Scheduler`](shoal_swarm::scheduler::Scheduler)), seeding after
//! completion, and a [`PieceSource`] over both the store and downloads in progress.
//!
//! The engine's long-lived tasks (one driver per download, one announcer per seeded blob) run on
//! the [`TaskTracker`] it is given and end soon after the shutdown token is cancelled, so the
//! component drains them with its other background tasks.

mod blob;
mod download;
mod report;
mod seed;
mod session;
mod source;
pub(crate) mod tracker;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;
use shoal_core::{Digest, Metainfo, Name, lock};
use shoal_storage::BlobStore;
use shoal_tls::{Role, Roles};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;

pub use blob::Blob;
use download::Download;
pub use report::{DownloadReport, ReportState};
use seed::Seeds;
use tracker::Trackers;

use crate::stream::StreamPool;
use crate::{Identity, Limiter, P2pConfig, P2pError, P2pMetrics, PieceSource};

/// Metainfo documents kept in memory (each at most ~130 KB of hashes, typically a few KB).
const METAINFO_CACHE: usize = 1024;

/// Downloads and seeding for one node. Cheap to share behind the `Arc` [`Engine::new`] returns.
pub struct Engine {
    shared: Arc<Shared>,
}

/// State the engine's background tasks share with it.
pub(crate) struct Shared {
    config: P2pConfig,
    identity: Identity,
    store: Arc<BlobStore>,
    tracker: Trackers,
    metrics: P2pMetrics,
    shutdown: CancellationToken,
    /// Where download drivers and seed announcers run.
    tasks: TaskTracker,
    /// Bandwidth for all pieces this node receives.
    ingress: Limiter,
    metainfo: Mutex<LruCache<Digest, Metainfo>>,
    /// Downloads in progress (or starting: the cell is filled once the metainfo is known and
    /// the partial blob is open, so concurrent requesters share one start).
    downloads: Mutex<HashMap<Digest, Arc<OnceCell<Arc<Download>>>>>,
    /// Complete blobs being announced.
    seeds: Seeds,
    /// Reports of the downloads that ended, the latest [`report::FINISHED_KEPT`].
    finished: Mutex<LruCache<Digest, DownloadReport>>,
    /// One HTTP/2 channel per peer address, shared by all sessions and piece requests to it.
    channels: Mutex<HashMap<String, Channel>>,
    /// Under mutual TLS, how peer connections are made (peers must be agents or origins).
    peer_tls: Option<Arc<rustls::ClientConfig>>,
    /// Piece-stream connections, when `p2p.piece_stream` is on (never under TLS).
    streams: Option<Arc<StreamPool>>,
}

/// Where the engine finds the swarm and how it connects to it.
#[derive(Clone, Debug)]
pub struct Network {
    /// The trackers' `host:port`s (at least one; [`Trackers`] says how they are used).
    pub trackers: Vec<String>,
    /// Mutual TLS for the tracker and peers; `None`: plain gRPC.
    pub tls: Option<ClusterTls>,
}

/// The engine's TLS under mutual TLS: for the tracker (which must show the tracker role) and
/// for peers (agents or origins).
#[derive(Clone, Debug)]
pub struct ClusterTls {
    pub tracker: Arc<rustls::ClientConfig>,
    pub peers: Arc<rustls::ClientConfig>,
}

impl ClusterTls {
    /// `None` without `tls.ca` (no mutual TLS: plain gRPC as before).
    pub fn new(tls: Option<&shoal_tls::LoadedTls>) -> Option<ClusterTls> {
        let client = |roles: &[Role]| tls?.client(Roles::of(roles), &[b"h2"]);
        Some(ClusterTls {
            tracker: client(&[Role::Tracker])?,
            peers: client(&[Role::Agent, Role::Origin])?,
        })
    }
}

impl Engine {
    /// An engine downloading into and seeding from `store`, finding peers through the tracker
    /// at `network`'s tracker, over mutual TLS when it says so. Background tasks run on `tasks` and stop when `shutdown` is
    /// cancelled: a download in progress keeps its verified pieces on disk for the next start.
    pub fn new(
        config: P2pConfig,
        identity: Identity,
        store: Arc<BlobStore>,
        network: Network,
        metrics: P2pMetrics,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Arc<Engine> {
        let ingress = Limiter::new(config.ingress_rate, config.chunk_size);
        let tls = network.tls;
        let streams = (config.piece_stream && tls.is_none()).then(Arc::default);
        let cache = NonZeroUsize::new(METAINFO_CACHE).unwrap_or(NonZeroUsize::MIN);
        Arc::new(Engine {
            shared: Arc::new(Shared {
                config,
                identity,
                store,
                tracker: Trackers::new(
                    network.trackers,
                    tls.as_ref().map(|tls| &tls.tracker),
                    metrics.tracker_failovers.clone(),
                ),
                metrics,
                shutdown,
                tasks: tasks.clone(),
                ingress,
                metainfo: Mutex::new(LruCache::new(cache)),
                downloads: Mutex::default(),
                seeds: Seeds::default(),
                finished: Mutex::new(LruCache::new(
                    NonZeroUsize::new(report::FINISHED_KEPT).unwrap_or(NonZeroUsize::MIN),
                )),
                channels: Mutex::default(),
                peer_tls: tls.map(|tls| tls.peers),
                streams,
            }),
        })
    }

    /// What our peer service should serve: complete blobs in the store and the verified pieces
    /// of downloads in progress.
    pub fn source(self: &Arc<Self>) -> Arc<dyn PieceSource> {
        Arc::new(source::EngineSource {
            shared: self.shared.clone(),
        })
    }

    /// The blob from the local store, or a shared download of it (one per digest for all
    /// requesters). [`P2pError::NotFound`] fast when the tracker has no metainfo for it.
    pub async fn fetch(&self, digest: &Digest, namespace: Option<&Name>) -> Result<Blob, P2pError> {
        let shared = &self.shared;
        if let Some(length) = shared.store.stat(digest).await? {
            shared.seed(digest, namespace);
            return Ok(Blob::stored(shared.store.clone(), *digest, length));
        }
        let download = shared.download(digest, namespace).await?;
        download.check_failed()?;
        Ok(Blob::downloading(download))
    }

    /// The downloads in progress, then those that ended (most recent first): each blob's pieces
    /// and bytes by sender, for `GET /debug/downloads`.
    pub fn downloads(&self) -> Vec<DownloadReport> {
        let running: Vec<Arc<Download>> = lock(&self.shared.downloads)
            .values()
            .filter_map(|cell| cell.get().cloned())
            .collect();
        let mut reports: Vec<DownloadReport> = running
            .iter()
            .map(|download| download.report(ReportState::Downloading))
            .collect();
        reports.extend(lock(&self.shared.finished).iter().map(|(_, r)| r.clone()));
        reports
    }

    /// Metainfo via the tracker (cached), without downloading anything — for HEAD.
    pub async fn metainfo(
        &self,
        digest: &Digest,
        namespace: Option<&Name>,
    ) -> Result<Metainfo, P2pError> {
        self.shared.metainfo(digest, namespace).await
    }
}

impl Shared {
    async fn metainfo(
        &self,
        digest: &Digest,
        namespace: Option<&Name>,
    ) -> Result<Metainfo, P2pError> {
        if let Some(metainfo) = lock(&self.metainfo).get(digest) {
            return Ok(metainfo.clone());
        }
        let metainfo = if self.store.stat(digest).await?.is_some() {
            // A local blob answers without the tracker (and works while it is down).
            self.store.metainfo(digest).await?
        } else {
            None
        };
        let metainfo = match metainfo {
            Some(metainfo) => metainfo,
            None => {
                (self.tracker)
                    .call(digest, |tracker| tracker.metainfo(digest, namespace))
                    .await?
            }
        };
        lock(&self.metainfo).put(*digest, metainfo.clone());
        Ok(metainfo)
    }

    /// The download of `digest`, started unless one is in progress.
    async fn download(
        self: &Arc<Self>,
        digest: &Digest,
        namespace: Option<&Name>,
    ) -> Result<Arc<Download>, P2pError> {
        if self.shutdown.is_cancelled() {
            return Err(P2pError::Shutdown);
        }
        let cell = lock(&self.downloads).entry(*digest).or_default().clone();
        let mut created = false;
        let started = cell
            .get_or_try_init(|| async {
                let metainfo = self.metainfo(digest, namespace).await?;
                let partial = self.store.partial(digest, &metainfo).await?;
                created = true;
                Ok::<_, P2pError>(Download::new(partial))
            })
            .await;
        match started {
            Ok(download) => {
                if created {
                    download.start(self, namespace.cloned());
                }
                download.touch();
                Ok(download.clone())
            }
            Err(e) => {
                // Forget the failed start so the next request tries again.
                self.forget_download(digest, &cell);
                Err(e)
            }
        }
    }

    /// Removes `cell` from the in-progress map unless a newer download replaced it.
    fn forget_download(&self, digest: &Digest, cell: &Arc<OnceCell<Arc<Download>>>) {
        let mut downloads = lock(&self.downloads);
        if downloads.get(digest).is_some_and(|c| Arc::ptr_eq(c, cell)) {
            downloads.remove(digest);
        }
    }

    /// The in-progress download of `digest`, if any.
    fn in_progress(&self, digest: &Digest) -> Option<Arc<Download>> {
        lock(&self.downloads)
            .get(digest)
            .and_then(|cell| cell.get().cloned())
    }

    /// Keeps the report of a download that ended.
    fn finished(&self, digest: Digest, report: DownloadReport) {
        lock(&self.finished).put(digest, report);
    }

    /// A channel to the peer at `addr` (`host:port`), reused across requests.
    fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = lock(&self.channels);
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = tracker::channel_with(addr, self.peer_tls.as_ref())?;
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }
}
