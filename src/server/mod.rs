//! Serving threads, and nothing else: they accept, serve and drain connections. weir runs thread-per-core: each thread has its own current-thread tokio
//! runtime, its own SO_REUSEPORT listening sockets and its own worker connection pool, so a
//! request is accepted, proxied and answered on one thread with no cross-thread hand-off. What
//! threads share (config snapshot, worker counters) is read through atomics and `ArcSwap`.

pub mod h1;
mod listen;
mod prefixed;
mod proxy_header;
mod reuse;

pub use crate::limit::{nofile, ConnectionLimit, ConnectionPermit};
pub use crate::tls;

use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::BytesMut;
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::config::{Config, ServerConfig};
use crate::proxy::{self, ConnContext};
use crate::state::Shared;
use crate::upstream::{ClientBody, Upstreams};
use h1::conn::{Io, RequestBody};
use prefixed::Prefixed;

/// Pause after a failed accept (e.g. out of file descriptors) before trying again, so the loop
/// does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);
/// How often each thread drops dead and expired pooled worker connections.
const UPSTREAM_SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// HTTP/2 PING interval that detects dead client connections.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Shortest step of a connection's watchdog, however short its deadlines are set.
const MIN_WATCHDOG_TICK: Duration = Duration::from_millis(10);
/// Steps of a connection's watchdog per deadline it checks. A limit is noticed at most two
/// steps after it passed (one to see the wait begin, one to see it end), so 25 steps keep
/// every limit within 1.08 times its value.
const WATCHDOG_STEPS: u32 = 25;

/// Why weir could not start serving.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// The proxy's listeners, bound before anything starts (so a port in use fails start-up at
/// once): one SO_REUSEPORT socket per listener for each serving thread.
pub struct Listeners {
    /// `sockets[listener][thread]`.
    sockets: Vec<Vec<StdTcpListener>>,
    /// The bound address of each listener, in config order (resolves port 0).
    pub local_addrs: Vec<SocketAddr>,
    threads: usize,
}

impl Listeners {
    /// Bind every listener of `config`, once per serving thread.
    pub fn bind(config: &Config) -> Result<Listeners, StartError> {
        let threads = match config.server.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut sockets = Vec::new();
        let mut local_addrs = Vec::new();
        for (i, listener) in config.listeners.iter().enumerate() {
            let addr = listener.listen.get();
            let bound = listen::bind_reuseport(addr, threads).map_err(|e| {
                StartError(format!(
                    "listeners[{i}].listen: cannot listen on {addr}: {e}"
                ))
            })?;
            let local = bound[0]
                .local_addr()
                .map_err(|e| StartError(format!("listeners[{i}].listen: {e}")))?;
            local_addrs.push(local);
            sockets.push(bound);
        }
        Ok(Listeners {
            sockets,
            local_addrs,
            threads,
        })
    }
}

/// The serving threads. They stop accepting when their shutdown signal flips, then drain.
pub struct Serving {
    threads: Vec<JoinHandle<()>>,
}

impl Serving {
    /// Wait until every serving thread has finished: its connections closed, or
    /// `server.shutdown_grace` passed.
    pub fn join(self) {
        for handle in self.threads {
            if handle.join().is_err() {
                error!("a serving thread panicked during shutdown");
            }
        }
    }
}

/// What every serving thread shares.
struct Common {
    shared: Arc<Shared>,
    /// Every open proxy connection, so idle ones can give way at the cap.
    open: Arc<reuse::OpenConnections>,
}

