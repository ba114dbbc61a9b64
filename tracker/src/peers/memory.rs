//! The in-memory peer store: a map from digest to its swarm. A swarm keeps its complete and its
//! other members in two vectors of entries holding all a sample reads, and beside them a map
//! from id to an entry's place, so an announce samples either class in O(sample) however large
//! the swarm, without a map lookup per member sampled. Expired members are dropped when a sample
//! meets them, when a swarm at its cap needs their places, and by a sweep of every swarm once
//! per TTL, paced over half the TTL a few entries per announce so that no announce waits
//! behind a pass over every record; a count of the records held makes the caps free to check.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::Rng;
use shoal_core::{Digest, PeerId};

use super::{Admission, Announced, PeerRecord, PeerStore, RecordLimits, StoreError};

/// A full store (or swarm) drops expired records before refusing a new one, but at most this
/// often: that is a pass over every record (or member), and a flood at the cap must not pay it
/// per announce.
const FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Most entries a sweep reads in one announce: a few milliseconds. A sweep of 750,000
/// records in one pass held the lock for 0.3 s, and so did one swarm of 15,000 per announce
/// for 50 announces in a row; every announce meanwhile waited (docs/BENCHMARKS.md, the
/// tracker under a fleet's announces).
const SWEEP_STEP_ENTRIES: f64 = 4096.0;

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
    swarms: Swarms,
    /// Members over every swarm, expired ones included until they are dropped.
    records: usize,
    /// When the last sweep of every swarm began.
    last_sweep: Instant,
    /// The sweep in progress; None between sweeps.
    sweep: Option<Sweep>,
}

/// Where a sweep of every swarm has got to, and its pace: it reads entries at `rate` a
/// second of the time between announces, so its cost is spread evenly over them.
#[derive(Debug)]
struct Sweep {
    /// The swarm's position in [`Swarms`], and the entry's in that swarm.
    swarm: usize,
    place: Place,
    /// Entries read per second.
    rate: f64,
    /// Entries it may read now: grows with time at `rate`, up to [`SWEEP_STEP_ENTRIES`].
    credit: f64,
    last_step: Instant,
}

/// The swarms by digest, kept in a vector so that a sweep can walk them across announces by
/// position.
#[derive(Debug, Default)]
struct Swarms {
    at: HashMap<Digest, usize>,
    list: Vec<(Digest, Swarm)>,
}

impl Swarms {
    fn get(&self, digest: &Digest) -> Option<&Swarm> {
        self.at.get(digest).map(|&i| &self.list[i].1)
    }

    fn get_mut(&mut self, digest: &Digest) -> Option<&mut Swarm> {
        self.at.get(digest).map(|&i| &mut self.list[i].1)
    }

    fn get_or_insert(&mut self, digest: &Digest, now: Instant) -> &mut Swarm {
        let i = *self.at.entry(*digest).or_insert_with(|| {
            self.list.push((*digest, Swarm::new(now)));
            self.list.len() - 1
        });
        &mut self.list[i].1
    }

    /// Drops the swarm at position `i`; the last swarm takes its place.
    fn remove_at(&mut self, i: usize) {
        let (digest, _) = self.list.swap_remove(i);
        self.at.remove(&digest);
        if let Some((moved, _)) = self.list.get(i) {
            self.at.insert(*moved, i);
        }
    }

    fn remove(&mut self, digest: &Digest) {
        if let Some(&i) = self.at.get(digest) {
            self.remove_at(i);
        }
    }
}

#[derive(Debug)]
struct Swarm {
    /// Where each member's entry is.
    members: HashMap<PeerId, Place>,
    /// The complete members (`[COMPLETE]`) and the others (`[PARTIAL]`), in no order. A sample
    /// reads only these: in a swarm of thousands, a map lookup per member sampled was a cache
    /// miss or two each, and most of the store's time.
    classes: [Vec<Entry>; 2],
    /// When this swarm's expired members were last all dropped.
    last_expired: Instant,
}

const COMPLETE: usize = 0;
const PARTIAL: usize = 1;

fn class_of(complete: bool) -> usize {
    if complete { COMPLETE } else { PARTIAL }
}

