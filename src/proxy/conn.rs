//! Per-client-connection context shared by the requests of one connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use http::HeaderValue;

use crate::limit::ConnectionPermit;
use crate::state::Shared;
use crate::upstream::Upstreams;

/// What every request on one client connection shares.
pub struct ConnContext {
    /// The live config snapshot.
    pub shared: Arc<Shared>,
    /// The serving thread's worker connections.
    pub upstreams: Arc<Upstreams>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's IP as a header value, rendered once per connection.
    pub peer_ip: HeaderValue,
    /// Whether the client is a trusted proxy.
    pub trusted: bool,
    /// "https" on TLS listeners, "http" otherwise.
    pub proto: &'static str,
    /// What its listener answers itself and adds to responses, if anything.
    pub edge: Option<Arc<crate::edge::ListenerEdge>>,
    /// The client certificate its TLS handshake verified, as `x-forwarded-client-cert`.
    client_cert: std::sync::OnceLock<HeaderValue>,
    active: AtomicU32,
    requests: AtomicU64,
    /// Responses handed to the client side that are not waiting on their worker: the client
    /// owes them a read (HTTP/1.1 socket space, HTTP/2 window).
    owed: AtomicU32,
    /// Polls of this connection's response bodies; a send watchdog compares it between ticks.
    body_polls: AtomicU64,
    /// HTTP/2 streams whose relay cut them for taking nothing within `send_timeout`.
    streams_cut: AtomicU64,
    /// Requests of this connection whose bodies weir is reading before they take a slot.
    bodies_waiting: AtomicU32,
    /// When the connection last had no request in progress (ms on [`coarse_ms`]'s clock),
    /// so the longest idle give way first at the connection cap.
    idle_since: AtomicU64,
    /// Asked to close if idle: the proxy is at its connection cap.
    give_way: tokio::sync::Notify,
    /// Response-body bytes handed to the client side; the watchdog measures the client's
    /// reading rate by it.
    bytes_taken: AtomicU64,
    /// Whether a header name with `_` was already dropped (and logged) on this connection.
    dropped_underscored: AtomicBool,
    /// Holds one slot of `server.max_connections` until the connection and anything it
    /// spawned (e.g. a WebSocket tunnel) are gone.
    _permit: ConnectionPermit,
}

impl ConnContext {
    /// Context for a connection from `peer`.
    pub fn new(
        shared: Arc<Shared>,
        upstreams: Arc<Upstreams>,
        peer: SocketAddr,
        trusted: bool,
        tls: bool,
        edge: Option<Arc<crate::edge::ListenerEdge>>,
        permit: ConnectionPermit,
    ) -> Arc<Self> {
        let ip = peer.ip().to_canonical();
        let peer_ip = HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Arc::new(ConnContext {
            shared,
            upstreams,
            peer,
            peer_ip,
            trusted,
            proto: if tls { "https" } else { "http" },
            edge,
            client_cert: std::sync::OnceLock::new(),
            active: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            owed: AtomicU32::new(0),
            body_polls: AtomicU64::new(0),
            streams_cut: AtomicU64::new(0),
            bodies_waiting: AtomicU32::new(0),
            idle_since: AtomicU64::new(coarse_ms()),
            give_way: tokio::sync::Notify::new(),
            bytes_taken: AtomicU64::new(0),
            dropped_underscored: AtomicBool::new(false),
            _permit: permit,
        })
    }

    /// Record the client certificate the handshake verified (once, after it).
    pub fn set_client_cert(&self, header: HeaderValue) {
        let _ = self.client_cert.set(header);
    }

    /// The verified client certificate's `x-forwarded-client-cert`, if the client gave one.
    pub fn client_cert(&self) -> Option<&HeaderValue> {
        self.client_cert.get()
    }

