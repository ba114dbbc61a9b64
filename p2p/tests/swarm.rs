//! End-to-end tests of the engine over real sockets on 127.0.0.1: a tracker test double (the
//! `Tracker` gRPC service with a fixed peer list and metainfo), seeders serving a store through
//! `peer_service`, and engines downloading from them and from each other.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use bytesize::ByteSize;
use futures::{StreamExt, TryStreamExt};
use prometheus_client::registry::Registry;
use shoal_core::{Digest, Metainfo, MetainfoBuilder, PeerId};
use shoal_p2p::{
    Engine, Faults, Identity, Limiter, Network, P2pConfig, P2pError, P2pMetrics, PIECE_COPIES,
    PeerServer as PeerService, PieceSource, Seeding, SeedingConfig, Spread, StoreSource,
    peer_service,
};
use shoal_proto::v1::peer_client::PeerClient;
use shoal_proto::v1::peer_server::{Peer, PeerServer};
use shoal_proto::v1::tracker_server::{Tracker, TrackerServer};
use shoal_proto::v1::{
    AnnounceRequest, AnnounceResponse, MetainfoRequest, MetainfoResponse, PeerInfo, PieceChunk,
    PieceRequest, SessionEvent, SessionRequest, session_event,
};
use shoal_storage::fsutil::FileRange;
use shoal_storage::{BlobStore, ByteStream};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Server;
use tonic::transport::server::{Router, TcpIncoming};
use tonic::{Request, Response, Status};

const MIB: usize = 1024 * 1024;

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add((i / 4093) as u8) ^ seed)
        .collect()
}

fn metainfo_of(data: &[u8]) -> Metainfo {
    let mut builder = MetainfoBuilder::new(data.len() as u64);
    builder.update(data);
    builder.finish().expect("metainfo")
}

async fn collect(stream: ByteStream) -> Result<Vec<u8>> {
    let chunks: Vec<Bytes> = stream.try_collect().await?;
    Ok(chunks.concat())
}

/// A tracker test double: hands every caller the fixed peer list (minus the caller) and serves
/// the metainfo it was given.
struct FixedTracker {
    peers: Vec<PeerInfo>,
    metainfo: HashMap<String, Metainfo>,
}

#[tonic::async_trait]
impl Tracker for FixedTracker {
    async fn announce(
        &self,
        request: Request<AnnounceRequest>,
    ) -> Result<Response<AnnounceResponse>, Status> {
        let caller = request.into_inner().peer.unwrap_or_default().peer_id;
        let peers = self
            .peers
            .iter()
            .filter(|p| p.peer_id != caller)
            .cloned()
            .collect();
        Ok(Response::new(AnnounceResponse {
            peers,
            interval_ms: 200,
            swarm_size: u32::try_from(self.peers.len()).unwrap_or(u32::MAX),
        }))
    }

    async fn get_metainfo(
        &self,
        request: Request<MetainfoRequest>,
    ) -> Result<Response<MetainfoResponse>, Status> {
        let digest = request.into_inner().digest;
        let metainfo = self
            .metainfo
            .get(&digest)
            .ok_or_else(|| Status::not_found(format!("no metainfo for {digest}")))?;
        Ok(Response::new(MetainfoResponse {
            digest,
            length: metainfo.length(),
            piece_length: metainfo.piece_length(),
            piece_hashes: (0..metainfo.piece_count())
                .filter_map(|i| metainfo.piece_hash(i))
                .map(|h| h.as_bytes().to_vec())
                .collect(),
        }))
    }
}

/// A hung agent whose sessions still stand (its runtime answers HTTP/2 but its piece service is
/// stuck): it answers every handshake with all `piece_count` pieces and never answers a piece
/// request.
struct MutePeer {
    piece_count: u32,
    stop: CancellationToken,
}

type Events<T> = std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Peer for MutePeer {
    type SessionStream = Events<SessionEvent>;
    type GetPieceStream = Events<PieceChunk>;

    async fn session(
        &self,
        _: Request<SessionRequest>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let have = shoal_core::Bitfield::full(self.piece_count);
        let bitfield = SessionEvent {
            event: Some(session_event::Event::Bitfield(shoal_proto::v1::Bitfield {
                peer_id: String::new(),
                piece_count: self.piece_count,
                bits: have.as_bytes().to_vec(),
            })),
        };
        let stop = self.stop.clone().cancelled_owned();
        let events = futures::stream::once(async { Ok(bitfield) }).chain(futures::stream::once(
            async move {
                stop.await;
                Err(Status::unavailable("shutting down"))
            },
        ));
        Ok(Response::new(Box::pin(events)))
    }

    async fn get_piece(
        &self,
        _: Request<PieceRequest>,
    ) -> Result<Response<Self::GetPieceStream>, Status> {
        self.stop.cancelled().await;
        Err(Status::unavailable("shutting down"))
    }
}

/// One test's sockets and temp dirs; everything stops when it is dropped.
struct Swarm {
    /// Peers offer the piece stream beside gRPC, and engines fetch pieces over it.
    piece_stream: bool,
    shutdown: CancellationToken,
    /// Every engine's background tasks.
    tasks: TaskTracker,
    dirs: Vec<tempfile::TempDir>,
}

impl Drop for Swarm {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A peer of the test swarm.
struct Node {
    identity: Identity,
    store: Arc<BlobStore>,
    metrics: P2pMetrics,
}

impl Node {
    fn info(&self, complete: bool) -> PeerInfo {
        PeerInfo {
            peer_id: self.identity.peer_id.to_string(),
            addr: self.identity.addr.clone(),
            origin: self.identity.origin,
            complete,
        }
    }

