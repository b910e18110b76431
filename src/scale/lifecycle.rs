//! Carrying decisions out: launching through the provider, adopting what it lists, noticing a
//! worker that dies on its own, and retiring one (stop routing, drain, leave the pool, release).
//! Workers join and leave only through the pool's [`crate::membership::Membership`].

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{Action, PoolScaler};
use crate::membership::{Member, MemberUpdate};
use crate::pool::{Worker, WorkerState};
use crate::provider::{ExitWatch, LaunchSpec, WorkerHandle};

/// How often a drain checks whether the worker's last request finished.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// How often [`PoolScaler::join`] looks for a worker its provider's discovery adds.
const JOIN_POLL: Duration = Duration::from_millis(10);
/// Longest an adopted worker may take to show up in its provider's discovery.
const JOIN_WAIT: Duration = Duration::from_secs(5);
/// Longest a shutdown waits for a release already under way, past the drain.
const RELEASE_WAIT: Duration = Duration::from_secs(10);
/// Longest a provider's list call may take at start before weir goes on without adopting.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(30);

impl PoolScaler {
    /// Adopt the workers the provider lists (an earlier weir's launches): they join as
    /// `starting`, are probed like any member and count toward the pool's size; those above
    /// `max_workers` are released at once, and those that never pass a probe are given up by
    /// the startup deadline. Returns how many were adopted.
    pub(super) async fn adopt(self: &Arc<Self>) -> u32 {
        let Some(listed) = self.listed("none adopted").await else {
            return 0;
        };
        if listed.is_empty() {
            return 0;
        }
        let max = self.policy().max_workers as usize;
        let total = listed.len() as u32;
        let mut adopted = 0;
        for (i, handle) in listed.into_iter().enumerate() {
            if i >= max {
                info!(pool = %self.pool.name, worker = %handle.id, "listed worker above max_workers; releasing it");
                let me = Arc::clone(self);
                tokio::spawn(async move {
                    if let Err(e) = me.provider().release(handle.clone()).await {
                        warn!(pool = %me.pool.name, worker = %handle.id, error = %e, "release failed");
                    }
                });
                continue;
            }
            self.skip_names_up_to(&handle.id);
            let exited = self.provider().watch(&handle);
            if let Some(worker) = self.join(&handle, Instant::now() + JOIN_WAIT).await {
                self.books().track(Instant::now(), &worker);
                adopted += 1;
                if let Some(exited) = exited {
                    tokio::spawn(Arc::clone(self).watch_exit(Arc::downgrade(&worker), exited));
                }
            }
        }
        self.activity.record(
            &self.pool.name,
            Action::Adopt,
            0,
            adopted,
            format!(
                "adopted {adopted} running worker(s) listed by the provider{}",
                if total > adopted {
                    format!("; released {} above max_workers", total - adopted)
                } else {
                    String::new()
                }
            ),
        );
        adopted
    }

    /// Become the fleet's scaler of this pool: the workers followed so far are the pool's,
    /// and what the provider lists beyond them (a launch the last leader had not yet written
    /// down) is adopted, so nothing is relaunched and nothing is orphaned. Exit watches go on
    /// the workers, as on launches.
    pub(super) async fn take_the_lead(self: &Arc<Self>) {
        let before = self.pool.workers().len() as u32;
        let found = self.adopt_unlisted_members(false).await;
        for worker in self.pool.workers().iter() {
            self.skip_names_up_to(&worker.name);
            let handle = WorkerHandle {
                id: worker.name.clone(),
                addr: worker.addr,
                revision: worker.revision().map(str::to_string),
            };
            if let Some(exited) = self.provider().watch(&handle) {
                tokio::spawn(Arc::clone(self).watch_exit(Arc::downgrade(worker), exited));
            }
            if worker.state() == WorkerState::Draining && !self.books().is_retiring(worker.id) {
                // The last leader was draining it: finish the drain and release it.
                self.spawn_retire(Arc::clone(worker), self.policy().drain_timeout);
            }
        }
        self.activity.record(
            &self.pool.name,
            Action::Adopt,
            before,
            before + found,
            format!(
                "took the fleet's lead: {before} worker(s) followed, {found} more listed by the provider"
            ),
        );
    }

    /// Add what the provider lists but the pool lacks (not for providers whose discovery
    /// feeds the pool); how many were added. `quiet_only`: add nothing if a launch or a
    /// release started meanwhile.
    async fn adopt_unlisted_members(&self, quiet_only: bool) -> u32 {
        if self.provider().joins_by_discovery() {
            return 0;
        }
        let Some(listed) = self.listed("going on with the known ones").await else {
            return 0;
        };
        if quiet_only && !self.quiet() {
            return 0;
        }
        let mut found = 0;
        for handle in listed {
            self.skip_names_up_to(&handle.id);
            if self.pool.worker_named(&handle.id).is_none() {
                let member = Member::probed(handle.id.clone(), handle.addr)
                    .with_revision(handle.revision.clone());
                found += self.membership.apply(MemberUpdate::Added(member)).len() as u32;
            }
        }
        found
    }

