//! Several weir instances as one fleet, coordinated through Redis (`[cluster]`): one leader,
//! elected by a lease with a fencing token (lease.rs), runs the scalers on the whole fleet's
//! load; every instance reports its load and admin address every heartbeat (registry.rs) and
//! serves through every worker the leader's records list (members.rs), keeping to its share of
//! each worker's cap (shares.rs). Instances also talk directly (peers.rs), so one cut off from
//! Redis is still heard, and relayed into Redis, rather than taken for gone. While Redis does
//! not answer, instances keep serving with what they know, nobody leads (so nobody launches or
//! releases), and `/readyz` says why; when it is back, even empty, the next heartbeat rebuilds
//! the shared state. An instance that hears less than a quorum of its fleet (more than half,
//! or half with Redis on its side) for half a lease stops using shared capacity and is not
//! ready ("isolated from the fleet"); only an instance that holds a quorum lets an unheard one
//! go, a whole lease after it was last heard, so the cap holds across a split.
//!
//! The code says fleet throughout; `cluster` stays only where operators already type it: the
//! `[cluster]` table, `GET /api/v1/cluster`, `weir cluster` and the `weir_cluster_*` metrics.

mod beat;
mod keys;
mod lease;
mod members;
mod peers;
mod registry;
mod shares;

pub use lease::{Held, Lease};
pub use members::{FleetMember, MemberBook, PoolMembers, RolloutMark};
pub use peers::{PeerNews, MAX_NEWS, PEER_PATH};
pub use registry::{PoolReport, Registry, Report, WorkerLoad};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::ClusterConfig;
use crate::pool::{FleetPlace, WorkerState};
use crate::state::Shared;
use shares::{Quorum, ShareBook};

/// How often an instance reports, and a follower tries for the lease.
pub const HEARTBEAT: Duration = Duration::from_millis(100);
/// Least time between two heartbeats when requests start waiting in between (a nudge).
const NUDGE_GAP: Duration = Duration::from_millis(20);
/// Longest one Redis round trip may take before the store counts as unreachable.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// How often an instance exchanges news with the peers it does not hear through Redis.
const PEER_EVERY: Duration = Duration::from_millis(200);
/// A report unchanged this long did not come through Redis at the last few heartbeats: its
/// writer is asked directly.
const STALE: Duration = Duration::from_millis(350);

/// This instance's membership in the fleet.
pub struct Fleet {
    name: String,
    /// The admin address the others see of this instance (`[cluster] advertise`, or learned).
    admin: arc_swap::ArcSwap<String>,
    /// The port to advertise with a learned IP; `None` once the address is fixed.
    learn_admin_ip: Option<u16>,
    url: String,
    lease: Lease,
    registry: Registry,
    beat: beat::Beat,
    lease_ttl: Duration,
    /// News older than this does not count toward a quorum (half a lease: an instance that
    /// loses its quorum stops using its share half a lease before the others let it go).
    fresh: Duration,
    leader: AtomicBool,
    /// This instance is stopping (reported, so the last to stop can tell it is last).
    leaving: AtomicBool,
    state: Mutex<State>,
    redis: tokio::sync::Mutex<Option<ConnectionManager>>,
    nudge: tokio::sync::Notify,
}

struct State {
    held: Option<Held>,
    /// Until when, by this instance's clock, the lease is surely still ours.
    valid_until: Option<Instant>,
    leader: Option<String>,
    /// Every instance heard lately (through Redis, or from peers), this one included.
    instances: Vec<Report>,
    /// The reports as Redis last gave them, and when that heartbeat started.
    redis_read: Vec<Report>,
    redis_at: Option<Instant>,
    /// The latest report of each instance heard from peers, and when it first came.
    peer_reports: HashMap<String, (Report, Instant)>,
    /// When the leader's records were last read, from Redis or from a peer that had.
    records_at: Option<Instant>,
    /// This instance's last report, and the `at_ms` it carried (kept increasing).
    own: Option<Report>,
    quorum: Quorum,
    /// It has heard the fleet at least once (through Redis or a peer): before that it cannot
    /// tell whom it would take capacity from, so it takes none.
    heard_fleet: bool,
    problem: Option<String>,
    /// What this instance's scalers, while leading, want the fleet to route to, per pool.
    published: BTreeMap<String, PoolMembers>,
    /// The leader's records as last read, per pool.
    records: HashMap<String, Arc<PoolMembers>>,
    shares: ShareBook,
    /// The fleet this instance's shares are bounded by now, and the one it last reported.
    bound: Vec<String>,
    reported: Vec<String>,
    /// The place taken last.
    place: FleetPlace,
}

