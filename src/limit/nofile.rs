//! Descriptors for the connection caps. Every client connection is a descriptor, so a soft
//! `RLIMIT_NOFILE` below `server.max_connections` makes accepts fail with `EMFILE` long before
//! the cap (the common soft default is 1,024). At start weir raises the soft limit to the hard
//! one, as Go's runtime does; if the caps still do not fit, it says so in one warning line.

use tracing::{info, warn};

use crate::config::Config;
use crate::sys;

/// Descriptors counted for what is not a client or admin connection: listening sockets,
/// runtime and signal descriptors, probes, the access log, idle pooled worker connections.
/// (A request in flight also holds a worker connection, so a proxy with every connection busy
/// needs up to twice `max_connections`: the warning is a floor, not a budget.)
pub const FD_RESERVE: u64 = 64;

/// Raise the soft descriptor limit to the hard one (never lower it) and warn, in one line, if
/// `config`'s caps plus [`FD_RESERVE`] still do not fit. Called once by `weir run`; it changes
/// the whole process's limit, which a library embedding weir may not want.
pub fn raise_and_check(config: &Config) {
    let limit = match sys::nofile_limit() {
        Ok(limit) => limit,
        Err(e) => {
            warn!(error = %e, "cannot read RLIMIT_NOFILE; the connection caps are not checked against it");
            return;
        }
    };
    let mut soft = limit.soft;
    if limit.soft < limit.hard {
        match sys::set_nofile_soft_limit(limit.hard, limit.hard) {
            Ok(()) => {
                info!(
                    from = limit.soft,
                    to = limit.hard,
                    "raised the soft RLIMIT_NOFILE to the hard limit"
                );
                soft = limit.hard;
            }
            Err(e) => {
                warn!(error = %e, soft = limit.soft, hard = limit.hard, "cannot raise the soft RLIMIT_NOFILE")
            }
        }
    }
    warn_if_short(soft, limit.hard, config);
}

/// The proxy's cap on client connections: `server.max_connections`, lowered to what the
/// descriptor limit in force can hold, so that accepts never fail with `EMFILE` and the
/// descriptors a busy client needs besides its own (a worker connection, a temporary file)
/// and the admin listener's and [`FD_RESERVE`] are always there. At the cap, idle
/// connections give way to new ones (see `reuse`).
pub fn client_cap(config: &Config) -> usize {
    let max = config.server.max_connections;
    match sys::nofile_limit() {
        Ok(limit) => cap_within(limit.soft, max, config.admin.max_connections),
        Err(_) => max,
    }
}

/// Half of what `soft` leaves after the admin cap and the reserve (each busy client
/// connection may hold a worker connection and a temporary file besides), at most `max`.
fn cap_within(soft: u64, max: usize, admin_max: usize) -> usize {
    let wide = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let room = soft.saturating_sub(wide(admin_max).saturating_add(FD_RESERVE)) / 2;
    max.min(usize::try_from(room).unwrap_or(usize::MAX)).max(1)
}

/// Warn if the limit in force does not fit `config`'s caps (after a reload changed them).
pub fn check(config: &Config) {
    if let Ok(limit) = sys::nofile_limit() {
        warn_if_short(limit.soft, limit.hard, config);
    }
}

fn warn_if_short(soft: u64, hard: u64, config: &Config) {
    let caps = (config.server.max_connections, config.admin.max_connections);
    if let Some(message) = shortfall(soft, hard, caps.0, caps.1) {
        warn!("{message}");
    }
}

/// The warning when `soft` descriptors cannot hold `max_connections` client connections,
/// `admin_max` admin connections and [`FD_RESERVE`]; `None` when they fit.
fn shortfall(soft: u64, hard: u64, max_connections: usize, admin_max: usize) -> Option<String> {
    let wide = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let needed = wide(max_connections)
        .saturating_add(wide(admin_max))
        .saturating_add(FD_RESERVE);
    (needed > soft).then(|| {
        format!(
            "RLIMIT_NOFILE is {soft} (hard limit {hard}), below server.max_connections ({max_connections}) + admin.max_connections ({admin_max}) + {FD_RESERVE} in reserve = {needed}: accepts will fail with EMFILE before the cap; raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or lower server.max_connections"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_that_fit_need_no_warning() {
        assert_eq!(shortfall(1_048_576, 1_048_576, 20_000, 256), None);
        // Exactly enough is enough.
        assert_eq!(shortfall(20_320, 20_320, 20_000, 256), None);
    }

    #[test]
    fn caps_above_the_limit_are_named_in_one_line() {
        let message = shortfall(20_319, 20_319, 20_000, 256).unwrap();
        assert_eq!(
            message,
            "RLIMIT_NOFILE is 20319 (hard limit 20319), below server.max_connections (20000) + admin.max_connections (256) + 64 in reserve = 20320: accepts will fail with EMFILE before the cap; raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or lower server.max_connections"
        );
        assert!(!message.contains('\n'));
        assert!(shortfall(1024, 4096, 1000, 256)
            .unwrap()
            .contains("RLIMIT_NOFILE is 1024 (hard limit 4096)"));
    }

    #[test]
    fn the_client_cap_leaves_room_for_what_busy_clients_also_open() {
        assert_eq!(cap_within(1_048_576, 20_000, 256), 20_000);
        assert_eq!(cap_within(1024, 20_000, 256), (1024 - 256 - 64) / 2);
        assert_eq!(cap_within(100, 20_000, 256), 1);
        assert!(cap_within(u64::MAX, usize::MAX, usize::MAX) >= 1);
        assert_eq!(cap_within(u64::MAX, 500, 0), 500);
    }

    #[test]
    fn huge_caps_do_not_overflow() {
        let message = shortfall(u64::MAX - 1, u64::MAX, usize::MAX, usize::MAX).unwrap();
        assert!(message.contains(&format!("= {}", u64::MAX)), "{message}");
    }

    #[test]
    fn this_process_limit_can_be_read_and_raised() {
        let before = sys::nofile_limit().unwrap();
        assert!(before.soft <= before.hard);
        raise_and_check(&crate::config::parse(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"a\"\n[pools.a]\nprovider = { kind = \"static\", addresses = [\"127.0.0.1:1\"] }\n",
            "t.toml",
        )
        .unwrap());
        let after = sys::nofile_limit().unwrap();
        assert_eq!(after.hard, before.hard);
        assert!(after.soft >= before.soft);
    }
}
