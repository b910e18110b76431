//! What becomes of one request, for metrics and the access log, recorded once when its
//! response ends (or fails, or the client leaves).
//!
//! The record is written when the [`Outcome`] drops, whichever way that happens: a request
//! whose future hyper drops (its client went away before the response) is recorded too, as
//! 499, rather than missing from the metrics and the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{header, HeaderValue, Method, Request, Uri};
use tokio::time::Instant;

use super::conn::ConnContext;
use crate::access_log::{AccessEntry, AccessLog};
use crate::error::{Stage, CLIENT_CLOSED_REQUEST};
use crate::pool::Worker;
use crate::telemetry::RouteMetrics;

/// Access-log facts captured at the start (only when the access log is on). Held as the
/// request's own reference-counted values, so capturing them copies no bytes.
pub struct AccessContext {
    log: Arc<AccessLog>,
    time: SystemTime,
    client: HeaderValue,
    method: Method,
    host: Option<HeaderValue>,
    uri: Uri,
    /// Request body bytes, counted as they pass.
    pub bytes_in: Arc<AtomicU64>,
    /// Response body bytes sent, known once the response ends (kept here, not in the
    /// `Outcome`, as only the log wants it and the `Outcome` rides in every response body).
    bytes_out: u64,
}

/// The running record of one request.
pub struct Outcome {
    started: Instant,
    /// The matched route's series (the unrouted series for a refused request); `None` only
    /// before `prepare` has looked.
    pub route: Option<Arc<RouteMetrics>>,
    /// Route label for the access log.
    pub route_name: Option<Arc<str>>,
    /// Time spent in the queue.
    pub queue_wait: Duration,
    /// Retries on other workers.
    pub retries: u32,
    /// The worker that answered, or failed the request: its revision's counters and the
    /// access log take it.
    pub worker: Option<Arc<Worker>>,
    /// Status sent; 0 until there is one.
    pub status: u16,
    /// Where the request failed, if it did (also after its status was sent).
    pub error: Option<Stage>,
    /// Access-log facts, when the log is on.
    pub access: Option<Box<AccessContext>>,
    /// Which of a split route's pools the request was given (every later look at the route
    /// takes the same one).
    pub route_variant: u16,
}

impl Outcome {
    /// Start the record of `req`.
    pub fn start<B>(req: &Request<B>, cx: &ConnContext) -> Self {
        let access = cx.shared.snapshot().access_log.clone().map(|log| {
            let host = match req.uri().authority() {
                Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
                None => req.headers().get(header::HOST).cloned(),
            };
            Box::new(AccessContext {
                log,
                time: SystemTime::now(),
                client: cx.peer_ip.clone(),
                method: req.method().clone(),
                host,
                uri: req.uri().clone(),
                bytes_in: Arc::new(AtomicU64::new(0)),
                bytes_out: 0,
            })
        });
        Outcome {
            started: Instant::now(),
            route: None,
            route_name: None,
            queue_wait: Duration::ZERO,
            retries: 0,
            worker: None,
            status: 0,
            error: None,
            access,
            route_variant: 0,
        }
    }

    /// Whether the access log wants the worker and byte counts.
    pub fn wants_details(&self) -> bool {
        self.access.is_some()
    }

    /// The response ended after `bytes_out` body bytes: record it (as it drops).
    pub fn finish(mut self, bytes_out: u64) {
        if let Some(access) = self.access.as_mut() {
            access.bytes_out = bytes_out;
        }
    }
}

impl Drop for Outcome {
    /// Record the request: metrics always, the access log when on. Without a status, the
    /// request ended before its response (hyper dropped its future: the client went away).
    fn drop(&mut self) {
        if self.status == 0 {
            self.status = CLIENT_CLOSED_REQUEST;
            self.error = Some(Stage::Client);
        }
        let duration = self.started.elapsed();
        if let Some(worker) = &self.worker {
            worker.record_answer(self.status, duration);
        }
        if let Some(metrics) = &self.route {
            metrics.record(self.status, duration);
            if let Some(stage) = self.error {
                metrics.record_error(stage);
            }
        }
        if let Some(access) = self.access.take() {
            let worker = self.worker.as_ref().map(|w| w.name.as_str()).unwrap_or("");
            access.log.write(&AccessEntry {
                time: crate::values::clock::rfc3339(access.time),
                client: access.client.to_str().unwrap_or_default(),
                method: access.method.as_str(),
                host: access
                    .host
                    .as_ref()
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or_default(),
                path: access.uri.path_and_query().map_or("/", |p| p.as_str()),
                route: self.route_name.as_deref().unwrap_or(""),
                status: self.status,
                bytes_in: access.bytes_in.load(Ordering::Relaxed),
                bytes_out: access.bytes_out,
                duration_ms: duration.as_secs_f64() * 1000.0,
                queue_wait_ms: self.queue_wait.as_secs_f64() * 1000.0,
                worker,
                retries: self.retries,
                error: self.error.map_or("", Stage::as_str),
            });
        }
    }
}
