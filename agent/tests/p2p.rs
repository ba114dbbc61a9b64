//! Two agents in process exchange a blob over their gRPC peer listeners: the one that holds it
//! seeds once it has served it, and the other downloads it piece by piece and serves it to its
//! client byte for byte. The tracker is a stand-in that records announces and hands out the
//! other peers, and serves the blob's metainfo.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use futures::StreamExt;
use shoal_agent::{AgentConfig, Listeners};
use shoal_core::{Digest, Metainfo, MetainfoBuilder};
use shoal_proto::v1::tracker_server::{Tracker, TrackerServer};
use shoal_proto::v1::{
    AnnounceRequest, AnnounceResponse, MetainfoRequest, MetainfoResponse, PeerInfo,
};
use shoal_service::CancellationToken;
use shoal_storage::BlobStore;
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

const DEADLINE: Duration = Duration::from_secs(30);

/// Knows one blob's metainfo and every peer that announced it.
struct StubTracker {
    metainfo: Metainfo,
    peers: Arc<Mutex<Vec<PeerInfo>>>,
}

#[tonic::async_trait]
impl Tracker for StubTracker {
    async fn announce(
        &self,
        request: Request<AnnounceRequest>,
    ) -> Result<Response<AnnounceResponse>, Status> {
        let caller = request
            .into_inner()
            .peer
            .ok_or_else(|| Status::invalid_argument("no peer"))?;
        let mut peers = self.peers.lock().unwrap();
        peers.retain(|p| p.peer_id != caller.peer_id);
        let others = peers.clone();
        peers.push(caller);
        Ok(Response::new(AnnounceResponse {
            peers: others,
            interval_ms: 200,
            swarm_size: u32::try_from(peers.len()).unwrap_or(u32::MAX),
        }))
    }

    async fn get_metainfo(
        &self,
        request: Request<MetainfoRequest>,
    ) -> Result<Response<MetainfoResponse>, Status> {
        let m = &self.metainfo;
        if request.into_inner().digest != m.digest().to_string() {
            return Err(Status::not_found("unknown blob"));
        }
        Ok(Response::new(MetainfoResponse {
            digest: m.digest().to_string(),
            length: m.length(),
            piece_length: m.piece_length(),
            piece_hashes: (0..m.piece_count())
                .filter_map(|i| m.piece_hash(i))
                .map(|h| h.as_bytes().to_vec())
                .collect(),
        }))
    }
}

async fn start_agent(
    dir: &std::path::Path,
    tracker: std::net::SocketAddr,
    shutdown: &CancellationToken,
) -> Result<(String, tokio::task::JoinHandle<Result<()>>)> {
    let listeners = Listeners {
        http: TcpListener::bind("127.0.0.1:0").await?,
        peer: TcpListener::bind("127.0.0.1:0").await?,
    };
    let config = AgentConfig {
        data_dir: dir.to_path_buf(),
        // Peers are told this address: the listener actually bound.
        peer_listen: listeners.peer.local_addr()?,
        tracker: shoal_core::Addresses::one(tracker.to_string()),
        // Tags are not used here.
        build_index: shoal_core::Addresses::one("127.0.0.1:9"),
        ..AgentConfig::default()
    };
    let base = format!("http://{}", listeners.http.local_addr()?);
    let running = tokio::spawn(shoal_agent::run(config, listeners, shutdown.clone()));
    Ok((base, running))
}

async fn poll<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> Result<()> {
    let start = Instant::now();
    while !check().await {
        ensure!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_blob_one_agent_holds_is_downloaded_by_another_from_it() -> Result<()> {
    // Several pieces, and a last one shorter than the rest.
    let blob: Vec<u8> = (0..9_000_001u32).map(|i| (i % 253) as u8).collect();
    let digest = Digest::of(&blob);
    let mut builder = MetainfoBuilder::new(blob.len() as u64);
    builder.update(&blob);
    let metainfo = builder.finish()?;
    ensure!(
        metainfo.piece_count() > 1,
        "the blob should span several pieces"
    );

    let (seeder_dir, leecher_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let store = BlobStore::open(seeder_dir.path().join("store")).await?;
    let body = futures::stream::iter([Ok(bytes::Bytes::from(blob.clone()))]);
    store.put(&digest, body.boxed()).await?;
    drop(store);

    let peers = Arc::new(Mutex::new(Vec::new()));
    let tracker = TrackerServer::new(StubTracker {
        metainfo,
        peers: peers.clone(),
    });
    let tracker_listener = TcpListener::bind("127.0.0.1:0").await?;
    let tracker_addr = tracker_listener.local_addr()?;
    let app = tonic::service::Routes::new(tracker).into_axum_router();
    tokio::spawn(async move { axum::serve(tracker_listener, app).await });

    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let seeder_stop = shutdown.child_token();
    let (seeder, seeder_run) = start_agent(seeder_dir.path(), tracker_addr, &seeder_stop).await?;
    let (leecher, leecher_run) = start_agent(leecher_dir.path(), tracker_addr, &shutdown).await?;
    let http = shoal_service::client::builder().build()?;
    for base in [&seeder, &leecher] {
        poll("health", || async {
            http.get(format!("{base}/health"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await?;
    }

    // Serving it makes the seeder announce it.
    let url = |base: &str| format!("{base}/v2/test/big/blobs/{digest}");
    let served = http.get(url(&seeder)).send().await?.bytes().await?;
    ensure!(served == blob, "the seeder served other bytes");
    poll("the seeder's announce", || async {
        !peers.lock().unwrap().is_empty()
    })
    .await?;

    // HEAD answers from the tracker's metainfo and downloads nothing.
    let response = http.head(url(&leecher)).send().await?;
    ensure!(
        response.status().is_success(),
        "HEAD answered {}",
        response.status()
    );
    let length = response.headers().get("content-length");
    ensure!(length.is_some_and(|l| l.to_str().ok() == Some(&blob.len().to_string())));
    let metrics = http
        .get(format!("{leecher}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    ensure!(
        received_from_agents(&metrics) == 0,
        "HEAD downloaded:\n{metrics}"
    );

    let response = http.get(url(&leecher)).send().await?;
    ensure!(
        response.status().is_success(),
        "leecher answered {}",
        response.status()
    );
    let received = response.bytes().await?;
    ensure!(received == blob, "the leecher served other bytes");

    let metrics = http
        .get(format!("{leecher}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let from_agents = received_from_agents(&metrics);
    ensure!(
        from_agents >= blob.len() as u64,
        "the leecher reports {from_agents} bytes from agents:\n{metrics}"
    );
    // The HEAD and the GET, neither found locally.
    ensure!(
        metrics.contains("shoal_agent_blob_requests_total{result=\"miss\"} 2"),
        "{metrics}"
    );

    // The leecher still holds a session with the seeder: a long-lived stream that the seeder's
    // shutdown must not wait on forever.
    seeder_stop.cancel();
    tokio::time::timeout(DEADLINE, seeder_run).await???;
    shutdown.cancel();
    tokio::time::timeout(DEADLINE, leecher_run).await???;
    Ok(())
}

/// `shoal_p2p_bytes_received_total{from="agent"}`, 0 when absent.
fn received_from_agents(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("shoal_p2p_bytes_received_total{from=\"agent\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
