//! The request path, top to bottom: route -> pick a worker -> rewrite the head -> send -> ask
//! the failure (or a listed status) whether another try may follow, and where -> stream the
//! response back, or tunnel an upgrade.

/// A log line at a level chosen at run time (tracing's macros want it fixed when compiled).
macro_rules! log_at {
    ($level:expr, $($rest:tt)+) => {
        match $level {
            tracing::Level::ERROR => tracing::error!($($rest)+),
            tracing::Level::WARN => tracing::warn!($($rest)+),
            tracing::Level::INFO => tracing::info!($($rest)+),
            _ => tracing::debug!($($rest)+),
        }
    };
}

mod body;
mod buffer;
mod conn;
mod grpc;
mod headers;
mod outcome;
mod relay;
mod sticky;
mod tunnel;

pub use body::ProxyBody;
pub use conn::{coarse_ms, ActivityGuard, ConnContext};
pub use outcome::Outcome;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::config::ServerConfig;
use crate::error::{ProxyError, Report, RetryVerdict};
use crate::http1::PendingUpgrade;
use crate::pool::{InFlightGuard, Pool, Rejection, RetrySettings, RouteQueue, WaitReason, Worker};
use crate::routing::{Rewrite, Route};
use crate::spool::SpoolLimits;
use crate::state::Snapshot;
use crate::telemetry::RejectReason;
use crate::upstream::{
    call, drain_in_background, encode_head, h2, BodyFraming, CallError, ClientBody, Pace,
    UpstreamBody, UpstreamSettings, Upstreams, WorkerBody,
};
use crate::values::HostPort;
use body::Exchange;
use headers::ClientFacts;

/// Set on responses whose request waited for a worker to start, with how long it waited.
pub static X_WEIR_COLD_START: http::HeaderName = http::HeaderName::from_static("x-weir-cold-start");
/// A worker's `X-Accel-Buffering: no` asks weir to relay its response as it comes.
static X_ACCEL_BUFFERING: http::HeaderName = http::HeaderName::from_static("x-accel-buffering");

/// Serve one client request: answered by its listener itself (a redirect to HTTPS), or
/// proxied ([`handle`]); either way with the listener's `Strict-Transport-Security`.
pub fn serve(
    req: Request<ClientBody>,
    cx: Arc<ConnContext>,
) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send {
    use futures_util::future::{ready, Either, FutureExt};
    let Some(edge) = cx.edge.clone() else {
        return Either::Left(handle(req, cx));
    };
    let hsts = edge.hsts.clone();
    let answer = match edge.answer(req.uri(), req.headers().get(header::HOST)) {
        Some(answer) => Either::Right(ready(Ok(answered_at_edge(req, &cx, answer)))),
        None => Either::Left(handle(req, cx)),
    };
    Either::Right(answer.map(move |result| {
        result.map(|mut response| {
            if let Some(hsts) = hsts {
                response
                    .headers_mut()
                    .insert(header::STRICT_TRANSPORT_SECURITY, hsts);
            }
            response
        })
    }))
}

/// A request its listener answered itself: recorded like any other (the unrouted series and
/// the access log), its body read and dropped in the background.
fn answered_at_edge(
    req: Request<ClientBody>,
    cx: &ConnContext,
    answer: Response<std::borrow::Cow<'static, str>>,
) -> Response<ProxyBody> {
    let mut outcome = Outcome::start(&req, cx);
    outcome.route = Some(Arc::clone(&cx.shared.snapshot().unrouted));
    outcome.status = answer.status().as_u16();
    drain_in_background(Some(UpstreamBody::Stream(req.into_body())));
    let (parts, body) = answer.into_parts();
    outcome.finish(body.len() as u64);
    let body = match body {
        std::borrow::Cow::Borrowed(text) => Bytes::from_static(text.as_bytes()),
        std::borrow::Cow::Owned(text) => Bytes::from(text),
    };
    Response::from_parts(parts, ProxyBody::full(body))
}

