//! Per-client-connection context shared by the requests of one connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use http::HeaderValue;

use crate::server::ConnectionPermit;
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
    active: AtomicU32,
    requests: AtomicU64,
    /// Responses handed to the client side that are not waiting on their worker: the client
    /// owes them a read (HTTP/1.1 socket space, HTTP/2 window).
    owed: AtomicU32,
    /// Polls of this connection's response bodies; a send watchdog compares it between ticks.
    body_polls: AtomicU64,
    /// HTTP/2 streams whose relay cut them for taking nothing within `send_timeout`.
    streams_cut: AtomicU64,
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
            active: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            owed: AtomicU32::new(0),
            body_polls: AtomicU64::new(0),
            streams_cut: AtomicU64::new(0),
            dropped_underscored: AtomicBool::new(false),
            _permit: permit,
        })
    }

    /// Mark a request as in progress until the guard drops.
    pub fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        ActivityGuard {
            cx: Arc::clone(self),
            owed: false,
            relayed: false,
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

/// Keeps a connection from counting as idle while a request on it is in progress, and tells
/// the connection's send watchdog whether its response waits on the client.
pub struct ActivityGuard {
    cx: Arc<ConnContext>,
    owed: bool,
    /// The response has its own relay, which watches the client itself.
    relayed: bool,
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
        // A relayed body is polled by its relay, not by the client: the relay counts what the
        // client takes instead.
        if !self.relayed {
            self.cx.body_polled();
        }
        self.set_owed(ready);
    }

    /// The response is relayed by its own task (HTTP/2), which cuts its stream alone when
    /// the client takes nothing: the connection's watchdog leaves it out.
    pub fn relayed(&mut self) {
        self.set_owed(false);
        self.relayed = true;
    }

    fn set_owed(&mut self, owed: bool) {
        let owed = owed && !self.relayed;
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
        self.cx.active.fetch_sub(1, Ordering::Relaxed);
    }
}