    /// Waits (10 s at most) until the node's store holds `digest` committed, `len` bytes.
    async fn committed(&self, digest: &Digest, len: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.store.stat(digest).await? != Some(len) {
            if Instant::now() > deadline {
                bail!("the download was never committed to the store");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// How the tracker lists an agent that has not completed the blob yet.
fn downloading(identity: &Identity) -> PeerInfo {
    PeerInfo {
        peer_id: identity.peer_id.to_string(),
        addr: identity.addr.clone(),
        origin: false,
        complete: false,
    }
}

impl Swarm {
    fn new() -> Swarm {
        Swarm {
            piece_stream: false,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            dirs: Vec::new(),
        }
    }

    /// A swarm whose peers serve (and engines fetch) pieces over the piece stream.
    fn streamed() -> Swarm {
        let mut swarm = Swarm::new();
        swarm.piece_stream = true;
        swarm
    }

    /// Serves a peer service on `listener`: gRPC alone, or with the piece stream beside it on
    /// the same port, as the agent and origin binaries do.
    fn serve_peer(&self, service: PeerService, listener: TcpListener) {
        if self.piece_stream {
            let raw = service.piece_stream();
            let app = tonic::service::Routes::new(service).into_axum_router();
            let shutdown = self.shutdown.clone();
            tokio::spawn(async move {
                if let Err(e) =
                    shoal_service::http::serve_with_raw(listener, None, app, raw, shutdown).await
                {
                    eprintln!("test server failed: {e}");
                }
            });
        } else {
            let router = Server::builder().add_service(service);
            tokio::spawn(serve_on(router, listener, self.shutdown.clone()));
        }
    }

    async fn store(&mut self) -> Result<(std::path::PathBuf, Arc<BlobStore>)> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().to_path_buf();
        self.dirs.push(dir);
        Ok((path.clone(), Arc::new(BlobStore::open(path).await?)))
    }

    /// Serves `router` on a fresh 127.0.0.1 port until the swarm is dropped.
    async fn serve(&self, router: Router) -> Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(serve_on(router, listener, self.shutdown.clone()));
        Ok(addr)
    }

    async fn tracker(&self, peers: Vec<PeerInfo>, blobs: &[&Metainfo]) -> Result<String> {
        let metainfo = blobs
            .iter()
            .map(|m| (m.digest().to_string(), (*m).clone()))
            .collect();
        let addr = self
            .serve(
                Server::builder().add_service(TrackerServer::new(FixedTracker { peers, metainfo })),
            )
            .await?;
        Ok(addr.to_string())
    }

    /// A seeder serving `blobs` from its own store (like an origin, or an agent that has them).
    async fn seeder(
        &mut self,
        blobs: &[&[u8]],
        origin: bool,
        egress: Option<ByteSize>,
        faults: Faults,
    ) -> Result<Node> {
        let slots = P2pConfig::default().upload_slots;
        self.seeder_with_slots(blobs, origin, egress, faults, slots)
            .await
    }

    /// Like [`Swarm::seeder`], serving at most `upload_slots` pieces at once.
    async fn seeder_with_slots(
        &mut self,
        blobs: &[&[u8]],
        origin: bool,
        egress: Option<ByteSize>,
        faults: Faults,
        upload_slots: usize,
    ) -> Result<Node> {
        self.seeder_with(blobs, origin, egress, faults, upload_slots, None)
            .await
    }

    /// Like [`Swarm::seeder_with_slots`], with an origin's super-seeding policy.
    async fn seeder_with(
        &mut self,
        blobs: &[&[u8]],
        origin: bool,
        egress: Option<ByteSize>,
        faults: Faults,
        upload_slots: usize,
        seeding: Option<Seeding>,
    ) -> Result<Node> {
        let (_, store) = self.store().await?;
        for data in blobs {
            store
                .put(
                    &Digest::of(data),
                    Box::pin(futures::stream::iter([Ok(Bytes::copy_from_slice(data))])),
                )
                .await?;
        }
        let metrics = P2pMetrics::new(&mut Registry::default());
        let limiter = Limiter::new(egress, P2pConfig::default().chunk_size);
        let source: Arc<dyn PieceSource> = Arc::new(StoreSource(store.clone()));
        // As the agent and origin binaries do.
        let spread = match seeding {
            Some(seeding) => Spread::Seeding(seeding),
            None if origin => Spread::Unbounded,
            None => Spread::PieceCopies(PIECE_COPIES),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        self.serve_peer(
            peer_service(
                source,
                limiter,
                upload_slots,
                metrics.clone(),
                faults,
                spread,
            ),
            listener,
        );
        Ok(Node {
            identity: Identity::random(addr.to_string(), origin),
            store,
            metrics,
        })
    }

    /// A [`MutePeer`] for a blob of `piece_count` pieces, as the tracker lists it: a complete
    /// agent.
    async fn mute_peer(&self, piece_count: u32, name: &str) -> Result<PeerInfo> {
        let mute = MutePeer {
            piece_count,
            stop: self.shutdown.clone(),
        };
        let addr = self
            .serve(Server::builder().add_service(PeerServer::new(mute)))
            .await?;
        Ok(PeerInfo {
            peer_id: name.to_owned(),
            addr: addr.to_string(),
            origin: false,
            complete: true,
        })
    }

    /// Binds the listener an engine's peer service will use (its address goes into the tracker's
    /// peer list before the engine exists).
    async fn reserve(&self) -> Result<(TcpListener, Identity)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let identity = Identity::random(listener.local_addr()?.to_string(), false);
        Ok((listener, identity))
    }

    /// An engine on its own store (or the store at `root`), serving its peer service on
    /// `listener`.
    async fn engine(
        &mut self,
        listener: TcpListener,
        identity: Identity,
        tracker: &str,
        root: Option<&std::path::Path>,
    ) -> Result<(Arc<Engine>, Node)> {
        let config = P2pConfig {
            seed_ttl: Duration::from_secs(2),
            piece_stream: self.piece_stream,
            ..P2pConfig::default()
        };
        self.engine_with(listener, identity, tracker, root, config)
            .await
    }

    /// Like [`Swarm::engine`] with a given config.
    async fn engine_with(
        &mut self,
        listener: TcpListener,
        identity: Identity,
        tracker: &str,
        root: Option<&std::path::Path>,
        config: P2pConfig,
    ) -> Result<(Arc<Engine>, Node)> {
        let store = match root {
            Some(root) => Arc::new(BlobStore::open(root).await?),
            None => self.store().await?.1,
        };
        let metrics = P2pMetrics::new(&mut Registry::default());
        let upload_slots = config.upload_slots;
        let engine = Engine::new(
            config,
            identity.clone(),
            store.clone(),
            Network {
                trackers: vec![tracker.to_owned()],
                tls: None,
            },
            metrics.clone(),
            self.shutdown.clone(),
            &self.tasks,
        );
        let service = peer_service(
            engine.source(),
            Limiter::unlimited(ByteSize::kib(256)),
            upload_slots,
            metrics.clone(),
            Faults::default(),
            Spread::PieceCopies(PIECE_COPIES),
        );
        self.serve_peer(service, listener);
        let node = Node {
            identity,
            store,
            metrics,
        };
        Ok((engine, node))
    }
}

async fn serve_on(router: Router, listener: TcpListener, shutdown: CancellationToken) {
    let incoming = TcpIncoming::from(listener);
    if let Err(e) = router
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
    {
        eprintln!("test server failed: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_downloads_in_order_and_is_then_served_onward() -> Result<()> {
    downloads_in_order_over(Swarm::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_downloads_over_the_piece_stream_and_is_then_served_onward() -> Result<()> {
    downloads_in_order_over(Swarm::streamed()).await
}

async fn downloads_in_order_over(mut swarm: Swarm) -> Result<()> {
    let data = blob(20 * MIB, 1);
    let metainfo = metainfo_of(&data);
    let digest = metainfo.digest();
    let seeder = swarm
        .seeder(&[&data], true, None, Faults::default())
        .await?;
    let (listener_a, id_a) = swarm.reserve().await?;
    let (listener_b, id_b) = swarm.reserve().await?;
    let peers = vec![seeder.info(true), downloading(&id_a)];
    let tracker = swarm.tracker(peers, &[&metainfo]).await?;
    let (engine_a, node_a) = swarm.engine(listener_a, id_a, &tracker, None).await?;

    // Two concurrent requesters share one download; one reads a range, one the whole blob.
    let (whole, part) = tokio::join!(engine_a.fetch(&digest, None), engine_a.fetch(&digest, None));
    let (whole, part) = (whole?, part?);
    assert_eq!(whole.length(), data.len() as u64);
    let range = 3 * MIB as u64 + 17..7 * MIB as u64 + 5;
    let (whole, part) = tokio::join!(
        collect(whole.stream(0..u64::MAX)),
        collect(part.stream(range.clone()))
    );
    assert!(whole? == data, "whole blob differs");
    assert!(
        part? == data[range.start as usize..range.end as usize],
        "range differs"
    );
    let pieces = metainfo.piece_count() as u64;
    assert_eq!(
        node_a.metrics.pieces_received(),
        pieces,
        "one shared download"
    );
    assert_eq!(node_a.metrics.bytes_received(true), data.len() as u64);
    assert_eq!(seeder.metrics.bytes_served(), data.len() as u64);
    if swarm.piece_stream {
        // Every piece came over the stream, handed from the origin's page cache to its socket.
        assert_eq!(node_a.metrics.stream_pieces_received(), pieces);
        assert_eq!(seeder.metrics.bytes_served_zero_copy(), data.len() as u64);
    } else {
        assert_eq!(node_a.metrics.stream_pieces_received(), 0);
        assert_eq!(seeder.metrics.bytes_served_zero_copy(), 0);
    }
    let len = data.len() as u64;
    node_a.committed(&digest, len).await?;

    // B finds A (an agent) and the origin; the origin is the last resort, so A serves B.
    let (engine_b, node_b) = swarm.engine(listener_b, id_b, &tracker, None).await?;
    let blob_b = engine_b.fetch(&digest, None).await?;
    assert!(collect(blob_b.stream(0..u64::MAX)).await? == data);
    assert!(
        node_b.metrics.bytes_received(false) > 0,
        "nothing came from the agent"
    );
    // Endgame may fetch the last few pieces twice, never more.
    let received = node_b.metrics.bytes_received(false) + node_b.metrics.bytes_received(true);
    let endgame = (P2pConfig::default().scheduler.endgame_pieces as u64) * metainfo.piece_length();
    assert!(
        (len..=len + endgame).contains(&received),
        "received {received} bytes for a {len}-byte blob"
    );
    assert!(node_a.metrics.bytes_served() > 0);
    assert_eq!(
        node_b.metrics.stream_pieces_received() > 0,
        swarm.piece_stream
    );
    assert_eq!(
        node_a.metrics.bytes_served_zero_copy() > 0,
        swarm.piece_stream
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupting_peer_is_caught_by_hash_and_the_download_completes() -> Result<()> {
    corrupting_peer_over(Swarm::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupting_peer_on_the_piece_stream_is_caught_by_hash() -> Result<()> {
    corrupting_peer_over(Swarm::streamed()).await
}

async fn corrupting_peer_over(mut swarm: Swarm) -> Result<()> {
    let data = blob(6 * MIB, 2);
    let metainfo = metainfo_of(&data);
    let digest = metainfo.digest();
    let faults = Faults {
        corrupt_served_pieces: true,
    };
    let bad = swarm.seeder(&[&data], false, None, faults).await?;
    // Slowed down so the download cannot be over before the corrupting peer's handshake is in:
    // otherwise it may only ever be asked for endgame duplicates the good peer wins.
    let good = swarm
        .seeder(&[&data], false, Some(ByteSize::mib(16)), Faults::default())
        .await?;
    let tracker = swarm
        .tracker(vec![bad.info(true), good.info(true)], &[&metainfo])
        .await?;
    let (listener, identity) = swarm.reserve().await?;
    let (engine, node) = swarm.engine(listener, identity, &tracker, None).await?;

    let fetched = engine.fetch(&digest, None).await?;
    assert!(collect(fetched.stream(0..u64::MAX)).await? == data);
    assert!(
        bad.metrics.bytes_served() > 0,
        "the corrupt peer was never asked"
    );
    assert!(node.metrics.pieces_rejected() > 0);
    assert_eq!(node.metrics.peers_blacklisted(), 1);
    assert_eq!(
        node.metrics.stream_pieces_received() > 0,
        swarm.piece_stream
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_engine_resumes_from_verified_pieces_on_disk() -> Result<()> {
    let mut swarm = Swarm::new();
    let data = blob(4 * MIB, 3);
    let metainfo = metainfo_of(&data);
    let digest = metainfo.digest();
    let seeder = swarm
        .seeder(&[&data], false, None, Faults::default())
        .await?;
    let tracker = swarm.tracker(vec![seeder.info(true)], &[&metainfo]).await?;
    let (root, store) = swarm.store().await?;

    // A previous run verified and wrote every other piece, then went away.
    let pieces = metainfo.piece_count() as u32;
    let mut written = 0;
    {
        let partial = store.partial(&digest, &metainfo).await?;
        for piece in (0..pieces).step_by(2) {
            let range = metainfo.piece_range(piece as usize).context("piece")?;
            let bytes = Bytes::copy_from_slice(&data[range.start as usize..range.end as usize]);
            partial.write_piece(piece, vec![bytes]).await?;
            written += range.end - range.start;
        }
        partial.sync().await?;
    }
    drop(store);

    let (listener, identity) = swarm.reserve().await?;
    let (engine, node) = swarm
        .engine(listener, identity, &tracker, Some(&root))
        .await?;
    let fetched = engine.fetch(&digest, None).await?;
    assert!(collect(fetched.stream(0..u64::MAX)).await? == data);
    assert_eq!(node.metrics.resumed_bytes(), written);
    assert_eq!(
        node.metrics.bytes_received(false),
        data.len() as u64 - written,
        "only the missing pieces were fetched"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_ends_every_engine_task_and_keeps_the_verified_pieces() -> Result<()> {
    let mut swarm = Swarm::new();
    let data = blob(16 * MIB, 9);
    let metainfo = metainfo_of(&data);
    let digest = metainfo.digest();
    // A slow seeder, so the download is still running when shutdown comes.
    let seeder = swarm
        .seeder(&[&data], false, Some(ByteSize::mib(2)), Faults::default())
        .await?;
    let tracker = swarm.tracker(vec![seeder.info(true)], &[&metainfo]).await?;
    let (root, store) = swarm.store().await?;
    drop(store);
    let (listener, identity) = swarm.reserve().await?;
    let (engine, node) = swarm
        .engine(listener, identity, &tracker, Some(&root))
        .await?;

    // A blob already in the store is seeded when used: that starts an announcer.
    let local = blob(MIB, 10);
    let local_digest = Digest::of(&local);
    node.store
        .put(
            &local_digest,
            Box::pin(futures::stream::iter([Ok(Bytes::from(local))])),
        )
        .await?;
    engine.fetch(&local_digest, None).await?;
    let _downloading = engine.fetch(&digest, None).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.metrics.bytes_received(false) < 2 * MIB as u64 {
        if Instant::now() > deadline {
            bail!("the download made no progress");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert_eq!(
        swarm.tasks.len(),
        2,
        "the download's driver and the seed announcer run on the tracker"
    );
    swarm.shutdown.cancel();
    swarm.tasks.close();
    tokio::time::timeout(Duration::from_secs(10), swarm.tasks.wait())
        .await
        .context("engine tasks still running 10 s after shutdown")?;
    drop(engine);

    // The pieces verified before shutdown are on disk for the next start.
    let store = BlobStore::open(&root).await?;
    ensure_partial_resumes(&store, &metainfo).await
}

async fn ensure_partial_resumes(store: &BlobStore, metainfo: &Metainfo) -> Result<()> {
    let partial = store.partial(&metainfo.digest(), metainfo).await?;
    let resumed = partial.resumed_bytes();
    if resumed == 0 || resumed >= metainfo.length() {
        bail!("{resumed} bytes of {} resumed", metainfo.length());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_egress_limit_holds_for_a_large_transfer() -> Result<()> {
    let mut swarm = Swarm::new();
    let data = blob(12 * MIB, 4);
    let metainfo = metainfo_of(&data);
    let seeder = swarm
        .seeder(&[&data], false, Some(ByteSize::mib(4)), Faults::default())
        .await?;
    let tracker = swarm.tracker(vec![seeder.info(true)], &[&metainfo]).await?;
    let (listener, identity) = swarm.reserve().await?;
    let (engine, _node) = swarm.engine(listener, identity, &tracker, None).await?;

    let start = Instant::now();
    let fetched = engine.fetch(&metainfo.digest(), None).await?;
    assert!(collect(fetched.stream(0..u64::MAX)).await? == data);
    let elapsed = start.elapsed();
    // 12 MiB at 4 MiB/s is 3 s; allow for the one-chunk burst. A lower bound only.
    assert!(
        elapsed >= Duration::from_millis(2500),
        "took only {elapsed:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seeder_out_of_upload_slots_answers_busy_and_the_download_still_completes() -> Result<()>
{
    busy_seeder_over(Swarm::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seeder_out_of_upload_slots_answers_busy_on_the_piece_stream() -> Result<()> {
    busy_seeder_over(Swarm::streamed()).await
}

async fn busy_seeder_over(mut swarm: Swarm) -> Result<()> {
    let data = blob(2 * MIB, 6);
    let metainfo = metainfo_of(&data);
    // One slot and 1 MiB/s: each 256 KiB piece holds the slot for ~0.25 s, so of two
    // downloaders asking at once (the tracker names only the seeder to each), one always
    // finds it taken.
    let seeder = swarm
        .seeder_with_slots(&[&data], true, Some(ByteSize::mib(1)), Faults::default(), 1)
        .await?;
    let tracker = swarm.tracker(vec![seeder.info(true)], &[&metainfo]).await?;
    let mut nodes = Vec::new();
    let mut fetches = Vec::new();
    for _ in 0..2 {
        let (listener, identity) = swarm.reserve().await?;
        let (engine, node) = swarm.engine(listener, identity, &tracker, None).await?;
        let digest = metainfo.digest();
        fetches.push(tokio::spawn(async move {
            let fetched = engine.fetch(&digest, None).await?;
            let bytes = collect(fetched.stream(0..u64::MAX)).await?;
            Ok::<_, anyhow::Error>((bytes, engine))
        }));
        nodes.push(node);
    }
    for fetch in fetches {
        let (bytes, _engine) = fetch.await??;
        assert!(bytes == data);
    }
    let answered = seeder.metrics.busy_answered();
    assert!(answered > 0, "the seeder never answered busy");
    let received: u64 = nodes.iter().map(|node| node.metrics.busy_received()).sum();
    assert_eq!(received, answered);
    for node in &nodes {
        // Busy is not a failure: the only seeder was never dropped or blacklisted.
        assert_eq!(node.metrics.peers_blacklisted(), 0);
        assert_eq!(
            node.metrics.stream_pieces_received() > 0,
            swarm.piece_stream
        );
    }
    assert_eq!(seeder.metrics.bytes_served(), 2 * data.len() as u64);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_origin_in_a_crowd_sends_recently_sent_pieces_elsewhere_and_the_agent_gets_them_from_a_peer()
-> Result<()> {
    origin_in_a_crowd_over(Swarm::new()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_origin_in_a_crowd_sends_elsewhere_on_the_piece_stream() -> Result<()> {
    origin_in_a_crowd_over(Swarm::streamed()).await
}

async fn origin_in_a_crowd_over(mut swarm: Swarm) -> Result<()> {
    // Large enough that B, pulling from A over loopback, connects the origin (its last resort
    // while fewer than two agents are useful) before it is done.
    let data = blob(48 * MIB, 7);
    let metainfo = metainfo_of(&data);
    let digest = metainfo.digest();
    // Windows far longer than the test: every piece A gets counts as sent recently when B asks.
    let seeding = SeedingConfig {
        recent: Duration::from_secs(600),
        crowd_window: Duration::from_secs(600),
    };
    let slots = P2pConfig::default().upload_slots;
    let origin = swarm
        .seeder_with(
            &[&data],
            true,
            None,
            Faults::default(),
            slots,
            Some(Seeding::alone(seeding)),
        )
        .await?;
    let (listener_a, id_a) = swarm.reserve().await?;
    let (listener_b, id_b) = swarm.reserve().await?;
    let peers = vec![origin.info(true), downloading(&id_a)];
    let tracker = swarm.tracker(peers, &[&metainfo]).await?;

    // A alone: a lone requester is served every piece, as without the policy.
    let (engine_a, node_a) = swarm.engine(listener_a, id_a, &tracker, None).await?;
    let blob_a = engine_a.fetch(&digest, None).await?;
    assert!(collect(blob_a.stream(0..u64::MAX)).await? == data);
    assert_eq!(origin.metrics.elsewhere_answered(), 0);
    assert_eq!(origin.metrics.bytes_served(), data.len() as u64);
    let len = data.len() as u64;
    node_a.committed(&digest, len).await?;

    // B makes a crowd: whatever it asks the origin for went out to A just now, so the origin
    // sends B elsewhere, and B gets the whole blob from A.
    let (engine_b, node_b) = swarm.engine(listener_b, id_b, &tracker, None).await?;
    let blob_b = engine_b.fetch(&digest, None).await?;
    assert!(collect(blob_b.stream(0..u64::MAX)).await? == data);
    assert!(
        origin.metrics.elsewhere_answered() > 0,
        "B never asked the origin"
    );
    assert_eq!(
        node_b.metrics.bytes_received(true),
        0,
        "the origin sent B pieces"
    );
    assert!(node_b.metrics.bytes_received(false) >= len);
    assert_eq!(
        origin.metrics.bytes_served(),
        len,
        "the origin sent a piece twice"
    );
    // B aborts its fetches in flight when the blob completes, so an answer the origin counted
    // may never reach B: B counts no answer the origin did not send, and at least one.
    let received = node_b.metrics.elsewhere_received();
    assert!(received > 0, "B never heard elsewhere");
    assert!(received <= origin.metrics.elsewhere_answered());
    // Not a failure: the origin was never dropped or blacklisted.
    assert_eq!(node_b.metrics.peers_blacklisted(), 0);
    assert_eq!(
        node_b.metrics.stream_pieces_received() > 0,
        swarm.piece_stream
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_uploading_its_bound_of_copies_of_a_piece_sends_more_elsewhere() -> Result<()> {
    let mut swarm = Swarm::new();
    let data = blob(2 * MIB, 9);
    let metainfo = metainfo_of(&data);
    // 1 KiB/s once the limiter's burst (one 1 MiB chunk, four pieces) is spent: the copies
    // asked for after that stay in flight.
    let agent = swarm
        .seeder_with_slots(
            &[&data],
            false,
            Some(ByteSize::kib(1)),
            Faults::default(),
            P2pConfig::default().upload_slots,
        )
        .await?;
    let client = PeerClient::connect(format!("http://{}", agent.identity.addr)).await?;
    let request = |index: u32, insist: bool| PieceRequest {
        digest: metainfo.digest().to_string(),
        index,
        peer_id: format!("agent-{index}"),
        insist,
    };
    for index in 4..8 {
        let mut burst = client
            .clone()
            .get_piece(request(index, false))
            .await?
            .into_inner();
        while burst.message().await?.is_some() {}
    }
    let mut copies = Vec::new();
    for _ in 0..PIECE_COPIES {
        copies.push(
            client
                .clone()
                .get_piece(request(0, false))
                .await?
                .into_inner(),
        );
    }
    let refused = client
        .clone()
        .get_piece(request(0, false))
        .await
        .err()
        .context("a copy beyond the bound was served")?;
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    assert!(
        refused.metadata().get("shoal-instead").is_none(),
        "{refused:?}"
    );
    assert_eq!(agent.metrics.elsewhere_answered(), 1);
    assert_eq!(agent.metrics.busy_answered(), 0);
    // Other pieces are served, and so is a request that insists.
    let _other = client.clone().get_piece(request(1, false)).await?;
    let insisting = client.clone().get_piece(request(0, true)).await?;
    assert_eq!(agent.metrics.elsewhere_answered(), 1);
    // A copy that ends gives its place back (the insisting one counts too).
    drop(insisting);
    drop(copies.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client.clone().get_piece(request(0, false)).await {
            Ok(_) => break,
            Err(status) if Instant::now() < deadline => {
                assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => bail!("a copy was given back, yet: {status}"),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origins_peer_service_answers_elsewhere_in_a_crowd_and_serves_an_insisting_request()
-> Result<()> {
    let mut swarm = Swarm::new();
    let data = blob(MIB, 8);
    let metainfo = metainfo_of(&data);
    let slots = P2pConfig::default().upload_slots;
    let origin = swarm
        .seeder_with(
            &[&data],
            true,
            None,
            Faults::default(),
            slots,
            Some(Seeding::alone(SeedingConfig::default())),
        )
        .await?;
    let mut client = PeerClient::connect(format!("http://{}", origin.identity.addr)).await?;
    let request = |peer: &str, insist: bool| PieceRequest {
        digest: metainfo.digest().to_string(),
        index: 0,
        peer_id: peer.to_owned(),
        insist,
    };
    // A lone requester is served, again and again.
    for _ in 0..2 {
        let mut stream = client
            .get_piece(request("agent-a", false))
            .await?
            .into_inner();
        while stream.message().await?.is_some() {}
    }
    // A second requester makes a crowd: the piece just went out, so it is sent elsewhere.
    let refused = client
        .get_piece(request("agent-b", false))
        .await
        .err()
        .context("a crowd's request for a piece sent just now was served")?;
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
    assert_eq!(origin.metrics.elsewhere_answered(), 1);
    assert_eq!(origin.metrics.busy_answered(), 0);
    // The answer names the lowest piece not sent yet, and that one is served.
    let instead = refused
        .metadata()
        .get("shoal-instead")
        .context("the refusal names a piece to ask for instead")?;
    assert_eq!(instead.to_str()?, "1");
    let mut stream = client
        .get_piece(PieceRequest {
            index: 1,
            ..request("agent-b", false)
        })
        .await?
        .into_inner();
    while stream.message().await?.is_some() {}
    // Insisting, it is served.
    let mut stream = client
        .get_piece(request("agent-b", true))
        .await?
        .into_inner();
    while stream.message().await?.is_some() {}
    assert_eq!(origin.metrics.bytes_served(), 4 * metainfo.piece_length());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_blob_is_not_found_fast() -> Result<()> {
    let mut swarm = Swarm::new();
    let tracker = swarm.tracker(Vec::new(), &[]).await?;
    let (listener, identity) = swarm.reserve().await?;
    let (engine, _node) = swarm.engine(listener, identity, &tracker, None).await?;
    let digest = Digest::of(b"nobody has this");
    let start = Instant::now();
    let err = engine.fetch(&digest, None).await.expect_err("unknown blob");
    assert!(matches!(err, P2pError::NotFound { .. }), "{err}");
    let err = engine
        .metainfo(&digest, None)
        .await
        .expect_err("unknown blob");
    assert!(matches!(err, P2pError::NotFound { .. }), "{err}");
    // Far under the 60 s stall timeout a download would wait, with room for a loaded CI machine.
    assert!(start.elapsed() < Duration::from_secs(10));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_nobody_can_serve_fails_after_the_stall_timeout_instead_of_hanging() -> Result<()>
{
    let mut swarm = Swarm::new();
    let data = blob(3 * MIB, 7);
    let metainfo = metainfo_of(&data);
    // The tracker knows the blob but hands out a peer that never answers (a closed port).
    let dead = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let ghost = PeerInfo {
        peer_id: "ghost".into(),
        addr: dead.to_string(),
        origin: true,
        complete: true,
    };
    let tracker = swarm.tracker(vec![ghost], &[&metainfo]).await?;
    let (listener, identity) = swarm.reserve().await?;
    let config = P2pConfig {
        stall_timeout: Duration::from_secs(1),
        ..P2pConfig::default()
    };
    let (engine, _node) = swarm
        .engine_with(listener, identity, &tracker, None, config)
        .await?;
    // The stall clock starts with the download, inside `fetch`, so the floor is measured from there.
    let start = Instant::now();
    let blob = engine.fetch(&metainfo.digest(), None).await?;
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        collect(blob.stream(0..metainfo.length())),
    )
    .await
    .context("the stream hung past the stall timeout")?;
    let err = result.expect_err("no peer can serve the blob");
    assert!(err.to_string().contains("no piece arrived"), "{err:#}");
    assert!(start.elapsed() >= Duration::from_secs(1));
    Ok(())
}

/// Downloads `data` through a new engine whose tracker hands out `seeder` and `hung` agents that
/// answer the handshake with every piece and never a request ([`MutePeer`]), with `scheduler`'s
/// settings; fails when the download takes longer than `deadline`. Returns the downloader.
async fn download_beside_hung_agents(
    swarm: &mut Swarm,
    data: &[u8],
    seeder: PeerInfo,
    hung: usize,
    scheduler: shoal_swarm::scheduler::SchedulerConfig,
    stall_timeout: Duration,
    deadline: Duration,
) -> Result<Node> {
    let metainfo = metainfo_of(data);
    let piece_count = u32::try_from(metainfo.piece_count())?;
    let mut peers = vec![seeder];
    for i in 0..hung {
        peers.push(swarm.mute_peer(piece_count, &format!("hung-{i}")).await?);
    }
    let tracker = swarm.tracker(peers, &[&metainfo]).await?;
    let (listener, identity) = swarm.reserve().await?;
    let config = P2pConfig {
        scheduler,
        stall_timeout,
        piece_stream: swarm.piece_stream,
        ..P2pConfig::default()
    };
    let (engine, node) = swarm
        .engine_with(listener, identity, &tracker, None, config)
        .await?;
    let blob = engine.fetch(&metainfo.digest(), None).await?;
    let got = tokio::time::timeout(deadline, collect(blob.stream(0..metainfo.length())))
        .await
        .context("the download waited on the hung agents")??;
    ensure!(got == data, "the blob differs");
    Ok(node)
}

/// More hung agents than a download has connections, each announcing every piece and never
/// answering a request: every piece times out at one of them, then at the next, and is then asked
/// of the origin, so the download completes (before, the origin was never asked while two
/// connected agents announced the pieces, and the download failed at the stall timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_completes_from_the_origin_when_more_agents_than_connections_never_answer()
-> Result<()> {
    beside_more_hung_agents_than_connections(Swarm::new()).await
}

/// The same, fetching over the piece stream: the hung agents (gRPC only) are asked over gRPC,
/// the origin over the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_over_the_piece_stream_completes_when_more_agents_than_connections_never_answer()
-> Result<()> {
    beside_more_hung_agents_than_connections(Swarm::streamed()).await
}

async fn beside_more_hung_agents_than_connections(mut swarm: Swarm) -> Result<()> {
    let data = blob(6 * MIB, 11);
    let origin = swarm
        .seeder(&[&data], true, None, Faults::default())
        .await?;
    let scheduler = shoal_swarm::scheduler::SchedulerConfig {
        piece_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let hung = scheduler.max_peers + 8;
    // Two timeouts of each piece take 2-3 s; only a download the origin never serves reaches
    // the stall timeout.
    let stall = Duration::from_secs(10);
    let node = download_beside_hung_agents(
        &mut swarm,
        &data,
        origin.info(true),
        hung,
        scheduler,
        stall,
        3 * stall,
    )
    .await?;
    assert_eq!(node.metrics.bytes_received(true), data.len() as u64);
    assert_eq!(node.metrics.bytes_received(false), 0);
    Ok(())
}

/// Agents that hung with their sessions open hold more of a download's requests than endgame
/// duplicates: once those requests are far older than the download's others, their pieces are
/// asked of a healthy holder, long before the piece timeout (here a minute) would fail them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_requested_of_hung_agents_come_from_a_healthy_one_before_the_piece_timeout()
-> Result<()> {
    let mut swarm = Swarm::new();
    let data = blob(8 * MIB, 12);
    let seeder = swarm
        .seeder(&[&data], false, None, Faults::default())
        .await?;
    let piece_timeout = Duration::from_secs(60);
    let scheduler = shoal_swarm::scheduler::SchedulerConfig {
        piece_timeout,
        ..Default::default()
    };
    let node = download_beside_hung_agents(
        &mut swarm,
        &data,
        seeder.info(true),
        6,
        scheduler,
        2 * piece_timeout,
        piece_timeout / 2,
    )
    .await?;
    assert_eq!(node.metrics.bytes_received(false), data.len() as u64);
    assert!(
        node.metrics.requests_stale() > 0,
        "no request was counted stale"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_service_refuses_bad_requests_with_grpc_errors() -> Result<()> {
    let mut swarm = Swarm::new();
    let data = blob(MIB, 5);
    let metainfo = metainfo_of(&data);
    let seeder = swarm
        .seeder(&[&data], false, None, Faults::default())
        .await?;
    let mut client = PeerClient::connect(format!("http://{}", seeder.identity.addr)).await?;
    let me = PeerId::parse("tester")?.to_string();
    let piece = |digest: String, index: u32| PieceRequest {
        digest,
        index,
        peer_id: me.clone(),
        insist: false,
    };

    let unknown = Digest::of(b"unknown").to_string();
    let status = client
        .get_piece(piece(unknown.clone(), 0))
        .await
        .expect_err("unknown blob");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let known = metainfo.digest().to_string();
    let status = client
        .get_piece(piece(known.clone(), 4))
        .await
        .expect_err("out of range");
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    let status = client
        .get_piece(piece("sha256:zz".into(), 0))
        .await
        .expect_err("bad digest");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // The same connection still serves good requests.
    let mut chunks = client
        .get_piece(piece(known.clone(), 3))
        .await?
        .into_inner();
    let mut received = Vec::new();
    while let Some(chunk) = chunks.message().await? {
        assert_eq!(chunk.offset, received.len() as u64);
        received.extend_from_slice(&chunk.data);
    }
    assert!(received == data[3 * 256 * 1024..]);

    let garbage = SessionRequest {
        digest: "not a digest".into(),
        peer_id: me.clone(),
        addr: String::new(),
    };
    let status = client
        .session(garbage)
        .await
        .expect_err("garbage handshake");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let no_peer = SessionRequest {
        digest: known.clone(),
        peer_id: "bad peer id!".into(),
        addr: String::new(),
    };
    let status = client.session(no_peer).await.expect_err("bad peer id");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let session = SessionRequest {
        digest: known,
        peer_id: me,
        addr: String::new(),
    };
    let mut events = client.session(session).await?.into_inner();
    let first = events.message().await?.context("bitfield")?;
    let Some(shoal_proto::v1::session_event::Event::Bitfield(bits)) = first.event else {
        bail!("first event is not a bitfield: {first:?}");
    };
    assert_eq!(bits.piece_count, 4);
    assert_eq!(bits.bits, vec![0xf0]);
    let second = events.message().await?.context("complete")?;
    assert_eq!(
        second.event,
        Some(shoal_proto::v1::session_event::Event::Complete(true))
    );
    assert!(events.message().await?.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pieces_of_a_download_in_progress_are_served_onward() -> Result<()> {
    let mut swarm = Swarm::new();
    let data = blob(8 * MIB, 6);
    let metainfo = metainfo_of(&data);
    let digest = metainfo.digest();
    let len = data.len() as u64;
    // A slow origin keeps A's download in progress for about two seconds.
    let seeder = swarm
        .seeder(&[&data], true, Some(ByteSize::mib(4)), Faults::default())
        .await?;
    let (listener_a, id_a) = swarm.reserve().await?;
    let (listener_b, id_b) = swarm.reserve().await?;
    let a_info = downloading(&id_a);
    let tracker_a = swarm.tracker(vec![seeder.info(true)], &[&metainfo]).await?;
    // B only knows A, so every byte B gets is one A verified first.
    let tracker_b = swarm.tracker(vec![a_info], &[&metainfo]).await?;
    let (engine_a, node_a) = swarm.engine(listener_a, id_a, &tracker_a, None).await?;
    let (engine_b, node_b) = swarm.engine(listener_b, id_b, &tracker_b, None).await?;

    let blob_a = engine_a.fetch(&digest, None).await?;
    let blob_b = engine_b.fetch(&digest, None).await?;
    let reading_b = tokio::spawn(collect(blob_b.stream(0..u64::MAX)));
    let deadline = Instant::now() + Duration::from_secs(10);
    while node_b.metrics.pieces_received() == 0 {
        if Instant::now() > deadline {
            bail!("B never received a piece from A");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        node_a.store.stat(&digest).await?,
        None,
        "A had already finished, so this proves nothing about partial serving"
    );
    assert!(collect(blob_a.stream(0..u64::MAX)).await? == data);
    assert!(reading_b.await?? == data);
    assert_eq!(node_b.metrics.bytes_received(false), len);
    Ok(())
}

/// An origin that lies: it hands out `claimed`'s metainfo built from the piece hashes of the
/// blob it really holds, and serves that blob's pieces as `claimed`.
struct LyingSource {
    store: StoreSource,
    real: Metainfo,
    claimed: Metainfo,
}

#[tonic::async_trait]
impl PieceSource for LyingSource {
    async fn lookup(
        &self,
        digest: &Digest,
    ) -> Option<(Metainfo, tokio::sync::watch::Receiver<shoal_core::Bitfield>)> {
        if *digest != self.claimed.digest() {
            return None;
        }
        let (_, real_have) = self.store.lookup(&self.real.digest()).await?;
        Some((self.claimed.clone(), real_have))
    }

    async fn piece_file(
        &self,
        _digest: &Digest,
        _metainfo: &Metainfo,
        piece: u32,
    ) -> Result<FileRange, P2pError> {
        self.store
            .piece_file(&self.real.digest(), &self.real, piece)
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lying_metainfo_never_gets_its_blob_served_whole() -> Result<()> {
    let mut swarm = Swarm::new();
    let data = blob(12 * MIB + 4321, 9);
    let real = metainfo_of(&data);
    // The real blob's metainfo claimed for another digest; to be accepted at all its chain must
    // end in the claimed digest, so every piece verifies but the last.
    let claimed_digest = Digest::of(b"the layer the client asked for");
    let mut values: Vec<Digest> = (0..real.piece_count())
        .filter_map(|i| real.piece_hash(i).copied())
        .collect();
    *values.last_mut().context("pieces")? = claimed_digest;
    let claimed = Metainfo::from_parts(claimed_digest, real.length(), real.piece_length(), values)?;
    let (_, origin_store) = swarm.store().await?;
    origin_store
        .put(
            &real.digest(),
            Box::pin(futures::stream::iter([Ok(Bytes::copy_from_slice(&data))])),
        )
        .await?;
    let source: Arc<dyn PieceSource> = Arc::new(LyingSource {
        store: StoreSource(origin_store),
        real,
        claimed: claimed.clone(),
    });
    let addr = swarm
        .serve(Server::builder().add_service(peer_service(
            source,
            Limiter::unlimited(P2pConfig::default().chunk_size),
            P2pConfig::default().upload_slots,
            P2pMetrics::new(&mut Registry::default()),
            Faults::default(),
            Spread::Unbounded,
        )))
        .await?;
    let origin = Identity::random(addr.to_string(), true);
    let tracker = swarm
        .tracker(
            vec![PeerInfo {
                peer_id: origin.peer_id.to_string(),
                addr: origin.addr.clone(),
                origin: true,
                complete: true,
            }],
            &[&claimed],
        )
        .await?;
    let (listener, identity) = swarm.reserve().await?;
    let config = P2pConfig {
        stall_timeout: Duration::from_secs(3),
        ..P2pConfig::default()
    };
    let (engine, node) = swarm
        .engine_with(listener, identity, &tracker, None, config)
        .await?;

    let blob = engine.fetch(&claimed_digest, None).await?;
    let mut stream = blob.stream(0..u64::MAX);
    let mut served = 0;
    let error = loop {
        match stream.try_next().await {
            Ok(Some(chunk)) => served += chunk.len(),
            Ok(None) => bail!("the whole blob was served although its digest does not match"),
            Err(e) => break e,
        }
    };
    let last = claimed
        .piece_range(claimed.piece_count() - 1)
        .context("last piece")?;
    assert!(
        served as u64 <= last.start,
        "{served} bytes served, the last piece starts at {}",
        last.start
    );
    assert!(error.to_string().contains("failed"), "{error}");
    assert!(
        node.metrics.pieces_rejected() >= 1,
        "the last piece was never refused"
    );
    assert_eq!(node.store.stat(&claimed_digest).await?, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serving_the_pieces_of_a_committed_blob_never_hashes() -> Result<()> {
    let mut swarm = Swarm::new();
    let data = blob(70 * MIB + 99, 11);
    let metainfo = metainfo_of(&data);
    let digest = metainfo.digest();
    // `put` commits the blob as an upload does on an origin.
    let seeder = swarm
        .seeder(&[&data], true, None, Faults::default())
        .await?;
    let tracker = swarm.tracker(vec![seeder.info(true)], &[&metainfo]).await?;
    let (listener, identity) = swarm.reserve().await?;
    let (engine, _node) = swarm.engine(listener, identity, &tracker, None).await?;
    let blob = engine.fetch(&digest, None).await?;
    assert!(collect(blob.stream(0..u64::MAX)).await? == data);
    assert_eq!(seeder.metrics.bytes_served(), data.len() as u64);
    assert_eq!(
        seeder.store.metainfo_computations(),
        0,
        "the seeder hashed a blob to serve its pieces"
    );
    Ok(())
}

/// A downloader with the piece stream on, and a peer that serves gRPC alone (an older version,
/// or a listener without the stream): the peer declines the stream's magic, and every piece is
/// asked over gRPC instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_the_piece_stream_is_asked_over_grpc() -> Result<()> {
    let mut swarm = Swarm::new();
    let data = blob(4 * MIB, 13);
    let metainfo = metainfo_of(&data);
    let seeder = swarm
        .seeder(&[&data], true, None, Faults::default())
        .await?;
    swarm.piece_stream = true;
    let tracker = swarm.tracker(vec![seeder.info(true)], &[&metainfo]).await?;
    let (listener, identity) = swarm.reserve().await?;
    let (engine, node) = swarm.engine(listener, identity, &tracker, None).await?;
    let fetched = engine.fetch(&metainfo.digest(), None).await?;
    assert!(collect(fetched.stream(0..u64::MAX)).await? == data);
    assert_eq!(
        node.metrics.pieces_received(),
        metainfo.piece_count() as u64
    );
    assert_eq!(node.metrics.stream_pieces_received(), 0);
    assert_eq!(node.metrics.peers_blacklisted(), 0);
    Ok(())
}

/// The piece stream's wire as `docs/p2p.md` documents it, spoken by hand: a peer answers bad
/// requests with refusals (a gRPC code and a message) on the same connection, closes it on a
/// request too long to be one, and still serves gRPC on the same port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_piece_stream_refuses_bad_requests_and_closes_on_bad_framing() -> Result<()> {
    use prost::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const MAGIC: &[u8] = b"\0SHOAL-PIECES/1\n";
    async fn ask(socket: &mut tokio::net::TcpStream, request: &[u8]) -> Result<(u8, Vec<u8>)> {
        socket.write_u32(u32::try_from(request.len())?).await?;
        socket.write_all(request).await?;
        let kind = socket.read_u8().await?;
        let len = socket.read_u64().await?;
        ensure!(len < 1 << 20, "an answer of {len} bytes");
        let mut body = vec![0; usize::try_from(len)?];
        socket.read_exact(&mut body).await?;
        Ok((kind, body))
    }

    let mut swarm = Swarm::streamed();
    let data = blob(MIB, 14);
    let metainfo = metainfo_of(&data);
    let seeder = swarm
        .seeder(&[&data], true, None, Faults::default())
        .await?;
    let mut socket = tokio::net::TcpStream::connect(&seeder.identity.addr).await?;
    socket.write_all(MAGIC).await?;
    let mut answer = [0; 16];
    socket.read_exact(&mut answer).await?;
    assert_eq!(&answer[..], MAGIC);

    // Not a PieceRequest: refused, invalid argument (gRPC code 3), and the connection goes on.
    let (kind, body) = ask(&mut socket, &[0xff, 0xff, 0xff]).await?;
    assert_eq!((kind, body[0]), (1, 3), "{body:?}");
    assert!(String::from_utf8_lossy(&body[5..]).contains("malformed"));
    // A blob it does not have: not found (5).
    let unknown = PieceRequest {
        digest: Digest::of(b"nothing here").to_string(),
        index: 0,
        peer_id: "a".repeat(32),
        insist: false,
    };
    let (kind, body) = ask(&mut socket, &unknown.encode_to_vec()).await?;
    assert_eq!((kind, body[0]), (1, 5), "{body:?}");
    // A piece past the end: out of range (11).
    let past = PieceRequest {
        digest: metainfo.digest().to_string(),
        index: 99,
        ..unknown.clone()
    };
    let (kind, body) = ask(&mut socket, &past.encode_to_vec()).await?;
    assert_eq!(kind, 1);
    assert_ne!(body[0], 0, "{body:?}");
    // A good one: the piece, byte for byte.
    let good = PieceRequest {
        index: 0,
        ..past.clone()
    };
    let (kind, body) = ask(&mut socket, &good.encode_to_vec()).await?;
    assert_eq!(kind, 0);
    let first = metainfo.piece_range(0).context("piece 0")?;
    assert!(body == data[first.start as usize..first.end as usize]);
    // Requests sent before the earlier ones are answered are answered in order.
    let second = PieceRequest {
        index: 1,
        ..good.clone()
    };
    let mut pipelined = Vec::new();
    for request in [&second, &unknown, &good] {
        let request = request.encode_to_vec();
        pipelined.extend_from_slice(&u32::try_from(request.len())?.to_be_bytes());
        pipelined.extend_from_slice(&request);
    }
    socket.write_all(&pipelined).await?;
    let mut answers = Vec::new();
    for _ in 0..3 {
        let kind = socket.read_u8().await?;
        let mut body = vec![0; usize::try_from(socket.read_u64().await?)?];
        socket.read_exact(&mut body).await?;
        answers.push((kind, body));
    }
    let range = metainfo.piece_range(1).context("piece 1")?;
    assert!(answers[0].0 == 0 && answers[0].1 == data[range.start as usize..range.end as usize]);
    assert_eq!((answers[1].0, answers[1].1[0]), (1, 5), "{:?}", answers[1]);
    assert!(answers[2].0 == 0 && answers[2].1 == data[first.start as usize..first.end as usize]);
    // A length no request has: the peer closes the connection.
    socket.write_u32(1 << 30).await?;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "the connection stayed open"
    );

    // gRPC on the same port is untouched.
    let mut client = PeerClient::connect(format!("http://{}", seeder.identity.addr)).await?;
    let session = client
        .session(SessionRequest {
            digest: metainfo.digest().to_string(),
            peer_id: "b".repeat(32),
            addr: String::new(),
        })
        .await;
    assert!(session.is_ok(), "{session:?}");
    Ok(())
}
