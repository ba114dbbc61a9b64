//! One blob's download: the shared state requesters wait on, and the driver task that feeds the
//! scheduler events and carries out its actions (sessions, piece requests, cancels, blacklist).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shoal_core::{Digest, Name, PeerId};
use shoal_proto::v1::{PeerInfo, Progress};
use shoal_storage::PartialBlob;
use shoal_swarm::announce::next_announce;
use shoal_swarm::scheduler::{Action, Event, PeerCandidate, Scheduler};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use super::report::{DownloadReport, Received, ReportState, millis};
use super::session::{self, Msg};
use super::tracker::FALLBACK_INTERVAL;
use super::{Shared, lock};
use crate::P2pError;

/// How often the scheduler checks timeouts and blacklist expiry.
const TICK: Duration = Duration::from_millis(250);
/// How often written pieces are made durable (the most a crash can cost a download).
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Where a download stands, as requesters see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    Running,
    /// Committed to the store.
    Complete,
    Failed(String),
}

/// A download shared by all requesters of one blob.
pub(crate) struct Download {
    pub(crate) digest: Digest,
    pub(crate) partial: PartialBlob,
    pub(crate) state: watch::Sender<State>,
    last_use: Mutex<Instant>,
    /// Piece bytes received, by sender kind.
    pub(crate) received: Arc<Received>,
    /// Pieces requested and not received yet, as of the driver's last tick (for announces).
    in_flight: Mutex<Vec<u32>>,
    started: (SystemTime, Instant),
}

impl Download {
    /// A download of `partial`, not started yet.
    pub(crate) fn new(partial: PartialBlob) -> Arc<Download> {
        Arc::new(Download {
            digest: partial.metainfo().digest(),
            partial,
            state: watch::Sender::new(State::Running),
            last_use: Mutex::new(Instant::now()),
            received: Arc::default(),
            in_flight: Mutex::default(),
            started: (SystemTime::now(), Instant::now()),
        })
    }

    /// Where the download stands, for `GET /debug/downloads`.
    pub(crate) fn report(&self, state: ReportState) -> DownloadReport {
        let have = self.partial.bitfield();
        DownloadReport {
            digest: self.digest.to_string(),
            state,
            length: self.partial.metainfo().length(),
            piece_count: have.len(),
            pieces: have.count(),
            resumed_bytes: self.partial.resumed_bytes(),
            pieces_from_origins: self.received.pieces_from(true),
            pieces_from_peers: self.received.pieces_from(false),
            bytes_from_origins: self.received.origins(),
            bytes_from_peers: self.received.peers(),
            started_at_unix_ms: millis(
                self.started
                    .0
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default(),
            ),
            duration_ms: millis(self.started.1.elapsed()),
        }
    }

    /// What an announce says of the download: the pieces held and in flight while it runs, only
    /// the byte counts once complete.
    pub(crate) fn progress(&self, complete: bool) -> Progress {
        let have = self.partial.bitfield();
        let in_flight = lock(&self.in_flight);
        self.received.progress(
            (!complete).then_some(&have),
            have.len(),
            if complete { &[] } else { &in_flight },
        )
    }

    /// Starts the driver task. Called once, after the download is in the engine's map, so the
    /// task can always find (and remove) its own entry when it ends.
    pub(crate) fn start(self: &Arc<Self>, shared: &Arc<Shared>, namespace: Option<Name>) {
        shared
            .metrics
            .resumed_bytes
            .inc_by(self.partial.resumed_bytes());
        shared.metrics.downloads_active.inc();
        shared
            .tasks
            .spawn(drive(shared.clone(), self.clone(), namespace));
    }

    pub(crate) fn touch(&self) {
        *lock(&self.last_use) = Instant::now();
    }

    pub(crate) fn last_use(&self) -> Instant {
        *lock(&self.last_use)
    }

