//! The fleet's shared membership: per pool, the workers the leader launched or adopted and
//! which of them it drains, under `PREFIX:pool:POOL:members`. Only the leader writes, and only
//! under a lease value that is still the lease's: a leader whose token went stale (paused,
//! cut off) has every write refused. Every instance reads the records each heartbeat and
//! routes to what they list. The leader writes them every heartbeat, so a Redis that comes
//! back empty has them again within one. The heartbeat does both in its one script
//! (`beat.rs`); [`MemberBook`] writes and reads them on their own.

use std::net::SocketAddr;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;
use serde::{Deserialize, Serialize};

use super::Held;

/// Set every record if ARGV[1] is still the lease's value: 1, else 0 (nothing written).
const WRITE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 2, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[2]) end
return 1
";

/// One worker in a pool's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetMember {
    /// Its provider id.
    pub id: String,
    /// Where every instance reaches it.
    pub addr: SocketAddr,
    /// The leader is retiring it: no instance sends it new requests.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// The leader's next scale-in victim if it stays idle: every instance sends it requests
    /// only when the others are busier, so it can go idle.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub surplus: bool,
    /// The pool's revision it was launched with, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// One pool's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolMembers {
    /// The fencing token of the leader that wrote it.
    pub token: u64,
    /// Its workers.
    pub workers: Vec<FleetMember>,
    /// A canary's split of the requests by revision, which every instance routes by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split: Option<crate::pool::RevisionSplit>,
    /// The leader's rollout, which the others mirror (so one that takes the lead later does
    /// not take up a revision the fleet gave up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutMark>,
}

/// A rollout as the leader's record carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutMark {
    /// The revision rolled out.
    pub to: String,
    /// running | paused | done | rolled_back | aborted
    pub state: String,
}

/// The records of fleet `prefix`.
pub struct MemberBook {
    prefix: String,
    lease_key: String,
    /// Records outlive a leader's absence by this much, then a pool that is gone leaves none.
    ttl: Duration,
    write: Script,
}

impl MemberBook {
    /// Records of fleet `prefix`, kept `ttl` past the last leader's last write.
    pub fn new(prefix: &str, ttl: Duration) -> Self {
        MemberBook {
            prefix: prefix.to_string(),
            lease_key: super::keys::leader(prefix),
            ttl,
            write: Script::new(WRITE),
        }
    }

    fn key(&self, pool: &str) -> String {
        super::keys::members(&self.prefix, pool)
    }

    /// Write `records` (pool, JSON of [`PoolMembers`]) as the holder of `held`; false when the
    /// lease is no longer `held`, and then nothing is written.
    pub async fn write(
        &self,
        redis: &mut ConnectionManager,
        held: &Held,
        records: &[(String, String)],
    ) -> redis::RedisResult<bool> {
        let mut invocation = self.write.key(&self.lease_key);
        invocation.arg(&held.value).arg(self.ttl.as_millis() as u64);
        for (pool, json) in records {
            invocation.key(self.key(pool)).arg(json);
        }
        let written: i64 = invocation.invoke_async(redis).await?;
        Ok(written == 1)
    }

    /// The records of `pools`, in order; `None` where there is none (no leader wrote one yet,
    /// or Redis restarted empty).
    pub async fn read(
        &self,
        redis: &mut ConnectionManager,
        pools: &[String],
    ) -> redis::RedisResult<Vec<Option<String>>> {
        if pools.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = pools.iter().map(|p| self.key(p)).collect();
        redis::cmd("MGET").arg(&keys).query_async(redis).await
    }
}
