//! The request path, top to bottom: route -> pick a worker -> rewrite the head -> send (with one
//! retry on a stale pooled connection) -> stream the response back, or tunnel an upgrade.

mod body;
mod conn;
mod headers;
mod tunnel;

pub use body::ProxyBody;
pub use conn::{ActivityGuard, ConnContext};
pub use headers::Cidr;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::error::ProxyError;
use crate::pool::Worker;
use crate::upstream::{UpstreamBody, UpstreamSettings, Upstreams};
use body::Exchange;
use headers::ClientFacts;

/// Serve one client request. Never fails: every error becomes a response with a short body and
/// a log line.
pub async fn handle(
    req: Request<Incoming>,
    cx: Arc<ConnContext>,
) -> Result<Response<ProxyBody>, Infallible> {
    let activity = cx.begin();
    // Kept only for the log line of a failed request; both clones are reference-count bumps.
    let method = req.method().clone();
    let uri = req.uri().clone();
    match forward(req, &cx, activity).await {
        Ok(response) => Ok(response),
        Err(err) => {
            let status = err.status();
            if status.is_server_error() {
                warn!(client = %cx.peer, %method, %uri, status = status.as_u16(), error = %err, "request failed");
            } else {
                debug!(client = %cx.peer, %method, %uri, status = status.as_u16(), error = %err, "request refused");
            }
            Ok(error_response(&err))
        }
    }
}

/// The short plain-text response for an error.
pub fn error_response(err: &ProxyError) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(Bytes::from_static(err.body().as_bytes())));
    *response.status_mut() = err.status();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn forward(
    mut req: Request<Incoming>,
    cx: &Arc<ConnContext>,
    activity: ActivityGuard,
) -> Result<Response<ProxyBody>, ProxyError> {
    let upgrade = req.version() <= Version::HTTP_11 && headers::wants_upgrade(req.headers());

    // Route and pick under the snapshot guard, which must not live across an await.
    let (in_flight, settings) = {
        let snapshot = cx.shared.snapshot();
        let host = request_host(&req);
        let route = snapshot
            .routes
            .lookup(host, req.uri().path())
            .ok_or(ProxyError::NoRoute)?;
        let worker = route.pool.pick().ok_or(ProxyError::NoWorker)?;
        (worker.begin_request(), snapshot.upstream)
    };

    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut head, body) = req.into_parts();
    rewrite_request_head(&mut head, cx, upgrade)?;
    // A body already at its end is sent as nothing, which makes the request replayable.
    let body: UpstreamBody = if body.is_end_stream() {
        Either::Right(Empty::new())
    } else {
        Either::Left(body)
    };
    let replayable = !upgrade && matches!(body, Either::Right(_));

    let (mut response, sender) = send(
        &cx.upstreams,
        in_flight.worker(),
        &settings,
        head,
        body,
        replayable,
    )
    .await?;

    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            return Err(ProxyError::BadRequest(
                "weir: the worker switched protocols unasked\n",
            ));
        };
        let upgrade_header = response.headers_mut().remove(header::UPGRADE);
        headers::strip_hop_by_hop(response.headers_mut());
        if let Some(protocol) = upgrade_header {
            response.headers_mut().insert(header::UPGRADE, protocol);
        }
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        let worker_upgrade = hyper::upgrade::on(&mut response);
        tunnel::spawn(client_upgrade, worker_upgrade, in_flight, activity);
        return Ok(response.map(|_| ProxyBody::empty()));
    }

    headers::strip_hop_by_hop(response.headers_mut());
    let exchange = Exchange {
        in_flight,
        activity,
        conn: Some(sender),
        upstreams: Arc::clone(&cx.upstreams),
        max_idle: settings.max_idle_per_worker,
    };
    Ok(response.map(|body| ProxyBody::Upstream {
        body,
        exchange: Some(exchange),
    }))
}

/// The host the client asked for: the URI's authority (HTTP/2, absolute-form) or `Host`.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    match req.uri().authority() {
        Some(authority) => Some(authority.as_str()),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok()),
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

/// What is needed to send a bodiless request again.
struct ReplayHead {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl ReplayHead {
    fn of(head: &Parts) -> Self {
        ReplayHead {
            method: head.method.clone(),
            uri: head.uri.clone(),
            headers: head.headers.clone(),
        }
    }

    fn into_request(self) -> Request<UpstreamBody> {
        let mut req = Request::new(Either::Right(Empty::new()));
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.headers_mut() = self.headers;
        req
    }
}

/// Send the request and wait for response headers until `response_timeout`. A request that
/// fails on a pooled connection before any response byte is sent once more on a fresh
/// connection when that is safe: it was never written, or it has no body to lose.
async fn send(
    upstreams: &Upstreams,
    worker: &Worker,
    settings: &UpstreamSettings,
    head: Parts,
    body: UpstreamBody,
    replayable: bool,
) -> Result<(Response<Incoming>, SendRequest<UpstreamBody>), ProxyError> {
    let deadline = Instant::now() + settings.response_timeout;
    let mut conn = upstreams.checkout(worker, settings).await?;
    // A pooled connection the worker closed while idle fails only once written to; keep what
    // it takes to send a bodiless request again.
    let replay = (conn.reused && replayable).then(|| ReplayHead::of(&head));
    let first = tokio::time::timeout_at(
        deadline,
        conn.sender
            .try_send_request(Request::from_parts(head, body)),
    )
    .await
    .map_err(|_| ProxyError::ResponseTimeout)?;
    let mut failure = match first {
        Ok(response) => return Ok((response, conn.sender)),
        Err(failure) => failure,
    };
    let retry = match failure.take_message() {
        Some(unsent) => Some(unsent),
        None => replay.map(ReplayHead::into_request),
    };
    let Some(retry) = retry else {
        return Err(ProxyError::Upstream(failure.into_error()));
    };
    debug!(worker = %worker.name, error = %failure.error(), "retrying on a fresh connection");
    let mut fresh = upstreams.connect(worker, settings).await?;
    match tokio::time::timeout_at(deadline, fresh.sender.send_request(retry)).await {
        Ok(Ok(response)) => Ok((response, fresh.sender)),
        Ok(Err(e)) => Err(ProxyError::Upstream(e)),
        Err(_) => Err(ProxyError::ResponseTimeout),
    }
}