    pub(crate) fn check_failed(&self) -> Result<(), P2pError> {
        match &*self.state.borrow() {
            State::Failed(reason) => Err(P2pError::DownloadFailed {
                digest: self.digest,
                reason: reason.clone(),
            }),
            State::Running | State::Complete => Ok(()),
        }
    }
}

/// Runs the download to completion (or shutdown), commits it, and hands over to seeding.
async fn drive(shared: Arc<Shared>, download: Arc<Download>, namespace: Option<Name>) {
    let digest = download.digest;
    let outcome = Driver::new(&shared, &download, namespace.clone())
        .run()
        .await;
    let outcome = match outcome {
        // Every piece verified is the whole blob verified (the metainfo's sha256 chain);
        // requesters already have their bytes, so the commit's fsync is off their path.
        Ok(()) => download
            .partial
            .commit()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(reason) => Err(reason),
    };
    shared.metrics.downloads_active.dec();
    let state = if outcome.is_ok() {
        ReportState::Complete
    } else {
        ReportState::Failed
    };
    shared.finished(digest, download.report(state));
    match outcome {
        Ok(()) => {
            shared
                .metrics
                .download_duration
                .observe(download.started.1.elapsed().as_secs_f64());
            tracing::info!(%digest, "download complete");
            // Seeding first: from here on the store serves the blob, and the download entry
            // may go.
            shared.seed_after(&download, namespace.as_ref());
            download.state.send_replace(State::Complete);
        }
        Err(reason) => {
            tracing::warn!(%digest, %reason, "download failed");
            download.state.send_replace(State::Failed(reason));
        }
    }
    let mut downloads = lock(&shared.downloads);
    if let Some(cell) = downloads.get(&digest)
        && cell.get().is_some_and(|d| Arc::ptr_eq(d, &download))
    {
        downloads.remove(&digest);
    }
}

/// Where a discovered peer listens, and what it is.
struct Known {
    addr: String,
    origin: bool,
}

struct Driver {
    shared: Arc<Shared>,
    download: Arc<Download>,
    namespace: Option<Name>,
    scheduler: Scheduler,
    started: Instant,
    /// When a piece was last verified (or the download started).
    last_progress: Instant,
    known: HashMap<PeerId, Known>,
    sessions: HashMap<PeerId, AbortHandle>,
    requests: HashMap<(PeerId, u32), AbortHandle>,
    tx: mpsc::UnboundedSender<Msg>,
    rx: mpsc::UnboundedReceiver<Msg>,
}

