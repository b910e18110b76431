//! Pools of workers and their live state. A pool's worker list is an `ArcSwap` snapshot so the
//! request path reads it without locking while health checks and the autoscaler change it.
//!
//! Admission: a request takes a slot on a ready worker under its concurrency cap (lock-free);
//! when there is none it waits in its route's bounded queue, and the moment a slot frees (a
//! response ends, a worker becomes ready) the oldest waiting request of the pool gets it.

mod balance;
mod health;
mod latency;
mod queue;
mod retry_budget;
mod revisions;
mod share;
pub mod sticky;
mod transport;
mod worker;

pub use balance::Balancer;
pub use health::{HealthSettings, ProbeKind};
pub use latency::{LatencyCounts, LatencyHistogram};
pub use queue::{RouteQueue, WaitReason, WaitingRequest};
pub use retry_budget::RetryBudget;
pub use revisions::{AnswerCounts, RevisionSplit, RevisionStats};
pub use share::{fleet_share, FleetPlace};
pub use transport::{Transport, WorkerTls};
pub use worker::{count_in, InFlightGuard, Worker, WorkerSpec, WorkerState, UNLIMITED};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};

use revisions::SplitSides;

use crate::config::{Balance, PoolConfig};
use queue::WaitQueue;

/// Why a request was turned away without reaching a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The route's queue was full.
    QueueFull,
    /// The request waited its route's whole `queue.timeout`.
    QueueTimeout,
    /// The pool gave up on the launch the request was waiting for.
    NoCapacity,
}

/// A slot won for a request, and how long the request waited for it.
pub struct Admission {
    /// The slot; dropping it frees it.
    pub slot: InFlightGuard,
    /// Time spent in the queue; zero when a slot was free at once.
    pub waited: Duration,
    /// Why it waited, if it did; `NoWorker` means it waited for a worker to start (cold start).
    pub reason: Option<WaitReason>,
}

/// Retry settings the request path needs.
#[derive(Debug, Clone, Copy)]
pub struct RetrySettings {
    /// Tries per request, first included.
    pub max_tries: u32,
    /// Largest body buffered so an idempotent request can be replayed.
    pub buffer_body_bytes: usize,
    /// Some response status is retried on another worker (`retries.on_status` is not empty):
    /// only then does a response cost a look at the list ([`Pool::retries_on_status`]).
    pub on_status: bool,
}

/// A pool's policies, built from its config before anything live changes (so a reload that
/// fails changes nothing) and applied in place by [`Pool::apply`].
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    /// How a worker is picked.
    pub balance: Balance,
    /// Per-worker cap ([`UNLIMITED`] for none).
    pub worker_concurrency: u32,
    /// Probe settings.
    pub health: HealthSettings,
    /// Tries per request, first included (at least 1).
    pub retry_max_tries: u32,
    /// Largest body buffered for a replay.
    pub retry_buffer_bytes: usize,
    /// Retries as a share of requests.
    pub retry_budget: f64,
    /// Statuses retried once on another worker (`retries.on_status`), sorted, no repeats.
    pub retry_statuses: Vec<u16>,
}

impl PoolSettings {
    /// A pool's policies, from its config (checked when it was read).
    pub fn from_config(config: &PoolConfig) -> Self {
        PoolSettings {
            balance: config.balance,
            worker_concurrency: config.worker_concurrency.unwrap_or(UNLIMITED),
            health: HealthSettings::from_config(config.health.as_ref()),
            retry_max_tries: config.retries.max_tries.max(1),
            retry_buffer_bytes: config.retries.buffer_body_bytes,
            retry_budget: config.retries.budget,
            retry_statuses: statuses(&config.retries.on_status),
        }
    }
}

