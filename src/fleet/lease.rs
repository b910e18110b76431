//! The fleet's leader lease in Redis. One key holds `name|token`, set only when absent (NX)
//! and with a TTL; the leader renews it well inside the TTL by compare-and-set, so only the
//! holder of that exact value can extend it. The token comes from INCR on a second key, so it
//! grows with every new leader: a fencing token. Before every provider call the leader checks,
//! in one script, that its value is still the key's and that enough of the TTL remains to
//! cover the call; a leader that was paused or cut off past its lease fails the check and does
//! nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

/// Lua: `hold(key, fence, name, held, ttl, floor)` renews the lease when `held` is still its
/// value, else takes it when nobody holds it (with the next fencing token, above `floor`, the
/// highest token this instance has seen, so tokens never go back when Redis restarts empty),
/// and returns the value now held by this instance, or '' when another holds it. One text for
/// the lease's own script and the heartbeat's ([`super::beat`]), so the rule lives once.
macro_rules! hold_lua {
    () => {
        r"
local function hold(key, fence, name, held, ttl, floor)
  if held ~= '' and redis.call('GET', key) == held then
    redis.call('PEXPIRE', key, ttl)
    return held
  end
  if redis.call('EXISTS', key) == 1 then return '' end
  local token = redis.call('INCR', fence)
  local least = tonumber(floor) or 0
  if token <= least then
    token = least + 1
    redis.call('SET', fence, token)
  end
  local value = name .. '|' .. token
  redis.call('SET', key, value, 'PX', ttl)
  return value
end
"
    };
}
pub(super) use hold_lua;

const HOLD: &str = concat!(
    hold_lua!(),
    "return hold(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])"
);

const FENCE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then return 0 end
return 1
";

/// Give the lease up if it is ours (a clean shutdown hands over at once).
const RESIGN: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// One instance's view of the lease.
pub struct Lease {
    key: String,
    fence_key: String,
    name: String,
    ttl: Duration,
    hold: Script,
    fence: Script,
    /// The highest fencing token this instance has seen: a token it takes is above it.
    floor: AtomicU64,
    resign: Script,
}

/// The lease as held: the value in Redis and its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// `name|token`, what the key must still hold.
    pub value: String,
    /// The fencing token: larger for every later leader.
    pub token: u64,
}

impl Held {
    /// The lease value `name|token` this instance holds; `None` for '' (held by another).
    pub(super) fn from_value(value: String) -> Option<Held> {
        let token = value.rsplit_once('|')?.1.parse().ok()?;
        Some(Held { value, token })
    }
}

impl Lease {
    /// The lease of fleet `prefix` as instance `name` sees it.
    pub fn new(prefix: &str, name: &str, ttl: Duration) -> Self {
        Lease {
            key: super::keys::leader(prefix),
            fence_key: super::keys::fence(prefix),
            name: name.to_string(),
            ttl,
            hold: Script::new(HOLD),
            floor: AtomicU64::new(0),
            fence: Script::new(FENCE),
            resign: Script::new(RESIGN),
        }
    }

    /// Note a fencing token seen (held, or on a record read): a token taken later is above
    /// it, even from a Redis restarted empty, whose counter starts again at 1.
    pub fn raise_floor(&self, token: u64) {
        self.floor.fetch_max(token, Ordering::Relaxed);
    }

    /// The highest fencing token seen.
    pub fn floor(&self) -> u64 {
        self.floor.load(Ordering::Relaxed)
    }

    fn ttl_ms(&self) -> u64 {
        self.ttl.as_millis() as u64
    }

    /// Renew `held`, or take the lease when free. `None`: another instance holds it.
    pub async fn hold(
        &self,
        redis: &mut ConnectionManager,
        held: Option<&Held>,
    ) -> redis::RedisResult<Option<Held>> {
        let value: String = self
            .hold
            .key(&self.key)
            .key(&self.fence_key)
            .arg(&self.name)
            .arg(held.map_or("", |h| h.value.as_str()))
            .arg(self.ttl_ms())
            .arg(self.floor())
            .invoke_async(redis)
            .await?;
        let held = Held::from_value(value);
        if let Some(h) = &held {
            self.raise_floor(h.token);
        }
        Ok(held)
    }

    pub async fn still_held(
        &self,
        redis: &mut ConnectionManager,
        held: &Held,
        need: Duration,
    ) -> redis::RedisResult<bool> {
        let ok: i64 = self
            .fence
            .key(&self.key)
            .arg(&held.value)
            .arg(need.as_millis() as u64)
            .invoke_async(redis)
            .await?;
        Ok(ok == 1)
    }

    /// Give `held` up.
    pub async fn resign(
        &self,
        redis: &mut ConnectionManager,
        held: &Held,
    ) -> redis::RedisResult<()> {
        let _: i64 = self
            .resign
            .key(&self.key)
            .arg(&held.value)
            .invoke_async(redis)
            .await?;
        Ok(())
    }

    /// The current leader's name, if any.
    pub async fn leader(
        &self,
        redis: &mut ConnectionManager,
    ) -> redis::RedisResult<Option<String>> {
        let value: Option<String> = redis::cmd("GET").arg(&self.key).query_async(redis).await?;
        Ok(value.and_then(|v| v.rsplit_once('|').map(|(name, _)| name.to_string())))
    }
}