/// Serve one client request. Never fails: every error becomes a response with a short body and
/// a log line.
///
/// The work before the first await (rewriting the head, routing) runs synchronously here, so the
/// returned future holds only what the exchange needs: it is moved into hyper's slot on every
/// request and kept per connection, and each byte of it costs on both counts.
fn handle(
    req: Request<ClientBody>,
    cx: Arc<ConnContext>,
) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send {
    let activity = cx.begin();
    let h1 = req.version() <= Version::HTTP_11;
    let grpc = grpc::is_grpc(req.headers());
    let mut outcome = Outcome::start(&req, &cx);
    let mut prepared = prepare(req, &cx, &mut outcome, grpc);
    async move {
        let result = match &mut prepared {
            Ok(prepared) => proxy(prepared, &cx, activity, &mut outcome).await,
            // The error moves out; the method and URI stay for the log line below.
            Err(refused) => Err(std::mem::replace(
                &mut refused.error,
                ProxyError::no_route(),
            )),
        };
        match result {
            Ok(Forwarded::Response(mut response, mut exchange)) => {
                outcome.status = response.status().as_u16();
                // Meant for weir alone, as for nginx: the client never sees it.
                let stream_asked = response.headers_mut().remove(&X_ACCEL_BUFFERING);
                // A response that still holds its worker is relayed by its own task, which
                // reads the worker into a spool as fast as it sends, so the worker is released
                // when it is done, not when the client is (and an HTTP/2 stream the client
                // gives no window can be cut alone). Streams stay streams: one piece at a time.
                let plan = exchange.in_flight.is_some().then(|| {
                    // A gRPC call's messages go as they come: it may be a stream.
                    let buffered = prepared.as_ref().is_ok_and(|p| p.buffer_responses)
                        && !grpc
                        && bufferable(response.headers(), stream_asked.as_ref());
                    relay_plan(&cx, buffered)
                });
                match plan {
                    Some(plan) if !h1 || plan.temp.is_some() => {
                        let activity = exchange.activity.take();
                        Ok(response.map(|body| {
                            let body = ProxyBody::Upstream {
                                body,
                                exchange: Some(exchange),
                                bytes_out: 0,
                            };
                            ProxyBody::Relayed(relay::relay(
                                body,
                                activity,
                                Some(outcome),
                                Arc::clone(&cx),
                                plan,
                            ))
                        }))
                    }
                    _ => {
                        exchange.outcome = Some(outcome);
                        Ok(response.map(|body| ProxyBody::Upstream {
                            body,
                            exchange: Some(exchange),
                            bytes_out: 0,
                        }))
                    }
                }
            }
            Ok(Forwarded::Upgraded(response)) => {
                outcome.status = response.status().as_u16();
                outcome.finish(0);
                Ok(response)
            }
            Err(err) => {
                // A body still coming is read and dropped, so the answer is not lost to the
                // reset a connection closed with request bytes unread would send.
                drain_in_background(match &mut prepared {
                    Ok(prepared) => prepared.outgoing.body.take(),
                    Err(refused) => refused.body.take().map(UpstreamBody::Stream),
                });
                let (method, uri) = match &prepared {
                    Ok(prepared) => (
                        &prepared.outgoing.parts.method,
                        &prepared.outgoing.parts.uri,
                    ),
                    Err(refused) => (&refused.method, &refused.uri),
                };
                let report = err.report();
                log_at!(
                    report.level,
                    client = %cx.peer,
                    %method,
                    %uri,
                    status = report.status.as_u16(),
                    stage = report.label,
                    sent = err.sent(),
                    error = %err,
                    "{}",
                    report.message
                );
                outcome.status = report.status.as_u16();
                outcome.error = Some(err.stage());
                outcome.finish(report.body.len() as u64);
                // A gRPC client reads a gRPC status, not an HTTP one.
                let mut response = if grpc {
                    grpc::error_response(&err, &report)
                } else {
                    error_response(&report)
                };
                if report.close && h1 {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok(response)
            }
        }
    }
}

/// Whether a response may be held by weir rather than relayed as it comes: not an event
/// stream, and not one its worker asked to stream (`accel_buffering`, the worker's
/// `X-Accel-Buffering`, is `no`, as behind nginx).
fn bufferable(headers: &HeaderMap, accel_buffering: Option<&HeaderValue>) -> bool {
    let event_stream = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let asked_not_to = accel_buffering.is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no"));
    !event_stream && !asked_not_to
}

/// How a relayed response is held: in a spool of `response_buffer` then a temporary file of
/// `max_response_buffer` when it may be buffered, else one piece at a time.
fn relay_plan(cx: &ConnContext, buffered: bool) -> relay::RelayPlan {
    let snapshot = cx.shared.snapshot();
    let send_timeout = snapshot.config.server.send_timeout.get();
    if buffered {
        relay::RelayPlan {
            limits: SpoolLimits {
                memory: snapshot.upstream.response_buffer,
                file: snapshot.upstream.max_response_buffer,
            },
            temp: Some(Arc::clone(&snapshot.temp_files)),
            send_timeout,
        }
    } else {
        relay::RelayPlan {
            limits: SpoolLimits { memory: 0, file: 0 },
            temp: None,
            send_timeout,
        }
    }
}

/// The short plain-text response for a failure.
fn error_response(report: &Report) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(Bytes::from_static(report.body.as_bytes())));
    *response.status_mut() = report.status;
    if let Some(seconds) = report.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A forwarded request's response: streamed with its bookkeeping, or an upgrade's 101.
// Only ever a return value, never stored: boxing the large variant would cost an allocation
// per request for nothing.
#[allow(clippy::large_enum_variant)]
enum Forwarded {
    Response(Response<WorkerBody>, Exchange),
    Upgraded(Response<ProxyBody>),
}

/// A request rewritten and routed, before its body is looked at.
struct Prepared {
    outgoing: Outgoing,
    /// The client side of an upgrade the request asked for.
    client_upgrade: Option<PendingUpgrade>,
    retry: RetrySettings,
    settings: UpstreamSettings,
    /// The route's `buffer_requests`.
    buffer_requests: bool,
    /// The route's `buffer_responses`.
    buffer_responses: bool,
    /// The route's rewrites, for the response.
    rewrite: Option<Arc<Rewrite>>,
    /// A gRPC call: its body streams (never read ahead), its response too, and its
    /// `grpc-timeout` is the outgoing request's `grpc_deadline`.
    grpc: bool,
    /// The affinity cookie a request without one gets with its response.
    set_cookie: Option<HeaderValue>,
}

