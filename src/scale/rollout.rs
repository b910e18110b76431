//! Rollouts: when a reload changes only a pool's launch template, the new revision's workers
//! replace the old one's gradually, in the scaler's own steps. Up to `max_surge` new workers
//! start beyond the pool's count; each that has been ready for `min_ready` lets one old worker
//! be drained and released, so the ready workers never fall below what the load needs (nor
//! `min_workers` minus `max_unavailable`) and no request waits for a cold worker. Autoscaling
//! goes on: its launches are of the new revision and its scale-in takes old workers first. New
//! workers that fail to start `failure_threshold` times in a row roll the revision back: they
//! go, and the old revision's template is the pool's again until the config changes.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{Action, PoolScaler, ScalePolicy};
use crate::config::RolloutConfig;
use crate::fleet::RolloutMark;
use crate::pool::{AnswerCounts, RevisionSplit, Worker, WorkerState};
use crate::provider::Provider;

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Replacing old workers.
    Running,
    /// Held by an operator: no new worker is started for it and no old one retired.
    Paused,
    /// Every old worker replaced.
    Done,
    /// The new revision was given up (its workers failed to start).
    RolledBack,
    /// Stopped by an operator: the new revision's workers went, the old template is back.
    Aborted,
}

/// A rollout from one revision to the next.
#[derive(Debug)]
pub struct Rollout {
    from: Option<String>,
    /// The old revision's template hash, restored with it on a rollback.
    from_template: Option<String>,
    to: String,
    state: RolloutState,
    settings: RolloutConfig,
    /// New workers that failed to start since one last became ready.
    failures: u32,
    /// When each new worker was first seen ready (for `min_ready`).
    ready_since: HashMap<u64, Instant>,
    /// Old workers retired so far.
    replaced: u32,
    started: Instant,
    /// The canary step under way (`settings.steps.len()`: past them, replacing).
    step: usize,
    /// When the step's hold began (a new worker ready), with the answers counted by then.
    step_began: Option<(Instant, Answers)>,
    /// The last gate's verdict.
    gate: Option<String>,
}

/// The answers of the old revisions and of the new one, counted together.
#[derive(Debug, Clone, Default)]
pub(super) struct Answers {
    old: AnswerCounts,
    new: AnswerCounts,
}

impl Answers {
    fn since(&self, earlier: &Answers) -> Answers {
        Answers {
            old: self.old.since(&earlier.old),
            new: self.new.since(&earlier.new),
        }
    }
}

/// Fewer answers than this on either side leave the latency gate out (a p99 of a handful of
/// answers is one answer).
const LATENCY_GATE_MIN_ANSWERS: u64 = 20;

/// `rollout` in `GET /api/v1/pools`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutView {
    /// running | paused | done | rolled_back | aborted
    pub state: RolloutState,
    /// The revision being replaced (null: workers of unknown revision).
    pub from: Option<String>,
    /// The revision rolled out.
    pub to: String,
    /// Ready workers of the old revision.
    pub old_ready: u32,
    /// Ready workers of the new revision.
    pub new_ready: u32,
    /// Old workers retired so far.
    pub replaced: u32,
    /// New workers that failed to start in a row.
    pub failures: u32,
    /// The canary step under way, from 1 (null: no steps, or past them).
    pub step: Option<u32>,
    /// How many canary steps the rollout has.
    pub steps: u32,
    /// Percent of the pool's requests sent to the new revision now (null: no split).
    pub weight: Option<u32>,
    /// The last canary gate's verdict, with the figures it judged.
    pub gate: Option<String>,
}

/// What one rollout step asks for, decided with the rollout's lock held and carried out after.
#[derive(Default)]
struct RolloutActions {
    launch: u32,
    retire: Vec<(Arc<Worker>, Duration)>,
    record: Option<(Action, String)>,
    ended: Option<&'static str>,
    /// The revision and template hash to go back to.
    restore: Option<(Option<String>, Option<String>)>,
    /// A revision whose provider is kept after the rollout ends (`undo`).
    keep: Option<Option<String>>,
    /// The split of requests to set (`Some(None)`: none).
    split: Option<Option<RevisionSplit>>,
}

