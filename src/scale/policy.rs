//! The scaling decision: a pure function of the policy, the pool's signals and the clock, so
//! every transition (0 -> 1 -> N -> 0) and every gate on it is decided in one place and tested
//! on decision traces without processes.

use std::time::Duration;

use crate::config::{AutoscaleConfig, DEFAULT_TARGET_INFLIGHT};
use crate::pool::WorkerState;
use crate::values::Cron;

/// Share of `worker_concurrency` used as the default in-flight target: headroom for bursts.
pub const TARGET_SHARE_OF_CONCURRENCY: f64 = 0.7;

/// A window of raised minimum capacity.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledMin {
    /// When windows start.
    pub cron: Cron,
    /// How long each lasts.
    pub duration: Duration,
    /// The minimum inside it.
    pub min_workers: u32,
}

/// A pool's scaling policy, from its `autoscale` table.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePolicy {
    /// Floor outside schedules.
    pub min_workers: u32,
    /// Ceiling.
    pub max_workers: u32,
    /// Launched at start.
    pub initial_workers: u32,
    /// Spare workers kept above demand.
    pub buffer_workers: u32,
    /// Desired in-flight per worker.
    pub target_inflight: f64,
    /// Launches in progress at once.
    pub max_concurrent_starts: u32,
    /// Most workers added per decision.
    pub scale_up_step: u32,
    /// Idle time after which a worker is released.
    pub max_idle_time: Duration,
    /// Readiness deadline of a launch.
    pub startup_timeout: Duration,
    /// Longest drain before release.
    pub drain_timeout: Duration,
    /// Unhealthy time before replacement.
    pub replace_unhealthy_after: Duration,
    /// Peak window for scaling up (capped by `max_idle_time`, see [`ScalePolicy::hold_window`]).
    pub panic_window: Duration,
    /// Scheduled minimums.
    pub schedule: Vec<ScheduledMin>,
}

impl ScalePolicy {
    /// Build from config (checked when it was read); `worker_concurrency` supplies the
    /// default target.
    pub fn from_config(c: &AutoscaleConfig, worker_concurrency: Option<u32>) -> Self {
        let target_inflight = c
            .target_inflight
            .unwrap_or_else(|| match worker_concurrency {
                Some(n) => (f64::from(n) * TARGET_SHARE_OF_CONCURRENCY).max(1.0),
                None => DEFAULT_TARGET_INFLIGHT,
            });
        let schedule = c
            .schedule
            .iter()
            .map(|w| ScheduledMin {
                cron: w.cron.clone(),
                duration: w.duration.get(),
                min_workers: w.min_workers,
            })
            .collect();
        ScalePolicy {
            min_workers: c.min_workers,
            max_workers: c.max_workers,
            initial_workers: c.initial_workers.unwrap_or(c.min_workers),
            buffer_workers: c.buffer_workers,
            target_inflight,
            max_concurrent_starts: c.max_concurrent_starts,
            scale_up_step: c.scale_up_step,
            max_idle_time: c.max_idle_time.get(),
            startup_timeout: c.startup_timeout.get(),
            drain_timeout: c.drain_timeout.get(),
            replace_unhealthy_after: c.replace_unhealthy_after.get(),
            panic_window: c.panic_window.get(),
            schedule,
        }
    }

    /// The minimum now: `min_workers` raised by any open schedule window.
    pub fn effective_min(&self, now_minutes: u64) -> u32 {
        let scheduled = self
            .schedule
            .iter()
            .filter(|w| w.cron.window_covers(now_minutes, w.duration))
            .map(|w| w.min_workers)
            .max()
            .unwrap_or(0);
        self.min_workers.max(scheduled).min(self.max_workers)
    }

    /// The window whose peak load sets capacity: the panic window, but never longer than
    /// `max_idle_time`, so scale-in after a drop follows `max_idle_time` and not a longer window.
    pub fn hold_window(&self) -> Duration {
        self.panic_window.min(self.max_idle_time)
    }

