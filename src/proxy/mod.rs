//! The request path, top to bottom: route -> pick a worker -> rewrite the head -> send (with one
//! retry on a stale pooled connection) -> stream the response back, or tunnel an upgrade.

mod body;
mod conn;
mod headers;
mod outcome;
mod tunnel;

pub use body::ProxyBody;
pub use conn::{ActivityGuard, ConnContext};
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
use hyper::body::{Body, Incoming};
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::error::ProxyError;
use crate::pool::{InFlightGuard, Pool, Rejection, RetrySettings, RouteQueue, WaitReason, Worker};
use crate::routing::Route;
use crate::state::Snapshot;
use crate::telemetry::RejectReason;
use crate::upstream::{
    call, encode_head, BodyFraming, CallError, CallFailure, UpstreamBody, UpstreamSettings,
    Upstreams, WorkerBody, WorkerConn,
};
use body::Exchange;
use headers::ClientFacts;

/// Set on responses whose request waited for a worker to start, with how long it waited.
pub static X_WEIR_COLD_START: http::HeaderName = http::HeaderName::from_static("x-weir-cold-start");

/// Serve one client request. Never fails: every error becomes a response with a short body and
/// a log line.
///
/// The work before the first await (rewriting the head, routing) runs synchronously here, so the
/// returned future holds only what the exchange needs: it is moved into hyper's slot on every
/// request and kept per connection, and each byte of it costs on both counts.
pub fn handle(
    req: Request<Incoming>,
    cx: Arc<ConnContext>,
) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> + Send {
    let activity = cx.begin();
    let mut outcome = Outcome::start(&req, &cx);
    let mut prepared = prepare(req, &cx, &mut outcome);
    async move {
        let result = match &mut prepared {
            Ok(prepared) => proxy(prepared, &cx, activity, &mut outcome).await,
            // The error moves out; the method and URI stay for the log line below.
            Err(refused) => Err(std::mem::replace(&mut refused.error, ProxyError::NoRoute)),
        };
        match result {
            Ok(Forwarded::Response(response, mut exchange)) => {
                outcome.status = response.status().as_u16();
                exchange.outcome = Some(outcome);
                Ok(response.map(|body| ProxyBody::Upstream {
                    body,
                    exchange: Some(exchange),
                    bytes_out: 0,
                }))
            }
            Ok(Forwarded::Upgraded(response)) => {
                outcome.status = response.status().as_u16();
                outcome.finish(0);
                Ok(response)
            }
            Err(err) => {
                let (method, uri) = match &prepared {
                    Ok(prepared) => (
                        &prepared.outgoing.parts.method,
                        &prepared.outgoing.parts.uri,
                    ),
                    Err(refused) => (&refused.method, &refused.uri),
                };
                let status = err.status();
                if status.is_server_error() {
                    warn!(client = %cx.peer, %method, %uri, status = status.as_u16(), error = %err, "request failed");
                } else {
                    debug!(client = %cx.peer, %method, %uri, status = status.as_u16(), error = %err, "request refused");
                }
                let response = error_response(&err);
                outcome.status = status.as_u16();
                outcome.finish(err.body().len() as u64);
                Ok(response)
            }
        }
    }
}

/// The short plain-text response for an error.
pub fn error_response(err: &ProxyError) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(Bytes::from_static(err.body().as_bytes())));
    *response.status_mut() = err.status();
    if let Some(seconds) = err.retry_after() {
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
    client_upgrade: Option<OnUpgrade>,
    retry: RetrySettings,
    settings: UpstreamSettings,
}

/// A request refused before it was sent, with what its log line needs. Boxed: rare, and it
/// would otherwise widen every request's future.
struct Refused {
    error: ProxyError,
    method: Method,
    uri: Uri,
}

/// The synchronous part of a request: upgrade detection, the head rewrite, the route.
fn prepare(
    mut req: Request<Incoming>,
    cx: &ConnContext,
    outcome: &mut Outcome,
) -> Result<Prepared, Box<Refused>> {
    let upgrade = req.version() <= Version::HTTP_11 && headers::wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut head, body) = req.into_parts();
    let refused = |error, head: Parts| {
        Box::new(Refused {
            error,
            method: head.method,
            uri: head.uri,
        })
    };
    let snapshot = cx.shared.snapshot();
    let routed = rewrite_request_head(&mut head, cx, upgrade)
        .and_then(|()| lookup(&snapshot, &head.headers, &head.uri));
    let route = match routed {
        Ok(route) => route,
        Err(error) => {
            outcome.route = Some(Arc::clone(&snapshot.unrouted));
            return Err(refused(error, head));
        }
    };
    outcome.route = Some(Arc::clone(&route.metrics));
    if outcome.wants_details() {
        outcome.route_name = Some(Arc::clone(&route.name));
    }
    Ok(Prepared {
        outgoing: Outgoing {
            parts: head,
            encoded: Bytes::new(),
            body: Some(UpstreamBody::Stream(body)),
            chunked: false,
        },
        client_upgrade,
        retry: route.pool.retry(),
        settings: snapshot.upstream,
    })
}