/// A request refused before it was sent, with what its log line needs and its body (to be
/// read and dropped). Boxed: rare, and it would otherwise widen every request's future.
struct Refused {
    error: ProxyError,
    method: Method,
    uri: Uri,
    body: Option<ClientBody>,
}

/// The synchronous part of a request: upgrade detection, the head rewrite, the route.
fn prepare(
    mut req: Request<ClientBody>,
    cx: &ConnContext,
    outcome: &mut Outcome,
    grpc: bool,
) -> Result<Prepared, Box<Refused>> {
    let upgrade = req.version() <= Version::HTTP_11 && headers::wants_upgrade(req.headers());
    // The HTTP/1.1 path hands over the connection through this once the 101 is written.
    let client_upgrade = if upgrade {
        req.extensions_mut().remove::<PendingUpgrade>()
    } else {
        None
    };
    let (mut head, body) = req.into_parts();
    let refused = |error, head: Parts, body| {
        Box::new(Refused {
            error,
            method: head.method,
            uri: head.uri,
            body: Some(body),
        })
    };
    let deadline = if grpc {
        grpc::timeout(&head.headers).and_then(|t| Instant::now().checked_add(t))
    } else {
        None
    };
    // `te: trailers` says the client takes trailers: an HTTP/2 worker hears it (gRPC needs
    // it); to an HTTP/1.1 worker, TE is hop-by-hop and goes no further.
    let te_trailers = headers::asks_for_trailers(&head.headers);
    let snapshot = cx.shared.snapshot();
    let routed = rewrite_request_head(&mut head, cx, upgrade, &snapshot.config.server)
        .and_then(|()| lookup(&snapshot, head.headers.get(header::HOST), &head.uri, None));
    let route = match routed {
        Ok(route) => route,
        Err(error) => {
            outcome.route = Some(Arc::clone(&snapshot.unrouted));
            return Err(refused(error, head, body));
        }
    };
    outcome.route = Some(Arc::clone(&route.metrics));
    outcome.route_variant = route.variant;
    if outcome.wants_details() {
        outcome.route_name = Some(Arc::clone(&route.name));
    }
    // The key is what the client sent, whatever a rewrite takes away.
    let (sticky_key, set_cookie) = match route.pool.sticky() {
        Some(sticky) => sticky::key(&sticky, &head.headers, cx),
        None => (None, None),
    };
    // The route is looked up again (the queue, a retry) by what the client sent.
    let routed_as = route.rewrite.as_ref().map(|rewrite| {
        let routed = Box::new(RoutedAs {
            host: head.headers.get(header::HOST).cloned(),
            uri: head.uri.clone(),
        });
        rewrite.request(&mut head);
        routed
    });
    Ok(Prepared {
        outgoing: Outgoing {
            sticky_key,
            te_trailers,
            grpc_deadline: deadline,
            parts: head,
            routed_as,
            encoded: Bytes::new(),
            body: Some(UpstreamBody::Stream(body)),
            chunked: false,
        },
        client_upgrade,
        retry: route.pool.retry(),
        settings: snapshot.upstream,
        buffer_requests: route.buffer_requests(),
        buffer_responses: route.buffer_responses(),
        rewrite: route.rewrite.clone(),
        grpc,
        set_cookie,
    })
}

