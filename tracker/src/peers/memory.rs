//! The in-memory peer store: a map from digest to its swarm, each member with its expiry time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use shoal_core::{Digest, PeerId};

use super::{PeerRecord, PeerStore, StoreError};

/// Swarms kept in this process, forgotten on restart (peers rebuild them within one announce
/// interval).
#[derive(Debug)]
pub struct MemoryStore {
    ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    swarms: HashMap<Digest, HashMap<PeerId, Member>>,
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
    pub fn new(ttl: Duration) -> Self {
        MemoryStore {
            ttl,
            inner: Mutex::new(Inner {
                swarms: HashMap::new(),
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
    ) -> Result<Vec<PeerRecord>, StoreError> {
        Ok(self.announce_at(digest, peer, Instant::now()))
    }
}

impl MemoryStore {
    /// [`PeerStore::announce`] at time `now` (tests pass their own clock).
    fn announce_at(&self, digest: &Digest, peer: &PeerRecord, now: Instant) -> Vec<PeerRecord> {
        let mut inner = self.lock();
        // Swarms nobody announces any more would otherwise stay forever: sweep them all once
        // per TTL, which costs one pass over the map per TTL however many announces arrive.
        if now.saturating_duration_since(inner.last_sweep) >= self.ttl {
            inner.swarms.retain(|_, swarm| {
                swarm.retain(|_, member| member.expires > now);
                !swarm.is_empty()
            });
            inner.last_sweep = now;
        }
        let swarm = inner.swarms.entry(*digest).or_default();
        swarm.retain(|_, member| member.expires > now);
        swarm.insert(
            peer.id.clone(),
            Member {
                addr: peer.addr.clone(),
                complete: peer.complete,
                expires: now + self.ttl,
            },
        );
        swarm
            .iter()
            .map(|(id, member)| PeerRecord {
                id: id.clone(),
                addr: member.addr.clone(),
                complete: member.complete,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let store = MemoryStore::new(Duration::from_secs(30));
        let now = Instant::now();
        let (one, two) = (Digest::of(b"one"), Digest::of(b"two"));
        store.announce_at(&one, &peer("a", false), now);
        store.announce_at(&two, &peer("b", false), now);
        let swarm = store.announce_at(&one, &peer("a", true), now);
        assert_eq!(swarm, vec![peer("a", true)]);
        let swarm = store.announce_at(&one, &peer("c", false), now);
        assert_eq!(ids(swarm), ["a", "c"]);
    }

    #[test]
    fn members_expire_after_the_ttl_without_an_announce() {
        let store = MemoryStore::new(Duration::from_secs(30));
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let digest = Digest::of(b"blob");
        store.announce_at(&digest, &peer("old", false), at(0));
        store.announce_at(&digest, &peer("young", false), at(20));
        let swarm = store.announce_at(&digest, &peer("new", false), at(31));
        assert_eq!(ids(swarm), ["new", "young"]);
    }

    #[test]
    fn abandoned_swarms_are_swept() {
        let store = MemoryStore::new(Duration::from_secs(30));
        let start = Instant::now();
        for i in 0..10u8 {
            store.announce_at(&Digest::of(&[i]), &peer("a", false), start);
        }
        assert_eq!(store.swarm_count(), 10);
        let later = start + Duration::from_secs(31);
        store.announce_at(&Digest::of(b"live"), &peer("b", false), later);
        assert_eq!(store.swarm_count(), 1);
    }
}