impl Default for State {
    fn default() -> Self {
        State {
            held: None,
            valid_until: None,
            leader: None,
            instances: Vec::new(),
            redis_read: Vec::new(),
            redis_at: None,
            peer_reports: HashMap::new(),
            records_at: None,
            own: None,
            quorum: Quorum {
                heard: 1,
                of: 1,
                redis: false,
            },
            heard_fleet: false,
            problem: None,
            published: BTreeMap::new(),
            records: HashMap::new(),
            shares: ShareBook::new(Duration::from_secs(3)),
            bound: Vec::new(),
            reported: Vec::new(),
            // Pools in a fleet start with no share (state.rs).
            place: FleetPlace::Joining,
        }
    }
}

/// The load of one pool at the other instances, for the leader's decision.
#[derive(Debug, Default)]
pub struct OthersLoad {
    /// Requests waiting in their queues.
    pub queued: u64,
    /// Their requests on each worker (provider id): in flight now, served so far.
    pub workers: HashMap<String, WorkerLoad>,
}

/// `GET /api/v1/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetView {
    /// This instance.
    pub name: String,
    /// The leader's name, if there is one.
    pub leader: Option<String>,
    /// Every live instance.
    pub instances: Vec<InstanceView>,
    /// Why this instance uses no shared capacity now (it hears too little of the fleet), if
    /// it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolated: Option<String>,
}

/// One instance in [`FleetView`].
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
    /// The fleet (sorted names) whose division of every worker's cap it keeps to.
    #[serde(default)]
    pub fleet: Vec<String>,
    /// Per pool, how many requests it may have in flight over all the pool's workers: the
    /// sum of its shares of their caps (absent for a pool without a cap).
    #[serde(default)]
    pub shares: BTreeMap<String, u64>,
    /// Whether its last report reached Redis itself (false: a peer carried it).
    #[serde(default)]
    pub redis: bool,
}

impl Fleet {
    /// This instance's membership per `config`; `admin` is the admin listener's address.
    /// The others see `[cluster] advertise`, else `admin` when it names an IP, else this
    /// host's address toward Redis (learned at each new connection) with `admin`'s port.
    pub fn new(config: &ClusterConfig, admin: std::net::SocketAddr) -> Arc<Self> {
        let (advertised, learn_admin_ip) = match config.advertise {
            Some(fixed) => (fixed.get(), None),
            None if !admin.ip().is_unspecified() => (admin, None),
            None => (admin, Some(admin.port())),
        };
        let name = config.name.clone().unwrap_or_else(default_name);
        let ttl = config.lease_ttl.get();
        Arc::new(Fleet {
            lease: Lease::new(&config.prefix, &name, ttl),
            registry: Registry::new(&config.prefix),
            beat: beat::Beat::new(
                &config.prefix,
                &name,
                ttl,
                ttl,
                (ttl * 10).max(Duration::from_secs(30)),
            ),
            url: config.redis.clone(),
            lease_ttl: ttl,
            fresh: ttl / 2,
            leader: AtomicBool::new(false),
            leaving: AtomicBool::new(false),
            state: Mutex::new(State {
                shares: ShareBook::new(ttl),
                ..State::default()
            }),
            redis: tokio::sync::Mutex::new(None),
            nudge: tokio::sync::Notify::new(),
            admin: arc_swap::ArcSwap::from_pointee(advertised.to_string()),
            learn_admin_ip,
            name,
        })
    }

    /// The admin address the others see of this instance.
    pub fn advertised(&self) -> String {
        self.admin.load().as_ref().clone()
    }

