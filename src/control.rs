//! The control plane, on its own thread: health checks, the scalers, alerts, history, the
//! fleet, and live config reload. It owns what only it changes (the scalers, the scaling
//! activity, the history, this instance's fleet membership); serving threads only read the
//! snapshots it publishes into the data plane's [`Shared`]. The admin API (above) reads it and
//! asks it to reload or scale.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use dashmap::DashMap;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::{self, PoolConfig};
use crate::fleet::Fleet;
use crate::history::History;
use crate::limit::ConnectionLimit;
use crate::membership::Membership;
use crate::pool::{Pool, PoolSettings};
use crate::provider;
use crate::scale::{ActivityLog, PoolScaler, ScalePolicy};
use crate::state::{Carried, Shared, Snapshot};

/// A running scaler and how to stop it.
struct ScalerTask {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The control plane of one weir.
pub struct Control {
    shared: Arc<Shared>,
    /// The scaling history of every pool.
    pub activity: Arc<ActivityLog>,
    /// Every pool's last 15 minutes, a sample a second (the dashboard's charts).
    pub history: Arc<History>,
    /// The scaler of each launchable pool, by pool name.
    pub scalers: DashMap<String, Arc<PoolScaler>>,
    /// This instance's fleet, with `[cluster]`.
    fleet: Option<Arc<Fleet>>,
    config_path: Option<PathBuf>,
    scaler_tasks: Mutex<HashMap<String, ScalerTask>>,
    /// The member source of each pool weir does not launch for (a static list, its names
    /// followed in DNS): asked for `/readyz`, and its feed stopped when the pool goes.
    sources: Mutex<HashMap<String, Source>>,
    reload_lock: tokio::sync::Mutex<()>,
    admin_connections: Arc<ConnectionLimit>,
    /// The control thread's runtime, set when it starts: what a reload starts (scalers, probe
    /// loops) runs there whoever asked for it.
    runtime: OnceLock<tokio::runtime::Handle>,
}

impl Control {
    /// A control plane over `shared`; `config_path` is what reloads read; `fleet` is this
    /// instance's fleet membership, with `[cluster]`.
    pub fn new(
        shared: Arc<Shared>,
        config_path: Option<PathBuf>,
        fleet: Option<Arc<Fleet>>,
    ) -> Arc<Self> {
        let admin_max = shared.snapshot().config.admin.max_connections;
        Arc::new(Control {
            admin_connections: ConnectionLimit::new(admin_max),
            shared,
            activity: Arc::new(ActivityLog::default()),
            history: Arc::default(),
            scalers: DashMap::new(),
            fleet,
            config_path,
            scaler_tasks: Mutex::new(HashMap::new()),
            sources: Mutex::new(HashMap::new()),
            reload_lock: tokio::sync::Mutex::new(()),
            runtime: OnceLock::new(),
        })
    }

    /// The data plane's shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// This instance's fleet, with `[cluster]`.
    pub fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.as_ref()
    }

    /// `admin.max_connections`: the admin listener's cap, resized by a reload.
    pub fn admin_connections(&self) -> &Arc<ConnectionLimit> {
        &self.admin_connections
    }

    /// Start a pool's members: a provider that discovers them (a static list) feeds the
    /// pool's membership; a provider that launches gets a scaler, which adopts what the
    /// provider lists and launches the rest. Every member is probed the same way.
    pub fn start_pool(&self, name: &str, pool: &Arc<Pool>, config: &PoolConfig) {
        let membership = Membership::new(Arc::clone(pool));
        let provider = match provider::from_config(name, &config.provider) {
            Ok(p) => p,
            Err(e) => {
                error!(pool = %name, error = %e, "cannot set up the provider; the pool has no workers");
                return;
            }
        };
        let mut feed = None;
        if let Some(mut members) = provider.discover() {
            // What the source has at once (a static list: everything) joins now; the rest as
            // it comes.
            while let Ok(update) = members.try_recv() {
                membership.apply(update);
            }
            feed = Some(tokio::spawn(Arc::clone(&membership).follow(members)));
        }
        if !provider.can_launch() {
            let replaced = self
                .lock_sources()
                .insert(name.to_string(), Source { provider, feed });
            if let Some(old) = replaced.and_then(|s| s.feed) {
                old.abort();
            }
            return;
        }
        let autoscale = config.autoscale.clone().unwrap_or_default();
        let policy = ScalePolicy::from_config(&autoscale, config.worker_concurrency);
        let scaler = PoolScaler::new(membership, provider, policy, Arc::clone(&self.activity));
        scaler.set_revision(config.revision());
        scaler.set_template(config.provider.template_revision());
        scaler.set_rollout_settings(config.rollout.clone());
        if let Some(fleet) = &self.fleet {
            scaler.join_fleet(Arc::clone(fleet));
        }
        self.scalers.insert(name.to_string(), Arc::clone(&scaler));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(scaler.run(stop_rx));
        self.lock_scaler_tasks()
            .insert(name.to_string(), ScalerTask { stop, task });
    }

