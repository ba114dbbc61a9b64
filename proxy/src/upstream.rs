//! Which internal node serves a request. Blob operations go to the digest's rendezvous owners among
//! the origins; an upload session lives on the origin chosen when it was opened, and the handle the
//! client gets back names that origin, so any proxy replica can route the session's later requests.
//! Reads fail over: they try the digest's owners in rendezvous order until one has the blob.
//! Writes fail over too: a session opens on the next origin in turn that answers, so one origin down
//! does not stop pushes.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use shoal_api::{ApiError, BuildIndexClient, OriginClient};
use shoal_core::{Digest, Name, rendezvous};
use shoal_membership::{Membership, MembershipError, MembershipMetrics};
use shoal_service::{CancellationToken, TaskTracker};

use crate::config::ProxyConfig;

/// Clients for every origin (in config order) and for the build-index.
#[derive(Debug, Clone)]
pub struct Upstreams {
    addresses: Vec<String>,
    origins: Vec<OriginClient>,
    replicas: usize,
    /// Health checks of the origins: owners failing them are tried last.
    members: Membership,
    build_index: BuildIndexClient,
    /// Where the next upload session starts looking, so sessions spread over the origins.
    next_session: Arc<AtomicUsize>,
}

impl Upstreams {
    /// `config` must have passed [`ProxyConfig::validate`], so the origin list is static and not
    /// empty. Health checks run on `tasks` until `shutdown`.
    pub async fn start(
        http: reqwest::Client,
        config: &ProxyConfig,
        metrics: &MembershipMetrics,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Self, MembershipError> {
        let addresses = config.origins.static_members().unwrap_or_default().to_vec();
        let origins = addresses
            .iter()
            .map(|address| OriginClient::new(http.clone(), address))
            .collect();
        let members = Membership::start(
            "origins",
            &config.origins,
            http.clone(),
            metrics,
            shutdown,
            tasks,
        )
        .await?;
        Ok(Self {
            addresses,
            origins,
            replicas: config.replicas,
            members,
            build_index: BuildIndexClient::new(http, &config.build_index),
            next_session: Arc::default(),
        })
    }

    /// The owners of `digest`, healthy ones first, otherwise most preferred first.
    pub fn owners(&self, digest: &Digest) -> Vec<&OriginClient> {
        self.owner_slots(digest)
            .into_iter()
            .map(|slot| &self.origins[slot])
            .collect()
    }

    /// The config positions of the owners of `digest`, healthy ones first, otherwise most
    /// preferred first.
    fn owner_slots(&self, digest: &Digest) -> Vec<usize> {
        let owners = rendezvous::owners(digest, &self.addresses, self.replicas);
        self.members
            .snapshot()
            .healthy_first(owners)
            .into_iter()
            .filter_map(|owner| self.addresses.iter().position(|a| a == owner))
            .collect()
    }

    /// Runs `read` on the owners of `digest` in rendezvous order and returns the first blob
    /// found. An owner that is unreachable or failing, or that lacks the blob (it may have
    /// joined after the blob was written), passes the read on to the next. `None` when every
    /// owner that answered lacks it; the last error when none answered.
    pub async fn read_blob<'a, T, F, Fut>(
        &'a self,
        digest: &Digest,
        mut read: F,
    ) -> Result<Option<T>, ApiError>
    where
        F: FnMut(&'a OriginClient) -> Fut,
        Fut: Future<Output = Result<Option<T>, ApiError>>,
    {
        let mut answered = false;
        let mut failure = None;
        for origin in self.owners(digest) {
            match read(origin).await {
                Ok(Some(found)) => return Ok(Some(found)),
                Ok(None) => answered = true,
                Err(error) if fails_over(&error) => {
                    tracing::warn!(%digest, origin = origin.base(), %error, "origin read failed; trying the next owner");
                    failure = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        match failure {
            Some(error) if !answered => Err(error),
            _ => Ok(None),
        }
    }

    pub fn build_index(&self) -> &BuildIndexClient {
        &self.build_index
    }

    /// Opens an upload session on the next origin in turn, or the first after it that answers.
    pub async fn start_session(&self, namespace: &Name) -> Result<UploadHandle, ApiError> {
        // The blob's digest is unknown until the upload is committed, so its owner cannot be
        // picked yet; the session's origin replicates to the owners on commit. Taking origins in
        // turn spreads the staging of pushed bytes (and their replication) over the ring.
        let count = self.origins.len();
        let first = self.next_session.fetch_add(1, Ordering::Relaxed) % count;
        self.open_session((0..count).map(|i| (first + i) % count), namespace)
            .await
    }

    /// Stores a whole blob whose digest is known on the first of its owners that answers, in
    /// rendezvous order. The body is a one-shot stream, so it is sent only once an owner has
    /// opened a session for it: an owner that is down costs a refused connection, not the body.
    pub async fn put_blob(
        &self,
        digest: &Digest,
        namespace: &Name,
        body: reqwest::Body,
    ) -> Result<(), ApiError> {
        let handle = self
            .open_session(self.owner_slots(digest), namespace)
            .await?;
        let origin = &self.origins[handle.slot];
        let result = origin
            .commit_upload(&handle.id, digest, Some(namespace), Some(body))
            .await;
        if result.is_err() {
            // A rejected or broken-off body must leave nothing staged behind; the origin may
            // already have discarded the session, so a failure here changes nothing.
            if let Err(error) = origin.cancel_upload(&handle.id).await {
                tracing::debug!(%digest, %error, "discarding a failed whole-blob upload");
            }
        }
        result
    }

    /// Opens a session on the first origin of `slots` that answers; the last error when none
    /// does.
    async fn open_session(
        &self,
        slots: impl IntoIterator<Item = usize>,
        namespace: &Name,
    ) -> Result<UploadHandle, ApiError> {
        let mut failure = None;
        for slot in slots {
            let origin = &self.origins[slot];
            match origin.start_upload(Some(namespace)).await {
                Ok(id) => return Ok(UploadHandle { slot, id }),
                Err(error) if fails_over(&error) => {
                    tracing::warn!(origin = origin.base(), %error, "origin cannot open an upload; trying the next");
                    failure = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(failure.expect("the origin list is validated to be non-empty"))
    }

    /// The origin holding a session and the session's id there; `None` when the handle names an
    /// origin this proxy does not know.
    pub fn session<'a>(&'a self, handle: &'a UploadHandle) -> Option<(&'a OriginClient, &'a str)> {
        let origin = self.origins.get(handle.slot)?;
        Some((origin, &handle.id))
    }
}

/// Whether a failed request is worth repeating on another origin: the origin was unreachable,
/// broke off, or failed on its side. A client error (a bad range) would fail the same everywhere.
fn fails_over(error: &ApiError) -> bool {
    match error {
        ApiError::Transport { .. } | ApiError::Protocol { .. } => true,
        ApiError::Remote { status, .. } => *status >= 500,
        ApiError::RangeNotSatisfiable { .. } | ApiError::TooLarge { .. } => false,
    }
}

/// The upload id a client sees: `<origin slot>-<origin's upload id>`. It is also a valid Registry
/// V2 upload path segment, as origin ids are UUIDs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadHandle {
    slot: usize,
    id: String,
}

impl UploadHandle {
    /// `None` for anything the proxy did not hand out.
    pub fn parse(s: &str) -> Option<UploadHandle> {
        let (slot, id) = s.split_once('-')?;
        if slot.is_empty() || !slot.bytes().all(|b| b.is_ascii_digit()) || id.is_empty() {
            return None;
        }
        Some(UploadHandle {
            slot: slot.parse().ok()?,
            id: id.to_owned(),
        })
    }
}

impl fmt::Display for UploadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.slot, self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn upstreams(origins: &[&str]) -> Upstreams {
        let config = ProxyConfig {
            origins: shoal_membership::MembersConfig::fixed(origins.iter().copied()),
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

    #[test]
    fn handles_round_trip_and_reject_foreign_ids() {
        let handle = UploadHandle {
            slot: 2,
            id: "6f1c2a9e-0d7b-4e43-a7c5-2b1f0c9d8e11".into(),
        };
        let text = handle.to_string();
        assert_eq!(text, "2-6f1c2a9e-0d7b-4e43-a7c5-2b1f0c9d8e11");
        assert_eq!(UploadHandle::parse(&text), Some(handle));
        for foreign in [
            "",
            "-abc",
            "x-abc",
            "3-",
            "abc",
            "+1-abc",
            "99999999999999999999999-a",
        ] {
            assert_eq!(UploadHandle::parse(foreign), None, "{foreign:?}");
        }
    }

    #[tokio::test]
    async fn sessions_on_unknown_origins_are_not_found() {
        let upstreams = upstreams(&["127.0.0.1:1", "127.0.0.1:2"]).await;
        let known = UploadHandle::parse("1-abc").unwrap();
        let (origin, id) = upstreams.session(&known).unwrap();
        assert_eq!(origin.base(), "http://127.0.0.1:2");
        assert_eq!(id, "abc");
        assert!(
            upstreams
                .session(&UploadHandle::parse("2-abc").unwrap())
                .is_none()
        );
    }

    fn failure(status: u16) -> ApiError {
        ApiError::Remote {
            service: "origin".into(),
            status,
            code: None,
            message: "test".into(),
        }
    }

    #[tokio::test]
    async fn reads_fail_over_in_rendezvous_order() {
        let addresses = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"];
        let upstreams = upstreams(&addresses).await;
        let digest = Digest::of(b"layer");
        let ranked: Vec<String> = rendezvous::owners(&digest, &addresses, 3)
            .iter()
            .map(|a| format!("http://{a}"))
            .collect();
        let asked = std::sync::Mutex::new(Vec::new());
        // The first owner is down, the second lacks the blob, the third has it.
        let found = upstreams
            .read_blob(&digest, |origin| {
                let base = origin.base().to_owned();
                asked.lock().unwrap().push(base.clone());
                let ranked = ranked.clone();
                async move {
                    match ranked.iter().position(|r| *r == base) {
                        Some(0) => Err(failure(503)),
                        Some(1) => Ok(None),
                        _ => Ok(Some(base)),
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(found.as_ref(), Some(&ranked[2]));
        assert_eq!(
            *asked.lock().unwrap(),
            ranked,
            "only the R owners, in order"
        );

        // Absent wherever an owner answered: a miss, not an error.
        let missing = upstreams
            .read_blob(&digest, |origin| {
                let first = origin.base() == ranked[0];
                async move {
                    if first {
                        Err(failure(502))
                    } else {
                        Ok(None::<()>)
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(missing, None);

        // No owner answered: the error.
        let down = upstreams
            .read_blob(&digest, |_| async { Err::<Option<()>, _>(failure(503)) })
            .await;
        assert!(matches!(down, Err(ApiError::Remote { status: 503, .. })));

        // A client error is the same on every owner: no failover.
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let bad = upstreams
            .read_blob(&digest, |_| {
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async { Err::<Option<()>, _>(failure(400)) }
            })
            .await;
        assert!(bad.is_err());
        assert_eq!(calls.into_inner(), 1);
    }

    #[tokio::test]
    async fn blobs_go_to_their_rendezvous_owners_in_order() {
        let addresses = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"];
        let upstreams = upstreams(&addresses).await;
        for byte in 0..32u8 {
            let digest = Digest::of(&[byte]);
            let owners: Vec<String> = rendezvous::owners(&digest, &addresses, 3)
                .iter()
                .map(|owner| format!("http://{owner}"))
                .collect();
            let tried: Vec<&str> = upstreams
                .owner_slots(&digest)
                .into_iter()
                .map(|slot| upstreams.origins[slot].base())
                .collect();
            assert_eq!(tried, owners);
        }
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
        let handle = upstreams.start_session(&name).await;
        server.abort();
        assert_eq!(handle.unwrap().to_string(), "1-7b3e", "origin 0 is down");
    }

    #[tokio::test]
    async fn owners_failing_health_checks_are_tried_last() {
        let [down] = free_port_addrs();
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap().to_string();
        let app = axum::Router::new().route("/health", axum::routing::get(|| async { "ok" }));
        let server = tokio::spawn(async move { axum::serve(live, app).await });
        let config = ProxyConfig {
            origins: shoal_membership::MembersConfig {
                source: shoal_membership::Source::Static(vec![down.clone(), live_addr.clone()]),
                health: shoal_membership::HealthConfig {
                    interval: std::time::Duration::from_millis(20),
                    ..Default::default()
                },
            },
            replicas: 2,
            ..ProxyConfig::default()
        };
        let http = shoal_service::client::builder().build().unwrap();
        let shutdown = CancellationToken::new();
        let upstreams = Upstreams::start(
            http,
            &config,
            &MembershipMetrics::default(),
            shutdown.clone(),
            &TaskTracker::new(),
        )
        .await
        .unwrap();
        let digest = (0..=255u8)
            .map(|byte| Digest::of(&[byte]))
            .find(|digest| *rendezvous::owners(digest, &[&down, &live_addr], 1)[0] == &down)
            .unwrap();
        // Rendezvous ranks the dead origin first; once its health checks fail it goes last.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while upstreams.members.snapshot().is_healthy(&down) {
            assert!(
                std::time::Instant::now() < deadline,
                "never marked unhealthy"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(upstreams.owner_slots(&digest), [1, 0]);
        let first = upstreams
            .read_blob(&digest, |origin| {
                let base = origin.base().to_owned();
                async move { Ok(Some(base)) }
            })
            .await
            .unwrap();
        assert_eq!(first, Some(format!("http://{live_addr}")));
        shutdown.cancel();
        server.abort();
    }

    /// Addresses nothing listens on: bound, then released.
    fn free_port_addrs<const N: usize>() -> [String; N] {
        let listeners: Vec<std::net::TcpListener> = (0..N)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        std::array::from_fn(|i| listeners[i].local_addr().unwrap().to_string())
    }
}