/// A named group of interchangeable workers.
pub struct Pool {
    /// The `[pools.NAME]` key.
    pub name: String,
    health: ArcSwap<HealthSettings>,
    retry_max_tries: AtomicU32,
    retry_buffer_bytes: AtomicUsize,
    /// `retries.on_status`, sorted; swapped whole on reload.
    retry_statuses: ArcSwap<Vec<u16>>,
    /// `retry_statuses` is not empty (read per request, so a plain atomic).
    retry_on_status: AtomicBool,
    balancer: Balancer,
    workers: ArcSwap<Vec<Arc<Worker>>>,
    worker_concurrency: AtomicU32,
    /// This instance's place in its fleet, by which each worker's `worker_concurrency` is
    /// divided among the fleet's instances (read when caps change, not per request).
    fleet_place: Mutex<FleetPlace>,
    waiting: Arc<AtomicUsize>,
    queue: Mutex<WaitQueue>,
    budget: RetryBudget,
    demand: tokio::sync::Notify,
    /// How long its routes' responses took, end to end (the dashboard's history reads it).
    latency: Arc<LatencyHistogram>,
    /// A canary's split of the requests by revision, with the workers cut to its sides.
    split: ArcSwapOption<SplitSides>,
    /// Requests given a side of the split so far (which side is a function of the count).
    split_turns: AtomicU64,
    /// The answers of each revision's workers (`""`: workers of unknown revision), kept
    /// while the revision has workers.
    revision_stats: Mutex<HashMap<String, Arc<RevisionStats>>>,
    /// How its workers are reached (protocol, TLS); swapped whole by a reload.
    transport: ArcSwap<Transport>,
    /// Session affinity, if any (`sticky`); swapped whole by a reload.
    sticky: ArcSwapOption<crate::config::StickyConfig>,
    me: Weak<Pool>,
}

impl Pool {
    /// Build a pool from its config, with no workers yet: they join through
    /// [`crate::membership::Membership`], from whatever source the pool's provider is.
    pub fn from_config(name: &str, config: &PoolConfig) -> Arc<Self> {
        let settings = PoolSettings::from_config(config);
        let waiting = Arc::new(AtomicUsize::new(0));
        Arc::new_cyclic(|me: &Weak<Pool>| Pool {
            name: name.to_string(),
            retry_max_tries: AtomicU32::new(settings.retry_max_tries),
            retry_buffer_bytes: AtomicUsize::new(settings.retry_buffer_bytes),
            retry_on_status: AtomicBool::new(!settings.retry_statuses.is_empty()),
            retry_statuses: ArcSwap::from_pointee(settings.retry_statuses),
            budget: RetryBudget::new(settings.retry_budget),
            demand: tokio::sync::Notify::new(),
            health: ArcSwap::from_pointee(settings.health),
            balancer: Balancer::new(settings.balance),
            workers: ArcSwap::from_pointee(Vec::new()),
            worker_concurrency: AtomicU32::new(settings.worker_concurrency),
            fleet_place: Mutex::new(FleetPlace::Alone),
            queue: Mutex::new(WaitQueue::new(Arc::clone(&waiting))),
            waiting,
            latency: Arc::default(),
            split: ArcSwapOption::empty(),
            split_turns: AtomicU64::new(0),
            revision_stats: Mutex::new(HashMap::new()),
            transport: ArcSwap::from_pointee(Transport::plain()),
            sticky: ArcSwapOption::from_pointee(config.sticky.clone()),
            me: me.clone(),
        })
    }

    /// The latencies of this pool's responses: the request path adds to it, the history
    /// sampler reads it.
    pub fn latency(&self) -> &Arc<LatencyHistogram> {
        &self.latency
    }

    /// How the workers are reached now.
    pub fn transport(&self) -> Arc<Transport> {
        self.transport.load_full()
    }

    /// Reach the workers this way from the next connection on (open ones finish as they are).
    pub fn set_transport(&self, transport: Arc<Transport>) {
        self.transport.store(transport);
    }

    /// Session affinity now.
    pub fn sticky(&self) -> Option<Arc<crate::config::StickyConfig>> {
        self.sticky.load_full()
    }

    /// Apply a reloaded `sticky` (from the next request on).
    pub fn set_sticky(&self, sticky: Option<crate::config::StickyConfig>) {
        if self.sticky.load().as_deref() != sticky.as_ref() {
            self.sticky.store(sticky.map(Arc::new));
        }
    }

    /// [`Pool::try_acquire`] for a request with an affinity key: its worker by
    /// [`sticky::acquire`] (bounded loads), or none free now.
    pub fn try_acquire_keyed(
        &self,
        key: Option<u64>,
        exclude: Option<u64>,
    ) -> Option<InFlightGuard> {
        match key {
            Some(key) => sticky::acquire(&self.workers.load(), key, exclude),
            None => self.try_acquire(exclude),
        }
    }

