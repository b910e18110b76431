//! The response body weir sends to clients. A proxied body carries the request's bookkeeping, so
//! the worker's in-flight count drops and its connection returns to the pool exactly when the
//! body ends (or is abandoned), or earlier only when weir already holds the whole body (see
//! `upstream.response_buffer`): then the worker was released before the body was sent.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::conn::ActivityGuard;
use super::outcome::Outcome;
use super::relay::Relayed;
use crate::error::{ProxyError, Stage};
use crate::pool::InFlightGuard;
use crate::upstream::{Upstreams, WorkerBody, WorkerConn};

/// What finishing a proxied response must release.
pub struct Exchange {
    /// Keeps the worker's in-flight count until the body is done; `None` when the worker was
    /// released early, its whole body held by weir.
    pub in_flight: Option<InFlightGuard>,
    /// Keeps the client connection from counting as idle; `None` when the client side of a
    /// relayed response holds it.
    pub activity: Option<ActivityGuard>,
    /// The serving thread's pool the connection goes back to.
    pub upstreams: Arc<Upstreams>,
    /// Idle connections kept per worker.
    pub max_idle: usize,
    /// Metrics and access-log record, finished with the body.
    pub outcome: Option<Outcome>,
}

impl Exchange {
    /// The body ended cleanly: the worker connection, if reusable, goes back to the pool.
    fn complete(mut self, conn: Option<WorkerConn>, bytes_out: u64) {
        if let (Some(conn), Some(slot)) = (conn, &self.in_flight) {
            self.upstreams
                .give_back(slot.worker().id, conn, self.max_idle);
        }
        self.finish(bytes_out);
    }

    /// The body ended, cleanly or not: record the request.
    fn finish(&mut self, bytes_out: u64) {
        if let Some(outcome) = self.outcome.take() {
            outcome.finish(bytes_out);
        }
    }

    /// The body broke off with `error` (the worker failed or stalled mid-body, or the client's
    /// upload broke off), and hyper cuts the client's connection (HTTP/2: the stream). The
    /// failure's stage is recorded; a worker's failure or a time limit also replaces the
    /// status already sent with its own (502, 504), so a response that never arrived whole is
    /// never counted as the 2xx its head announced. A client's own failure keeps the status.
    fn fail(&mut self, error: &ProxyError, bytes_out: u64) {
        let report = error.report();
        let worker = self
            .in_flight
            .as_ref()
            .map_or("", |slot| slot.worker().name.as_str());
        log_at!(report.level, %worker, stage = report.label, error = %error, bytes_out, "{}", report.message);
        if let Some(outcome) = self.outcome.as_mut() {
            record_failure(outcome, error);
        }
        self.finish(bytes_out);
    }

    /// hyper dropped the body before its end: the client went away mid-response.
    fn abandon(&mut self, bytes_out: u64) {
        if let Some(outcome) = self.outcome.as_mut() {
            outcome.error = Some(Stage::Client);
        }
        self.finish(bytes_out);
    }
}

/// Record a body that broke off with `error`: its stage, and for a worker's failure or a time
/// limit the status it replaces the one already sent with (502, 504), so a response that never
/// arrived whole is never counted as the 2xx its head announced. A client's own failure keeps
/// the status.
pub fn record_failure(outcome: &mut Outcome, error: &ProxyError) {
    outcome.error = Some(error.stage());
    if error.stage() != Stage::Client {
        outcome.status = error.report().status.as_u16();
    }
}

/// A response body: streamed from a worker, or a short message from weir itself.
// The worker variant is the common one; boxing it would cost an allocation per response.
#[allow(clippy::large_enum_variant)]
pub enum ProxyBody {
    /// Streaming from a worker.
    Upstream {
        /// The worker's body.
        body: WorkerBody,
        /// Released when the body ends; `None` once released.
        exchange: Option<Exchange>,
        /// Body bytes sent so far.
        bytes_out: u64,
    },
    /// A complete body (errors, small replies).
    Full(Option<Bytes>),
    /// An HTTP/2 response relayed by its own task (see [`super::relay`]).
    Relayed(Relayed),
}

impl ProxyBody {
    /// A body with fixed content.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(bytes.into()))
    }

    /// No body.
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = ProxyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        match self.get_mut() {
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Relayed(relayed) => Pin::new(relayed).poll_frame(cx),
            ProxyBody::Upstream {
                body,
                exchange,
                bytes_out,
            } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                if let Some(activity) = exchange.as_mut().and_then(|e| e.activity.as_mut()) {
                    activity.body_polled(polled.is_ready());
                }
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            *bytes_out += data.len() as u64;
                            if let Some(activity) =
                                exchange.as_ref().and_then(|e| e.activity.as_ref())
                            {
                                activity.took(data.len() as u64);
                            }
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(exchange) = exchange.take() {
                            exchange.complete(body.take_reusable(), *bytes_out);
                        }
                    }
                    Poll::Ready(Some(Err(error))) => {
                        // The worker connection broke mid-body: it is dropped with the body.
                        if let Some(mut exchange) = exchange.take() {
                            exchange.fail(error, *bytes_out);
                        }
                    }
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Relayed(_) => false,
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Relayed(relayed) => relayed.size_hint(),
            ProxyBody::Upstream { body, .. } => body.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let ProxyBody::Upstream {
            body,
            exchange,
            bytes_out,
        } = self
        {
            if let Some(mut exchange) = exchange.take() {
                // hyper skips polling bodies that are already at their end (204, HEAD,
                // Content-Length: 0); those still finished cleanly.
                if body.is_end_stream() {
                    exchange.complete(body.take_reusable(), *bytes_out);
                } else {
                    exchange.abandon(*bytes_out);
                }
            }
        }
    }
}
