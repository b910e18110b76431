//! The autoscaler. One [`PoolScaler`] per launchable pool owns every transition of that pool,
//! 0 <-> 1 <-> N: it samples in-flight and queue depth every 100 ms (and at once when a request
//! starts waiting), asks the pure [`policy::decide`] what to do, launches through the pool's
//! [`Provider`], drains and releases idle workers, replaces dead and unhealthy ones, and keeps
//! an activity log. Timing uses tokio's clock, so tests drive it on a paused clock.

mod activity;
pub mod policy;

pub use crate::values::{unix_minutes_now, CivilMinute, Cron};
pub use activity::{Action, ActivityEvent, ActivityLog};
pub use policy::{decide, Decision, IdleWorker, ScalePolicy, Signals};

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::health;
use crate::pool::{Pool, Worker, WorkerState};
use crate::provider::{ExitWatch, LaunchSpec, Provider, WorkerHandle};

/// How often the scaler samples its pool.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// First pause after a failed launch; doubles per failure in a row.
pub const LAUNCH_BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest pause between launch attempts.
pub const LAUNCH_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How often a drain checks whether the worker's last request finished.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// Bookkeeping only the scaler touches (never on the request path).
#[derive(Default)]
struct Books {
    handles: HashMap<u64, WorkerHandle>,
    started_at: HashMap<u64, Instant>,
    idle: HashMap<u64, (u64, Instant)>,
    unhealthy_since: HashMap<u64, Instant>,
    retiring: HashMap<u64, ()>,
    samples: VecDeque<(Instant, f64)>,
    failures_in_a_row: u32,
    next_launch_at: Option<Instant>,
    last_scale_up: Option<Instant>,
    manual: Option<u32>,
}

/// The scaler of one pool.
pub struct PoolScaler {
    pool: Arc<Pool>,
    provider: Arc<dyn Provider>,
    policy: ArcSwap<ScalePolicy>,
    activity: Arc<ActivityLog>,
    books: Mutex<Books>,
    pending_launches: AtomicU32,
    desired: AtomicU32,
    next_name: AtomicU64,
    probe_new_workers: AtomicBool,
}

impl PoolScaler {
    /// A scaler for `pool`, launching through `provider`.
    pub fn new(
        pool: Arc<Pool>,
        provider: Arc<dyn Provider>,
        policy: ScalePolicy,
        activity: Arc<ActivityLog>,
    ) -> Arc<Self> {
        pool.balancer()
            .set_surplus_penalty(policy.target_inflight.ceil() as u32);
        Arc::new(PoolScaler {
            desired: AtomicU32::new(policy.initial_workers),
            pool,
            provider,
            policy: ArcSwap::from_pointee(policy),
            activity,
            books: Mutex::new(Books::default()),
            pending_launches: AtomicU32::new(0),
            next_name: AtomicU64::new(1),
            probe_new_workers: AtomicBool::new(true),
        })
    }

    fn books(&self) -> MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether launched workers get health probes (the normal case). Tests that drive
    /// readiness themselves on a paused clock turn it off.
    pub fn set_probe_new_workers(&self, probe: bool) {
        self.probe_new_workers.store(probe, Ordering::Relaxed);
    }