/// Start the serving threads on `listeners`, serving what `shared` holds until `shutdown`
/// flips (or its sender is dropped).
pub fn serve(
    mut listeners: Listeners,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> Result<Serving, StartError> {
    let config = Arc::clone(&shared.snapshot().config);
    let common = Arc::new(Common {
        shared,
        open: Arc::default(),
    });
    let mut threads = Vec::with_capacity(listeners.threads);
    for t in 0..listeners.threads {
        let mine: Vec<(usize, StdTcpListener)> = listeners
            .sockets
            .iter_mut()
            .enumerate()
            .filter_map(|(i, per_thread)| per_thread.pop().map(|s| (i, s)))
            .collect();
        let common = Arc::clone(&common);
        let shutdown = shutdown.clone();
        let handle = std::thread::Builder::new()
            .name(format!("weir-{t}"))
            .spawn(move || serve_thread(mine, common, shutdown))
            .map_err(|e| StartError(format!("cannot start serving thread: {e}")))?;
        threads.push(handle);
    }
    for (listener, addr) in config.listeners.iter().zip(&listeners.local_addrs) {
        let kind = if listener.tls.is_some() {
            "https"
        } else {
            "http"
        };
        info!(%addr, kind, threads = listeners.threads, "listening");
    }
    Ok(Serving { threads })
}

/// Tasks a serving runtime polls between two looks at the socket events. tokio's default (61)
/// makes a busy thread call `epoll_wait` often with few events each time; a larger batch, as
/// nginx's event loop takes, measured cheaper per request (1,000 connections: 34.7-35.1 vs
/// 36.7-42.7 us of CPU per request; 64 connections: 18.8 vs 19.7), and a thread with nothing
/// to run still looks at once.
const EVENT_INTERVAL: u32 = 256;

/// A current-thread runtime with IO and timers: the shape of every weir thread.
pub fn current_thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .event_interval(EVENT_INTERVAL)
        .build()
}

/// The next connection from `listener`, or `None` once `shutdown` flips. A failed accept (out
/// of file descriptors, say) is logged and retried after a pause, so the loop never spins.
pub async fn accept_until_shutdown(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
    what: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => return Some(pair),
                Err(e) => {
                    warn!(error = %e, listener = what, "accept failed; backing off");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
            _ = shutdown.changed() => return None,
        }
    }
}

fn serve_thread(
    sockets: Vec<(usize, StdTcpListener)>,
    common: Arc<Common>,
    shutdown: watch::Receiver<bool>,
) {
    let runtime = match current_thread_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot build a serving runtime; this thread serves nothing");
            return;
        }
    };
    runtime.block_on(async move {
        let upstreams = Upstreams::new();
        let mut accepts = Vec::new();
        for (index, socket) in sockets {
            match TcpListener::from_std(socket) {
                Ok(listener) => accepts.push(tokio::spawn(accept_loop(
                    listener,
                    index,
                    Arc::clone(&common),
                    Arc::clone(&upstreams),
                    shutdown.clone(),
                ))),
                Err(e) => error!(error = %e, "cannot register a listener with the runtime"),
            }
        }
        let sweeper = tokio::spawn(sweep_upstreams(Arc::clone(&upstreams), Arc::clone(&common)));
        for accept in accepts {
            let _ = accept.await;
        }
        // Accepting has stopped; connections were told to finish. Wait for them, up to grace.
        let grace = common.shared.snapshot().config.server.shutdown_grace.get();
        let _ = tokio::time::timeout(grace, common.shared.connections.none_open()).await;
        sweeper.abort();
    });
}

async fn sweep_upstreams(upstreams: Arc<Upstreams>, common: Arc<Common>) {
    let mut tick = tokio::time::interval(UPSTREAM_SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let max_idle = common.shared.snapshot().upstream.idle_timeout;
        upstreams.sweep(max_idle);
    }
}

async fn accept_loop(
    listener: TcpListener,
    index: usize,
    common: Arc<Common>,
    upstreams: Arc<Upstreams>,
    mut shutdown: watch::Receiver<bool>,
) {
    while let Some((stream, peer)) = accept_until_shutdown(&listener, &mut shutdown, "proxy").await
    {
        // The cap is taken after accept: the kernel hashed this connection to this thread's
        // socket, so this thread must serve it. At the cap the loop waits here, holding at most
        // one accepted connection, and the rest queue in the kernel backlog.
        let permit = match common.shared.connections.try_acquire() {
            Some(p) => p,
            None => {
                // At the cap: the longest idle connections give way to new clients. Asked
                // again while the wait lasts: a connection asked while busy stays open.
                let batch = reuse::give_way_batch(common.shared.connections.max());
                let asked = common.open.give_way(batch);
                debug!(client = %peer, idle_asked_to_close = asked, "at the connection cap; waiting for a free slot");
                loop {
                    tokio::select! {
                        permit = common.shared.connections.acquire() => break permit,
                        () = tokio::time::sleep(reuse::GIVE_WAY_AGAIN) => {
                            common.open.give_way(batch);
                        }
                        _ = shutdown.changed() => return,
                    }
                }
            }
        };
        let snapshot = common.shared.snapshot();
        let senders = snapshot
            .config
            .listeners
            .get(index)
            .map(|l| l.proxy_protocol.as_slice())
            .unwrap_or_default();
        let proxied = !senders.is_empty();
        if proxied && !senders.iter().any(|c| c.contains(peer.ip())) {
            info!(client = %peer, "connection refused: not a PROXY protocol sender this listener allows");
            continue;
        }
        let tls = snapshot.tls.get(index).cloned().flatten();
        let edge = snapshot.edges.get(index).cloned().flatten();
        let settings = ConnSettings::from(&snapshot.config.server);
        if proxied {
            drop(snapshot);
            let connection = Accepted {
                stream,
                peer,
                tls,
                edge,
                settings,
                permit,
            };
            tokio::spawn(serve_proxied(
                connection,
                Arc::clone(&common),
                Arc::clone(&upstreams),
                shutdown.clone(),
            ));
            continue;
        }
        let cx = ConnContext::new(
            Arc::clone(&common.shared),
            Arc::clone(&upstreams),
            peer,
            snapshot.is_trusted(peer.ip()),
            tls.is_some(),
            edge,
            permit,
        );
        drop(snapshot);
        let listed = common.open.list(&cx);
        // Plain and TLS connections are separate task types: a task is as large as its
        // future, and a plain connection should not carry room for a TLS session.
        match tls {
            None => tokio::spawn(serve_plain(stream, settings, cx, shutdown.clone(), listed)),
            Some(config) => tokio::spawn(serve_tls(
                stream,
                config,
                settings,
                cx,
                shutdown.clone(),
                listed,
            )),
        };
    }
}

