//! The admin API's JSON documents. Field names are a public interface: add, never rename.

use serde::{Deserialize, Serialize};

use crate::control::Control;
use crate::pool::WorkerState;
use crate::values::clock::{rfc3339, wall_time_of};

/// One worker (GET /api/v1/workers).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerView {
    /// The worker's name, unique in weir ("app-3").
    pub id: String,
    /// Its pool.
    pub pool: String,
    /// Where weir proxies to.
    pub address: String,
    /// starting | ready | draining | unhealthy
    pub state: String,
    /// Requests in flight now.
    pub in_flight: u32,
    /// Requests completed.
    pub served: u64,
    /// When weir added it (RFC 3339).
    pub created_at: String,
    /// Marked surplus by the scaler (gets overflow only).
    #[serde(default)]
    pub surplus: bool,
    /// Protected from scale-in.
    #[serde(default)]
    pub protected: bool,
    /// This instance's cap on its requests in flight to the worker: `worker_concurrency`, or
    /// in a fleet this instance's share of it.
    #[serde(default)]
    pub cap: u32,
    /// The pool's revision it was launched with, if known.
    #[serde(default)]
    pub revision: Option<String>,
}

/// One waiting request (GET /api/v1/queue).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueView {
    /// The route it came in on.
    pub route: String,
    /// When it started waiting (RFC 3339).
    pub enqueued_at: String,
    /// How long it has waited.
    pub waited_ms: u64,
    /// worker_busy | no_worker
    pub reason: String,
    /// Its pool.
    #[serde(default)]
    pub pool: String,
}

/// One pool (GET /api/v1/pools).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolView {
    /// The pool's name.
    pub name: String,
    /// Ready workers.
    pub ready: u32,
    /// Workers the scaler wants (static pools: their size).
    pub desired: u32,
    /// Floor.
    pub min_workers: u32,
    /// Ceiling.
    pub max_workers: u32,
    /// Requests in flight.
    pub in_flight: u64,
    /// Requests waiting.
    pub queued: u64,
    /// Workers starting.
    #[serde(default)]
    pub starting: u32,
    /// Workers unhealthy.
    #[serde(default)]
    pub unhealthy: u32,
    /// Workers draining.
    #[serde(default)]
    pub draining: u32,
    /// The provider, described.
    #[serde(default)]
    pub provider: String,
    /// The revision new workers are launched with (absent for a pool weir does not launch).
    #[serde(default)]
    pub revision: Option<String>,
    /// The rollout under way or last ended, if any.
    #[serde(default)]
    pub rollout: Option<crate::scale::RolloutView>,
}

/// One scaling event (GET /api/v1/activity).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ActivityView {
    /// When (RFC 3339).
    pub at: String,
    /// Which pool.
    pub pool: String,
    /// scale_up | scale_down | replace | manual | launch_failed
    pub action: String,
    /// Workers before.
    pub from: u32,
    /// Workers after.
    pub to: u32,
    /// Why.
    pub reason: String,
}

/// One second of a pool (GET /api/v1/history): kept in the sampler's ring as served.
pub use crate::history::Sample as HistoryView;

/// The body of POST /api/v1/pools/{name}/rollout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutRequest {
    /// pause | resume | abort | undo | status
    pub action: String,
}

/// The body of POST /api/v1/pools/{name}/scale.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleRequest {
    /// Desired worker count.
    pub workers: u32,
}

/// Every worker of every pool.
pub fn workers(control: &Control) -> Vec<WorkerView> {
    let snapshot = control.shared().snapshot();
    let mut out = Vec::new();
    for (name, pool) in &snapshot.pools {
        for w in pool.workers().iter() {
            out.push(WorkerView {
                id: w.name.clone(),
                pool: name.clone(),
                address: w.addr.to_string(),
                state: w.state().as_str().to_string(),
                in_flight: w.in_flight(),
                served: w.served(),
                created_at: rfc3339(w.created_at),
                surplus: w.is_surplus(),
                protected: w.is_protected(),
                cap: w.max_in_flight(),
                revision: w.revision().map(str::to_string),
            });
        }
    }
    out
}

/// Every waiting request, oldest first per pool.
pub fn queue(control: &Control) -> Vec<QueueView> {
    let snapshot = control.shared().snapshot();
    let mut out = Vec::new();
    for (name, pool) in &snapshot.pools {
        for waiting in pool.waiting_requests() {
            out.push(QueueView {
                route: waiting.route.to_string(),
                enqueued_at: rfc3339(wall_time_of(waiting.enqueued_at)),
                waited_ms: waiting.enqueued_at.elapsed().as_millis() as u64,
                reason: waiting.reason.as_str().to_string(),
                pool: name.clone(),
            });
        }
    }
    out
}

/// Every pool's size and load.
pub fn pools(control: &Control) -> Vec<PoolView> {
    let snapshot = control.shared().snapshot();
    snapshot
        .pools
        .iter()
        .map(|(name, pool)| {
            let workers = pool.workers();
            let count = |s: WorkerState| crate::pool::count_in(&workers, s);
            let (desired, min, max, provider, revision, rollout) = match control.scalers.get(name) {
                Some(scaler) => {
                    // The rollout first: once it shows ended, the template it restored is
                    // already the pool's (both change under its lock).
                    let rollout = scaler.rollout_view();
                    (
                        scaler.desired(),
                        scaler
                            .policy()
                            .effective_min(crate::values::unix_minutes_now()),
                        scaler.policy().max_workers,
                        scaler.describe(),
                        scaler.revision(),
                        rollout,
                    )
                }
                None => {
                    let n = workers.len() as u32;
                    (n, n, n, format!("static: {n} address(es)"), None, None)
                }
            };
            PoolView {
                name: name.clone(),
                ready: count(WorkerState::Ready),
                desired,
                min_workers: min,
                max_workers: max,
                in_flight: pool.in_flight(),
                queued: pool.waiting() as u64,
                starting: count(WorkerState::Starting),
                unhealthy: count(WorkerState::Unhealthy),
                draining: count(WorkerState::Draining),
                provider,
                revision,
                rollout,
            }
        })
        .collect()
}

/// The scaling history, oldest first.
pub fn activity(control: &Control) -> Vec<ActivityView> {
    control
        .activity
        .events()
        .into_iter()
        .map(|e| ActivityView {
            at: rfc3339(e.at),
            pool: e.pool,
            action: e.action.as_str().to_string(),
            from: e.from,
            to: e.to,
            reason: e.reason,
        })
        .collect()
}

/// A pool's samples of the last `seconds`, oldest first.
pub fn history(control: &Control, pool: &str, seconds: usize) -> Vec<HistoryView> {
    control.history.recent(pool, seconds)
}