    /// With no address to advertise configured: this host's address on the way to Redis
    /// (what the others, who reach Redis too, most likely reach it at), with the admin port.
    async fn learn_advertised(&self) {
        let Some(port) = self.learn_admin_ip else {
            return;
        };
        match local_ip_toward(&self.url).await {
            Ok(ip) => {
                let addr = std::net::SocketAddr::new(ip, port).to_string();
                if **self.admin.load() != addr {
                    info!(admin = %addr, "advertising this instance's admin API at the address it reaches redis from");
                    self.admin.store(Arc::new(addr));
                }
            }
            Err(e) => {
                warn!(redis = %self.url, error = %e, "cannot tell this host's address toward redis; set [cluster] advertise")
            }
        }
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

    /// Tell the fleet this instance is stopping, and wait until that has been reported and
    /// the others' reports read back (two heartbeats, bounded), so [`Fleet::last_to_leave`]
    /// answers on news. Serving has stopped by now; the lease and the reports go on until
    /// [`Fleet::run`] stops.
    pub async fn leave(&self) {
        self.leaving.store(true, Ordering::Relaxed);
        self.nudge();
        tokio::time::sleep(HEARTBEAT * 2 + NUDGE_GAP).await;
    }

    /// Whether every other live instance is stopping too (or there is none): the fleet ends
    /// with this instance, and nobody is left to hand its workers to.
    pub fn last_to_leave(&self) -> bool {
        let state = self.state();
        state.problem.is_none()
            && state
                .instances
                .iter()
                .filter(|r| r.name != self.name)
                .all(|r| r.leaving)
    }

    /// Whether this instance leads with its lease still valid by its own clock (renewed less
    /// than `lease_ttl` ago). A leader resumed after a pause past its lease is not sure until
    /// a heartbeat has asked Redis, and then it no longer leads.
    pub fn leads_surely(&self) -> bool {
        let state = self.state();
        state.held.is_some() && state.valid_until.is_some_and(|t| Instant::now() < t)
    }

    /// Why the fleet's coordination does not work now, for `/readyz`.
    pub fn problem(&self) -> Option<String> {
        self.state().problem.clone()
    }

    /// Why this instance uses no shared capacity now, for `/readyz` (not ready: the balancer
    /// in front should send its clients elsewhere); `None` while it hears a quorum.
    pub fn isolation(&self) -> Option<String> {
        let state = self.state();
        isolation(&state)
    }

    /// Whether the leader's records are current: read from Redis, or from a peer that had
    /// read them, within half a lease. Otherwise a follower follows the provider's listing.
    pub fn records_current(&self) -> bool {
        self.state()
            .records_at
            .is_some_and(|t| t.elapsed() < self.fresh)
    }

    /// The fleet as last read.
    pub fn view(&self) -> FleetView {
        let state = self.state();
        let now = unix_ms();
        FleetView {
            isolated: isolation(&state),
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
                    fleet: r.fleet.clone(),
                    shares: r
                        .pools
                        .iter()
                        .filter_map(|(name, p)| p.share.map(|s| (name.clone(), s)))
                        .collect(),
                    redis: r.redis,
                })
                .collect(),
        }
    }

    /// The load of `pool` at the other instances, as they last reported it.
    pub fn others_load(&self, pool: &str) -> OthersLoad {
        let state = self.state();
        let mut load = OthersLoad::default();
        for report in state.instances.iter().filter(|r| r.name != self.name) {
            let Some(p) = report.pools.get(pool) else {
                continue;
            };
            load.queued += p.queued;
            for (worker, l) in &p.workers {
                let sum = load.workers.entry(worker.clone()).or_default();
                sum.in_flight += l.in_flight;
                sum.served += l.served;
            }
        }
        load
    }

    /// Whether every other live instance has stopped routing to `worker` of `pool` and has
    /// nothing in flight on it, so the leader may release it: it lists the worker as draining
    /// with 0, or does not have it at all. An instance that has the worker but has not yet
    /// read the leader's mark holds the release back; one that left the fleet no longer
    /// counts. One that is not heard now but not known to be gone (cut off: it may still
    /// send to the worker) holds it back too, until it is let go (it stopped using shared
    /// capacity by then) or the drain times out.
    pub fn drained_everywhere(&self, pool: &str, worker: &str) -> bool {
        let state = self.state();
        if !state.shares.missing().is_empty() {
            return false;
        }
        state
            .instances
            .iter()
            .filter(|r| r.name != self.name)
            .all(|r| {
                r.pools.get(pool).is_none_or(|p| {
                    !p.workers.contains_key(worker) || p.draining.get(worker) == Some(&0)
                })
            })
    }

    /// While leading: what every instance should route to for `pool`, its workers, a
    /// canary's split and the rollout under way (written to Redis under the lease, with its
    /// token, at the next heartbeat, brought forward when it changed).
    pub fn publish(&self, pool: &str, record: PoolMembers) {
        let changed = {
            let mut state = self.state();
            if state.held.is_none() {
                // The lead was lost since the caller looked: what it publishes may already
                // be stale, and must not be written should this instance lead again.
                return;
            }
            let before = state.published.insert(pool.to_string(), record);
            before.as_ref() != state.published.get(pool)
        };
        if changed {
            // A launch or a drain: the fleet should know now, not a heartbeat later.
            self.nudge();
        }
    }

    /// The leader's record of `pool` as last read; `None` while there is none.
    pub fn record(&self, pool: &str) -> Option<Arc<PoolMembers>> {
        self.state().records.get(pool).cloned()
    }

    /// Report now rather than at the next heartbeat: requests started waiting here, and the
    /// leader should see them at its next read, not one heartbeat later.
    pub fn nudge(&self) {
        self.nudge.notify_one();
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
        // What it published as leader must never be written later, when it may be stale.
        state.published.clear();
        self.leader.store(false, Ordering::Relaxed);
        crate::telemetry::set_cluster_leader(false);
    }

    /// Heartbeat until `stop`: report, hold or seek the lease, read the fleet; beside it,
    /// exchange news with the peers Redis does not carry. Then resign and leave the
    /// registry, so a successor does not wait for the TTL.
    pub async fn run(self: Arc<Self>, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
        let peers =
            tokio::spawn(Arc::clone(&self).talk_to_peers(Arc::clone(&shared), stop.clone()));
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_beat = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.nudge.notified() => {
                    tokio::time::sleep_until(last_beat + NUDGE_GAP).await;
                }
                _ = stop.changed() => break,
            }
            last_beat = Instant::now();
            let result = tokio::time::timeout(REDIS_TIMEOUT * 2, self.beat(&shared)).await;
            let failure = match result {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some("no answer within 2s".to_string()),
            };
            if failure.is_some() {
                self.settle(&shared);
            }
            self.note(failure);
        }
        let _ = peers.await;
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

    /// Every [`PEER_EVERY`]: exchange news with the peers Redis does not carry, then settle
    /// this instance's place (also the watch that isolates it when nothing is heard, however
    /// long a heartbeat hangs).
    async fn talk_to_peers(self: Arc<Self>, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(PEER_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            self.peer_round(&shared).await;
            self.settle(&shared);
        }
    }

    async fn peer_round(&self, shared: &Shared) {
        let targets = self.peer_targets();
        if targets.is_empty() {
            return;
        }
        let news = self.news(shared);
        let token = shared.snapshot().admin_token.clone();
        let within = (self.lease_ttl / 4).clamp(Duration::from_millis(100), REDIS_TIMEOUT);
        let calls = targets.iter().map(|(name, admin)| {
            let (news, token) = (&news, token.as_deref());
            async move { (name, peers::exchange(admin, token, news, within).await) }
        });
        for (name, answer) in futures_util::future::join_all(calls).await {
            match answer {
                Ok(news) => self.hear(news, shared),
                Err(e) => debug!(peer = %name, error = %e, "no news from a peer"),
            }
        }
    }

    /// The peers to ask now (name, admin address): every one known while this instance's own
    /// heartbeat fails; otherwise those Redis does not carry: missing, stale, or relayed.
    fn peer_targets(&self) -> Vec<(String, String)> {
        let now = Instant::now();
        let state = self.state();
        let mut known: BTreeMap<&str, &str> = BTreeMap::new();
        let reports = state
            .redis_read
            .iter()
            .chain(state.peer_reports.values().map(|(r, _)| r))
            .chain(state.instances.iter());
        for r in reports.filter(|r| r.name != self.name && !r.admin.is_empty()) {
            known.insert(&r.name, &r.admin);
        }
        let own_beat_fails = !redis_fresh(&state, self.fresh, now);
        known
            .into_iter()
            .filter(|(name, _)| {
                if own_beat_fails {
                    return true;
                }
                let relayed = state.instances.iter().any(|r| r.name == *name && !r.redis);
                let book = &state.shares;
                let missing = book.missing().iter().any(|m| m == name);
                let stale = book.heard_within(name, self.lease_ttl, now)
                    && !book.heard_within(name, STALE, now);
                relayed || missing || stale
            })
            .map(|(name, admin)| (name.to_string(), admin.to_string()))
            .collect()
    }

    /// This instance's news for a peer: its report, the reports it holds, and the leader's
    /// records while it reads them from Redis.
    fn news(&self, shared: &Shared) -> PeerNews {
        let snapshot = shared.snapshot_full();
        let report = self.report(&snapshot, self.is_leader());
        let state = self.state();
        let redis = redis_fresh(&state, self.fresh, Instant::now());
        PeerNews {
            report: Report { redis, ..report },
            reports: state
                .instances
                .iter()
                .filter(|r| r.name != self.name)
                .cloned()
                .collect(),
            records: if redis {
                state
                    .records
                    .iter()
                    .map(|(pool, r)| (pool.clone(), (**r).clone()))
                    .collect()
            } else {
                BTreeMap::new()
            },
        }
    }

    /// A peer's news, sent here (`POST /api/v1/cluster/peer`): take it, answer with ours.
    pub fn exchange(&self, shared: &Shared, news: PeerNews) -> PeerNews {
        self.hear(news, shared);
        self.news(shared)
    }

    /// Take a peer's news: every report newer than the one held, and, while this instance
    /// cannot read Redis itself, the leader's records the peer read there.
    fn hear(&self, news: PeerNews, shared: &Shared) {
        let now = Instant::now();
        let changed = {
            let mut state = self.state();
            let state = &mut *state;
            let PeerNews {
                report,
                reports,
                records,
            } = news;
            for report in std::iter::once(report).chain(reports) {
                if report.name == self.name {
                    continue;
                }
                let newer = state
                    .peer_reports
                    .get(&report.name)
                    .is_none_or(|(known, _)| known.at_ms < report.at_ms);
                if newer {
                    state
                        .peer_reports
                        .insert(report.name.clone(), (report, now));
                }
            }
            let keep = self.lease_ttl * 10;
            state
                .peer_reports
                .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < keep);
            if records.is_empty() || redis_fresh(state, self.fresh, now) {
                Vec::new()
            } else {
                state.records_at = Some(now);
                take_records(state, records.into_iter())
            }
        };
        if !changed.is_empty() {
            for pool in shared.snapshot_full().pools.values() {
                if changed.contains(&pool.name) {
                    pool.demand().notify_one();
                }
            }
        }
    }

    /// Settle this instance's place from everything heard (Redis and peers): the live
    /// instances, whether it holds a quorum, and its share of every worker's cap (none
    /// without a quorum, or before it ever heard the fleet).
    fn settle(&self, shared: &Shared) {
        let now = Instant::now();
        let place = {
            let mut guard = self.state();
            let state = &mut *guard;
            let mut merged: BTreeMap<String, Report> = BTreeMap::new();
            // A report read from Redis lives there a lease: it counts that long.
            if state
                .redis_at
                .is_some_and(|t| now.saturating_duration_since(t) < self.lease_ttl)
            {
                for r in &state.redis_read {
                    merged.insert(r.name.clone(), r.clone());
                }
            }
            for (r, seen) in state.peer_reports.values() {
                if now.saturating_duration_since(*seen) >= self.lease_ttl {
                    continue;
                }
                if merged
                    .get(&r.name)
                    .is_none_or(|known| known.at_ms < r.at_ms)
                {
                    merged.insert(r.name.clone(), r.clone());
                }
            }
            if let Some(own) = &state.own {
                merged.insert(self.name.clone(), own.clone());
            }
            state.instances = merged.into_values().collect();
            crate::telemetry::set_cluster_instances(state.instances.len());
            let was_isolated = isolation(state).is_some();
            state.heard_fleet |= state.redis_at.is_some() || !state.peer_reports.is_empty();
            let (place, bound, quorum) = state.shares.settle(
                &self.name,
                &state.instances,
                &state.reported,
                &state.bound,
                now,
                self.fresh,
                redis_fresh(state, self.fresh, now),
                state.heard_fleet,
            );
            state.quorum = quorum;
            state.bound = bound;
            if state.place != place {
                debug!(name = %self.name, ?place, fleet = ?state.bound, "place in the fleet changed");
            }
            state.place = place;
            match (was_isolated, isolation(state)) {
                (false, Some(why)) => {
                    warn!(%why, "using no shared capacity; requests wait in the queue")
                }
                (true, None) => {
                    info!(quorum = ?state.quorum, "hears the fleet: using shared capacity")
                }
                _ => {}
            }
            place
        };
        for pool in shared.snapshot_full().pools.values() {
            pool.set_fleet_place(place);
        }
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
        drop(guard);
        self.learn_advertised().await;
        Ok(manager)
    }

    async fn beat(&self, shared: &Shared) -> Result<(), String> {
        let mut redis = self.connection().await?;
        let started = Instant::now();
        let held = self.state().held.clone();
        let snapshot = shared.snapshot_full();
        let pools: Vec<String> = snapshot.pools.keys().cloned().collect();
        let report = self.report(&snapshot, held.is_some());
        let records = held
            .as_ref()
            .map(|h| self.published_records(h.token))
            .unwrap_or_default();
        let beaten = self
            .beat
            .run(
                &mut redis,
                held.as_ref(),
                &report,
                &pools,
                &records,
                self.lease.floor(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let now_held = beaten.held;
        let instances = beaten.reports;
        let leader = beaten.leader;
        let records = beaten.records;
        let was = self.is_leader();
        let changed;
        let relays;
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
            state.redis_read = instances;
            state.redis_at = Some(started);
            state.records_at = Some(started);
            let read = pools
                .iter()
                .cloned()
                .zip(records)
                .filter_map(|(pool, text)| {
                    let record = serde_json::from_str::<PoolMembers>(&text?).ok()?;
                    Some((pool, record))
                });
            changed = take_records(&mut state, read);
            relays = to_relay(&state, Instant::now(), self.fresh);
            // Tokens seen, so a lease taken later gets a larger one even from an empty Redis.
            for token in now_held
                .iter()
                .map(|h| h.token)
                .chain(state.records.values().map(|r| r.token))
            {
                self.lease.raise_floor(token);
            }
        }
        if !relays.is_empty() {
            // Best effort: the next heartbeat tries again, and the peers ask it directly.
            if let Err(e) = self
                .registry
                .relay(&mut redis, &relays, self.lease_ttl)
                .await
            {
                debug!(error = %e, "relaying peers' reports into redis failed");
            }
        }
        self.settle(shared);
        for pool in snapshot.pools.values() {
            if now_held.is_some() || changed.contains(&pool.name) {
                // The leader's scalers decide on the fleet's load just read; a follower's
                // follow a changed record at once.
                pool.demand().notify_one();
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

    /// The records this instance's scalers published, as JSON under `token`, by pool.
    fn published_records(&self, token: u64) -> BTreeMap<String, String> {
        let state = self.state();
        state
            .published
            .iter()
            .map(|(pool, record)| {
                let record = PoolMembers {
                    token,
                    ..record.clone()
                };
                let json = serde_json::to_string(&record).unwrap_or_default();
                (pool.clone(), json)
            })
            .collect()
    }

    fn report(&self, snapshot: &crate::state::Snapshot, leader: bool) -> Report {
        let pools = snapshot
            .pools
            .iter()
            .map(|(name, pool)| {
                let mut report = PoolReport {
                    in_flight: pool.in_flight(),
                    queued: pool.waiting() as u64,
                    ..PoolReport::default()
                };
                let mut share = Some(0u64);
                for w in pool.workers().iter() {
                    let in_flight = w.in_flight();
                    let load = WorkerLoad {
                        in_flight,
                        served: w.served(),
                    };
                    report.workers.insert(w.name.clone(), load);
                    share = match w.max_in_flight() {
                        crate::pool::UNLIMITED => None,
                        cap => share.map(|s| s + u64::from(cap)),
                    };
                    if w.state() == WorkerState::Draining {
                        report.draining.insert(w.name.clone(), in_flight);
                    }
                }
                report.share = share;
                (name.clone(), report)
            })
            .collect();
        // The fleet whose shares this instance keeps to: the new one only once no worker has
        // more in flight from here than the new share.
        let within = snapshot.pools.values().all(|p| p.within_caps());
        let mut state = self.state();
        if within {
            state.reported = state.bound.clone();
        }
        // Increasing even if the wall clock steps back: the others hear news by `at_ms`.
        let at_ms = unix_ms().max(state.own.as_ref().map_or(0, |r| r.at_ms + 1));
        let report = Report {
            name: self.name.clone(),
            admin: self.advertised(),
            leader,
            at_ms,
            pools,
            fleet: state.reported.clone(),
            leaving: self.leaving.load(Ordering::Relaxed),
            // Written by the heartbeat, it reached Redis if it is read at all; a peer's news
            // says otherwise when this instance's heartbeat fails.
            redis: true,
        };
        state.own = Some(report.clone());
        report
    }
}

/// Keep the records just read; one that is missing (none written yet, or an empty Redis)
/// leaves the last one known in place, and so does one under an older fencing token (a
/// deposed leader's, relayed late). Returns the pools whose record changed.
fn take_records(
    state: &mut State,
    read: impl Iterator<Item = (String, PoolMembers)>,
) -> Vec<String> {
    let mut changed_pools = Vec::new();
    for (pool, record) in read {
        let changed = state
            .records
            .get(&pool)
            .is_none_or(|known| known.token <= record.token && **known != record);
        if changed {
            state.records.insert(pool.clone(), Arc::new(record));
            changed_pools.push(pool);
        }
    }
    changed_pools
}

/// The reports heard lately from peers that cannot reach Redis themselves and that are newer
/// than what Redis gave: written there for everyone who reads it.
fn to_relay(state: &State, now: Instant, fresh: Duration) -> Vec<Report> {
    state
        .peer_reports
        .values()
        .filter(|(r, seen)| !r.redis && now.saturating_duration_since(*seen) < fresh)
        .filter(|(r, _)| {
            state
                .redis_read
                .iter()
                .find(|known| known.name == r.name)
                .is_none_or(|known| known.at_ms < r.at_ms)
        })
        .map(|(r, _)| r.clone())
        .collect()
}

/// Whether this instance's own heartbeat reached Redis within `fresh`.
fn redis_fresh(state: &State, fresh: Duration, now: Instant) -> bool {
    state
        .redis_at
        .is_some_and(|t| now.saturating_duration_since(t) < fresh)
}

/// Why an instance in `state` uses no shared capacity, if it does not.
fn isolation(state: &State) -> Option<String> {
    if state.heard_fleet && state.quorum.holds() {
        return None;
    }
    if !state.heard_fleet {
        return Some("cluster: isolated from the fleet: not heard yet (no redis, no peer)".into());
    }
    let q = state.quorum;
    Some(format!(
        "cluster: isolated from the fleet: hears {} of its {} instances{} within half a lease",
        q.heard,
        q.of,
        if q.redis {
            " with redis"
        } else {
            ", not redis,"
        }
    ))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The local IP this host sends from toward the Redis of `url` (a connected UDP socket: no
/// packet is sent; the kernel picks the route and its source address).
async fn local_ip_toward(url: &str) -> Result<std::net::IpAddr, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let (host, port) = match client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port) => (host.clone(), *port),
        redis::ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port),
        _ => return Err("redis is reached over a unix socket".into()),
    };
    let target = tokio::time::timeout(
        REDIS_TIMEOUT,
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await
    .map_err(|_| format!("resolving {host} took over {REDIS_TIMEOUT:?}"))?
    .map_err(|e| e.to_string())?
    .next()
    .ok_or_else(|| format!("{host} resolves to no address"))?;
    let unspecified: std::net::SocketAddr = if target.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = std::net::UdpSocket::bind(unspecified).map_err(|e| e.to_string())?;
    socket.connect(target).map_err(|e| e.to_string())?;
    Ok(socket.local_addr().map_err(|e| e.to_string())?.ip())
}

/// hostname:pid, the name an instance has unless the config gives one.
fn default_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "weir".into());
    format!("{host}:{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(name: &str) -> Arc<Fleet> {
        let config: ClusterConfig = toml::from_str(&format!(
            "redis = \"redis://127.0.0.1:1/0\"\nname = \"{name}\"\nlease_ttl = \"2s\"\n"
        ))
        .expect("a cluster table");
        Fleet::new(&config, "127.0.0.1:9901".parse().expect("an address"))
    }

    fn report(name: &str, at_ms: u64, draining: Option<u32>) -> Report {
        let mut pool = PoolReport::default();
        if let Some(in_flight) = draining {
            pool.workers.insert("w".into(), WorkerLoad::default());
            pool.draining.insert("w".into(), in_flight);
        }
        Report {
            name: name.into(),
            admin: String::new(),
            leader: false,
            at_ms,
            pools: BTreeMap::from([("p".to_string(), pool)]),
            fleet: vec!["a".into(), "b".into(), "c".into()],
            leaving: false,
            redis: true,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_waits_for_an_instance_unheard_but_not_known_gone() {
        let a = fleet("a");
        let ttl = Duration::from_secs(2);
        let place = |state: &mut State, instances: Vec<Report>| {
            let fleet = vec!["a".to_string(), "b".to_string(), "c".to_string()];
            state.instances = instances;
            state
                .shares
                .place("a", &state.instances, &fleet, Instant::now(), true);
        };
        {
            let mut state = a.state();
            let heard = vec![report("b", 1, Some(0)), report("c", 1, Some(0))];
            place(&mut state, heard);
        }
        assert!(a.drained_everywhere("p", "w"), "both drained it");
        // c goes quiet (cut off, or crashed): it may still be sending to the worker.
        {
            let mut state = a.state();
            place(&mut state, vec![report("b", 2, Some(0))]);
        }
        assert!(!a.drained_everywhere("p", "w"), "c is not known to be gone");
        // A lease later, with Redis and half of the fleet on a's side, c is let go: it has
        // used no shared capacity for half a lease.
        tokio::time::advance(ttl).await;
        {
            let mut state = a.state();
            place(&mut state, vec![report("b", 3, Some(0))]);
        }
        assert!(a.drained_everywhere("p", "w"));
        // b still has requests on it: held back.
        {
            let mut state = a.state();
            place(&mut state, vec![report("b", 4, Some(2))]);
        }
        assert!(!a.drained_everywhere("p", "w"));
    }

    #[test]
    fn records_under_an_older_token_are_not_taken() {
        let mut state = State::default();
        let record = |token| PoolMembers {
            token,
            workers: Vec::new(),
            split: None,
            rollout: None,
        };
        let changed = take_records(&mut state, [("p".to_string(), record(5))].into_iter());
        assert_eq!(changed, vec!["p".to_string()]);
        let stale = take_records(&mut state, [("p".to_string(), record(4))].into_iter());
        assert!(stale.is_empty(), "a deposed leader's record, relayed late");
        assert_eq!(state.records["p"].token, 5);
    }
}