    /// While leading, now and then: adopt workers the provider lists that the pool lacks (a
    /// launch that returned to a leader deposed meanwhile, a release that could not be
    /// made), so none runs unrouted and unreleased. Only while no launch or release is under
    /// way, which would be listed before the pool has (or no longer has) it.
    pub(super) fn spawn_adopt_unknown(self: &Arc<Self>) {
        if !self.quiet() {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let before = me.pool.workers().len() as u32;
            let found = me.adopt_unlisted_members(true).await;
            if found > 0 {
                me.activity.record(
                    &me.pool.name,
                    Action::Adopt,
                    before,
                    before + found,
                    format!("{found} running worker(s) listed by the provider were in no instance's pool"),
                );
            }
        });
    }

    /// What the provider lists, within [`LIST_TIMEOUT`]; `None` (logged, with what the caller
    /// does instead) when the call fails or takes too long. During a rollout, the older
    /// revisions' providers list theirs too (a Docker provider lists the containers of its
    /// own image).
    pub(super) async fn listed(&self, otherwise: &str) -> Option<Vec<WorkerHandle>> {
        let mut providers = vec![self.provider()];
        providers.extend(
            self.by_revision
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .values()
                .cloned(),
        );
        let lists = futures_util::future::join_all(providers.iter().map(|p| p.list()));
        match tokio::time::timeout(LIST_TIMEOUT, lists).await {
            Ok(lists) => {
                let mut all: Vec<WorkerHandle> = Vec::new();
                for list in lists {
                    match list {
                        Ok(listed) => {
                            for handle in listed {
                                if !all.iter().any(|h| h.id == handle.id) {
                                    all.push(handle);
                                }
                            }
                        }
                        Err(e) => {
                            warn!(pool = %self.pool.name, error = %e, "cannot list the workers; {otherwise}");
                            return None;
                        }
                    }
                }
                Some(all)
            }
            Err(_) => {
                warn!(pool = %self.pool.name, timeout = ?LIST_TIMEOUT, "listing the workers timed out; {otherwise}");
                None
            }
        }
    }

    /// No launch and no release under way.
    fn quiet(&self) -> bool {
        self.pending_launches.load(Ordering::Relaxed) == 0 && !self.books().any_retiring()
    }

    pub(super) fn spawn_launch(self: &Arc<Self>) {
        self.pending_launches.fetch_add(1, Ordering::Relaxed);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            me.launch_one().await;
            me.pending_launches.fetch_sub(1, Ordering::Relaxed);
            // Re-decide now: the launch changed capacity.
            me.pool.demand().notify_one();
        });
    }

    /// The pool's worker for a handle the provider gave (a launch or a listed worker): added
    /// to the pool here, or, for a provider whose discovery adds its workers, the member that
    /// shows up by `deadline`. `None`: it is already a member under the scaler (a duplicate)
    /// or never showed up.
    async fn join(&self, handle: &WorkerHandle, deadline: Instant) -> Option<Arc<Worker>> {
        if !self.provider().joins_by_discovery() {
            let member = Member::probed(handle.id.clone(), handle.addr)
                .with_revision(handle.revision.clone());
            return self
                .membership
                .apply(MemberUpdate::Added(member))
                .into_iter()
                .next();
        }
        loop {
            if let Some(worker) = self.pool.worker_named(&handle.id) {
                return Some(worker);
            }
            if Instant::now() >= deadline {
                warn!(pool = %self.pool.name, worker = %handle.id, "the provider's worker did not show up in its discovery");
                return None;
            }
            tokio::time::sleep(JOIN_POLL).await;
        }
    }

    /// New launch names go above the number an adopted worker's id ends in ("weir-app-3"), so
    /// a replacement never takes the name of a worker that is still going away.
    pub(super) fn skip_names_up_to(&self, id: &str) {
        let number = id.rsplit('-').next().and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = number {
            self.next_name
                .fetch_max(n.saturating_add(1), Ordering::Relaxed);
        }
    }

    /// A launch name not in use by a member (adopted workers keep theirs).
    fn next_name(&self) -> String {
        loop {
            let n = self.next_name.fetch_add(1, Ordering::Relaxed);
            let name = format!("{}-{n}", self.pool.name);
            if self.pool.worker_named(&name).is_none() {
                return name;
            }
        }
    }

    async fn launch_one(self: &Arc<Self>) {
        // The fence first: a refused launch spends no name.
        if !self.may_act().await {
            warn!(pool = %self.pool.name, "no longer the fleet's leader; not launching");
            return;
        }
        let name = self.next_name();
        let spec = LaunchSpec {
            pool: self.pool.name.clone(),
            name: name.clone(),
            revision: self.revision(),
        };
        let timeout = self.policy().startup_timeout;
        let called = Instant::now();
        let failure = match tokio::time::timeout(timeout, self.provider().launch(spec)).await {
            Ok(Ok(launched)) => {
                let call = called.elapsed();
                let handle = launched.handle;
                info!(pool = %self.pool.name, worker = %handle.id, addr = %handle.addr, launch_call = ?call, "launch call returned (worker created and started)");
                let addr = handle.addr;
                if let Some(worker) = self.join(&handle, called + timeout).await {
                    if worker.revision().map(str::to_string) != self.revision() {
                        // Its revision was given up while it started (a rollout aborted or
                        // rolled back): nothing would ever retire it.
                        info!(pool = %self.pool.name, worker = %worker.name, revision = ?worker.revision(), "launched for a revision given up meanwhile; released");
                        self.spawn_retire(worker, Duration::ZERO);
                        return;
                    }
                    self.books().track(Instant::now(), &worker);
                    if let Some(exited) = launched.exited {
                        tokio::spawn(Arc::clone(self).watch_exit(Arc::downgrade(&worker), exited));
                    }
                    let pool = self.pool.name.clone();
                    tokio::spawn(report_cold_start(
                        pool,
                        Arc::downgrade(&worker),
                        called,
                        call,
                        timeout,
                    ));
                    return;
                }
                format!("the provider returned a worker already in the pool ({addr})")
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("launch did not return within {timeout:?}"),
        };
        // This launch is still counted in `pending_launches`.
        self.launch_failed(&name, &failure, 1);
    }

    /// Book a launch that failed (the call, or the worker dying before its first passing
    /// probe): backoff, a `launch_failed` activity, and a 503 for the requests that were
    /// waiting only on it. `counted` is how many of `pending_launches` are this one.
    fn launch_failed(&self, name: &str, failure: &str, counted: u32) {
        self.books().note_launch_failure(Instant::now());
        self.note_rollout_failure();
        let workers = self.pool.workers();
        let ready = workers
            .iter()
            .filter(|w| w.state() == WorkerState::Ready)
            .count() as u32;
        self.activity.record(
            &self.pool.name,
            Action::LaunchFailed,
            ready,
            ready,
            format!("{name}: {failure}"),
        );
        let others_starting = self.pending_launches.load(Ordering::Relaxed) > counted
            || workers.iter().any(|w| w.state() == WorkerState::Starting);
        if ready == 0 && !others_starting {
            let failed = self.pool.fail_waiting();
            if failed > 0 {
                warn!(pool = %self.pool.name, failed, "launch failed and no worker is ready; failing waiting requests");
            }
        }
    }

    /// Replace a worker that died on its own.
    async fn watch_exit(self: Arc<Self>, worker: Weak<Worker>, exited: ExitWatch) {
        let reason = exited.await;
        let Some(worker) = worker.upgrade() else {
            return;
        };
        if self.books().is_retiring(worker.id) {
            return; // we stopped it
        }
        worker.set_state(WorkerState::Unhealthy);
        if self.fleet().is_some_and(|f| !f.leads_surely()) {
            // Launched while leading, exited since: most likely the leader of now released
            // it. Replacing it is the leader's business; this instance stops routing to it and
            // drops it when the leader's record (or the provider's listing) does.
            debug!(pool = %self.pool.name, worker = %worker.name, %reason, "a worker launched while leading exited; left to the leader");
            return;
        }
        if worker.first_ready_at().is_none() {
            // It never served: this launch failed, with the same backoff and 503s.
            self.launch_failed(
                &worker.name,
                &format!("exited before it was ready: {reason}"),
                0,
            );
            self.spawn_retire(worker, Duration::ZERO);
            return;
        }
        let count = self.pool.workers().len() as u32;
        self.activity.record(
            &self.pool.name,
            Action::Replace,
            count,
            count.saturating_sub(1),
            format!("{}: {reason}", worker.name),
        );
        self.spawn_retire(worker, Duration::ZERO);
    }

    /// Stop routing to `worker` at once, let its in-flight requests finish (up to `drain`),
    /// then take it out of the pool and release it through the provider.
    pub(super) fn spawn_retire(self: &Arc<Self>, worker: Arc<Worker>, drain: Duration) {
        if !self.books().start_retiring(Instant::now(), &worker) {
            return;
        }
        stop_routing(&worker);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            me.retire(&worker, drain).await;
            me.pool.demand().notify_one();
        });
    }

    async fn retire(&self, worker: &Arc<Worker>, drain: Duration) {
        stop_routing(worker);
        let deadline = Instant::now() + drain;
        // In a fleet, every instance must have stopped routing to it and finished its
        // requests on it; the leader's record marks it draining for them.
        let drained = || {
            worker.in_flight() == 0
                && self
                    .fleet()
                    .is_none_or(|f| f.drained_everywhere(&self.pool.name, &worker.name))
        };
        // A leader deposed meanwhile stops waiting: the worker is the next leader's to keep
        // or release, and this instance routes to it again once it follows the record.
        let deposed = || self.fleet().is_some_and(|f| !f.is_leader());
        while !drained() && !deposed() && Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        if !drained() && !deposed() {
            warn!(pool = %self.pool.name, worker = %worker.name, in_flight = worker.in_flight(), "drain timed out; releasing anyway");
        }
        self.membership
            .apply(MemberUpdate::Removed(worker.name.clone()));
        let handle = WorkerHandle {
            id: worker.name.clone(),
            addr: worker.addr,
            revision: worker.revision().map(str::to_string),
        };
        if !self.may_act().await {
            warn!(pool = %self.pool.name, worker = %worker.name, "no longer the fleet's leader; leaving the worker to the next one");
            self.books().workers.remove(&worker.id);
            return;
        }
        if let Err(e) = self.provider_for(worker.revision()).release(handle).await {
            warn!(pool = %self.pool.name, worker = %worker.name, error = %e, "release failed");
        }
        info!(pool = %self.pool.name, worker = %worker.name, "worker released");
        self.books().workers.remove(&worker.id);
    }

    /// Drain and release every worker (shutdown), those already being retired too (their own
    /// tasks may not outlive the control runtime, and a release must not fail on one gone)
    /// and those whose launch was still under way.
    pub async fn release_all(&self) {
        if let Some(fleet) = self.fleet() {
            // Handed over, unless the fleet ends here: then its leader releases them.
            if !(fleet.is_leader() && fleet.last_to_leave()) {
                info!(pool = %self.pool.name, "leaving the workers to the fleet");
                return;
            }
            info!(pool = %self.pool.name, "the whole fleet is stopping; its leader releases the workers");
        }
        if self.provider().keeps_workers_on_stop() {
            info!(pool = %self.pool.name, provider = %self.provider().describe(), "leaving the workers to their owner");
            return;
        }
        // A launch still under way would leave its worker behind (a container started after
        // the last release): wait for it, bounded by the startup deadline, and release it too.
        let deadline = Instant::now() + self.policy().startup_timeout;
        while self.pending_launches.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
        }
        let workers = self.pool.workers();
        let drain = self.policy().drain_timeout;
        let now = Instant::now();
        for w in workers.iter() {
            self.books().start_retiring(now, w);
        }
        join_all(workers.iter().map(|w| self.retire(w, drain))).await;
        // Retirements that had already left the pool may still be releasing.
        let deadline = Instant::now() + drain + RELEASE_WAIT;
        while self.books().any_retiring() && Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }
}

