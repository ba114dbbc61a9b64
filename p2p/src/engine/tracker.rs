//! The engine's side of the tracker protocol: announces and metainfo, with the wire metainfo
//! checked and converted into [`Metainfo`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use shoal_core::{Digest, Metainfo, Name, Suspects, rendezvous};
use shoal_proto::v1::tracker_client::TrackerClient as Grpc;
use shoal_proto::v1::{AnnounceRequest, MetainfoRequest, MetainfoResponse, PeerInfo, Progress};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::{Identity, P2pError};

/// Unreachable trackers and peers fail fast; the caller retries at the next interval.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An announce is a map lookup on the tracker.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(10);
/// A metainfo miss makes the tracker ask an origin, which may pull a large blob from the
/// backend and hash it first.
const METAINFO_TIMEOUT: Duration = Duration::from_secs(120);
/// Interval used when the tracker's answer carries none (or an announce failed).
pub(crate) const FALLBACK_INTERVAL: Duration = Duration::from_secs(3);

/// A tracker whose call failed in transport is asked after the others for this long.
const ASKED_LAST_FOR: Duration = Duration::from_secs(30);

/// The trackers an engine announces to: one, or several (sharing a Redis store, or each with
/// its own). A blob's calls go to them in rendezvous order of their addresses, so every agent
/// of a swarm meets at the same tracker even when trackers share nothing, and blobs spread over
/// them. A call that fails in transport (the tracker unreachable, hung or gone mid-call) goes to
/// the next tracker at once, and the one that failed is asked last for [`ASKED_LAST_FOR`].
/// An answer from a tracker, whatever it says (not found, rate limited, its store down), is
/// the answer: the next tracker would only say the same.
#[derive(Debug)]
pub(crate) struct Trackers {
    trackers: Vec<Tracker>,
    /// Counts the calls that went on to the next tracker.
    failovers: Counter,
    /// The trackers (by address) whose calls failed in transport lately.
    suspects: Suspects,
}

impl Trackers {
    /// Clients of the trackers at `addrs` (`host:port`; at least one).
    pub(crate) fn new(
        addrs: Vec<String>,
        tls: Option<&Arc<rustls::ClientConfig>>,
        failovers: Counter,
    ) -> Trackers {
        Trackers {
            trackers: addrs.into_iter().map(|a| Tracker::new(a, tls)).collect(),
            failovers,
            suspects: Suspects::new(ASKED_LAST_FOR),
        }
    }

    /// `call` (an announce or a metainfo request about `digest`) on `digest`'s trackers in
    /// turn until one answers.
    pub(crate) async fn call<'a, T, F, Fut>(
        &'a self,
        digest: &Digest,
        call: F,
    ) -> Result<T, P2pError>
    where
        F: Fn(&'a Tracker) -> Fut,
        Fut: Future<Output = Result<T, P2pError>>,
    {
        let mut failure = None;
        for tracker in self.order(digest, Instant::now()) {
            let answer = call(tracker).await;
            let failed = matches!(&answer, Err(error) if failed_in_transport(error));
            self.suspects.record(&tracker.addr, failed, Instant::now());
            match answer {
                Err(error) if failed => {
                    if failure.is_none() && self.trackers.len() > 1 {
                        self.failovers.inc();
                        tracing::warn!(%digest, error = %shoal_core::chain(&error), "tracker failed; asking the next one");
                    }
                    failure = Some(error);
                }
                answered => return answered,
            }
        }
        Err(failure.expect("there is at least one tracker"))
    }

    /// The trackers in the order `digest`'s calls try them at `now`: rendezvous order of their
    /// addresses, with those that failed within [`ASKED_LAST_FOR`] moved to the end.
    fn order(&self, digest: &Digest, now: Instant) -> Vec<&Tracker> {
        let mut order = rendezvous::rank(digest, &self.trackers);
        // A stable sort: each part keeps its rendezvous order.
        order.sort_by_key(|tracker| self.suspects.suspected(&tracker.addr, now));
        order
    }
}