    fn lock_sources(&self) -> std::sync::MutexGuard<'_, HashMap<String, Source>> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Why the member sources of pools weir does not launch for cannot be relied on now (a
    /// failed DNS lookup), one line per pool.
    pub fn source_problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = self
            .lock_sources()
            .iter()
            .filter_map(|(name, source)| {
                source
                    .provider
                    .problem()
                    .map(|p| format!("pool {name}: {p}"))
            })
            .collect();
        problems.sort();
        problems
    }

    fn lock_scaler_tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, ScalerTask>> {
        self.scaler_tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stop a pool's scaler; it drains and releases its workers in the background.
    fn stop_pool(&self, name: &str) {
        self.scalers.remove(name);
        // A followed source (names in DNS) stops with its pool: its feed's end closes the
        // stream, which ends the lookups.
        if let Some(feed) = self.lock_sources().remove(name).and_then(|s| s.feed) {
            feed.abort();
        }
        if let Some(task) = self.lock_scaler_tasks().remove(name) {
            let _ = task.stop.send(true);
            tokio::spawn(async move {
                let _ = task.task.await;
            });
        }
    }

    /// Stop every scaler and wait until their workers are released.
    pub async fn stop_all(&self) {
        let tasks: Vec<ScalerTask> = self.lock_scaler_tasks().drain().map(|(_, t)| t).collect();
        for task in &tasks {
            let _ = task.stop.send(true);
        }
        for task in tasks {
            let _ = task.task.await;
        }
    }

    /// Load the config file again and swap it in: routes, pools (added, removed, changed
    /// policy), certificates, limits and logs, without dropping a connection or an in-flight
    /// request. All or nothing: everything is parsed, validated and built first (file and
    /// certificate work on a blocking thread, so probes and scalers carry on meanwhile); if any
    /// step fails, nothing live has changed and the error is returned. Returns what changed,
    /// one entry per change. It runs on the control thread whichever thread asks.
    pub async fn reload(self: &Arc<Self>) -> Result<Vec<String>, String> {
        let runtime = self
            .runtime
            .get()
            .ok_or("the control plane is not running; nothing to reload")?;
        let me = Arc::clone(self);
        runtime
            .spawn(async move { me.reload_on_control_thread().await })
            .await
            .map_err(|e| format!("reload task failed: {e}"))?
    }

    async fn reload_on_control_thread(&self) -> Result<Vec<String>, String> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let path = self
            .config_path
            .clone()
            .ok_or("weir was started without a config file; nothing to reload")?;
        let origin = path.display().to_string();
        let new_config = off_thread(move || config::load(&path).map_err(|e| e.to_string())).await?;
        let old = self.shared.snapshot_full();
        config::changes::check_restart_only(&old.config, &new_config)?;

        // Plan: which pools stay (with their new settings built now), which start afresh.
        let mut changes = Vec::new();
        let mut kept = Vec::new();
        let mut rollouts = Vec::new();
        let mut carried_pools = HashMap::new();
        let mut added = Vec::new();
        for (name, pc) in &new_config.pools {
            match (old.pools.get(name), old.config.pools.get(name)) {
                (Some(pool), Some(old_pc))
                    if old_pc.provider == pc.provider
                        || (old_pc.provider.same_engine(&pc.provider)
                            && self.scalers.get(name).is_some_and(|s| {
                                s.template() == pc.provider.template_revision()
                            })) =>
                {
                    if old_pc.provider != pc.provider {
                        // The template the workers run (a rollback restored it, or only how
                        // weir handles workers changed): nothing to roll out.
                        changes.push(format!(
                            "pools.{name}.provider: changed, same launch template as the workers run; the other settings apply from the next revision"
                        ));
                    }
                    transport_changes(name, old_pc, pc, &mut changes);
                    let settings = PoolSettings::from_config(pc);
                    let policy = match self.scalers.get(name) {
                        Some(scaler) => {
                            let autoscale = pc.autoscale.clone().unwrap_or_default();
                            let policy =
                                ScalePolicy::from_config(&autoscale, pc.worker_concurrency);
                            scaler.set_rollout_settings(pc.rollout.clone());
                            if old_pc.revision != pc.revision {
                                // A new name for the same template: workers launched from
                                // now on carry it.
                                scaler.set_revision(pc.revision());
                                changes.push(format!("pools.{name}.revision: changed"));
                            }
                            Some((Arc::clone(scaler.value()), policy))
                        }
                        None => None,
                    };
                    kept.push((Arc::clone(pool), settings, policy));
                    carried_pools.insert(name.clone(), Arc::clone(pool));
                }
                (Some(pool), Some(old_pc))
                    if old_pc.provider.same_engine(&pc.provider)
                        && self.scalers.contains_key(name) =>
                {
                    // A new launch template on the same engine: the pool stays (its queue,
                    // counters and waiting requests) and its workers are replaced gradually.
                    let provider = provider::from_config(name, &pc.provider)
                        .map_err(|e| format!("pools.{name}.provider: {e}"))?;
                    transport_changes(name, old_pc, pc, &mut changes);
                    let settings = PoolSettings::from_config(pc);
                    let autoscale = pc.autoscale.clone().unwrap_or_default();
                    let policy = ScalePolicy::from_config(&autoscale, pc.worker_concurrency);
                    let Some(scaler) = self.scalers.get(name).map(|s| Arc::clone(s.value())) else {
                        continue;
                    };
                    changes.push(format!(
                        "pools.{name}: new revision {}, rolling out",
                        pc.revision().unwrap_or_default()
                    ));
                    rollouts.push((
                        Arc::clone(&scaler),
                        provider,
                        (pc.revision(), pc.provider.template_revision()),
                        pc.rollout.clone(),
                    ));
                    kept.push((Arc::clone(pool), settings, Some((scaler, policy))));
                    carried_pools.insert(name.clone(), Arc::clone(pool));
                }
                (Some(_), _) => {
                    changes.push(format!("pools.{name}: provider changed, workers replaced"));
                    added.push(name.clone());
                }
                (None, _) => {
                    changes.push(format!("pools.{name}: added"));
                    added.push(name.clone());
                }
            }
        }
        let removed: Vec<String> = old
            .pools
            .keys()
            .filter(|name| !carried_pools.contains_key(*name))
            .cloned()
            .collect();
        for name in &removed {
            if !new_config.pools.contains_key(name) {
                changes.push(format!(
                    "pools.{name}: removed (workers drained and released)"
                ));
            }
        }
        let snapshot = {
            let old = Arc::clone(&old);
            off_thread(move || {
                let carried = Carried {
                    pools: carried_pools,
                    routes: Some(&old.routes),
                    alerts: Arc::clone(&old.alerts),
                    temp_files: Some(Arc::clone(&old.temp_files)),
                    certs: Some(Arc::clone(&old.certs)),
                };
                Snapshot::build_carrying(new_config, &origin, carried).map_err(|e| e.to_string())
            })
            .await?
        };

        // Nothing can fail from here on: apply.
        for (pool, settings, policy) in &kept {
            if pool.apply(settings) {
                changes.push(format!("pools.{}: policy changed", pool.name));
            }
            if let Some((scaler, policy)) = policy {
                if *scaler.policy() != *policy {
                    scaler.set_policy(policy.clone());
                    changes.push(format!("pools.{}.autoscale: changed", pool.name));
                }
            }
        }
        changes.extend(config::changes::describe(&old.config, &snapshot.config));
        let new_config = Arc::clone(&snapshot.config);
        let new_pools = snapshot.pools.clone();
        self.shared.publish(snapshot);
        let old_proxy_max = self
            .shared
            .connections
            .resize(crate::limit::nofile::client_cap(&new_config));
        let old_admin_max = self
            .admin_connections
            .resize(new_config.admin.max_connections);
        if old_proxy_max != new_config.server.max_connections
            || old_admin_max != new_config.admin.max_connections
        {
            crate::limit::nofile::check(&new_config);
        }

        for (scaler, provider, revision, settings) in rollouts {
            scaler.start_rollout(provider, revision, settings);
        }
        for name in &removed {
            self.stop_pool(name);
        }
        for name in &added {
            if let (Some(pool), Some(pc)) = (new_pools.get(name), new_config.pools.get(name)) {
                self.start_pool(name, pool, pc);
            }
        }
        info!(changes = ?changes, "config reloaded");
        Ok(changes)
    }
}

