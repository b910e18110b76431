//! A response that still holds its worker when its head goes to the client is relayed by a
//! small task of its own, which reads the worker as fast as the worker sends and keeps what the
//! client has not taken yet in a [`Spool`]: memory up to `upstream.response_buffer`, then an
//! unlinked temporary file up to `upstream.max_response_buffer`. So the worker's slot and
//! connection are released as soon as the worker has sent the response, whatever the client's
//! speed (nginx's `proxy_buffering`), and a slow reader holds memory and disk, not a worker.
//!
//! Streams stay streams: an event stream, a worker's `X-Accel-Buffering: no` or a route with
//! `buffer_responses = false` gets a spool of one piece, so it is relayed as it comes. When a
//! spool is full (its limits, the shared temporary budget, or a full disk), the task waits for
//! the client, as a stream does; if the client takes nothing for `server.send_timeout`, the
//! task lets go of the worker (its slot frees, its connection closes, the request is recorded
//! with the `client` stage) and the client's response is cut. HTTP/2 needs the task besides:
//! hyper does not poll a body it has no window for, so only a task outside it can notice a
//! stream stalled at zero window.
//!
//! The client side keeps the request's bookkeeping (activity, outcome) and finishes it when
//! the client has the body or leaves.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;
use tracing::warn;

use super::body::{record_failure, ProxyBody};
use super::conn::{ActivityGuard, ConnContext};
use super::outcome::Outcome;
use crate::error::{ProxyError, Stage};
use crate::spool::{Spool, SpoolLimits, TempFiles};

/// How a relayed body ended on the worker's side.
enum End {
    /// Whole, with its trailers if it had any.
    Clean(Option<HeaderMap>),
    /// The worker failed mid-body (already logged and recorded against the worker).
    Failed(ProxyError),
    /// The client took nothing for `send_timeout` while the spool was full.
    Cut,
}

/// What the task and the client side share. The lock is held for a push or a pop, never
/// across an await.
struct Shared {
    state: Mutex<State>,
    /// The client took something: a full spool may have room.
    room: Notify,
    /// The client side is gone: stop reading the worker.
    gone: Notify,
}

struct State {
    spool: Spool,
    end: Option<End>,
    reader: Option<Waker>,
    reader_gone: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a spool that is still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn finish(&self, end: End) {
        let mut state = self.lock();
        state.end = Some(end);
        if let Some(reader) = state.reader.take() {
            reader.wake();
        }
    }
}

/// Where a relayed response's bytes are held and how much.
pub struct RelayPlan {
    /// The spool's limits (one piece when the response must stream).
    pub limits: SpoolLimits,
    /// Temporary files, when the spool may use them.
    pub temp: Option<Arc<TempFiles>>,
    /// How long a full spool waits for the client.
    pub send_timeout: Duration,
}

/// The client side of a relayed response.
pub struct Relayed {
    shared: Arc<Shared>,
    /// Set once the body has ended for the client (cleanly or not).
    done: bool,
    hint: SizeHint,
    /// Keeps the client connection from counting as idle, and tells its watchdog when the
    /// next step is the client's.
    activity: Option<ActivityGuard>,
    /// Metrics and access-log record, finished when the client has the body or leaves.
    outcome: Option<Outcome>,
    bytes_out: u64,
    cx: Arc<ConnContext>,
    /// Frames handed on so far. hyper takes an HTTP/2 stream's first frame before it knows
    /// whether the client gives the stream any window, so only the later ones show the client
    /// reading.
    handed: u64,
}

/// Relay `body` (a worker's, with its worker-side bookkeeping) through a task that reads it
/// into a spool as fast as the worker sends.
pub fn relay(
    body: ProxyBody,
    activity: Option<ActivityGuard>,
    outcome: Option<Outcome>,
    cx: Arc<ConnContext>,
    plan: RelayPlan,
) -> Relayed {
    let hint = body.size_hint();
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            spool: Spool::new(plan.limits, plan.temp),
            end: None,
            reader: None,
            reader_gone: false,
        }),
        room: Notify::new(),
        gone: Notify::new(),
    });
    tokio::spawn(pump(
        body,
        Arc::clone(&shared),
        Arc::clone(&cx),
        plan.send_timeout,
    ));
    Relayed {
        shared,
        done: false,
        hint,
        activity,
        outcome,
        bytes_out: 0,
        cx,
        handed: 0,
    }
}

