//! One worker's identity and live counters. Everything here is an atomic so that every serving
//! thread, the health checker and the autoscaler read the same numbers without a lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use super::revisions::RevisionStats;
use super::Pool;

/// Lifecycle state of a worker; only `Ready` workers are picked for new requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum WorkerState {
    /// Launched, not yet passed a health check.
    Starting = 0,
    /// Takes requests.
    Ready = 1,
    /// Finishes what it has, takes nothing new.
    Draining = 2,
    /// Failed checks; takes nothing until it recovers.
    Unhealthy = 3,
}

impl WorkerState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => WorkerState::Starting,
            1 => WorkerState::Ready,
            2 => WorkerState::Draining,
            _ => WorkerState::Unhealthy,
        }
    }

    /// The lowercase name used in logs and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Ready => "ready",
            WorkerState::Draining => "draining",
            WorkerState::Unhealthy => "unhealthy",
        }
    }
}

/// `max_in_flight` value meaning "no cap".
pub const UNLIMITED: u32 = u32::MAX;

/// A worker process or server that requests are proxied to.
#[derive(Debug)]
pub struct Worker {
    /// Stable id, unique within the process, used to key per-thread connection pools and logs.
    pub id: u64,
    /// Display name ("app-1") for logs and the admin API.
    pub name: String,
    /// Where to connect.
    pub addr: SocketAddr,
    /// When weir added it.
    pub created_at: SystemTime,
    state: AtomicU8,
    in_flight: AtomicU32,
    max_in_flight: AtomicU32,
    served: AtomicU64,
    passive_failures: AtomicU32,
    unhealthy_threshold: AtomicU32,
    surplus: AtomicBool,
    protected: AtomicBool,
    /// When it first became ready, in milliseconds since the pool module's time origin (0:
    /// never), so a launch can report its cold start however late it looks.
    first_ready_ms: AtomicU64,
    /// The pool's count of waiting requests, read on every release without touching the pool.
    waiting: Arc<AtomicUsize>,
    pool: Weak<Pool>,
    /// The pool's revision it was launched with, once known (set once, when it joins).
    revision: std::sync::OnceLock<String>,
    /// Its revision's answer counters (set when it joins a pool).
    answers: std::sync::OnceLock<Arc<RevisionStats>>,
}

static NEXT_WORKER_ID: AtomicU64 = AtomicU64::new(1);

/// How a new worker is set up; the pool fills it from its config.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// Display name.
    pub name: String,
    /// Where to connect.
    pub addr: SocketAddr,
    /// Initial state.
    pub state: WorkerState,
    /// Most requests in flight at once ([`UNLIMITED`] for no cap).
    pub max_in_flight: u32,
    /// Consecutive passive failures that eject it.
    pub unhealthy_threshold: u32,
}

