//! Several weir instances as one fleet, coordinated through Redis (`[cluster]`): one leader,
//! elected by a lease with a fencing token (lease.rs), runs the scalers on the whole fleet's
//! load; every instance reports its load and admin address every heartbeat (registry.rs) and
//! serves through every worker. While Redis does not answer, instances keep serving with what
//! they know, nobody leads (so nobody launches or releases), and `/readyz` says why; when it is
//! back, even empty, the next heartbeat rebuilds the shared state.

mod lease;
mod registry;

pub use lease::{Held, Lease};
pub use registry::{PoolLoad, Registry, Report};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::ClusterConfig;
use crate::state::Shared;

/// How often an instance reports, and a follower tries for the lease.
pub const HEARTBEAT: Duration = Duration::from_millis(100);
/// Longest one Redis round trip may take before the store counts as unreachable.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// This instance's membership in the fleet.
pub struct Cluster {
    name: String,
    admin: String,
    url: String,
    lease: Lease,
    registry: Registry,
    lease_ttl: Duration,
    leader: AtomicBool,
    state: Mutex<State>,
    redis: tokio::sync::Mutex<Option<ConnectionManager>>,
}

#[derive(Default)]
struct State {
    held: Option<Held>,
    /// Until when, by this instance's clock, the lease is surely still ours.
    valid_until: Option<Instant>,
    leader: Option<String>,
    instances: Vec<Report>,
    problem: Option<String>,
}

/// `GET /api/v1/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    /// This instance.
    pub name: String,
    /// The leader's name, if there is one.
    pub leader: Option<String>,
    /// Every live instance.
    pub instances: Vec<InstanceView>,
}

/// One instance in [`ClusterView`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceView {
    /// Its name.
    pub name: String,
    /// Its admin API address.
    pub admin: String,
    /// Whether it leads.
    pub leader: bool,
    /// How long ago it last reported.
    pub last_seen_ms: u64,
    /// Requests in flight through it, all pools.
    pub in_flight: u64,
    /// Requests waiting in its queues, all pools.
    pub queued: u64,
}