async fn proxy(
    prepared: &mut Prepared,
    cx: &Arc<ConnContext>,
    mut activity: ActivityGuard,
    outcome: &mut Outcome,
) -> Result<Forwarded, ProxyError> {
    let Prepared {
        outgoing,
        client_upgrade,
        retry,
        settings,
        buffer_requests,
        buffer_responses: _,
        rewrite,
        grpc,
        set_cookie,
    } = prepared;
    let (grpc, deadline) = (*grpc, outgoing.grpc_deadline);
    let bytes_in = outcome.access.as_ref().map(|a| Arc::clone(&a.bytes_in));
    // `prepare` left the client's body in the slot; `proxy` runs once per request, so it is
    // still there (the other arm only keeps this free of a panic).
    let body = match outgoing.body.take() {
        Some(UpstreamBody::Stream(body)) => body,
        _ => {
            return Err(ProxyError::internal(
                "weir: internal error (the request body was taken twice)\n",
            ))
        }
    };
    // A gRPC call's body may be a stream the worker answers as it goes: never read ahead.
    let read_ahead = *buffer_requests && !grpc;
    let body = match body_plan(&outgoing.parts, body, retry, bytes_in, read_ahead) {
        BodyPlan::Ready(body) => body,
        // The body is read before the request takes a slot (boxed: the common future, a
        // request without a body, stays small).
        BodyPlan::ReadAhead(body, counter) => {
            let Some(_turn) = cx.body_turn() else {
                drain_in_background(Some(UpstreamBody::Stream(body)));
                return Err(ProxyError::too_many_bodies());
            };
            // A body the pool may replay (`retries.buffer_body_bytes`) is held in memory up to
            // that size, so reading it ahead never costs it its replay.
            let replay_room = if retry.max_tries >= 2 && is_idempotent(&outgoing.parts.method) {
                retry.buffer_body_bytes
            } else {
                0
            };
            let limits = SpoolLimits {
                memory: settings.request_buffer.max(replay_room),
                file: settings.max_request_buffer,
            };
            let temp = Arc::clone(&cx.shared.snapshot().temp_files);
            Box::pin(buffer::read_ahead(
                body,
                limits,
                temp,
                Pace::of(settings),
                counter,
            ))
            .await?
        }
        // Rare (an idempotent request with a small body): boxed, the common future stays small.
        BodyPlan::Buffer(body, counter) => {
            Box::pin(buffer_body(body, counter, settings.request_body_timeout)).await?
        }
    };
    // Idempotent requests with a body held in memory (or none) can be sent again.
    let replayable =
        is_idempotent(&outgoing.parts.method) && matches!(body, UpstreamBody::Bytes(_));
    outgoing.set_body(body);
    let mut settings = *settings;
    let (mut slot, waited, cold_start) = match deadline {
        None => admit(cx, outgoing, outcome).await?,
        Some(deadline) => {
            match tokio::time::timeout_at(deadline, admit(cx, outgoing, outcome)).await {
                Ok(admitted) => admitted?,
                Err(_) => return Err(ProxyError::timed_out(false)),
            }
        }
    };
    outcome.queue_wait = waited;
    let mut tries = 1;
    let mut fresh = false;
    let (slot, mut response, worker_body) = loop {
        let sent_at = Instant::now();
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(sent_at);
            settings.response_timeout = settings.response_timeout.min(left);
        }
        let worker = Arc::clone(slot.worker());
        let tried = send(
            &cx.upstreams,
            &worker,
            &settings,
            outgoing,
            replayable,
            fresh,
        )
        .await;
        let verdict = match &tried {
            Ok((response, _)) => {
                worker.record_success();
                if let Some(metrics) = &outcome.route {
                    metrics.record_upstream(sent_at.elapsed());
                }
                // A status the pool lists in `retries.on_status`, before any byte of it went
                // to the client: another worker may do better, on the same terms as after a
                // failure.
                let listed = retry.on_status
                    && replayable
                    && retries_on_status(cx, outgoing, response.status, outcome.route_variant);
                if listed {
                    RetryVerdict::OtherWorker
                } else {
                    RetryVerdict::None
                }
            }
            Err(error) => {
                if error.blames_worker() && worker.record_failure() {
                    warn!(worker = %worker.name, error = %error, "worker ejected after consecutive failures");
                }
                error.retry()
            }
        };
        let next = next_try(cx, outgoing, verdict, worker.id, tries, retry, outcome);
        match (next, tried) {
            (NextTry::Stop, Ok((response, worker_body))) => break (slot, response, worker_body),
            (NextTry::Stop, Err(error)) => {
                if error.blames_worker() {
                    // Its revision answered this request, with a failure.
                    outcome.worker = Some(worker);
                }
                return Err(error);
            }
            (NextTry::Fresh, tried) => {
                debug!(worker = %worker.name, error = %Tried(&tried), "pooled connection failed; retrying on a fresh one");
                fresh = true;
            }
            // A discarded response goes with `tried`, its body unread: its connection closes.
            (NextTry::Other(next), tried) => {
                debug!(worker = %worker.name, error = %Tried(&tried), "retrying on another worker");
                slot = next;
                tries += 1;
                fresh = false;
            }
        }
    };
    outcome.worker = Some(Arc::clone(slot.worker()));

    if response.status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade.take() else {
            return Err(ProxyError::bad_response(
                "weir: the worker switched protocols unasked\n",
                true,
            ));
        };
        let Some((worker_stream, early)) = worker_body.into_upgraded() else {
            return Err(ProxyError::bad_response(
                "weir: the worker switched protocols before reading the request\n",
                true,
            ));
        };
        let upgrade_header = response.headers.remove(header::UPGRADE);
        headers::strip_hop_by_hop(&mut response.headers);
        if let Some(protocol) = upgrade_header {
            response.headers.insert(header::UPGRADE, protocol);
        }
        response
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        let idle = cx.shared.snapshot().config.server.tunnel_idle_timeout.get();
        tunnel::spawn(client_upgrade, worker_stream, early, slot, activity, idle);
        return Ok(Forwarded::Upgraded(Response::from_parts(
            response,
            ProxyBody::empty(),
        )));
    }

    // The first body bytes, and whatever else the worker has sent by then, are read before
    // the head goes to the client. A worker that resets, closes or sends a malformed chunk
    // right after its head thus still gets the client a 502 (a stall past read_timeout a 504),
    // not a cut-off 2xx; and a response already whole that fits in response_buffer releases
    // the worker now, so a client that reads slowly holds memory, not a worker slot.
    let mut worker_body = worker_body;
    let limit = settings.response_buffer;
    let whole = if grpc {
        // A call's messages may be far apart (a server stream that waits for news): the head
        // goes at once, and only the call's own deadline bounds the body.
        worker_body.set_read_timeout(Duration::MAX);
        if let Some(deadline) = deadline {
            worker_body.set_deadline(deadline, grpc::deadline_trailers);
        }
        false
    } else {
        std::future::poll_fn(|cx| worker_body.poll_prefetch(cx, limit)).await?
    };
    let in_flight = if whole {
        if let Some(conn) = worker_body.release() {
            let id = slot.worker().id;
            cx.upstreams
                .give_back(id, conn, settings.max_idle_per_worker);
        }
        drop(slot);
        None
    } else {
        Some(slot)
    };

    headers::strip_hop_by_hop(&mut response.headers);
    if let Some(rewrite) = rewrite {
        rewrite.response(&mut response.headers);
    }
    if let Some(cookie) = set_cookie.take() {
        response.headers.append(header::SET_COOKIE, cookie);
    }
    if let Some(waited) = cold_start {
        if let Ok(value) = HeaderValue::from_str(&format!("{}ms", waited.as_millis())) {
            response.headers.insert(X_WEIR_COLD_START.clone(), value);
        }
    }
    activity.response_started();
    let exchange = Exchange {
        in_flight,
        activity: Some(activity),
        upstreams: Arc::clone(&cx.upstreams),
        max_idle: settings.max_idle_per_worker,
        outcome: None,
    };
    Ok(Forwarded::Response(
        Response::from_parts(response, worker_body),
        exchange,
    ))
}

