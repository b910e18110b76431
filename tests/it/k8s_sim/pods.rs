//! One pod's process: `weir demo-worker` on the pod's IP and the Service's port. Its task
//! reports the worker listening (ready after the readiness delay) and the process's exit, and
//! carries out the signals the cluster sends: SIGTERM on deletion (SIGKILL after a grace, as
//! the kubelet does), SIGKILL for a crash, and a kill-and-reap when the cluster is dropped.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use super::state::Sim;

/// The weir binary, whose demo worker plays every pod.
const WEIR: &str = env!("CARGO_BIN_EXE_weir");
/// A deleted pod's process still running after this is SIGKILLed (the kubelet's
/// terminationGracePeriodSeconds, shortened: the demo worker exits on SIGTERM at once).
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What the cluster asks of a pod's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The pod was deleted: SIGTERM, then SIGKILL after [`STOP_GRACE`].
    Term,
    /// A crash: SIGKILL now.
    Kill,
}

/// Run pod `name`'s process until it exits (or the cluster stops); `_alive` tells the cluster
/// this task has ended by dropping.
pub async fn run(
    sim: Arc<Sim>,
    name: String,
    addr: SocketAddr,
    readiness_delay: Duration,
    mut signals: mpsc::UnboundedReceiver<Signal>,
    _alive: mpsc::Sender<()>,
) {
    let mut stopping = sim.stopping.subscribe();
    let spawned = Command::new(WEIR)
        .args([
            "demo-worker",
            "--listen",
            &addr.to_string(),
            "--name",
            &name,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let Ok(mut child) = spawned else {
        return sim.pod_exited(&name);
    };
    let pid = child.id().unwrap_or_default().to_string();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut reading, mut ready_at, mut kill_at) = (true, None, None);
    let never = Instant::now() + Duration::from_secs(86_400);
    loop {
        tokio::select! {
            // (awaited inside, so the non-Send borrow it yields never crosses an await here)
            _ = async { drop(stopping.wait_for(|stop| *stop).await) } => {
                let _ = child.kill().await;
                return;
            }
            _ = child.wait() => break,
            line = stdout.next_line(), if reading => match line {
                Ok(Some(line)) if line.contains("listening on") => {
                    ready_at = Some(Instant::now() + readiness_delay);
                }
                Ok(Some(_)) => {}
                _ => reading = false,
            },
            Some(signal) = signals.recv() => match signal {
                Signal::Kill => {
                    let _ = child.start_kill();
                }
                Signal::Term => {
                    let _ = Command::new("kill").args(["-TERM", &pid]).status().await;
                    (ready_at, kill_at) = (None, Some(Instant::now() + STOP_GRACE));
                }
            },
            _ = sleep_until(ready_at.unwrap_or(never)), if ready_at.is_some() => {
                ready_at = None;
                sim.pod_ready(&name);
            }
            _ = sleep_until(kill_at.unwrap_or(never)), if kill_at.is_some() => {
                kill_at = None;
                let _ = child.start_kill();
            }
        }
    }
    sim.pod_exited(&name);
}