    /// Retry settings now.
    pub fn retry(&self) -> RetrySettings {
        RetrySettings {
            max_tries: self.retry_max_tries.load(Ordering::Relaxed),
            buffer_body_bytes: self.retry_buffer_bytes.load(Ordering::Relaxed),
            on_status: self.retry_on_status.load(Ordering::Relaxed),
        }
    }

    /// Whether a response with `status` sends a replayable request to another worker
    /// (`retries.on_status`).
    pub fn retries_on_status(&self, status: u16) -> bool {
        self.retry_statuses.load().binary_search(&status).is_ok()
    }

    /// Probe settings now.
    pub fn health(&self) -> Arc<HealthSettings> {
        self.health.load_full()
    }

    /// Apply a reloaded config's policies (balance, concurrency, health, retries) in place, so
    /// workers, counters and waiting requests carry on. Cannot fail: the settings were built
    /// (and could fail) before anything live changed. Returns whether anything changed.
    pub fn apply(&self, settings: &PoolSettings) -> bool {
        let mut changed = false;
        if self.balancer.policy() != settings.balance {
            self.balancer.set_policy(settings.balance);
            changed = true;
        }
        let concurrency = settings.worker_concurrency;
        if self.worker_concurrency.swap(concurrency, Ordering::Relaxed) != concurrency {
            self.recap_workers();
            changed = true;
        }
        if *self.health.load_full() != settings.health {
            for w in self.workers.load().iter() {
                w.set_unhealthy_threshold(settings.health.unhealthy_threshold);
            }
            self.health.store(Arc::new(settings.health.clone()));
            changed = true;
        }
        changed |= self
            .retry_max_tries
            .swap(settings.retry_max_tries, Ordering::Relaxed)
            != settings.retry_max_tries;
        changed |= self
            .retry_buffer_bytes
            .swap(settings.retry_buffer_bytes, Ordering::Relaxed)
            != settings.retry_buffer_bytes;
        changed |= self.budget.set_ratio(settings.retry_budget);
        if **self.retry_statuses.load() != settings.retry_statuses {
            self.retry_on_status
                .store(!settings.retry_statuses.is_empty(), Ordering::Relaxed);
            self.retry_statuses
                .store(Arc::new(settings.retry_statuses.clone()));
            changed = true;
        }
        // More room may have opened up for waiting requests.
        self.dispatch();
        changed
    }

    fn lock_queue(&self) -> MutexGuard<'_, WaitQueue> {
        // The queue stays consistent even if a holder panicked: keep serving from it.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take a slot on a ready worker with headroom, without waiting.
    pub fn try_acquire(&self, exclude: Option<u64>) -> Option<InFlightGuard> {
        let workers = self.workers.load();
        let split = self.split.load();
        let Some(sides) = split.as_ref() else {
            return self.balancer.acquire(&workers, exclude);
        };
        let recut;
        let sides = if Arc::ptr_eq(&sides.built_from, &workers) {
            sides
        } else {
            // The workers changed since the sides were cut: cut them again, once.
            recut = Arc::new(SplitSides::cut(sides.split.clone(), Arc::clone(&workers)));
            self.split
                .compare_and_swap(&split, Some(Arc::clone(&recut)));
            &recut
        };
        let turn = self.split_turns.fetch_add(1, Ordering::Relaxed);
        let (first, second) = if sides.new_turn(turn) {
            (&sides.new, &sides.old)
        } else {
            (&sides.old, &sides.new)
        };
        // A side with no free slot (no new worker ready yet, all busy) does not hold the
        // request back: the other side takes it.
        self.balancer
            .acquire(first, exclude)
            .or_else(|| self.balancer.acquire(second, exclude))
    }

    /// Send `weight` percent of the requests to workers of a revision, the rest to the
    /// others (a canary step), or stop splitting (`None`).
    pub fn set_split(&self, split: Option<RevisionSplit>) {
        let current = self.split.load();
        if current.as_ref().map(|s| &s.split) == split.as_ref() {
            return;
        }
        self.split
            .store(split.map(|split| Arc::new(SplitSides::cut(split, self.workers.load_full()))));
    }

    /// The canary split in force, if any.
    pub fn split(&self) -> Option<RevisionSplit> {
        self.split.load().as_ref().map(|s| s.split.clone())
    }

