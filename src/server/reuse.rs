//! Idle connections give way (nginx's reusable connections). When the proxy is at its
//! connection cap, which the descriptor limit may have lowered (see `nofile::client_cap`), an
//! idle keep-alive connection (HTTP/1.1 between requests, HTTP/2 with no open stream) is the
//! cheapest thing to let go: the oldest idle ones are closed so that new clients get in,
//! instead of waiting in the kernel's backlog until `header_read_timeout` or `idle_timeout`.
//!
//! Every open proxy connection is listed here from accept to end (one map entry; a request
//! costs nothing here). Only a connection at its cap scans the list, so the hot path never
//! does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use dashmap::DashMap;

use crate::proxy::{coarse_ms, ConnContext};

/// How long a connection that has sent no request yet is spared (ms).
pub const FRESH_GRACE_MS: u64 = 1000;

/// Idle connections closed per scan, for a cap of `cap`: a 64th of it (at least one). A scan
/// costs one pass over every open connection, so a flood of new clients at the cap pays for
/// it once per that many admissions, while a small cap closes no more than it needs.
pub fn give_way_batch(cap: usize) -> usize {
    (cap / 64).max(1)
}

/// How often a connection waiting at the cap asks again: a connection asked while it was busy
/// stays open, and may be idle by now.
pub const GIVE_WAY_AGAIN: std::time::Duration = std::time::Duration::from_millis(50);

/// The proxy's open connections.
#[derive(Default)]
pub struct OpenConnections {
    conns: DashMap<u64, Weak<ConnContext>>,
    next_id: AtomicU64,
}

/// A connection's place in the list; leaving it takes the connection off.
pub struct Listed {
    id: u64,
    list: Arc<OpenConnections>,
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.list.conns.remove(&self.id);
    }
}

impl OpenConnections {
    /// List `cx` until the returned value is dropped.
    pub fn list(self: &Arc<Self>, cx: &Arc<ConnContext>) -> Listed {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.conns.insert(id, Arc::downgrade(cx));
        Listed {
            id,
            list: Arc::clone(self),
        }
    }

    /// Ask up to `n` of the idle connections, the longest idle first, to close; how many
    /// were asked. Idle is between requests; a connection that has not sent its first
    /// request yet counts only after [`FRESH_GRACE_MS`], so a new client is not closed on
    /// its way in.
    pub fn give_way(&self, n: usize) -> usize {
        let now = coarse_ms();
        let mut idle: Vec<(u64, Arc<ConnContext>)> = self
            .conns
            .iter()
            .filter_map(|entry| entry.value().upgrade())
            .filter(|cx| {
                cx.active() == 0
                    && (cx.requests() > 0
                        || now.saturating_sub(cx.idle_since_ms()) >= FRESH_GRACE_MS)
            })
            .map(|cx| (cx.idle_since_ms(), cx))
            .collect();
        idle.sort_unstable_by_key(|(since, _)| *since);
        let asked = idle.len().min(n);
        for (_, cx) in idle.into_iter().take(asked) {
            cx.ask_to_give_way();
        }
        asked
    }
}
