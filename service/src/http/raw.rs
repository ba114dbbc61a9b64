//! A second protocol on a listener, beside HTTP, told apart by the connection's first byte: the
//! peer port serves gRPC and the piece stream (`shoal_p2p`) this way, so both share one port,
//! one connection limit and one shutdown.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Serves one connection of the protocol (its magic already read): the stream, the listener's
/// idle timeout, and the shutdown to stop at between requests.
type ServeRaw =
    dyn Fn(TcpStream, Duration, CancellationToken) -> BoxFuture<'static, ()> + Send + Sync;

/// A protocol whose connections open with `magic`, served by its own function.
#[derive(Clone)]
pub struct RawProtocol {
    magic: &'static [u8],
    serve: Arc<ServeRaw>,
}

/// What a new plain-TCP connection opens with.
pub(crate) enum Opening {
    /// Anything but the protocol's first byte: HTTP (or garbage, which hyper answers).
    Http(TcpStream),
    /// The protocol's magic, read.
    Raw(TcpStream),
    /// Closed, timed out, or a wrong magic: nothing to serve.
    Nothing,
}

impl RawProtocol {
    /// A protocol whose connections open with `magic`. Its first byte must be one no HTTP
    /// connection starts with (a letter) and no TLS one (a record type, 20–24): a NUL byte,
    /// say.
    pub fn new<F>(magic: &'static [u8], serve: F) -> RawProtocol
    where
        F: Fn(TcpStream, Duration, CancellationToken) -> BoxFuture<'static, ()>
            + Send
            + Sync
            + 'static,
    {
        assert!(
            magic
                .first()
                .is_some_and(|b| !b.is_ascii_alphabetic() && !(20..=24).contains(b)),
            "a raw protocol's magic must not start like HTTP or TLS"
        );
        RawProtocol {
            magic,
            serve: Arc::new(serve),
        }
    }

    /// Reads which protocol `stream` speaks, by `deadline`: its first byte is only looked at,
    /// and consumed (with the rest of the magic) only when it is the protocol's.
    pub(crate) async fn open(&self, mut stream: TcpStream, deadline: Instant) -> Opening {
        let mut first = [0; 1];
        match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
            Ok(Ok(1)) if first[0] == self.magic[0] => {}
            Ok(Ok(1)) => return Opening::Http(stream),
            _ => return Opening::Nothing,
        }
        let mut magic = vec![0; self.magic.len()];
        match tokio::time::timeout_at(deadline, stream.read_exact(&mut magic)).await {
            Ok(Ok(_)) if magic == self.magic => Opening::Raw(stream),
            _ => Opening::Nothing,
        }
    }

    pub(crate) async fn serve(
        &self,
        stream: TcpStream,
        idle: Duration,
        shutdown: CancellationToken,
    ) {
        (self.serve)(stream, idle, shutdown).await;
    }
}