/// The route of a (rewritten) request: its Host header and path.
/// `variant`: the split route's pool the request was given at its first look (`None` there).
fn lookup<'s>(
    snapshot: &'s Snapshot,
    host: Option<&HeaderValue>,
    uri: &Uri,
    variant: Option<u16>,
) -> Result<&'s Route, ProxyError> {
    let host = host.and_then(|h| h.to_str().ok());
    snapshot
        .routes
        .lookup_variant(host, uri.path(), variant)
        .ok_or_else(ProxyError::no_route)
}

/// Take a worker slot for the request's first try: lock-free when one is free, else wait in the
/// route's queue.
async fn admit(
    cx: &ConnContext,
    outgoing: &Outgoing,
    outcome: &Outcome,
) -> Result<(InFlightGuard, Duration, Option<Duration>), ProxyError> {
    let (pool, queue) = {
        let snapshot = cx.shared.snapshot();
        let (host, uri) = outgoing.routed_as();
        let route = lookup(&snapshot, host, uri, Some(outcome.route_variant))?;
        if let Some(slot) = route.pool.try_acquire_keyed(outgoing.sticky_key, None) {
            return Ok((slot, Duration::ZERO, None));
        }
        (Arc::clone(&route.pool), Arc::clone(&route.queue))
    };
    // Waiting is the slow path: boxed, so the common future stays small.
    Box::pin(wait_in_queue(pool, queue, outcome)).await
}

/// Wait in the route's queue for a slot.
async fn wait_in_queue(
    pool: Arc<Pool>,
    queue: Arc<RouteQueue>,
    outcome: &Outcome,
) -> Result<(InFlightGuard, Duration, Option<Duration>), ProxyError> {
    let metrics = outcome.route.as_deref();
    let reject = |reason: RejectReason| {
        if let Some(m) = metrics {
            m.record_rejection(reason);
        }
    };
    match pool.acquire(&queue, None).await {
        Ok(admission) => {
            if let Some(m) = metrics {
                m.record_queue_wait(admission.waited);
            }
            // Waiting with no worker at all means waiting for one to start: a cold start.
            let cold = (admission.reason == Some(WaitReason::NoWorker)).then_some(admission.waited);
            Ok((admission.slot, admission.waited, cold))
        }
        Err(Rejection::QueueFull) => {
            debug!(route = %queue.route, "queue full");
            reject(RejectReason::Full);
            Err(ProxyError::queue_full(queue.retry_after_secs))
        }
        Err(Rejection::QueueTimeout) => {
            reject(RejectReason::Timeout);
            Err(ProxyError::queue_timeout(queue.retry_after_secs))
        }
        Err(Rejection::NoCapacity) => {
            reject(RejectReason::NoCapacity);
            Err(ProxyError::no_capacity(queue.retry_after_secs))
        }
    }
}

/// Where the next try of a request goes.
enum NextTry {
    /// Nowhere: the failure (or the response) stands.
    Stop,
    /// The same worker, on a new connection (the slot is kept).
    Fresh,
    /// Another worker, on this slot.
    Other(InFlightGuard),
}

