//! Membership against real servers: a dnsmasq on a loopback port serving the member records, and
//! HTTP servers answering `/health` on 127.0.0.x addresses.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::registry::Registry;
use shoal_membership::{
    DnsConfig, HealthConfig, MembersConfig, Membership, MembershipMetrics, Scheme, Snapshot, Source,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use dnsmasq::Dnsmasq;

#[path = "../../origin/tests/common/dnsmasq.rs"]
mod dnsmasq;

const NAME: &str = "origin.shoal.test";

/// An HTTP server whose `/health` answers 200 or 503 as told.
struct HealthServer {
    addr: SocketAddr,
    failing: Arc<AtomicBool>,
    shutdown: CancellationToken,
}

impl HealthServer {
    async fn start(addr: SocketAddr) -> HealthServer {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let failing = Arc::new(AtomicBool::new(false));
        let flag = failing.clone();
        let app = Router::new().route(
            "/health",
            get(move || {
                let failing = flag.load(Ordering::SeqCst);
                async move {
                    if failing {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        );
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .expect("serve");
        });
        HealthServer {
            addr,
            failing,
            shutdown,
        }
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Health servers on 127.0.0.1..=n, all on one port (as pods behind one Service are).
async fn health_servers(n: u8) -> Vec<HealthServer> {
    let first = HealthServer::start("127.0.0.1:0".parse().unwrap()).await;
    let port = first.addr.port();
    let mut servers = vec![first];
    for last in 2..=n {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
        servers.push(HealthServer::start(SocketAddr::new(ip, port)).await);
    }
    servers
}

fn quick_health() -> HealthConfig {
    HealthConfig {
        interval: Duration::from_millis(50),
        timeout: Duration::from_secs(1),
        fall: 2,
        rise: 1,
    }
}

/// Waits (at most 10 s) for a snapshot that satisfies `done`.
async fn wait_for(
    membership: &mut Membership,
    what: &str,
    done: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let wait = async {
        let mut snapshot = membership.snapshot();
        while !done(&snapshot) {
            snapshot = membership.changed().await.expect("membership stopped");
        }
        snapshot
    };
    match tokio::time::timeout(Duration::from_secs(10), wait).await {
        Ok(snapshot) => snapshot,
        Err(_) => panic!(
            "timed out waiting for {what}; last snapshot {:?}",
            membership.snapshot()
        ),
    }
}

fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encode");
    text
}

fn hosts(last_octets: &[u8]) -> String {
    last_octets
        .iter()
        .map(|o| format!("127.0.0.{o} {NAME}\n"))
        .collect()
}

#[tokio::test]
async fn members_follow_the_dns_records_and_outlive_a_dns_outage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let servers = health_servers(3).await;
    let port = servers[0].addr.port();
    let member = |o: u8| format!("127.0.0.{o}:{port}");
    let dns = Dnsmasq::start(dir.path(), &hosts(&[2, 1]));

    let config = MembersConfig {
        source: Source::Dns(DnsConfig {
            name: NAME.into(),
            port,
            scheme: Scheme::Http,
            interval: Duration::from_millis(100),
            nameserver: Some(dns.addr()),
        }),
        health: quick_health(),
    };
    let mut registry = Registry::default();
    let metrics = MembershipMetrics::register(&mut registry);
    let shutdown = CancellationToken::new();
    let http = client();
    let mut membership = Membership::start(
        "origins",
        &config,
        http,
        &metrics,
        shutdown.clone(),
        &TaskTracker::new(),
    )
    .await
    .expect("start");

    // Resolved before `start` returned, sorted.
    assert_eq!(membership.snapshot().members(), [member(1), member(2)]);
    assert!(encode(&registry).contains("membership_members{group=\"origins\"} 2\n"));

    // Members that serve TLS are written as a static list of them would be.
    let mut https = config.clone();
    if let Source::Dns(dns) = &mut https.source {
        dns.scheme = Scheme::Https;
    }
    let tls_group = Membership::start(
        "tls-origins",
        &https,
        client(),
        &metrics,
        shutdown.clone(),
        &TaskTracker::new(),
    )
    .await
    .expect("start");
    assert_eq!(
        tls_group.snapshot().members(),
        [
            format!("https://{}", member(1)),
            format!("https://{}", member(2))
        ]
    );

    dns.set_hosts(&hosts(&[1, 2, 3]));
    wait_for(&mut membership, "the added record", |s| {
        s.members() == [member(1), member(2), member(3)]
    })
    .await;
    dns.set_hosts(&hosts(&[3, 1]));
    let snapshot = wait_for(&mut membership, "the removed record", |s| {
        s.members() == [member(1), member(3)]
    })
    .await;
    assert_eq!(snapshot.healthy().count(), 2);

    // An answer without our name keeps the last good members, and so does a dead DNS server.
    dns.set_hosts("127.0.0.9 other.shoal.test\n");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(membership.snapshot().members(), [member(1), member(3)]);
    drop(dns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(membership.snapshot().members(), [member(1), member(3)]);
    let text = encode(&registry);
    assert!(
        text.contains("membership_members{group=\"origins\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("membership_healthy{group=\"origins\"} 2\n"),
        "{text}"
    );

    // A DNS server that comes back is followed again.
    let dns = Dnsmasq::start(dir.path(), &hosts(&[2]));
    let config = MembersConfig {
        source: Source::Dns(DnsConfig {
            name: NAME.into(),
            port,
            scheme: Scheme::Http,
            interval: Duration::from_millis(100),
            nameserver: Some(dns.addr()),
        }),
        health: quick_health(),
    };
    let mut restarted = Membership::start(
        "origins",
        &config,
        client(),
        &metrics,
        shutdown.clone(),
        &TaskTracker::new(),
    )
    .await
    .expect("start");
    wait_for(&mut restarted, "a restarted DNS server", |s| {
        s.members() == [member(2)]
    })
    .await;
    shutdown.cancel();
}

#[tokio::test]
async fn a_member_whose_health_check_fails_turns_unhealthy_and_recovers() {
    let mut servers = health_servers(2).await;
    let members: Vec<String> = servers.iter().map(|s| s.addr.to_string()).collect();
    let config = MembersConfig {
        source: Source::Static(members.clone()),
        health: quick_health(),
    };
    let mut registry = Registry::default();
    let metrics = MembershipMetrics::register(&mut registry);
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut membership = Membership::start(
        "origins",
        &config,
        client(),
        &metrics,
        shutdown.clone(),
        &tasks,
    )
    .await
    .expect("start");
    assert_eq!(membership.snapshot().members(), members);
    assert!(membership.snapshot().is_healthy(&members[1]));

    servers[1].failing.store(true, Ordering::SeqCst);
    let snapshot = wait_for(
        &mut membership,
        "the failing member to turn unhealthy",
        |s| !s.is_healthy(&members[1]),
    )
    .await;
    assert!(snapshot.is_healthy(&members[0]));
    assert_eq!(snapshot.healthy().collect::<Vec<_>>(), [&members[0]]);
    assert_eq!(
        snapshot.members(),
        members,
        "an unhealthy member stays a member"
    );
    let text = encode(&registry);
    assert!(
        text.contains("membership_healthy{group=\"origins\"} 1\n"),
        "{text}"
    );

    servers[1].failing.store(false, Ordering::SeqCst);
    wait_for(&mut membership, "the member to recover", |s| {
        s.is_healthy(&members[1])
    })
    .await;

    // A member that stops answering at all (its server is gone) is unhealthy too.
    let gone = servers.remove(0);
    drop(gone);
    wait_for(
        &mut membership,
        "the stopped member to turn unhealthy",
        |s| !s.is_healthy(&members[0]),
    )
    .await;

    // The group's task ends at shutdown although `membership` is still held.
    shutdown.cancel();
    tasks.close();
    tokio::time::timeout(Duration::from_secs(10), tasks.wait())
        .await
        .expect("the membership task ends at shutdown");
}

fn client() -> reqwest::Client {
    shoal_service::client::builder().build().expect("client")
}