/// A member's class and its index in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Place {
    class: usize,
    slot: usize,
}

#[derive(Debug)]
struct Entry {
    id: PeerId,
    addr: String,
    expires: Instant,
}

impl Swarm {
    fn new(now: Instant) -> Swarm {
        Swarm {
            members: HashMap::new(),
            classes: [Vec::new(), Vec::new()],
            last_expired: now,
        }
    }

    /// Records or refreshes `peer`; whether it is new.
    fn upsert(&mut self, peer: &PeerRecord, expires: Instant) -> bool {
        let class = class_of(peer.complete);
        let Some(&place) = self.members.get(&peer.id) else {
            let entry = Entry {
                id: peer.id.clone(),
                addr: peer.addr.clone(),
                expires,
            };
            let place = self.slot(entry, class);
            self.members.insert(peer.id.clone(), place);
            return true;
        };
        if place.class == class {
            let entry = &mut self.classes[class][place.slot];
            entry.addr.clone_from(&peer.addr);
            entry.expires = expires;
        } else {
            let mut entry = self.unslot(place);
            entry.addr.clone_from(&peer.addr);
            entry.expires = expires;
            let moved = self.slot(entry, class);
            if let Some(place) = self.members.get_mut(&peer.id) {
                *place = moved;
            }
        }
        false
    }

    /// Appends `entry` to `class`; its place (the caller records it in `members`).
    fn slot(&mut self, entry: Entry, class: usize) -> Place {
        let slot = self.classes[class].len();
        self.classes[class].push(entry);
        Place { class, slot }
    }

    /// Takes the entry at `place` out of its class, moving the class's last entry into its
    /// slot; the caller forgets or moves the taken entry's place.
    fn unslot(&mut self, place: Place) -> Entry {
        let entry = self.classes[place.class].swap_remove(place.slot);
        if let Some(moved) = self.classes[place.class].get(place.slot)
            && let Some(moved) = self.members.get_mut(&moved.id)
        {
            moved.slot = place.slot;
        }
        entry
    }

    /// Drops the member at `place`.
    fn remove(&mut self, place: Place) {
        let entry = self.unslot(place);
        self.members.remove(&entry.id);
    }

    /// Drops every expired member; how many went.
    fn expire(&mut self, now: Instant) -> usize {
        let mut expired = 0;
        for class in [COMPLETE, PARTIAL] {
            let mut slot = 0;
            while let Some(dropped) = self.expire_at(Place { class, slot }, now) {
                if dropped {
                    expired += 1;
                } else {
                    slot += 1;
                }
            }
        }
        self.last_expired = now;
        expired
    }

    /// Drops the entry at `place` if it has expired: Some(true) when it went (the class's last
    /// entry moved into its slot, so read that slot again), Some(false) when it lives, None
    /// past the class's end.
    fn expire_at(&mut self, place: Place, now: Instant) -> Option<bool> {
        let expired = self.classes[place.class].get(place.slot)?.expires <= now;
        if expired {
            self.remove(place);
        }
        Some(expired)
    }

    /// Up to `want` live members, complete ones first, each class sampled uniformly; expired
    /// members met on the way are dropped (the answer is short by them until the next
    /// announce). Returns the sample, the entries read and how many were dropped.
    fn sample<R: Rng + ?Sized>(
        &mut self,
        want: usize,
        now: Instant,
        rng: &mut R,
    ) -> (Vec<PeerRecord>, usize, usize) {
        let mut chosen = Vec::with_capacity(want.min(self.members.len()));
        let mut expired = Vec::new();
        let mut touched = 0;
        for class in [COMPLETE, PARTIAL] {
            let entries = &self.classes[class];
            let amount = want.saturating_sub(chosen.len()).min(entries.len());
            for slot in rand::seq::index::sample(rng, entries.len(), amount) {
                touched += 1;
                let entry = &entries[slot];
                if entry.expires <= now {
                    expired.push(Place { class, slot });
                    continue;
                }
                chosen.push(PeerRecord {
                    id: entry.id.clone(),
                    addr: entry.addr.clone(),
                    complete: class == COMPLETE,
                });
            }
        }
        // Highest slot first: a removal moves only a class's last entry, which is then
        // never one still to be removed.
        expired.sort_unstable_by(|a, b| b.cmp(a));
        for &place in &expired {
            self.remove(place);
        }
        (chosen, touched, expired.len())
    }
}

