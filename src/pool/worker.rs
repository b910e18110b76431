//! One worker's identity and live counters. Everything here is an atomic so that every serving
//! thread, the health checker and the autoscaler read the same numbers without a lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

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

/// A worker process or server that requests are proxied to.
#[derive(Debug)]
pub struct Worker {
    /// Stable id, unique within the process, used to key per-thread connection pools and logs.
    pub id: u64,
    /// Display name ("app-1") for logs and the admin API.
    pub name: String,
    /// Where to connect.
    pub addr: SocketAddr,
    state: AtomicU8,
    in_flight: AtomicU32,
    served: AtomicU64,
}

static NEXT_WORKER_ID: AtomicU64 = AtomicU64::new(1);

impl Worker {
    /// A new worker in `state`.
    pub fn new(name: String, addr: SocketAddr, state: WorkerState) -> Arc<Self> {
        Arc::new(Worker {
            id: NEXT_WORKER_ID.fetch_add(1, Ordering::Relaxed),
            name,
            addr,
            state: AtomicU8::new(state as u8),
            in_flight: AtomicU32::new(0),
            served: AtomicU64::new(0),
        })
    }

    /// Current lifecycle state.
    pub fn state(&self) -> WorkerState {
        WorkerState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Move to `state` (health checks, draining).
    pub fn set_state(&self, state: WorkerState) {
        self.state.store(state as u8, Ordering::Release);
    }

    /// Requests sent to this worker whose response has not finished yet.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests this worker has completed (responses finished or abandoned).
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Count a request against this worker until the returned guard drops, which happens when
    /// the response body ends or the client goes away; so the count is exact.
    pub fn begin_request(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard {
            worker: Arc::clone(self),
        }
    }
}

/// Holds one unit of a worker's in-flight count.
#[derive(Debug)]
pub struct InFlightGuard {
    worker: Arc<Worker>,
}

impl InFlightGuard {
    /// The worker this request is counted against.
    pub fn worker(&self) -> &Arc<Worker> {
        &self.worker
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.worker.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.worker.served.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_is_exact_across_guards() {
        let w = Worker::new(
            "w".into(),
            "127.0.0.1:1".parse().unwrap(),
            WorkerState::Ready,
        );
        let a = w.begin_request();
        let b = w.begin_request();
        assert_eq!(w.in_flight(), 2);
        drop(a);
        assert_eq!(w.in_flight(), 1);
        drop(b);
        assert_eq!(w.in_flight(), 0);
        assert_eq!(w.served(), 2);
    }

    #[test]
    fn state_round_trips() {
        let w = Worker::new(
            "w".into(),
            "127.0.0.1:1".parse().unwrap(),
            WorkerState::Starting,
        );
        for s in [
            WorkerState::Ready,
            WorkerState::Draining,
            WorkerState::Unhealthy,
            WorkerState::Starting,
        ] {
            w.set_state(s);
            assert_eq!(w.state(), s);
        }
    }
}