    /// The answers of `revision`'s workers so far (zero for a revision never seen).
    pub fn answers_of(&self, revision: &str) -> AnswerCounts {
        self.lock_stats()
            .get(revision)
            .map(|s| s.snapshot())
            .unwrap_or_default()
    }

    /// The answers of the workers of every revision but `revision`, together.
    pub fn answers_besides(&self, revision: &str) -> AnswerCounts {
        let mut sum = AnswerCounts::default();
        for (_, stats) in self.lock_stats().iter().filter(|(r, _)| *r != revision) {
            sum.add(&stats.snapshot());
        }
        sum
    }

    fn lock_stats(&self) -> MutexGuard<'_, HashMap<String, Arc<RevisionStats>>> {
        self.revision_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The counters a worker of `revision` adds its answers to; revisions no worker has any
    /// more are forgotten here.
    fn stats_for(&self, revision: &str) -> Arc<RevisionStats> {
        let workers = self.workers.load();
        let mut all = self.lock_stats();
        all.retain(|r, _| {
            r == revision
                || workers
                    .iter()
                    .any(|w| w.revision().unwrap_or_default() == r)
        });
        Arc::clone(all.entry(revision.to_string()).or_default())
    }

    /// Take a slot, waiting in `route`'s queue if none is free. The wait ends early if the
    /// caller drops this future (the client left): its entry leaves the queue at once.
    pub async fn acquire(
        &self,
        route: &Arc<RouteQueue>,
        exclude: Option<u64>,
    ) -> Result<Admission, Rejection> {
        if let Some(slot) = self.try_acquire(exclude) {
            return Ok(Admission {
                slot,
                waited: Duration::ZERO,
                reason: None,
            });
        }
        let reason = if self
            .workers
            .load()
            .iter()
            .any(|w| w.state() == WorkerState::Ready)
        {
            WaitReason::WorkerBusy
        } else {
            WaitReason::NoWorker
        };
        let (id, enqueued_at, mut rx) = self
            .lock_queue()
            .push(route, reason)
            .ok_or(Rejection::QueueFull)?;
        let mut entry = QueueEntry {
            pool: self,
            id,
            queued: true,
        };
        // Tell the scaler at once (a request waiting with no worker launches one), and serve the
        // queue now in case a slot freed between the failed try and the push.
        self.demand.notify_one();
        self.dispatch();
        let deadline = enqueued_at + route.timeout;
        let slot = match tokio::time::timeout_at(deadline, &mut rx).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) => {
                // Dropped without a slot by `fail_waiting`.
                entry.queued = false;
                return Err(Rejection::NoCapacity);
            }
            Err(_) => {
                if self.lock_queue().remove(id) {
                    entry.queued = false;
                    return Err(Rejection::QueueTimeout);
                }
                // Served at the very last moment: take the slot rather than fail.
                match rx.try_recv() {
                    Ok(slot) => slot,
                    Err(_) => {
                        entry.queued = false;
                        return Err(Rejection::QueueTimeout);
                    }
                }
            }
        };
        entry.queued = false;
        Ok(Admission {
            slot,
            waited: enqueued_at.elapsed(),
            reason: Some(reason),
        })
    }

    /// Hand free slots to waiting requests, oldest first, until either runs out. Called when a
    /// slot frees or a worker becomes ready; returns at once when nobody waits.
    pub fn dispatch(&self) {
        while self.waiting.load(Ordering::SeqCst) > 0 {
            let Some(slot) = self.try_acquire(None) else {
                return;
            };
            let served = self.lock_queue().serve_oldest(slot);
            if let Err(unwanted) = served {
                unwanted.release_quietly();
            }
        }
    }

    /// Fail every waiting request at once (the launch they waited for failed and no other
    /// worker is ready or starting); returns how many.
    pub fn fail_waiting(&self) -> usize {
        self.lock_queue().fail_all()
    }

    /// Wakes the scaler whenever a request starts waiting.
    pub fn demand(&self) -> &tokio::sync::Notify {
        &self.demand
    }

    /// The balancer (the scaler tunes its surplus threshold).
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// Remove a worker from the pool (released or dead); its in-flight requests finish or fail
    /// on their own.
    pub fn remove_worker(&self, id: u64) -> Option<Arc<Worker>> {
        let mut removed = None;
        self.workers.rcu(|current| {
            let mut next = current.as_ref().clone();
            removed = next.iter().position(|w| w.id == id).map(|i| next.remove(i));
            next
        });
        removed
    }

    /// Requests waiting across the pool's routes.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The waiting requests, oldest first (admin API).
    pub fn waiting_requests(&self) -> Vec<WaitingRequest> {
        self.lock_queue().snapshot()
    }

    /// Spend a retry from the pool's budget.
    pub fn try_spend_retry(&self) -> bool {
        let served: u64 = self.workers.load().iter().map(|w| w.served()).sum();
        self.budget.try_spend(served)
    }

    /// The worker whose provider id is `name`, if it is in the pool.
    pub fn worker_named(&self, name: &str) -> Option<Arc<Worker>> {
        self.workers.load().iter().find(|w| w.name == name).cloned()
    }

    /// The current workers (a snapshot).
    pub fn workers(&self) -> Arc<Vec<Arc<Worker>>> {
        self.workers.load_full()
    }

    /// Take this instance's place in its fleet: each worker's cap becomes this instance's
    /// share of `worker_concurrency`, so the fleet's shares add up to it and no worker sees
    /// more than it from all instances together.
    pub fn set_fleet_place(&self, place: FleetPlace) {
        let changed = {
            let mut current = self.fleet_place.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *current, place) != place
        };
        if changed {
            self.recap_workers();
        }
    }

    /// Whether no worker has more in flight from this instance than its cap now allows (a
    /// share just shrunk is not made room for until then).
    pub fn within_caps(&self) -> bool {
        self.workers
            .load()
            .iter()
            .all(|w| w.in_flight() <= w.max_in_flight())
    }

    /// This instance's cap on the worker `name`.
    fn cap_for(&self, name: &str) -> u32 {
        let place = *self.fleet_place.lock().unwrap_or_else(|p| p.into_inner());
        place.share(self.worker_concurrency.load(Ordering::Relaxed), name)
    }

    fn recap_workers(&self) {
        for w in self.workers.load().iter() {
            w.set_max_in_flight(self.cap_for(&w.name));
        }
    }

    /// Add a worker in `state`; `name` is its provider id, `revision` the launch template's it
    /// runs, if known. Sources add workers through [`crate::membership::Membership`], which
    /// also attaches its probes.
    pub fn add_worker(
        &self,
        name: String,
        addr: std::net::SocketAddr,
        state: WorkerState,
        revision: Option<String>,
    ) -> Arc<Worker> {
        let spec = WorkerSpec {
            max_in_flight: self.cap_for(&name),
            name,
            addr,
            state,
            unhealthy_threshold: self.health.load().unhealthy_threshold,
        };
        let worker = Worker::new(spec, Arc::clone(&self.waiting), self.me.clone());
        let stats = self.stats_for(revision.as_deref().unwrap_or_default());
        worker.set_revision(revision, stats);
        self.workers.rcu(|current| {
            let mut next = current.as_ref().clone();
            next.push(Arc::clone(&worker));
            next
        });
        // A fleet's new share may have been applied between the cap's read and the push.
        worker.set_max_in_flight(self.cap_for(&worker.name));
        if state == WorkerState::Ready {
            self.dispatch();
        }
        worker
    }

    /// Requests in flight across the pool's workers.
    pub fn in_flight(&self) -> u64 {
        self.workers
            .load()
            .iter()
            .map(|w| u64::from(w.in_flight()))
            .sum()
    }
}