/// The server settings a connection needs, copied out of the config (no allocation).
#[derive(Debug, Clone, Copy)]
struct ConnSettings {
    tls_handshake_timeout: Duration,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    send_timeout: Duration,
    request_body_timeout: Duration,
    max_header_bytes: usize,
    max_h2_streams: u32,
    /// Slowest a client may take a response, bytes per second (0: unchecked).
    min_data_rate: u64,
    min_data_rate_grace: Duration,
}

impl From<&ServerConfig> for ConnSettings {
    fn from(c: &ServerConfig) -> Self {
        ConnSettings {
            tls_handshake_timeout: c.tls_handshake_timeout.get(),
            header_read_timeout: c.header_read_timeout.get(),
            idle_timeout: c.idle_timeout.get(),
            send_timeout: c.send_timeout.get(),
            request_body_timeout: c.request_body_timeout.get(),
            max_header_bytes: c.max_header_bytes,
            max_h2_streams: c.max_h2_streams,
            min_data_rate: c.min_data_rate.get(),
            min_data_rate_grace: c.min_data_rate_grace.get(),
        }
    }
}

fn set_nodelay(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "cannot set TCP_NODELAY");
    }
}

async fn serve_plain(
    stream: TcpStream,
    settings: ConnSettings,
    cx: Arc<ConnContext>,
    shutdown: watch::Receiver<bool>,
    _listed: reuse::Listed,
) {
    set_nodelay(&stream);
    let fd = stream.as_raw_fd();
    serve_http(stream, fd, false, &settings, cx, shutdown).await
}

async fn serve_tls(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    settings: ConnSettings,
    cx: Arc<ConnContext>,
    shutdown: watch::Receiver<bool>,
    _listed: reuse::Listed,
) {
    set_nodelay(&stream);
    let fd = stream.as_raw_fd();
    handshake_then_serve(stream, fd, config, settings, cx, shutdown).await
}

/// A connection accepted on a listener whose clients come through PROXY protocol senders,
/// before its header is read.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    edge: Option<Arc<crate::edge::ListenerEdge>>,
    settings: ConnSettings,
    permit: crate::limit::ConnectionPermit,
}

