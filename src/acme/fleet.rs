//! ACME in a fleet (`[cluster]`): one instance orders a name set at a time (a lock in Redis),
//! the certificate and its key are shared through Redis so every instance serves them, and the
//! challenge answers of an order are shared too, so whichever instance the CA reaches answers.
//! The key is as safe as the Redis it is kept in: anyone who can read the fleet's Redis can
//! read it.

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

/// Longest a Redis call may take.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an order's lock lasts unless released (longer than an order may take).
const LOCK_TTL: Duration = Duration::from_secs(180);
/// How often instances copy the shared challenge answers into their own.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(250);

/// Releases the lock only if it is still this instance's.
const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// A certificate and its key as shared.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SharedCert {
    pub chain: String,
    pub key: String,
}

/// This instance's view of the fleet's ACME state in Redis.
#[derive(Clone)]
pub struct FleetCerts {
    redis: ConnectionManager,
    prefix: String,
    /// Marks this instance's locks.
    me: String,
}

impl FleetCerts {
    /// Connect to the fleet's Redis at `url`; keys go under `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<FleetCerts, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1);
        let redis = tokio::time::timeout(
            REDIS_TIMEOUT * 2,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| format!("redis at {url} did not answer"))?
        .map_err(|e| format!("redis at {url}: {e}"))?;
        let me = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        Ok(FleetCerts {
            redis,
            prefix: prefix.to_string(),
            me,
        })
    }

    fn key(&self, what: &str, names: &[String]) -> String {
        format!("{}:acme:{what}:{}", self.prefix, names.join(","))
    }

    fn answers_key(&self) -> String {
        format!("{}:acme:answers", self.prefix)
    }

    /// The fleet's certificate for `names`, if one was shared.
    pub async fn certificate(&mut self, names: &[String]) -> Result<Option<SharedCert>, String> {
        let key = self.key("cert", names);
        let json: Option<String> = self.redis.get(&key).await.map_err(|e| e.to_string())?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Share the certificate of `names` with the fleet.
    pub async fn share(&mut self, names: &[String], cert: &SharedCert) -> Result<(), String> {
        let key = self.key("cert", names);
        let json = serde_json::to_string(cert).map_err(|e| e.to_string())?;
        self.redis
            .set::<_, _, ()>(&key, json)
            .await
            .map_err(|e| e.to_string())
    }

    /// Take the order lock of `names`; false while another instance holds it.
    pub async fn lock(&mut self, names: &[String]) -> Result<bool, String> {
        let key = self.key("lock", names);
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&self.me)
            .arg("NX")
            .arg("PX")
            .arg(LOCK_TTL.as_millis() as u64)
            .query_async(&mut self.redis)
            .await
            .map_err(|e| e.to_string())?;
        Ok(set.is_some())
    }

    /// Release the order lock of `names` if it is still ours.
    pub async fn unlock(&mut self, names: &[String]) {
        let key = self.key("lock", names);
        let _: Result<i64, _> = redis::Script::new(UNLOCK)
            .key(key)
            .arg(&self.me)
            .invoke_async(&mut self.redis)
            .await;
    }

    /// Share a challenge answer (`http:TOKEN` or `alpn:NAME`, and its value) for an order.
    pub async fn set_answer(&mut self, field: &str, value: &str) -> Result<(), String> {
        let key = self.answers_key();
        redis::pipe()
            .hset(&key, field, value)
            .ignore()
            .pexpire(&key, LOCK_TTL.as_millis() as i64)
            .ignore()
            .query_async::<()>(&mut self.redis)
            .await
            .map_err(|e| e.to_string())
    }

    /// Take an answer down.
    pub async fn forget_answer(&mut self, field: &str) {
        let key = self.answers_key();
        let _: Result<i64, _> = self.redis.hdel(&key, field).await;
    }

    /// Every answer of the fleet's orders under way.
    pub async fn answers(&mut self) -> Result<HashMap<String, String>, String> {
        let key = self.answers_key();
        self.redis.hgetall(&key).await.map_err(|e| e.to_string())
    }
}
