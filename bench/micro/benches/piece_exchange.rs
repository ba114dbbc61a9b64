//! The gRPC piece exchange: one `peer_service` (over a `StoreSource`, served as origins and
//! agents serve it: an axum router through `shoal_service::http::serve`) on loopback serving
//! every piece of a 64 MiB blob to a GetPiece loop of the agents' own client
//! (`shoal_p2p::get_piece`), one request at a time and with 2, 4 and 8 in flight (the scheduler's
//! depth adapts per peer between 1 and `max_pipeline`), over the channel agents use (`shoal_p2p::peer_channel`), and pipelined again over
//! mutual TLS (an origin's certificate served, an agent's presented, as a cluster with `tls.ca`
//! runs). The baseline, in the same binary: the same number of bytes copied over a plain TCP
//! loopback socket.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use divan::Bencher;
use divan::counter::BytesCount;
use futures::{StreamExt, TryStreamExt};
use prometheus_client::registry::Registry;
use shoal_core::Metainfo;
use shoal_microbench::{MIB, RepeatedBlob};
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
    let (metainfo, channel) = runtime.block_on(async {
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
        let app = tonic::service::Routes::new(service).into_axum_router();
        let (server, client) = tls.unzip();
        tokio::spawn(shoal_service::http::serve_maybe_tls(
            listener,
            server,
            app,
            shutdown.clone(),
        ));
        let channel = shoal_p2p::peer_channel_with(&addr.to_string(), client.as_ref())
            .expect("a valid endpoint");
        (metainfo, channel)
    });
    Fixture {
        runtime,
        metainfo,
        channel,
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
    let length = f.metainfo.length();
    let pieces = u32::try_from(f.metainfo.piece_count()).expect("at most MAX_PIECES pieces");
    bencher.counter(BytesCount::new(length)).bench_local(|| {
        let (channel, metainfo) = (f.channel.clone(), f.metainfo.clone());
        // On a runtime worker, as an agent's download runs, not on the benchmark's own thread.
        let fetch = f.runtime.spawn(async move {
            futures::stream::iter(0..pieces)
                .map(|index| get_piece(channel.clone(), &metainfo, index))
                .buffer_unordered(in_flight)
                .try_fold(0, |total, piece| async move { Ok(total + piece) })
                .await
        });
        let received: u64 = f
            .runtime
            .block_on(fetch)
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

/// How a [`raw_piece_stream`] server sends a piece's bytes.
#[derive(Clone, Copy, Debug)]
enum Serving {
    /// Read from the page cache into a buffer, then written to the socket: two copies, as a
    /// gRPC answer makes (without HTTP/2 around them).
    Copied,
    /// `sendfile(2)` from the file to the socket: the kernel hands the page-cache pages on.
    Sendfile,
}

/// A design not built into Shoal, measured for the data-plane issue's "negotiated raw-TCP piece
/// stream" question: the same 256 pieces of 256 KiB over one plain TCP connection, a request a
/// 4-byte piece index, an answer an 8-byte length then the piece's bytes, `depth` requests in
/// flight, answers in order. No HTTP/2, no protobuf, no per-request task; what remains is the
/// least any piece protocol over TCP costs. Served from a file in the page cache, read by the
/// client in 256 KiB reads like the baseline.
fn raw_piece_stream(bencher: Bencher, depth: usize, send: Serving) {
    let runtime = runtime();
    let dir = tempfile::tempdir().expect("create a temporary directory under $TMPDIR");
    let path = dir.path().join("blob");
    let blob = RepeatedBlob::new(CHUNK, CHUNKS, 3);
    let mut contents = Vec::with_capacity(CHUNK * CHUNKS);
    for _ in 0..CHUNKS {
        contents.extend_from_slice(blob.chunk());
    }
    std::fs::write(&path, &contents).expect("write the blob file");
    drop(contents);
    let piece = shoal_core::piece_length_for(blob.len());
    let pieces = blob.len().div_ceil(piece) as u32;
    let shutdown = CancellationToken::new();
    let file = Arc::new(std::fs::File::open(&path).expect("open the blob file"));
    let addr = listen(&runtime, |listener| {
        serve_raw(listener, file, piece, send, shutdown.clone())
    });
    bencher
        .counter(BytesCount::new(blob.len()))
        .bench_local(|| {
            let received = runtime
                .block_on(runtime.spawn(fetch_raw(addr, pieces, depth)))
                .expect("the fetching task ran")
                .expect("fetch every piece");
            assert_eq!(received, blob.len(), "pieces short of the blob");
        });
    shutdown.cancel();
}

#[divan::bench(args = [1, 2, 4], sample_count = 10, sample_size = 1)]
fn raw_piece_stream_copied(bencher: Bencher, depth: usize) {
    raw_piece_stream(bencher, depth, Serving::Copied);
}

#[divan::bench(args = [1, 2, 4], sample_count = 10, sample_size = 1)]
fn raw_piece_stream_sendfile(bencher: Bencher, depth: usize) {
    raw_piece_stream(bencher, depth, Serving::Sendfile);
}

async fn serve_raw(
    listener: TcpListener,
    file: Arc<std::fs::File>,
    piece: u64,
    send: Serving,
    shutdown: CancellationToken,
) {
    serve_each(listener, shutdown, move |socket| {
        let file = file.clone();
        async move { answer_raw(socket, &file, piece, send).await }
    })
    .await;
}

/// Answers piece requests on `socket` until the client closes it.
async fn answer_raw(
    mut socket: TcpStream,
    file: &std::fs::File,
    piece: u64,
    send: Serving,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    socket.set_nodelay(true)?;
    let length = file.metadata()?.len();
    let mut buffer = vec![0; piece as usize];
    loop {
        let mut request = [0; 4];
        match socket.read_exact(&mut request).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let start = u64::from(u32::from_be_bytes(request)) * piece;
        let len = piece.min(length - start);
        socket.write_all(&len.to_be_bytes()).await?;
        match send {
            Serving::Copied => {
                let bytes = &mut buffer[..len as usize];
                file.read_exact_at(bytes, start)?;
                socket.write_all(bytes).await?;
            }
            Serving::Sendfile => {
                let mut offset = start as i64;
                let end = (start + len) as i64;
                while offset < end {
                    let sent = socket.async_io(tokio::io::Interest::WRITABLE, || {
                        let count = (end - offset) as usize;
                        nix::sys::sendfile::sendfile64(&socket, file, Some(&mut offset), count)
                            .map_err(std::io::Error::from)
                    });
                    if sent.await? == 0 {
                        return Err(std::io::ErrorKind::WriteZero.into());
                    }
                }
            }
        }
    }
}

/// Requests every piece with `depth` in flight on one connection; returns the bytes read.
async fn fetch_raw(addr: SocketAddr, pieces: u32, depth: usize) -> std::io::Result<u64> {
    let socket = TcpStream::connect(addr).await?;
    socket.set_nodelay(true)?;
    let (mut reader, mut writer) = socket.into_split();
    let mut buffer = vec![0; TCP_BUFFER];
    let (mut sent, mut received) = (0u32, 0u64);
    for index in 0..pieces {
        // Requests go out while fewer than `depth` answers are owed.
        while sent < pieces && sent < index + depth as u32 {
            writer.write_all(&sent.to_be_bytes()).await?;
            sent += 1;
        }
        let mut len = [0; 8];
        reader.read_exact(&mut len).await?;
        let mut left = u64::from_be_bytes(len);
        while left > 0 {
            let want = (left as usize).min(buffer.len());
            let n = reader.read(&mut buffer[..want]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            left -= n as u64;
            received += n as u64;
        }
    }
    Ok(received)
}
