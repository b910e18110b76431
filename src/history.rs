//! The last 15 minutes of every pool, one sample a second, for the dashboard's charts
//! (`GET /api/v1/history`). A sampler on the control thread reads what already exists (worker
//! states, in-flight and queue counts, the pool's latency histogram); the request path pays
//! nothing for it. Each pool's ring is bounded, and the ring of a pool that is gone is dropped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::time::{Instant, MissedTickBehavior};

use crate::pool::{LatencyCounts, Pool, WorkerState};
use crate::state::Shared;
use crate::values::clock::rfc3339;

/// How many samples a pool's ring holds: 15 minutes at one a second.
pub const KEEP_SAMPLES: usize = 900;
/// How often the sampler reads the pools.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// One pool at one second, as `GET /api/v1/history` lists it (field names are a public
/// interface: add, never rename).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When it was taken (RFC 3339).
    pub at: String,
    /// Workers ready.
    pub ready: u32,
    /// Workers starting.
    pub starting: u32,
    /// Requests in flight (this instance's).
    pub in_flight: u64,
    /// Requests waiting in the pool's route queues.
    pub queued: u64,
    /// Responses per second over the second before `at`.
    pub rps: f64,
    /// The 99th percentile response time over that second, in milliseconds (a histogram
    /// bucket's upper bound, within about 19%); null when no response finished.
    pub p99_ms: Option<f64>,
}

/// Every pool's recent samples, oldest first.
#[derive(Debug, Default)]
pub struct History {
    rings: Mutex<HashMap<String, VecDeque<Sample>>>,
}

impl History {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, VecDeque<Sample>>> {
        self.rings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append a pool's sample, forgetting its oldest past [`KEEP_SAMPLES`].
    pub fn record(&self, pool: &str, sample: Sample) {
        let mut rings = self.lock();
        let ring = match rings.get_mut(pool) {
            Some(ring) => ring,
            None => rings
                .entry(pool.to_string())
                .or_insert_with(|| VecDeque::with_capacity(KEEP_SAMPLES)),
        };
        if ring.len() == KEEP_SAMPLES {
            ring.pop_front();
        }
        ring.push_back(sample);
    }

    /// A pool's samples of the last `seconds` (at most [`KEEP_SAMPLES`]), oldest first; empty
    /// for a pool not sampled yet.
    pub fn recent(&self, pool: &str, seconds: usize) -> Vec<Sample> {
        let rings = self.lock();
        let Some(ring) = rings.get(pool) else {
            return Vec::new();
        };
        let skip = ring.len().saturating_sub(seconds);
        ring.iter().skip(skip).cloned().collect()
    }

    /// Drop the rings of pools `keep` says no to.
    fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|name, _| keep(name));
    }
}

/// What the sampler remembers of a pool between two ticks.
struct Previous {
    /// Which pool object: a reload that replaces a pool (new provider) starts its counts over.
    pool: Weak<Pool>,
    counts: LatencyCounts,
    at: Instant,
}

/// Read one pool into a sample; `previous` is the pool's state at the last tick, if any.
fn sample_pool(
    pool: &Arc<Pool>,
    previous: Option<&Previous>,
    now: Instant,
    wall: SystemTime,
) -> (Sample, Previous) {
    let workers = pool.workers();
    let count = |s: WorkerState| crate::pool::count_in(&workers, s);
    let counts = pool.latency().counts();
    let same_pool = previous.filter(|p| p.pool.upgrade().is_some_and(|p| Arc::ptr_eq(&p, pool)));
    let (rps, p99_ms) = match same_pool {
        Some(prev) => {
            let since = counts.since(&prev.counts);
            let elapsed = now.duration_since(prev.at).as_secs_f64();
            let rps = if elapsed > 0.0 {
                round_tenth(since.total() as f64 / elapsed)
            } else {
                0.0
            };
            let p99 = since
                .quantile(0.99)
                .map(|d| round_tenth(d.as_secs_f64() * 1000.0));
            (rps, p99)
        }
        None => (0.0, None),
    };
    let sample = Sample {
        at: rfc3339(wall),
        ready: count(WorkerState::Ready),
        starting: count(WorkerState::Starting),
        in_flight: pool.in_flight(),
        queued: pool.waiting() as u64,
        rps,
        p99_ms,
    };
    let previous = Previous {
        pool: Arc::downgrade(pool),
        counts,
        at: now,
    };
    (sample, previous)
}