/// Read the PROXY header within the head deadline, then serve the connection as its
/// listener would, as the client the header names. A connection with no valid header is
/// closed with a log line; the bytes after a valid one are the client's, read first.
async fn serve_proxied(
    mut accepted: Accepted,
    common: Arc<Common>,
    upstreams: Arc<Upstreams>,
    mut shutdown: watch::Receiver<bool>,
) {
    set_nodelay(&accepted.stream);
    let fd = accepted.stream.as_raw_fd();
    let peer = accepted.peer;
    let within = accepted.settings.header_read_timeout;
    let read = tokio::select! {
        read = proxy_header::read(&mut accepted.stream, within) => read,
        _ = shutdown.changed() => return,
    };
    let (header, rest) = match read {
        Ok(read) => read,
        Err(refusal) => {
            info!(client = %peer, reason = %refusal, "connection refused: no valid PROXY header");
            return;
        }
    };
    let client = header.client.unwrap_or(peer);
    debug!(sender = %peer, client = %client, "PROXY header read");
    let trusted = common.shared.snapshot().is_trusted(client.ip());
    let cx = ConnContext::new(
        Arc::clone(&common.shared),
        upstreams,
        client,
        trusted,
        accepted.tls.is_some(),
        accepted.edge,
        accepted.permit,
    );
    let _listed = common.open.list(&cx);
    let io = Prefixed::new(rest.freeze(), accepted.stream);
    let settings = accepted.settings;
    match accepted.tls {
        None => serve_http(io, fd, false, &settings, cx, shutdown).await,
        Some(config) => handshake_then_serve(io, fd, config, settings, cx, shutdown).await,
    }
}

/// The TLS handshake within its deadline, then HTTP over it.
async fn handshake_then_serve<IO>(
    io: IO,
    fd: RawFd,
    config: Arc<rustls::ServerConfig>,
    settings: ConnSettings,
    cx: Arc<ConnContext>,
    shutdown: watch::Receiver<bool>,
) where
    IO: Io,
    tokio_rustls::server::TlsStream<IO>: Io,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshake = tokio::time::timeout(settings.tls_handshake_timeout, acceptor.accept(io)).await;
    match handshake {
        Ok(Ok(tls_stream)) => {
            let session = tls_stream.get_ref().1;
            if session.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) {
                // A CA checked a TLS-ALPN-01 challenge: the handshake was the answer.
                debug!(client = %cx.peer, "answered a TLS-ALPN-01 challenge");
                return;
            }
            let h2 = session.alpn_protocol() == Some(b"h2");
            // Present only when the listener asks for client certificates and this one verified.
            if let Some(leaf) = session.peer_certificates().and_then(|c| c.first()) {
                if let Some(header) = crate::client_cert::header_for(leaf) {
                    cx.set_client_cert(header);
                }
            }
            serve_http(tls_stream, fd, h2, &settings, cx, shutdown).await
        }
        Ok(Err(e)) => debug!(client = %cx.peer, error = %e, "TLS handshake failed"),
        Err(_) => debug!(client = %cx.peer, "TLS handshake timed out"),
    }
}

/// The HTTP/2 connection preface (RFC 9113 §3.4): how a client with prior knowledge starts.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Which protocol a connection speaks, told by its first bytes.
enum Spoken {
    Http1,
    Http2,
    /// It closed, stayed silent past the head deadline, or shutdown came first.
    Nothing,
}

/// Read until the first bytes either are the HTTP/2 preface or cannot be; `first` keeps them
/// for the server that takes the connection.
async fn sniff<IO: Io>(
    io: &mut IO,
    first: &mut BytesMut,
    settings: &ConnSettings,
    shutdown: &mut watch::Receiver<bool>,
) -> Spoken {
    let read = async {
        loop {
            let n = first.len().min(H2_PREFACE.len());
            if first[..n] != H2_PREFACE[..n] {
                return Spoken::Http1;
            }
            if n == H2_PREFACE.len() {
                return Spoken::Http2;
            }
            let mut spare = BytesMut::new();
            match std::future::poll_fn(|cx| {
                h1::conn::poll_read_or_let_go(io, first, &mut spare, cx)
            })
            .await
            {
                Ok(0) | Err(_) => return Spoken::Nothing,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        spoken = tokio::time::timeout(settings.header_read_timeout, read) => spoken.unwrap_or(Spoken::Nothing),
        _ = shutdown.changed() => Spoken::Nothing,
    }
}

/// Serve the connection in the protocol it speaks (ALPN's `h2`, or on plain listeners the
/// HTTP/2 preface of prior knowledge): HTTP/2 on hyper, HTTP/1.1 on weir's own path. Either
/// runs until the client leaves, the connection idles out, or shutdown.
async fn serve_http<IO: Io>(
    mut io: IO,
    fd: RawFd,
    alpn_h2: bool,
    settings: &ConnSettings,
    cx: Arc<ConnContext>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut first = BytesMut::new();
    let spoken = if alpn_h2 {
        Spoken::Http2
    } else {
        sniff(&mut io, &mut first, settings, &mut shutdown).await
    };
    match spoken {
        Spoken::Nothing => {}
        Spoken::Http1 => {
            let limits = h1::conn::Limits {
                max_head: settings.max_header_bytes,
                header_read_timeout: settings.header_read_timeout,
                body_read_timeout: settings.request_body_timeout,
            };
            let service_cx = Arc::clone(&cx);
            let service = move |req: Request<RequestBody>| {
                let answer = proxy::serve(req.map(ClientBody::Http1), Arc::clone(&service_cx));
                async move {
                    match answer.await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    }
                }
            };
            let conn = std::pin::pin!(h1::conn::serve(
                io,
                first,
                limits,
                shutdown.clone(),
                service
            ));
            supervise(conn, None::<fn(Pin<&mut _>)>, fd, settings, &cx, shutdown).await
        }
        // Boxed: an HTTP/1.1 connection's task should not carry room for an HTTP/2 server.
        Spoken::Http2 => Box::pin(serve_h2(io, fd, first, settings, cx, shutdown)).await,
    }
}

/// Serve HTTP/2 on hyper; `first` holds the bytes already read.
async fn serve_h2<IO: Io>(
    io: IO,
    fd: RawFd,
    first: BytesMut,
    settings: &ConnSettings,
    cx: Arc<ConnContext>,
    shutdown: watch::Receiver<bool>,
) {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_h2_streams)
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL);
    let service_cx = Arc::clone(&cx);
    let service = service_fn(move |req: Request<Incoming>| {
        proxy::serve(req.map(ClientBody::Http2), Arc::clone(&service_cx))
    });
    let io = TokioIo::new(Prefixed::new(first.freeze(), io));
    let conn = std::pin::pin!(builder.serve_connection(io, service));
    let graceful = closer_for(&conn, |conn| conn.graceful_shutdown());
    supervise(conn, Some(graceful), fd, settings, &cx, shutdown).await
}