    /// Mark a request as in progress until the guard drops.
    pub fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        ActivityGuard {
            cx: Arc::clone(self),
            owed: false,
        }
    }

    /// Requests in progress (response not finished).
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Requests seen so far; the idle watchdog compares it between ticks.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Responses waiting for the client to take more (see [`ActivityGuard::response_started`]).
    pub fn owed(&self) -> u32 {
        self.owed.load(Ordering::Relaxed)
    }

    /// The client side polled a response body (took bytes, or was ready to).
    pub fn body_polled(&self) {
        self.body_polls.fetch_add(1, Ordering::Relaxed);
    }

    /// A relayed HTTP/2 stream was cut for taking nothing within `send_timeout`.
    pub fn stream_cut(&self) {
        self.streams_cut.fetch_add(1, Ordering::Relaxed);
    }

    /// Streams cut so far; a cut while no other body on the connection moved means the whole
    /// connection takes nothing.
    pub fn streams_cut(&self) -> u64 {
        self.streams_cut.load(Ordering::Relaxed)
    }

    /// A turn for one more request body to be read ahead, while fewer than
    /// [`MAX_BODIES_WAITING`] of this connection's are; `None` past it. HTTP/1.1 has one at a
    /// time; it is HTTP/2's hundreds of streams that this bounds.
    pub fn body_turn(self: &Arc<Self>) -> Option<BodyTurn> {
        self.bodies_waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_BODIES_WAITING).then_some(n + 1)
            })
            .ok()?;
        Some(BodyTurn(Arc::clone(self)))
    }

    /// Since when the connection has had no request in progress (meaningful while
    /// [`active`](ConnContext::active) is 0).
    pub fn idle_since_ms(&self) -> u64 {
        self.idle_since.load(Ordering::Relaxed)
    }

    /// Ask the connection to close if it is idle (the proxy is at its cap).
    pub fn ask_to_give_way(&self) {
        self.give_way.notify_one();
    }

    /// Ready once the connection was asked to give way.
    pub async fn asked_to_give_way(&self) {
        self.give_way.notified().await
    }

    /// The client side took `n` response-body bytes.
    pub fn body_taken(&self, n: u64) {
        self.bytes_taken.fetch_add(n, Ordering::Relaxed);
    }

    /// Response-body bytes the client side took so far.
    pub fn bytes_taken(&self) -> u64 {
        self.bytes_taken.load(Ordering::Relaxed)
    }

    /// A header name with `_` was dropped: true the first time on this connection, so it is
    /// logged once, not once per request.
    pub fn first_underscored_drop(&self) -> bool {
        !self.dropped_underscored.swap(true, Ordering::Relaxed)
    }

    /// Response-body polls so far; unchanged while responses are owed means the client takes
    /// nothing.
    pub fn body_polls(&self) -> u64 {
        self.body_polls.load(Ordering::Relaxed)
    }
}

/// Most requests of one connection whose bodies are read ahead at once: each holds up to
/// `upstream.request_buffer` of memory, so an HTTP/2 connection opening its 256 streams and
/// sending no body holds 32 such buffers at most, and its other streams get 429.
pub const MAX_BODIES_WAITING: u32 = 32;

/// One of a connection's turns to have a body read ahead; given back when dropped.
pub struct BodyTurn(Arc<ConnContext>);

impl Drop for BodyTurn {
    fn drop(&mut self) {
        self.0.bodies_waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Keeps a connection from counting as idle while a request on it is in progress, and tells
/// the connection's send watchdog whether its response waits on the client.
pub struct ActivityGuard {
    cx: Arc<ConnContext>,
    owed: bool,
}

impl ActivityGuard {
    /// The response was handed to the client side: until its body is polled and waits on the
    /// worker, the client owes it a read.
    pub fn response_started(&mut self) {
        self.set_owed(true);
    }

    /// The response body was polled: `ready` (it had something, or ended) means the next step
    /// is the client's; pending means it waits on the worker (the worker-side deadlines own
    /// that wait).
    pub fn body_polled(&mut self, ready: bool) {
        self.cx.body_polled();
        self.set_owed(ready);
    }

    /// The client side took `n` bytes of the response body.
    pub fn took(&self, n: u64) {
        self.cx.body_taken(n);
    }

    fn set_owed(&mut self, owed: bool) {
        if self.owed != owed {
            self.owed = owed;
            if owed {
                self.cx.owed.fetch_add(1, Ordering::Relaxed);
            } else {
                self.cx.owed.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.set_owed(false);
        if self.cx.active.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.cx.idle_since.store(coarse_ms(), Ordering::Relaxed);
        }
    }
}

/// Milliseconds on a monotonic clock, for ordering connections by how long they idled.
pub fn coarse_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}
