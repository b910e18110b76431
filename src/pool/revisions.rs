//! What a pool knows per revision of its workers: the answers each revision gave (the canary
//! gates compare them), and a canary's split of the requests between the new revision and
//! the rest.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::latency::{LatencyCounts, LatencyHistogram};
use super::worker::Worker;

/// The answers of one revision's workers: counters every response adds to, lock-free.
#[derive(Debug, Default)]
pub struct RevisionStats {
    answers: AtomicU64,
    server_errors: AtomicU64,
    latency: LatencyHistogram,
}

impl RevisionStats {
    /// Count one answer: its status and how long the request took.
    pub fn record(&self, status: u16, duration: Duration) {
        self.answers.fetch_add(1, Ordering::Relaxed);
        if (500..600).contains(&status) {
            self.server_errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latency.record(duration);
    }

    /// The counts now.
    pub fn snapshot(&self) -> AnswerCounts {
        AnswerCounts {
            answers: self.answers.load(Ordering::Relaxed),
            server_errors: self.server_errors.load(Ordering::Relaxed),
            latency: self.latency.counts(),
        }
    }
}

/// Answers counted at one moment, or between two (see [`AnswerCounts::since`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnswerCounts {
    /// Responses.
    pub answers: u64,
    /// Of which 5xx.
    pub server_errors: u64,
    /// How long they took.
    pub latency: LatencyCounts,
}

impl AnswerCounts {
    /// What was counted after `earlier`.
    pub fn since(&self, earlier: &AnswerCounts) -> AnswerCounts {
        AnswerCounts {
            answers: self.answers.saturating_sub(earlier.answers),
            server_errors: self.server_errors.saturating_sub(earlier.server_errors),
            latency: self.latency.since(&earlier.latency),
        }
    }

    /// Add `other`'s counts (several old revisions judged as one).
    pub fn add(&mut self, other: &AnswerCounts) {
        self.answers += other.answers;
        self.server_errors += other.server_errors;
        for (mine, theirs) in self.latency.0.iter_mut().zip(other.latency.0.iter()) {
            *mine += theirs;
        }
    }

    /// The share of 5xx answers (0 when there were none at all).
    pub fn error_rate(&self) -> f64 {
        if self.answers == 0 {
            0.0
        } else {
            self.server_errors as f64 / self.answers as f64
        }
    }
}

/// A canary's split: `weight` percent of the pool's requests go to workers of `revision`, the
/// rest to the others. In a fleet the leader's record carries it to every instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionSplit {
    /// The new revision.
    pub revision: String,
    /// Percent of requests it gets (0-100).
    pub weight: u32,
}

/// A split with the pool's workers sorted to its two sides, rebuilt whenever the worker list
/// changes (the request path compares the list it read with the one this was built from).
#[derive(Debug)]
pub(super) struct SplitSides {
    pub split: RevisionSplit,
    /// The worker list these sides were cut from.
    pub built_from: Arc<Vec<Arc<Worker>>>,
    pub new: Vec<Arc<Worker>>,
    pub old: Vec<Arc<Worker>>,
}

impl SplitSides {
    pub fn cut(split: RevisionSplit, workers: Arc<Vec<Arc<Worker>>>) -> Self {
        let (new, old) = workers
            .iter()
            .cloned()
            .partition(|w| w.revision() == Some(split.revision.as_str()));
        SplitSides {
            split,
            built_from: workers,
            new,
            old,
        }
    }

    /// Whether request number `turn` goes to the new revision: exactly `weight` of every 100
    /// turns, spread evenly (turn `t` goes new when `t * weight / 100` steps up).
    pub fn new_turn(&self, turn: u64) -> bool {
        let w = u64::from(self.split.weight.min(100));
        (turn + 1) * w / 100 > turn * w / 100
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::WorkerState;

    #[test]
    fn turns_give_the_new_revision_exactly_its_weight() {
        for weight in [0, 1, 10, 33, 50, 90, 100] {
            let sides = SplitSides::cut(
                RevisionSplit {
                    revision: "v2".into(),
                    weight,
                },
                Arc::new(Vec::new()),
            );
            let new = (0..2_000).filter(|t| sides.new_turn(*t)).count();
            assert_eq!(new, 20 * weight as usize, "weight {weight}");
            // Spread, not bunched: any 100 turns in a row hold the weight within one.
            let window = (500..600).filter(|t| sides.new_turn(*t)).count() as i64;
            assert!(
                (window - i64::from(weight)).abs() <= 1,
                "weight {weight}: {window}"
            );
        }
    }

    #[test]
    fn sides_follow_the_workers_revisions() {
        let workers: Vec<Arc<Worker>> = ["v1", "v2", "v1"]
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let w = Worker::detached(
                    &format!("w{i}"),
                    format!("127.0.0.1:{}", 4000 + i).parse().unwrap(),
                    WorkerState::Ready,
                );
                w.set_revision(Some(r.to_string()), Arc::default());
                w
            })
            .collect();
        let sides = SplitSides::cut(
            RevisionSplit {
                revision: "v2".into(),
                weight: 10,
            },
            Arc::new(workers),
        );
        assert_eq!(sides.new.len(), 1);
        assert_eq!(sides.old.len(), 2);
    }

    #[test]
    fn answers_between_two_moments() {
        let stats = RevisionStats::default();
        stats.record(200, Duration::from_millis(1));
        let before = stats.snapshot();
        stats.record(500, Duration::from_millis(2));
        stats.record(200, Duration::from_millis(2));
        stats.record(503, Duration::from_millis(2));
        stats.record(499, Duration::from_millis(2));
        let step = stats.snapshot().since(&before);
        assert_eq!((step.answers, step.server_errors), (4, 2));
        assert!((step.error_rate() - 0.5).abs() < 1e-9);
        let mut sum = step.clone();
        sum.add(&step);
        assert_eq!((sum.answers, sum.latency.total()), (8, 8));
        assert_eq!(AnswerCounts::default().error_rate(), 0.0);
    }
}
