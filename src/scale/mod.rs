//! The autoscaler. One [`PoolScaler`] per launchable pool owns every transition of that pool,
//! 0 <-> 1 <-> N. Each step reads top to bottom: gather the signals (books.rs), ask the pure
//! [`policy::decide`] (every gate is there), carry the decision out (launches, releases and
//! exits live in lifecycle.rs). It samples every 100 ms and at once when a request starts
//! waiting; on start it adopts the workers its provider lists. Timing uses tokio's clock, so
//! tests drive it on a paused clock.

mod activity;
mod books;
mod lifecycle;
pub mod policy;
mod rollout;

pub use crate::values::{unix_minutes_now, CivilMinute, Cron};
pub use activity::{Action, ActivityEvent, ActivityLog};
pub use books::{LAUNCH_BACKOFF_MAX, LAUNCH_BACKOFF_START};
pub use policy::{decide, Decision, GiveUp, ScalePolicy, Signals, WorkerSignal};
pub use rollout::{RolloutState, RolloutView};

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::fleet::{Fleet, FleetMember, PoolMembers};
use crate::membership::{Member, MemberUpdate, Membership};
use crate::pool::{Pool, Worker, WorkerState};
use crate::provider::Provider;
use books::Books;

/// How often the scaler samples its pool.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// How often the fleet's leader looks for workers the provider lists but the pool lacks (a
/// launch that returned to a leader deposed meanwhile, a release that could not be made).
const FLEET_RECONCILE_INTERVAL: Duration = Duration::from_secs(5);
/// How often a follower with no leader's record yet reads the provider's list of workers.
const FLEET_LIST_INTERVAL: Duration = Duration::from_secs(1);
/// Least lease left for a leader's provider call to go ahead.
const FLEET_CALL_MARGIN: Duration = Duration::from_millis(1000);

/// The scaler of one pool.
pub struct PoolScaler {
    pool: Arc<Pool>,
    membership: Arc<Membership>,
    /// Launches new workers (a rollout swaps it for the new revision's).
    provider: std::sync::RwLock<Arc<dyn Provider>>,
    /// The provider of each revision that still has workers, to release them through the one
    /// that launched them (a process provider holds its children).
    by_revision: Mutex<std::collections::HashMap<Option<String>, Arc<dyn Provider>>>,
    /// The rollout under way or last ended.
    rollout: Mutex<Option<rollout::Rollout>>,
    policy: ArcSwap<ScalePolicy>,
    activity: Arc<ActivityLog>,
    books: Mutex<Books>,
    pending_launches: AtomicU32,
    desired: AtomicU32,
    next_name: AtomicU64,
    /// The fleet this pool is scaled in, with `[cluster]`: only its leader decides and acts.
    fleet: std::sync::OnceLock<Arc<Fleet>>,
    /// The revision new workers are launched with (`None`: the provider has none).
    revision: ArcSwap<Option<String>>,
    /// The hash of the launch template new workers are launched from (a revision may be
    /// named by hand; a change of template is what a rollout is for).
    template: ArcSwap<Option<String>>,
    /// `[pools.NAME.rollout]`, for a rollout carried on after a restart or a new lead.
    rollout_settings: ArcSwap<crate::config::RolloutConfig>,
}

impl PoolScaler {
    /// A scaler for the pool `membership` feeds, launching through `provider`.
    pub fn new(
        membership: Arc<Membership>,
        provider: Arc<dyn Provider>,
        policy: ScalePolicy,
        activity: Arc<ActivityLog>,
    ) -> Arc<Self> {
        let pool = Arc::clone(membership.pool());
        pool.balancer()
            .set_surplus_penalty(policy.target_inflight.ceil() as u32);
        Arc::new(PoolScaler {
            desired: AtomicU32::new(policy.initial_workers),
            pool,
            membership,
            provider: std::sync::RwLock::new(provider),
            by_revision: Mutex::new(std::collections::HashMap::new()),
            rollout: Mutex::new(None),
            policy: ArcSwap::from_pointee(policy),
            activity,
            books: Mutex::new(Books::default()),
            pending_launches: AtomicU32::new(0),
            next_name: AtomicU64::new(1),
            fleet: std::sync::OnceLock::new(),
            revision: ArcSwap::from_pointee(None),
            template: ArcSwap::from_pointee(None),
            rollout_settings: ArcSwap::from_pointee(crate::config::RolloutConfig::default()),
        })
    }

    /// `[pools.NAME.rollout]` (start-up, reload).
    pub fn set_rollout_settings(&self, settings: crate::config::RolloutConfig) {
        self.rollout_settings.store(Arc::new(settings));
    }

