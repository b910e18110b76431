//! The scaling decision: a pure function of the policy, the pool's signals and the clock, so
//! every transition (0 -> 1 -> N -> 0) is decided in one place and tested without processes.

use std::time::Duration;

use crate::config::{AutoscaleConfig, DEFAULT_TARGET_INFLIGHT};
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
    /// Peak window for scaling up.
    pub panic_window: Duration,
    /// Average window for surplus.
    pub stable_window: Duration,
    /// Scheduled minimums.
    pub schedule: Vec<ScheduledMin>,
}

impl ScalePolicy {
    /// Build from config; `worker_concurrency` supplies the default target.
    pub fn from_config(
        c: &AutoscaleConfig,
        worker_concurrency: Option<u32>,
    ) -> Result<Self, String> {
        let target_inflight = c
            .target_inflight
            .unwrap_or_else(|| match worker_concurrency {
                Some(n) => (f64::from(n) * TARGET_SHARE_OF_CONCURRENCY).max(1.0),
                None => DEFAULT_TARGET_INFLIGHT,
            });
        let schedule = c
            .schedule
            .iter()
            .map(|w| {
                Ok(ScheduledMin {
                    cron: Cron::parse(&w.cron)?,
                    duration: w.duration.get(),
                    min_workers: w.min_workers,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(ScalePolicy {
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
            stable_window: c.stable_window.get(),
            schedule,
        })
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

    /// Workers needed for `load` concurrent requests.
    fn demand(&self, load: f64) -> u32 {
        (load / self.target_inflight)
            .ceil()
            .clamp(0.0, f64::from(u32::MAX)) as u32
    }
}

/// A ready, unprotected worker with nothing in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleWorker {
    /// The worker's id.
    pub id: u64,
    /// How long it has had no request.
    pub idle_for: Duration,
}

/// What the scaler sees of a pool at one moment.
#[derive(Debug, Clone, Default)]
pub struct Signals {
    /// Workers taking requests.
    pub ready: u32,
    /// Launches not yet ready (including provider calls in progress).
    pub starting: u32,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Requests waiting now.
    pub queued: u64,
    /// Peak of in-flight + queued over the panic window.
    pub panic_peak: f64,
    /// Average of in-flight + queued over the stable window.
    pub stable_avg: f64,
    /// Wall clock, minutes since the Unix epoch (schedules).
    pub now_minutes: u64,
    /// Release candidates.
    pub idle: Vec<IdleWorker>,
}

/// What to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Workers the pool should have.
    pub desired: u32,
    /// The floor now.
    pub effective_min: u32,
    /// Workers to launch.
    pub launch: u32,
    /// Idle workers to drain and release, longest idle first.
    pub release: Vec<u64>,
    /// Ready workers beyond the stable demand (the balancer uses them only as overflow).
    pub surplus: u32,
    /// Why, for the activity log.
    pub reason: String,
}

/// Decide launches, releases and surplus for one pool.
pub fn decide(policy: &ScalePolicy, s: &Signals) -> Decision {
    let effective_min = policy.effective_min(s.now_minutes);
    let load_now = (s.in_flight + s.queued) as f64;
    let mut burst = policy.demand(s.panic_peak.max(load_now));
    if s.queued > 0 && s.ready == 0 {
        burst = burst.max(1);
    }
    let clamp = |n: u32| {
        n.saturating_add(policy.buffer_workers)
            .clamp(effective_min, policy.max_workers)
    };
    let desired = clamp(burst);
    let capacity = s.ready + s.starting;

    let mut launch = 0;
    let mut reason = String::new();
    if desired > capacity {
        let floor_gap = effective_min.saturating_sub(capacity);
        let stepped = (desired - capacity)
            .min(policy.scale_up_step)
            .max(floor_gap);
        let start_room = policy.max_concurrent_starts.saturating_sub(s.starting);
        launch = stepped
            .min(start_room)
            .min(policy.max_workers.saturating_sub(capacity));
        reason = if capacity < effective_min {
            format!(
                "below minimum {effective_min}: {} ready, {} starting",
                s.ready, s.starting
            )
        } else if s.queued > 0 {
            format!(
                "queue depth {} > 0, {} ready, {} starting",
                s.queued, s.ready, s.starting
            )
        } else {
            format!(
                "load {:.0} over {} workers at target {} in flight",
                s.panic_peak.max(load_now),
                capacity,
                policy.target_inflight
            )
        };
    }

    let stable = clamp(policy.demand(s.stable_avg)).max(desired);
    let surplus = s.ready.saturating_sub(stable);

    let mut release = Vec::new();
    if launch == 0 {
        // Keep the minimum and spares above current demand; anything else idle long enough goes.
        let floor = effective_min.max(clamp(policy.demand(load_now)));
        let room = capacity.saturating_sub(floor) as usize;
        let mut idle: Vec<&IdleWorker> = s
            .idle
            .iter()
            .filter(|w| w.idle_for >= policy.max_idle_time)
            .collect();
        idle.sort_by_key(|w| std::cmp::Reverse(w.idle_for));
        release = idle.into_iter().take(room).map(|w| w.id).collect();
        if !release.is_empty() {
            reason = format!(
                "{} worker(s) idle for {:?} or more, {} ready, floor {}",
                release.len(),
                policy.max_idle_time,
                s.ready,
                floor
            );
        }
    }
    Decision {
        desired,
        effective_min,
        launch,
        release,
        surplus,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AutoscaleConfig;

    fn policy(min: u32, max: u32) -> ScalePolicy {
        let config = AutoscaleConfig {
            min_workers: min,
            max_workers: max,
            target_inflight: Some(4.0),
            max_idle_time: crate::config::Dur::from_secs(60),
            ..AutoscaleConfig::default()
        };
        ScalePolicy::from_config(&config, None).unwrap()
    }

    fn idle(id: u64, secs: u64) -> IdleWorker {
        IdleWorker {
            id,
            idle_for: Duration::from_secs(secs),
        }
    }

    #[test]
    fn burst_scales_up_by_step_counting_starting_workers() {
        let p = policy(1, 8);
        let s = Signals {
            ready: 1,
            in_flight: 4,
            queued: 20,
            panic_peak: 24.0,
            stable_avg: 2.0,
            ..Signals::default()
        };
        let d = decide(&p, &s);
        assert_eq!(d.desired, 6);
        assert_eq!(d.launch, 2, "scale_up_step caps one decision");
        assert!(d.reason.contains("queue depth 20"), "{}", d.reason);
        // Next tick: the two launches are starting; still short, two more.
        let d = decide(
            &p,
            &Signals {
                starting: 2,
                ..s.clone()
            },
        );
        assert_eq!(d.launch, 2);
        // Capacity reached: no overshoot.
        let d = decide(
            &p,
            &Signals {
                starting: 5,
                ..s.clone()
            },
        );
        assert_eq!(d.launch, 0);
        // max_concurrent_starts (4) holds launches back.
        let d = decide(
            &p,
            &Signals {
                starting: 4,
                ready: 0,
                ..s
            },
        );
        assert_eq!(d.launch, 0);
    }

    #[test]
    fn never_above_max() {
        let p = policy(1, 3);
        let s = Signals {
            ready: 2,
            in_flight: 100,
            panic_peak: 100.0,
            ..Signals::default()
        };
        let d = decide(&p, &s);
        assert_eq!((d.desired, d.launch), (3, 1));
    }

    #[test]
    fn steady_load_neither_launches_nor_releases() {
        let p = policy(1, 8);
        let s = Signals {
            ready: 3,
            in_flight: 11,
            panic_peak: 12.0,
            stable_avg: 11.5,
            idle: vec![],
            ..Signals::default()
        };
        for _ in 0..100 {
            let d = decide(&p, &s);
            assert_eq!((d.launch, d.release.len(), d.surplus), (0, 0, 0));
        }
    }

    #[test]
    fn decay_marks_surplus_then_releases_idle_longest_first_down_to_min() {
        let p = policy(1, 8);
        let s = Signals {
            ready: 4,
            in_flight: 1,
            panic_peak: 1.0,
            stable_avg: 1.0,
            idle: vec![idle(1, 10), idle(2, 70), idle(3, 90)],
            ..Signals::default()
        };
        let d = decide(&p, &s);
        assert_eq!(d.surplus, 3);
        assert_eq!(
            d.release,
            vec![3, 2],
            "only those idle past max_idle_time, longest first"
        );
        // Never below the minimum, whatever is idle.
        let s = Signals {
            ready: 1,
            in_flight: 0,
            panic_peak: 0.0,
            stable_avg: 0.0,
            idle: vec![idle(9, 500)],
            ..Signals::default()
        };
        assert!(decide(&p, &s).release.is_empty());
    }

    #[test]
    fn idle_release_applies_whatever_the_windows_say() {
        let p = policy(1, 8);
        // The stable window still remembers a burst, but two workers have been idle 61 s.
        let s = Signals {
            ready: 3,
            in_flight: 2,
            panic_peak: 2.0,
            stable_avg: 30.0,
            idle: vec![idle(1, 61), idle(2, 61)],
            ..Signals::default()
        };
        let d = decide(&p, &s);
        assert_eq!(d.release.len(), 2);
    }

    #[test]
    fn scale_to_zero_and_back() {
        let p = policy(0, 4);
        let s = Signals {
            ready: 1,
            idle: vec![idle(7, 60)],
            ..Signals::default()
        };
        assert_eq!(decide(&p, &s).release, vec![7]);
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
                queued: 1,
                starting: 1,
                ..Signals::default()
            },
        );
        assert_eq!(d.launch, 0);
    }

    #[test]
    fn flapping_input_does_not_flap_workers() {
        let p = policy(1, 8);
        // Load alternating between 3 and 13 every sample: the panic peak holds at 13.
        let mut launched = 0;
        let mut released = 0;
        let mut ready = 4;
        for i in 0..200 {
            let load = if i % 2 == 0 { 3 } else { 13 };
            let s = Signals {
                ready,
                in_flight: load,
                panic_peak: 13.0,
                stable_avg: 8.0,
                ..Signals::default()
            };
            let d = decide(&p, &s);
            launched += d.launch;
            released += d.release.len();
            ready += d.launch;
        }
        assert_eq!((launched, released), (0, 0));
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
        let p = ScalePolicy::from_config(&config, None).unwrap();
        let d = decide(
            &p,
            &Signals {
                ready: 1,
                in_flight: 4,
                panic_peak: 4.0,
                stable_avg: 4.0,
                ..Signals::default()
            },
        );
        assert_eq!((d.desired, d.launch), (3, 2));
        let s = Signals {
            ready: 3,
            idle: vec![idle(1, 600), idle(2, 600), idle(3, 600)],
            ..Signals::default()
        };
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
            cron: "0 11 * * *".into(),
            duration: crate::config::Dur::from_secs(7200),
            min_workers: 3,
        });
        let p = ScalePolicy::from_config(&config, None).unwrap();
        let day = 20416 * 1440;
        let at = |h: u64, m: u64| Signals {
            ready: 1,
            now_minutes: day + h * 60 + m,
            ..Signals::default()
        };
        assert_eq!(decide(&p, &at(10, 59)).launch, 0);
        let d = decide(&p, &at(11, 0));
        assert_eq!((d.effective_min, d.launch), (3, 2));
        assert!(d.reason.contains("below minimum 3"), "{}", d.reason);
        assert_eq!(decide(&p, &at(13, 0)).effective_min, 1);
    }

    #[test]
    fn default_target_comes_from_worker_concurrency() {
        let p = ScalePolicy::from_config(&AutoscaleConfig::default(), Some(10)).unwrap();
        assert!((p.target_inflight - 7.0).abs() < 1e-9);
        let p = ScalePolicy::from_config(&AutoscaleConfig::default(), None).unwrap();
        assert!((p.target_inflight - DEFAULT_TARGET_INFLIGHT).abs() < 1e-9);
    }
}