/// What a reload changes in how a kept pool's workers are reached and picked: the new
/// transport takes over for new connections (pooled ones made with the old one are not
/// reused), the new affinity from the next request.
fn transport_changes(name: &str, old: &PoolConfig, new: &PoolConfig, changes: &mut Vec<String>) {
    if old.protocol != new.protocol || old.tls != new.tls {
        changes.push(format!(
            "pools.{name}: protocol or tls changed (new connections to its workers use it)"
        ));
    }
    if old.sticky != new.sticky {
        changes.push(format!(
            "pools.{name}.sticky: changed (applies from the next request)"
        ));
    }
}

/// Run file work on a blocking thread, so the control thread's probes and scalers never wait
/// for a disk.
async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("reload task failed: {e}"))?
}

/// Run the control plane on the calling thread until `shutdown` flips: start every pool (then
/// tell `pools_started`), evaluate alerts, sample history, take part in the fleet, reload on
/// SIGHUP. Then stop the scalers, which release their workers, and leave the fleet.
pub fn run(
    control: Arc<Control>,
    mut shutdown: watch::Receiver<bool>,
    pools_started: std::sync::mpsc::Sender<()>,
) {
    let runtime = match crate::server::current_thread_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            error!(error = %e, "cannot build the control runtime; no health checks, scaling or reload");
            return;
        }
    };
    let _ = control.runtime.set(runtime.handle().clone());
    runtime.block_on(async move {
        let snapshot = control.shared.snapshot_full();
        for (name, pool) in &snapshot.pools {
            if let Some(pc) = snapshot.config.pools.get(name) {
                control.start_pool(name, pool, pc);
            }
        }
        drop(snapshot);
        let _ = pools_started.send(());
        let shared = &control.shared;
        tokio::spawn(crate::alerts::run(Arc::clone(shared), Arc::clone(&control.activity)));
        tokio::spawn(crate::history::run(Arc::clone(shared), Arc::clone(&control.history)));
        tokio::spawn(crate::acme::run(Arc::clone(shared), shutdown.clone()));
        // The fleet stops after the scalers: the last instance to stop needs its lease to
        // release the workers.
        let (fleet_stop, fleet_stopped) = watch::channel(false);
        let fleet_task = control
            .fleet
            .as_ref()
            .map(|fleet| tokio::spawn(Arc::clone(fleet).run(Arc::clone(shared), fleet_stopped)));
        tokio::spawn(crate::heap::give_back_after_bursts());
        tokio::spawn(crate::telemetry::fold_samples_periodically());
        let sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        let mut sighup = match sighup {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; reload through the admin API");
                None
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(()) = async { match sighup.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {
                    match control.reload_on_control_thread().await {
                        Ok(changes) => info!(?changes, "SIGHUP: config reloaded"),
                        Err(e) => error!(error = %e, "SIGHUP: reload failed; the running config stays"),
                    }
                }
            }
        }
        if let Some(fleet) = &control.fleet {
            fleet.leave().await;
        }
        control.stop_all().await;
        let _ = fleet_stop.send(true);
        if let Some(task) = fleet_task {
            let _ = task.await;
        }
    });
}

/// A pool's member source that no scaler owns.
struct Source {
    provider: Arc<dyn crate::provider::Provider>,
    /// The task applying its updates to the pool.
    feed: Option<tokio::task::JoinHandle<()>>,
}