impl PoolScaler {
    fn rollout_lock(&self) -> MutexGuard<'_, Option<Rollout>> {
        self.rollout.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replace the pool's workers with those of `revision` (whose template hash is
    /// `template`), launched through `provider` (a reload changed the launch template). A
    /// rollout under way is overtaken: workers of every other revision are old now.
    pub fn start_rollout(
        &self,
        provider: Arc<dyn Provider>,
        (revision, template): (Option<String>, Option<String>),
        settings: RolloutConfig,
    ) {
        let from = self.revision();
        let from_template = self.template();
        // The new provider owns the old workers too, should weir restart before they go.
        provider.succeed(self.provider().lineage());
        self.switch_template(provider, revision.clone(), template);
        // A canary under way is overtaken too: the new rollout's steps split anew.
        self.pool.set_split(None);
        let Some(to) = revision else {
            return;
        };
        let count = self.pool.workers().len() as u32;
        self.activity.record(
            &self.pool.name,
            Action::Rollout,
            count,
            count,
            format!("{} -> {to}: started", label(from.as_deref())),
        );
        *self.rollout_lock() = Some(Rollout::begin(from, from_template, to, settings));
        self.pool.demand().notify_one();
    }

    /// Carry on a rollout that another weir began (a restart, a new leader): when the pool
    /// has workers of another known revision than the one it launches, they are replaced as
    /// in a rollout. Their template is not known here, so such a rollout cannot roll back to
    /// it; a failing new revision then stops, leaving the old workers.
    pub(super) fn resume_rollout(&self) {
        let Some(to) = self.revision() else {
            self.pool.set_split(None);
            return;
        };
        if self
            .rollout_lock()
            .as_ref()
            .is_some_and(|r| r.state == RolloutState::Running)
        {
            return;
        }
        // A split followed from a former leader's record is this one's only while its own
        // rollout (carried on below) sets it again.
        self.pool.set_split(None);
        let workers = self.pool.workers();
        let Some(from) = workers
            .iter()
            .filter_map(|w| w.revision())
            .find(|r| *r != to)
            .map(str::to_string)
        else {
            return;
        };
        let count = workers.len() as u32;
        self.activity.record(
            &self.pool.name,
            Action::Rollout,
            count,
            count,
            format!("{from} -> {to}: carried on (workers of {from} found at start or on taking the lead)"),
        );
        let settings = self.rollout_settings.load().as_ref().clone();
        *self.rollout_lock() = Some(Rollout::begin(Some(from), None, to, settings));
        self.pool.demand().notify_one();
    }

    /// An operator's hand on the rollout (`POST /api/v1/pools/{name}/rollout`, `weir
    /// rollout`): `pause`, `resume`, `abort` (the new revision's workers go, the old template
    /// is back) or `undo` (a finished rollout is rolled out backwards). Returns the rollout
    /// as it stands, or why the action does not apply now.
    pub fn rollout_action(self: &Arc<Self>, action: &str) -> Result<RolloutView, String> {
        let state = self.rollout_lock().as_ref().map(|r| r.state);
        let Some(state) = state else {
            return Err("no rollout: a reload that changes the launch template starts one".into());
        };
        match (action, state) {
            ("status", _) => {}
            ("pause", RolloutState::Running) => self.set_rollout_state(RolloutState::Paused),
            ("resume", RolloutState::Paused) => {
                self.set_rollout_state(RolloutState::Running);
                self.pool.demand().notify_one();
            }
            ("abort", RolloutState::Running | RolloutState::Paused) => self.abort_rollout(),
            ("undo", RolloutState::Done) => self.undo_rollout()?,
            ("pause" | "resume" | "abort" | "undo", state) => {
                return Err(format!(
                    "cannot {action} a rollout that is {}",
                    state_name(state)
                ))
            }
            (other, _) => {
                return Err(format!(
                    "unknown action {other:?}: status, pause, resume, abort or undo"
                ))
            }
        }
        self.rollout_view()
            .ok_or_else(|| "the rollout is gone".to_string())
    }