impl MemoryStore {
    pub fn new(ttl: Duration, limits: RecordLimits) -> Self {
        MemoryStore {
            ttl,
            limits,
            inner: Mutex::new(Inner {
                swarms: Swarms::default(),
                records: 0,
                last_sweep: Instant::now(),
                sweep: None,
            }),
        }
    }

    /// Number of swarms held, expired ones included until the next sweep.
    #[cfg(test)]
    fn swarm_count(&self) -> usize {
        self.lock().swarms.list.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        shoal_core::lock(&self.inner)
    }
}

#[async_trait]
impl PeerStore for MemoryStore {
    async fn announce(
        &self,
        digest: &Digest,
        peer: &PeerRecord,
        origin: bool,
        sample: usize,
    ) -> Result<Announced, StoreError> {
        Ok(self.announce_at(digest, peer, origin, sample, Instant::now()))
    }
}

impl MemoryStore {
    /// [`PeerStore::announce`] at time `now` (tests pass their own clock).
    fn announce_at(
        &self,
        digest: &Digest,
        peer: &PeerRecord,
        origin: bool,
        sample: usize,
        now: Instant,
    ) -> Announced {
        let mut guard = self.lock();
        let inner = &mut *guard;
        // Swarms nobody announces any more would otherwise stay forever: sweep them all once
        // per TTL, over half a TTL (once per FULL_SWEEP_INTERVAL, and within it, while the
        // store is full, so that a new record finds the places expired ones held). That is
        // one pass over the records per TTL however many announces arrive, spread over them.
        let (due, spread) = if inner.records >= self.limits.total {
            (FULL_SWEEP_INTERVAL, FULL_SWEEP_INTERVAL)
        } else {
            (self.ttl, self.ttl / 2)
        };
        if inner.sweep.is_none() && now.saturating_duration_since(inner.last_sweep) >= due {
            inner.sweep = Some(Sweep {
                swarm: 0,
                place: Place {
                    class: COMPLETE,
                    slot: 0,
                },
                rate: inner.records.max(1) as f64 / spread.as_secs_f64().max(1e-3),
                credit: SWEEP_STEP_ENTRIES,
                last_step: now,
            });
            inner.last_sweep = now;
        }
        inner.sweep_step(now);
        let known = inner
            .swarms
            .get(digest)
            .is_some_and(|swarm| swarm.members.contains_key(&peer.id));
        let admission = if known {
            Admission::Recorded
        } else {
            if let Some(swarm) = inner.swarms.get_mut(digest)
                && swarm.members.len() >= self.limits.per_swarm
                && now.saturating_duration_since(swarm.last_expired) >= FULL_SWEEP_INTERVAL
            {
                inner.records -= swarm.expire(now);
            }
            let members = inner
                .swarms
                .get(digest)
                .map_or(0, |swarm| swarm.members.len());
            if !origin && members >= self.limits.per_swarm {
                Admission::SwarmFull
            } else if inner.records >= self.limits.total {
                Admission::StoreFull
            } else {
                Admission::Recorded
            }
        };
        if admission == Admission::Recorded {
            let swarm = inner.swarms.get_or_insert(digest, now);
            if swarm.upsert(peer, now + self.ttl) {
                inner.records += 1;
            }
        }
        let (chosen, touched, swarm_size) = match inner.swarms.get_mut(digest) {
            Some(swarm) => {
                let (chosen, touched, dropped) = swarm.sample(sample, now, &mut rand::rng());
                inner.records -= dropped;
                let size = swarm.members.len();
                if size == 0 {
                    // A sweep in progress may miss the swarm moved into its place until the
                    // next sweep; samples drop the expired members they meet meanwhile.
                    inner.swarms.remove(digest);
                }
                (chosen, touched, size)
            }
            None => (Vec::new(), 0, 0),
        };
        Announced {
            sample: chosen,
            swarm_size,
            admission,
            records: inner.records,
            touched,
        }
    }
}