/// How many of `workers` are in `state`: the one count behind the dashboard's history, the
/// admin API's pool view and the `weir_workers` gauge, so they always agree.
pub fn count_in(workers: &[Arc<Worker>], state: WorkerState) -> u32 {
    let n = workers.iter().filter(|w| w.state() == state).count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Worker {
    /// How to reach it: its pool's transport (plain HTTP/1.1 for a worker of no pool).
    pub fn transport(&self) -> Arc<super::Transport> {
        match self.pool.upgrade() {
            Some(pool) => pool.transport(),
            None => Arc::new(super::Transport::plain()),
        }
    }

    /// A new worker belonging to `pool`, whose waiting counter is `waiting`.
    pub(super) fn new(spec: WorkerSpec, waiting: Arc<AtomicUsize>, pool: Weak<Pool>) -> Arc<Self> {
        Arc::new(Worker {
            id: NEXT_WORKER_ID.fetch_add(1, Ordering::Relaxed),
            name: spec.name,
            addr: spec.addr,
            created_at: SystemTime::now(),
            state: AtomicU8::new(spec.state as u8),
            in_flight: AtomicU32::new(0),
            max_in_flight: AtomicU32::new(spec.max_in_flight),
            served: AtomicU64::new(0),
            passive_failures: AtomicU32::new(0),
            unhealthy_threshold: AtomicU32::new(spec.unhealthy_threshold.max(1)),
            surplus: AtomicBool::new(false),
            protected: AtomicBool::new(false),
            first_ready_ms: AtomicU64::new(0),
            revision: std::sync::OnceLock::new(),
            answers: std::sync::OnceLock::new(),
            waiting,
            pool,
        })
    }

    /// A worker outside any pool (tests, benchmarks).
    pub fn detached(name: &str, addr: SocketAddr, state: WorkerState) -> Arc<Self> {
        let spec = WorkerSpec {
            name: name.to_string(),
            addr,
            state,
            max_in_flight: UNLIMITED,
            unhealthy_threshold: 2,
        };
        Worker::new(spec, Arc::new(AtomicUsize::new(0)), Weak::new())
    }

    /// The pool's revision it was launched with, if known.
    pub fn revision(&self) -> Option<&str> {
        self.revision.get().map(String::as_str)
    }

    /// Record its revision and the counters its answers go to (when it joins; a worker's
    /// revision never changes).
    pub(super) fn set_revision(&self, revision: Option<String>, answers: Arc<RevisionStats>) {
        if let Some(revision) = revision {
            let _ = self.revision.set(revision);
        }
        let _ = self.answers.set(answers);
    }

    /// Count an answer it gave toward its revision (the canary gates compare revisions).
    pub fn record_answer(&self, status: u16, duration: std::time::Duration) {
        if let Some(answers) = self.answers.get() {
            answers.record(status, duration);
        }
    }

    /// Current lifecycle state.
    pub fn state(&self) -> WorkerState {
        WorkerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Move to `state`; a worker becoming ready at once takes waiting requests.
    pub fn set_state(&self, state: WorkerState) {
        let before = self.state.swap(state as u8, Ordering::AcqRel);
        if state == WorkerState::Ready && before != WorkerState::Ready as u8 {
            if self.first_ready_ms.load(Ordering::Relaxed) == 0 {
                let now = super::queue::millis_since_epoch(tokio::time::Instant::now());
                self.first_ready_ms.store(now, Ordering::Relaxed);
            }
            self.passive_failures.store(0, Ordering::Relaxed);
            self.wake_waiters();
        }
    }

    /// When the worker first became ready (millisecond precision), if it has.
    pub fn first_ready_at(&self) -> Option<tokio::time::Instant> {
        match self.first_ready_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(super::queue::epoch() + std::time::Duration::from_millis(ms)),
        }
    }

    /// Requests sent to this worker whose response has not finished yet.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The concurrency cap ([`UNLIMITED`] for none).
    pub fn max_in_flight(&self) -> u32 {
        self.max_in_flight.load(Ordering::Relaxed)
    }

    /// Change the concurrency cap (config reload, a fleet's new share); in-flight requests
    /// above it finish. 0 is a share of none: in a fleet larger than the cap, this instance
    /// sends the worker nothing.
    pub fn set_max_in_flight(&self, cap: u32) {
        self.max_in_flight.store(cap, Ordering::Relaxed);
        self.wake_waiters();
    }

    /// Change how many passive failures in a row eject it (config reload).
    pub fn set_unhealthy_threshold(&self, threshold: u32) {
        self.unhealthy_threshold
            .store(threshold.max(1), Ordering::Relaxed);
    }

    /// Requests this worker has completed (responses finished or abandoned).
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Mark the worker surplus (the scaler has more than the stable load needs): the balancer
    /// then sends it requests only when the others are at their target.
    pub fn set_surplus(&self, surplus: bool) {
        if self.surplus.load(Ordering::Relaxed) != surplus {
            self.surplus.store(surplus, Ordering::Relaxed);
        }
    }

    /// Whether the worker is marked surplus.
    pub fn is_surplus(&self) -> bool {
        self.surplus.load(Ordering::Relaxed)
    }

    /// Protect the worker from scale-in (an operator's call).
    pub fn set_protected(&self, protected: bool) {
        self.protected.store(protected, Ordering::Relaxed);
    }

    /// Whether scale-in must leave this worker alone.
    pub fn is_protected(&self) -> bool {
        self.protected.load(Ordering::Relaxed)
    }

    /// The balancer's load figure: in-flight, plus `surplus_penalty` for a surplus worker, so
    /// a surplus worker wins a comparison only against workers that have that many in flight.
    pub fn load_score(&self, surplus_penalty: u32) -> u32 {
        let in_flight = self.in_flight();
        if self.is_surplus() {
            in_flight.saturating_add(surplus_penalty)
        } else {
            in_flight
        }
    }

    /// Whether the worker is ready and under its cap (a hint; [`Worker::try_acquire`] decides).
    pub fn has_headroom(&self) -> bool {
        self.state() == WorkerState::Ready && self.in_flight() < self.max_in_flight()
    }

    /// Take one of this worker's request slots if it is ready and under its cap. The slot is
    /// held until the returned guard drops: when the response body ends or the client leaves.
    pub fn try_acquire(self: &Arc<Self>) -> Option<InFlightGuard> {
        if self.state() != WorkerState::Ready {
            return None;
        }
        let cap = self.max_in_flight.load(Ordering::Relaxed);
        if cap == UNLIMITED {
            self.in_flight.fetch_add(1, Ordering::SeqCst);
        } else {
            self.in_flight
                .fetch_update(Ordering::SeqCst, Ordering::Relaxed, |n| {
                    (n < cap).then_some(n + 1)
                })
                .ok()?;
        }
        Some(InFlightGuard {
            worker: Some(Arc::clone(self)),
        })
    }

    /// Count a request against this worker regardless of state and cap (tests, benchmarks).
    pub fn begin_request(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlightGuard {
            worker: Some(Arc::clone(self)),
        }
    }

    /// A request reached the worker and got a response: passive failures start over.
    pub fn record_success(&self) {
        // Read first: the common case writes nothing, so the shared line stays clean.
        if self.passive_failures.load(Ordering::Relaxed) != 0 {
            self.passive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A request failed to reach the worker (connect failure, reset before response headers).
    /// Returns true when this failure ejected the worker.
    pub fn record_failure(&self) -> bool {
        let failures = self.passive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.unhealthy_threshold.load(Ordering::Relaxed) {
            return self
                .state
                .compare_exchange(
                    WorkerState::Ready as u8,
                    WorkerState::Unhealthy as u8,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok();
        }
        false
    }

    fn wake_waiters(&self) {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            if let Some(pool) = self.pool.upgrade() {
                pool.dispatch();
            }
        }
    }

    fn release_slot(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.served.fetch_add(1, Ordering::Relaxed);
    }
}

/// One request slot on a worker. Dropping it frees the slot and, if requests are waiting, hands
/// a slot to the oldest of them at once.
#[derive(Debug)]
pub struct InFlightGuard {
    worker: Option<Arc<Worker>>,
}

impl InFlightGuard {
    /// The worker this request is counted against.
    pub fn worker(&self) -> &Arc<Worker> {
        match &self.worker {
            Some(w) => w,
            // Only `release_quietly` empties it, and that consumes the guard.
            None => unreachable!("an InFlightGuard always holds its worker until consumed"),
        }
    }

    /// Free the slot without waking waiters (used by the dispatcher itself, which loops).
    pub(super) fn release_quietly(mut self) {
        if let Some(worker) = self.worker.take() {
            worker.release_slot();
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.release_slot();
            worker.wake_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(cap: u32) -> Arc<Worker> {
        let spec = WorkerSpec {
            name: "w".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            state: WorkerState::Ready,
            max_in_flight: cap,
            unhealthy_threshold: 2,
        };
        Worker::new(spec, Arc::new(AtomicUsize::new(0)), Weak::new())
    }

    #[test]
    fn in_flight_is_exact_across_guards() {
        let w = worker(UNLIMITED);
        let a = w.try_acquire().unwrap();
        let b = w.try_acquire().unwrap();
        assert_eq!(w.in_flight(), 2);
        drop(a);
        assert_eq!(w.in_flight(), 1);
        drop(b);
        assert_eq!(w.in_flight(), 0);
        assert_eq!(w.served(), 2);
    }

    #[test]
    fn cap_is_never_exceeded() {
        let w = worker(2);
        let a = w.try_acquire().unwrap();
        let _b = w.try_acquire().unwrap();
        assert!(w.try_acquire().is_none());
        assert!(!w.has_headroom());
        drop(a);
        assert!(w.try_acquire().is_some());
    }

    #[test]
    fn only_ready_workers_give_slots() {
        let w = worker(UNLIMITED);
        for s in [
            WorkerState::Starting,
            WorkerState::Draining,
            WorkerState::Unhealthy,
        ] {
            w.set_state(s);
            assert_eq!(w.state(), s);
            assert!(w.try_acquire().is_none());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_ready_moment_is_kept() {
        let w = Worker::detached("w", "127.0.0.1:1".parse().unwrap(), WorkerState::Starting);
        assert!(w.first_ready_at().is_none());
        tokio::time::advance(std::time::Duration::from_millis(250)).await;
        let before = tokio::time::Instant::now();
        w.set_state(WorkerState::Ready);
        let first = w.first_ready_at().unwrap();
        assert!(first.duration_since(before) < std::time::Duration::from_millis(2));
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        w.set_state(WorkerState::Unhealthy);
        w.set_state(WorkerState::Ready);
        assert_eq!(
            w.first_ready_at(),
            Some(first),
            "a recovery is not a cold start"
        );
    }

    #[test]
    fn consecutive_passive_failures_eject() {
        let w = worker(UNLIMITED);
        assert!(!w.record_failure());
        w.record_success();
        assert!(!w.record_failure());
        assert!(w.record_failure());
        assert_eq!(w.state(), WorkerState::Unhealthy);
        // Already ejected: no second ejection reported.
        assert!(!w.record_failure());
        w.set_state(WorkerState::Ready);
        assert!(!w.record_failure());
    }
}
