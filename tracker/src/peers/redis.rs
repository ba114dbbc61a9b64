//! The Redis peer store, for trackers that share swarms or keep them across restarts.
//!
//! Each swarm is three keys: two sorted sets of peer ids scored by their expiry (unix
//! milliseconds), `shoal:tracker:v2:complete:<hex>` for members holding the whole blob and
//! `shoal:tracker:v2:partial:<hex>` for the others, and a hash `shoal:tracker:v2:peers:<hex>`
//! from peer id to its record (`{"addr":…,"complete":…}`). One more sorted set,
//! `shoal:tracker:v2:records`, holds every record of every swarm (`<hex>/<peer id>`, scored by
//! the same expiry), so the total is one `ZCARD` that corrects itself as records expire. An
//! announce runs as one Lua script ([`ANNOUNCE`]): drop the expired members (a range of each
//! set, and their records), admit the caller within the caps, push the keys' expiry to one TTL
//! from now (so an abandoned swarm vanishes on its own), and sample the swarm with
//! `ZRANDMEMBER`, complete members first: O(log n + expired + sample), never a read of the whole
//! swarm. Trackers sharing a Redis should have synchronised clocks, since expiry scores come
//! from the tracker's clock. (The `v2` keys replaced one set per swarm read whole on every
//! announce; during a rolling upgrade old and new trackers see each other's peers only after
//! the upgrade, within one announce interval.)

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use shoal_core::{Digest, PeerId};

use super::{Admission, Announced, PeerRecord, PeerStore, RecordLimits, StoreError};

/// A tracker that cannot reach Redis answers UNAVAILABLE after this long instead of holding
/// announces; peers retry at their next interval.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect attempts per failed command, and their longest backoff: a peer announces again
/// within seconds anyway, so retrying longer only holds its request.
const RECONNECT_RETRIES: usize = 2;
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);

/// Every record of every swarm, for the total cap.
const RECORDS_KEY: &str = "shoal:tracker:v2:records";

/// One announce, atomically (a script runs alone in Redis, so trackers sharing it cannot both
/// take the last place under a cap). Sent with `EVAL`, which Redis compiles once and caches.
///
/// KEYS: complete set, partial set, peers hash, records set. ARGV: now (ms), expiry (ms), TTL
/// (ms), peer id, record JSON, per-swarm cap, total cap, `1` for an origin, the record's name
/// in the records set, `1` for a complete peer, the sample size. Returns the admission, the live records in total, the swarm's size, the sample
/// as id, JSON pairs, and the members read.
const ANNOUNCE: &str = r#"
-- unpack() is bounded by Lua's stack: pass long lists in slices.
local function each_slice(list, f)
  for i = 1, #list, 1000 do
    f(unpack(list, i, math.min(i + 999, #list)))
  end
end
for k = 1, 2 do
  local gone = redis.call('ZRANGEBYSCORE', KEYS[k], '-inf', ARGV[1])
  if #gone > 0 then
    each_slice(gone, function(...) redis.call('ZREM', KEYS[k], ...) end)
    each_slice(gone, function(...) redis.call('HDEL', KEYS[3], ...) end)
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[1])
local mine, other = KEYS[2], KEYS[1]
if ARGV[10] == '1' then
  mine, other = KEYS[1], KEYS[2]
end
local admission = 'recorded'
if not (redis.call('ZSCORE', KEYS[1], ARGV[4]) or redis.call('ZSCORE', KEYS[2], ARGV[4])) then
  local members = redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])
  if ARGV[8] ~= '1' and members >= tonumber(ARGV[6]) then
    admission = 'swarm_full'
  elseif redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[7]) then
    admission = 'store_full'
  end
end
if admission == 'recorded' then
  redis.call('ZREM', other, ARGV[4])
  redis.call('ZADD', mine, ARGV[2], ARGV[4])
  redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
  redis.call('ZADD', KEYS[4], ARGV[2], ARGV[9])
  for k = 1, 4 do
    redis.call('PEXPIRE', KEYS[k], ARGV[3])
  end
