//! Reading a request's body before the request takes a worker slot (nginx's
//! `proxy_request_buffering`): into memory up to `upstream.request_buffer`, then into an
//! unlinked temporary file up to `upstream.max_request_buffer`; a larger body streams on from
//! there. So a client that sends its body slowly, or never, holds a connection and a buffer,
//! never a worker slot, and the request joins its route's queue only once its body is whole.
//!
//! The body must keep coming at its [`Pace`], or the request ends with 408.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::error::ProxyError;
use crate::spool::{Spool, SpoolLimits, TempFiles};
use crate::upstream::{BufferedBody, ClientBody, Pace, UpstreamBody};

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