fn round_tenth(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Sample every pool of the live snapshot each second until the task is dropped.
pub async fn run(shared: Arc<Shared>, history: Arc<History>) {
    let mut previous: HashMap<String, Previous> = HashMap::new();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let snapshot = shared.snapshot_full();
        let now = Instant::now();
        let wall = SystemTime::now();
        for (name, pool) in &snapshot.pools {
            let (sample, state) = sample_pool(pool, previous.get(name), now, wall);
            history.record(name, sample);
            previous.insert(name.clone(), state);
        }
        previous.retain(|name, _| snapshot.pools.contains_key(name));
        history.retain(|name| snapshot.pools.contains_key(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolConfig;

    fn sample(ready: u32) -> Sample {
        Sample {
            at: String::new(),
            ready,
            starting: 0,
            in_flight: 0,
            queued: 0,
            rps: 0.0,
            p99_ms: None,
        }
    }

    fn pool(name: &str) -> Arc<Pool> {
        let config: PoolConfig =
            toml::from_str("provider = { kind = \"static\", addresses = [\"127.0.0.1:1\"] }")
                .unwrap();
        let pool = Pool::from_config(name, &config);
        pool.add_worker(
            "w-1".into(),
            ([127, 0, 0, 1], 1).into(),
            WorkerState::Ready,
            None,
        );
        pool.add_worker(
            "w-2".into(),
            ([127, 0, 0, 1], 2).into(),
            WorkerState::Starting,
            None,
        );
        pool
    }

    #[test]
    fn rings_are_bounded_and_read_newest_last() {
        let history = History::default();
        for i in 0..(KEEP_SAMPLES as u32 + 10) {
            history.record("app", sample(i));
        }
        let all = history.recent("app", 10_000);
        assert_eq!(all.len(), KEEP_SAMPLES);
        assert_eq!(all[0].ready, 10);
        assert_eq!(all[KEEP_SAMPLES - 1].ready, KEEP_SAMPLES as u32 + 9);
        let last = history.recent("app", 2);
        assert_eq!(
            last.iter().map(|s| s.ready).collect::<Vec<_>>(),
            vec![KEEP_SAMPLES as u32 + 8, KEEP_SAMPLES as u32 + 9]
        );
        assert!(history.recent("other", 900).is_empty());
        history.retain(|name| name != "app");
        assert!(history.recent("app", 900).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn rate_and_percentile_come_from_the_latency_counts_between_ticks() {
        let app = pool("app");
        let t0 = Instant::now();
        let (first, prev) = sample_pool(&app, None, t0, SystemTime::now());
        assert_eq!((first.rps, first.p99_ms), (0.0, None));
        assert_eq!((first.ready, first.starting), (1, 1));

        for _ in 0..99 {
            app.latency().record(Duration::from_millis(2));
        }
        app.latency().record(Duration::from_millis(900));
        tokio::time::advance(Duration::from_secs(2)).await;
        let (second, prev) = sample_pool(&app, Some(&prev), Instant::now(), SystemTime::now());
        assert_eq!(second.rps, 50.0, "100 responses over 2 s");
        let p99 = second.p99_ms.unwrap_or(0.0);
        assert!((2.0..2.5).contains(&p99), "p99 {p99} ms is the 2 ms bucket");

        tokio::time::advance(Duration::from_secs(1)).await;
        let (idle, _) = sample_pool(&app, Some(&prev), Instant::now(), SystemTime::now());
        assert_eq!((idle.rps, idle.p99_ms), (0.0, None));

        // A replaced pool of the same name starts its counts over instead of reading the old
        // pool's total as its own.
        let replaced = pool("app");
        replaced.latency().record(Duration::from_millis(1));
        let (fresh, _) = sample_pool(&replaced, Some(&prev), Instant::now(), SystemTime::now());
        assert_eq!((fresh.rps, fresh.p99_ms), (0.0, None));
    }
}