    /// Workers needed for `load` concurrent requests.
    fn demand(&self, load: f64) -> u32 {
        (load / self.target_inflight)
            .ceil()
            .clamp(0.0, f64::from(u32::MAX)) as u32
    }
}

/// Least time between two scale-up decisions: event-driven steps can come back to back, and
/// one decision per interval keeps `scale_up_step` a rate (the first worker and the minimum
/// never wait for it).
pub const SCALE_UP_INTERVAL: Duration = Duration::from_millis(100);

/// One worker as the scaler sees it at one moment (workers being retired are left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerSignal {
    /// The worker's id.
    pub id: u64,
    /// Its state now.
    pub state: WorkerState,
    /// Requests in flight on it.
    pub in_flight: u32,
    /// How long it has had no request in flight and served none.
    pub idle_for: Duration,
    /// How long it has been in its current state (a `starting` worker: since its launch).
    pub in_state_for: Duration,
    /// An operator protected it from scale-in.
    pub protected: bool,
}

/// What the scaler sees of a pool at one moment.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    /// The pool's workers.
    pub workers: Vec<WorkerSignal>,
    /// Provider launch calls in progress (capacity that has no worker yet).
    pub pending_launches: u32,
    /// Requests waiting now.
    pub queued: u64,
    /// Peak of in-flight + queued over the hold window (see [`ScalePolicy::hold_window`]).
    pub recent_peak: f64,
    /// Wall clock, minutes since the Unix epoch (schedules).
    pub now_minutes: u64,
    /// Time left in the pause after failed launches; zero when not backing off.
    pub backoff_left: Duration,
    /// Time since the last scale-up decision, if there was one.
    pub since_scale_up: Option<Duration>,
    /// A worker count an operator asked for since the last decision.
    pub manual: Option<u32>,
}

/// Why a worker is given up on (released at once, without a drain, and replaced).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// It did not pass a health check within `startup_timeout` (counts as a failed launch).
    NeverReady,
    /// It stayed unhealthy for `replace_unhealthy_after`.
    Unhealthy,
}

impl GiveUp {
    /// For the activity log.
    pub fn as_str(self) -> &'static str {
        match self {
            GiveUp::NeverReady => "not ready within startup_timeout",
            GiveUp::Unhealthy => "unhealthy for too long",
        }
    }
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Decision {
    /// Workers the pool should have.
    pub desired: u32,
    /// The floor now.
    pub effective_min: u32,
    /// Workers to give up on at once, and why.
    pub give_up: Vec<(u64, GiveUp)>,
    /// Workers to launch.
    pub launch: u32,
    /// Why a launch the load asks for waits (backoff, one scale-up per interval).
    pub held_back: Option<&'static str>,
    /// Idle workers to drain and release, longest idle first.
    pub release: Vec<u64>,
    /// Ready workers beyond what the recent load needs, least busy first: the balancer sends
    /// them requests only as overflow, so they go idle and are released after `max_idle_time`.
    pub surplus: Vec<u64>,
    /// Fail the waiting requests now: the launch they waited for was given up and no other
    /// worker is ready or starting.
    pub fail_waiting: bool,
    /// The operator's count decided this.
    pub manual: bool,
    /// Why, for the activity log.
    pub reason: String,
}

