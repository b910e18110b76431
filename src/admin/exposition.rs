//! The Prometheus text exposition served on `/metrics`: the gauges that are read off the live
//! snapshot (in flight, workers by state, queue depths, temporary files) are refreshed first,
//! then the recorder renders everything. It lives with the admin API that serves it, so the
//! metrics layer below needs nothing of the snapshot.

use metrics::gauge;

use crate::pool::WorkerState;
use crate::state::Snapshot;
use crate::telemetry::prometheus;

/// The Prometheus text exposition, with gauges refreshed from `snapshot` first.
pub fn render(snapshot: &Snapshot) -> String {
    let Some(handle) = prometheus() else {
        return String::new();
    };
    for (name, pool) in &snapshot.pools {
        gauge!("weir_inflight_requests", "pool" => name.clone()).set(pool.in_flight() as f64);
        let workers = pool.workers();
        for state in [
            WorkerState::Starting,
            WorkerState::Ready,
            WorkerState::Draining,
            WorkerState::Unhealthy,
        ] {
            let n = crate::pool::count_in(&workers, state);
            gauge!("weir_workers", "pool" => name.clone(), "state" => state.as_str()).set(n as f64);
        }
    }
    for route in snapshot.routes.all() {
        gauge!("weir_queue_depth", "route" => route.name.to_string())
            .set(route.queue.depth() as f64);
    }
    gauge!("weir_temp_file_bytes").set(snapshot.temp_files.used() as f64);
    handle.run_upkeep();
    handle.render()
}