/// How often a launch looks whether its worker is ready yet, to report its cold start (the
/// moment itself is stamped by the worker, so this only bounds when the report is logged).
const COLD_START_POLL: Duration = Duration::from_millis(10);

/// Once a launched worker is ready, record its cold start (launch call to ready) in
/// `weir_cold_start_seconds{pool}` and log the phases: the provider's launch call (create and
/// start), then the wait for the first passing probe. Gives up with the startup deadline or
/// when the worker leaves the pool.
async fn report_cold_start(
    pool: String,
    worker: Weak<Worker>,
    called: Instant,
    call: Duration,
    deadline: Duration,
) {
    while called.elapsed() <= deadline {
        let Some(w) = worker.upgrade() else { return };
        if let Some(ready_at) = w.first_ready_at() {
            let cold = ready_at.saturating_duration_since(called);
            crate::telemetry::record_cold_start(&pool, cold.as_secs_f64());
            info!(pool = %pool, worker = %w.name, cold_start = ?cold, launch_call = ?call, first_probe_pass = ?cold.saturating_sub(call), "worker ready after its launch");
            return;
        }
        drop(w);
        tokio::time::sleep(COLD_START_POLL).await;
    }
}

/// Take a worker out of rotation at once: no new request will pick it.
pub(super) fn stop_routing(worker: &Worker) {
    if matches!(worker.state(), WorkerState::Ready | WorkerState::Starting) {
        worker.set_state(WorkerState::Draining);
    }
    worker.set_surplus(false);
}

/// Await all futures concurrently (a tiny join_all, to avoid a futures crate dependency).
async fn join_all<F: std::future::Future<Output = ()>>(futures: impl Iterator<Item = F>) {
    let mut set: Vec<_> = futures.map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        set.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if set.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}