    /// The hash of the launch template new workers are launched from.
    pub fn template(&self) -> Option<String> {
        self.template.load().as_ref().clone()
    }

    /// Launch new workers from the template whose hash is `template` (start-up).
    pub fn set_template(&self, template: Option<String>) {
        self.template.store(Arc::new(template));
    }

    /// The revision new workers are launched with.
    pub fn revision(&self) -> Option<String> {
        self.revision.load().as_ref().clone()
    }

    /// Launch new workers with `revision` from now on.
    pub fn set_revision(&self, revision: Option<String>) {
        self.revision.store(Arc::new(revision));
    }

    /// The provider new workers are launched through.
    fn provider(&self) -> Arc<dyn Provider> {
        Arc::clone(&self.provider.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The provider that launched workers of `revision`: the current one unless a rollout
    /// replaced it.
    fn provider_for(&self, revision: Option<&str>) -> Arc<dyn Provider> {
        let key = revision.map(str::to_string);
        let current = self.provider();
        if self.revision() == key {
            return current;
        }
        self.by_revision
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned()
            .unwrap_or(current)
    }

    fn books(&self) -> MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool it scales.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<ScalePolicy> {
        self.policy.load_full()
    }

    /// Swap in a new policy (config reload); the next step uses it.
    pub fn set_policy(&self, policy: ScalePolicy) {
        self.pool
            .balancer()
            .set_surplus_penalty(policy.target_inflight.ceil() as u32);
        self.policy.store(Arc::new(policy));
        self.pool.demand().notify_one();
    }

    /// Why the provider's component is unusable now, if it is (`/readyz`).
    pub fn provider_problem(&self) -> Option<String> {
        self.provider().problem()
    }

    /// The provider, described (admin API).
    pub fn describe(&self) -> String {
        self.provider().describe()
    }

    /// Workers the pool should have now (admin API).
    pub fn desired(&self) -> u32 {
        self.desired.load(Ordering::Relaxed)
    }

    /// Set the worker count by hand; applied on the next step (at once), clamped to
    /// [effective min, max]. The scaler carries on from there.
    pub fn set_manual(&self, workers: u32) {
        self.books().manual = Some(workers);
        self.pool.demand().notify_one();
    }

    /// Scale in `fleet`: only while this instance leads does the scaler decide and
    /// call the provider; otherwise it follows the provider's list of workers.
    pub fn join_fleet(&self, fleet: Arc<Fleet>) {
        let _ = self.fleet.set(fleet);
    }

    fn fleet(&self) -> Option<&Arc<Fleet>> {
        self.fleet.get()
    }

    /// Whether a provider call may go ahead now: always alone; in a fleet only while the lease
    /// is ours with half of it left (checked in Redis).
    async fn may_act(&self) -> bool {
        match self.fleet() {
            None => true,
            Some(fleet) => fleet.may_act(FLEET_CALL_MARGIN).await,
        }
    }

    /// Adopt what the provider lists, launch the rest of the initial workers, then step until
    /// `shutdown` flips; then drain and release every worker. In a fleet, the leader's steps
    /// take the fleet's launches over, and followers follow the provider's list.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        if self.fleet().is_some() {
            return self.run_in_fleet(shutdown).await;
        }
        self.run_alone(shutdown).await
    }