impl Driver {
    fn new(shared: &Arc<Shared>, download: &Arc<Download>, namespace: Option<Name>) -> Driver {
        let have = download.partial.bitfield();
        let seed = uuid::Uuid::new_v4().as_u64_pair().0;
        let scheduler = Scheduler::new(have.len(), have, shared.config.scheduler.clone(), seed);
        let (tx, rx) = mpsc::unbounded_channel();
        Driver {
            shared: shared.clone(),
            download: download.clone(),
            namespace,
            scheduler,
            started: Instant::now(),
            last_progress: Instant::now(),
            known: HashMap::new(),
            sessions: HashMap::new(),
            requests: HashMap::new(),
            tx,
            rx,
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Feeds events until the scheduler reports Complete. Err on shutdown.
    ///
    /// The announcer, the syncer, sessions and piece fetches are plain tasks rather than tracked
    /// ones: this driver (which is tracked) aborts them all before it returns.
    async fn run(mut self) -> Result<(), String> {
        let announcer = tokio::spawn(announce(
            self.shared.clone(),
            self.download.clone(),
            self.namespace.clone(),
            self.tx.clone(),
        ));
        let syncer = tokio::spawn(sync_periodically(self.download.partial.clone()));
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shutdown = self.shared.shutdown.clone();
        let result = loop {
            let stall_timeout = self.shared.config.stall_timeout;
            let event = tokio::select! {
                () = shutdown.cancelled() => break Err("the engine is shutting down".to_owned()),
                _ = tick.tick() => {
                    self.publish_in_flight();
                    if self.last_progress.elapsed() > stall_timeout {
                        break Err(format!(
                            "no piece arrived for {stall_timeout:?} ({} peers known)",
                            self.known.len()
                        ));
                    }
                    Event::Tick
                }
                Some(msg) = self.rx.recv() => match self.receive(msg) {
                    Ok(Some(event)) => event,
                    Ok(None) => continue,
                    Err(reason) => break Err(reason),
                },
            };
            if self.handle(event) {
                break Ok(());
            }
        };
        announcer.abort();
        syncer.abort();
        for handle in self.sessions.values().chain(self.requests.values()) {
            handle.abort();
        }
        // Both loop until aborted; awaiting them only confirms they are gone.
        let _ = announcer.await;
        let _ = syncer.await;
        if result.is_err() {
            // Record every piece verified so far, so the next start resumes from all of them.
            sync_logged(&self.download.partial).await;
        }
        result
    }

    /// Pieces requested and not received yet, for the next announce.
    fn publish_in_flight(&self) {
        let mut pieces: Vec<u32> = self.requests.keys().map(|(_, piece)| *piece).collect();
        pieces.sort_unstable();
        pieces.dedup();
        *lock(&self.download.in_flight) = pieces;
    }

    /// Turns a message from a task into a scheduler event, updating bookkeeping; Err when the
    /// download cannot go on.
    fn receive(&mut self, msg: Msg) -> Result<Option<Event>, String> {
        match msg {
            Msg::Discovered(peers) => Ok(Some(Event::Discovered(self.discovered(peers)))),
            Msg::StoreFailed(reason) => Err(reason),
            Msg::Event(event) => {
                if let Event::PieceDone { .. } = &event {
                    self.last_progress = Instant::now();
                }
                if let Event::PieceDone { peer, piece, .. }
                | Event::PieceCorrupt { peer, piece }
                | Event::PieceFailed { peer, piece } = &event
                {
                    self.requests.remove(&(peer.clone(), *piece));
                }
                if let Event::ConnectFailed { peer } | Event::Disconnected { peer } = &event {
                    self.sessions.remove(peer);
                }
                Ok(Some(event))
            }
        }
    }

    /// Records where handed-out peers listen; skips ourselves and malformed entries.
    fn discovered(&mut self, peers: Vec<PeerInfo>) -> Vec<PeerCandidate> {
        let mut candidates = Vec::with_capacity(peers.len());
        for peer in peers {
            let Ok(id) = PeerId::parse(&peer.peer_id) else {
                tracing::debug!(peer_id = %peer.peer_id, "tracker handed out a malformed peer id");
                continue;
            };
            if id == self.shared.identity.peer_id || peer.addr.is_empty() {
                continue;
            }
            self.known.insert(
                id.clone(),
                Known {
                    addr: peer.addr,
                    origin: peer.origin,
                },
            );
            candidates.push(PeerCandidate {
                id,
                origin: peer.origin,
            });
        }
        candidates
    }

    /// Runs one event through the scheduler and carries out its actions. True when complete.
    fn handle(&mut self, event: Event) -> bool {
        let now = self.now_ms();
        let mut complete = false;
        for action in self.scheduler.handle(now, event) {
            match action {
                Action::Connect { peer } => self.connect(peer),
                Action::Request {
                    peer,
                    piece,
                    insist,
                } => self.request(peer, piece, insist),
                Action::Cancel { peer, piece } => {
                    if let Some(handle) = self.requests.remove(&(peer, piece)) {
                        handle.abort();
                    }
                }
                Action::Disconnect { peer } => self.disconnect(&peer),
                Action::Blacklist { peer, until_ms } => {
                    tracing::warn!(digest = %self.download.digest, %peer, for_ms = until_ms.saturating_sub(now), "blacklisting peer");
                    self.shared.metrics.peers_blacklisted.inc();
                    self.disconnect(&peer);
                }
                Action::Stale { peer, piece } => {
                    tracing::debug!(digest = %self.download.digest, %peer, piece, "request stale: asking other holders");
                    self.shared.metrics.requests_stale.inc();
                }
                Action::Complete => complete = true,
            }
        }
        complete
    }

    fn connect(&mut self, peer: PeerId) {
        let Some(known) = self.known.get(&peer) else {
            // Only discovered peers are ever scheduled; answer anyway so the slot frees up.
            let _ = self.tx.send(Msg::Event(Event::ConnectFailed { peer }));
            return;
        };
        let task = session::Session {
            shared: self.shared.clone(),
            digest: self.download.digest,
            pieces: self.download.partial.bitfield().len(),
            peer: peer.clone(),
            addr: known.addr.clone(),
            tx: self.tx.clone(),
        };
        let handle = tokio::spawn(task.run()).abort_handle();
        if let Some(old) = self.sessions.insert(peer, handle) {
            old.abort();
        }
    }

    fn request(&mut self, peer: PeerId, piece: u32, insist: bool) {
        let Some(known) = self.known.get(&peer) else {
            let _ = self.tx.send(Msg::Event(Event::PieceFailed { peer, piece }));
            return;
        };
        let task = session::PieceFetch {
            shared: self.shared.clone(),
            partial: self.download.partial.clone(),
            received: self.download.received.clone(),
            peer: peer.clone(),
            addr: known.addr.clone(),
            origin: known.origin,
            piece,
            insist,
            tx: self.tx.clone(),
        };
        let handle = tokio::spawn(task.run()).abort_handle();
        if let Some(old) = self.requests.insert((peer, piece), handle) {
            old.abort();
        }
    }

    /// Drops the session with `peer` and its requests in flight (the scheduler re-issues them).
    fn disconnect(&mut self, peer: &PeerId) {
        if let Some(handle) = self.sessions.remove(peer) {
            handle.abort();
        }
        self.requests.retain(|(p, _), handle| {
            if p == peer {
                handle.abort();
            }
            p != peer
        });
    }
}

/// Makes written pieces durable about once a second, so a restart resumes from them; an fsync
/// per piece would tie the download's speed to the disk's.
async fn sync_periodically(partial: PartialBlob) {
    let mut interval = tokio::time::interval(SYNC_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        sync_logged(&partial).await;
    }
}

/// [`PartialBlob::sync`], logging a failure: the download goes on, a restart may redo pieces.
async fn sync_logged(partial: &PartialBlob) {
    if let Err(e) = partial.sync().await {
        tracing::warn!(digest = %partial.metainfo().digest(), error = %e, "cannot record downloaded pieces durably");
    }
}

/// Announces the download (as incomplete, with its progress) at the tracker's interval, the
/// second time early (`shoal_swarm::announce`), and reports the peers.
async fn announce(
    shared: Arc<Shared>,
    download: Arc<Download>,
    namespace: Option<Name>,
    tx: mpsc::UnboundedSender<Msg>,
) {
    let digest = download.digest;
    for done in 1u32.. {
        let progress = download.progress(false);
        let interval = match shared
            .tracker
            .call(&digest, |tracker| {
                let progress = Some(progress.clone());
                tracker.announce(
                    &digest,
                    namespace.as_ref(),
                    &shared.identity,
                    false,
                    progress,
                )
            })
            .await
        {
            Ok(announced) => {
                // 0 (a tracker that does not count) tells the scheduler nothing.
                let members = announced.swarm_size;
                if tx.send(Msg::Event(Event::SwarmSize { members })).is_err() {
                    return;
                }
                if tx.send(Msg::Discovered(announced.peers)).is_err() {
                    return;
                }
                announced.interval
            }
            Err(e) => {
                tracing::warn!(%digest, error = %shoal_core::chain(&e), "announce failed; retrying");
                FALLBACK_INTERVAL
            }
        };
        tokio::time::sleep(next_announce(done, interval)).await;
    }
}
