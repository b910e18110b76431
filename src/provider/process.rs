//! Local worker processes: weir picks a free port, runs the command, tags the worker's output
//! lines with its name in weir's log, notices when it exits, and on release sends SIGTERM to its
//! process group, then SIGKILL after a grace period. Workers never outlive weir: each runs in
//! its own process group and gets SIGKILL from the kernel if weir dies.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::watch;
use tracing::{info, warn};

use super::{LaunchSpec, Launched, Provider, ProviderError, ProviderFuture, WorkerHandle};
use crate::sys;

/// A running worker process.
struct Running {
    pgid: u32,
    exited: watch::Receiver<Option<String>>,
}

/// The process provider.
pub struct ProcessProvider {
    pool: String,
    command: Vec<String>,
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    stop_grace: Duration,
    weir_binary: String,
    running: Arc<Mutex<HashMap<String, Running>>>,
}

impl ProcessProvider {
    /// A provider running `command` for pool `pool`.
    pub fn new(
        pool: &str,
        command: Vec<String>,
        env: BTreeMap<String, String>,
        cwd: Option<PathBuf>,
        stop_grace: Duration,
    ) -> Result<Self, String> {
        if command.first().is_none_or(|c| c.trim().is_empty()) {
            return Err("provider.command needs at least a program".into());
        }
        let weir_binary = std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "weir".to_string());
        Ok(ProcessProvider {
            pool: pool.to_string(),
            command,
            env,
            cwd,
            stop_grace,
            weir_binary,
            running: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spawn(&self, spec: &LaunchSpec) -> Result<Launched, ProviderError> {
        let port = free_port().map_err(|e| ProviderError::Spawn(format!("no free port: {e}")))?;
        let args: Vec<String> = self
            .command
            .iter()
            .map(|a| {
                a.replace("{port}", &port.to_string())
                    .replace("{weir}", &self.weir_binary)
            })
            .collect();
        let mut command = Command::new(&args[0]);
        command
            .args(&args[1..])
            .envs(&self.env)
            .env("PORT", port.to_string())
            .env("WEIR_POOL", &self.pool)
            .env("WEIR_WORKER", &spec.name)
            .env(
                "WEIR_REVISION",
                spec.revision.as_deref().unwrap_or_default(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        if let Some(cwd) = &self.cwd {
            command.current_dir(cwd);
        }
        sys::die_with_parent(&mut command);
        let mut child = command
            .spawn()
            .map_err(|e| ProviderError::Spawn(format!("{}: {e}", args[0])))?;
        let pid = child
            .id()
            .ok_or_else(|| ProviderError::Spawn("exited at once".into()))?;
        if let Some(out) = child.stdout.take() {
            tokio::spawn(log_lines(out, spec.name.clone(), "stdout"));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(log_lines(err, spec.name.clone(), "stderr"));
        }
        let (exit_tx, exit_rx) = watch::channel(None);
        let name = spec.name.clone();
        let running = Arc::clone(&self.running);
        tokio::spawn(async move {
            let reason = match child.wait().await {
                Ok(status) => format!("process exited: {status}"),
                Err(e) => format!("process lost: {e}"),
            };
            running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
            let _ = exit_tx.send(Some(reason));
        });
        self.running().insert(
            spec.name.clone(),
            Running {
                pgid: pid,
                exited: exit_rx.clone(),
            },
        );
        info!(pool = %self.pool, worker = %spec.name, pid, port, "worker process started");
        let mut watch = exit_rx;
        let exited = Box::pin(async move {
            match watch.wait_for(Option::is_some).await {
                Ok(reason) => reason.clone().unwrap_or_default(),
                Err(_) => "process lost".to_string(),
            }
        });
        Ok(Launched {
            handle: WorkerHandle {
                id: spec.name.clone(),
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
                revision: spec.revision.clone(),
            },
            exited: Some(exited),
        })
    }

    async fn stop(&self, handle: WorkerHandle) -> Result<(), ProviderError> {
        let Some((pgid, mut exited)) = self
            .running()
            .get(&handle.id)
            .map(|r| (r.pgid, r.exited.clone()))
        else {
            return Ok(()); // already gone
        };
        let _ = sys::signal_group(pgid, sys::SIGTERM);
        let gone = matches!(
            tokio::time::timeout(self.stop_grace, exited.wait_for(Option::is_some)).await,
            Ok(Ok(_))
        );
        if !gone {
            warn!(pool = %self.pool, worker = %handle.id, grace = ?self.stop_grace, "worker ignored SIGTERM; sending SIGKILL");
            let _ = sys::signal_group(pgid, sys::SIGKILL);
            let _ = tokio::time::timeout(Duration::from_secs(5), exited.wait_for(Option::is_some))
                .await;
        }
        Ok(())
    }
}

impl Provider for ProcessProvider {
    fn launch(&self, spec: LaunchSpec) -> ProviderFuture<'_, Result<Launched, ProviderError>> {
        Box::pin(async move { self.spawn(&spec) })
    }

    fn release(&self, handle: WorkerHandle) -> ProviderFuture<'_, Result<(), ProviderError>> {
        Box::pin(self.stop(handle))
    }

    fn describe(&self) -> String {
        format!("process: {}", self.command.join(" "))
    }

    fn can_launch(&self) -> bool {
        true
    }
}

/// A port free right now on 127.0.0.1 (the worker binds it a moment later).
fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Copy a worker's output into weir's log, one event per line, tagged with the worker.
async fn log_lines(stream: impl AsyncRead + Unpin, worker: String, which: &'static str) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        info!(target: "weir::worker", worker = %worker, stream = which, "{line}");
    }
}
