//! A lock-free latency histogram: a fixed array of relaxed atomic counters with buckets a
//! quarter of an octave wide, so recording costs a binary search over 88 integers and one add
//! (8 ns, `cargo bench -- "pool latency"`), and a reader turns
//! the difference of two snapshots into a percentile (within about 19%) for any interval it
//! likes. A pool keeps one for its responses (the dashboard's `p99_ms` and `rps`); alert rules
//! keep one for the whole weir.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets: bucket `i` holds durations below `100 us * 2^(i/4)`; the last also holds
/// everything longer (88 buckets reach 350 s, past the time limits weir is usually given).
pub const BUCKETS: usize = 88;

/// The upper bound of each bucket in nanoseconds, computed at compile time: 100 us times
/// 2^(i/4). Recording a duration is then a binary search over 88 integers (a few
/// comparisons), with no floating point on the request path.
const BOUNDS_NS: [u64; BUCKETS] = {
    const QUARTER_OCTAVE: f64 = 1.189_207_115_002_721; // 2^(1/4)
    let mut bounds = [0u64; BUCKETS];
    let mut bound = 100_000.0f64;
    let mut i = 0;
    while i < BUCKETS {
        bounds[i] = bound as u64;
        bound *= QUARTER_OCTAVE;
        i += 1;
    }
    bounds
};

/// The upper bound of bucket `i` (the value a percentile in that bucket is reported as).
pub fn bucket_upper_bound(i: usize) -> Duration {
    Duration::from_nanos(BOUNDS_NS[i.min(BUCKETS - 1)])
}

/// The bucket a duration falls in: the first whose bound lies above it (the last holds the
/// rest).
fn bucket_of(duration: Duration) -> usize {
    let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
    BOUNDS_NS
        .partition_point(|&bound| bound <= nanos)
        .min(BUCKETS - 1)
}

/// Counters every response adds to, read whole by a sampler.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS],
        }
    }
}

impl LatencyHistogram {
    /// Count one duration.
    pub fn record(&self, duration: Duration) {
        self.buckets[bucket_of(duration)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now (each counter read once; not one atomic picture, which a percentile
    /// over a second does not need).
    pub fn counts(&self) -> LatencyCounts {
        LatencyCounts(std::array::from_fn(|i| {
            self.buckets[i].load(Ordering::Relaxed)
        }))
    }
}

/// A histogram's counts at one moment, or the difference of two such moments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyCounts(pub [u64; BUCKETS]);

impl Default for LatencyCounts {
    fn default() -> Self {
        LatencyCounts([0; BUCKETS])
    }
}

impl LatencyCounts {
    /// What was counted after `earlier` (counters only grow; a smaller one reads as 0).
    pub fn since(&self, earlier: &LatencyCounts) -> LatencyCounts {
        LatencyCounts(std::array::from_fn(|i| {
            self.0[i].saturating_sub(earlier.0[i])
        }))
    }

    /// How many durations were counted.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The `q` quantile (0 < q <= 1) as its bucket's upper bound; `None` when nothing was
    /// counted.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in self.0.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_upper_bound(i));
            }
        }
        Some(bucket_upper_bound(BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_what_is_below_their_bound() {
        for ms in [0.01, 0.1, 0.15, 1.0, 7.0, 99.0, 1_000.0, 30_000.0] {
            let d = Duration::from_secs_f64(ms / 1e3);
            let i = bucket_of(d);
            assert!(d < bucket_upper_bound(i), "{ms} ms in bucket {i}");
            if i > 0 {
                assert!(
                    d >= bucket_upper_bound(i - 1),
                    "{ms} ms belongs lower than {i}"
                );
            }
        }
        assert_eq!(bucket_of(Duration::from_secs(100_000)), BUCKETS - 1);
        assert!(bucket_upper_bound(BUCKETS - 1) > Duration::from_secs(300));
    }

    #[test]
    fn p99_of_an_interval() {
        let h = LatencyHistogram::default();
        let before = h.counts();
        for _ in 0..98 {
            h.record(Duration::from_micros(150));
        }
        h.record(Duration::from_millis(100));
        h.record(Duration::from_millis(100));
        let counts = h.counts().since(&before);
        assert_eq!(counts.total(), 100);
        let p99 = counts.quantile(0.99).unwrap_or_default();
        assert!(
            p99 > Duration::from_millis(100) && p99 < Duration::from_millis(120),
            "{p99:?}"
        );
        // Two slow responses in 200 are 1%: the 99th percentile is a fast one.
        for _ in 0..100 {
            h.record(Duration::from_micros(150));
        }
        let counts = h.counts().since(&before);
        let p99 = counts.quantile(0.99).unwrap_or_default();
        assert!(p99 < Duration::from_micros(200), "{p99:?}");
        assert_eq!(LatencyCounts::default().quantile(0.99), None);
        assert_eq!(before.since(&h.counts()).total(), 0);
    }
}
