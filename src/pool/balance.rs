//! Worker selection. Both policies look only at `Ready` workers and read live atomics, so a pick
//! costs a few loads and never takes a lock.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use super::worker::{InFlightGuard, Worker};
use crate::config::Balance;

/// In-flight count at which surplus workers start taking overflow, until the scaler sets its
/// target.
const DEFAULT_SURPLUS_PENALTY: u32 = 10;

/// Picks a worker for the next request.
#[derive(Debug)]
pub struct Balancer {
    policy: std::sync::atomic::AtomicU8,
    next: AtomicUsize,
    surplus_penalty: AtomicU32,
}

impl Balancer {
    /// A balancer with the given policy.
    pub fn new(policy: Balance) -> Self {
        Balancer {
            policy: std::sync::atomic::AtomicU8::new(encode(policy)),
            next: AtomicUsize::new(0),
            surplus_penalty: AtomicU32::new(DEFAULT_SURPLUS_PENALTY),
        }
    }

    /// The policy in use.
    pub fn policy(&self) -> Balance {
        decode(self.policy.load(Ordering::Relaxed))
    }

    /// Switch policy (config reload).
    pub fn set_policy(&self, policy: Balance) {
        self.policy.store(encode(policy), Ordering::Relaxed);
    }

    /// Set the in-flight count above which surplus workers take overflow (the scaler's target).
    pub fn set_surplus_penalty(&self, penalty: u32) {
        self.surplus_penalty
            .store(penalty.max(1), Ordering::Relaxed);
    }

    /// Take a slot on a ready worker with headroom, skipping `exclude` (a worker that just
    /// failed this request); `None` when there is none.
    pub fn acquire(&self, workers: &[Arc<Worker>], exclude: Option<u64>) -> Option<InFlightGuard> {
        match self.policy() {
            Balance::RoundRobin => self.round_robin(workers, exclude),
            Balance::LeastInflight => least_inflight_p2c(
                workers,
                exclude,
                self.surplus_penalty.load(Ordering::Relaxed),
            ),
        }
    }

    fn round_robin(&self, workers: &[Arc<Worker>], exclude: Option<u64>) -> Option<InFlightGuard> {
        let n = workers.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let in_turn = (0..n).map(|i| &workers[(start + i) % n]);
        let usable = |w: &&Arc<Worker>| Some(w.id) != exclude;
        // Surplus workers only when no other worker can take the request.
        in_turn
            .clone()
            .filter(usable)
            .filter(|w| !w.is_surplus())
            .find_map(|w| w.try_acquire())
            .or_else(|| {
                in_turn
                    .filter(usable)
                    .filter(|w| w.is_surplus())
                    .find_map(|w| w.try_acquire())
            })
    }
}

fn encode(policy: Balance) -> u8 {
    match policy {
        Balance::LeastInflight => 0,
        Balance::RoundRobin => 1,
    }
}

fn decode(v: u8) -> Balance {
    if v == 1 {
        Balance::RoundRobin
    } else {
        Balance::LeastInflight
    }
}

/// Power of two choices: sample two distinct workers, take the one with fewer requests in
/// flight. When neither sample can take the request, fall back to the least loaded worker with
/// headroom, so a slot is found whenever one exists.
fn least_inflight_p2c(
    workers: &[Arc<Worker>],
    exclude: Option<u64>,
    surplus_penalty: u32,
) -> Option<InFlightGuard> {
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
            (true, true) if wb.load_score(surplus_penalty) < wa.load_score(surplus_penalty) => {
                Some(wb)
            }
            (true, _) => Some(wa),
            (false, true) => Some(wb),
            (false, false) => None,
        };
        // A surplus pick means both samples were surplus or busy: the scan below finds a
        // non-surplus worker if one has room, so surplus workers really go idle.
        if let Some(guard) = first
            .filter(|w| !w.is_surplus())
            .and_then(|w| w.try_acquire())
        {
            return Some(guard);
        }
    }
    // Scan: a few rounds, since another thread may take the slot we saw between look and take.
    for _ in 0..3 {
        let best = workers
            .iter()
            .filter(|w| Some(w.id) != exclude && w.has_headroom())
            .min_by_key(|w| w.load_score(surplus_penalty))?;
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
    fn surplus_workers_take_only_overflow() {
        let ws = workers(3);
        ws[2].set_surplus(true);
        for policy in [Balance::RoundRobin, Balance::LeastInflight] {
            let b = Balancer::new(policy);
            b.set_surplus_penalty(4);
            let held: Vec<_> = (0..6).map(|_| b.acquire(&ws, None).unwrap()).collect();
            assert!(held.iter().all(|g| g.worker().name != "w2"), "{policy:?}");
            drop(held);
        }
        // Non-surplus workers at the target: the surplus one takes the next requests.
        let b = Balancer::new(Balance::LeastInflight);
        b.set_surplus_penalty(4);
        let _busy: Vec<_> = (0..5)
            .flat_map(|_| [ws[0].begin_request(), ws[1].begin_request()])
            .collect();
        let picked: Vec<_> = (0..20).map(|_| name(b.acquire(&ws, None))).collect();
        assert!(picked.iter().any(|n| n == "w2"), "{picked:?}");
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
