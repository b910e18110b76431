//! Per-client-connection context shared by the requests of one connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
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
            _permit: permit,
        })
    }

    /// Mark a request as in progress until the guard drops.
    pub fn begin(self: &Arc<Self>) -> ActivityGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        ActivityGuard(Arc::clone(self))
    }

    /// Requests in progress (response not finished).
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Requests seen so far; the idle watchdog compares it between ticks.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// Keeps a connection from counting as idle while a request on it is in progress.
pub struct ActivityGuard(Arc<ConnContext>);

impl Drop for ActivityGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}
