//! The in-memory peer store: a map from digest to its swarm, each member with its expiry time,
//! and a count of the records held so the caps cost nothing to check.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use shoal_core::{Digest, PeerId};

use super::{Admission, Announced, PeerRecord, PeerStore, RecordLimits, StoreError};

/// A full store sweeps expired records before refusing a new one, but at most this often: a
/// sweep is one pass over every record, and a flood at the cap must not pay it per announce.
const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Swarms kept in this process, forgotten on restart (peers rebuild them within one announce
/// interval).
#[derive(Debug)]
pub struct MemoryStore {
    ttl: Duration,
    limits: RecordLimits,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    swarms: HashMap<Digest, HashMap<PeerId, Member>>,
    /// Members over every swarm, expired ones included until they are dropped.
    records: usize,
    /// When every swarm was last swept of expired members.
    last_sweep: Instant,
}

#[derive(Debug)]
struct Member {
    addr: String,
    complete: bool,
    expires: Instant,
}

impl MemoryStore {
    pub fn new(ttl: Duration, limits: RecordLimits) -> Self {
        MemoryStore {
            ttl,
            limits,
            inner: Mutex::new(Inner {
                swarms: HashMap::new(),
                records: 0,
                last_sweep: Instant::now(),
            }),
        }
    }

    /// Number of swarms held, expired ones included until the next sweep.
    #[cfg(test)]
    fn swarm_count(&self) -> usize {
        self.lock().swarms.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps in a consistent state; keep serving.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl PeerStore for MemoryStore {
    async fn announce(
        &self,
        digest: &Digest,
        peer: &PeerRecord,
        origin: bool,
    ) -> Result<Announced, StoreError> {
        Ok(self.announce_at(digest, peer, origin, Instant::now()))
    }
}

impl MemoryStore {
    /// [`PeerStore::announce`] at time `now` (tests pass their own clock).
    fn announce_at(
        &self,
        digest: &Digest,
        peer: &PeerRecord,
        origin: bool,
        now: Instant,
    ) -> Announced {
        let mut inner = self.lock();
        // Swarms nobody announces any more would otherwise stay forever: sweep them all once
        // per TTL, which costs one pass over the map per TTL however many announces arrive.
        if now.saturating_duration_since(inner.last_sweep) >= self.ttl {
            inner.sweep(now);
        }
        inner.expire_swarm(digest, now);
        let known = inner
            .swarms
            .get(digest)
            .is_some_and(|swarm| swarm.contains_key(&peer.id));
        let admission = if known {
            Admission::Recorded
        } else {
            if inner.records >= self.limits.total
                && now.saturating_duration_since(inner.last_sweep) >= FULL_SWEEP_INTERVAL
            {
                inner.sweep(now);
            }
            let members = inner.swarms.get(digest).map_or(0, HashMap::len);
            if !origin && members >= self.limits.per_swarm {
                Admission::SwarmFull
            } else if inner.records >= self.limits.total {
                Admission::StoreFull
            } else {
                Admission::Recorded
            }
        };
        if admission == Admission::Recorded {
            let member = Member {
                addr: peer.addr.clone(),
                complete: peer.complete,
                expires: now + self.ttl,
            };
            if inner
                .swarms
                .entry(*digest)
                .or_default()
                .insert(peer.id.clone(), member)
                .is_none()
            {
                inner.records += 1;
            }
        }
        let swarm = inner.swarms.get(digest).map_or_else(Vec::new, |swarm| {
            swarm
                .iter()
                .map(|(id, member)| PeerRecord {
                    id: id.clone(),
                    addr: member.addr.clone(),
                    complete: member.complete,
                })
                .collect()
        });
        Announced {
            swarm,
            admission,
            records: inner.records,
        }
    }
}

impl Inner {
    /// Drops every expired member, and every swarm left empty.
    fn sweep(&mut self, now: Instant) {
        self.swarms.retain(|_, swarm| {
            swarm.retain(|_, member| member.expires > now);
            !swarm.is_empty()
        });
        self.swarms.shrink_to_fit();
        self.records = self.swarms.values().map(HashMap::len).sum();
        self.last_sweep = now;
    }

    /// Drops the expired members of `digest`'s swarm, and the swarm if that empties it.
    fn expire_swarm(&mut self, digest: &Digest, now: Instant) {
        let Some(swarm) = self.swarms.get_mut(digest) else {
            return;
        };
        let before = swarm.len();
        swarm.retain(|_, member| member.expires > now);
        let after = swarm.len();
        if after == 0 {
            self.swarms.remove(digest);
        }
        self.records -= before - after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOMY: RecordLimits = RecordLimits {
        per_swarm: 1_000,
        total: 1_000,
    };

    fn peer(id: &str, complete: bool) -> PeerRecord {
        PeerRecord {
            id: PeerId::parse(id).expect("peer id"),
            addr: format!("{id}.example:16001"),
            complete,
        }
    }

    fn ids(mut peers: Vec<PeerRecord>) -> Vec<String> {
        peers.sort_by(|a, b| a.id.cmp(&b.id));
        peers.into_iter().map(|p| p.id.to_string()).collect()
    }

    #[test]
    fn swarms_are_per_digest_and_a_reannounce_replaces_the_record() {
        let store = MemoryStore::new(Duration::from_secs(30), ROOMY);
        let now = Instant::now();
        let (one, two) = (Digest::of(b"one"), Digest::of(b"two"));
        store.announce_at(&one, &peer("a", false), false, now);
        store.announce_at(&two, &peer("b", false), false, now);
        let announced = store.announce_at(&one, &peer("a", true), false, now);
        assert_eq!(announced.swarm, vec![peer("a", true)]);
        assert_eq!(announced.admission, Admission::Recorded);
        assert_eq!(announced.records, 2, "a re-announce adds no record");
        let announced = store.announce_at(&one, &peer("c", false), false, now);
        assert_eq!(ids(announced.swarm), ["a", "c"]);
        assert_eq!(announced.records, 3);
    }

    #[test]
    fn members_expire_after_the_ttl_without_an_announce() {
        let store = MemoryStore::new(Duration::from_secs(30), ROOMY);
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let digest = Digest::of(b"blob");
        store.announce_at(&digest, &peer("old", false), false, at(0));
        store.announce_at(&digest, &peer("young", false), false, at(20));
        let announced = store.announce_at(&digest, &peer("new", false), false, at(31));
        assert_eq!(ids(announced.swarm), ["new", "young"]);
        assert_eq!(announced.records, 2);
    }

    #[test]
    fn abandoned_swarms_are_swept() {
        let store = MemoryStore::new(Duration::from_secs(30), ROOMY);
        let start = Instant::now();
        for i in 0..10u8 {
            store.announce_at(&Digest::of(&[i]), &peer("a", false), false, start);
        }
        assert_eq!(store.swarm_count(), 10);
        let later = start + Duration::from_secs(31);
        let announced = store.announce_at(&Digest::of(b"live"), &peer("b", false), false, later);
        assert_eq!(store.swarm_count(), 1);
        assert_eq!(announced.records, 1);
    }

    #[test]
    fn a_full_swarm_refuses_new_members_but_refreshes_its_own_and_takes_origins() {
        let limits = RecordLimits {
            per_swarm: 2,
            total: 100,
        };
        let store = MemoryStore::new(Duration::from_secs(30), limits);
        let now = Instant::now();
        let digest = Digest::of(b"blob");
        store.announce_at(&digest, &peer("a", false), false, now);
        store.announce_at(&digest, &peer("b", false), false, now);

        let refused = store.announce_at(&digest, &peer("c", false), false, now);
        assert_eq!(refused.admission, Admission::SwarmFull);
        assert_eq!(ids(refused.swarm), ["a", "b"], "c still sees the swarm");
        assert_eq!(refused.records, 2);

        let refreshed = store.announce_at(&digest, &peer("a", true), false, now);
        assert_eq!(refreshed.admission, Admission::Recorded);
        assert!(refreshed.swarm.contains(&peer("a", true)));

        let origin = store.announce_at(&digest, &peer("o1", true), true, now);
        assert_eq!(origin.admission, Admission::Recorded);
        assert_eq!(ids(origin.swarm), ["a", "b", "o1"]);

        // Other swarms are not affected, and a place frees up when a member expires.
        let other = store.announce_at(&Digest::of(b"other"), &peer("c", false), false, now);
        assert_eq!(other.admission, Admission::Recorded);
        let later = now + Duration::from_secs(20);
        store.announce_at(&digest, &peer("a", true), false, later);
        let after = now + Duration::from_secs(31);
        let admitted = store.announce_at(&digest, &peer("c", false), false, after);
        assert_eq!(admitted.admission, Admission::Recorded, "b and o1 expired");
        assert_eq!(ids(admitted.swarm), ["a", "c"]);
    }

    #[test]
    fn records_are_capped_in_total_and_freed_as_they_expire() {
        let limits = RecordLimits {
            per_swarm: 10,
            total: 100,
        };
        let store = MemoryStore::new(Duration::from_secs(30), limits);
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let mut refused = 0;
        for i in 0..1_000u32 {
            let digest = Digest::of(&i.to_be_bytes());
            let announced = store.announce_at(&digest, &peer("fake", true), false, at(25));
            assert!(announced.records <= 100);
            if announced.admission == Admission::StoreFull {
                refused += 1;
                assert!(announced.swarm.is_empty(), "nobody else announced it");
            }
        }
        assert_eq!(refused, 900);
        assert_eq!(
            store.swarm_count(),
            100,
            "refused digests leave no empty swarm"
        );

        // A recorded peer keeps refreshing, even at the cap (the periodic sweep runs here).
        let first = Digest::of(&0u32.to_be_bytes());
        let announced = store.announce_at(&first, &peer("fake", true), false, at(31));
        assert_eq!(announced.admission, Admission::Recorded);
        let announced =
            store.announce_at(&Digest::of(b"new"), &peer("honest", false), false, at(31));
        assert_eq!(announced.admission, Admission::StoreFull);

        // Once the rest expire, a full store sweeps before its next periodic sweep is due and
        // takes new records again.
        let announced =
            store.announce_at(&Digest::of(b"new"), &peer("honest", false), false, at(56));
        assert_eq!(announced.admission, Admission::Recorded);
        assert_eq!(announced.records, 2);
        assert_eq!(store.swarm_count(), 2);
    }
}