/// Whether `error` is a call no tracker answered: it failed in the client or the transport
/// (unreachable, a connection cut, pings unanswered), where a status a tracker sent has no
/// source error.
fn failed_in_transport(error: &P2pError) -> bool {
    match error {
        P2pError::Tracker { status, .. } => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

/// A tracker ranks by its address.
impl AsRef<[u8]> for Tracker {
    fn as_ref(&self) -> &[u8] {
        self.addr.as_bytes()
    }
}

/// A lazily connected tracker client. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Tracker {
    addr: String,
    /// An address that is not a valid URI authority fails every call with this message.
    client: Result<Grpc<Channel>, String>,
}

/// What an announce returned: peers and when to announce again.
pub(crate) struct Announced {
    pub peers: Vec<PeerInfo>,
    pub interval: Duration,
    /// Members the tracker counts in the swarm (0: it does not say).
    pub swarm_size: u32,
}

/// HTTP/2 receive windows for piece data. The 64 KiB protocol default caps one stream at
/// 64 KiB per round trip; a few MiB lets a peer stream a whole piece, and the connection window
/// covers a full pipeline of requests to that peer.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// Largest HTTP/2 frame we accept: a whole piece chunk travels in one DATA frame instead of
/// sixty-four of the 16 KiB default, each with its own header and wake-up.
const MAX_FRAME: u32 = 1024 * 1024;

/// HTTP/2 pings on every connection, so a peer that stops answering (a hung node, a half-open
/// partition) fails its requests within seconds instead of at the piece timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The tracker's connection is pinged only while a request is out, once it has been silent for
/// a second, and given up when a ping goes unanswered for two (the origins' health probe
/// timeout): a hung tracker (a stopped process, whose kernel still accepts connections) then
/// fails a pull within about 3 s, where the peers' pings took 20 s, so that runtimes fall back
/// to their upstream. A live tracker acks pings however long a request takes (a metainfo miss
/// waits for an origin), and an idle agent sends none.
const TRACKER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const TRACKER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// A lazily connecting plain-text channel to `host:port`, tuned for bulk piece transfer.
pub fn channel(addr: &str) -> Result<Channel, tonic::transport::Error> {
    channel_with(addr, None)
}

/// A lazily connecting channel to `host:port`, over TLS with `tls` (mutual TLS inside the
/// cluster), tuned for bulk piece transfer: what the engine uses for every peer. The connect
/// timeout covers the TLS handshake, so a peer that accepts TCP and never answers fails the
/// connection within it.
pub fn channel_with(
    addr: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = endpoint(addr)?
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    Ok(connect_lazy(endpoint, tls))
}

/// The tracker's channel: a peer's, pinged as [`TRACKER_KEEPALIVE_INTERVAL`] says.
fn tracker_channel(
    addr: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Channel, tonic::transport::Error> {
    let endpoint = endpoint(addr)?
        .http2_keep_alive_interval(TRACKER_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(TRACKER_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(false);
    Ok(connect_lazy(endpoint, tls))
}

/// Whether a peer or tracker at `addr` (`host:port`) can be called: the endpoint every channel
/// is made from builds. A config checks its addresses with it at start.
pub fn check_address(addr: &str) -> Result<(), tonic::transport::Error> {
    endpoint(addr).map(drop)
}

fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME))
}

fn connect_lazy(endpoint: Endpoint, tls: Option<&Arc<rustls::ClientConfig>>) -> Channel {
    match tls {
        None => endpoint.connect_lazy(),
        Some(config) => endpoint.connect_with_connector_lazy(tls_connector(Arc::clone(config))),
    }
}

/// Connects TCP (`TCP_NODELAY`) and then TLS to the URI's `host:port`; the server name
/// offered is the host, though the cluster's verifier checks the CA and role, not the name.
fn tls_connector(
    config: Arc<rustls::ClientConfig>,
) -> impl tower::Service<
    http::Uri,
    Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Send
+ Clone
+ 'static {
    let connector = tokio_rustls::TlsConnector::from(config);
    tower::service_fn(move |uri: http::Uri| {
        let connector = connector.clone();
        async move {
            let invalid = |what: &str| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what} in {uri}"))
            };
            let host = uri.host().ok_or_else(|| invalid("no host"))?;
            let port = uri.port_u16().ok_or_else(|| invalid("no port"))?;
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let name =
                ServerName::try_from(host.clone()).map_err(|_| invalid("a bad host name"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(connector.connect(name, tcp).await?))
        }
    })
}