/// The one place a failure's verdict (or a listed status's) becomes the next try. Another
/// worker only within `max_tries` and the pool's retry budget, and only one with a free slot
/// now: a retry never waits in the queue. The route is looked up again, so a retry sees the
/// pool as it is; a retry is counted in the metrics and the access log.
fn next_try(
    cx: &ConnContext,
    outgoing: &Outgoing,
    verdict: RetryVerdict,
    exclude: u64,
    tries: u32,
    retry: &RetrySettings,
    outcome: &mut Outcome,
) -> NextTry {
    match verdict {
        RetryVerdict::None => NextTry::Stop,
        RetryVerdict::FreshConnection => NextTry::Fresh,
        RetryVerdict::OtherWorker => {
            if tries >= retry.max_tries {
                return NextTry::Stop;
            }
            let snapshot = cx.shared.snapshot();
            let variant = Some(outcome.route_variant);
            let (host, uri) = outgoing.routed_as();
            let Ok(route) = lookup(&snapshot, host, uri, variant) else {
                return NextTry::Stop;
            };
            if !route.pool.try_spend_retry() {
                return NextTry::Stop;
            }
            let Some(slot) = route
                .pool
                .try_acquire_keyed(outgoing.sticky_key, Some(exclude))
            else {
                return NextTry::Stop;
            };
            outcome.retries += 1;
            if let Some(metrics) = &outcome.route {
                metrics.record_retry();
            }
            NextTry::Other(slot)
        }
    }
}

/// A try's failure, or the listed status it was answered with, for a log line.
struct Tried<'a>(&'a Result<(http::response::Parts, WorkerBody), ProxyError>);

impl std::fmt::Display for Tried<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Ok((response, _)) => write!(f, "answered {} (in retries.on_status)", response.status),
            Err(error) => error.fmt(f),
        }
    }
}

/// Whether the request's pool retries a response with `status` on another worker.
fn retries_on_status(
    cx: &ConnContext,
    outgoing: &Outgoing,
    status: StatusCode,
    variant: u16,
) -> bool {
    let snapshot = cx.shared.snapshot();
    let (host, uri) = outgoing.routed_as();
    lookup(&snapshot, host, uri, Some(variant))
        .is_ok_and(|route| route.pool.retries_on_status(status.as_u16()))
}

/// Methods whose repetition has the same effect as one request (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// What to do with the client's body before sending.
enum BodyPlan {
    /// Send as it is: nothing, or streamed.
    Ready(UpstreamBody),
    /// Read it into memory first, so the request can be replayed.
    Buffer(ClientBody, Option<Arc<AtomicU64>>),
    /// Read it before the request takes a worker slot (memory, then a temporary file).
    ReadAhead(ClientBody, Option<Arc<AtomicU64>>),
}

/// The body to send: nothing when the client sent none; read ahead of the worker when the
/// route buffers requests; otherwise buffered when the request is idempotent and its declared
/// length fits the pool's retry buffer (so it can be replayed), else streamed.
fn body_plan(
    head: &Parts,
    body: ClientBody,
    retry: &RetrySettings,
    counter: Option<Arc<AtomicU64>>,
    read_ahead: bool,
) -> BodyPlan {
    if body.is_end_stream() {
        return BodyPlan::Ready(UpstreamBody::empty());
    }
    if read_ahead {
        return BodyPlan::ReadAhead(body, counter);
    }
    let declared = body.size_hint().exact();
    let small = declared.is_some_and(|n| n <= retry.buffer_body_bytes as u64);
    if retry.max_tries < 2 || !small || !is_idempotent(&head.method) {
        return BodyPlan::Ready(match counter {
            Some(counter) => UpstreamBody::Counted(body, counter),
            None => UpstreamBody::Stream(body),
        });
    }
    BodyPlan::Buffer(body, counter)
}

