//! The gRPC piece exchange: one `peer_service` (over a `StoreSource`, served as origins and
//! agents serve it: an axum router through `shoal_service::http::serve`) on loopback serving
//! every piece of a 64 MiB blob to a GetPiece loop of the agents' own client
//! (`shoal_p2p::get_piece`), one request at a time and with 2, 4 and 8 in flight (the scheduler's
//! depth adapts per peer between 1 and `max_pipeline`), over the channel agents use (`shoal_p2p::peer_channel`), and pipelined again over
//! mutual TLS (an origin's certificate served, an agent's presented, as a cluster with `tls.ca`
//! runs), and over the piece stream beside it (`p2p.piece_stream`). The baseline, in the same
//! binary: the same number of bytes copied over a plain TCP loopback socket.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use divan::Bencher;
use divan::counter::BytesCount;
use futures::{StreamExt, TryStreamExt};
use prometheus_client::registry::Registry;
use shoal_core::Metainfo;
use shoal_microbench::{MIB, RepeatedBlob};
use shoal_p2p::benching::StreamClient;
use shoal_p2p::{
    Faults, Limiter, P2pConfig, P2pMetrics, PIECE_COPIES, PieceSource, Spread, StoreSource,
    peer_service,
};
use shoal_proto::v1::PieceRequest;
use shoal_storage::BlobStore;
use shoal_tls::generate::Authority;
use shoal_tls::{Role, Roles};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// 64 MiB in 256 KiB pieces (`shoal_core::piece_length_for`): 256 pieces.
const CHUNK: usize = MIB;
const CHUNKS: usize = 64;
/// Read buffer of the TCP baseline: the size of one `PieceChunk` (`p2p.chunk_size` default).
const TCP_BUFFER: usize = 256 * 1024;

/// The allocator agents and origins run with: freed piece buffers are reused, not returned to
/// the kernel and faulted back in.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    divan::main();
}