    /// The rollout as the fleet's record carries it (a leader publishes it).
    pub(super) fn rollout_mark(&self) -> Option<RolloutMark> {
        let guard = self.rollout_lock();
        let r = guard.as_ref()?;
        Some(RolloutMark {
            to: r.to.clone(),
            state: state_name(r.state),
        })
    }

    /// A follower's rollout to the same revision takes the leader's state: paused, resumed,
    /// done, or given up, in which case the old revision's template is this instance's again
    /// (should it lead later, it must not take the revision up again).
    pub(super) fn mirror_rollout(&self, mark: Option<&RolloutMark>) {
        let Some(mark) = mark else {
            return;
        };
        let Ok(theirs) =
            serde_json::from_value::<RolloutState>(serde_json::Value::String(mark.state.clone()))
        else {
            return; // a state a newer weir knows of
        };
        let (from, from_template) = {
            let mut guard = self.rollout_lock();
            let Some(r) = guard.as_mut().filter(|r| r.to == mark.to) else {
                return;
            };
            if r.state == theirs {
                return;
            }
            let live = matches!(r.state, RolloutState::Running | RolloutState::Paused);
            r.state = theirs;
            if !(live && matches!(theirs, RolloutState::RolledBack | RolloutState::Aborted)) {
                return;
            }
            (r.from.clone(), r.from_template.clone())
        };
        let provider = self
            .by_revision
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&from)
            .cloned();
        if let Some(provider) = provider {
            info!(pool = %self.pool.name, to = %mark.to, "the fleet's leader gave the revision up; back to the old template");
            self.switch_template(provider, from, from_template);
        }
    }

    /// Launch the old `revision` (template hash `template`) again, through the provider kept
    /// for it; without one (adopted after a restart), launch nothing until the config changes.
    fn restore_template(&self, revision: Option<String>, template: Option<String>) {
        let provider = self
            .by_revision
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&revision)
            .cloned();
        match provider {
            Some(provider) => self.switch_template(provider, revision, template),
            None => {
                warn!(pool = %self.pool.name, "the old revision's template is not known here (adopted after a restart); no more workers are launched until the config changes")
            }
        }
    }

    /// Launch `revision` (template hash `template`) through `provider` from now on, keeping
    /// the provider of the revision it replaces: its workers are released through it.
    fn switch_template(
        &self,
        provider: Arc<dyn Provider>,
        revision: Option<String>,
        template: Option<String>,
    ) {
        let replaced = self.revision();
        self.by_revision
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(replaced, self.provider());
        *self.provider.write().unwrap_or_else(|p| p.into_inner()) = provider;
        self.set_revision(revision);
        self.set_template(template);
    }

    fn set_rollout_state(&self, state: RolloutState) {
        if let Some(r) = self.rollout_lock().as_mut() {
            r.state = state;
        }
    }

    /// Stop the rollout: the new revision's workers are drained and released, and the old
    /// template launches again.
    fn abort_rollout(self: &Arc<Self>) {
        let (from, to) = {
            let mut guard = self.rollout_lock();
            let Some(r) = guard.as_mut() else {
                return;
            };
            r.state = RolloutState::Aborted;
            self.pool.set_split(None);
            if self
                .by_revision
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&r.from)
            {
                self.restore_template(r.from.clone(), r.from_template.clone());
            }
            (r.from.clone(), r.to.clone())
        };
        let workers = self.pool.workers();
        let count = workers.len() as u32;
        self.activity.record(
            &self.pool.name,
            Action::Rollback,
            count,
            count,
            format!(
                "{} -> {to}: aborted by an operator; back to {}",
                label(from.as_deref()),
                label(from.as_deref())
            ),
        );
        crate::telemetry::record_rollout(&self.pool.name, "aborted");
        let drain = self.policy().drain_timeout;
        for w in workers.iter().filter(|w| w.revision() == Some(to.as_str())) {
            self.spawn_retire(Arc::clone(w), drain);
        }
        self.pool.demand().notify_one();
    }

    /// Roll a finished rollout back out: the old revision replaces the new one.
    fn undo_rollout(&self) -> Result<(), String> {
        let (from, from_template, settings) = {
            let guard = self.rollout_lock();
            let Some(r) = guard.as_ref() else {
                return Err("no rollout".into());
            };
            (r.from.clone(), r.from_template.clone(), r.settings.clone())
        };
        let provider = self
            .by_revision
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&from)
            .cloned()
            .ok_or("the old revision's template is not known here (weir restarted since)")?;
        self.start_rollout(provider, (from, from_template), settings);
        Ok(())
    }

    /// The rollout under way or last ended, for the admin API.
    pub fn rollout_view(&self) -> Option<RolloutView> {
        let workers = self.pool.workers();
        let guard = self.rollout_lock();
        let r = guard.as_ref()?;
        let ready_of = |new: bool| {
            workers
                .iter()
                .filter(|w| w.state() == WorkerState::Ready)
                .filter(|w| (w.revision() == Some(r.to.as_str())) == new)
                .count() as u32
        };
        Some(RolloutView {
            state: r.state,
            from: r.from.clone(),
            to: r.to.clone(),
            old_ready: ready_of(false),
            new_ready: ready_of(true),
            replaced: r.replaced,
            failures: r.failures,
            step: r.canary_step().map(|(i, _)| i as u32 + 1),
            steps: r.settings.steps.len() as u32,
            weight: self.pool.split().map(|s| s.weight),
            gate: r.gate.clone(),
        })
    }

    /// A launch of the new revision failed (the call, an exit before ready, the startup
    /// deadline): counted toward the rollback.
    pub(super) fn note_rollout_failure(&self) {
        if let Some(r) = self.rollout_lock().as_mut() {
            if r.state == RolloutState::Running {
                r.failures += 1;
            }
        }
    }

    /// Scale-in victims during a rollout: old workers first, as many as the decision asked.
    pub(super) fn old_first(&self, victims: Vec<u64>, workers: &[Arc<Worker>]) -> Vec<u64> {
        let guard = self.rollout_lock();
        let Some(r) = guard.as_ref().filter(|r| r.state == RolloutState::Running) else {
            return victims;
        };
        let books = self.books();
        let mut old: Vec<u64> = workers
            .iter()
            .filter(|w| w.revision() != Some(r.to.as_str()) && !books.is_retiring(w.id))
            .filter(|w| !victims.contains(&w.id))
            .map(|w| w.id)
            .collect();
        let mut chosen: Vec<u64> = victims
            .iter()
            .copied()
            .filter(|id| {
                workers
                    .iter()
                    .any(|w| w.id == *id && w.revision() != Some(r.to.as_str()))
            })
            .collect();
        let want = victims.len();
        while chosen.len() < want {
            match old.pop() {
                Some(id) => chosen.push(id),
                None => break,
            }
        }
        for id in victims {
            if chosen.len() == want {
                break;
            }
            if !chosen.contains(&id) {
                chosen.push(id);
            }
        }
        chosen
    }

    /// One rollout step, after the scaler's decision (`desired` workers): launch new workers
    /// within the surge, retire an old one for each new one ready, roll back a revision whose
    /// workers keep failing, and end when no old worker is left.
    pub(super) fn rollout_step(self: &Arc<Self>, desired: u32, policy: &ScalePolicy) {
        let now = Instant::now();
        let workers = self.pool.workers();
        let retiring: Vec<u64> = {
            let books = self.books();
            workers
                .iter()
                .filter(|w| books.is_retiring(w.id))
                .map(|w| w.id)
                .collect()
        };
        let pending = self.pending_launches.load(Ordering::Relaxed);
        let to = {
            let guard = self.rollout_lock();
            match guard.as_ref() {
                Some(r) if r.state == RolloutState::Running && r.canary_step().is_some() => {
                    Some(r.to.clone())
                }
                _ => None,
            }
        };
        // Only a canary step reads the counters (a lock and two copies of a histogram).
        let answers = to
            .map(|to| Answers {
                old: self.pool.answers_besides(&to),
                new: self.pool.answers_of(&to),
            })
            .unwrap_or_default();
        let actions = {
            let mut guard = self.rollout_lock();
            let Some(r) = guard.as_mut().filter(|r| r.state == RolloutState::Running) else {
                return;
            };
            let actions = r.plan(&workers, &retiring, pending, desired, policy, now, &answers);
            // Applied before the lock goes: whoever sees the rollout ended (the admin API)
            // sees the split gone and the old template back with it.
            if let Some(split) = actions.split.clone() {
                self.pool.set_split(split);
            }
            if let Some((revision, template)) = actions.restore.clone() {
                self.restore_template(revision, template);
            }
            actions
        };
        let count = workers.len() as u32;
        if let Some((action, reason)) = actions.record {
            self.activity
                .record(&self.pool.name, action, count, desired, reason);
        }
        if let Some(result) = actions.ended {
            crate::telemetry::record_rollout(&self.pool.name, result);
            self.forget_unused_providers(&workers, actions.keep);
        }
        for (worker, drain) in actions.retire {
            info!(pool = %self.pool.name, worker = %worker.name, revision = ?worker.revision(), "rollout: retiring an old worker");
            self.spawn_retire(worker, drain);
        }
        for _ in 0..actions.launch {
            self.spawn_launch();
        }
    }

    /// Drop the providers of revisions with no worker left, but `keep`'s (a finished
    /// rollout's old revision, for `undo`).
    fn forget_unused_providers(&self, workers: &[Arc<Worker>], keep: Option<Option<String>>) {
        let current = self.revision();
        let mut providers = self.by_revision.lock().unwrap_or_else(|p| p.into_inner());
        providers.retain(|revision, _| {
            *revision == current
                || keep.as_ref() == Some(revision)
                || workers
                    .iter()
                    .any(|w| w.revision().map(str::to_string) == *revision)
        });
    }
}

