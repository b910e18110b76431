//! Connections from one serving thread to workers: connect with a deadline, weir's own lean
//! HTTP/1.1 client (encode the request head once, parse the response with httparse, read the
//! body as the client pulls it), and a keep-alive pool keyed by worker id.
//!
//! Each serving thread owns one [`Upstreams`]: requests on a thread reuse that thread's
//! connections, so no connection is handed between threads and the pool's mutex is never
//! contended (it is never held across an await).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::{ServerConfig, UpstreamConfig};
use crate::error::ProxyError;
use crate::pool::{Transport, Worker};

mod body;
mod call;
mod conn;
mod encode;
pub mod h2;
mod pace;
mod stream;

pub use crate::error::ClientBodyError;
pub use crate::http1::{BodyDecoder, Decoded, Framing};
pub use body::{BufferedBody, ClientBody, UpstreamBody};
pub use call::{call, drain_in_background, Call, CallError, WorkerBody};
pub use conn::WorkerConn;
pub use encode::{encode_head, BodyFraming};
pub use pace::Pace;
pub use stream::WorkerStream;

/// The upstream settings the request path needs after it lets go of the config snapshot.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamSettings {
    /// TCP connect deadline.
    pub connect_timeout: Duration,
    /// Deadline for response headers.
    pub response_timeout: Duration,
    /// Idle connections older than this are not reused.
    pub idle_timeout: Duration,
    /// Idle connections kept per worker.
    pub max_idle_per_worker: usize,
    /// Longest wait for the client's next request-body bytes (`server.request_body_timeout`).
    pub request_body_timeout: Duration,
    /// Longest wait for the next bytes of a response body.
    pub read_timeout: Duration,
    /// Largest response held whole so the worker is released before the client has read it;
    /// also what a spooled response holds in memory.
    pub response_buffer: usize,
    /// What a spooled response holds in its temporary file beyond `response_buffer`.
    pub max_response_buffer: u64,
    /// What a request body holds in memory before its request takes a slot.
    pub request_buffer: usize,
    /// What a request body holds in its temporary file beyond `request_buffer`.
    pub max_request_buffer: u64,
    /// Slowest a client may send a request body (bytes per second; 0: unchecked).
    pub min_data_rate: u64,
    /// How long a body may be slower than `min_data_rate` before it counts.
    pub min_data_rate_grace: Duration,
}

impl UpstreamSettings {
    /// The settings a request needs, from the `upstream` table and the client-side body
    /// deadline of `server`.
    pub fn new(c: &UpstreamConfig, server: &ServerConfig) -> Self {
        UpstreamSettings {
            connect_timeout: c.connect_timeout.get(),
            response_timeout: c.response_timeout.get(),
            idle_timeout: c.idle_timeout.get(),
            max_idle_per_worker: c.max_idle_per_worker,
            request_body_timeout: server.request_body_timeout.get(),
            read_timeout: c.read_timeout.get(),
            // Validation caps it far below any usize.
            response_buffer: usize::try_from(c.response_buffer.get()).unwrap_or(usize::MAX),
            max_response_buffer: c.max_response_buffer.get(),
            request_buffer: usize::try_from(c.request_buffer.get()).unwrap_or(usize::MAX),
            max_request_buffer: c.max_request_buffer.get(),
            min_data_rate: server.min_data_rate.get(),
            min_data_rate_grace: server.min_data_rate_grace.get(),
        }
    }
}

struct IdleConn {
    conn: WorkerConn,
    since: Instant,
}

/// One serving thread's worker connections.
#[derive(Default)]
pub struct Upstreams {
    idle: Mutex<HashMap<u64, VecDeque<IdleConn>>>,
    /// Multiplexed connections to HTTP/2 workers.
    pub h2: h2::H2Conns,
}

