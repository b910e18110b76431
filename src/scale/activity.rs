//! The scaling history: a bounded ring of events, each also a tracing event, for operators
//! asking "why did the pool grow at 11:02?".

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use tracing::info;

/// Events kept; older ones fall off.
pub const ACTIVITY_CAPACITY: usize = 1000;

/// What the scaler did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Workers launched for load or the minimum.
    ScaleUp,
    /// Idle workers drained and released.
    ScaleDown,
    /// A dead, unhealthy or never-ready worker given up and replaced.
    Replace,
    /// A desired count set by an operator.
    Manual,
    /// A launch that failed (backing off).
    LaunchFailed,
    /// Running workers an earlier weir launched, listed by the provider and taken over.
    Adopt,
    /// A rollout to a new revision started, moved on or ended.
    Rollout,
    /// A new revision given up: its workers go, the old revision's template is back.
    Rollback,
}

impl Action {
    /// The admin API's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::ScaleUp => "scale_up",
            Action::ScaleDown => "scale_down",
            Action::Replace => "replace",
            Action::Manual => "manual",
            Action::LaunchFailed => "launch_failed",
            Action::Adopt => "adopt",
            Action::Rollout => "rollout",
            Action::Rollback => "rollback",
        }
    }
}

/// One entry.
#[derive(Debug, Clone)]
pub struct ActivityEvent {
    /// When.
    pub at: SystemTime,
    /// Which pool.
    pub pool: String,
    /// What.
    pub action: Action,
    /// Workers before.
    pub from: u32,
    /// Workers after (or aimed for).
    pub to: u32,
    /// Why, in words.
    pub reason: String,
}

/// The ring.
#[derive(Debug, Default)]
pub struct ActivityLog {
    events: Mutex<VecDeque<ActivityEvent>>,
}

impl ActivityLog {
    /// Record an event (and log it).
    pub fn record(&self, pool: &str, action: Action, from: u32, to: u32, reason: String) {
        info!(pool, action = action.as_str(), from, to, %reason, "scaling activity");
        crate::telemetry::record_scale_event(pool, action.as_str());
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if events.len() == ACTIVITY_CAPACITY {
            events.pop_front();
        }
        events.push_back(ActivityEvent {
            at: SystemTime::now(),
            pool: pool.to_string(),
            action,
            from,
            to,
            reason,
        });
    }

    /// All kept events, oldest first.
    pub fn events(&self) -> Vec<ActivityEvent> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_bounded() {
        let log = ActivityLog::default();
        for i in 0..(ACTIVITY_CAPACITY as u32 + 5) {
            log.record("p", Action::ScaleUp, i, i + 1, "test".into());
        }
        let events = log.events();
        assert_eq!(events.len(), ACTIVITY_CAPACITY);
        assert_eq!(events[0].from, 5);
    }
}