/// Read a small body into memory, within `timeout` (a body this small that takes longer is
/// stalling).
async fn buffer_body(
    body: ClientBody,
    counter: Option<Arc<AtomicU64>>,
    timeout: Duration,
) -> Result<UpstreamBody, ProxyError> {
    let Ok(collected) = tokio::time::timeout(timeout, body.collect()).await else {
        return Err(ProxyError::client_stalled(false));
    };
    match collected {
        Ok(collected) => {
            let bytes = collected.to_bytes();
            if let Some(counter) = counter {
                counter.store(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(UpstreamBody::Bytes(Some(bytes)))
        }
        Err(e) => Err(ProxyError::client_body(&e, false)),
    }
}

/// Turn the client's request head into the one the worker gets: HTTP/1.1, origin-form URI,
/// a Host header, no hop-by-hop headers (but the upgrade handshake when asked), X-Forwarded-*.
/// A request whose Host cannot be trusted is refused first.
fn rewrite_request_head(
    head: &mut Parts,
    cx: &ConnContext,
    upgrade: bool,
    server: &ServerConfig,
) -> Result<(), ProxyError> {
    check_host(head)?;
    check_transfer_coding(&head.headers)?;
    normalize_path(&mut head.uri)?;
    if !server.underscores_in_headers
        && headers::drop_underscored(&mut head.headers)
        && cx.first_underscored_drop()
    {
        warn!(client = %cx.peer, "dropped request header fields whose names have '_' (server.underscores_in_headers = false); logged once per connection");
    }
    if head.uri.authority().is_some() {
        // HTTP/2 and absolute-form requests carry the host in the URI; HTTP/1.1 workers want it
        // in Host.
        let authority = head.uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let host = HeaderValue::from_str(authority)
            .map_err(|_| ProxyError::bad_request("weir: bad authority\n"))?;
        head.headers.insert(header::HOST, host);
        let path = head
            .uri
            .path_and_query()
            .cloned()
            .ok_or_else(|| ProxyError::bad_request("weir: missing path\n"))?;
        head.uri = Uri::from(path);
    }
    if head.version == Version::HTTP_2 {
        join_cookies(&mut head.headers);
    }
    head.version = Version::HTTP_11;

    let upgrade_protocol = if upgrade {
        head.headers.remove(header::UPGRADE)
    } else {
        None
    };
    headers::strip_hop_by_hop(&mut head.headers);
    if let Some(protocol) = upgrade_protocol {
        head.headers.insert(header::UPGRADE, protocol);
        head.headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }

    let facts = ClientFacts {
        peer_ip: &cx.peer_ip,
        trusted: cx.trusted,
        proto: cx.proto,
    };
    let host = head.headers.get(header::HOST).cloned();
    headers::set_forwarded(&mut head.headers, &facts, host.as_ref());
    // Only weir speaks of the client's certificate: one the client wrote itself is dropped.
    let xfcc = &crate::client_cert::X_FORWARDED_CLIENT_CERT;
    match cx.client_cert() {
        Some(cert) => {
            head.headers.insert(xfcc.clone(), cert.clone());
        }
        None => {
            head.headers.remove(xfcc);
        }
    }
    Ok(())
}

/// Resolve dot-segments and merge repeated slashes in the target's path before it is routed,
/// so routing and the worker see the same path; a path that climbs above the root is 400.
fn normalize_path(uri: &mut Uri) -> Result<(), ProxyError> {
    let normal = match crate::values::path::normalize(uri.path()) {
        Ok(None) => return Ok(()),
        Ok(Some(normal)) => normal,
        Err(_) => {
            return Err(ProxyError::bad_request(
                "weir: the request path climbs above the root\n",
            ))
        }
    };
    let target = match uri.query() {
        Some(query) => format!("{normal}?{query}"),
        None => normal,
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query = Some(
        target
            .parse()
            .map_err(|_| ProxyError::bad_request("weir: malformed request target\n"))?,
    );
    *uri = Uri::from_parts(parts)
        .map_err(|_| ProxyError::bad_request("weir: malformed request target\n"))?;
    Ok(())
}

/// The Host rules of RFC 9112 §3.2 and RFC 9113 §8.3.1: an HTTP/1.1 request has exactly one
/// `Host`, any request at most one; its value is `host[:port]`; and when the target carries an
/// authority (absolute-form, or HTTP/2's `:authority`), that is valid too and names the same
/// host and port. Otherwise routing, the worker and `X-Forwarded-Host` could each see a
/// different host (request smuggling, cache poisoning), so the request is refused with 400.
fn check_host(head: &Parts) -> Result<(), ProxyError> {
    let mut fields = head.headers.get_all(header::HOST).iter();
    let field = fields.next();
    if fields.next().is_some() {
        return Err(ProxyError::bad_host("weir: more than one Host header\n"));
    }
    let host = match field {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(HostPort::parse)
                .ok_or_else(|| ProxyError::bad_host("weir: invalid Host header\n"))?,
        ),
        None if head.version == Version::HTTP_11 => {
            return Err(ProxyError::bad_host(
                "weir: an HTTP/1.1 request needs a Host header\n",
            ))
        }
        None => None,
    };
    if let Some(authority) = head.uri.authority() {
        let target = HostPort::parse(authority.as_str()).ok_or_else(|| {
            ProxyError::bad_host("weir: invalid authority in the request target\n")
        })?;
        let default_port = match head.uri.scheme_str() {
            Some("http") => Some(80),
            Some("https") => Some(443),
            _ => None,
        };
        if host.is_some_and(|host| !host.same_as(&target, default_port)) {
            return Err(ProxyError::bad_host(
                "weir: Host disagrees with the request target\n",
            ));
        }
    }
    Ok(())
}

/// A request body's transfer codings must be `chunked` alone: weir decodes the chunks and
/// frames the body afresh for the worker, so any other coding (`gzip, chunked`) would be
/// dropped on the way and the worker would read the bytes as something they are not. hyper
/// has already refused codings that do not end in `chunked` (400).
fn check_transfer_coding(headers: &HeaderMap) -> Result<(), ProxyError> {
    match crate::http1::chunked_alone(headers) {
        Some(false) => Err(ProxyError::unsupported_coding()),
        None | Some(true) => Ok(()),
    }
}

/// HTTP/2 may split `cookie` into several fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for value in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// A request ready for a worker: its head (kept for routing a retry) with the bytes it encodes
/// to (encoded once, so retries and replays resend them without copying the header map), and
/// its body (`None` while a try holds it).
struct Outgoing {
    parts: Parts,
    /// The request's affinity key (`sticky`), if its pool has one and the request carries it.
    sticky_key: Option<u64>,
    /// The client sent `te: trailers`.
    te_trailers: bool,
    /// A gRPC call's deadline (its `grpc-timeout`), passed on as what is left of it.
    grpc_deadline: Option<Instant>,
    /// The Host and target the client sent, when the route rewrote them.
    routed_as: Option<Box<RoutedAs>>,
    encoded: Bytes,
    body: Option<UpstreamBody>,
    chunked: bool,
}

/// What a rewritten request was routed by.
struct RoutedAs {
    host: Option<HeaderValue>,
    uri: Uri,
}

impl Outgoing {
    /// The Host and target the request is routed by: the client's.
    fn routed_as(&self) -> (Option<&HeaderValue>, &Uri) {
        match &self.routed_as {
            Some(routed) => (routed.host.as_ref(), &routed.uri),
            None => (self.parts.headers.get(header::HOST), &self.parts.uri),
        }
    }

    /// Set the body to send and encode the head with the framing that body needs.
    fn set_body(&mut self, body: UpstreamBody) {
        let known = body.size_hint().exact();
        let framing = BodyFraming::choose(
            &self.parts.method,
            known,
            self.parts.headers.contains_key(header::CONTENT_LENGTH),
        );
        self.encoded = encode_head(&self.parts, framing);
        self.chunked = framing == BodyFraming::Chunked;
        self.body = Some(body);
    }
}

/// One try of the request on `worker`: a pooled connection if one is alive (unless `fresh`),
/// else a new one, then the response head until `response_timeout`. When the failure allows
/// another try (and after a response, for a replayable request, in case its status is
/// retried), the body is put back in `outgoing`: handed back unsent, or the in-memory copy.
async fn send(
    upstreams: &Upstreams,
    worker: &Worker,
    settings: &UpstreamSettings,
    outgoing: &mut Outgoing,
    replayable: bool,
    fresh: bool,
) -> Result<(http::response::Parts, WorkerBody), ProxyError> {
    let deadline = Instant::now() + settings.response_timeout;
    let transport = worker.transport();
    if transport.protocol.is_h2() {
        if outgoing.parts.headers.contains_key(header::UPGRADE) {
            return Err(ProxyError::bad_request(
                "weir: this route's workers speak HTTP/2, which has no Upgrade (WebSocket needs protocol = \"http1\")\n",
            ));
        }
        return Box::pin(send_h2(
            upstreams, worker, &transport, settings, outgoing, replayable, fresh, deadline,
        ))
        .await;
    }
    let conn = upstreams
        .checkout(worker, &transport, settings, fresh)
        .await?;
    let Some(body) = outgoing.body.take() else {
        // Only a try that kept the body can leave it out; nothing to send.
        return Err(ProxyError::internal(
            "weir: internal error (the request body was already sent)\n",
        ));
    };
    // A body held in memory stays at hand for another try (a reference count, no copy).
    let replay = body.replay_copy();
    let mut called = call(
        conn,
        outgoing.encoded.clone(),
        body,
        outgoing.chunked,
        &outgoing.parts.method,
        replayable,
        Pace::of(settings),
    );
    match tokio::time::timeout_at(deadline, &mut called).await {
        Ok(Ok(mut response)) => {
            if replayable {
                outgoing.body = replay;
            }
            response.1.set_read_timeout(settings.read_timeout);
            Ok(response)
        }
        Ok(Err(CallError { error, body })) => {
            if error.retry() != RetryVerdict::None {
                outgoing.body = body.or(replay);
            }
            Err(error)
        }
        Err(_) => Err(ProxyError::timed_out(called.sent())),
    }
}

/// [`send`] to an HTTP/2 worker: a stream on the thread's connection to it (opened first when
/// there is none), the same deadline for the response head, the same hand-back of the body.
#[allow(clippy::too_many_arguments)]
async fn send_h2(
    upstreams: &Upstreams,
    worker: &Worker,
    transport: &crate::pool::Transport,
    settings: &UpstreamSettings,
    outgoing: &mut Outgoing,
    replayable: bool,
    fresh: bool,
    deadline: Instant,
) -> Result<(http::response::Parts, WorkerBody), ProxyError> {
    let (mut sender, reused) = upstreams
        .h2
        .sender(worker, transport, settings, fresh)
        .await?;
    match tokio::time::timeout_at(deadline, h2::ready(&mut sender, replayable, reused)).await {
        Ok(ready) => ready?,
        Err(_) => return Err(ProxyError::timed_out(false)),
    }
    let Some(body) = outgoing.body.take() else {
        return Err(ProxyError::internal(
            "weir: internal error (the request body was already sent)\n",
        ));
    };
    let replay = body.replay_copy();
    let mut request = h2::request(&outgoing.parts, body, transport.scheme(), worker)?;
    if outgoing.te_trailers {
        request
            .headers_mut()
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(deadline) = outgoing.grpc_deadline {
        // The worker gets what is left after the wait in weir's queue, not the whole budget.
        grpc::pass_on_timeout(request.headers_mut(), deadline);
    }
    match tokio::time::timeout_at(deadline, h2::send(sender, request, replayable, reused)).await {
        Ok(Ok(response)) => {
            if replayable {
                outgoing.body = replay;
            }
            let (parts, body) = response.into_parts();
            let mut body = WorkerBody::from_h2(body);
            body.set_read_timeout(settings.read_timeout);
            Ok((parts, body))
        }
        Ok(Err(error)) => {
            if error.retry() != RetryVerdict::None && replayable {
                outgoing.body = replay;
            }
            Err(error)
        }
        Err(_) => Err(ProxyError::timed_out(true)),
    }
}