    async fn run_in_fleet(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(fleet) = self.fleet().cloned() else {
            return;
        };
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut listed_at: Option<Instant> = None;
        let mut reconciled: Option<Instant> = None;
        let mut led = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.pool.demand().notified() => {}
                _ = shutdown.changed() => break,
            }
            let leading = fleet.is_leader();
            if leading && !led {
                self.take_the_lead().await;
                self.resume_rollout();
            }
            led = leading;
            if leading {
                if reconciled.is_none_or(|t| t.elapsed() >= FLEET_RECONCILE_INTERVAL) {
                    reconciled = Some(Instant::now());
                    self.spawn_adopt_unknown();
                }
                self.step(Instant::now(), unix_minutes_now());
                fleet.publish(
                    &self.pool.name,
                    PoolMembers {
                        token: 0,
                        workers: self.fleet_members(),
                        split: self.pool.split(),
                        rollout: self.rollout_mark(),
                    },
                );
                continue;
            }
            // A count changed outside weir while following is the leader's doing, or the
            // leader sees it too: not this instance's to act on, now or once it leads.
            let _ = self.provider().outside_count();
            if self.pool.waiting() > 0 {
                // Requests wait here: the leader should know before the next heartbeat.
                fleet.nudge();
            }
            if fleet.records_current() && fleet.record(&self.pool.name).is_some() {
                self.follow_record(&fleet);
            } else if listed_at.is_none_or(|t| t.elapsed() >= FLEET_LIST_INTERVAL) {
                // No leader's record yet (a fleet starting), or none read lately, from Redis or
                // a peer (the last one read may list workers released since, whose addresses
                // other workers may have taken): the provider's list is the best knowledge
                // there is. A member is a worker the provider lists, not an address.
                listed_at = Some(Instant::now());
                self.follow_listed().await;
            }
        }
        self.release_all().await;
    }

    /// What every instance of the fleet should route to: the pool as this leader has it,
    /// the workers it retires marked draining and its surplus marked so (every instance then
    /// spares them, and they can go idle).
    fn fleet_members(&self) -> Vec<FleetMember> {
        let books = self.books();
        self.pool
            .workers()
            .iter()
            .map(|w| FleetMember {
                id: w.name.clone(),
                addr: w.addr,
                // A worker given up (unhealthy here) is retired too: nobody should use it.
                draining: w.state() == WorkerState::Draining || books.is_retiring(w.id),
                surplus: w.is_surplus(),
                revision: w.revision().map(str::to_string),
            })
            .collect()
    }

    /// A follower's members: the leader's record, applied every step (a no-op when nothing
    /// changed), so a worker this instance dropped on its own (a stale step of a deposed
    /// leader) comes back. Workers it marks draining get no new requests from here (the
    /// leader waits for this instance to report them idle before it releases them), and
    /// those it marks surplus are spared as at the leader.
    fn follow_record(&self, fleet: &Fleet) {
        let Some(record) = fleet.record(&self.pool.name) else {
            return; // none yet, or an empty Redis: keep the workers known
        };
        for member in &record.workers {
            self.skip_names_up_to(&member.id);
        }
        if !self.provider().joins_by_discovery() {
            let members = record
                .workers
                .iter()
                .map(|m| Member::probed(m.id.clone(), m.addr).with_revision(m.revision.clone()))
                .collect();
            self.membership.apply(MemberUpdate::Reset(members));
        }
        for member in &record.workers {
            let Some(worker) = self.pool.worker_named(&member.id) else {
                continue;
            };
            if member.draining {
                lifecycle::stop_routing(&worker);
                continue;
            }
            if worker.state() == WorkerState::Draining {
                // A drain the leader no longer asks for (a new leader that never saw it):
                // probed again, then routed to.
                info!(pool = %self.pool.name, worker = %worker.name, "the fleet's leader no longer drains it");
                worker.set_state(WorkerState::Starting);
            }
            worker.set_surplus(member.surplus);
        }
        // A canary's split, as the leader routes, and its rollout's state.
        self.pool.set_split(record.split.clone());
        self.mirror_rollout(record.rollout.as_ref());
    }

    /// A follower's members while no leader's record is known: what the provider lists.
    async fn follow_listed(&self) {
        if self.provider().joins_by_discovery() {
            return; // its discovery stream feeds the pool already
        }
        if let Some(listed) = self.listed("keeping the workers known").await {
            let members = listed
                .into_iter()
                .map(|h| Member::probed(h.id, h.addr).with_revision(h.revision))
                .collect();
            self.membership.apply(MemberUpdate::Reset(members));
        }
    }

    async fn run_alone(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let adopted = self.adopt().await;
        self.resume_rollout();
        let initial = self.policy().initial_workers.saturating_sub(adopted);
        if initial > 0 {
            self.activity.record(
                &self.pool.name,
                Action::ScaleUp,
                adopted,
                adopted + initial,
                format!("initial workers ({})", self.provider().describe()),
            );
            self.books().last_scale_up = Some(Instant::now());
            for _ in 0..initial {
                self.spawn_launch();
            }
        }
        let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.pool.demand().notified() => {}
                _ = shutdown.changed() => break,
            }
            self.step(Instant::now(), unix_minutes_now());
        }
        self.release_all().await;
    }

    /// One decision: gather the signals, decide, act. Public so tests can drive it.
    pub fn step(self: &Arc<Self>, now: Instant, now_minutes: u64) {
        let policy = self.policy();
        let workers = self.pool.workers();
        let outside = self.provider().outside_count();
        let decision = {
            let mut books = self.books();
            if let Some(count) = outside {
                // Someone scaled the workers by hand (`kubectl scale`): their count wins, as
                // an operator's through the admin API would.
                books.manual = Some(count);
                self.activity.record(
                    &self.pool.name,
                    Action::Manual,
                    self.desired(),
                    count,
                    "external".to_string(),
                );
            }
            let signals = self.signals(&mut books, &policy, &workers, now, now_minutes);
            let decision = decide(&policy, &signals);
            if decision.manual {
                // The operator's count starts a new history: load taken before it must not
                // undo it.
                books.clear_load();
            }
            if decision.launch > 0 {
                books.last_scale_up = Some(now);
            }
            if decision
                .give_up
                .iter()
                .any(|(_, g)| *g == GiveUp::NeverReady)
            {
                books.note_launch_failure(now);
            }
            decision
        };
        let desired = decision.desired;
        self.act(decision, &workers, &policy);
        self.rollout_step(desired, &policy);
    }

    /// What the pool looks like now, for the decision.
    fn signals(
        &self,
        books: &mut Books,
        policy: &ScalePolicy,
        workers: &[Arc<Worker>],
        now: Instant,
        now_minutes: u64,
    ) -> Signals {
        // In a fleet the leader decides on the whole fleet's load: the other instances'
        // requests on each worker, and theirs waiting.
        let others = self
            .fleet()
            .map(|f| f.others_load(&self.pool.name))
            .unwrap_or_default();
        let signals = books.observe(now, workers, &others.workers);
        // Demand is what is in flight on workers that stay, plus what waits.
        let in_flight: u64 = signals
            .iter()
            .filter(|w| w.state != WorkerState::Draining)
            .map(|w| u64::from(w.in_flight))
            .sum();
        let queued = self.pool.waiting() as u64 + others.queued;
        let load = in_flight + queued;
        let recent_peak = books.record_load(now, load as f64, policy.hold_window());
        Signals {
            workers: signals,
            pending_launches: self.pending_launches.load(Ordering::Relaxed),
            queued,
            recent_peak,
            now_minutes,
            backoff_left: books.backoff_left(now),
            since_scale_up: books.last_scale_up.map(|t| now.duration_since(t)),
            manual: books.manual.take(),
        }
    }

    /// Carry a decision out. In a fleet, only while surely leading: a leader resumed after a
    /// pause past its lease decides on a stale view, and what it would do is neither done
    /// nor recorded.
    fn act(self: &Arc<Self>, d: Decision, workers: &[Arc<Worker>], policy: &ScalePolicy) {
        let acts = d.launch > 0 || !d.release.is_empty() || !d.give_up.is_empty();
        if acts && self.fleet().is_some_and(|f| !f.leads_surely()) {
            warn!(pool = %self.pool.name, launch = d.launch, release = d.release.len(), "not sure to lead the fleet (lease not renewed within its TTL); the decision is dropped");
            return;
        }
        let find = |id: u64| workers.iter().find(|w| w.id == id).cloned();
        let count =
            |state: WorkerState| workers.iter().filter(|w| w.state() == state).count() as u32;
        let capacity = count(WorkerState::Ready)
            + count(WorkerState::Starting)
            + self.pending_launches.load(Ordering::Relaxed);
        for (id, why) in &d.give_up {
            if let Some(worker) = find(*id) {
                if *why == GiveUp::NeverReady {
                    self.note_rollout_failure();
                }
                self.activity.record(
                    &self.pool.name,
                    Action::Replace,
                    capacity,
                    capacity.saturating_sub(1),
                    format!("{}: {}", worker.name, why.as_str()),
                );
                self.spawn_retire(worker, Duration::ZERO);
            }
        }
        if d.fail_waiting {
            let failed = self.pool.fail_waiting();
            if failed > 0 {
                warn!(pool = %self.pool.name, failed, "no worker could be started; failing waiting requests");
            }
        }
        self.desired.store(d.desired, Ordering::Relaxed);
        for w in workers {
            w.set_surplus(d.surplus.contains(&w.id));
        }
        let action = |normal| if d.manual { Action::Manual } else { normal };
        if d.launch > 0 {
            self.activity.record(
                &self.pool.name,
                action(Action::ScaleUp),
                capacity,
                capacity + d.launch,
                d.reason.clone(),
            );
            for _ in 0..d.launch {
                self.spawn_launch();
            }
        }
        if !d.release.is_empty() {
            self.activity.record(
                &self.pool.name,
                action(Action::ScaleDown),
                capacity,
                capacity.saturating_sub(d.release.len() as u32),
                d.reason.clone(),
            );
            for id in &self.old_first(d.release.clone(), workers) {
                if let Some(worker) = find(*id) {
                    self.spawn_retire(worker, policy.drain_timeout);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
