//! Active health checks. Each worker has a probe loop on the control runtime: starting workers
//! are probed every 25 ms so they take traffic as soon as they can, ready and unhealthy ones
//! every `interval`. Passive failures (see [`crate::pool::Worker::record_failure`]) eject a
//! worker between probes; only probes bring it back.

mod probe;

pub use crate::pool::{HealthSettings, ProbeKind};
pub use probe::probe;

use std::sync::{Arc, Weak};
use std::time::Duration;

use tracing::{info, warn};

use crate::pool::{Pool, Worker, WorkerState};

/// Probe period of a starting worker: fast, so a new worker serves within tens of ms.
pub const STARTING_PROBE_INTERVAL: Duration = Duration::from_millis(25);
/// How long a worker that never passed keeps being probed fast; after it, it is probed every
/// `interval` (a static address that is down should not be hammered 40 times a second).
pub const FAST_PROBE_WINDOW: Duration = Duration::from_secs(30);

/// Start probing one worker until it leaves its pool.
pub fn watch_worker(pool: &Arc<Pool>, worker: &Arc<Worker>) {
    let pool_name = pool.name.clone();
    let pool = Arc::downgrade(pool);
    let weak = Arc::downgrade(worker);
    tokio::spawn(probe_loop(pool, pool_name, weak));
}

/// Consecutive probe outcomes of one worker, and the state change they call for.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProbeTally {
    passes: u32,
    failures: u32,
}

impl ProbeTally {
    /// Count one probe outcome for a worker now in `state`; returns the state to move to.
    pub fn record(
        &mut self,
        passed: bool,
        state: WorkerState,
        settings: &HealthSettings,
    ) -> Option<WorkerState> {
        if passed {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            let recovers = matches!(state, WorkerState::Starting | WorkerState::Unhealthy);
            (recovers && self.passes >= settings.healthy_threshold).then_some(WorkerState::Ready)
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
            (state == WorkerState::Ready && self.failures >= settings.unhealthy_threshold)
                .then_some(WorkerState::Unhealthy)
        }
    }
}

async fn probe_loop(pool: Weak<Pool>, pool_name: String, worker: Weak<Worker>) {
    let started = tokio::time::Instant::now();
    let mut tally = ProbeTally::default();
    loop {
        // Stop once the worker has left its pool (or the pool is gone).
        let Some(worker) = worker.upgrade() else {
            return;
        };
        let Some(pool) = pool.upgrade() else { return };
        if !pool.workers().iter().any(|w| Arc::ptr_eq(w, &worker)) {
            return;
        }
        // Read each round, so a reload's new settings apply at once.
        let settings = pool.health();
        let transport = pool.transport();
        drop(pool);
        let state = worker.state();
        if state != WorkerState::Draining {
            let outcome = probe(&worker, &settings.kind, &transport, settings.timeout).await;
            crate::telemetry::record_health_check(&pool_name, outcome.is_ok());
            // Passive ejection may have changed the state while the probe ran.
            let state = worker.state();
            match tally.record(outcome.is_ok(), state, &settings) {
                Some(WorkerState::Ready) => {
                    info!(pool = %pool_name, worker = %worker.name, from = state.as_str(), "worker ready");
                    worker.set_state(WorkerState::Ready);
                }
                Some(next) => {
                    let reason = outcome.err().unwrap_or_default();
                    warn!(pool = %pool_name, worker = %worker.name, %reason, "worker unhealthy: health checks failing");
                    worker.set_state(next);
                }
                None => {}
            }
        }
        let fast = worker.state() == WorkerState::Starting && started.elapsed() < FAST_PROBE_WINDOW;
        drop(worker);
        tokio::time::sleep(if fast {
            STARTING_PROBE_INTERVAL
        } else {
            settings.interval
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(healthy: u32, unhealthy: u32) -> HealthSettings {
        let mut s = HealthSettings::from_config(None);
        s.healthy_threshold = healthy;
        s.unhealthy_threshold = unhealthy;
        s
    }

    #[test]
    fn thresholds_drive_transitions() {
        let s = settings(2, 3);
        let mut t = ProbeTally::default();
        assert_eq!(t.record(true, WorkerState::Starting, &s), None);
        assert_eq!(
            t.record(true, WorkerState::Starting, &s),
            Some(WorkerState::Ready)
        );
        assert_eq!(t.record(false, WorkerState::Ready, &s), None);
        assert_eq!(t.record(false, WorkerState::Ready, &s), None);
        // A pass in between starts the count over.
        assert_eq!(t.record(true, WorkerState::Ready, &s), None);
        assert_eq!(t.record(false, WorkerState::Ready, &s), None);
        assert_eq!(t.record(false, WorkerState::Ready, &s), None);
        assert_eq!(
            t.record(false, WorkerState::Ready, &s),
            Some(WorkerState::Unhealthy)
        );
        assert_eq!(t.record(true, WorkerState::Unhealthy, &s), None);
        assert_eq!(
            t.record(true, WorkerState::Unhealthy, &s),
            Some(WorkerState::Ready)
        );
    }

    #[test]
    fn starting_workers_are_not_marked_unhealthy_by_probes() {
        let s = settings(1, 1);
        let mut t = ProbeTally::default();
        for _ in 0..10 {
            assert_eq!(t.record(false, WorkerState::Starting, &s), None);
        }
    }
}
