//! Worker selection. Both policies look only at `Ready` workers and read live atomics, so a pick
//! costs a few loads and never takes a lock.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::worker::{Worker, WorkerState};
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

    /// Choose among `workers`; `None` when none is ready.
    pub fn pick<'a>(&self, workers: &'a [Arc<Worker>]) -> Option<&'a Arc<Worker>> {
        match self.policy {
            Balance::RoundRobin => self.round_robin(workers),
            Balance::LeastInflight => least_inflight_p2c(workers),
        }
    }

    fn round_robin<'a>(&self, workers: &'a [Arc<Worker>]) -> Option<&'a Arc<Worker>> {
        let n = workers.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &workers[(start + i) % n])
            .find(|w| w.state() == WorkerState::Ready)
    }
}

/// Power of two choices: sample two distinct ready workers, take the one with fewer requests in
/// flight. Falls back to a scan when few workers are ready, so a pick never fails while one is.
fn least_inflight_p2c(workers: &[Arc<Worker>]) -> Option<&Arc<Worker>> {
    let n = workers.len();
    match n {
        0 => return None,
        1 => return workers.iter().find(|w| w.state() == WorkerState::Ready),
        _ => {}
    }
    let a = random_below(n);
    let mut b = random_below(n - 1);
    if b >= a {
        b += 1;
    }
    let (wa, wb) = (&workers[a], &workers[b]);
    match (
        wa.state() == WorkerState::Ready,
        wb.state() == WorkerState::Ready,
    ) {
        (true, true) => Some(if wb.in_flight() < wa.in_flight() {
            wb
        } else {
            wa
        }),
        // One or both samples unusable: take the least loaded ready worker by a full scan.
        _ => workers
            .iter()
            .filter(|w| w.state() == WorkerState::Ready)
            .min_by_key(|w| w.in_flight()),
    }
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

    fn workers(n: usize) -> Vec<Arc<Worker>> {
        (0..n)
            .map(|i| {
                Worker::new(
                    format!("w{i}"),
                    format!("127.0.0.1:{}", 3000 + i).parse().unwrap(),
                    WorkerState::Ready,
                )
            })
            .collect()
    }

    #[test]
    fn round_robin_cycles_and_skips_unready() {
        let ws = workers(3);
        let b = Balancer::new(Balance::RoundRobin);
        let names: Vec<_> = (0..6).map(|_| b.pick(&ws).unwrap().name.clone()).collect();
        assert_eq!(names, ["w0", "w1", "w2", "w0", "w1", "w2"]);
        ws[1].set_state(WorkerState::Unhealthy);
        for _ in 0..10 {
            assert_ne!(b.pick(&ws).unwrap().name, "w1");
        }
    }

    #[test]
    fn p2c_prefers_less_loaded() {
        let ws = workers(2);
        let _busy: Vec<_> = (0..5).map(|_| ws[0].begin_request()).collect();
        let b = Balancer::new(Balance::LeastInflight);
        for _ in 0..50 {
            assert_eq!(b.pick(&ws).unwrap().name, "w1");
        }
    }

    #[test]
    fn p2c_spreads_evenly_when_idle() {
        let ws = workers(4);
        let b = Balancer::new(Balance::LeastInflight);
        let mut counts = [0usize; 4];
        for _ in 0..4000 {
            let w = b.pick(&ws).unwrap();
            counts[ws.iter().position(|x| Arc::ptr_eq(x, w)).unwrap()] += 1;
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
        assert!(Balancer::new(Balance::LeastInflight).pick(&ws).is_none());
        assert!(Balancer::new(Balance::RoundRobin).pick(&ws).is_none());
        assert!(Balancer::new(Balance::RoundRobin).pick(&[]).is_none());
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
