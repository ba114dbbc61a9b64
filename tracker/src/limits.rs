//! Announce-rate limits: a token bucket per peer id and one per source IP address (governor's
//! keyed GCRA), so a flood from one client is refused cheaply before it reaches the peer store.
//! Buckets of keys that have gone quiet are dropped by [`AnnounceLimiter::prune`], which the
//! tracker runs every [`PRUNE_INTERVAL`], so made-up peer ids cannot grow the maps for long.

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use shoal_core::PeerId;

use crate::config::{LimitsConfig, RateConfig};

/// How often buckets back at full burst are forgotten. New peer ids are limited by the address
/// bucket first, so at most `announce_per_address.rate` new keys per address appear in between.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(10);

type Keyed<K, C> = RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Which bucket refused an announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitedBy {
    Peer,
    Address,
}

impl LimitedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitedBy::Peer => "peer",
            LimitedBy::Address => "address",
        }
    }
}

/// An announce over its rate: who limited it, and when the next one would pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    pub by: LimitedBy,
    pub retry_after: Duration,
}

/// The per-peer announce buckets and the per-address buckets of announces and metainfo requests.
pub struct AnnounceLimiter<C: Clock = DefaultClock> {
    peers: Keyed<PeerId, C>,
    addresses: Keyed<IpAddr, C>,
}

impl AnnounceLimiter {
    pub fn new(limits: &LimitsConfig) -> Self {
        Self::with_clock(limits, DefaultClock::default())
    }
}

impl<C: Clock + Clone> AnnounceLimiter<C> {
    /// Limits on `clock` (tests pass a fake one).
    pub fn with_clock(limits: &LimitsConfig, clock: C) -> Self {
        AnnounceLimiter {
            peers: RateLimiter::dashmap_with_clock(quota(limits.announce_per_peer), clock.clone()),
            addresses: RateLimiter::dashmap_with_clock(quota(limits.announce_per_address), clock),
        }
    }

    /// Takes one announce from `from`'s bucket (when the source address is known), then from
    /// `peer`'s. The address goes first so that an address over its limit adds no peer keys.
    pub fn check(&self, peer: &PeerId, from: Option<IpAddr>) -> Result<(), Limited> {
        self.check_address(from)?;
        self.peers.check_key(peer).map_err(|not_until| Limited {
            by: LimitedBy::Peer,
            retry_after: not_until.wait_time_from(self.peers.clock().now()),
        })
    }

    /// Takes one request from `from`'s bucket alone: a metainfo request names no peer, and each
    /// one for a made-up digest costs the origins a lookup.
    pub fn check_address(&self, from: Option<IpAddr>) -> Result<(), Limited> {
        let Some(ip) = from else {
            return Ok(());
        };
        self.addresses
            .check_key(&address_key(ip))
            .map_err(|not_until| Limited {
                by: LimitedBy::Address,
                retry_after: not_until.wait_time_from(self.addresses.clock().now()),
            })
    }

    /// Forgets every bucket that is back at its full burst (indistinguishable from a new one).
    pub fn prune(&self) {
        self.peers.retain_recent();
        self.peers.shrink_to_fit();
        self.addresses.retain_recent();
        self.addresses.shrink_to_fit();
    }

    /// Buckets held: peer ids and addresses.
    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        (self.peers.len(), self.addresses.len())
    }
}

/// The address bucket of `ip`: IPv4 (also when mapped into IPv6) by address, IPv6 by its /64,
/// since one host commonly holds a whole /64 and could otherwise rotate through it.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = v6.to_bits() & (u128::MAX << 64);
            IpAddr::V6(Ipv6Addr::from_bits(prefix))
        }
        v4 => v4,
    }
}

fn quota(limit: RateConfig) -> Quota {
    // Validated non-zero in `LimitsConfig::validate`; a zero here would be a bug, not an input.
    let nonzero = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(nonzero(limit.rate)).allow_burst(nonzero(limit.burst))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use governor::clock::FakeRelativeClock;

    use super::*;

    fn limits(peer: (u32, u32), address: (u32, u32)) -> LimitsConfig {
        LimitsConfig {
            announce_per_peer: RateConfig {
                rate: peer.0,
                burst: peer.1,
            },
            announce_per_address: RateConfig {
                rate: address.0,
                burst: address.1,
            },
            ..LimitsConfig::default()
        }
    }

    fn id(s: &str) -> PeerId {
        PeerId::parse(s).expect("peer id")
    }

    const HOME: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    const AWAY: Option<IpAddr> = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));

    #[test]
    fn a_peer_gets_its_burst_then_its_rate_and_others_are_unaffected() {
        let clock = FakeRelativeClock::default();
        let limiter = AnnounceLimiter::with_clock(&limits((2, 3), (1000, 1000)), clock.clone());
        for _ in 0..3 {
            limiter.check(&id("a"), HOME).expect("within the burst");
        }
        let limited = limiter.check(&id("a"), HOME).expect_err("burst spent");
        assert_eq!(limited.by, LimitedBy::Peer);
        assert_eq!(
            limited.retry_after,
            Duration::from_millis(500),
            "2 per second"
        );
        limiter
            .check(&id("b"), HOME)
            .expect("another peer has its own bucket");

        clock.advance(Duration::from_millis(500));
        limiter.check(&id("a"), HOME).expect("one token back");
        assert!(limiter.check(&id("a"), HOME).is_err());
    }

    #[test]
    fn made_up_peer_ids_from_one_address_share_its_bucket() {
        let clock = FakeRelativeClock::default();
        let limiter = AnnounceLimiter::with_clock(&limits((100, 100), (10, 5)), clock);
        for i in 0..5 {
            limiter
                .check(&id(&format!("fake-{i}")), HOME)
                .expect("within the address burst");
        }
        let limited = limiter
            .check(&id("fake-5"), HOME)
            .expect_err("address spent");
        assert_eq!(limited.by, LimitedBy::Address);
        assert_eq!(limited.retry_after, Duration::from_millis(100));
        limiter
            .check(&id("fake-5"), AWAY)
            .expect("another address is served");
        assert_eq!(limiter.len(), (6, 2), "a refused announce adds no peer key");
        limiter
            .check(&id("fake-6"), None)
            .expect("an unknown source is limited by peer id only");
    }

    #[test]
    fn ipv6_hosts_are_limited_by_their_64_and_mapped_ipv4_as_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(
            address_key(ip("2001:db8:1:2:aaaa::1")),
            address_key(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            address_key(ip("2001:db8:1:2::1")),
            address_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(address_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(address_key(ip("10.0.0.1")), ip("10.0.0.1"));
    }

    #[test]
    fn pruning_forgets_buckets_that_refilled() {
        let clock = FakeRelativeClock::default();
        let limiter = AnnounceLimiter::with_clock(&limits((10, 10), (10, 10)), clock.clone());
        limiter.check(&id("a"), HOME).expect("first");
        limiter.prune();
        assert_eq!(limiter.len(), (1, 1), "still refilling");
        clock.advance(Duration::from_secs(1));
        limiter.prune();
        assert_eq!(limiter.len(), (0, 0));
    }
}
