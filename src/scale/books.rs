//! The scaler's bookkeeping: one entry per worker, and the few pool-wide facts the decision
//! needs from the past (recent load, failed launches, the last scale-up, an operator's count).
//! Only the scaler touches it; never the request path.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::policy::WorkerSignal;
use crate::fleet::WorkerLoad;
use crate::pool::{Worker, WorkerState};

/// First pause after a failed launch; doubles per failure in a row.
pub const LAUNCH_BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest pause between launch attempts.
pub const LAUNCH_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// What the scaler remembers of one worker.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tracked {
    /// The state last seen, and since when.
    state: WorkerState,
    since: Instant,
    /// Its served count when last seen, and when it last had a request in flight or served one.
    served: u64,
    active_at: Instant,
    /// Being drained and released: out of the decision, and its exit is expected.
    pub retiring: bool,
}

impl Tracked {
    fn new(now: Instant, worker: &Worker) -> Self {
        Tracked {
            state: worker.state(),
            since: now,
            served: worker.served(),
            active_at: now,
            retiring: false,
        }
    }
}

/// Everything the scaler keeps between decisions.
#[derive(Debug, Default)]
pub(super) struct Books {
    /// Per worker, by the pool's worker id.
    pub workers: HashMap<u64, Tracked>,
    /// (when, in-flight + queued) over the hold window.
    samples: VecDeque<(Instant, f64)>,
    /// Launches that failed in a row (a launch call failing, or a worker never ready).
    failures_in_a_row: u32,
    /// No launch before this (backoff).
    next_launch_at: Option<Instant>,
    /// When the last scale-up was decided.
    pub last_scale_up: Option<Instant>,
    /// A count an operator asked for, taken by the next decision.
    pub manual: Option<u32>,
}

impl Books {
    /// Start tracking a worker the scaler launched or adopted.
    pub fn track(&mut self, now: Instant, worker: &Worker) {
        self.workers.insert(worker.id, Tracked::new(now, worker));
    }

    /// Whether a worker is being retired.
    pub fn is_retiring(&self, id: u64) -> bool {
        self.workers.get(&id).is_some_and(|t| t.retiring)
    }

    /// Whether any worker is still being retired (its release may be under way).
    pub fn any_retiring(&self) -> bool {
        self.workers.values().any(|t| t.retiring)
    }

    /// Mark a worker retiring; false if it already was.
    pub fn start_retiring(&mut self, now: Instant, worker: &Worker) -> bool {
        let tracked = self
            .workers
            .entry(worker.id)
            .or_insert_with(|| Tracked::new(now, worker));
        !std::mem::replace(&mut tracked.retiring, true)
    }