impl Tracker {
    pub(crate) fn new(addr: String, tls: Option<&Arc<rustls::ClientConfig>>) -> Tracker {
        let client = tracker_channel(&addr, tls)
            .map(Grpc::new)
            .map_err(|e| format!("bad tracker address: {e}"));
        Tracker { addr, client }
    }

    fn error(&self, status: tonic::Status) -> P2pError {
        P2pError::Tracker {
            addr: self.addr.clone(),
            status,
        }
    }

    fn client(&self) -> Result<Grpc<Channel>, P2pError> {
        self.client
            .clone()
            .map_err(|message| self.error(tonic::Status::invalid_argument(message)))
    }

    pub(crate) async fn announce(
        &self,
        digest: &Digest,
        namespace: Option<&Name>,
        identity: &Identity,
        complete: bool,
        progress: Option<Progress>,
    ) -> Result<Announced, P2pError> {
        let mut request = tonic::Request::new(AnnounceRequest {
            digest: digest.to_string(),
            namespace: namespace.map(ToString::to_string).unwrap_or_default(),
            peer: Some(PeerInfo {
                peer_id: identity.peer_id.to_string(),
                addr: identity.addr.clone(),
                origin: identity.origin,
                complete,
            }),
            progress,
        });
        request.set_timeout(ANNOUNCE_TIMEOUT);
        let response = self
            .client()?
            .announce(request)
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        let interval = match response.interval_ms {
            0 => FALLBACK_INTERVAL,
            ms => Duration::from_millis(u64::from(ms)),
        };
        Ok(Announced {
            peers: response.peers,
            interval,
            swarm_size: response.swarm_size,
        })
    }

    /// The blob's metainfo; [`P2pError::NotFound`] when the tracker has none.
    pub(crate) async fn metainfo(
        &self,
        digest: &Digest,
        namespace: Option<&Name>,
    ) -> Result<Metainfo, P2pError> {
        let mut request = tonic::Request::new(MetainfoRequest {
            digest: digest.to_string(),
            namespace: namespace.map(ToString::to_string).unwrap_or_default(),
        });
        request.set_timeout(METAINFO_TIMEOUT);
        match self.client()?.get_metainfo(request).await {
            Ok(response) => from_wire(digest, response.into_inner()),
            Err(status) if status.code() == Code::NotFound => {
                Err(P2pError::NotFound { digest: *digest })
            }
            Err(status) => Err(self.error(status)),
        }
    }
}

