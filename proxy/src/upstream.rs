//! Which internal node serves a request. Blob operations go to the digest's owners through the
//! one origin-cluster client (`shoal_api::cluster`: rendezvous owners, healthy first, failover);
//! an upload session lives on the origin chosen when it was opened, and the handle the client gets
//! back names that origin by its address, so any proxy replica can route the session's later
//! requests whatever order its membership (static or DNS) lists the origins in.
//! Writes fail over too: a session opens on the next origin in turn that answers, so one origin
//! down does not stop pushes.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use shoal_api::cluster::Owner;
use shoal_api::{ApiError, BuildIndexClient, OriginClient, OriginCluster};
use shoal_core::{Digest, Name};
use shoal_membership::{MembershipError, MembershipMetrics};
use shoal_service::{CancellationToken, TaskTracker};

use crate::config::ProxyConfig;

/// The origin cluster and the build-index.
#[derive(Debug, Clone)]
pub struct Upstreams {
    origins: OriginCluster,
    /// The static origin list in config order: upload handles from before handles named the
    /// origin by address name it by position here.
    positions: Vec<String>,
    build_index: BuildIndexClient,
    /// Where the next upload session starts looking, so sessions spread over the origins.
    next_session: Arc<AtomicUsize>,
}

impl Upstreams {
    /// `config` must have passed [`ProxyConfig::validate`]. Membership (DNS, health checks)
    /// runs on `tasks` until `shutdown`.
    pub async fn start(
        http: reqwest::Client,
        config: &ProxyConfig,
        metrics: &MembershipMetrics,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Self, MembershipError> {
        let origins = OriginCluster::start(
            http.clone(),
            &config.origins,
            config.replicas,
            metrics,
            shutdown,
            tasks,
        )
        .await?;
        Ok(Self {
            origins,
            positions: config
                .origins
                .members()
                .static_members()
                .unwrap_or_default()
                .to_vec(),
            build_index: BuildIndexClient::new(http, &config.build_index),
            next_session: Arc::default(),
        })
    }

    /// The owners of `digest`, healthy ones first, otherwise most preferred first.
    pub fn owners(&self, digest: &Digest) -> Vec<OriginClient> {
        self.origins
            .owners(digest)
            .into_iter()
            .map(|owner| owner.client)
            .collect()
    }

    /// Runs `read` on the owners of `digest` until one has the blob (see
    /// [`OriginCluster::read`]). `None` when every owner that answered lacks it; the last error
    /// when none answered.
    pub async fn read_blob<T, F, Fut>(
        &self,
        digest: &Digest,
        read: F,
    ) -> Result<Option<T>, ApiError>
    where
        F: FnMut(OriginClient) -> Fut,
        Fut: Future<Output = Result<Option<T>, ApiError>>,
    {
        match self.origins.read(digest, read).await {
            Ok(found) => Ok(found.map(|(found, _)| found)),
            Err(failure) => match failure.last() {
                Some((_, error)) => Err(error),
                // No origin to ask: nobody has the blob.
                None => Ok(None),
            },
        }
    }

    /// The origin cluster client.
    pub fn origins(&self) -> &OriginCluster {
        &self.origins
    }

    /// Every origin member, healthy or not (readiness asks each itself).
    pub fn origin_members(&self) -> Vec<String> {
        self.origins.snapshot().members().to_vec()
    }

    pub fn build_index(&self) -> &BuildIndexClient {
        &self.build_index
    }

    /// Opens an upload session for `client` on the next origin in turn (origins failing their
    /// health checks last), or the first after it that answers. An origin at its session bound
    /// answers 429, which is passed on rather than failed over: the bound is the origin
    /// cluster's answer to this client.
    pub async fn start_session(
        &self,
        namespace: &Name,
        client: Option<IpAddr>,
    ) -> Result<UploadHandle, ApiError> {
        // The blob's digest is unknown until the upload is committed, so its owner cannot be
        // picked yet; the session's origin replicates to the owners on commit. Taking origins in
        // turn spreads the staging of pushed bytes (and their replication) over the ring.
        let first = self.next_session.fetch_add(1, Ordering::Relaxed);
        let origins = self.origins.members_in_turn(first);
        self.open_session_on(origins, namespace, client)
            .await
            .map(|(_, handle)| handle)
    }

    /// Stores a whole blob whose digest is known on the first of its owners that answers, in
    /// rendezvous order. The body is a one-shot stream, so it is sent only once an owner has
    /// opened a session for it: an owner that is down costs a refused connection, not the body.
    pub async fn put_blob(
        &self,
        digest: &Digest,
        namespace: &Name,
        client: Option<IpAddr>,
        body: reqwest::Body,
    ) -> Result<(), ApiError> {
        let owners = self.origins.owners(digest);
        let (origin, handle) = self.open_session_on(owners, namespace, client).await?;
        let result = origin
            .commit_upload(&handle.id, digest, Some(namespace), Some(body))
            .await;
        if result.is_err() {
            // A rejected or broken-off body must leave nothing staged behind; the origin may
            // already have discarded the session, so a failure here changes nothing.
            if let Err(error) = origin.cancel_upload(&handle.id, Some(namespace)).await {
                tracing::debug!(%digest, %error, "discarding a failed whole-blob upload");
            }
        }
        result
    }

    /// Opens a session for `client` (the address the origin bounds sessions by) on the first of
    /// `origins` that answers, passing over origins that fail or hang
    /// ([`OriginCluster::ask_in_turn`]); the last error when none answers.
    async fn open_session_on(
        &self,
        origins: Vec<Owner>,
        namespace: &Name,
        client: Option<IpAddr>,
    ) -> Result<(OriginClient, UploadHandle), ApiError> {
        let opened = self
            .origins
            .ask_in_turn(origins, |origin| async move {
                origin.start_upload(Some(namespace), client).await.map(Some)
            })
            .await;
        let no_members = || ApiError::Protocol {
            service: "origin".into(),
            reason: "the origin cluster has no members".into(),
        };
        match opened {
            Ok(Some((id, owner))) => Ok((owner.client, UploadHandle::new(owner.addr, id)?)),
            // Only an origin that was asked and answered nothing; `start_upload` always does.
            Ok(None) => Err(no_members()),
            Err(failure) => Err(failure.last().map_or_else(no_members, |(_, error)| error)),
        }
    }

    /// The origin holding a session and the session's id there; `None` when the handle names an
    /// origin that is not a member of the cluster.
    pub fn session<'a>(&self, handle: &'a UploadHandle) -> Option<(OriginClient, &'a str)> {
        let addr = match &handle.origin {
            SessionOrigin::Addr(addr) => addr,
            SessionOrigin::Position(position) => self.positions.get(*position)?,
        };
        Some((self.origins.member(addr)?, &handle.id))
    }
}

