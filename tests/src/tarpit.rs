//! Hung peers for tests and benchmarks: listeners that accept TCP connections and never read or
//! write (a stopped process, a node under memory pressure, a half-open partition), announced at
//! the tracker as complete seeders of every blob of an image and re-announced until closed.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use shoal_client::Image;
use shoal_proto::v1::tracker_client::TrackerClient;
use shoal_proto::v1::{AnnounceRequest, AnnounceResponse, PeerInfo};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::{Cluster, Component};

/// The tarpits' records are refreshed this often, as a hung node's announcer would keep them
/// alive; well inside the tracker's 30 s peer TTL.
const TARPIT_REANNOUNCE: Duration = Duration::from_secs(2);

/// Hung peers: listeners that accept TCP connections and never read or write, announced at the
/// tracker as complete seeders of every blob of an image and re-announced until closed.
/// Dropped without [`Tarpits::close`] (a test failing early), the `JoinSet` aborts its tasks,
/// which closes every listener and held connection all the same.
pub struct Tarpits {
    stop: CancellationToken,
    /// One accept loop per tarpit, plus the re-announcer.
    tasks: JoinSet<Result<()>>,
}

impl Tarpits {
    /// Opens `count` tarpits on loopback and announces each as a complete seeder of every blob
    /// of `image` (pushed as `repo`) before returning, so the agents' first announce meets them.
    pub async fn start(
        cluster: &Cluster,
        count: usize,
        repo: &str,
        image: &Image,
    ) -> Result<Tarpits> {
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut addrs = Vec::with_capacity(count);
        for _ in 0..count {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            addrs.push(listener.local_addr()?);
            tasks.spawn(hold_connections(listener, stop.clone()));
        }
        let tracker = format!("http://{}", cluster.addr(Component::Tracker));
        let tracker = TrackerClient::connect(tracker.clone())
            .await
            .with_context(|| format!("connecting to the tracker at {tracker}"))?;
        // The tracker keys a swarm by digest alone; the namespace is what an agent pulling
        // `repo` sends, and must merely parse.
        let announces: Vec<AnnounceRequest> = image
            .blobs()
            .flat_map(|(digest, _)| {
                addrs.iter().enumerate().map(|(i, addr)| AnnounceRequest {
                    digest: digest.to_string(),
                    namespace: repo.to_owned(),
                    peer: Some(PeerInfo {
                        peer_id: format!("tarpit-{i:03}"),
                        addr: addr.to_string(),
                        origin: false,
                        complete: true,
                    }),
                    progress: None,
                })
            })
            .collect();
        let answers = announce_all(&tracker, &announces).await?;
        // Each swarm now holds every tarpit, so the answers name some of them: proof that the
        // tracker took the records and hands them out.
        let handed_out = answers
            .iter()
            .flat_map(|answer| &answer.peers)
            .any(|peer| addrs.iter().any(|addr| peer.addr == addr.to_string()));
        ensure!(
            handed_out,
            "the tracker handed out no tarpit in answer to the tarpits' announces"
        );
        tasks.spawn(reannounce(tracker, announces, stop.clone()));
        Ok(Tarpits { stop, tasks })
    }

    /// Stops announcing and closes every listener and held connection; fails if an accept loop
    /// or a re-announce failed.
    pub async fn close(mut self) -> Result<()> {
        self.stop.cancel();
        while let Some(task) = self.tasks.join_next().await {
            task.context("a tarpit task panicked")??;
        }
        Ok(())
    }
}

/// Accepts every connection to `listener` and holds it, never reading or writing, until `stop`.
async fn hold_connections(listener: TcpListener, stop: CancellationToken) -> Result<()> {
    let mut held: Vec<TcpStream> = Vec::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            accepted = listener.accept() => held.push(accepted.context("tarpit accept")?.0),
        }
    }
}

/// Sends every announce of `announces` at once and returns the tracker's answers.
async fn announce_all(
    tracker: &TrackerClient<Channel>,
    announces: &[AnnounceRequest],
) -> Result<Vec<AnnounceResponse>> {
    let calls = announces.iter().map(|announce| {
        let mut tracker = tracker.clone();
        async move {
            let answer = tracker.announce(announce.clone()).await?;
            Ok::<_, tonic::Status>(answer.into_inner())
        }
    });
    futures::future::try_join_all(calls)
        .await
        .context("announcing the tarpits at the tracker")
}

/// Repeats `announces` every [`TARPIT_REANNOUNCE`] until `stop`.
async fn reannounce(
    tracker: TrackerClient<Channel>,
    announces: Vec<AnnounceRequest>,
    stop: CancellationToken,
) -> Result<()> {
    let mut interval = tokio::time::interval(TARPIT_REANNOUNCE);
    // The first tick is immediate, and the caller has just announced.
    interval.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            _ = interval.tick() => {
                announce_all(&tracker, &announces).await?;
            }
        }
    }
}
