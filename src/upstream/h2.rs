//! HTTP/2 to workers (`protocol = "h2c"` or `"h2"`): hyper's client, one multiplexed
//! connection per worker per serving thread, shared by every request of that thread to that
//! worker. The pool's `worker_concurrency` caps streams as it caps requests (a slot is taken
//! before a stream opens); the worker's own SETTINGS_MAX_CONCURRENT_STREAMS holds any excess
//! in hyper until a stream closes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::request::Parts;
use http::{header, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;
use tracing::debug;

use super::{connect, UpstreamBody, UpstreamSettings};
use crate::config::WorkerProtocol;
use crate::error::ProxyError;
use crate::pool::{Transport, Worker};

/// PING interval on an HTTP/2 connection to a worker: a worker that vanished without a FIN
/// (a cut network, a killed host) is found within this plus [`PING_TIMEOUT`], not when the
/// next request times out.
const PING_INTERVAL: Duration = Duration::from_secs(10);
/// How long a PING may go unanswered before the connection is dropped.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection's request handle and when a request last used it.
struct H2Conn {
    sender: SendRequest<UpstreamBody>,
    used: Instant,
    /// The [`Transport::id`] it was made with.
    transport: u64,
}

/// One serving thread's HTTP/2 connections, by worker id.
#[derive(Default)]
pub struct H2Conns {
    conns: Mutex<HashMap<u64, H2Conn>>,
    /// One connect at a time per worker: requests that find no connection wait for the one
    /// being opened instead of each opening their own (held only while connecting).
    connecting: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
}

impl H2Conns {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, H2Conn>> {
        // Only handles live here; a panic while holding it leaves them consistent.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The open connection to `worker`, unless `fresh` asks for a new one (after a request
    /// found the pooled one closed); else a new connection, kept for the next request.
    pub async fn sender(
        &self,
        worker: &Worker,
        transport: &Transport,
        settings: &UpstreamSettings,
        fresh: bool,
    ) -> Result<(SendRequest<UpstreamBody>, bool), ProxyError> {
        if !fresh {
            if let Some(open) = self.open(worker.id, transport.id) {
                return Ok((open, true));
            }
        }
        let turn = Arc::clone(
            self.connecting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(worker.id)
                .or_default(),
        );
        let _turn = turn.lock().await;
        // Another request may have opened one while this waited its turn (a request that
        // found the pooled one failing opens its own, replacing it).
        if !fresh {
            if let Some(open) = self.open(worker.id, transport.id) {
                return Ok((open, false));
            }
        }
        let stream = connect(worker, transport, settings).await?;
        if transport.protocol == WorkerProtocol::H2 && !stream.alpn_is_h2() {
            return Err(ProxyError::connect(std::io::Error::other(
                "the worker did not agree to HTTP/2 in its TLS handshake (ALPN)",
            )));
        }
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_INTERVAL)
            .keep_alive_timeout(PING_TIMEOUT)
            .keep_alive_while_idle(true);
        let handshake = builder.handshake(TokioIo::new(stream));
        let deadline = Instant::now() + settings.connect_timeout;
        let (sender, connection) = match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => {
                return Err(ProxyError::connect(std::io::Error::other(format!(
                    "HTTP/2 handshake with the worker failed: {e}"
                ))))
            }
            Err(_) => {
                return Err(ProxyError::connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "HTTP/2 handshake with the worker timed out",
                )))
            }
        };
        let name = worker.name.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(worker = %name, error = %e, "HTTP/2 connection to the worker ended");
            }
        });
        self.lock().insert(
            worker.id,
            H2Conn {
                sender: sender.clone(),
                used: Instant::now(),
                transport: transport.id,
            },
        );
        Ok((sender, false))
    }

    /// The open connection to worker `id` made with `transport`, if any (a closed one, or one
    /// made with a transport a reload replaced, is dropped).
    fn open(&self, id: u64, transport: u64) -> Option<SendRequest<UpstreamBody>> {
        let mut conns = self.lock();
        let conn = conns.get_mut(&id)?;
        if conn.sender.is_closed() || conn.transport != transport {
            conns.remove(&id);
            return None;
        }
        conn.used = Instant::now();
        Some(conn.sender.clone())
    }

    /// Let go of connections no request used for `max_idle` (their workers may be gone) and
    /// of closed ones; a connection closes once its last stream ends.
    pub fn sweep(&self, max_idle: Duration) {
        let now = Instant::now();
        let mut conns = self.lock();
        conns.retain(|_, c| !c.sender.is_closed() && now.duration_since(c.used) < max_idle);
        self.connecting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, turn| conns.contains_key(id) || Arc::strong_count(turn) > 1);
    }

    /// Open connections (for tests and the admin view).
    pub fn count(&self) -> usize {
        self.lock().len()
    }
}

/// Wait until `sender` can open a stream. `reused`: the connection carried requests before
/// (then a closed one calls for a fresh connection, with nothing sent yet).
pub async fn ready(
    sender: &mut SendRequest<UpstreamBody>,
    replayable: bool,
    reused: bool,
) -> Result<(), ProxyError> {
    sender.ready().await.map_err(|e| {
        ProxyError::connection_failed(std::io::Error::other(e), false, replayable, reused)
    })
}

/// Send `request` on a ready `sender` and wait for the response head.
pub async fn send(
    mut sender: SendRequest<UpstreamBody>,
    request: Request<UpstreamBody>,
    replayable: bool,
    reused: bool,
) -> Result<Response<Incoming>, ProxyError> {
    sender.send_request(request).await.map_err(|e| {
        // Whether the worker saw the stream is not known here: like a connection that failed
        // after sending, it goes again only when replayable.
        ProxyError::connection_failed(std::io::Error::other(e), true, replayable, reused)
    })
}

/// The HTTP/2 request for `head` (weir's HTTP/1.1-shaped head for the worker): the Host
/// becomes `:authority` (the worker's address when the request had none), the scheme is the
/// transport's. (TE, hop-by-hop, is gone; the caller puts back `te: trailers`.)
pub fn request(
    head: &Parts,
    body: UpstreamBody,
    scheme: http::uri::Scheme,
    worker: &Worker,
) -> Result<Request<UpstreamBody>, ProxyError> {
    let mut headers = head.headers.clone();
    let host = headers.remove(header::HOST);
    let authority = match &host {
        Some(host) => http::uri::Authority::try_from(host.as_bytes())
            .map_err(|_| ProxyError::bad_request("weir: bad Host\n"))?,
        None => http::uri::Authority::try_from(worker.addr.to_string())
            .map_err(|_| ProxyError::internal("weir: internal error (worker address)\n"))?,
    };
    let path = head
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let uri = Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| ProxyError::bad_request("weir: malformed request target\n"))?;
    let mut request = Request::new(body);
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_2;
    *request.headers_mut() = headers;
    Ok(request)
}