/// Which origin a session lives on.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SessionOrigin {
    /// Its member address.
    Addr(String),
    /// Its position in the static origin list (handles handed out before addresses were used).
    Position(usize),
}

/// The upload id a client sees: `<origin's upload id>_<origin address, base64url>`. Origin ids
/// are UUIDs (hex and `-`), so the first `_` ends them; both halves are valid Registry V2 upload
/// path characters. `<position>-<origin's upload id>` handles from earlier proxies still parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadHandle {
    origin: SessionOrigin,
    id: String,
}

/// Registry V2 upload ids Shoal accepts are at most 128 characters (`shoal_core::v2path`): a
/// 36-character UUID, `_`, and the base64 of at most this many address bytes.
pub const MAX_ORIGIN_ADDR_LEN: usize = 68;

impl UploadHandle {
    fn new(addr: String, id: String) -> Result<UploadHandle, ApiError> {
        if id.is_empty() || id.contains('_') {
            return Err(ApiError::Protocol {
                service: "origin".into(),
                reason: format!("upload id {id:?} is not a UUID"),
            });
        }
        Ok(UploadHandle {
            origin: SessionOrigin::Addr(addr),
            id,
        })
    }

    /// `None` for anything the proxy did not hand out.
    pub fn parse(s: &str) -> Option<UploadHandle> {
        if let Some((id, origin)) = s.split_once('_') {
            let addr = URL_SAFE_NO_PAD.decode(origin).ok()?;
            let addr = String::from_utf8(addr).ok()?;
            if id.is_empty() || addr.is_empty() {
                return None;
            }
            return Some(UploadHandle {
                origin: SessionOrigin::Addr(addr),
                id: id.to_owned(),
            });
        }
        let (position, id) = s.split_once('-')?;
        if position.is_empty() || !position.bytes().all(|b| b.is_ascii_digit()) || id.is_empty() {
            return None;
        }
        Some(UploadHandle {
            origin: SessionOrigin::Position(position.parse().ok()?),
            id: id.to_owned(),
        })
    }
}