impl Cluster {
    /// This instance's membership per `config`; `admin` is what the others see of it.
    pub fn new(config: &ClusterConfig, admin: std::net::SocketAddr) -> Arc<Self> {
        let name = config.name.clone().unwrap_or_else(default_name);
        let ttl = config.lease_ttl.get();
        Arc::new(Cluster {
            lease: Lease::new(&config.prefix, &name, ttl),
            registry: Registry::new(&config.prefix, ttl),
            url: config.redis.clone(),
            lease_ttl: ttl,
            leader: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            redis: tokio::sync::Mutex::new(None),
            admin: admin.to_string(),
            name,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This instance's name in the fleet.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this instance leads now (it alone scales).
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Why the fleet's coordination does not work now, for `/readyz`.
    pub fn problem(&self) -> Option<String> {
        self.state().problem.clone()
    }

    /// The fleet as last read.
    pub fn view(&self) -> ClusterView {
        let state = self.state();
        let now = unix_ms();
        ClusterView {
            name: self.name.clone(),
            leader: state.leader.clone(),
            instances: state
                .instances
                .iter()
                .map(|r| InstanceView {
                    name: r.name.clone(),
                    admin: r.admin.clone(),
                    leader: state.leader.as_deref() == Some(r.name.as_str()),
                    last_seen_ms: now.saturating_sub(r.at_ms),
                    in_flight: r.pools.values().map(|p| p.in_flight).sum(),
                    queued: r.pools.values().map(|p| p.queued).sum(),
                })
                .collect(),
        }
    }

    /// The load of `pool` at the other instances, as they last reported it.
    pub fn others_load(&self, pool: &str) -> PoolLoad {
        let state = self.state();
        state
            .instances
            .iter()
            .filter(|r| r.name != self.name)
            .filter_map(|r| r.pools.get(pool))
            .fold(PoolLoad::default(), |sum, p| PoolLoad {
                in_flight: sum.in_flight + p.in_flight,
                queued: sum.queued + p.queued,
            })
    }

    /// Whether this instance may make a provider call that takes up to `need`: it holds the
    /// lease, checked in Redis at once, with at least `need` of it left. A leader that lost its
    /// lease (paused, cut off) gets false and must not act.
    pub async fn may_act(&self, need: Duration) -> bool {
        let Some(held) = self.state().held.clone() else {
            return false;
        };
        // A clone of the connection: the lock is not held across the round trip.
        let Some(mut redis) = self.redis.lock().await.clone() else {
            return false;
        };
        let need = need.min(self.lease_ttl / 2);
        match tokio::time::timeout(
            REDIS_TIMEOUT,
            self.lease.still_held(&mut redis, &held, need),
        )
        .await
        {
            Ok(Ok(true)) => true,
            Ok(Ok(false)) => {
                warn!(
                    token = held.token,
                    "the lease is no longer ours; not acting"
                );
                self.lose_lead("lease lost");
                false
            }
            _ => false,
        }
    }

    fn lose_lead(&self, why: &str) {
        let mut state = self.state();
        if state.held.take().is_some() {
            info!(name = %self.name, why, "no longer the fleet's leader");
        }
        state.valid_until = None;
        self.leader.store(false, Ordering::Relaxed);
        crate::telemetry::set_cluster_leader(false);
    }

    /// Heartbeat until `stop`: report, hold or seek the lease, read the fleet. Then resign
    /// and leave the registry, so a successor does not wait for the TTL.
    pub async fn run(self: Arc<Self>, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            let result = tokio::time::timeout(REDIS_TIMEOUT * 2, self.beat(&shared)).await;
            let failure = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some("no answer within 2s".to_string()),
            };
            self.note(failure);
        }
        let held = self.state().held.clone();
        let mut guard = self.redis.lock().await;
        if let Some(redis) = guard.as_mut() {
            if let Some(held) = held {
                let _ = self.lease.resign(redis, &held).await;
            }
            let _ = self.registry.remove(redis, &self.name).await;
        }
        self.lose_lead("shutting down");
    }

    fn note(&self, failure: Option<String>) {
        let mut state = self.state();
        match failure {
            None => {
                if state.problem.take().is_some() {
                    info!(redis = %self.url, "redis answers again; the fleet's state is rebuilt");
                }
            }
            Some(e) => {
                let problem = format!("cluster: redis unreachable at {}: {e}", self.url);
                if state.problem.as_deref() != Some(problem.as_str()) {
                    warn!(%problem, "scaling is frozen; serving with the workers known");
                }
                state.problem = Some(problem);
                // Who leads is unknown while the store does not answer.
                state.leader = None;
                crate::telemetry::set_cluster_redis_up(false);
                // Past the lease's end by our clock, we lead no more.
                if state.valid_until.is_some_and(|t| Instant::now() >= t) {
                    drop(state);
                    self.lose_lead("redis unreachable past the lease");
                }
                return;
            }
        }
        crate::telemetry::set_cluster_redis_up(true);
    }

    async fn connection(&self) -> Result<ConnectionManager, String> {
        let mut guard = self.redis.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let client = redis::Client::open(self.url.as_str()).map_err(|e| e.to_string())?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(|e| e.to_string())?;
        *guard = Some(manager.clone());
        Ok(manager)
    }

    async fn beat(&self, shared: &Shared) -> Result<(), String> {
        let mut redis = self.connection().await?;
        let started = Instant::now();
        let held = self.state().held.clone();
        let now_held = self
            .lease
            .hold(&mut redis, held.as_ref())
            .await
            .map_err(|e| e.to_string())?;
        let report = self.report(shared, now_held.is_some());
        self.registry
            .write(&mut redis, &report)
            .await
            .map_err(|e| e.to_string())?;
        let instances = self
            .registry
            .read(&mut redis)
            .await
            .map_err(|e| e.to_string())?;
        let leader = self
            .lease
            .leader(&mut redis)
            .await
            .map_err(|e| e.to_string())?;
        let was = self.is_leader();
        {
            let mut state = self.state();
            if let Some(h) = &now_held {
                if held.as_ref() != Some(h) {
                    info!(name = %self.name, token = h.token, "leading the fleet");
                }
                // The renewal happened after `started`: the lease lasts at least this long.
                state.valid_until = Some(started + self.lease_ttl);
            } else {
                state.valid_until = None;
            }
            state.held = now_held.clone();
            state.leader = leader;
            state.instances = instances;
            crate::telemetry::set_cluster_instances(state.instances.len());
            let (rank, count) = place(&state.instances, &self.name);
            for pool in shared.snapshot_full().pools.values() {
                pool.set_fleet_place(rank, count);
            }
        }
        let is = now_held.is_some();
        if is != was {
            if !is {
                self.lose_lead("another instance holds the lease");
            } else {
                self.leader.store(true, Ordering::Relaxed);
                crate::telemetry::set_cluster_leader(true);
            }
        }
        Ok(())
    }

    fn report(&self, shared: &Shared, leader: bool) -> Report {
        let snapshot = shared.snapshot_full();
        Report {
            name: self.name.clone(),
            admin: self.admin.clone(),
            leader,
            at_ms: unix_ms(),
            pools: snapshot
                .pools
                .iter()
                .map(|(name, pool)| {
                    let load = PoolLoad {
                        in_flight: pool.in_flight(),
                        queued: pool.waiting() as u64,
                    };
                    (name.clone(), load)
                })
                .collect(),
        }
    }
}

/// This instance's rank among the live instances (by name) and their number, itself included
/// even before its first report is read back.
fn place(instances: &[Report], me: &str) -> (u32, u32) {
    let mut names: Vec<&str> = instances.iter().map(|r| r.name.as_str()).collect();
    if !names.contains(&me) {
        names.push(me);
    }
    names.sort_unstable();
    let rank = names.iter().position(|n| *n == me).unwrap_or(0);
    (rank as u32, names.len() as u32)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// hostname:pid, the name an instance has unless the config gives one.
fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "weir".into());
    format!("{host}:{}", std::process::id())
}
