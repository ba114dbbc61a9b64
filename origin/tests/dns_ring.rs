//! An origin ring whose members come from DNS: owners follow the records as they change.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::dnsmasq::Dnsmasq;
use common::{TestOrigin, blob};
use shoal_core::{Digest, rendezvous};
use shoal_membership::{DnsConfig, HealthConfig, MembersConfig, Scheme, Source};
use tokio::net::TcpListener;

const NAME: &str = "origin.shoal.test";
const MEMBERS: &str = "shoal_membership_members{group=\"origins\"}";

fn hosts(last_octets: &[u8]) -> String {
    last_octets
        .iter()
        .map(|o| format!("127.0.0.{o} {NAME}\n"))
        .collect()
}

#[tokio::test]
async fn the_ring_follows_dns_records_and_a_new_member_fills_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dns = Dnsmasq::start(dir.path(), &hosts(&[1, 2]));

    // Three origins on 127.0.0.1-3, one port, as pods behind a headless Service.
    let first = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = first.local_addr().expect("addr").port();
    let mut listeners = vec![first];
    for last in 2..=3 {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), port);
        listeners.push(TcpListener::bind(addr).await.expect("bind"));
    }
    let cluster_members = MembersConfig {
        source: Source::Dns(DnsConfig {
            name: NAME.into(),
            port,
            scheme: Scheme::Http,
            interval: Duration::from_millis(100),
            nameserver: Some(dns.addr()),
        }),
        health: HealthConfig {
            interval: Duration::from_millis(100),
            ..HealthConfig::default()
        },
    };
    let mut ring = Vec::new();
    for http in listeners {
        let advertise = http.local_addr().expect("addr").to_string();
        let origins = cluster_members.clone();
        ring.push(
            TestOrigin::start_on(http, move |config| {
                config.cluster.origins = origins.into();
                config.cluster.advertise = advertise;
                config.cluster.replicas = 3;
                // Every owner holds a blob before its PUT returns, so absence is meaningful.
                config.cluster.write_quorum = 3;
            })
            .await,
        );
    }
    for origin in &ring {
        origin.wait_metric(MEMBERS, 2.0).await;
    }

    // With two members, a blob has two owners: origin 3 is not one of them.
    let before = blob(100_000, 1);
    let digest = Digest::of(&before);
    ring[0]
        .api()
        .put_blob(&digest, None, before.clone().into())
        .await
        .expect("put");
    assert!(ring[1].store_blob(&digest).exists());
    assert!(!ring[2].store_blob(&digest).exists());

    // A third record makes origin 3 an owner: new blobs reach it, and the old one fills in
    // from its peers on first read (no backend of origin 3 has it).
    dns.set_hosts(&hosts(&[1, 2, 3]));
    for origin in &ring {
        origin.wait_metric(MEMBERS, 3.0).await;
    }
    let after = blob(100_000, 2);
    let digest_after = Digest::of(&after);
    ring[0]
        .api()
        .put_blob(&digest_after, None, after.clone().into())
        .await
        .expect("put");
    assert!(ring[2].store_blob(&digest_after).exists());
    let response = ring[2]
        .api()
        .get_blob(&digest, None, None)
        .await
        .expect("filled in from a peer");
    assert_eq!(response.bytes().await.expect("body"), before);
    assert!(!ring[2].backend_blob(&digest).exists());

    // A removed record removes the owner: a blob whose first-ranked owner among all three is
    // origin 2 now goes to origins 1 and 3 only.
    dns.set_hosts(&hosts(&[1, 3]));
    for origin in &ring {
        origin.wait_metric(MEMBERS, 2.0).await;
    }
    let removed = format!("127.0.0.2:{port}");
    let all = [
        format!("127.0.0.1:{port}"),
        removed.clone(),
        format!("127.0.0.3:{port}"),
    ];
    let (bytes, digest) = (1..=255u8)
        .map(|seed| {
            let bytes = blob(10_000, seed);
            let digest = Digest::of(&bytes);
            (bytes, digest)
        })
        .find(|(_, digest)| *rendezvous::owners(digest, &all, 1)[0] == removed)
        .expect("some blob ranks origin 2 first");
    ring[0]
        .api()
        .put_blob(&digest, None, bytes.into())
        .await
        .expect("put");
    assert!(ring[2].store_blob(&digest).exists());
    assert!(!ring[1].store_blob(&digest).exists());
    for origin in ring {
        origin.stop().await;
    }
}