/// Decide give-ups, launches, releases and surplus for one pool. Every gate is here: the
/// startup deadline and unhealthy replacement, the backoff after failed launches, one scale-up
/// per interval, the operator's count, the minimum and maximum, the idle rule.
///
/// Capacity follows the peak load of the hold window, `min(panic_window, max_idle_time)`: a
/// burst scales up at once; when the load falls, workers it no longer needs are surplus as soon
/// as the burst leaves the window, go idle, and are released once idle for `max_idle_time`, but
/// never below what the same window asks for. Launch and release look at the same number, so a
/// release is never undone by the next decision (no flapping).
pub fn decide(policy: &ScalePolicy, s: &Signals) -> Decision {
    let effective_min = policy.effective_min(s.now_minutes);
    let give_up: Vec<(u64, GiveUp)> = s
        .workers
        .iter()
        .filter_map(|w| match w.state {
            WorkerState::Starting if w.in_state_for >= policy.startup_timeout => {
                Some((w.id, GiveUp::NeverReady))
            }
            WorkerState::Unhealthy if w.in_state_for >= policy.replace_unhealthy_after => {
                Some((w.id, GiveUp::Unhealthy))
            }
            _ => None,
        })
        .collect();
    let live: Vec<&WorkerSignal> = s
        .workers
        .iter()
        .filter(|w| w.state != WorkerState::Draining)
        .filter(|w| !give_up.iter().any(|(id, _)| *id == w.id))
        .collect();
    let ready = live
        .iter()
        .filter(|w| w.state == WorkerState::Ready)
        .count() as u32;
    let starting = live
        .iter()
        .filter(|w| w.state == WorkerState::Starting)
        .count() as u32
        + s.pending_launches;
    let capacity = ready + starting;
    let startup_failed = give_up.iter().any(|(_, g)| *g == GiveUp::NeverReady);

    let in_flight: u64 = live.iter().map(|w| u64::from(w.in_flight)).sum();
    let load_now = (in_flight + s.queued) as f64;
    let peak = s.recent_peak.max(load_now);
    let mut needed = policy.demand(peak);
    if s.queued > 0 && ready == 0 {
        needed = needed.max(1);
    }
    let clamp = |n: u32| {
        n.saturating_add(policy.buffer_workers)
            .clamp(effective_min, policy.max_workers)
    };
    let mut d = Decision {
        desired: clamp(needed),
        effective_min,
        fail_waiting: startup_failed && ready == 0 && starting == 0,
        ..Decision::default()
    };

    let ready_workers = || {
        let mut ready: Vec<&WorkerSignal> = live
            .iter()
            .copied()
            .filter(|w| w.state == WorkerState::Ready && !w.protected)
            .collect();
        ready.sort_by_key(|w| (w.in_flight, std::cmp::Reverse(w.id)));
        ready
    };

    if let Some(n) = s.manual {
        // The operator's count: launch up to it, or drain down to it, least busy first.
        let target = n.clamp(effective_min, policy.max_workers);
        d.desired = target;
        d.manual = true;
        d.reason = format!("set to {n} by an operator");
        if target > capacity {
            d.launch = target - capacity;
        } else if target < ready {
            d.release = ready_workers()
                .iter()
                .take((ready - target) as usize)
                .map(|w| w.id)
                .collect();
        }
        d.give_up = give_up;
        return d;
    }

    if d.desired > capacity {
        let floor_gap = effective_min.saturating_sub(capacity);
        let stepped = (d.desired - capacity)
            .min(policy.scale_up_step)
            .max(floor_gap);
        let start_room = policy.max_concurrent_starts.saturating_sub(starting);
        let launch = stepped
            .min(start_room)
            .min(policy.max_workers.saturating_sub(capacity));
        let recent = s.since_scale_up.is_some_and(|t| t < SCALE_UP_INTERVAL);
        if launch > 0 && (startup_failed || !s.backoff_left.is_zero()) {
            d.held_back = Some("backing off after failed launches");
        } else if launch > 0 && recent && capacity > 0 && capacity >= effective_min {
            d.held_back = Some("one scale-up per interval");
        } else {
            d.launch = launch;
        }
        d.reason = if capacity < effective_min {
            format!("below minimum {effective_min}: {ready} ready, {starting} starting")
        } else if s.queued > 0 {
            format!(
                "queue depth {} > 0, {ready} ready, {starting} starting",
                s.queued
            )
        } else {
            format!(
                "load {peak:.0} over {capacity} workers at target {} in flight",
                policy.target_inflight
            )
        };
    }

    let surplus = ready.saturating_sub(d.desired) as usize;
    d.surplus = ready_workers().iter().take(surplus).map(|w| w.id).collect();

    if d.launch == 0 && d.held_back.is_none() {
        // Keep what the hold window's peak asks for (with the minimum and spares); anything
        // else idle for max_idle_time goes, longest idle first.
        let room = capacity.saturating_sub(d.desired) as usize;
        let mut idle: Vec<&WorkerSignal> = ready_workers()
            .into_iter()
            .filter(|w| w.in_flight == 0 && w.idle_for >= policy.max_idle_time)
            .collect();
        idle.sort_by_key(|w| std::cmp::Reverse(w.idle_for));
        d.release = idle.into_iter().take(room).map(|w| w.id).collect();
        if !d.release.is_empty() {
            d.reason = format!(
                "{} worker(s) idle for {:?} or more, {ready} ready, floor {}",
                d.release.len(),
                policy.max_idle_time,
                d.desired
            );
        }
    }
    d.give_up = give_up;
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AutoscaleConfig, Dur};

    fn policy(min: u32, max: u32) -> ScalePolicy {
        let config = AutoscaleConfig {
            min_workers: min,
            max_workers: max,
            target_inflight: Some(4.0),
            max_idle_time: Dur::from_secs(60),
            ..AutoscaleConfig::default()
        };
        ScalePolicy::from_config(&config, None)
    }

    fn worker(id: u64, state: WorkerState, in_flight: u32, idle_secs: u64) -> WorkerSignal {
        WorkerSignal {
            id,
            state,
            in_flight,
            idle_for: Duration::from_secs(idle_secs),
            in_state_for: Duration::from_secs(1),
            protected: false,
        }
    }

    fn ready(id: u64, in_flight: u32, idle_secs: u64) -> WorkerSignal {
        worker(id, WorkerState::Ready, in_flight, idle_secs)
    }

    /// `n` ready workers sharing `in_flight` requests, none idle.
    fn busy(n: u64, in_flight: u32) -> Vec<WorkerSignal> {
        (1..=n).map(|i| ready(i, in_flight / n as u32, 0)).collect()
    }

    fn starting(id: u64, secs: u64) -> WorkerSignal {
        WorkerSignal {
            in_state_for: Duration::from_secs(secs),
            ..worker(id, WorkerState::Starting, 0, 0)
        }
    }

    fn with(workers: Vec<WorkerSignal>, peak: f64) -> Signals {
        Signals {
            workers,
            recent_peak: peak,
            ..Signals::default()
        }
    }

    #[test]
    fn burst_scales_up_by_step_counting_starting_workers() {
        let p = policy(1, 8);
        let s = Signals {
            queued: 20,
            ..with(vec![ready(1, 4, 0)], 24.0)
        };
        let d = decide(&p, &s);
        assert_eq!(d.desired, 6);
        assert_eq!(d.launch, 2, "scale_up_step caps one decision");
        assert!(d.reason.contains("queue depth 20"), "{}", d.reason);
        // Next decision: the two launches are in progress; still short, two more.
        let d = decide(
            &p,
            &Signals {
                pending_launches: 2,
                ..s.clone()
            },
        );
        assert_eq!(d.launch, 2);
        // Capacity reached: no overshoot.
        let d = decide(
            &p,
            &Signals {
                pending_launches: 5,
                ..s.clone()
            },
        );
        assert_eq!(d.launch, 0);
        // max_concurrent_starts (4) holds launches back.
        let s = Signals {
            queued: 20,
            ..with((1..=4).map(|i| starting(i, 1)).collect(), 24.0)
        };
        assert_eq!(decide(&p, &s).launch, 0);
    }

    #[test]
    fn never_above_max() {
        let p = policy(1, 3);
        let d = decide(&p, &with(busy(2, 100), 100.0));
        assert_eq!((d.desired, d.launch), (3, 1));
    }

    #[test]
    fn steady_load_neither_launches_nor_releases() {
        let p = policy(1, 8);
        let s = with(busy(3, 11), 12.0);
        for _ in 0..100 {
            let d = decide(&p, &s);
            assert_eq!((d.launch, d.release.len(), d.surplus.len()), (0, 0, 0));
        }
    }

    #[test]
    fn workers_the_recent_peak_does_not_need_are_surplus_then_released_longest_idle_first() {
        let p = policy(1, 8);
        let s = with(
            vec![
                ready(1, 1, 0),
                ready(2, 0, 10),
                ready(3, 0, 70),
                ready(4, 0, 90),
            ],
            1.0,
        );
        let d = decide(&p, &s);
        assert_eq!(d.surplus.len(), 3);
        assert!(!d.surplus.contains(&1), "the busy worker is not surplus");
        assert_eq!(
            d.release,
            vec![4, 3],
            "only those idle past max_idle_time, longest first"
        );
        // Never below the minimum, whatever is idle.
        let d = decide(&p, &with(vec![ready(9, 0, 500)], 0.0));
        assert!(d.release.is_empty());
        // Never below what the hold window's peak asks for: 8 in the window needs 2.
        let s = with(vec![ready(1, 0, 90), ready(2, 0, 90), ready(3, 0, 90)], 8.0);
        assert_eq!(decide(&p, &s).release.len(), 1);
    }

    #[test]
    fn protected_workers_are_never_surplus_nor_released() {
        let p = policy(0, 8);
        let mut guarded = ready(1, 0, 600);
        guarded.protected = true;
        let d = decide(&p, &with(vec![guarded, ready(2, 0, 600)], 0.0));
        assert_eq!(d.surplus, vec![2]);
        assert_eq!(d.release, vec![2]);
        let d = decide(
            &p,
            &Signals {
                manual: Some(0),
                ..with(vec![guarded], 0.0)
            },
        );
        assert!(d.release.is_empty());
    }

    #[test]
    fn scale_to_zero_and_back() {
        let p = policy(0, 4);
        assert_eq!(
            decide(&p, &with(vec![ready(7, 0, 60)], 0.0)).release,
            vec![7]
        );
        // Empty pool, first request queued: launch one at once.
        let s = Signals {
            queued: 1,
            ..Signals::default()
        };
        let d = decide(&p, &s);
        assert_eq!((d.desired, d.launch), (1, 1));
        // While it starts, no second launch for the same request.
        let d = decide(
            &p,
            &Signals {
                pending_launches: 1,
                ..s
            },
        );
        assert_eq!(d.launch, 0);
    }

    #[test]
    fn buffer_keeps_spares_above_demand() {
        let config = AutoscaleConfig {
            min_workers: 1,
            max_workers: 8,
            buffer_workers: 2,
            target_inflight: Some(4.0),
            ..AutoscaleConfig::default()
        };
        let p = ScalePolicy::from_config(&config, None);
        let d = decide(&p, &with(vec![ready(1, 4, 0)], 4.0));
        assert_eq!((d.desired, d.launch), (3, 2));
        let s = with(
            vec![ready(1, 0, 600), ready(2, 0, 600), ready(3, 0, 600)],
            0.0,
        );
        assert_eq!(
            decide(&p, &s).release.len(),
            1,
            "two spares above zero demand stay"
        );
    }

    #[test]
    fn schedule_raises_the_minimum_inside_its_window() {
        let mut config = AutoscaleConfig {
            min_workers: 1,
            max_workers: 8,
            ..AutoscaleConfig::default()
        };
        config.schedule.push(crate::config::ScheduleConfig {
            cron: Cron::parse("0 11 * * *").unwrap(),
            duration: Dur::from_secs(7200),
            min_workers: 3,
        });
        let p = ScalePolicy::from_config(&config, None);
        let day = 20416 * 1440;
        let at = |h: u64, m: u64| Signals {
            now_minutes: day + h * 60 + m,
            ..with(vec![ready(1, 0, 0)], 0.0)
        };
        assert_eq!(decide(&p, &at(10, 59)).launch, 0);
        let d = decide(&p, &at(11, 0));
        assert_eq!((d.effective_min, d.launch), (3, 2));
        assert!(d.reason.contains("below minimum 3"), "{}", d.reason);
        assert_eq!(decide(&p, &at(13, 0)).effective_min, 1);
    }

    #[test]
    fn default_target_comes_from_worker_concurrency() {
        let p = ScalePolicy::from_config(&AutoscaleConfig::default(), Some(10));
        assert!((p.target_inflight - 7.0).abs() < 1e-9);
        let p = ScalePolicy::from_config(&AutoscaleConfig::default(), None);
        assert!((p.target_inflight - DEFAULT_TARGET_INFLIGHT).abs() < 1e-9);
    }

    #[test]
    fn a_worker_never_ready_is_given_up_and_the_relaunch_waits_for_the_backoff() {
        let p = policy(1, 4);
        // 60 s is startup_timeout's default.
        let s = Signals {
            queued: 3,
            ..with(vec![starting(1, 60)], 3.0)
        };
        let d = decide(&p, &s);
        assert_eq!(d.give_up, vec![(1, GiveUp::NeverReady)]);
        assert_eq!(
            d.launch, 0,
            "a failed start is not retried in the same breath"
        );
        assert_eq!(d.held_back, Some("backing off after failed launches"));
        assert!(
            d.fail_waiting,
            "nothing else can serve the waiting requests"
        );
        // With another worker starting, the waiting requests keep waiting for it.
        let s = Signals {
            queued: 3,
            ..with(vec![starting(1, 60), starting(2, 1)], 3.0)
        };
        assert!(!decide(&p, &s).fail_waiting);
        // During the backoff nothing launches, not even for the minimum.
        let s = Signals {
            backoff_left: Duration::from_millis(500),
            ..with(Vec::new(), 0.0)
        };
        let d = decide(&p, &s);
        assert_eq!((d.launch, d.held_back.is_some()), (0, true));
        // After it, the minimum is restored at once.
        let d = decide(&p, &with(Vec::new(), 0.0));
        assert_eq!(d.launch, 1);
    }

    #[test]
    fn an_unhealthy_worker_is_replaced_after_its_grace() {
        let p = policy(2, 4);
        let mut sick = worker(1, WorkerState::Unhealthy, 0, 0);
        sick.in_state_for = Duration::from_secs(29);
        let d = decide(&p, &with(vec![sick, ready(2, 0, 0)], 0.0));
        assert!(d.give_up.is_empty());
        sick.in_state_for = Duration::from_secs(30);
        let d = decide(&p, &with(vec![sick, ready(2, 0, 0)], 0.0));
        assert_eq!(d.give_up, vec![(1, GiveUp::Unhealthy)]);
        assert_eq!(d.launch, 1, "replaced to keep the minimum");
    }

    #[test]
    fn one_scale_up_per_interval_except_for_the_minimum() {
        let p = policy(2, 8);
        let recent = Some(Duration::from_millis(40));
        let s = Signals {
            since_scale_up: recent,
            queued: 10,
            ..with(busy(2, 8), 18.0)
        };
        let d = decide(&p, &s);
        assert_eq!(
            (d.launch, d.held_back),
            (0, Some("one scale-up per interval"))
        );
        let d = decide(
            &p,
            &Signals {
                since_scale_up: Some(SCALE_UP_INTERVAL),
                ..s
            },
        );
        assert_eq!(d.launch, 2);
        // Below the minimum the interval does not hold launches back.
        let s = Signals {
            since_scale_up: recent,
            ..with(vec![ready(1, 0, 0)], 0.0)
        };
        assert_eq!(decide(&p, &s).launch, 1);
    }

    #[test]
    fn the_operators_count_launches_or_drains_least_busy_first() {
        let p = policy(1, 5);
        let s = Signals {
            manual: Some(4),
            ..with(vec![ready(1, 0, 0)], 0.0)
        };
        let d = decide(&p, &s);
        assert_eq!((d.launch, d.manual, d.desired), (3, true, 4));
        // Manual ignores backoff and the interval: the operator asked.
        let d = decide(
            &p,
            &Signals {
                backoff_left: Duration::from_secs(5),
                since_scale_up: Some(Duration::ZERO),
                ..s
            },
        );
        assert_eq!(d.launch, 3);
        let s = Signals {
            manual: Some(1),
            ..with(vec![ready(1, 3, 0), ready(2, 0, 0), ready(3, 1, 0)], 4.0)
        };
        assert_eq!(decide(&p, &s).release, vec![2, 3]);
        // Clamped to [min, max].
        let s = Signals {
            manual: Some(9),
            ..with(vec![ready(1, 0, 0)], 0.0)
        };
        assert_eq!(decide(&p, &s).desired, 5);
    }

    /// A pool driven by decisions, with a load that the balancer spreads the way weir's does:
    /// non-surplus workers first, surplus ones only as overflow. Time moves 100 ms a step.
    struct Trace {
        policy: ScalePolicy,
        concurrency: u32,
        boot: Duration,
        now: Duration,
        workers: Vec<SimWorker>,
        samples: std::collections::VecDeque<(Duration, f64)>,
        next_id: u64,
        last_scale_up: Option<Duration>,
        launches: Vec<Duration>,
        releases: Vec<Duration>,
    }

    struct SimWorker {
        id: u64,
        ready_at: Duration,
        in_flight: u32,
        idle_since: Duration,
        surplus: bool,
    }

    const STEP: Duration = Duration::from_millis(100);

    impl Trace {
        /// worker_concurrency `concurrency` (target 0.7 of it), `max_idle`, one worker ready.
        fn new(concurrency: u32, max_workers: u32, max_idle: Duration) -> Self {
            let config = AutoscaleConfig {
                min_workers: 1,
                max_workers,
                max_idle_time: Dur(max_idle),
                ..AutoscaleConfig::default()
            };
            let policy = ScalePolicy::from_config(&config, Some(concurrency));
            Trace {
                policy,
                concurrency,
                boot: Duration::from_millis(300),
                now: Duration::ZERO,
                workers: vec![SimWorker {
                    id: 1,
                    ready_at: Duration::ZERO,
                    in_flight: 0,
                    idle_since: Duration::ZERO,
                    surplus: false,
                }],
                samples: Default::default(),
                next_id: 2,
                last_scale_up: None,
                launches: Vec::new(),
                releases: Vec::new(),
            }
        }

        fn size(&self) -> usize {
            self.workers.len()
        }

        /// One step with `load` requests wanting service.
        fn step(&mut self, load: u32) -> Decision {
            let now = self.now;
            let penalty = self.policy.target_inflight.ceil() as u32;
            let cap = self.concurrency;
            for w in &mut self.workers {
                w.in_flight = 0;
            }
            let mut left = load;
            // Fill non-surplus ready workers up to the penalty, then everyone up to the cap;
            // ties go round the pool (as random picks would), so idle time is not an artefact.
            let n = self.workers.len();
            let tick = (now.as_millis() / STEP.as_millis()) as usize;
            for overflow in [false, true] {
                while left > 0 {
                    let limit = |w: &SimWorker| match (overflow, w.surplus) {
                        (false, true) => 0,
                        (false, false) => penalty.min(cap),
                        (true, _) => cap,
                    };
                    let pick = (0..n)
                        .map(|i| (i + tick) % n)
                        .filter(|&i| {
                            let w = &self.workers[i];
                            w.ready_at <= now && w.in_flight < limit(w)
                        })
                        .min_by_key(|&i| self.workers[i].in_flight);
                    let Some(i) = pick else { break };
                    self.workers[i].in_flight += 1;
                    left -= 1;
                }
            }
            let queued = u64::from(left);
            for w in &mut self.workers {
                if w.in_flight > 0 {
                    w.idle_since = now;
                }
            }
            let demand = f64::from(load - left) + queued as f64;
            self.samples.push_back((now, demand));
            let hold = self.policy.hold_window();
            while self
                .samples
                .front()
                .is_some_and(|(at, _)| now.saturating_sub(*at) > hold)
            {
                self.samples.pop_front();
            }
            let signals = Signals {
                workers: self
                    .workers
                    .iter()
                    .map(|w| WorkerSignal {
                        id: w.id,
                        state: if w.ready_at <= now {
                            WorkerState::Ready
                        } else {
                            WorkerState::Starting
                        },
                        in_flight: w.in_flight,
                        idle_for: now - w.idle_since,
                        in_state_for: Duration::ZERO,
                        protected: false,
                    })
                    .collect(),
                queued,
                recent_peak: self.samples.iter().map(|(_, l)| *l).fold(0.0, f64::max),
                since_scale_up: self.last_scale_up.map(|t| now - t),
                ..Signals::default()
            };
            let d = decide(&self.policy, &signals);
            for _ in 0..d.launch {
                self.workers.push(SimWorker {
                    id: self.next_id,
                    ready_at: now + self.boot,
                    in_flight: 0,
                    idle_since: now,
                    surplus: false,
                });
                self.next_id += 1;
                self.launches.push(now);
            }
            if d.launch > 0 {
                self.last_scale_up = Some(now);
            }
            for id in &d.release {
                self.workers.retain(|w| w.id != *id);
                self.releases.push(now);
            }
            for w in &mut self.workers {
                w.surplus = d.surplus.contains(&w.id);
            }
            self.now += STEP;
            d
        }

        fn run(&mut self, load: u32, for_: Duration) {
            let until = self.now + for_;
            while self.now < until {
                self.step(load);
            }
        }

        fn changes_after(&self, t: Duration) -> (usize, usize) {
            (
                self.launches.iter().filter(|at| **at >= t).count(),
                self.releases.iter().filter(|at| **at >= t).count(),
            )
        }
    }

    #[test]
    fn trace_scale_in_follows_max_idle_time_after_the_load_drops() {
        // The scenario: 8 clients, worker_concurrency 2, max_idle_time 2 s, then 2.
        let mut t = Trace::new(2, 4, Duration::from_secs(2));
        t.run(8, Duration::from_secs(10));
        assert_eq!(t.size(), 4, "grown to max_workers");
        let dropped = t.now;
        let mut shrunk = None;
        while t.now < dropped + Duration::from_secs(14) {
            t.step(2);
            if shrunk.is_none() && t.size() <= 3 {
                shrunk = Some(t.now - dropped);
            }
        }
        let shrunk = shrunk.expect("shrinks after the drop");
        // The burst leaves the 2 s hold window, the surplus goes idle for 2 s, then goes.
        assert!(shrunk <= Duration::from_millis(4500), "{shrunk:?}");
        assert_eq!(t.size(), 2, "what 2 clients need at 1.4 in flight each");
        assert_eq!(
            t.changes_after(dropped).0,
            0,
            "nothing launched after the drop"
        );
        // Then it holds.
        let settled = t.now;
        t.run(2, Duration::from_secs(60));
        assert_eq!(t.changes_after(settled), (0, 0));
    }

    #[test]
    fn trace_steady_load_does_not_flap() {
        for load in [1, 3, 5, 7, 13] {
            let mut t = Trace::new(4, 8, Duration::from_secs(2));
            t.run(load, Duration::from_secs(5));
            let settled = t.now;
            t.run(load, Duration::from_secs(120));
            assert_eq!(t.changes_after(settled), (0, 0), "load {load}");
        }
    }

    #[test]
    fn trace_bursts_closer_than_max_idle_time_do_not_flap() {
        // Bursts of 8 for 0.5 s, then 1 for a pseudo-random 0.3..1.9 s: always within the 2 s
        // hold window of the next burst.
        let mut t = Trace::new(2, 8, Duration::from_secs(2));
        let mut seed: u64 = 0x5eed;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % 17
        };
        let mut bursts = 0;
        let mut settled = None;
        while t.now < Duration::from_secs(180) {
            t.run(8, Duration::from_millis(500));
            t.run(1, Duration::from_millis(300 + 100 * next()));
            bursts += 1;
            if bursts == 3 {
                settled = Some(t.now);
            }
        }
        let settled = settled.unwrap();
        assert_eq!(t.changes_after(settled), (0, 0), "{} bursts", bursts);
    }

    #[test]
    fn trace_with_default_windows_keeps_workers_for_max_idle_time() {
        let mut t = Trace::new(2, 4, Duration::from_secs(60));
        t.run(8, Duration::from_secs(10));
        let dropped = t.now;
        t.run(0, Duration::from_secs(59));
        assert_eq!(t.size(), 4, "nothing released before max_idle_time");
        t.run(0, Duration::from_secs(10));
        assert_eq!(t.size(), 1);
        assert_eq!(t.changes_after(dropped).0, 0);
    }
}
