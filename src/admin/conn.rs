//! The admin listener's accept loop and connections, bounded as the proxy's are: a connection
//! cap (`admin.max_connections`), `server.header_read_timeout` for each request head and
//! `server.idle_timeout` with no request in progress. Idle admin connections, authenticated or
//! not, therefore hold a slot for seconds, and never more descriptors than the cap: the proxy
//! listeners keep theirs whatever the admin side does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::debug;

use crate::control::Control;
use crate::limit::ConnectionPermit;

/// What an admin connection takes from the config when it is accepted.
#[derive(Debug, Clone, Copy)]
struct Settings {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_header_bytes: usize,
}

/// Serve the admin API on `listener` until `shutdown` flips.
pub async fn serve(
    listener: TcpListener,
    control: Arc<Control>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        // The slot is taken before the accept: at the cap, further admin clients wait in the
        // kernel's backlog, where they hold no descriptor of weir's.
        let permit = tokio::select! {
            permit = control.admin_connections().acquire() => permit,
            _ = shutdown.changed() => return,
        };
        let Some((stream, peer)) =
            crate::server::accept_until_shutdown(&listener, &mut shutdown, "admin").await
        else {
            return;
        };
        let settings = {
            let snapshot = control.shared().snapshot();
            let server = &snapshot.config.server;
            Settings {
                header_read_timeout: server.header_read_timeout.get(),
                idle_timeout: server.idle_timeout.get(),
                max_header_bytes: server.max_header_bytes,
            }
        };
        tokio::spawn(connection(
            stream,
            peer,
            Arc::clone(&control),
            settings,
            permit,
            shutdown.clone(),
        ));
    }
}

/// Requests on one admin connection: started so far, and in progress.
#[derive(Default)]
struct Activity {
    started: AtomicU64,
    active: AtomicUsize,
}

/// Marks a request in progress until dropped.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.started.fetch_add(1, Ordering::Relaxed);
        activity.active.fetch_add(1, Ordering::Relaxed);
        Busy(Arc::clone(activity))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serve one admin connection until the client leaves, a head takes longer than
/// `header_read_timeout`, it idles for `idle_timeout`, or shutdown. An idle connection is
/// closed gracefully; one that has not finished closing another `idle_timeout` later (a
/// client that never reads its answer) is dropped.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    control: Arc<Control>,
    settings: Settings,
    _permit: ConnectionPermit,
    mut shutdown: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::default());
    let service = {
        let activity = Arc::clone(&activity);
        service_fn(move |req| {
            let control = Arc::clone(&control);
            let busy = Busy::new(&activity);
            async move {
                let response = super::route(req, &control, peer).await;
                drop(busy);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);

    // Idle watchdog, as on proxy connections: checked in quarter steps of `idle_timeout`.
    let tick = settings.idle_timeout / 4;
    let mut seen = activity.started.load(Ordering::Relaxed);
    let mut quiet_ticks = 0u32;
    let mut closing = false;
    let hard_close = tokio::time::sleep(Duration::MAX);
    tokio::pin!(hard_close);
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(%peer, error = %e, "admin connection ended with an error");
                }
                return;
            }
            _ = tokio::time::sleep(tick), if !closing => {
                let now_seen = activity.started.load(Ordering::Relaxed);
                if activity.active.load(Ordering::Relaxed) == 0 && now_seen == seen {
                    quiet_ticks += 1;
                    if quiet_ticks >= 4 {
                        debug!(%peer, "closing idle admin connection");
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        hard_close.as_mut().reset(tokio::time::Instant::now() + settings.idle_timeout);
                    }
                } else {
                    quiet_ticks = 0;
                    seen = now_seen;
                }
            }
            _ = shutdown.changed(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
                hard_close.as_mut().reset(tokio::time::Instant::now() + settings.idle_timeout);
            }
            () = &mut hard_close, if closing => {
                debug!(%peer, "admin connection did not finish closing; dropped");
                return;
            }
        }
    }
}
