//! A retry budget: retries may be at most a share of a pool's recent requests, so a failing
//! pool gets a few retries, not a multiplied load. Nothing here runs per request: the request
//! count comes from the workers' `served` counters, and the lock is taken only to retry.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// The window the ratio applies to.
const WINDOW: Duration = Duration::from_secs(10);
/// Granularity of the window's samples.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Retries always allowed per window, so a quiet pool can still retry (Linkerd allows 10/s; one
/// per second is gentler on a pool that is going down).
const MIN_RETRIES_PER_WINDOW: u64 = 10;

struct Sample {
    at: Instant,
    requests: u64,
    retries: u64,
}

/// The budget of one pool.
pub struct RetryBudget {
    ratio: Mutex<f64>,
    state: Mutex<(VecDeque<Sample>, u64)>,
}

impl RetryBudget {
    /// A budget allowing `ratio` retries per request over the window.
    pub fn new(ratio: f64) -> Self {
        RetryBudget {
            ratio: Mutex::new(ratio),
            state: Mutex::new((VecDeque::new(), 0)),
        }
    }

    /// Change the ratio (config reload); true if it changed.
    pub fn set_ratio(&self, ratio: f64) -> bool {
        let mut current = self.ratio.lock().unwrap_or_else(|p| p.into_inner());
        let changed = (*current - ratio).abs() > f64::EPSILON;
        *current = ratio;
        changed
    }

    /// Spend one retry if the budget allows; `requests_total` is the pool's request count so far.
    pub fn try_spend(&self, requests_total: u64) -> bool {
        let now = Instant::now();
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (samples, retries) = &mut *guard;
        // Counts since the oldest sample still inside the window stand for the window's.
        while samples
            .front()
            .is_some_and(|s| now.duration_since(s.at) >= WINDOW)
        {
            samples.pop_front();
        }
        if samples
            .back()
            .is_none_or(|s| now.duration_since(s.at) >= SAMPLE_EVERY)
        {
            samples.push_back(Sample {
                at: now,
                requests: requests_total,
                retries: *retries,
            });
        }
        let base = &samples[0];
        let window_requests = requests_total.saturating_sub(base.requests);
        let window_retries = retries.saturating_sub(base.retries);
        let ratio = *self.ratio.lock().unwrap_or_else(|p| p.into_inner());
        let allowed = MIN_RETRIES_PER_WINDOW + (ratio * window_requests as f64) as u64;
        if window_retries < allowed {
            *retries += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn allows_a_share_of_requests_plus_a_floor() {
        let budget = RetryBudget::new(0.2);
        // Quiet pool: the floor.
        let spent = (0..50).filter(|_| budget.try_spend(0)).count() as u64;
        assert_eq!(spent, MIN_RETRIES_PER_WINDOW);
        // Busy pool: 1000 requests in the window allow 200 more.
        tokio::time::advance(Duration::from_secs(1)).await;
        let spent = (0..500).filter(|_| budget.try_spend(1000)).count() as u64;
        assert_eq!(spent, 200);
        // After the window passes, the old retries no longer count.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(budget.try_spend(1000));
    }
}
