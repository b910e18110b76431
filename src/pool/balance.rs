//! Worker selection. Both policies look only at `Ready` workers and read live atomics, so a pick
//! costs a few loads and never takes a lock.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::worker::{InFlightGuard, Worker};
use crate::config::Balance;

/// Picks a worker for the next request.
#[derive(Debug)]
pub struct Balancer {
    policy: Balance,
    next: AtomicUsize,
}

impl Balancer {
    /// A balancer with the given policy.
    pub fn new(policy: Balance) -> Self {
        Balancer {
            policy,
            next: AtomicUsize::new(0),
        }
    }

    /// The policy in use.
    pub fn policy(&self) -> Balance {
        self.policy
    }

    /// Take a slot on a ready worker with headroom, skipping `exclude` (a worker that just
    /// failed this request); `None` when there is none.
    pub fn acquire(&self, workers: &[Arc<Worker>], exclude: Option<u64>) -> Option<InFlightGuard> {
        match self.policy {
            Balance::RoundRobin => self.round_robin(workers, exclude),
            Balance::LeastInflight => least_inflight_p2c(workers, exclude),
        }
    }

    fn round_robin(&self, workers: &[Arc<Worker>], exclude: Option<u64>) -> Option<InFlightGuard> {
        let n = workers.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &workers[(start + i) % n])
            .filter(|w| Some(w.id) != exclude)
            .find_map(|w| w.try_acquire())
    }
}

/// Power of two choices: sample two distinct workers, take the one with fewer requests in
/// flight. When neither sample can take the request, fall back to the least loaded worker with
/// headroom, so a slot is found whenever one exists.
fn least_inflight_p2c(workers: &[Arc<Worker>], exclude: Option<u64>) -> Option<InFlightGuard> {
    let n = workers.len();
    if n >= 2 {
        let a = random_below(n);
        let mut b = random_below(n - 1);
        if b >= a {
            b += 1;
        }
        let usable = |w: &&Arc<Worker>| Some(w.id) != exclude && w.has_headroom();
        let (wa, wb) = (&workers[a], &workers[b]);
        let first = match (usable(&wa), usable(&wb)) {
            (true, true) if wb.in_flight() < wa.in_flight() => Some(wb),
            (true, _) => Some(wa),
            (false, true) => Some(wb),
            (false, false) => None,
        };
        if let Some(guard) = first.and_then(|w| w.try_acquire()) {
            return Some(guard);
        }
    }
    // Scan: a few rounds, since another thread may take the slot we saw between look and take.
    for _ in 0..3 {
        let best = workers
            .iter()
            .filter(|w| Some(w.id) != exclude && w.has_headroom())
            .min_by_key(|w| w.in_flight())?;
        if let Some(guard) = best.try_acquire() {
            return Some(guard);
        }
    }
    None
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9E37_79B9_7F4A_7C15);
    h.finish() | 1
}

/// A per-thread xorshift64*: plenty for load spreading, no shared state, no crate.
fn random_below(n: usize) -> usize {
    RNG.with(|cell| {
        let mut x = cell.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        cell.set(x);
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (((r >> 32) * n as u64) >> 32) as usize
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::WorkerState;

    fn workers(n: usize) -> Vec<Arc<Worker>> {
        (0..n)
            .map(|i| {
                Worker::detached(
                    &format!("w{i}"),
                    format!("127.0.0.1:{}", 3000 + i).parse().unwrap(),
                    WorkerState::Ready,
                )
            })
            .collect()
    }

    fn name(g: Option<InFlightGuard>) -> String {
        g.map(|g| g.worker().name.clone()).unwrap_or_default()
    }

    #[test]
    fn round_robin_cycles_and_skips_unready_and_excluded() {
        let ws = workers(3);
        let b = Balancer::new(Balance::RoundRobin);
        let names: Vec<_> = (0..6).map(|_| name(b.acquire(&ws, None))).collect();
        assert_eq!(names, ["w0", "w1", "w2", "w0", "w1", "w2"]);
        ws[1].set_state(WorkerState::Unhealthy);
        for _ in 0..10 {
            assert_ne!(name(b.acquire(&ws, None)), "w1");
            assert_eq!(name(b.acquire(&ws, Some(ws[0].id))), "w2");
        }
    }

    #[test]
    fn p2c_prefers_less_loaded() {
        let ws = workers(2);
        let _busy: Vec<_> = (0..5).map(|_| ws[0].begin_request()).collect();
        let b = Balancer::new(Balance::LeastInflight);
        for _ in 0..50 {
            assert_eq!(name(b.acquire(&ws, None)), "w1");
        }
    }

    #[test]
    fn p2c_spreads_evenly_when_idle() {
        let ws = workers(4);
        let b = Balancer::new(Balance::LeastInflight);
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            let g = b.acquire(&ws, None).unwrap();
            counts[ws.iter().position(|x| Arc::ptr_eq(x, g.worker())).unwrap()] += 1;
        }
        for c in counts {
            assert!(c > 700, "{counts:?}");
        }
    }

    #[test]
    fn no_ready_worker_gives_none() {
        let ws = workers(3);
        for w in &ws {
            w.set_state(WorkerState::Starting);
        }
        assert!(Balancer::new(Balance::LeastInflight)
            .acquire(&ws, None)
            .is_none());
        assert!(Balancer::new(Balance::RoundRobin)
            .acquire(&ws, None)
            .is_none());
        assert!(Balancer::new(Balance::RoundRobin)
            .acquire(&[], None)
            .is_none());
    }

    #[test]
    fn random_below_stays_in_range() {
        for n in 1..50 {
            for _ in 0..100 {
                assert!(random_below(n) < n);
            }
        }
    }
}