impl fmt::Display for UploadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            SessionOrigin::Addr(addr) => {
                write!(f, "{}_{}", self.id, URL_SAFE_NO_PAD.encode(addr))
            }
            SessionOrigin::Position(position) => write!(f, "{position}-{}", self.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn upstreams(origins: &[&str]) -> Upstreams {
        let config = ProxyConfig {
            origins: shoal_api::OriginsConfig::fixed(origins.iter().copied()),
            ..ProxyConfig::default()
        };
        let http = shoal_service::client::builder().build().unwrap();
        let metrics = MembershipMetrics::default();
        Upstreams::start(
            http,
            &config,
            &metrics,
            CancellationToken::new(),
            &TaskTracker::new(),
        )
        .await
        .unwrap()
    }

    const ID: &str = "6f1c2a9e-0d7b-4e43-a7c5-2b1f0c9d8e11";

    #[test]
    fn handles_name_the_origin_by_address_and_reject_foreign_ids() {
        for addr in [
            "10.0.0.7:15100",
            "[fd00::7]:15100",
            "http://o-1.origins:15100",
        ] {
            let handle = UploadHandle::new(addr.into(), ID.into()).unwrap();
            let text = handle.to_string();
            assert!(text.starts_with(&format!("{ID}_")), "{text}");
            assert!(
                text.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{text} is not a Registry V2 upload id"
            );
            assert_eq!(UploadHandle::parse(&text), Some(handle));
        }
        // The longest address a handle may name still fits a Registry V2 upload id.
        let longest = UploadHandle::new("x".repeat(MAX_ORIGIN_ADDR_LEN), ID.into()).unwrap();
        assert!(longest.to_string().len() <= 128);
        assert!(UploadHandle::new("a:1".into(), "x_y".into()).is_err());
        for foreign in [
            "", "-abc", "x-abc", "3-", "abc", "+1-abc", "_YTox", "abc_", "abc_%%",
        ] {
            assert_eq!(UploadHandle::parse(foreign), None, "{foreign:?}");
        }
    }

    #[test]
    fn handles_by_position_from_earlier_proxies_still_parse() {
        let handle = UploadHandle::parse(&format!("2-{ID}")).unwrap();
        assert_eq!(handle.origin, SessionOrigin::Position(2));
        assert_eq!(handle.to_string(), format!("2-{ID}"));
        assert_eq!(UploadHandle::parse("99999999999999999999999-a"), None);
    }

    #[tokio::test]
    async fn sessions_on_unknown_origins_are_not_found() {
        let upstreams = upstreams(&["127.0.0.1:1", "127.0.0.1:2"]).await;
        let known = UploadHandle::new("127.0.0.1:2".into(), "abc".into()).unwrap();
        let (origin, id) = upstreams.session(&known).unwrap();
        assert_eq!(origin.base(), "http://127.0.0.1:2");
        assert_eq!(id, "abc");
        // An address that is not a member is never contacted.
        let stranger = UploadHandle::new("127.0.0.1:3".into(), "abc".into()).unwrap();
        assert!(upstreams.session(&stranger).is_none());
        let by_position = UploadHandle::parse("1-abc").unwrap();
        assert_eq!(
            upstreams.session(&by_position).unwrap().0.base(),
            "http://127.0.0.1:2"
        );
        assert!(
            upstreams
                .session(&UploadHandle::parse("2-abc").unwrap())
                .is_none()
        );
    }

    #[tokio::test]
    async fn sessions_open_on_the_next_origin_when_one_is_down() {
        let [down] = free_port_addrs();
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap().to_string();
        // Just enough of an origin's upload API to open a session.
        let app = axum::Router::new().route(
            "/uploads",
            axum::routing::post(|| async {
                (
                    http::StatusCode::ACCEPTED,
                    [(shoal_api::wire::UPLOAD_ID, "7b3e")],
                )
            }),
        );
        let server = tokio::spawn(async move { axum::serve(live, app).await });
        let upstreams = upstreams(&[&down, &live_addr]).await;
        let name = Name::parse("team/app").unwrap();
        let handle = upstreams.start_session(&name, None).await;
        server.abort();
        let handle = handle.unwrap();
        assert_eq!(
            handle,
            UploadHandle::new(live_addr, "7b3e".into()).unwrap(),
            "origin 0 is down"
        );
    }

    /// Addresses nothing listens on: bound, then released.
    fn free_port_addrs<const N: usize>() -> [String; N] {
        let listeners: Vec<std::net::TcpListener> = (0..N)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        std::array::from_fn(|i| listeners[i].local_addr().unwrap().to_string())
    }
}