/// A runtime with a peer service on loopback serving one stored blob, and a channel to it.
struct Fixture {
    runtime: Runtime,
    metainfo: Metainfo,
    channel: Channel,
    /// The peer service's address: gRPC, and (without TLS) the piece stream beside it.
    addr: SocketAddr,
    shutdown: CancellationToken,
    _dir: TempDir,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `mtls`: serve and call over mutual TLS with certificates of a fresh CA.
fn fixture(mtls: bool) -> Fixture {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("create a temporary directory under $TMPDIR");
    let tls = mtls.then(|| {
        let ca = Authority::new().expect("generate a CA");
        let server = ca
            .write(&dir.path().join("origin"), Role::Origin)
            .expect("issue the origin's certificate");
        let client = ca
            .write(&dir.path().join("agent"), Role::Agent)
            .expect("issue the agent's certificate");
        let server = server.server().expect("load the origin's certificate");
        let client = client
            .client(Roles::of(&[Role::Origin]), &[b"h2"])
            .expect("load the agent's certificate")
            .expect("mutual TLS");
        (server, client)
    });
    let shutdown = CancellationToken::new();
    let (metainfo, channel, addr) = runtime.block_on(async {
        let store = Arc::new(
            BlobStore::open(dir.path().join("store"))
                .await
                .expect("open the store"),
        );
        let blob = RepeatedBlob::new(CHUNK, CHUNKS, 3);
        let digest = blob.digest();
        store
            .put(&digest, blob.stream())
            .await
            .expect("store the blob");
        let metainfo = store
            .metainfo(&digest)
            .await
            .expect("compute the metainfo")
            .expect("the blob was stored");
        let source: Arc<dyn PieceSource> = Arc::new(StoreSource(store));
        let service = peer_service(
            source,
            Limiter::unlimited(P2pConfig::default().chunk_size),
            P2pConfig::default().upload_slots,
            P2pMetrics::new(&mut Registry::default()),
            Faults::default(),
            // An agent's: agents serve agents in a swarm.
            Spread::PieceCopies(PIECE_COPIES),
        );
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("read the bound address");
        // As agents and origins serve it: the piece stream beside gRPC on one port.
        let raw = service.piece_stream();
        let app = tonic::service::Routes::new(service).into_axum_router();
        let (server, client) = tls.unzip();
        tokio::spawn(shoal_service::http::serve_with_raw(
            listener,
            server,
            app,
            raw,
            shutdown.clone(),
        ));
        let channel = shoal_p2p::peer_channel_with(&addr.to_string(), client.as_ref())
            .expect("a valid endpoint");
        (metainfo, channel, addr)
    });
    Fixture {
        runtime,
        metainfo,
        channel,
        addr,
        shutdown,
        _dir: dir,
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build the tokio runtime")
}

/// Fetches one piece and returns its length.
async fn get_piece(
    channel: Channel,
    metainfo: &Metainfo,
    index: u32,
) -> Result<u64, tonic::Status> {
    let request = PieceRequest {
        digest: metainfo.digest().to_string(),
        index,
        peer_id: "microbench".to_owned(),
        insist: false,
    };
    let mut stream = shoal_p2p::get_piece(channel, &request, CHUNK).await?;
    let mut received = 0;
    while let Some(chunk) = stream.message().await? {
        received += chunk.length() as u64;
    }
    Ok(received)
}

/// Fetches every piece with `in_flight` requests outstanding and checks the total length.
fn get_all_pieces(bencher: Bencher, in_flight: usize, mtls: bool) {
    let f = fixture(mtls);
    let (channel, metainfo) = (f.channel.clone(), f.metainfo.clone());
    fetch_all(bencher, &f, in_flight, move |index| {
        let (channel, metainfo) = (channel.clone(), metainfo.clone());
        async move { get_piece(channel, &metainfo, index).await }
    });
}

/// Fetches every piece of the fixture's blob with `fetch`, `in_flight` at once, on a runtime
/// worker (as an agent's download runs, not on the benchmark's own thread), and checks the
/// total length.
fn fetch_all<F, Fut, E>(bencher: Bencher, f: &Fixture, in_flight: usize, fetch: F)
where
    F: Fn(u32) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<u64, E>> + Send,
    E: std::fmt::Debug + Send + 'static,
{
    let length = f.metainfo.length();
    let pieces = u32::try_from(f.metainfo.piece_count()).expect("at most MAX_PIECES pieces");
    bencher.counter(BytesCount::new(length)).bench_local(|| {
        let fetch = fetch.clone();
        let task = f.runtime.spawn(async move {
            futures::stream::iter(0..pieces)
                .map(fetch)
                .buffer_unordered(in_flight)
                .try_fold(0, |total, piece| async move { Ok(total + piece) })
                .await
        });
        let received: u64 = f
            .runtime
            .block_on(task)
            .expect("the fetch task ran")
            .expect("fetch every piece");
        assert_eq!(received, length, "pieces short of the blob");
    });
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn get_piece_serial(bencher: Bencher) {
    get_all_pieces(bencher, 1, false);
}

/// Requests in flight: the scheduler's depth before it has measured a peer (2), and deeper
/// pipes it reaches for a lone fast peer whose answers take longer than a piece.
#[divan::bench(args = [2, 4, 8], sample_count = 10, sample_size = 1)]
fn get_piece_pipelined(bencher: Bencher, depth: usize) {
    get_all_pieces(bencher, depth, false);
}

#[divan::bench(args = [2, 4], sample_count = 10, sample_size = 1)]
fn get_piece_pipelined_mtls(bencher: Bencher, depth: usize) {
    get_all_pieces(bencher, depth, true);
}

/// The piece stream (`p2p.piece_stream`): the same pieces from the same service, fetched as an
/// agent's downloads fetch them (`shoal_p2p::benching::StreamClient`, the engine's connection
/// pool), `depth` requests in flight, pipelined on one connection; the service sends each piece
/// with `sendfile`.
#[divan::bench(args = [1, 2, 4, 8], sample_count = 10, sample_size = 1)]
fn stream_get_piece(bencher: Bencher, depth: usize) {
    let f = fixture(false);
    let piece_length = usize::try_from(f.metainfo.piece_length()).expect("a small piece");
    let client = Arc::new(StreamClient::default());
    let (addr, digest) = (f.addr.to_string(), f.metainfo.digest().to_string());
    fetch_all(bencher, &f, depth, move |index| {
        let request = PieceRequest {
            digest: digest.clone(),
            index,
            peer_id: "microbench".to_owned(),
            insist: false,
        };
        let (client, addr) = (client.clone(), addr.clone());
        async move { client.get_piece(&addr, &request, piece_length).await }
    });
}

/// The baseline: a server writes the blob's bytes down a fresh loopback connection per sample,
/// from memory, and the client reads them to EOF.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn tcp_loopback_copy(bencher: Bencher) {
    let runtime = runtime();
    let blob = RepeatedBlob::new(CHUNK, CHUNKS, 3);
    let length = blob.len();
    let shutdown = CancellationToken::new();
    let chunk = blob.chunk().clone();
    let addr = listen(&runtime, |listener| {
        serve_copies(listener, chunk, CHUNKS, shutdown.clone())
    });
    bencher.counter(BytesCount::new(length)).bench_local(|| {
        let received = runtime
            .block_on(runtime.spawn(read_copy(addr)))
            .expect("the reading task ran")
            .expect("read the copy");
        assert_eq!(received, length, "the copy ended early");
    });
    shutdown.cancel();
}

/// Binds a loopback listener and runs `serve` on it in a task of `runtime`; its address.
fn listen<F, Fut>(runtime: &Runtime, serve: F) -> SocketAddr
where
    F: FnOnce(TcpListener) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("read the bound address");
        tokio::spawn(serve(listener));
        addr
    })
}

async fn serve_copies(
    listener: TcpListener,
    chunk: Bytes,
    count: usize,
    shutdown: CancellationToken,
) {
    serve_each(listener, shutdown, move |mut socket| {
        let chunk = chunk.clone();
        async move {
            socket.set_nodelay(true)?;
            for _ in 0..count {
                socket.write_all(&chunk).await?;
            }
            socket.shutdown().await
        }
    })
    .await;
}

/// Accepts connections on `listener` until `shutdown`, each handled by `handle` in a task of
/// its own; a failure panics the benchmark.
async fn serve_each<F, Fut>(listener: TcpListener, shutdown: CancellationToken, handle: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    loop {
        let socket = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(e) => panic!("accept on a benchmark listener: {e}"),
            },
            () = shutdown.cancelled() => return,
        };
        let handled = handle(socket);
        tokio::spawn(async move {
            if let Err(e) = handled.await {
                panic!("serving a benchmark connection: {e}");
            }
        });
    }
}

async fn read_copy(addr: SocketAddr) -> std::io::Result<u64> {
    let mut socket = TcpStream::connect(addr).await?;
    let mut buffer = vec![0; TCP_BUFFER];
    let mut received = 0;
    loop {
        match socket.read(&mut buffer).await? {
            0 => return Ok(received),
            n => received += n as u64,
        }
    }
}