/// `retries.on_status` sorted and without repeats, for a binary search.
fn statuses(listed: &[u16]) -> Vec<u16> {
    let mut statuses = listed.to_vec();
    statuses.sort_unstable();
    statuses.dedup();
    statuses
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("workers", &self.workers.load().len())
            .field("waiting", &self.waiting())
            .finish()
    }
}

/// Removes a waiter from the queue if its wait ends any way but with a slot.
struct QueueEntry<'a> {
    pool: &'a Pool,
    id: u64,
    queued: bool,
}

impl Drop for QueueEntry<'_> {
    fn drop(&mut self) {
        if self.queued {
            self.pool.lock_queue().remove(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::QueueConfig;

    fn pool(concurrency: u32, workers: usize) -> Arc<Pool> {
        let addresses: Vec<String> = (0..workers)
            .map(|i| format!("\"127.0.0.1:{}\"", 4000 + i))
            .collect();
        let text = format!(
            "worker_concurrency = {concurrency}\nprovider = {{ kind = \"static\", addresses = [{}] }}",
            addresses.join(",")
        );
        let config: PoolConfig = toml::from_str(&text).unwrap();
        let pool = Pool::from_config("p", &config);
        for i in 0..workers {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 4000 + i as u16));
            pool.add_worker(format!("p-{}", i + 1), addr, WorkerState::Ready, None);
        }
        pool
    }

    fn route(max_size: usize, timeout_ms: u64) -> Arc<RouteQueue> {
        let config: QueueConfig = toml::from_str(&format!(
            "max_size = {max_size}\ntimeout = \"{timeout_ms}ms\""
        ))
        .unwrap();
        RouteQueue::new("r".into(), &config)
    }

    #[test]
    fn retry_statuses_are_read_and_reloaded_in_place() {
        let config = |statuses: &str| -> PoolConfig {
            toml::from_str(&format!(
                "retries = {{ on_status = [{statuses}] }}\nprovider = {{ kind = \"static\", addresses = [\"127.0.0.1:4000\"] }}"
            ))
            .unwrap()
        };
        let pool = Pool::from_config("p", &config("503, 429, 503"));
        assert!(pool.retry().on_status);
        assert!(pool.retries_on_status(503) && pool.retries_on_status(429));
        assert!(!pool.retries_on_status(500));
        let settings = |statuses| PoolSettings::from_config(&config(statuses));
        assert!(!pool.apply(&settings("429, 503")), "same set");
        assert!(pool.apply(&settings("")));
        assert!(!pool.retry().on_status);
        assert!(!pool.retries_on_status(503));
    }

    #[tokio::test(start_paused = true)]
    async fn waits_then_takes_the_freed_slot_fifo() {
        let pool = pool(1, 1);
        let r = route(8, 10_000);
        let first = pool.acquire(&r, None).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (pool, r, order) = (Arc::clone(&pool), Arc::clone(&r), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let admission = pool.acquire(&r, None).await.unwrap();
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(admission);
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(r.depth(), 3);
        assert_eq!(pool.waiting(), 3);
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
        assert_eq!(r.depth(), 0);
        assert_eq!(pool.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_rejects_at_once_and_timeout_rejects_later() {
        let pool = pool(1, 1);
        let r = route(1, 500);
        let _held = pool.acquire(&r, None).await.unwrap();
        let waiter = {
            let (pool, r) = (Arc::clone(&pool), Arc::clone(&r));
            tokio::spawn(async move { pool.acquire(&r, None).await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        assert_eq!(
            pool.acquire(&r, None).await.err(),
            Some(Rejection::QueueFull)
        );
        let started = tokio::time::Instant::now();
        assert_eq!(waiter.await.unwrap(), Err(Rejection::QueueTimeout));
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        assert_eq!(r.depth(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_leaves_frees_its_place() {
        let pool = pool(1, 1);
        let r = route(4, 10_000);
        let held = pool.acquire(&r, None).await.unwrap();
        let leaver = {
            let (pool, r) = (Arc::clone(&pool), Arc::clone(&r));
            tokio::spawn(async move { pool.acquire(&r, None).await.map(|_| ()) })
        };
        tokio::task::yield_now().await;
        assert_eq!(r.depth(), 1);
        leaver.abort();
        let _ = leaver.await;
        assert_eq!(r.depth(), 0);
        assert_eq!(pool.waiting(), 0);
        drop(held);
        assert_eq!(
            pool.in_flight(),
            0,
            "no slot was handed to the departed waiter"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_becoming_ready_serves_the_queue() {
        let pool = pool(4, 1);
        let w = Arc::clone(&pool.workers()[0]);
        w.set_state(WorkerState::Starting);
        let r = route(4, 10_000);
        let waiter = {
            let (pool, r) = (Arc::clone(&pool), Arc::clone(&r));
            tokio::spawn(async move { pool.acquire(&r, None).await.map(|a| a.waited) })
        };
        tokio::task::yield_now().await;
        assert_eq!(pool.waiting_requests()[0].reason, WaitReason::NoWorker);
        tokio::time::advance(Duration::from_millis(40)).await;
        assert!(r.oldest_age() >= Duration::from_millis(40));
        w.set_state(WorkerState::Ready);
        assert_eq!(waiter.await.unwrap(), Ok(Duration::from_millis(40)));
    }
}