    /// Add a load sample and return the peak over `hold`.
    pub fn record_load(&mut self, now: Instant, load: f64, hold: Duration) -> f64 {
        self.samples.push_back((now, load));
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > hold)
        {
            self.samples.pop_front();
        }
        self.samples.iter().map(|(_, l)| *l).fold(0.0, f64::max)
    }

    /// Forget the load history (an operator's count starts a new one).
    pub fn clear_load(&mut self) {
        self.samples.clear();
    }

    /// Update the entries from the pool's workers now and return their signals (retiring ones
    /// left out). Entries of workers that left the pool without being retired (a source removed
    /// them) are dropped.
    pub fn observe(
        &mut self,
        now: Instant,
        workers: &[std::sync::Arc<Worker>],
        elsewhere: &HashMap<String, WorkerLoad>,
    ) -> Vec<WorkerSignal> {
        self.workers
            .retain(|id, t| t.retiring || workers.iter().any(|w| w.id == *id));
        let mut signals = Vec::with_capacity(workers.len());
        for w in workers {
            let tracked = self
                .workers
                .entry(w.id)
                .or_insert_with(|| Tracked::new(now, w));
            if tracked.retiring {
                continue;
            }
            // In a fleet, the other instances' requests on it count too.
            let others = elsewhere.get(&w.name).copied().unwrap_or_default();
            let in_flight = w.in_flight() + others.in_flight;
            let (state, served) = (w.state(), w.served() + others.served);
            if state != tracked.state {
                if tracked.state == WorkerState::Starting && state == WorkerState::Ready {
                    // A launch made it: the backoff starts over.
                    self.failures_in_a_row = 0;
                    self.next_launch_at = None;
                }
                tracked.state = state;
                tracked.since = now;
            }
            if in_flight > 0 || served != tracked.served {
                tracked.served = served;
                tracked.active_at = now;
            }
            signals.push(WorkerSignal {
                id: w.id,
                state,
                in_flight,
                idle_for: now.duration_since(tracked.active_at),
                in_state_for: now.duration_since(tracked.since),
                protected: w.is_protected(),
            });
        }
        signals
    }

    /// Time left in the backoff pause.
    pub fn backoff_left(&self, now: Instant) -> Duration {
        self.next_launch_at
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }

    /// A launch failed: pause 1 s, doubling per failure in a row, up to 60 s.
    pub fn note_launch_failure(&mut self, now: Instant) {
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        let exp = self.failures_in_a_row.saturating_sub(1).min(6);
        let pause = (LAUNCH_BACKOFF_START * 2u32.pow(exp)).min(LAUNCH_BACKOFF_MAX);
        self.next_launch_at = Some(now + pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_and_a_ready_launch_resets_it() {
        let mut books = Books::default();
        let now = Instant::now();
        books.note_launch_failure(now);
        assert_eq!(books.backoff_left(now), Duration::from_secs(1));
        books.note_launch_failure(now);
        assert_eq!(books.backoff_left(now), Duration::from_secs(2));
        for _ in 0..10 {
            books.note_launch_failure(now);
        }
        assert_eq!(books.backoff_left(now), LAUNCH_BACKOFF_MAX);
        let worker = Worker::detached("w", "127.0.0.1:1".parse().unwrap(), WorkerState::Starting);
        let workers = vec![Arc::clone(&worker)];
        books.observe(now, &workers, &HashMap::new());
        worker.set_state(WorkerState::Ready);
        books.observe(now, &workers, &HashMap::new());
        assert_eq!(books.backoff_left(now), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_state_times_follow_the_worker() {
        let mut books = Books::default();
        let start = Instant::now();
        let worker = Worker::detached("w", "127.0.0.1:1".parse().unwrap(), WorkerState::Ready);
        let workers = vec![Arc::clone(&worker)];
        books.observe(start, &workers, &HashMap::new());
        let later = start + Duration::from_secs(5);
        let s = books.observe(later, &workers, &HashMap::new());
        assert_eq!(s[0].idle_for, Duration::from_secs(5));
        assert_eq!(s[0].in_state_for, Duration::from_secs(5));
        drop(worker.begin_request());
        let s = books.observe(later + Duration::from_secs(1), &workers, &HashMap::new());
        assert_eq!(s[0].idle_for, Duration::ZERO, "served one since");
        let busy = WorkerLoad {
            in_flight: 2,
            served: 0,
        };
        let elsewhere = HashMap::from([("w".to_string(), busy)]);
        let s = books.observe(later + Duration::from_secs(3), &workers, &elsewhere);
        assert_eq!(
            (s[0].in_flight, s[0].idle_for),
            (2, Duration::ZERO),
            "busy with another instance's requests: not idle"
        );
        // Short requests elsewhere, none in flight at the report: served moved, so not idle.
        let served = WorkerLoad {
            in_flight: 0,
            served: 40,
        };
        let elsewhere = HashMap::from([("w".to_string(), served)]);
        let s = books.observe(later + Duration::from_secs(9), &workers, &elsewhere);
        assert_eq!(s[0].idle_for, Duration::ZERO, "served elsewhere since");
        assert!(books.start_retiring(later, &worker));
        assert!(!books.start_retiring(later, &worker));
        assert!(
            books.observe(later, &workers, &HashMap::new()).is_empty(),
            "retiring: out"
        );
        // Gone from the pool without being retired: forgotten.
        books.workers.get_mut(&worker.id).unwrap().retiring = false;
        books.observe(later, &[], &HashMap::new());
        assert!(books.workers.is_empty());
    }
}
