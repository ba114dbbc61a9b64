//! The Redis peer store, for trackers that share swarms or keep them across restarts.
//!
//! Each swarm is two keys: a sorted set `shoal:tracker:swarm:<hex>` of peer ids scored by their
//! expiry (unix milliseconds), and a hash `shoal:tracker:peers:<hex>` from peer id to its record
//! (`{"addr":…,"complete":…}`). An announce runs as one MULTI/EXEC: drop expired members, add or
//! refresh the caller, push both keys' expiry to one TTL from now (so an abandoned swarm vanishes
//! on its own), and read the swarm back. Trackers sharing a Redis should have synchronised
//! clocks, since expiry scores come from the tracker's clock.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use shoal_core::{Digest, PeerId};

use super::{PeerRecord, PeerStore, StoreError};

/// A tracker that cannot reach Redis answers UNAVAILABLE after this long instead of holding
/// announces; peers retry at their next interval.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect attempts per failed command, and their longest backoff: a peer announces again
/// within seconds anyway, so retrying longer only holds its request.
const RECONNECT_RETRIES: usize = 2;
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);

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
    conn: ConnectionManager,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port[/db]`); the connection reconnects by itself later.
    pub async fn connect(url: &str, ttl: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(RECONNECT_MAX_DELAY);
        let conn = client.get_connection_manager_with_config(config).await?;
        Ok(RedisStore { ttl, conn })
    }
}

fn unix_ms(time: SystemTime) -> i64 {
    // A clock before 1970 is a broken host; treat it as the epoch rather than failing announces.
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[async_trait]
impl PeerStore for RedisStore {
    async fn announce(
        &self,
        digest: &Digest,
        peer: &PeerRecord,
    ) -> Result<Vec<PeerRecord>, StoreError> {
        let swarm_key = format!("shoal:tracker:swarm:{}", digest.hex());
        let peers_key = format!("shoal:tracker:peers:{}", digest.hex());
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let now = unix_ms(SystemTime::now());
        let record = serde_json::to_string(&Stored {
            addr: peer.addr.clone(),
            complete: peer.complete,
        })
        .expect("a struct of a string and a bool serialises");

        let mut conn = self.conn.clone();
        let (live, records): (Vec<String>, HashMap<String, String>) = redis::pipe()
            .atomic()
            .zrembyscore(&swarm_key, "-inf", now)
            .ignore()
            .zadd(&swarm_key, peer.id.as_str(), now.saturating_add(ttl_ms))
            .ignore()
            .hset(&peers_key, peer.id.as_str(), record)
            .ignore()
            .pexpire(&swarm_key, ttl_ms)
            .ignore()
            .pexpire(&peers_key, ttl_ms)
            .ignore()
            .zrange(&swarm_key, 0, -1)
            .hgetall(&peers_key)
            .query_async(&mut conn)
            .await?;

        let mut swarm = Vec::with_capacity(live.len());
        for id in &live {
            let parsed = records.get(id).and_then(|json| {
                let stored: Stored = serde_json::from_str(json).ok()?;
                Some(PeerRecord {
                    id: PeerId::parse(id).ok()?,
                    addr: stored.addr,
                    complete: stored.complete,
                })
            });
            match parsed {
                Some(record) => swarm.push(record),
                None => {
                    tracing::warn!(%digest, peer = %id, "skipping an unreadable peer record in redis")
                }
            }
        }
        // Records of expired members linger in the hash until the whole key expires; drop them
        // now so a busy swarm's hash does not grow with every peer that ever joined.
        let stale: Vec<&String> = records.keys().filter(|id| !live.contains(id)).collect();
        if !stale.is_empty() {
            redis::cmd("HDEL")
                .arg(&peers_key)
                .arg(stale)
                .exec_async(&mut conn)
                .await?;
        }
        Ok(swarm)
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
        let store = RedisStore::connect(&server.url, ttl)
            .await
            .expect("connect");
        let (one, two) = (Digest::of(b"one"), Digest::of(b"two"));

        store.announce(&one, &peer("a", false)).await.unwrap();
        store.announce(&two, &peer("b", false)).await.unwrap();
        let swarm = store.announce(&one, &peer("a", true)).await.unwrap();
        assert_eq!(
            swarm,
            vec![peer("a", true)],
            "a re-announce replaces the record"
        );

        // A second tracker on the same Redis sees the same swarm.
        let other = RedisStore::connect(&server.url, ttl)
            .await
            .expect("connect");
        let swarm = other.announce(&one, &peer("c", false)).await.unwrap();
        assert_eq!(ids(swarm), ["a", "c"]);

        // Keep announcing c until a, silent since, has expired; its record is dropped too.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let swarm = store.announce(&one, &peer("c", false)).await.unwrap();
            if ids(swarm.clone()) == ["c"] {
                break;
            }
            assert!(Instant::now() < deadline, "a never expired: {swarm:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut conn = store.conn.clone();
        let fields: Vec<String> = redis::cmd("HKEYS")
            .arg(format!("shoal:tracker:peers:{}", one.hex()))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(fields, ["c"]);

        // Whole swarms vanish once nobody announces them.
        let deadline = Instant::now() + Duration::from_secs(5);
        let key = format!("shoal:tracker:swarm:{}", two.hex());
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
        let result =
            RedisStore::connect(&format!("redis://127.0.0.1:{port}"), Duration::from_secs(1)).await;
        assert!(result.is_err());
    }
}