/// `close` as the closer of `conn`'s type (it gives the closure its argument's type).
fn closer_for<F, G: FnMut(Pin<&mut F>)>(_conn: &Pin<&mut F>, close: G) -> G {
    close
}

/// Watch a served connection until it ends. One watchdog per connection, checked in quarter
/// steps of the shorter deadline (one timer per connection, not per request): close after
/// `idle_timeout` with no request in progress; cut the connection when its responses wait on
/// the client and the client has taken nothing for `send_timeout` (a slow reader, or an
/// HTTP/2 window held at zero), so the worker slots they hold free at once. `graceful` asks
/// the connection to finish what is in progress and close (HTTP/2); without it the connection
/// sees shutdown itself, and an idle one is simply dropped (HTTP/1.1: nothing is in progress).
async fn supervise<F, E, G>(
    mut conn: Pin<&mut F>,
    mut graceful: Option<G>,
    fd: RawFd,
    settings: &ConnSettings,
    cx: &ConnContext,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
    G: FnMut(Pin<&mut F>),
{
    let tick =
        (settings.idle_timeout.min(settings.send_timeout) / WATCHDOG_STEPS).max(MIN_WATCHDOG_TICK);
    // While a response waits on the client, its reading rate is checked too, in steps of the
    // grace it has.
    let owed_tick = if settings.min_data_rate > 0 {
        tick.min(settings.min_data_rate_grace / WATCHDOG_STEPS)
            .max(MIN_WATCHDOG_TICK)
    } else {
        tick
    };
    let mut watch = Watchdog::new(cx, Instant::now());
    let mut closing = *shutdown.borrow();
    let mut idle_closing_since = None;
    if closing {
        if let Some(graceful) = graceful.as_mut() {
            graceful(conn.as_mut());
        }
    }
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(client = %cx.peer, error = %e, "client connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep(if cx.owed() > 0 { owed_tick } else { tick }) => {
                match watch.check(cx, Instant::now(), settings) {
                    Verdict::Fine => {}
                    Verdict::Idle if !closing => {
                        debug!(client = %cx.peer, "closing idle connection");
                        let Some(graceful) = graceful.as_mut() else {
                            return;
                        };
                        graceful(conn.as_mut());
                        closing = true;
                        idle_closing_since = Some(Instant::now());
                    }
                    Verdict::Idle => {
                        // A graceful close waits for open streams; one whose client never
                        // takes its bytes (its relay already gave up) would keep it for ever.
                        let since = *idle_closing_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= settings.idle_timeout {
                            debug!(client = %cx.peer, "idle connection did not finish closing; dropping it");
                            return;
                        }
                    }
                    Verdict::NotReading => {
                        warn!(client = %cx.peer, owed = cx.owed(), timeout = ?settings.send_timeout, "client took no response bytes within send_timeout; resetting the connection");
                        reset_on_close(fd);
                        return;
                    }
                    Verdict::TooSlow => {
                        warn!(client = %cx.peer, owed = cx.owed(), min_data_rate = settings.min_data_rate, "client takes its response slower than server.min_data_rate; resetting the connection");
                        reset_on_close(fd);
                        return;
                    }
                }
            }
            () = cx.asked_to_give_way() => {
                if cx.active() == 0 {
                    debug!(client = %cx.peer, "idle connection closed to make room at the connection cap");
                    return;
                }
            }
            _ = shutdown.changed(), if !closing && graceful.is_some() => {
                if let Some(graceful) = graceful.as_mut() {
                    graceful(conn.as_mut());
                }
                closing = true;
            }
        }
    }
}

