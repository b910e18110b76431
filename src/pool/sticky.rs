//! Session affinity (`[pools.NAME] sticky`): a request's key picks its worker by rendezvous
//! hashing (highest random weight) over the workers' addresses, with bounded loads: the
//! key's first choice unless that worker is full (at `worker_concurrency`), not ready or
//! draining, then its second, and so on. So one hot key cannot push a worker past its cap,
//! a worker that leaves hands each of its keys to that key's next choice (no other key
//! moves), and a new worker takes only the keys that now rank it first: about 1/n of them.
//! Addresses, not worker ids, are hashed, so a rebuilt pool's workers keep their keys.

use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use super::{InFlightGuard, Worker};

/// A fixed hasher (the same weights in every process of a fleet and across restarts).
fn hash_pair(key: u64, addr: SocketAddr) -> u64 {
    let mut h = std::hash::BuildHasherDefault::<Fnv>::default().build_hasher();
    h.write_u64(key);
    match addr {
        SocketAddr::V4(a) => h.write(&a.ip().octets()),
        SocketAddr::V6(a) => h.write(&a.ip().octets()),
    }
    h.write_u16(addr.port());
    // FNV's low bits mix poorly; a final avalanche (splitmix64) spreads every input bit.
    splitmix(h.finish())
}

/// The 64-bit key of a request's affinity text (a header value, a cookie, an address).
pub fn key_of(text: &[u8]) -> u64 {
    let mut h = Fnv::default();
    h.write(text);
    splitmix(h.finish())
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a, 64 bits.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A slot on the best-ranked worker for `key` that has one, skipping `exclude`. One pass
/// (no sort, no allocation): the highest weight among workers with room; a worker whose slot
/// went to another request meanwhile is passed over and the pass repeats.
pub fn acquire(workers: &[Arc<Worker>], key: u64, exclude: Option<u64>) -> Option<InFlightGuard> {
    let mut passed_over: u64 = 0;
    for _ in 0..workers.len().min(64) {
        let mut best: Option<(u64, usize)> = None;
        for (i, worker) in workers.iter().enumerate() {
            if Some(worker.id) == exclude || (i < 64 && passed_over & (1 << i) != 0) {
                continue;
            }
            if !worker.has_headroom() {
                continue;
            }
            let weight = hash_pair(key, worker.addr);
            if best.is_none_or(|(w, _)| weight > w) {
                best = Some((weight, i));
            }
        }
        let (_, i) = best?;
        if let Some(slot) = workers[i].try_acquire() {
            return Some(slot);
        }
        if i < 64 {
            passed_over |= 1 << i;
        }
    }
    None
}

/// The worker `key` ranks first among `workers`, room or not (for tests and the note's
/// figures of how many keys move).
pub fn first_choice(workers: &[SocketAddr], key: u64) -> Option<SocketAddr> {
    workers
        .iter()
        .copied()
        .max_by_key(|addr| hash_pair(key, *addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::WorkerState;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, 0, 1 + i as u8], 8080)))
            .collect()
    }

    #[test]
    fn a_fifth_worker_takes_about_a_fifth_of_the_keys_and_no_other_key_moves() {
        let (four, five) = (addrs(4), addrs(5));
        let keys: Vec<u64> = (0..10_000u32).map(|k| key_of(&k.to_be_bytes())).collect();
        let mut moved = 0;
        for &key in &keys {
            let before = first_choice(&four, key).unwrap();
            let after = first_choice(&five, key).unwrap();
            if before != after {
                assert_eq!(after, five[4], "a key moved between old workers");
                moved += 1;
            }
        }
        let share = moved as f64 / keys.len() as f64;
        assert!((0.17..0.23).contains(&share), "{share}");
        // And the spread over five is even within a few percent.
        for addr in &five {
            let mine = keys
                .iter()
                .filter(|k| first_choice(&five, **k) == Some(*addr))
                .count();
            assert!((1800..2200).contains(&mine), "{addr}: {mine}");
        }
    }

    #[test]
    fn a_full_or_draining_first_choice_spills_to_the_next() {
        let workers: Vec<Arc<Worker>> = addrs(3)
            .into_iter()
            .map(|a| {
                let w = Worker::detached("w", a, WorkerState::Ready);
                w.set_max_in_flight(1);
                w
            })
            .collect();
        let key = key_of(b"hot user");
        let first = acquire(&workers, key, None).unwrap();
        let first_addr = first.worker().addr;
        assert_eq!(Some(first_addr), first_choice(&addrs(3), key));
        // The first choice is full: the same key spills, and again.
        let second = acquire(&workers, key, None).unwrap();
        assert_ne!(second.worker().addr, first_addr);
        let third = acquire(&workers, key, None).unwrap();
        assert!(
            acquire(&workers, key, None).is_none(),
            "every worker is full"
        );
        drop((second, third));
        drop(first);
        // Draining: the key goes to its next choice.
        let w = workers.iter().find(|w| w.addr == first_addr).unwrap();
        w.set_state(WorkerState::Draining);
        let moved = acquire(&workers, key, None).unwrap();
        assert_ne!(moved.worker().addr, first_addr);
    }
}
