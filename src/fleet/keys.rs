//! The names of the fleet's keys in Redis, spelled once: the lease and its fencing counter,
//! the registry's set and each instance's report, each pool's record. The lease, the
//! registry, the records and the heartbeat's script all reach the same keys through these.

/// The leader's lease: `name|token`.
pub(super) fn leader(prefix: &str) -> String {
    format!("{prefix}:leader")
}

/// The fencing counter.
pub(super) fn fence(prefix: &str) -> String {
    format!("{prefix}:fence")
}

/// The registry: instance names scored by when they last reported.
pub(super) fn instances(prefix: &str) -> String {
    format!("{prefix}:instances")
}

/// What comes before an instance's name in its report's key (the heartbeat's script builds
/// those keys from the registry's names).
pub(super) fn report_prefix(prefix: &str) -> String {
    format!("{prefix}:instance:")
}

/// Instance `name`'s report.
pub(super) fn report(prefix: &str, name: &str) -> String {
    format!("{}{name}", report_prefix(prefix))
}

/// Pool `pool`'s record: the workers the leader lists.
pub(super) fn members(prefix: &str, pool: &str) -> String {
    format!("{prefix}:pool:{pool}:members")
}