impl Inner {
    /// Continues the sweep in progress with the entries its credit allows: drops the expired
    /// ones, and the swarms left empty. Announces that change a swarm being swept may make it
    /// skip a few entries; the next sweep gets them, and samples drop the ones they meet.
    fn sweep_step(&mut self, now: Instant) {
        let Inner {
            swarms,
            records,
            sweep: Some(sweep),
            ..
        } = self
        else {
            return;
        };
        let elapsed = now.saturating_duration_since(sweep.last_step).as_secs_f64();
        sweep.last_step = now;
        sweep.credit = (sweep.credit + elapsed * sweep.rate).min(SWEEP_STEP_ENTRIES);
        while sweep.credit >= 1.0 {
            sweep.credit -= 1.0;
            let Some((_, swarm)) = swarms.list.get_mut(sweep.swarm) else {
                self.sweep = None;
                swarms.list.shrink_to_fit();
                swarms.at.shrink_to_fit();
                return;
            };
            match swarm.expire_at(sweep.place, now) {
                Some(true) => *records -= 1,
                Some(false) => sweep.place.slot += 1,
                None if sweep.place.class == COMPLETE => {
                    sweep.place = Place {
                        class: PARTIAL,
                        slot: 0,
                    };
                }
                None => {
                    if swarm.members.is_empty() {
                        // The last swarm moved here: it is swept next.
                        swarms.remove_at(sweep.swarm);
                    } else {
                        sweep.swarm += 1;
                    }
                    sweep.place = Place {
                        class: COMPLETE,
                        slot: 0,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample as large as any swarm here: the whole swarm.
    const ALL: usize = 10_000;

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

    /// Every member's place names its own entry, and every entry has a place.
    fn assert_places_consistent(swarm: &Swarm) {
        let entries: usize = swarm.classes.iter().map(Vec::len).sum();
        assert_eq!(entries, swarm.members.len());
        for (id, place) in &swarm.members {
            assert_eq!(&swarm.classes[place.class][place.slot].id, id, "{place:?}");
        }
    }

    #[test]
    fn places_follow_entries_through_class_changes_samples_and_expiry() {
        use rand::SeedableRng;

        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let mut swarm = Swarm::new(start);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for round in 0..4u64 {
            for i in 0..40u64 {
                // Members change class every round; every third one stops after round 0.
                if round > 0 && i % 3 == 0 {
                    continue;
                }
                let complete = (i + round) % 2 == 0;
                swarm.upsert(&peer(&format!("p{i}"), complete), at(round * 10 + 30));
                assert_places_consistent(&swarm);
            }
        }
        // The 14 silent members expired at 30; the others live until 60.
        let (chosen, touched, dropped) = swarm.sample(ALL, at(35), &mut rng);
        assert_eq!((chosen.len(), touched, dropped), (26, 40, 14));
        assert_places_consistent(&swarm);
        for record in &chosen {
            let i: u64 = record.id.as_str()[1..].parse().expect("index");
            assert_eq!(record.complete, i % 2 == 1, "{record:?} as of round 3");
            assert_eq!(record.addr, format!("{}.example:16001", record.id));
        }
        assert_eq!(swarm.expire(at(65)), 26);
        assert_places_consistent(&swarm);
        assert!(swarm.classes.iter().all(Vec::is_empty));
    }

    #[test]
    fn swarms_are_per_digest_and_a_reannounce_replaces_the_record() {
        let store = MemoryStore::new(Duration::from_secs(30), ROOMY);
        let now = Instant::now();
        let (one, two) = (Digest::of(b"one"), Digest::of(b"two"));
        store.announce_at(&one, &peer("a", false), false, ALL, now);
        store.announce_at(&two, &peer("b", false), false, ALL, now);
        let announced = store.announce_at(&one, &peer("a", true), false, ALL, now);
        assert_eq!(announced.sample, vec![peer("a", true)]);
        assert_eq!(announced.admission, Admission::Recorded);
        assert_eq!(announced.records, 2, "a re-announce adds no record");
        let announced = store.announce_at(&one, &peer("c", false), false, ALL, now);
        assert_eq!(ids(announced.sample), ["a", "c"]);
        assert_eq!(announced.records, 3);
    }

    #[test]
    fn members_expire_after_the_ttl_without_an_announce() {
        let store = MemoryStore::new(Duration::from_secs(30), ROOMY);
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let digest = Digest::of(b"blob");
        store.announce_at(&digest, &peer("old", false), false, ALL, at(0));
        store.announce_at(&digest, &peer("young", false), false, ALL, at(20));
        let announced = store.announce_at(&digest, &peer("new", false), false, ALL, at(31));
        assert_eq!(ids(announced.sample), ["new", "young"]);
        assert_eq!(announced.records, 2);
    }

    #[test]
    fn abandoned_swarms_are_swept() {
        let store = MemoryStore::new(Duration::from_secs(30), ROOMY);
        let start = Instant::now();
        for i in 0..10u8 {
            store.announce_at(&Digest::of(&[i]), &peer("a", false), false, ALL, start);
        }
        assert_eq!(store.swarm_count(), 10);
        let later = start + Duration::from_secs(31);
        let announced =
            store.announce_at(&Digest::of(b"live"), &peer("b", false), false, ALL, later);
        assert_eq!(store.swarm_count(), 1);
        assert_eq!(announced.records, 1);
    }

    #[test]
    fn a_sweep_of_every_record_is_paced_over_half_the_ttl() {
        let limits = RecordLimits {
            per_swarm: 1_000,
            total: 20_000,
        };
        let ttl = Duration::from_secs(30);
        let store = MemoryStore::new(ttl, limits);
        let start = Instant::now();
        for swarm in 0..100u32 {
            for member in 0..100 {
                let (digest, id) = (Digest::of(&swarm.to_be_bytes()), format!("p{member}"));
                store.announce_at(&digest, &peer(&id, false), false, 1, start);
            }
        }
        let live = Digest::of(b"live");
        let mut n = 0;
        let mut announce = |at: Instant| {
            n += 1;
            let id = format!("n{n}");
            store
                .announce_at(&live, &peer(&id, false), false, 1, at)
                .records
        };
        // All 10,000 expired at 30 s. The sweep that starts at 31 s reads at most
        // SWEEP_STEP_ENTRIES entries in one announce (a swarm's end counts as one), and no
        // more while no time passes.
        let sweep_start = start + Duration::from_secs(31);
        let first = announce(sweep_start);
        let (step, expired) = (SWEEP_STEP_ENTRIES as usize, 10_001 - first);
        // Each swarm of 100 costs 102: its two classes' ends.
        assert!(
            (step * 100 / 102 - 1..=step).contains(&expired),
            "{expired}"
        );
        assert_eq!(announce(sweep_start), first + 1);
        // Then at 10,000 entries per 15 s: 0.1 s later, about 67 more.
        let later = announce(sweep_start + Duration::from_millis(100));
        let swept = first + 2 - later;
        assert!((60..=68).contains(&swept), "{swept}");
        // By half the TTL every expired record is gone, with every swarm it left empty.
        for tenth in 1..=150 {
            announce(sweep_start + Duration::from_millis(100 * tenth));
        }
        assert_eq!(announce(sweep_start + ttl / 2), n);
        assert_eq!(store.swarm_count(), 1);
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
        store.announce_at(&digest, &peer("a", false), false, ALL, now);
        store.announce_at(&digest, &peer("b", false), false, ALL, now);

        let refused = store.announce_at(&digest, &peer("c", false), false, ALL, now);
        assert_eq!(refused.admission, Admission::SwarmFull);
        assert_eq!(ids(refused.sample), ["a", "b"], "c still sees the swarm");
        assert_eq!(refused.records, 2);

        let refreshed = store.announce_at(&digest, &peer("a", true), false, ALL, now);
        assert_eq!(refreshed.admission, Admission::Recorded);
        assert!(refreshed.sample.contains(&peer("a", true)));

        let origin = store.announce_at(&digest, &peer("o1", true), true, ALL, now);
        assert_eq!(origin.admission, Admission::Recorded);
        assert_eq!(ids(origin.sample), ["a", "b", "o1"]);

        // Other swarms are not affected, and a place frees up when a member expires.
        let other = store.announce_at(&Digest::of(b"other"), &peer("c", false), false, ALL, now);
        assert_eq!(other.admission, Admission::Recorded);
        let later = now + Duration::from_secs(20);
        store.announce_at(&digest, &peer("a", true), false, ALL, later);
        let after = now + Duration::from_secs(31);
        let admitted = store.announce_at(&digest, &peer("c", false), false, ALL, after);
        assert_eq!(admitted.admission, Admission::Recorded, "b and o1 expired");
        assert_eq!(ids(admitted.sample), ["a", "c"]);
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
            let announced = store.announce_at(&digest, &peer("fake", true), false, ALL, at(25));
            assert!(announced.records <= 100);
            if announced.admission == Admission::StoreFull {
                refused += 1;
                assert!(announced.sample.is_empty(), "nobody else announced it");
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
        let announced = store.announce_at(&first, &peer("fake", true), false, ALL, at(31));
        assert_eq!(announced.admission, Admission::Recorded);
        let announced = store.announce_at(
            &Digest::of(b"new"),
            &peer("honest", false),
            false,
            ALL,
            at(31),
        );
        assert_eq!(announced.admission, Admission::StoreFull);

        // Once the rest expire, a full store sweeps before its next periodic sweep is due and
        // takes new records again.
        let announced = store.announce_at(
            &Digest::of(b"new"),
            &peer("honest", false),
            false,
            ALL,
            at(56),
        );
        assert_eq!(announced.admission, Admission::Recorded);
        assert_eq!(announced.records, 2);
        assert_eq!(store.swarm_count(), 2);
    }

    #[test]
    fn an_announce_reads_a_sample_not_the_swarm() {
        let limits = RecordLimits {
            per_swarm: 20_000,
            total: 20_000,
        };
        let store = MemoryStore::new(Duration::from_secs(30), limits);
        let now = Instant::now();
        let digest = Digest::of(b"crowd");
        for i in 0..10_000u32 {
            // Every tenth member holds the whole blob.
            store.announce_at(
                &digest,
                &peer(&format!("p{i}"), i % 10 == 0),
                false,
                40,
                now,
            );
        }
        let announced = store.announce_at(&digest, &peer("caller", false), false, 40, now);
        assert_eq!(announced.swarm_size, 10_001);
        assert_eq!(announced.sample.len(), 40);
        assert!(
            announced.touched <= 40,
            "read {} entries for a sample of 40",
            announced.touched
        );
        // Complete members first: 1,000 of them, so the whole sample.
        assert!(announced.sample.iter().all(|p| p.complete));
        let distinct: std::collections::HashSet<_> =
            announced.sample.iter().map(|p| p.id.clone()).collect();
        assert_eq!(distinct.len(), 40, "no member twice");

        // With fewer complete members than asked for, the rest are partial ones.
        let small = Digest::of(b"small");
        for i in 0..100u32 {
            store.announce_at(&small, &peer(&format!("s{i}"), i < 3), false, 10, now);
        }
        let announced = store.announce_at(&small, &peer("s0", true), false, 10, now);
        let complete = announced.sample.iter().filter(|p| p.complete).count();
        assert_eq!((complete, announced.sample.len()), (3, 10));
        assert!(announced.sample[..3].iter().all(|p| p.complete));
    }

    #[test]
    fn a_member_that_completes_moves_class_and_expired_ones_leave_the_sample() {
        let store = MemoryStore::new(Duration::from_secs(30), ROOMY);
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let digest = Digest::of(b"blob");
        for id in ["a", "b", "c"] {
            store.announce_at(&digest, &peer(id, false), false, ALL, at(0));
        }
        let announced = store.announce_at(&digest, &peer("b", true), false, ALL, at(10));
        assert_eq!(announced.sample[0], peer("b", true));
        assert_eq!(ids(announced.sample), ["a", "b", "c"]);
        // a and c expire at 30; b, refreshed at 10, lives until 40.
        let announced = store.announce_at(&digest, &peer("d", false), false, ALL, at(29));
        assert_eq!(announced.swarm_size, 4);
        let announced = store.announce_at(&digest, &peer("d", false), false, 2, at(31));
        assert_eq!(ids(announced.sample), ["b", "d"]);
        assert_eq!(announced.records, 2);
    }
}