impl Upstreams {
    /// An empty pool.
    pub fn new() -> Arc<Self> {
        Arc::new(Upstreams::default())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, VecDeque<IdleConn>>> {
        // A panic while holding this lock leaves only a map of idle connections behind, which
        // is still consistent: keep using it.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A pooled connection to `worker` if one is alive (and `fresh` does not ask for a new
    /// one, as after a pooled connection failed), else a new one.
    pub async fn checkout(
        &self,
        worker: &Worker,
        transport: &Transport,
        settings: &UpstreamSettings,
        fresh: bool,
    ) -> Result<WorkerConn, ProxyError> {
        if !fresh {
            if let Some(conn) = self.take_idle(worker.id, settings.idle_timeout, transport.id) {
                return Ok(conn);
            }
        }
        connect(worker, transport, settings)
            .await
            .map(|stream| WorkerConn::new(stream, transport.id))
    }

    /// The most recently used live idle connection (LIFO keeps few connections warm).
    fn take_idle(&self, worker_id: u64, max_idle: Duration, transport: u64) -> Option<WorkerConn> {
        let mut idle = self.lock();
        let conns = idle.get_mut(&worker_id)?;
        let now = Instant::now();
        while let Some(mut idle) = conns.pop_back() {
            if now.duration_since(idle.since) < max_idle
                && idle.conn.transport == transport
                && idle.conn.is_usable_idle()
            {
                idle.conn.reused = true;
                return Some(idle.conn);
            }
        }
        None
    }

    /// Return a connection whose exchange finished cleanly, for the next request to reuse.
    pub fn give_back(&self, worker_id: u64, mut conn: WorkerConn, max_idle: usize) {
        if max_idle == 0 || !conn.is_usable_idle() {
            return;
        }
        conn.shrink_for_idle();
        let mut idle = self.lock();
        let conns = idle.entry(worker_id).or_default();
        conns.push_back(IdleConn {
            conn,
            since: Instant::now(),
        });
        while conns.len() > max_idle {
            conns.pop_front();
        }
    }

    /// Drop closed and expired idle connections and the entries of workers with none left, so
    /// departed workers leave nothing behind. Called periodically by each serving thread.
    pub fn sweep(&self, max_idle: Duration) {
        self.h2.sweep(max_idle);
        let now = Instant::now();
        self.lock().retain(|_, conns| {
            conns.retain(|c| now.duration_since(c.since) < max_idle && c.conn.is_usable_idle());
            !conns.is_empty()
        });
    }

    /// Idle connections currently pooled (for tests and the admin view).
    pub fn idle_count(&self) -> usize {
        self.lock().values().map(VecDeque::len).sum()
    }
}

/// Open a fresh connection to `worker`: TCP within `connect_timeout`, and the TLS
/// handshake within the same deadline when the pool asks for TLS.
pub async fn connect(
    worker: &Worker,
    transport: &Transport,
    settings: &UpstreamSettings,
) -> Result<WorkerStream, ProxyError> {
    connect_checked(worker, transport, settings.connect_timeout, true).await
}

/// [`connect`] for a probe: an unhealthy worker is what a probe is for.
pub async fn connect_for_probe(
    worker: &Worker,
    transport: &Transport,
    timeout: Duration,
) -> Result<WorkerStream, ProxyError> {
    connect_checked(worker, transport, timeout, false).await
}

async fn connect_checked(
    worker: &Worker,
    transport: &Transport,
    timeout: Duration,
    refuse_unhealthy: bool,
) -> Result<WorkerStream, ProxyError> {
    let deadline = Instant::now() + timeout;
    let stream = match tokio::time::timeout_at(deadline, TcpStream::connect(worker.addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(ProxyError::connect(e)),
        Err(_) => {
            return Err(ProxyError::connect(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            )))
        }
    };
    // A connect can outlast its worker: one started just before the worker exited may,
    // while the address resolves again, reach whatever took that address since (a
    // replacement container, another pool's worker). A worker found dead or failing
    // meanwhile gets nothing on it; the request is retried elsewhere, as on a refusal.
    if refuse_unhealthy && worker.state() == crate::pool::WorkerState::Unhealthy {
        return Err(ProxyError::connect(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the worker was found dead or failing while connecting",
        )));
    }
    // Small proxied writes must not wait for Nagle.
    stream.set_nodelay(true).map_err(ProxyError::connect)?;
    let Some(tls) = &transport.tls else {
        return Ok(WorkerStream::Plain(stream));
    };
    let handshake = tls.connector.connect(tls.server_name(worker.addr), stream);
    match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(stream)) => Ok(WorkerStream::Tls(Box::new(stream))),
        Ok(Err(e)) => Err(ProxyError::connect(std::io::Error::new(
            e.kind(),
            format!("TLS handshake with the worker failed: {e}"),
        ))),
        Err(_) => Err(ProxyError::connect(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "TLS handshake with the worker timed out",
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::WorkerState;

    #[tokio::test]
    async fn a_worker_found_dead_while_connecting_gets_nothing_on_the_connection() {
        // Something answers at the address (a replacement that took it, say).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let settings = UpstreamSettings::new(&UpstreamConfig::default(), &ServerConfig::default());
        let upstreams = Upstreams::new();
        let alive = Worker::detached("app-1", addr, WorkerState::Ready);
        assert!(upstreams
            .checkout(&alive, &Transport::plain(), &settings, true)
            .await
            .is_ok());
        let dead = Worker::detached("app-1", addr, WorkerState::Unhealthy);
        let refused = upstreams
            .checkout(&dead, &Transport::plain(), &settings, true)
            .await;
        assert!(
            refused.is_err(),
            "connected to whatever holds a dead worker's address"
        );
    }
}