/// What offering a piece to the spool did.
enum Offer {
    Taken,
    Full(Bytes),
    ReaderGone,
}

async fn pump(
    mut body: ProxyBody,
    shared: Arc<Shared>,
    cx: Arc<ConnContext>,
    send_timeout: Duration,
) {
    let mut trailers = None;
    loop {
        let next = tokio::select! {
            next = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)) => next,
            // Dropping the body records the worker side as abandoned.
            () = shared.gone.notified() => return,
        };
        let mut data = match next {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    trailers = frame.into_trailers().ok();
                    continue;
                }
            },
            None => {
                // The worker is done and released (the body's bookkeeping saw its end).
                drop(body);
                shared.finish(End::Clean(trailers));
                return;
            }
            Some(Err(error)) => {
                drop(body);
                shared.finish(End::Failed(error));
                return;
            }
        };
        loop {
            let offer = {
                let mut state = shared.lock();
                if state.reader_gone {
                    Offer::ReaderGone
                } else {
                    match state.spool.push(data) {
                        Ok(()) => {
                            if let Some(reader) = state.reader.take() {
                                reader.wake();
                            }
                            Offer::Taken
                        }
                        Err(back) => Offer::Full(back),
                    }
                }
            };
            match offer {
                Offer::Taken => break,
                Offer::ReaderGone => return,
                Offer::Full(back) => data = back,
            }
            if tokio::time::timeout(send_timeout, shared.room.notified())
                .await
                .is_err()
            {
                warn!(client = %cx.peer, timeout = ?send_timeout, "client took no response bytes within send_timeout; cutting its response and freeing its worker");
                cx.stream_cut();
                drop(body);
                shared.finish(End::Cut);
                return;
            }
        }
    }
}

impl Relayed {
    fn end_for_client(&mut self, error: Option<&ProxyError>) {
        self.done = true;
        if let Some(mut outcome) = self.outcome.take() {
            if let Some(error) = error {
                record_failure(&mut outcome, error);
            }
            outcome.finish(self.bytes_out);
        }
        // The request is over for this connection.
        self.activity = None;
    }
}

impl Body for Relayed {
    type Data = Bytes;
    type Error = ProxyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let mut state = this.shared.lock();
        let popped = state.spool.pop();
        match popped {
            Ok(Some(data)) => {
                drop(state);
                this.shared.room.notify_one();
                this.handed += 1;
                this.bytes_out += data.len() as u64;
                this.cx.body_taken(data.len() as u64);
                if let Some(activity) = this.activity.as_mut() {
                    if this.handed > 1 {
                        activity.body_polled(true);
                    } else {
                        activity.response_started();
                    }
                }
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            Ok(None) => {}
            Err(e) => {
                drop(state);
                tracing::error!(client = %this.cx.peer, error = %e, "reading a spooled response back from its temporary file failed; cutting the response");
                let error = ProxyError::internal("weir: a temporary file failed\n");
                this.end_for_client(Some(&error));
                return Poll::Ready(Some(Err(error)));
            }
        }
        match state.end.take() {
            None => {
                state.reader = Some(cx.waker().clone());
                drop(state);
                // Waiting on the worker: not the client's turn.
                if let Some(activity) = this.activity.as_mut() {
                    activity.body_polled(false);
                }
                Poll::Pending
            }
            Some(End::Clean(trailers)) => {
                drop(state);
                this.end_for_client(None);
                Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
            }
            Some(End::Failed(error)) => {
                drop(state);
                this.end_for_client(Some(&error));
                Poll::Ready(Some(Err(error)))
            }
            Some(End::Cut) => {
                drop(state);
                let error = ProxyError::client_not_reading();
                this.end_for_client(Some(&error));
                Poll::Ready(Some(Err(error)))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

impl Drop for Relayed {
    fn drop(&mut self) {
        self.shared.lock().reader_gone = true;
        self.shared.gone.notify_one();
        if let Some(mut outcome) = self.outcome.take() {
            // The client left before the body's end.
            outcome.error = Some(Stage::Client);
            outcome.finish(self.bytes_out);
        }
    }
}
