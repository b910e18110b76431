//! The bounded wait queue of a pool's routes. Each route has its own bound; entries of all
//! routes of a pool sit in one FIFO, so a freed slot goes to the oldest waiting request of any
//! route. The queue's lock is taken only when a request has to wait or a waiter is served; the
//! counters that the autoscaler and admin API read are atomics.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::worker::InFlightGuard;
use crate::config::QueueConfig;

/// A process-wide time origin, so instants fit in an atomic as milliseconds. Set a day before
/// the first use, so instants taken by any runtime (tests run several, each with its own paused
/// clock) come after it.
pub(crate) fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now)
    })
}

/// Milliseconds since the process-wide origin, at least 1 (0 means "none").
pub(crate) fn millis_since_epoch(at: Instant) -> u64 {
    (at.duration_since(epoch()).as_millis() as u64).max(1)
}

/// Why a request waits; shown by the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// Every ready worker is at its concurrency cap.
    WorkerBusy,
    /// The pool has no ready worker (all starting, unhealthy or none at all).
    NoWorker,
}

impl WaitReason {
    /// The admin API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::WorkerBusy => "worker_busy",
            WaitReason::NoWorker => "no_worker",
        }
    }
}

/// One route's queue bounds and live depth.
#[derive(Debug)]
pub struct RouteQueue {
    /// The route's label.
    pub route: Arc<str>,
    /// Most entries waiting at once.
    pub max_size: usize,
    /// Longest wait.
    pub timeout: Duration,
    /// `Retry-After` seconds on 503s.
    pub retry_after_secs: u64,
    depth: AtomicUsize,
    oldest_ms: AtomicU64,
}

impl RouteQueue {
    /// A route's queue from its config.
    pub fn new(route: Arc<str>, config: &QueueConfig) -> Arc<Self> {
        Arc::new(RouteQueue {
            route,
            max_size: config.max_size,
            timeout: config.timeout.get(),
            retry_after_secs: config.retry_after.get().as_secs().max(1),
            depth: AtomicUsize::new(0),
            oldest_ms: AtomicU64::new(0),
        })
    }

    /// Requests waiting now.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// How long the oldest waiting request has waited; zero when none waits.
    pub fn oldest_age(&self) -> Duration {
        match self.oldest_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            ms => Duration::from_millis(millis_since_epoch(Instant::now()).saturating_sub(ms)),
        }
    }
}

/// A request waiting for a slot.
struct Waiter {
    id: u64,
    route: Arc<RouteQueue>,
    enqueued_at: Instant,
    reason: WaitReason,
    slot: oneshot::Sender<InFlightGuard>,
}

/// A snapshot of one waiting request, for the admin API.
#[derive(Debug, Clone)]
pub struct WaitingRequest {
    /// The route it came in on.
    pub route: Arc<str>,
    /// When it started waiting.
    pub enqueued_at: Instant,
    /// Why it waits.
    pub reason: WaitReason,
}

/// The FIFO of a pool.
pub(super) struct WaitQueue {
    entries: VecDeque<Waiter>,
    next_id: u64,
    /// Entries across all routes, shared with the pool's workers so a release can tell
    /// without locking whether anyone waits.
    waiting: Arc<AtomicUsize>,
}

impl WaitQueue {
    /// An empty queue keeping `waiting` equal to its length.
    pub(super) fn new(waiting: Arc<AtomicUsize>) -> Self {
        WaitQueue {
            entries: VecDeque::new(),
            next_id: 0,
            waiting,
        }
    }

    /// Add a waiter unless its route is full; returns its id and the receiving end.
    pub(super) fn push(
        &mut self,
        route: &Arc<RouteQueue>,
        reason: WaitReason,
    ) -> Option<(u64, Instant, oneshot::Receiver<InFlightGuard>)> {
        if route.depth.load(Ordering::Relaxed) >= route.max_size {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.next_id += 1;
        let now = Instant::now();
        if route.depth.fetch_add(1, Ordering::Relaxed) == 0 {
            route
                .oldest_ms
                .store(millis_since_epoch(now), Ordering::Relaxed);
        }
        self.entries.push_back(Waiter {
            id: self.next_id,
            route: Arc::clone(route),
            enqueued_at: now,
            reason,
            slot: tx,
        });
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Some((self.next_id, now, rx))
    }

    /// Hand `slot` to the oldest waiter still listening; gives it back if none is.
    pub(super) fn serve_oldest(&mut self, slot: InFlightGuard) -> Result<(), InFlightGuard> {
        let mut slot = slot;
        while let Some(waiter) = self.entries.pop_front() {
            self.forget(&waiter);
            match waiter.slot.send(slot) {
                Ok(()) => return Ok(()),
                Err(back) => slot = back,
            }
        }
        Err(slot)
    }

    /// Drop every waiter without a slot: their requests fail at once (no worker could start).
    pub(super) fn fail_all(&mut self) -> usize {
        let mut failed = 0;
        while let Some(waiter) = self.entries.pop_front() {
            self.forget(&waiter);
            failed += 1;
        }
        failed
    }

    /// Remove waiter `id` (its client left or its wait timed out); false if already served.
    pub(super) fn remove(&mut self, id: u64) -> bool {
        match self.entries.iter().position(|w| w.id == id) {
            Some(i) => {
                if let Some(waiter) = self.entries.remove(i) {
                    self.forget(&waiter);
                }
                true
            }
            None => false,
        }
    }

    /// Entries waiting now, oldest first.
    pub(super) fn snapshot(&self) -> Vec<WaitingRequest> {
        self.entries
            .iter()
            .map(|w| WaitingRequest {
                route: Arc::clone(&w.route.route),
                enqueued_at: w.enqueued_at,
                reason: w.reason,
            })
            .collect()
    }

    /// Update the route's counters for a waiter that left the queue.
    fn forget(&self, gone: &Waiter) {
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        let route = &gone.route;
        if route.depth.fetch_sub(1, Ordering::Relaxed) == 1 {
            route.oldest_ms.store(0, Ordering::Relaxed);
            return;
        }
        if route.oldest_ms.load(Ordering::Relaxed) == millis_since_epoch(gone.enqueued_at) {
            let next = self
                .entries
                .iter()
                .find(|w| Arc::ptr_eq(&w.route, route))
                .map_or(0, |w| millis_since_epoch(w.enqueued_at));
            route.oldest_ms.store(next, Ordering::Relaxed);
        }
    }
}