/// Checks the tracker's metainfo against the digest asked for and Shoal's piece table.
fn from_wire(digest: &Digest, wire: MetainfoResponse) -> Result<Metainfo, P2pError> {
    let invalid = |reason: String| P2pError::InvalidMetainfo {
        digest: *digest,
        reason,
    };
    if wire.digest != digest.to_string() {
        return Err(invalid(format!("it describes {:?}", wire.digest)));
    }
    let pieces = wire
        .piece_hashes
        .into_iter()
        .enumerate()
        .map(|(index, hash)| {
            <[u8; 32]>::try_from(hash.as_slice())
                .map(Digest::from_bytes)
                .map_err(|_| invalid(format!("piece {index} hash has {} bytes", hash.len())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Metainfo::from_parts(*digest, wire.length, wire.piece_length, pieces)
        .map_err(|e| invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use shoal_core::MetainfoBuilder;

    use super::*;

    fn wire_of(data: &[u8]) -> (Metainfo, MetainfoResponse) {
        let mut builder = MetainfoBuilder::new(data.len() as u64);
        builder.update(data);
        let metainfo = builder.finish().expect("metainfo");
        let wire = MetainfoResponse {
            digest: metainfo.digest().to_string(),
            length: metainfo.length(),
            piece_length: metainfo.piece_length(),
            piece_hashes: (0..metainfo.piece_count())
                .filter_map(|i| metainfo.piece_hash(i))
                .map(|h| h.as_bytes().to_vec())
                .collect(),
        };
        (metainfo, wire)
    }

    /// The addresses of `trackers` in `order`'s order.
    fn order_of(trackers: &Trackers, digest: &Digest, now: Instant) -> Vec<String> {
        let order = trackers.order(digest, now).into_iter();
        order.map(|tracker| tracker.addr.clone()).collect()
    }

    #[tokio::test]
    async fn a_blob_asks_its_trackers_in_rendezvous_order_and_a_failed_one_last_for_a_while() {
        let addrs: Vec<String> = (1..=3).map(|i| format!("10.0.0.{i}:15003")).collect();
        let trackers = Trackers::new(addrs.clone(), None, Counter::default());
        let digest = Digest::of(b"layer");
        let ranked: Vec<String> = rendezvous::rank(&digest, &addrs)
            .into_iter()
            .cloned()
            .collect();
        let now = Instant::now();
        assert_eq!(order_of(&trackers, &digest, now), ranked);
        // Other blobs start elsewhere: all three trackers are some blob's first.
        let firsts: std::collections::BTreeSet<String> = (0..64u32)
            .map(|i| order_of(&trackers, &Digest::of(&i.to_be_bytes()), now).remove(0))
            .collect();
        assert_eq!(firsts.len(), 3);

        trackers.suspects.record(&ranked[0], true, now);
        let expected = vec![ranked[1].clone(), ranked[2].clone(), ranked[0].clone()];
        assert_eq!(order_of(&trackers, &digest, now), expected);
        let later = now + ASKED_LAST_FOR - Duration::from_millis(1);
        assert_eq!(order_of(&trackers, &digest, later), expected);
        let later = now + ASKED_LAST_FOR;
        assert_eq!(order_of(&trackers, &digest, later), ranked);
    }

    #[tokio::test]
    async fn a_call_no_tracker_answers_goes_to_the_next_and_an_answer_does_not() {
        // Nothing listens on either: each call fails in transport.
        let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = unused.local_addr().unwrap().to_string();
        drop(unused);
        let failovers = Counter::default();
        let trackers = Trackers::new(
            vec![closed.clone(), "127.0.0.1:1".into()],
            None,
            failovers.clone(),
        );
        let digest = Digest::of(b"layer");
        let error = trackers
            .call(&digest, |tracker| tracker.metainfo(&digest, None))
            .await
            .unwrap_err();
        assert!(failed_in_transport(&error), "{error}");
        assert_eq!(failovers.get(), 1, "one call went on to the next tracker");
        let now = Instant::now();
        assert!(
            trackers
                .trackers
                .iter()
                .all(|t| trackers.suspects.suspected(&t.addr, now))
        );
        // A status a tracker sent is its answer, not a transport failure.
        let answered = P2pError::Tracker {
            addr: closed,
            status: tonic::Status::unavailable("the store is down"),
        };
        assert!(!failed_in_transport(&answered));
        assert!(!failed_in_transport(&P2pError::NotFound { digest }));
    }

    #[test]
    fn wire_metainfo_round_trips_and_is_checked() {
        let data = vec![7u8; 600 * 1024];
        let (metainfo, wire) = wire_of(&data);
        let digest = metainfo.digest();
        assert_eq!(from_wire(&digest, wire.clone()).expect("valid"), metainfo);

        let other = Digest::of(b"other");
        assert!(from_wire(&other, wire.clone()).is_err(), "another digest");
        let mut short_hash = wire.clone();
        short_hash.piece_hashes[1].pop();
        assert!(from_wire(&digest, short_hash).is_err());
        let mut missing_piece = wire.clone();
        missing_piece.piece_hashes.pop();
        assert!(from_wire(&digest, missing_piece).is_err());
        let mut bad_length = wire;
        bad_length.piece_length = 4096;
        assert!(from_wire(&digest, bad_length).is_err());
    }
}
