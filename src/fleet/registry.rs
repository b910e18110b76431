//! Who is in the fleet and what load each instance carries. Every instance writes its report
//! (admin address, per-pool in-flight and queued, per-worker in-flight, the workers it drains,
//! the fleet its shares are bounded by) under `PREFIX:instance:NAME` with a TTL a
//! few heartbeats long, and its name into the sorted set `PREFIX:instances` scored by when it
//! last wrote; reading the fleet is one ZRANGE and one MGET. An instance that stops writing
//! drops out when its key expires. The heartbeat writes and reads them in its one script
//! (`beat.rs`); leaving the fleet is here.

use std::collections::BTreeMap;

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

/// One pool's load at one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolReport {
    /// Requests in flight to the pool's workers.
    pub in_flight: u64,
    /// Requests waiting in its queues.
    pub queued: u64,
    /// Every worker this instance has (by provider id), with its requests in flight on it
    /// and those it has served: the leader judges a worker idle by the whole fleet's requests
    /// on it, not only its own, and a worker an instance does not have is one it cannot send
    /// anything.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workers: BTreeMap<String, WorkerLoad>,
    /// The workers this instance no longer routes to (a fleet drain), with what it still has
    /// in flight on each: the leader releases a victim once every instance lists it with 0.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub draining: BTreeMap<String, u32>,
    /// How many requests this instance may have in flight over all the pool's workers (the
    /// sum of its shares of their caps); `None` for a pool without a cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<u64>,
}

/// One worker's load from one instance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerLoad {
    /// Requests in flight on it now.
    pub in_flight: u32,
    /// Requests it has answered for this instance (a change tells activity between two
    /// reports, however short the requests).
    pub served: u64,
}

/// What an instance reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The instance's name.
    pub name: String,
    /// Its admin API address.
    pub admin: String,
    /// Whether it held the lease when it wrote this.
    pub leader: bool,
    /// When it wrote this (Unix ms).
    pub at_ms: u64,
    /// Its load per pool.
    pub pools: BTreeMap<String, PoolReport>,
    /// The instances (sorted names) whose division of every worker's cap this instance keeps
    /// to: a larger share is taken only once every other instance reports the same fleet.
    #[serde(default)]
    pub fleet: Vec<String>,
    /// It is stopping: when every other instance is too, the leader, last to hand the
    /// workers over to anyone, releases them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
    /// Its last heartbeat reached Redis: a report that says not was carried here by a peer
    /// (the second channel, `peers.rs`), and the side of a split that has Redis breaks a tie.
    #[serde(default)]
    pub redis: bool,
}

/// Writes a report heard from a peer unless the one stored is as new or newer, and lists its
/// writer. KEYS: 1 the report, 2 the registry's set. ARGV: 1 the report (JSON), 2 its `at_ms`,
/// 3 its TTL (ms), 4 the instance's name.
const RELAY: &str = r"
local stored = redis.call('GET', KEYS[1])
if stored then
  local ok, report = pcall(cjson.decode, stored)
  if ok and type(report) == 'table' and tonumber(report.at_ms) and tonumber(report.at_ms) >= tonumber(ARGV[2]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
return 1
";

/// The registry of fleet `prefix`.
pub struct Registry {
    prefix: String,
    set: String,
    relay: redis::Script,
}

impl Registry {
    /// The registry of fleet `prefix`.
    pub fn new(prefix: &str) -> Self {
        Registry {
            prefix: prefix.to_string(),
            set: super::keys::instances(prefix),
            relay: redis::Script::new(RELAY),
        }
    }

    /// Write the reports of instances that cannot reach Redis themselves, heard from them
    /// over the second channel, so every instance that reads Redis hears them too (each
    /// only over an older one: two relays never put a report back).
    pub async fn relay(
        &self,
        redis: &mut ConnectionManager,
        reports: &[Report],
        ttl: std::time::Duration,
    ) -> redis::RedisResult<()> {
        for report in reports {
            let json = serde_json::to_string(report).unwrap_or_default();
            self.relay
                .key(self.key(&report.name))
                .key(&self.set)
                .arg(json)
                .arg(report.at_ms)
                .arg(ttl.as_millis() as u64)
                .arg(&report.name)
                .invoke_async::<i64>(redis)
                .await?;
        }
        Ok(())
    }

    fn key(&self, name: &str) -> String {
        super::keys::report(&self.prefix, name)
    }

    /// Leave the fleet at once (a clean shutdown).
    pub async fn remove(
        &self,
        redis: &mut ConnectionManager,
        name: &str,
    ) -> redis::RedisResult<()> {
        redis::pipe()
            .cmd("DEL")
            .arg(self.key(name))
            .ignore()
            .cmd("ZREM")
            .arg(&self.set)
            .arg(name)
            .ignore()
            .query_async::<()>(redis)
            .await
    }
}
