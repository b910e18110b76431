//! The top of weir: it binds the listeners, builds the data plane (the shared snapshot and
//! connection cap) and the control plane over it, starts the control, admin and serving
//! threads, and owns the order in which they stop. Nothing below imports it.
//!
//! Start-up order: listeners first (a port in use fails at once, before any worker is
//! launched), then the control thread, which gives every pool its first members, then the
//! admin thread, then the serving threads. Shutdown runs the other way round, each step
//! waiting on the last: the serving threads stop accepting and drain their connections (up
//! to `server.shutdown_grace`); only then does the control plane stop its scalers, which
//! drain and release their workers, and leave the fleet; the admin API answers until the end.

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{error, info};

use crate::config::Config;
use crate::control::{self, Control};
use crate::fleet::Fleet;
use crate::server::{self, Listeners, Serving};
use crate::state::{Shared, Snapshot};

pub use crate::server::StartError;

/// Longest start-up waits for the control plane to give every pool its first members.
const POOLS_START_WAIT: Duration = Duration::from_secs(10);

/// A running weir. [`App::shutdown`] stops it gracefully; dropping it stops accepting and
/// closes connections without waiting.
pub struct App {
    /// The bound address of each listener, in config order (resolves port 0).
    pub local_addrs: Vec<SocketAddr>,
    /// The data plane's live state; reloads publish into it.
    pub shared: Arc<Shared>,
    /// The admin listener's bound address.
    pub admin_addr: SocketAddr,
    /// The control plane (reload, scalers, activity, history, fleet).
    pub control: Arc<Control>,
    serving: Stage<Serving>,
    control_thread: Stage<JoinHandle<()>>,
    admin_thread: Stage<JoinHandle<()>>,
}

/// One running part and the signal that stops it. Dropping the signal's sender stops it too.
struct Stage<T> {
    stop: watch::Sender<bool>,
    running: Option<T>,
}

impl<T> Stage<T> {
    fn new(running: T, stop: watch::Sender<bool>) -> Self {
        Stage {
            stop,
            running: Some(running),
        }
    }

    /// Signal the stop and hand back what runs, for the caller to wait on.
    fn stop(&mut self) -> Option<T> {
        let _ = self.stop.send(true);
        self.running.take()
    }
}

impl App {
    /// Bind every listener, start the control plane, the admin API and the serving threads;
    /// `config_path` is what reloads read. A failure names the config key it comes from, and
    /// whatever had started stops again.
    pub fn start(snapshot: Snapshot, config_path: Option<PathBuf>) -> Result<App, StartError> {
        let config = Arc::clone(&snapshot.config);
        let listeners = Listeners::bind(&config)?;
        let (admin, admin_addr) = bind_admin(&config)?;
        let shared = Shared::new(snapshot);
        let fleet = config
            .cluster
            .as_ref()
            .map(|cluster| Fleet::new(cluster, admin_addr));
        let control = Control::new(Arc::clone(&shared), config_path, fleet);

        let (stop, stopped) = watch::channel(false);
        let (pools_started, pools_started_rx) = mpsc::channel();
        let control_thread = Stage::new(
            spawn_thread("weir-control", {
                let control = Arc::clone(&control);
                move || control::run(control, stopped, pools_started)
            })?,
            stop,
        );
        // Serve once every pool has its first members (a static list's are there at once); a
        // control thread that cannot start drops the sender, which ends the wait too.
        let _ = pools_started_rx.recv_timeout(POOLS_START_WAIT);

        let (stop, stopped) = watch::channel(false);
        let admin_thread = Stage::new(
            spawn_thread("weir-admin", {
                let control = Arc::clone(&control);
                move || serve_admin(admin, control, stopped)
            })?,
            stop,
        );

        let (stop, stopped) = watch::channel(false);
        let local_addrs = listeners.local_addrs.clone();
        let serving = Stage::new(
            server::serve(listeners, Arc::clone(&shared), stopped)?,
            stop,
        );
        info!(addr = %admin_addr, "admin API listening");
        Ok(App {
            local_addrs,
            shared,
            admin_addr,
            control,
            serving,
            control_thread,
            admin_thread,
        })
    }

    /// Stop accepting, let in-flight requests finish up to `server.shutdown_grace`, then
    /// release every launched worker, then close the admin API. Blocks the calling thread
    /// until all is done.
    pub fn shutdown(mut self) {
        if let Some(serving) = self.serving.stop() {
            serving.join();
        }
        // Only now that no request is in flight: stop the scalers, which release the workers.
        join("control", self.control_thread.stop());
        join("admin", self.admin_thread.stop());
    }
}

fn join(what: &str, thread: Option<JoinHandle<()>>) {
    if let Some(thread) = thread {
        if thread.join().is_err() {
            error!(thread = what, "a thread panicked during shutdown");
        }
    }
}

fn spawn_thread(
    name: &str,
    run: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, StartError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(run)
        .map_err(|e| StartError(format!("cannot start the {name} thread: {e}")))
}

/// Bind `admin.listen`.
fn bind_admin(config: &Config) -> Result<(StdTcpListener, SocketAddr), StartError> {
    let listen = config.admin.listen.get();
    let admin = StdTcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| StartError(format!("admin.listen: cannot listen on {listen}: {e}")))?;
    let addr = admin
        .local_addr()
        .map_err(|e| StartError(format!("admin.listen: {e}")))?;
    Ok((admin, addr))
}

/// The admin thread: the admin API on its own runtime, so a slow scrape never delays a probe
/// or a scaler, and a busy control plane never delays `/healthz`.
fn serve_admin(listener: StdTcpListener, control: Arc<Control>, stopped: watch::Receiver<bool>) {
    let runtime = match server::current_thread_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot build the admin runtime; no admin API");
            return;
        }
    };
    runtime.block_on(async move {
        match tokio::net::TcpListener::from_std(listener) {
            Ok(listener) => crate::admin::serve(listener, control, stopped).await,
            Err(e) => error!(error = %e, "cannot serve the admin API"),
        }
    });
}
