//! One heartbeat as one script, so a beat costs one round trip (and one command) however
//! many things it does: hold or seek the lease, write the leader's records under it, write
//! this instance's report, and read back the fleet's reports, the pools' records and who
//! leads. A busy follower beats up to 50 times a second, so this is most of what a fleet asks
//! of Redis. The script reads the reports of the instances the registry lists, keys it builds
//! itself: fine on one Redis, which is what a fleet uses (not Redis Cluster).

use std::collections::BTreeMap;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Script;

use super::keys;
use super::lease::hold_lua;
use super::{Held, Report};

/// KEYS: 1 the lease, 2 the fencing counter, 3 the registry's set, 4 this instance's report,
/// 5.. the records of this instance's pools. ARGV: 1 this instance's name, 2 the lease value
/// it holds or '', 3 the lease's TTL (ms), 4 its report (JSON), 5 now (Unix ms), 6 the score
/// below which registry entries are dropped, 7 the report's TTL (ms), 8 the prefix of report
/// keys, 9 the records' TTL (ms), 10 the highest fencing token this instance has seen, 11..
/// per pool of KEYS 5.., the record to write while leading or ''. Returns {held value or '', lease value or nil, reports, records}.
const BEAT: &str = concat!(
    hold_lua!(),
    r"
local held = hold(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[10])
-- Records are written only under the lease this beat renewed: one just taken has none yet.
if held ~= '' and held == ARGV[2] then
  for i = 5, #KEYS do
    local record = ARGV[i + 6]
    if record ~= nil and record ~= '' then
      redis.call('SET', KEYS[i], record, 'PX', ARGV[9])
    end
  end
end
redis.call('SET', KEYS[4], ARGV[4], 'PX', ARGV[7])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[6])
local names = redis.call('ZRANGE', KEYS[3], 0, -1)
local reports = {}
if #names > 0 then
  local keys = {}
  for i, name in ipairs(names) do keys[i] = ARGV[8] .. name end
  reports = redis.call('MGET', unpack(keys))
end
local records = {}
if #KEYS > 4 then records = redis.call('MGET', unpack(KEYS, 5)) end
return {held, redis.call('GET', KEYS[1]), reports, records}
"
);

/// What one beat found.
pub struct Beaten {
    /// The lease, if this instance holds it now.
    pub held: Option<Held>,
    /// The leader's name, if any.
    pub leader: Option<String>,
    /// Every live instance's report.
    pub reports: Vec<Report>,
    /// The record of each pool asked for, in order; `None` where there is none.
    pub records: Vec<Option<String>>,
}

/// The heartbeat of one instance of fleet `prefix`.
pub struct Beat {
    script: Script,
    name: String,
    lease_key: String,
    fence_key: String,
    set: String,
    report_key: String,
    report_prefix: String,
    prefix: String,
    lease_ttl: Duration,
    report_ttl: Duration,
    records_ttl: Duration,
}

impl Beat {
    /// The beat of instance `name`: leases live `lease_ttl`, reports `report_ttl`, records
    /// `records_ttl` past their last write.
    pub fn new(
        prefix: &str,
        name: &str,
        lease_ttl: Duration,
        report_ttl: Duration,
        records_ttl: Duration,
    ) -> Self {
        Beat {
            script: Script::new(BEAT),
            name: name.to_string(),
            lease_key: keys::leader(prefix),
            fence_key: keys::fence(prefix),
            set: keys::instances(prefix),
            report_key: keys::report(prefix, name),
            report_prefix: keys::report_prefix(prefix),
            prefix: prefix.to_string(),
            lease_ttl,
            report_ttl,
            records_ttl,
        }
    }

    /// Beat once: hold `held` (or seek the lease, with a token above `floor`), write
    /// `report`, and while leading the `records` (pool: JSON); read back the fleet, the
    /// records of `pools` and the leader.
    pub async fn run(
        &self,
        redis: &mut ConnectionManager,
        held: Option<&Held>,
        report: &Report,
        pools: &[String],
        records: &BTreeMap<String, String>,
        floor: u64,
    ) -> redis::RedisResult<Beaten> {
        let json = serde_json::to_string(report).unwrap_or_default();
        let oldest = report
            .at_ms
            .saturating_sub(self.report_ttl.as_millis() as u64 * 4);
        let mut invocation = self.script.key(&self.lease_key);
        invocation
            .key(&self.fence_key)
            .key(&self.set)
            .key(&self.report_key)
            .arg(&self.name)
            .arg(held.map_or("", |h| h.value.as_str()))
            .arg(self.lease_ttl.as_millis() as u64)
            .arg(json)
            .arg(report.at_ms)
            .arg(oldest)
            .arg(self.report_ttl.as_millis() as u64)
            .arg(&self.report_prefix)
            .arg(self.records_ttl.as_millis() as u64)
            .arg(floor);
        for pool in pools {
            invocation
                .key(keys::members(&self.prefix, pool))
                .arg(records.get(pool).map_or("", String::as_str));
        }
        type Reply = (
            String,
            Option<String>,
            Vec<Option<String>>,
            Vec<Option<String>>,
        );
        let (held, lease, reports, records): Reply = invocation.invoke_async(redis).await?;
        Ok(Beaten {
            held: Held::from_value(held),
            leader: lease.and_then(|v| v.rsplit_once('|').map(|(name, _)| name.to_string())),
            reports: reports
                .into_iter()
                .flatten()
                .filter_map(|r| serde_json::from_str(&r).ok())
                .collect(),
            records,
        })
    }
}
