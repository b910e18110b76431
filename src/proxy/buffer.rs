//! Reading a request's body before the request takes a worker slot (nginx's
//! `proxy_request_buffering`): into memory up to `upstream.request_buffer`, then into an
//! unlinked temporary file up to `upstream.max_request_buffer`; a larger body streams on from
//! there. So a client that sends its body slowly, or never, holds a connection and a buffer,
//! never a worker slot, and the request joins its route's queue only once its body is whole.
//!
//! The body must keep coming: no more of it within `server.request_body_timeout`, or less of
//! it than `server.min_data_rate` allows once `server.min_data_rate_grace` has passed
//! (averaged from its start, as Kestrel's MinRequestBodyDataRate), and the request ends with
//! 408. Both are one deadline, recomputed as bytes arrive: no timer runs per byte.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::error::ProxyError;
use crate::spool::{Spool, SpoolLimits, TempFiles};
use crate::upstream::{BufferedBody, ClientBody, UpstreamBody, UpstreamSettings};

/// How fast a body must come.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Longest wait for the next bytes.
    pub idle: Duration,
    /// Slowest average, bytes per second (0: unchecked).
    pub min_rate: u64,
    /// How long the average may be below `min_rate` before it counts.
    pub grace: Duration,
}

impl Pace {
    /// The pace `settings` ask of request bodies.
    pub fn of(settings: &UpstreamSettings) -> Self {
        Pace {
            idle: settings.request_body_timeout,
            min_rate: settings.min_data_rate,
            grace: settings.min_data_rate_grace,
        }
    }

    /// When a body that began at `start`, last moved at `last` and brought `received` bytes
    /// so far is too slow if nothing more comes.
    pub fn deadline(&self, start: Instant, last: Instant, received: u64) -> Instant {
        let idle = last + self.idle;
        if self.min_rate == 0 {
            return idle;
        }
        let earned = Duration::from_secs_f64(received as f64 / self.min_rate as f64);
        idle.min(start + self.grace.max(earned))
    }
}

/// Read `body` ahead of the worker. A body that fits in memory with no trailers comes back as
/// bytes (so an idempotent request can be replayed); a larger one as a buffered body; one that
/// outgrew the limits as what was read followed by the rest of the stream.
pub async fn read_ahead(
    mut body: ClientBody,
    limits: SpoolLimits,
    temp: Arc<TempFiles>,
    pace: Pace,
    counter: Option<Arc<AtomicU64>>,
) -> Result<UpstreamBody, ProxyError> {
    let mut spool = Spool::new(limits, Some(temp));
    let start = Instant::now();
    let mut last = start;
    let mut received = 0u64;
    let mut trailers = None;
    loop {
        let deadline = pace.deadline(start, last, received);
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(ProxyError::client_stalled(false)),
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ProxyError::client_body(&e, false)),
            Ok(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                if data.is_empty() {
                    continue;
                }
                last = Instant::now();
                received += data.len() as u64;
                if let Some(counter) = &counter {
                    counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if let Err(overflow) = spool.push(data) {
                    // Beyond what weir holds: the rest streams, counted as it goes.
                    return Ok(UpstreamBody::Buffered(Box::new(BufferedBody::partial(
                        spool, overflow, body, counter, received,
                    ))));
                }
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    if trailers.is_none() {
        if let Some(bytes) = spool.take_in_memory() {
            return Ok(if bytes.is_empty() {
                UpstreamBody::empty()
            } else {
                UpstreamBody::Bytes(Some(bytes))
            });
        }
    }
    Ok(UpstreamBody::Buffered(Box::new(BufferedBody::whole(
        spool, received, trailers,
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_is_the_sooner_of_idle_and_the_rate() {
        let start = Instant::now();
        let pace = Pace {
            idle: Duration::from_secs(60),
            min_rate: 1000,
            grace: Duration::from_secs(5),
        };
        // Nothing yet: the grace.
        assert_eq!(
            pace.deadline(start, start, 0),
            start + Duration::from_secs(5)
        );
        // 20 KB earned 20 s at 1 KB/s.
        assert_eq!(
            pace.deadline(start, start, 20_000),
            start + Duration::from_secs(20)
        );
        // A body that moved recently but earned little is held to the rate...
        let later = start + Duration::from_secs(30);
        assert_eq!(
            pace.deadline(start, later, 1_000),
            start + Duration::from_secs(5)
        );
        // ...and one far ahead of it to the idle limit.
        assert_eq!(
            pace.deadline(start, start, 10_000_000),
            start + Duration::from_secs(60)
        );
        let unchecked = Pace {
            min_rate: 0,
            ..pace
        };
        assert_eq!(
            unchecked.deadline(start, later, 0),
            later + Duration::from_secs(60)
        );
    }
}
