//! How fast a client's request body must come: no more of it within
//! `server.request_body_timeout`, or less of it than `server.min_data_rate` allows once
//! `server.min_data_rate_grace` has passed (averaged from its start, as Kestrel's
//! MinRequestBodyDataRate), and the body has stalled. Both are one deadline, recomputed as
//! bytes arrive: no timer runs per byte.

use std::time::Duration;

use tokio::time::Instant;

use super::UpstreamSettings;

/// How fast a body must come.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Longest wait for the next bytes.
    pub idle: Duration,
    /// Slowest average, bytes per second (0: unchecked).
    pub min_rate: u64,
    /// How long the average may be below `min_rate` before it counts.
    pub grace: Duration,
}

impl Pace {
    /// The pace `settings` ask of request bodies.
    pub fn of(settings: &UpstreamSettings) -> Self {
        Pace {
            idle: settings.request_body_timeout,
            min_rate: settings.min_data_rate,
            grace: settings.min_data_rate_grace,
        }
    }

    /// No limit at all (a body already sent).
    pub fn unchecked() -> Self {
        Pace {
            idle: Duration::MAX,
            min_rate: 0,
            grace: Duration::ZERO,
        }
    }

    /// When a body that began at `start`, last moved at `last` and brought `received` bytes
    /// so far is too slow if nothing more comes.
    pub fn deadline(&self, start: Instant, last: Instant, received: u64) -> Instant {
        // A limit too far to represent never comes (a year from now stands for it).
        let far = || last + Duration::from_secs(365 * 86_400);
        let idle = last.checked_add(self.idle).unwrap_or_else(far);
        if self.min_rate == 0 {
            return idle;
        }
        let earned = Duration::from_secs_f64(received as f64 / self.min_rate as f64);
        idle.min(
            start
                .checked_add(self.grace.max(earned))
                .unwrap_or_else(far),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_is_the_sooner_of_idle_and_the_rate() {
        let start = Instant::now();
        let pace = Pace {
            idle: Duration::from_secs(60),
            min_rate: 1000,
            grace: Duration::from_secs(5),
        };
        // Nothing yet: the grace.
        assert_eq!(
            pace.deadline(start, start, 0),
            start + Duration::from_secs(5)
        );
        // 20 KB earned 20 s at 1 KB/s.
        assert_eq!(
            pace.deadline(start, start, 20_000),
            start + Duration::from_secs(20)
        );
        // A body that moved recently but earned little is held to the rate...
        let later = start + Duration::from_secs(30);
        assert_eq!(
            pace.deadline(start, later, 1_000),
            start + Duration::from_secs(5)
        );
        // ...and one far ahead of it to the idle limit.
        assert_eq!(
            pace.deadline(start, start, 10_000_000),
            start + Duration::from_secs(60)
        );
        let unchecked = Pace {
            min_rate: 0,
            ..pace
        };
        assert_eq!(
            unchecked.deadline(start, later, 0),
            later + Duration::from_secs(60)
        );
    }
}