/// A connection cut for not reading is reset, not closed: the kernel would otherwise go on
/// trickling what it holds (megabytes) to the client that was cut for taking too little.
fn reset_on_close(fd: RawFd) {
    if let Err(e) = crate::sys::reset_on_close(fd) {
        debug!(error = %e, "cannot set SO_LINGER on a connection being cut");
    }
}

/// What a connection's watchdog decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Nothing to do.
    Fine,
    /// No request for `idle_timeout`: close gracefully.
    Idle,
    /// Responses wait on a client that took nothing for `send_timeout`: cut the connection.
    NotReading,
    /// Responses wait on a client that takes them slower than `min_data_rate`: cut it.
    TooSlow,
}

/// The facts a connection's watchdog compares between its ticks.
#[derive(Debug, Clone, Copy)]
struct Watchdog {
    requests: u64,
    quiet_since: Instant,
    body_polls: u64,
    stalled_since: Option<Instant>,
    /// Body polls and cut streams at the previous tick, and when the polls last moved.
    last_polls: u64,
    last_moved: Instant,
    streams_cut: u64,
    /// Since when responses have waited on the client without a break, and how many body
    /// bytes it had taken by then.
    owed_since: Option<(Instant, u64)>,
}

impl Watchdog {
    fn new(cx: &ConnContext, now: Instant) -> Self {
        Watchdog {
            requests: cx.requests(),
            quiet_since: now,
            body_polls: cx.body_polls(),
            stalled_since: None,
            last_polls: cx.body_polls(),
            last_moved: now,
            streams_cut: cx.streams_cut(),
            owed_since: None,
        }
    }

    fn check(&mut self, cx: &ConnContext, now: Instant, settings: &ConnSettings) -> Verdict {
        let requests = cx.requests();
        if cx.active() > 0 || requests != self.requests {
            self.requests = requests;
            self.quiet_since = now;
        }
        let polls = cx.body_polls();
        // An HTTP/2 stream was cut for not reading, and no other body on the connection moved
        // for a quarter of send_timeout: the client takes nothing at all, so its queued
        // streams would each hold a slot for send_timeout in turn. Cut the connection.
        if std::mem::replace(&mut self.last_polls, polls) != polls {
            self.last_moved = now;
        }
        let cut = cx.streams_cut();
        if std::mem::replace(&mut self.streams_cut, cut) != cut
            && now.duration_since(self.last_moved) >= settings.send_timeout / 4
        {
            return Verdict::NotReading;
        }
        if cx.owed() == 0 || polls != self.body_polls {
            self.body_polls = polls;
            self.stalled_since = None;
        } else {
            let since = *self.stalled_since.get_or_insert(now);
            if now.duration_since(since) >= settings.send_timeout {
                return Verdict::NotReading;
            }
        }
        if cx.owed() == 0 {
            self.owed_since = None;
        } else if settings.min_data_rate > 0 {
            let (since, taken_then) = *self.owed_since.get_or_insert((now, cx.bytes_taken()));
            let waited = now.duration_since(since);
            if waited >= settings.min_data_rate_grace {
                let taken = cx.bytes_taken().saturating_sub(taken_then);
                let due = (settings.min_data_rate as f64 * waited.as_secs_f64()) as u64;
                if taken < due {
                    return Verdict::TooSlow;
                }
            }
        }
        if now.duration_since(self.quiet_since) >= settings.idle_timeout {
            return Verdict::Idle;
        }
        Verdict::Fine
    }
}