async fn proxy(
    prepared: &mut Prepared,
    cx: &Arc<ConnContext>,
    activity: ActivityGuard,
    outcome: &mut Outcome,
) -> Result<Forwarded, ProxyError> {
    let Prepared {
        outgoing,
        client_upgrade,
        retry,
        settings,
    } = prepared;
    let bytes_in = outcome.access.as_ref().map(|a| Arc::clone(&a.bytes_in));
    // `prepare` left the client's body in the slot; `proxy` runs once per request, so it is
    // still there (the other arm only keeps this free of a panic).
    let body = match outgoing.body.take() {
        Some(UpstreamBody::Stream(body)) => body,
        _ => {
            return Err(ProxyError::BadRequest(
                "weir: the request body ended early\n",
            ))
        }
    };
    let body = match body_plan(&outgoing.parts, body, retry, bytes_in) {
        BodyPlan::Ready(body) => body,
        // Rare (an idempotent request with a small body): boxed, the common future stays small.
        BodyPlan::Buffer(body, counter) => Box::pin(buffer_body(body, counter)).await?,
    };
    // Idempotent requests with a body held in memory (or none) can be sent again.
    let replayable =
        is_idempotent(&outgoing.parts.method) && matches!(body, UpstreamBody::Bytes(_));
    outgoing.set_body(body);
    let settings = *settings;
    let mut exclude = None;
    let mut tries = 0;
    let mut last_error = None;
    let mut cold_start = None;
    let (slot, mut response, worker_body) = loop {
        tries += 1;
        let Some((slot, waited, cold)) = admit(cx, &outgoing.parts, exclude, outcome).await? else {
            // No other worker is free for a retry: the first failure stands.
            return Err(last_error.unwrap_or(ProxyError::NoRoute));
        };
        outcome.queue_wait += waited;
        cold_start = cold_start.or(cold);
        let sent_at = Instant::now();
        let worker = Arc::clone(slot.worker());
        match send(&cx.upstreams, &worker, &settings, outgoing, replayable).await {
            Ok((response, worker_body)) => {
                worker.record_success();
                if let Some(metrics) = &outcome.route {
                    metrics.record_upstream(sent_at.elapsed());
                }
                if outcome.wants_details() {
                    outcome.worker = Some(Arc::clone(&worker));
                }
                break (slot, response, worker_body);
            }
            Err(failure) => {
                if failure.passive && worker.record_failure() {
                    warn!(worker = %worker.name, error = %failure.error, "worker ejected after consecutive failures");
                }
                drop(slot);
                if !failure.retryable
                    || tries >= retry.max_tries
                    || !spend_retry(cx, &outgoing.parts)
                {
                    return Err(failure.error);
                }
                debug!(worker = %worker.name, error = %failure.error, "retrying on another worker");
                outcome.retries += 1;
                if let Some(metrics) = &outcome.route {
                    metrics.record_retry();
                }
                exclude = Some(worker.id);
                last_error = Some(failure.error);
            }
        }
    };

    if response.status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade.take() else {
            return Err(ProxyError::BadWorkerResponse(
                "weir: the worker switched protocols unasked\n",
            ));
        };
        let Some((worker_stream, early)) = worker_body.into_upgraded() else {
            return Err(ProxyError::BadWorkerResponse(
                "weir: the worker switched protocols before reading the request\n",
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
        tunnel::spawn(client_upgrade, worker_stream, early, slot, activity);
        return Ok(Forwarded::Upgraded(Response::from_parts(
            response,
            ProxyBody::empty(),
        )));
    }

    headers::strip_hop_by_hop(&mut response.headers);
    if let Some(waited) = cold_start {
        if let Ok(value) = HeaderValue::from_str(&format!("{}ms", waited.as_millis())) {
            response.headers.insert(X_WEIR_COLD_START.clone(), value);
        }
    }
    let exchange = Exchange {
        in_flight: slot,
        activity,
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
fn lookup<'s>(
    snapshot: &'s Snapshot,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<&'s Route, ProxyError> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    snapshot
        .routes
        .lookup(host, uri.path())
        .ok_or(ProxyError::NoRoute)
}

/// Take a worker slot for the request: lock-free when one is free, else wait in the route's
/// queue. A retry (`exclude` set) never waits: it goes to another worker with a free slot now,
/// or not at all. The route is looked up again each time, so a retry sees the pool as it is.
async fn admit(
    cx: &ConnContext,
    head: &Parts,
    exclude: Option<u64>,
    outcome: &Outcome,
) -> Result<Option<(InFlightGuard, Duration, Option<Duration>)>, ProxyError> {
    let (pool, queue) = {
        let snapshot = cx.shared.snapshot();
        let route = lookup(&snapshot, &head.headers, &head.uri)?;
        if let Some(slot) = route.pool.try_acquire(exclude) {
            return Ok(Some((slot, Duration::ZERO, None)));
        }
        if exclude.is_some() {
            return Ok(None);
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
) -> Result<Option<(InFlightGuard, Duration, Option<Duration>)>, ProxyError> {
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
            Ok(Some((admission.slot, admission.waited, cold)))
        }
        Err(Rejection::QueueFull) => {
            debug!(route = %queue.route, "queue full");
            reject(RejectReason::Full);
            Err(ProxyError::QueueFull {
                retry_after: queue.retry_after_secs,
            })
        }
        Err(Rejection::QueueTimeout) => {
            reject(RejectReason::Timeout);
            Err(ProxyError::QueueTimeout {
                retry_after: queue.retry_after_secs,
            })
        }
        Err(Rejection::NoCapacity) => {
            reject(RejectReason::NoCapacity);
            Err(ProxyError::NoCapacity {
                retry_after: queue.retry_after_secs,
            })
        }
    }
}

/// Spend a retry from the budget of the request's pool.
fn spend_retry(cx: &ConnContext, head: &Parts) -> bool {
    let snapshot = cx.shared.snapshot();
    match lookup(&snapshot, &head.headers, &head.uri) {
        Ok(route) => route.pool.try_spend_retry(),
        Err(_) => false,
    }
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
    Buffer(Incoming, Option<Arc<AtomicU64>>),
}

/// The body to send: nothing when the client sent none; buffered when the request is
/// idempotent and its declared length fits the pool's retry buffer (so it can be replayed);
/// otherwise streamed.
fn body_plan(
    head: &Parts,
    body: Incoming,
    retry: &RetrySettings,
    counter: Option<Arc<AtomicU64>>,
) -> BodyPlan {
    if body.is_end_stream() {
        return BodyPlan::Ready(UpstreamBody::empty());
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

/// Read a small body into memory.
async fn buffer_body(
    body: Incoming,
    counter: Option<Arc<AtomicU64>>,
) -> Result<UpstreamBody, ProxyError> {
    match body.collect().await {
        Ok(collected) => {
            let bytes = collected.to_bytes();
            if let Some(counter) = counter {
                counter.store(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(UpstreamBody::Bytes(Some(bytes)))
        }
        Err(_) => Err(ProxyError::BadRequest(
            "weir: the request body ended early\n",
        )),
    }
}

/// Turn the client's request head into the one the worker gets: HTTP/1.1, origin-form URI,
/// a Host header, no hop-by-hop headers (but the upgrade handshake when asked), X-Forwarded-*.
fn rewrite_request_head(
    head: &mut Parts,
    cx: &ConnContext,
    upgrade: bool,
) -> Result<(), ProxyError> {
    if head.uri.authority().is_some() {
        // HTTP/2 and absolute-form requests carry the host in the URI; HTTP/1.1 workers want it
        // in Host.
        let authority = head.uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let host = HeaderValue::from_str(authority)
            .map_err(|_| ProxyError::BadRequest("weir: bad authority\n"))?;
        head.headers.insert(header::HOST, host);
        let path = head
            .uri
            .path_and_query()
            .cloned()
            .ok_or(ProxyError::BadRequest("weir: missing path\n"))?;
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
    Ok(())
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
    encoded: Bytes,
    body: Option<UpstreamBody>,
    chunked: bool,
}

impl Outgoing {
    /// Set the body to send and encode the head with the framing that body needs.
    fn set_body(&mut self, body: UpstreamBody) {
        let known = match &body {
            UpstreamBody::Bytes(bytes) => Some(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            UpstreamBody::Stream(b) | UpstreamBody::Counted(b, _) => b.size_hint().exact(),
        };
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

/// A try that did not get response headers.
struct SendFailure {
    error: ProxyError,
    /// The worker is to blame (connect failure, reset before response headers).
    passive: bool,
    /// The request may go to another worker (never written, or replayable): its body is back
    /// in the `Outgoing`.
    retryable: bool,
}

impl SendFailure {
    /// No connection to the worker could be had: its fault, and the request was never sent.
    fn no_connection(error: ProxyError) -> Self {
        SendFailure {
            error,
            passive: true,
            retryable: true,
        }
    }

    /// A failed try; a connection failure counts against the worker only on a `fresh`
    /// connection (a pooled one may just have gone stale).
    fn after(failure: AttemptFailure, fresh: bool) -> Self {
        SendFailure {
            passive: failure.worker_fault || (failure.connection_failed && fresh),
            retryable: failure.resendable,
            error: failure.error,
        }
    }
}

/// Send the request to `worker` and wait for response headers until `response_timeout`.
/// A request that fails on a pooled connection before any response byte is sent once more on
/// a fresh connection to the same worker when that is safe (never written, or replayable): a
/// worker closing an idle keep-alive connection is not a worker failure.
async fn send(
    upstreams: &Upstreams,
    worker: &Worker,
    settings: &UpstreamSettings,
    outgoing: &mut Outgoing,
    replayable: bool,
) -> Result<(http::response::Parts, WorkerBody), SendFailure> {
    let deadline = Instant::now() + settings.response_timeout;
    let conn = match upstreams.checkout(worker, settings).await {
        Ok(conn) => conn,
        Err(error) => return Err(SendFailure::no_connection(error)),
    };
    let reused = conn.reused;
    let failure = match attempt(conn, outgoing, replayable, deadline).await {
        Ok(response) => return Ok(response),
        Err(failure) => failure,
    };
    if !(reused && failure.connection_failed && failure.resendable) {
        // A fresh connection failing is the worker's fault; a pooled one may just have gone
        // stale, so it is not held against the worker.
        return Err(SendFailure::after(failure, !reused));
    }
    debug!(worker = %worker.name, error = %failure.error, "pooled connection failed; retrying on a fresh one");
    // Rare: boxed, so the common path's future stays small.
    Box::pin(send_on_fresh(
        upstreams, worker, settings, outgoing, replayable, deadline,
    ))
    .await
}

/// The second try of [`send`], on a new connection.
async fn send_on_fresh(
    upstreams: &Upstreams,
    worker: &Worker,
    settings: &UpstreamSettings,
    outgoing: &mut Outgoing,
    replayable: bool,
    deadline: Instant,
) -> Result<(http::response::Parts, WorkerBody), SendFailure> {
    let fresh = match upstreams.connect(worker, settings).await {
        Ok(conn) => conn,
        Err(error) => return Err(SendFailure::no_connection(error)),
    };
    attempt(fresh, outgoing, replayable, deadline)
        .await
        .map_err(|failure| SendFailure::after(failure, true))
}

/// Why one try on one connection failed.
struct AttemptFailure {
    error: ProxyError,
    /// Writing or reading the connection failed (which a stale pooled connection also does).
    connection_failed: bool,
    /// The worker certainly misbehaved (an unparseable response).
    worker_fault: bool,
    /// The request can still be sent (never written, or replayable): its body is back in the
    /// `Outgoing`.
    resendable: bool,
}

/// One try of `outgoing` on `conn`, up to `deadline` for the response head.
async fn attempt(
    conn: WorkerConn,
    outgoing: &mut Outgoing,
    replayable: bool,
    deadline: Instant,
) -> Result<(http::response::Parts, WorkerBody), AttemptFailure> {
    let Some(body) = outgoing.body.take() else {
        // Only a try that kept the body can leave it out; nothing to send.
        return Err(AttemptFailure {
            error: ProxyError::BadRequest("weir: the request body ended early\n"),
            connection_failed: false,
            worker_fault: false,
            resendable: false,
        });
    };
    let replay = if replayable { body.replay_copy() } else { None };
    let called = tokio::time::timeout_at(
        deadline,
        call(
            conn,
            outgoing.encoded.clone(),
            body,
            outgoing.chunked,
            &outgoing.parts.method,
        ),
    );
    let CallError { failure, body } = match called.await {
        Ok(Ok(response)) => return Ok(response),
        Ok(Err(e)) => e,
        Err(_) => {
            return Err(AttemptFailure {
                error: ProxyError::ResponseTimeout,
                connection_failed: false,
                worker_fault: false,
                resendable: false,
            })
        }
    };
    let (error, connection_failed, worker_fault) = match failure {
        CallFailure::Io(e) => (ProxyError::Upstream(e), true, false),
        CallFailure::Decode(e) => (
            ProxyError::BadWorkerResponse(e.client_message()),
            false,
            true,
        ),
        CallFailure::ClientBody => (
            ProxyError::BadRequest("weir: the request body ended early\n"),
            false,
            false,
        ),
    };
    if connection_failed {
        outgoing.body = body.or(replay);
    }
    Err(AttemptFailure {
        error,
        connection_failed,
        worker_fault,
        resendable: outgoing.body.is_some(),
    })
}