end
local size = redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])
local ids = {}
for k = 1, 2 do
  local left = tonumber(ARGV[11]) - #ids
  if left > 0 then
    for _, id in ipairs(redis.call('ZRANDMEMBER', KEYS[k], left)) do
      ids[#ids + 1] = id
    end
  end
end
local sample = {}
if #ids > 0 then
  local records = redis.call('HMGET', KEYS[3], unpack(ids))
  for i, id in ipairs(ids) do
    if records[i] then
      sample[#sample + 1] = id
      sample[#sample + 1] = records[i]
    end
  end
end
return {admission, redis.call('ZCARD', KEYS[4]), size, sample, #ids}
"#;

/// What the hash holds per peer; the id is the field name.
#[derive(Serialize, Deserialize)]
struct Stored {
    addr: String,
    complete: bool,
}

/// Swarms in Redis.
#[derive(Clone)]
pub struct RedisStore {
    ttl: Duration,
    limits: RecordLimits,
    conn: ConnectionManager,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("ttl", &self.ttl)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port[/db]`); the connection reconnects by itself later.
    pub async fn connect(
        url: &str,
        ttl: Duration,
        limits: RecordLimits,
    ) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(RECONNECT_MAX_DELAY);
        let conn = client.get_connection_manager_with_config(config).await?;
        Ok(RedisStore { ttl, limits, conn })
    }
}

fn unix_ms(time: SystemTime) -> i64 {
    // A clock before 1970 is a broken host; treat it as the epoch rather than failing announces.
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[async_trait]
impl PeerStore for RedisStore {
    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(())
    }

    async fn announce(
        &self,
        digest: &Digest,
        peer: &PeerRecord,
        origin: bool,
        sample: usize,
    ) -> Result<Announced, StoreError> {
        let hex = digest.hex();
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let now = unix_ms(SystemTime::now());
        let record = serde_json::to_string(&Stored {
            addr: peer.addr.clone(),
            complete: peer.complete,
        })
        .expect("a struct of a string and a bool serialises");

        let mut conn = self.conn.clone();
        type Answer = (String, usize, usize, Vec<String>, usize);
        let (admission, records, swarm_size, fields, touched): Answer = redis::cmd("EVAL")
            .arg(ANNOUNCE)
            .arg(4)
            .arg(format!("shoal:tracker:v2:complete:{hex}"))
            .arg(format!("shoal:tracker:v2:partial:{hex}"))
            .arg(format!("shoal:tracker:v2:peers:{hex}"))
            .arg(RECORDS_KEY)
            .arg(now)
            .arg(now.saturating_add(ttl_ms))
            .arg(ttl_ms)
            .arg(peer.id.as_str())
            .arg(record)
            .arg(self.limits.per_swarm)
            .arg(self.limits.total)
            .arg(u8::from(origin))
            .arg(format!("{hex}/{}", peer.id))
            .arg(u8::from(peer.complete))
            .arg(sample)
            .query_async(&mut conn)
            .await?;
        let admission = match admission.as_str() {
            "swarm_full" => Admission::SwarmFull,
            "store_full" => Admission::StoreFull,
            _ => Admission::Recorded,
        };

        let mut chosen = Vec::with_capacity(fields.len() / 2);
        for pair in fields.chunks_exact(2) {
            let (id, json) = (&pair[0], &pair[1]);
            let parsed = serde_json::from_str::<Stored>(json)
                .ok()
                .zip(PeerId::parse(id).ok());
            match parsed {
                Some((stored, id)) => chosen.push(PeerRecord {
                    id,
                    addr: stored.addr,
                    complete: stored.complete,
                }),
                None => {
                    tracing::warn!(%digest, peer = %id, "skipping an unreadable peer record in redis")
                }
            }
        }
        Ok(Announced {
            sample: chosen,
            swarm_size,
            admission,
            records,
            touched,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    use super::*;

    /// A private `redis-server` on a free port in a temp dir, killed on drop.
    struct Server {
        child: Child,
        url: String,
        _dir: tempfile::TempDir,
    }

    impl Server {
        async fn start() -> Server {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server is installed (scripts/install-deps)");
            let server = Server {
                child,
                url: format!("redis://127.0.0.1:{port}"),
                _dir: dir,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let client = redis::Client::open(server.url.as_str()).expect("url");
                if client.get_multiplexed_async_connection().await.is_ok() {
                    return server;
                }
                assert!(Instant::now() < deadline, "redis-server did not start");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// A sample as large as any swarm here: the whole swarm.
    const ALL: usize = 1_000;

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

    #[tokio::test]
    async fn swarms_live_in_redis_and_members_expire() {
        let server = Server::start().await;
        let ttl = Duration::from_millis(300);
        let store = RedisStore::connect(&server.url, ttl, ROOMY)
            .await
            .expect("connect");
        let (one, two) = (Digest::of(b"one"), Digest::of(b"two"));

        store
            .announce(&one, &peer("a", false), false, ALL)
            .await
            .unwrap();
        store
            .announce(&two, &peer("b", false), false, ALL)
            .await
            .unwrap();
        let announced = store
            .announce(&one, &peer("a", true), false, ALL)
            .await
            .unwrap();
        assert_eq!(
            announced.sample,
            vec![peer("a", true)],
            "a re-announce replaces the record"
        );
        assert_eq!(announced.records, 2);

        // A second tracker on the same Redis sees the same swarm.
        let other = RedisStore::connect(&server.url, ttl, ROOMY)
            .await
            .expect("connect");
        let announced = other
            .announce(&one, &peer("c", false), false, ALL)
            .await
            .unwrap();
        assert_eq!(ids(announced.sample), ["a", "c"]);

        // Keep announcing c until a, silent since, has expired; its record is dropped too.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let swarm = store
                .announce(&one, &peer("c", false), false, ALL)
                .await
                .unwrap()
                .sample;
            if ids(swarm.clone()) == ["c"] {
                break;
            }
            assert!(Instant::now() < deadline, "a never expired: {swarm:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut conn = store.conn.clone();
        let fields: Vec<String> = redis::cmd("HKEYS")
            .arg(format!("shoal:tracker:v2:peers:{}", one.hex()))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(fields, ["c"]);

        // Whole swarms vanish once nobody announces them.
        let deadline = Instant::now() + Duration::from_secs(5);
        let key = format!("shoal:tracker:v2:partial:{}", two.hex());
        loop {
            let exists: bool = redis::cmd("EXISTS")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            if !exists {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the abandoned swarm never expired"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_an_error() {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let result = RedisStore::connect(
            &format!("redis://127.0.0.1:{port}"),
            Duration::from_secs(1),
            ROOMY,
        )
        .await;
        assert!(result.is_err());
    }

    #[tokio::test]
    async fn full_swarms_and_a_full_store_refuse_new_records_across_trackers() {
        let server = Server::start().await;
        let ttl = Duration::from_millis(800);
        let limits = RecordLimits {
            per_swarm: 2,
            total: 5,
        };
        let store = RedisStore::connect(&server.url, ttl, limits)
            .await
            .expect("connect");
        let other = RedisStore::connect(&server.url, ttl, limits)
            .await
            .expect("connect");
        let blob = Digest::of(b"blob");

        store
            .announce(&blob, &peer("a", false), false, ALL)
            .await
            .unwrap();
        other
            .announce(&blob, &peer("b", false), false, ALL)
            .await
            .unwrap();
        let refused = store
            .announce(&blob, &peer("c", false), false, ALL)
            .await
            .unwrap();
        assert_eq!(refused.admission, Admission::SwarmFull);
        assert_eq!(ids(refused.sample), ["a", "b"], "c still sees the swarm");
        let refreshed = other
            .announce(&blob, &peer("a", true), false, ALL)
            .await
            .unwrap();
        assert_eq!(refreshed.admission, Admission::Recorded);
        let origin = store
            .announce(&blob, &peer("o1", true), true, ALL)
            .await
            .unwrap();
        assert_eq!(
            origin.admission,
            Admission::Recorded,
            "origins go beyond the cap"
        );
        assert_eq!(ids(origin.sample), ["a", "b", "o1"]);
        assert_eq!(origin.records, 3);

        // Made-up digests fill the store up to its total, then are refused, leaving no keys.
        let mut admissions = Vec::new();
        for i in 0..10u32 {
            let fake = Digest::of(&i.to_be_bytes());
            let announced = other
                .announce(&fake, &peer("fake", true), false, ALL)
                .await
                .unwrap();
            assert!(announced.records <= 5, "{announced:?}");
            admissions.push(announced.admission);
        }
        assert_eq!(
            admissions
                .iter()
                .filter(|a| **a == Admission::Recorded)
                .count(),
            2
        );
        assert!(admissions[2..].iter().all(|a| *a == Admission::StoreFull));
        let mut conn = store.conn.clone();
        let fake = Digest::of(&9u32.to_be_bytes());
        let exists: bool = redis::cmd("EXISTS")
            .arg(format!("shoal:tracker:swarm:{}", fake.hex()))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(!exists, "a refused record creates no swarm");
        let refreshed = store
            .announce(&blob, &peer("b", false), false, ALL)
            .await
            .unwrap();
        assert_eq!(
            refreshed.admission,
            Admission::Recorded,
            "members refresh when full"
        );

        // The total counts live records only: once the others expire there is room again.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let announced = store
                .announce(&Digest::of(b"new"), &peer("honest", false), false, ALL)
                .await
                .unwrap();
            if announced.admission == Admission::Recorded {
                assert!(announced.records <= 5);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "records never expired: {announced:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn an_announce_reads_a_sample_not_the_swarm() {
        let server = Server::start().await;
        let limits = RecordLimits {
            per_swarm: 5_000,
            total: 5_000,
        };
        let store = RedisStore::connect(&server.url, Duration::from_secs(60), limits)
            .await
            .expect("connect");
        let digest = Digest::of(b"crowd");
        for i in 0..3_000u32 {
            store
                .announce(&digest, &peer(&format!("p{i}"), i % 100 == 0), false, 0)
                .await
                .unwrap();
        }
        let announced = store
            .announce(&digest, &peer("caller", false), false, 40)
            .await
            .unwrap();
        assert_eq!(announced.swarm_size, 3_001);
        assert_eq!(announced.sample.len(), 40);
        assert!(announced.touched <= 40, "read {}", announced.touched);
        // The 30 complete members come first, then partial ones.
        let complete = announced.sample.iter().filter(|p| p.complete).count();
        assert_eq!(complete, 30);
        assert!(announced.sample[..30].iter().all(|p| p.complete));

        // A member that completes moves to the complete set.
        store
            .announce(&digest, &peer("p1", true), false, 0)
            .await
            .unwrap();
        let announced = store
            .announce(&digest, &peer("caller", false), false, 31)
            .await
            .unwrap();
        assert!(announced.sample.iter().all(|p| p.complete));
        assert!(announced.sample.contains(&peer("p1", true)));
        assert_eq!(announced.swarm_size, 3_001, "moved, not added");
    }
}
