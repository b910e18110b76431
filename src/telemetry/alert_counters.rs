//! The counters alert rules read. The request path feeds them; the alert evaluator (above,
//! on the control thread) only reads them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::pool::{LatencyCounts, LatencyHistogram};

/// The counters alert rules read, owned by one weir's shared state (not process-wide), so two
/// weirs in one process never see each other's responses. The request path feeds them through
/// its route metrics: a few relaxed atomic adds per request.
#[derive(Debug)]
pub struct AlertCounters {
    /// 5xx responses sent since start (all routes).
    responses_5xx: AtomicU64,
    /// Requests turned away by a queue since start.
    queue_rejections: AtomicU64,
    /// Whether any latency rule exists (the histogram is only fed then).
    track_latency: AtomicBool,
    latency: LatencyHistogram,
}

impl Default for AlertCounters {
    fn default() -> Self {
        AlertCounters {
            responses_5xx: AtomicU64::new(0),
            queue_rejections: AtomicU64::new(0),
            track_latency: AtomicBool::new(false),
            latency: LatencyHistogram::default(),
        }
    }
}

impl AlertCounters {
    /// Count a response (called once per request when it ends).
    pub fn record_response(&self, status: u16, duration: Duration) {
        if status >= 500 {
            self.responses_5xx.fetch_add(1, Ordering::Relaxed);
        }
        if self.track_latency.load(Ordering::Relaxed) {
            self.latency.record(duration);
        }
    }

    /// Count a queue rejection.
    pub fn record_rejection(&self) {
        self.queue_rejections.fetch_add(1, Ordering::Relaxed);
    }

    /// Feed the latency histogram from now on (only while a latency rule exists).
    pub fn track_latency(&self, on: bool) {
        self.track_latency.store(on, Ordering::Relaxed);
    }

    /// 5xx responses sent since start.
    pub fn responses_5xx(&self) -> u64 {
        self.responses_5xx.load(Ordering::Relaxed)
    }

    /// Queue rejections since start.
    pub fn queue_rejections(&self) -> u64 {
        self.queue_rejections.load(Ordering::Relaxed)
    }

    /// The latency histogram's counts now.
    pub fn latency(&self) -> LatencyCounts {
        self.latency.counts()
    }
}