impl Rollout {
    /// A rollout from `from` (whose template hash, if known, is `from_template`) to `to`,
    /// running from now.
    fn begin(
        from: Option<String>,
        from_template: Option<String>,
        to: String,
        settings: RolloutConfig,
    ) -> Self {
        Rollout {
            from,
            from_template,
            to,
            state: RolloutState::Running,
            settings,
            failures: 0,
            ready_since: HashMap::new(),
            replaced: 0,
            started: Instant::now(),
            step: 0,
            step_began: None,
            gate: None,
        }
    }

    /// The canary step under way (its index) and its settings, while there is one.
    fn canary_step(&self) -> Option<(usize, &crate::config::CanaryStep)> {
        self.settings
            .steps
            .get(self.step)
            .map(|step| (self.step, step))
    }

    /// Give the revision up: its workers go, the old revision is back.
    fn roll_back(
        &mut self,
        why: String,
        new: Vec<(Arc<Worker>, Duration)>,
        actions: &mut RolloutActions,
    ) {
        self.state = RolloutState::RolledBack;
        actions.record = Some((
            Action::Rollback,
            format!(
                "{} -> {}: {why}; back to {}",
                label(self.from.as_deref()),
                self.to,
                label(self.from.as_deref())
            ),
        ));
        actions.ended = Some("rolled_back");
        actions.restore = Some((self.from.clone(), self.from_template.clone()));
        actions.retire = new;
        actions.split = Some(None);
    }