    /// The pool it scales.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<ScalePolicy> {
        self.policy.load_full()
    }

    /// Swap in a new policy (config reload); the next step uses it.
    pub fn set_policy(&self, policy: ScalePolicy) {
        self.pool
            .balancer()
            .set_surplus_penalty(policy.target_inflight.ceil() as u32);
        self.policy.store(Arc::new(policy));
        self.pool.demand().notify_one();
    }

    /// The provider, described (admin API).
    pub fn describe(&self) -> String {
        self.provider.describe()
    }

    /// Workers the pool should have now (admin API).
    pub fn desired(&self) -> u32 {
        self.desired.load(Ordering::Relaxed)
    }

    /// Set the worker count by hand; applied on the next step (at once), clamped to
    /// [effective min, max]. The scaler carries on from there.
    pub fn set_manual(&self, workers: u32) {
        self.books().manual = Some(workers);
        self.pool.demand().notify_one();
    }

    /// Run until `shutdown` flips, then drain and release every worker.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let initial = self.policy().initial_workers;
        if initial > 0 {
            self.activity.record(
                &self.pool.name,
                Action::ScaleUp,
                0,
                initial,
                format!("initial workers ({})", self.provider.describe()),
            );
            for _ in 0..initial {
                self.spawn_launch();
            }
        }
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.pool.demand().notified() => {}
                _ = shutdown.changed() => break,
            }
            self.step(Instant::now(), unix_minutes_now());
        }
        self.release_all().await;
    }

    /// One decision: sample, keep the books, decide, act. Public so tests can drive it.
    pub fn step(self: &Arc<Self>, now: Instant, now_minutes: u64) {
        let policy = self.policy();
        let workers = self.pool.workers();
        // Demand is what is in flight on workers that stay; a draining worker's requests are
        // finishing, not asking for capacity.
        let in_flight: u64 = workers
            .iter()
            .filter(|w| w.state() != WorkerState::Draining)
            .map(|w| u64::from(w.in_flight()))
            .sum();
        let queued = self.pool.waiting() as u64;
        let mut books = self.books();

        // Load windows.
        let load = (in_flight + queued) as f64;
        books.samples.push_back((now, load));
        let stable_window = policy.stable_window;
        while books
            .samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > stable_window)
        {
            books.samples.pop_front();
        }
        let panic_peak = books
            .samples
            .iter()
            .filter(|(at, _)| now.duration_since(*at) <= policy.panic_window)
            .map(|(_, l)| *l)
            .fold(0.0, f64::max);
        let stable_avg =
            books.samples.iter().map(|(_, l)| *l).sum::<f64>() / books.samples.len() as f64;

        // Per-worker books: idle time, unhealthy time, startup deadline.
        let mut ready: u32 = 0;
        let mut starting = self.pending_launches.load(Ordering::Relaxed);
        let mut idle = Vec::new();
        let mut give_up = Vec::new();
        for w in workers.iter() {
            if books.retiring.contains_key(&w.id) {
                continue;
            }
            let served = w.served();
            let entry = books.idle.entry(w.id).or_insert((served, now));
            if w.in_flight() > 0 || entry.0 != served {
                *entry = (served, now);
            }
            let idle_since = entry.1;
            match w.state() {
                WorkerState::Ready => {
                    ready += 1;
                    books.unhealthy_since.remove(&w.id);
                    books.started_at.remove(&w.id);
                    books.failures_in_a_row = 0;
                    if w.in_flight() == 0 && !w.is_protected() {
                        idle.push(IdleWorker {
                            id: w.id,
                            idle_for: now.duration_since(idle_since),
                        });
                    }
                }
                WorkerState::Starting => {
                    starting += 1;
                    let started = *books.started_at.entry(w.id).or_insert(now);
                    if now.duration_since(started) >= policy.startup_timeout {
                        give_up.push((
                            Arc::clone(w),
                            "not ready within startup_timeout".to_string(),
                        ));
                    }
                }
                WorkerState::Unhealthy => {
                    let since = *books.unhealthy_since.entry(w.id).or_insert(now);
                    if now.duration_since(since) >= policy.replace_unhealthy_after {
                        give_up.push((Arc::clone(w), "unhealthy for too long".to_string()));
                    }
                }
                WorkerState::Draining => {}
            }
        }
        let manual = books.manual.take();
        let backoff_until = books.next_launch_at;
        drop(books);

        for (worker, why) in give_up {
            let startup_failed = worker.state() == WorkerState::Starting;
            if startup_failed {
                starting = starting.saturating_sub(1);
                self.note_launch_failure(now);
            }
            self.activity.record(
                &self.pool.name,
                Action::Replace,
                ready + starting + 1,
                ready + starting,
                format!("{}: {why}", worker.name),
            );
            if startup_failed && ready == 0 && starting == 0 {
                let failed = self.pool.fail_waiting();
                if failed > 0 {
                    warn!(pool = %self.pool.name, failed, "no worker could be started; failing waiting requests");
                }
            }
            self.spawn_retire(worker, Duration::ZERO);
        }

        let signals = Signals {
            ready,
            starting,
            in_flight,
            queued,
            panic_peak,
            stable_avg,
            now_minutes,
            idle,
        };
        let mut decision = decide(&policy, &signals);
        if let Some(n) = manual {
            decision = self.manual_decision(n, &signals, decision.effective_min);
            // The operator's count starts a new history: this tick's load, taken before it,
            // must not undo it.
            self.books().samples.clear();
        }
        self.desired.store(decision.desired, Ordering::Relaxed);
        self.mark_surplus(&workers, decision.surplus);

        if decision.launch > 0 {
            let capacity = ready + starting;
            if manual.is_none() {
                if backoff_until.is_some_and(|t| now < t) {
                    return;
                }
                // Event-driven steps can come back to back; one scale-up decision per sample
                // interval keeps scale_up_step a rate, except to get the first worker or the
                // minimum, which never waits.
                let recent = self
                    .books()
                    .last_scale_up
                    .is_some_and(|t| now.duration_since(t) < SAMPLE_INTERVAL);
                if recent && capacity > 0 && capacity >= decision.effective_min {
                    return;
                }
            }
            self.books().last_scale_up = Some(now);
            let action = if manual.is_some() {
                Action::Manual
            } else {
                Action::ScaleUp
            };
            self.activity.record(
                &self.pool.name,
                action,
                capacity,
                capacity + decision.launch,
                decision.reason.clone(),
            );
            for _ in 0..decision.launch {
                self.spawn_launch();
            }
        }
        if !decision.release.is_empty() {
            let capacity = ready + starting;
            let action = if manual.is_some() {
                Action::Manual
            } else {
                Action::ScaleDown
            };
            self.activity.record(
                &self.pool.name,
                action,
                capacity,
                capacity.saturating_sub(decision.release.len() as u32),
                decision.reason.clone(),
            );
            for id in decision.release {
                if let Some(worker) = workers.iter().find(|w| w.id == id) {
                    self.spawn_retire(Arc::clone(worker), policy.drain_timeout);
                }
            }
        }
    }

    /// A desired count set by hand: launch up to it, or drain down to it (idle and least busy
    /// first), within the effective minimum and the maximum.
    fn manual_decision(&self, n: u32, s: &Signals, effective_min: u32) -> Decision {
        let target = n.clamp(effective_min, self.policy().max_workers);
        let capacity = s.ready + s.starting;
        let mut decision = Decision {
            desired: target,
            effective_min,
            launch: 0,
            release: Vec::new(),
            surplus: 0,
            reason: format!("set to {n} by an operator"),
        };
        if target > capacity {
            decision.launch = target - capacity;
        } else if target < s.ready {
            let mut candidates: Vec<Arc<Worker>> = self
                .pool
                .workers()
                .iter()
                .filter(|w| w.state() == WorkerState::Ready && !w.is_protected())
                .cloned()
                .collect();
            candidates.sort_by_key(|w| w.in_flight());
            decision.release = candidates
                .iter()
                .take((s.ready - target) as usize)
                .map(|w| w.id)
                .collect();
        }
        decision
    }

    /// Mark the `count` least busy ready workers surplus, and no others.
    fn mark_surplus(&self, workers: &[Arc<Worker>], count: u32) {
        let mut ready: Vec<&Arc<Worker>> = workers
            .iter()
            .filter(|w| w.state() == WorkerState::Ready)
            .collect();
        ready.sort_by_key(|w| (w.in_flight(), std::cmp::Reverse(w.id)));
        for (i, w) in ready.iter().enumerate() {
            w.set_surplus((i as u32) < count && !w.is_protected());
        }
    }

    fn note_launch_failure(&self, now: Instant) {
        let mut books = self.books();
        books.failures_in_a_row = books.failures_in_a_row.saturating_add(1);
        let exp = books.failures_in_a_row.saturating_sub(1).min(6);
        let pause = (LAUNCH_BACKOFF_START * 2u32.pow(exp)).min(LAUNCH_BACKOFF_MAX);
        books.next_launch_at = Some(now + pause);
    }

    fn spawn_launch(self: &Arc<Self>) {
        self.pending_launches.fetch_add(1, Ordering::Relaxed);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            me.launch_one().await;
            me.pending_launches.fetch_sub(1, Ordering::Relaxed);
            // Re-decide now: the launch changed capacity.
            me.pool.demand().notify_one();
        });
    }

    async fn launch_one(self: &Arc<Self>) {
        let name = format!(
            "{}-{}",
            self.pool.name,
            self.next_name.fetch_add(1, Ordering::Relaxed)
        );
        let spec = LaunchSpec {
            pool: self.pool.name.clone(),
            name: name.clone(),
        };
        let launched =
            tokio::time::timeout(self.policy().startup_timeout, self.provider.launch(spec)).await;
        let failure = match launched {
            Ok(Ok(launched)) => {
                let worker =
                    self.pool
                        .add_worker(name, launched.handle.addr, WorkerState::Starting);
                {
                    let mut books = self.books();
                    books.handles.insert(worker.id, launched.handle);
                    books.started_at.insert(worker.id, Instant::now());
                }
                if self.probe_new_workers.load(Ordering::Relaxed) {
                    health::watch_worker(&self.pool, &worker);
                }
                if let Some(exited) = launched.exited {
                    tokio::spawn(Arc::clone(self).watch_exit(Arc::downgrade(&worker), exited));
                }
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!(
                "launch did not return within {:?}",
                self.policy().startup_timeout
            ),
        };
        self.note_launch_failure(Instant::now());
        let ready = self
            .pool
            .workers()
            .iter()
            .filter(|w| w.state() == WorkerState::Ready)
            .count() as u32;
        self.activity.record(
            &self.pool.name,
            Action::LaunchFailed,
            ready,
            ready,
            format!("{name}: {failure}"),
        );
        let others_starting = self.pending_launches.load(Ordering::Relaxed) > 1
            || self
                .pool
                .workers()
                .iter()
                .any(|w| w.state() == WorkerState::Starting);
        if ready == 0 && !others_starting {
            let failed = self.pool.fail_waiting();
            if failed > 0 {
                warn!(pool = %self.pool.name, failed, "launch failed and no worker is ready; failing waiting requests");
            }
        }
    }

    /// Replace a worker that died on its own.
    async fn watch_exit(self: Arc<Self>, worker: std::sync::Weak<Worker>, exited: ExitWatch) {
        let reason = exited.await;
        let Some(worker) = worker.upgrade() else {
            return;
        };
        if self.books().retiring.contains_key(&worker.id) {
            return; // we stopped it
        }
        worker.set_state(WorkerState::Unhealthy);
        let count = self.pool.workers().len() as u32;
        self.activity.record(
            &self.pool.name,
            Action::Replace,
            count,
            count.saturating_sub(1),
            format!("{}: {reason}", worker.name),
        );
        self.spawn_retire(worker, Duration::ZERO);
    }

    /// Stop routing to `worker` at once, let its in-flight requests finish (up to `drain`),
    /// then remove it and release it through the provider.
    fn spawn_retire(self: &Arc<Self>, worker: Arc<Worker>, drain: Duration) {
        {
            let mut books = self.books();
            if books.retiring.insert(worker.id, ()).is_some() {
                return;
            }
        }
        stop_routing(&worker);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            me.retire(&worker, drain).await;
            me.pool.demand().notify_one();
        });
    }

    async fn retire(&self, worker: &Arc<Worker>, drain: Duration) {
        stop_routing(worker);
        let deadline = Instant::now() + drain;
        while worker.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        if worker.in_flight() > 0 {
            warn!(pool = %self.pool.name, worker = %worker.name, in_flight = worker.in_flight(), "drain timed out; releasing anyway");
        }
        self.pool.remove_worker(worker.id);
        let handle = {
            let mut books = self.books();
            books.idle.remove(&worker.id);
            books.started_at.remove(&worker.id);
            books.unhealthy_since.remove(&worker.id);
            books.handles.remove(&worker.id)
        };
        if let Some(handle) = handle {
            if let Err(e) = self.provider.release(handle).await {
                warn!(pool = %self.pool.name, worker = %worker.name, error = %e, "release failed");
            }
        }
        info!(pool = %self.pool.name, worker = %worker.name, "worker released");
        self.books().retiring.remove(&worker.id);
    }

    /// Drain and release every worker (shutdown).
    pub async fn release_all(&self) {
        let workers = self.pool.workers();
        let drains = workers.iter().map(|w| {
            self.books().retiring.insert(w.id, ());
            self.retire(w, self.policy().drain_timeout)
        });
        futures_join_all(drains).await;
    }
}

/// Take a worker out of rotation at once: no new request will pick it.
fn stop_routing(worker: &Worker) {
    if matches!(worker.state(), WorkerState::Ready | WorkerState::Starting) {
        worker.set_state(WorkerState::Draining);
    }
    worker.set_surplus(false);
}

/// Await all futures concurrently (a tiny join_all, to avoid a futures crate dependency).
async fn futures_join_all<F: std::future::Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

#[cfg(test)]
mod tests;
