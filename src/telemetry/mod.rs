//! Prometheus metrics through the `metrics` crate. Request-path series use handles registered
//! once per route and pool (an atomic add per request, no registry lookup); gauges are set from
//! the live atomics at scrape time, so they cost the request path nothing.

mod alert_counters;

pub use alert_counters::AlertCounters;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::error::Stage;
use crate::pool::{LatencyHistogram, Pool};

/// Histogram buckets in seconds: 0.5 ms to 60 s, dense where proxied requests usually are.
const BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The process-wide Prometheus recorder (installed on first use). `None` if some other
/// recorder was installed first (an embedding program's), in which case /metrics is empty.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .ok()?
                .install_recorder()
                .ok()
        })
        .as_ref()
}

/// How often recorded histogram samples are folded into their buckets. The exporter keeps
/// every sample until then, 8 bytes per histogram per request: folded only when /metrics was
/// scraped, a busy weir nobody scraped grew by about 36 bytes per request (9 MiB in a 9 s
/// run at 64 connections).
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Fold histogram samples into their buckets every [`UPKEEP_INTERVAL`], until the task is
/// dropped.
pub async fn fold_samples_periodically() {
    let Some(handle) = prometheus() else {
        return;
    };
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        handle.run_upkeep();
    }
}

/// Route and pool label of requests that matched no route.
const UNROUTED: &str = "(none)";

/// Status classes, indexed by `status / 100`.
const CLASSES: [&str; 6] = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Why a queued request was turned away, as a metric label.
#[derive(Debug, Clone, Copy)]
pub enum RejectReason {
    /// Queue full.
    Full = 0,
    /// Waited too long.
    Timeout = 1,
    /// The launch it waited for failed.
    NoCapacity = 2,
}

/// A route's request-path series (and its pool's upstream series, shared by the pool's routes).
pub struct RouteMetrics {
    requests: [Counter; 6],
    duration: Histogram,
    queue_wait: Histogram,
    rejected: [Counter; 3],
    upstream: Histogram,
    retries: Counter,
    alerts: Arc<AlertCounters>,
    /// The pool's latency histogram (none for unrouted requests).
    pool_latency: Option<Arc<LatencyHistogram>>,
    errors: [Counter; Stage::ALL.len()],
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouteMetrics")
    }
}

impl RouteMetrics {
    /// Register the series of route `route`, which sends to `pool`; its responses and
    /// rejections also count toward `alerts`, and its responses' latencies toward the pool's.
    pub fn new(route: &str, pool: &Pool, alerts: &Arc<AlertCounters>) -> Arc<Self> {
        RouteMetrics::register(route, &pool.name, alerts, Some(Arc::clone(pool.latency())))
    }

    fn register(
        route: &str,
        pool: &str,
        alerts: &Arc<AlertCounters>,
        pool_latency: Option<Arc<LatencyHistogram>>,
    ) -> Arc<Self> {
        let _ = prometheus();
        let route = route.to_string();
        let pool = pool.to_string();
        Arc::new(RouteMetrics {
            requests: CLASSES.map(|class| {
                counter!("weir_requests_total", "route" => route.clone(), "status_class" => class)
            }),
            duration: histogram!("weir_request_duration_seconds", "route" => route.clone()),
            queue_wait: histogram!("weir_queue_wait_seconds", "route" => route.clone()),
            rejected: ["full", "timeout", "no_capacity"].map(|reason| {
                counter!("weir_queue_rejected_total", "route" => route.clone(), "reason" => reason)
            }),
            upstream: histogram!("weir_upstream_duration_seconds", "pool" => pool.clone()),
            retries: counter!("weir_retries_total", "pool" => pool),
            alerts: Arc::clone(alerts),
            pool_latency,
            errors: Stage::ALL.map(|stage| {
                counter!("weir_request_errors_total", "route" => route.clone(), "stage" => stage.as_str())
            }),
        })
    }

    /// The series for requests that matched no route.
    pub fn unrouted(alerts: &Arc<AlertCounters>) -> Arc<RouteMetrics> {
        RouteMetrics::register(UNROUTED, UNROUTED, alerts, None)
    }

    /// A response finished (or failed) after `duration`.
    pub fn record(&self, status: u16, duration: Duration) {
        let class = usize::from(status / 100);
        self.requests[if class < CLASSES.len() { class } else { 0 }].increment(1);
        self.duration.record(duration.as_secs_f64());
        self.alerts.record_response(status, duration);
        if let Some(latency) = &self.pool_latency {
            latency.record(duration);
        }
    }

    /// A request waited `wait` in the queue before getting a slot.
    pub fn record_queue_wait(&self, wait: Duration) {
        self.queue_wait.record(wait.as_secs_f64());
    }

    /// A worker answered with headers after `duration`.
    pub fn record_upstream(&self, duration: Duration) {
        self.upstream.record(duration.as_secs_f64());
    }

    /// A request failed at `stage` (before or after its status was sent).
    pub fn record_error(&self, stage: Stage) {
        self.errors[stage.index()].increment(1);
    }

    /// A request was retried on another worker.
    pub fn record_retry(&self) {
        self.retries.increment(1);
    }

    /// A request was turned away by the queue.
    pub fn record_rejection(&self, reason: RejectReason) {
        self.rejected[reason as usize].increment(1);
        self.alerts.record_rejection();
    }
}

/// A health probe ran (control plane; not on the request path).
pub fn record_health_check(pool: &str, passed: bool) {
    counter!("weir_health_checks_total", "pool" => pool.to_string(), "result" => if passed { "pass" } else { "fail" })
        .increment(1);
}

/// A launched worker became ready `seconds` after its launch call (control plane).
pub fn record_cold_start(pool: &str, seconds: f64) {
    histogram!("weir_cold_start_seconds", "pool" => pool.to_string()).record(seconds);
}

/// The scaler acted (control plane).
pub fn record_scale_event(pool: &str, action: &'static str) {
    counter!("weir_scale_events_total", "pool" => pool.to_string(), "action" => action)
        .increment(1);
}

/// A rollout ended: `done`, `rolled_back` or `aborted` (control plane).
pub fn record_rollout(pool: &str, result: &'static str) {
    counter!("weir_rollouts_total", "pool" => pool.to_string(), "result" => result).increment(1);
}

/// When the certificate served for `names` (from the ACME CA) expires, in Unix seconds: an
/// alert compares it with `time()`.
pub fn record_certificate_expiry(names: &[String], end: std::time::SystemTime) {
    let at = end
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    for name in names {
        gauge!("weir_certificate_expiry_seconds", "name" => name.clone()).set(at);
    }
}

/// Whether this instance leads its fleet (`[cluster]` only).
pub fn set_cluster_leader(leader: bool) {
    gauge!("weir_cluster_leader").set(if leader { 1.0 } else { 0.0 });
}

/// How many instances the fleet has, as last read from Redis.
pub fn set_cluster_instances(instances: usize) {
    gauge!("weir_cluster_instances").set(instances as f64);
}

/// Whether the fleet's Redis answered the last heartbeat.
pub fn set_cluster_redis_up(up: bool) {
    gauge!("weir_cluster_redis_up").set(if up { 1.0 } else { 0.0 });
}