    /// A canary step: keep its share of new workers up, hold it, then judge it. Old workers
    /// all stay.
    #[allow(clippy::too_many_arguments)]
    fn canary(
        &mut self,
        new: &[&Arc<Worker>],
        pending: u32,
        desired: u32,
        policy: &ScalePolicy,
        now: Instant,
        answers: &Answers,
        actions: &mut RolloutActions,
    ) {
        let Some((index, step)) = self.canary_step() else {
            return;
        };
        let (weight, hold, of) = (step.weight, step.hold.get(), self.settings.steps.len());
        actions.split = Some(Some(RevisionSplit {
            revision: self.to.clone(),
            weight,
        }));
        let want = (desired.max(1) * weight).div_ceil(100).max(1);
        actions.launch = want.saturating_sub(new.len() as u32 + pending);
        let ready = new.iter().any(|w| w.state() == WorkerState::Ready);
        let Some((began, base)) = &self.step_began else {
            if ready {
                self.step_began = Some((now, answers.clone()));
                actions.record = Some((
                    Action::Rollout,
                    format!(
                        "{} -> {}: step {}/{of}, {weight}% of requests to {} for {hold:?}",
                        label(self.from.as_deref()),
                        self.to,
                        index + 1,
                        self.to
                    ),
                ));
            }
            return;
        };
        if now.duration_since(*began) < hold {
            return;
        }
        let seen = answers.since(base);
        match judge(&seen, &self.settings) {
            Ok(verdict) => {
                self.gate = Some(format!("step {}/{of} passed: {verdict}", index + 1));
                self.step += 1;
                self.step_began = None;
                let next = match self.canary_step() {
                    Some((_, next)) => format!("next {}%", next.weight),
                    None => "replacing the old workers".to_string(),
                };
                actions.record = Some((
                    Action::Rollout,
                    format!(
                        "{} -> {}: step {}/{of} ({weight}%) passed ({verdict}); {next}",
                        label(self.from.as_deref()),
                        self.to,
                        index + 1
                    ),
                ));
                if self.canary_step().is_none() {
                    actions.split = Some(None);
                }
            }
            Err(why) => {
                self.gate = Some(format!("step {}/{of} failed: {why}", index + 1));
                let drain = policy.drain_timeout;
                let retire = new.iter().map(|w| (Arc::clone(w), drain)).collect();
                self.roll_back(
                    format!("canary step {}/{of} ({weight}%) failed: {why}", index + 1),
                    retire,
                    actions,
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn plan(
        &mut self,
        workers: &[Arc<Worker>],
        retiring: &[u64],
        pending: u32,
        desired: u32,
        policy: &ScalePolicy,
        now: Instant,
        answers: &Answers,
    ) -> RolloutActions {
        let mut actions = RolloutActions::default();
        let live: Vec<&Arc<Worker>> = workers
            .iter()
            .filter(|w| !retiring.contains(&w.id))
            .collect();
        let is_new = |w: &Worker| w.revision() == Some(self.to.as_str());
        for w in live
            .iter()
            .filter(|w| is_new(w) && w.state() == WorkerState::Ready)
        {
            if self.ready_since.insert(w.id, now).is_none() {
                // A new worker ready: the revision can start.
                self.failures = 0;
            }
        }
        if self.failures >= self.settings.failure_threshold.max(1) {
            let retire = live
                .iter()
                .filter(|w| is_new(w))
                .map(|w| (Arc::clone(*w), policy.drain_timeout))
                .collect();
            let why = format!("{} new workers in a row failed to start", self.failures);
            self.roll_back(why, retire, &mut actions);
            return actions;
        }
        let (new, old): (Vec<&Arc<Worker>>, Vec<&Arc<Worker>>) =
            live.iter().partition(|w| is_new(w));
        if old.is_empty() {
            self.state = RolloutState::Done;
            actions.record = Some((
                Action::Rollout,
                format!(
                    "{} -> {}: done, {} replaced in {:.1?}",
                    label(self.from.as_deref()),
                    self.to,
                    self.replaced,
                    now.duration_since(self.started)
                ),
            ));
            actions.ended = Some("done");
            actions.keep = Some(self.from.clone());
            actions.split = Some(None);
            return actions;
        }
        // Old workers that do not serve go at once; they are not what keeps the pool up.
        for w in old.iter().filter(|w| w.state() != WorkerState::Ready) {
            actions.retire.push((Arc::clone(w), Duration::ZERO));
        }
        if self.canary_step().is_some() {
            self.canary(&new, pending, desired, policy, now, answers, &mut actions);
            return actions;
        }
        let surge = self.settings.max_surge.of(desired);
        let starting = new
            .iter()
            .filter(|w| w.state() == WorkerState::Starting)
            .count() as u32
            + pending;
        let total = live.len() as u32 + pending;
        let room = (desired + surge).saturating_sub(total);
        actions.launch = surge.saturating_sub(starting).min(room);
        let settled = |w: &&&Arc<Worker>| {
            w.state() == WorkerState::Ready
                && self
                    .ready_since
                    .get(&w.id)
                    .is_some_and(|t| now.duration_since(*t) >= self.settings.min_ready.get())
        };
        let new_ready = new.iter().filter(settled).count() as u32;
        let old_ready: Vec<&&Arc<Worker>> = old
            .iter()
            .filter(|w| w.state() == WorkerState::Ready)
            .collect();
        let floor = desired
            .max(
                policy
                    .min_workers
                    .saturating_sub(self.settings.max_unavailable),
            )
            .max(1);
        if !old_ready.is_empty() && new_ready > 0 && new_ready + old_ready.len() as u32 > floor {
            if let Some(victim) = old_ready.iter().min_by_key(|w| w.in_flight()) {
                actions
                    .retire
                    .push((Arc::clone(victim), policy.drain_timeout));
                self.replaced += 1;
            }
        }
        actions
    }
}

/// A canary gate: the new revision's answers over the step against the old's. `Ok` with the
/// figures when it passes, `Err` with them and the limit broken when it fails. A step whose
/// new revision got no requests passes: nothing was seen against it.
fn judge(seen: &Answers, settings: &RolloutConfig) -> Result<String, String> {
    let (old, new) = (&seen.old, &seen.new);
    if new.answers == 0 {
        return Ok("no request reached the new revision".into());
    }
    let errors = format!(
        "5xx {:.1}% of {} vs {:.1}% of {}",
        new.error_rate() * 100.0,
        new.answers,
        old.error_rate() * 100.0,
        old.answers
    );
    if let Some(limit) = settings.max_error_rate {
        if new.error_rate() > old.error_rate() + limit {
            return Err(format!(
                "{errors}, over the {:.1} points allowed",
                limit * 100.0
            ));
        }
    }
    let p99 = |c: &AnswerCounts| c.latency.quantile(0.99).unwrap_or_default();
    let latency = format!("p99 {:.1?} vs {:.1?}", p99(new), p99(old));
    if let Some(ratio) = settings.max_latency_ratio {
        let enough =
            new.answers >= LATENCY_GATE_MIN_ANSWERS && old.answers >= LATENCY_GATE_MIN_ANSWERS;
        if enough && p99(new).as_secs_f64() > p99(old).as_secs_f64() * ratio {
            return Err(format!("{latency}, over {ratio} times the old"));
        }
    }
    Ok(format!("{errors}; {latency}"))
}

/// `running`, `done`, ... as the API and the fleet's record spell them.
fn state_name(state: RolloutState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn label(revision: Option<&str>) -> &str {
    revision.unwrap_or("(unknown revision)")
}

/// [`judge`], for the scaler's tests.
#[cfg(test)]
pub(super) fn judge_for_tests(
    old: AnswerCounts,
    new: AnswerCounts,
    settings: &RolloutConfig,
) -> Result<String, String> {
    judge(&Answers { old, new }, settings)
}
