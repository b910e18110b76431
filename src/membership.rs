//! The one way workers enter and leave a pool. A source (a static list, the scaler's launches
//! and releases, a provider's own discovery such as a container engine's labels or Kubernetes
//! EndpointSlices) emits [`MemberUpdate`]s, a full set and then changes; [`Membership`] applies
//! them to the pool and attaches health probing to every new member the same way. The pool then
//! does not care where its workers came from.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::health;
use crate::pool::{Pool, Worker, WorkerState};

/// One worker as its source knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The source's id for it, stable for the worker's life (a container id, a pod name, the
    /// exec launch's id); what the admin API and CLI show.
    pub id: String,
    /// Where weir proxies to.
    pub addr: SocketAddr,
    /// Readiness as the source reports it (a Kubernetes Ready condition); `None` when the
    /// source cannot tell, and weir's own probes decide.
    pub ready: Option<bool>,
    /// The pool's revision it was launched with, where the source can tell.
    pub revision: Option<String>,
}

impl Member {
    /// A member whose readiness weir's probes decide.
    pub fn probed(id: impl Into<String>, addr: SocketAddr) -> Self {
        Member {
            id: id.into(),
            addr,
            ready: None,
            revision: None,
        }
    }

    /// The same member, launched with `revision`.
    pub fn with_revision(self, revision: Option<String>) -> Self {
        Member { revision, ..self }
    }
}

/// A change to a pool's members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberUpdate {
    /// The whole set: members not in it leave, new ones join, known ones stay as they are.
    Reset(Vec<Member>),
    /// One member joined (or, with an id already known at another address, was replaced).
    Added(Member),
    /// One member left; its in-flight requests finish on their own.
    Removed(String),
    /// The source's readiness of one member changed (only for members whose source reports
    /// readiness).
    Readiness {
        /// The member's id.
        id: String,
        /// Whether it takes new requests.
        ready: bool,
    },
    /// One member is going away on its source's side (a terminating pod of a rolling
    /// update): it takes no new request and finishes those it has; it is not unhealthy.
    Draining(String),
}

/// How a discovery source hands its updates over; the pool follows it until it closes.
pub type MemberStream = mpsc::Receiver<MemberUpdate>;

/// Applies member updates to one pool.
pub struct Membership {
    pool: Arc<Pool>,
    probe: AtomicBool,
}

impl Membership {
    /// Membership of `pool`, probing new members with the pool's health settings.
    pub fn new(pool: Arc<Pool>) -> Arc<Self> {
        Arc::new(Membership {
            pool,
            probe: AtomicBool::new(true),
        })
    }

    /// The pool it feeds.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Whether new members get weir's probes (the normal case). Tests that drive readiness
    /// themselves on a paused clock turn it off.
    pub fn set_probing(&self, probe: bool) {
        self.probe.store(probe, Ordering::Relaxed);
    }

    /// Apply one update; returns the workers it added (call on the control runtime: probes
    /// are spawned there).
    pub fn apply(&self, update: MemberUpdate) -> Vec<Arc<Worker>> {
        match update {
            MemberUpdate::Reset(members) => {
                for worker in self.pool.workers().iter() {
                    let kept = members
                        .iter()
                        .any(|m| m.id == worker.name && m.addr == worker.addr);
                    if !kept {
                        self.remove(&worker.name);
                    }
                }
                members.into_iter().filter_map(|m| self.add(m)).collect()
            }
            MemberUpdate::Added(member) => self.add(member).into_iter().collect(),
            MemberUpdate::Removed(id) => {
                self.remove(&id);
                Vec::new()
            }
            MemberUpdate::Readiness { id, ready } => {
                if let Some(worker) = self.pool.worker_named(&id) {
                    apply_readiness(&self.pool, &worker, ready);
                }
                Vec::new()
            }
            MemberUpdate::Draining(id) => {
                if let Some(worker) = self.pool.worker_named(&id) {
                    if worker.state() != WorkerState::Draining {
                        info!(pool = %self.pool.name, worker = %worker.name, "worker draining (its source is taking it away)");
                        worker.set_state(WorkerState::Draining);
                    }
                }
                Vec::new()
            }
        }
    }

    /// Apply a source's updates until it closes its stream.
    pub async fn follow(self: Arc<Self>, mut updates: MemberStream) {
        while let Some(update) = updates.recv().await {
            self.apply(update);
        }
        debug!(pool = %self.pool.name, "member source closed");
    }

    fn add(&self, member: Member) -> Option<Arc<Worker>> {
        if let Some(known) = self.pool.worker_named(&member.id) {
            if known.addr == member.addr {
                if let Some(ready) = member.ready {
                    apply_readiness(&self.pool, &known, ready);
                }
                return None;
            }
            self.remove(&member.id);
        }
        let state = match member.ready {
            Some(true) => WorkerState::Ready,
            Some(false) | None => WorkerState::Starting,
        };
        let worker = self
            .pool
            .add_worker(member.id, member.addr, state, member.revision);
        info!(pool = %self.pool.name, worker = %worker.name, addr = %worker.addr, state = state.as_str(), "worker joined");
        if member.ready.is_none() && self.probe.load(Ordering::Relaxed) {
            health::watch_worker(&self.pool, &worker);
        }
        Some(worker)
    }

    fn remove(&self, id: &str) {
        if let Some(worker) = self.pool.worker_named(id) {
            self.pool.remove_worker(worker.id);
            info!(pool = %self.pool.name, worker = %worker.name, "worker left");
        }
    }
}

/// A source-reported readiness: ready takes requests; not ready takes none (a worker still
/// finishing its start stays `starting`).
fn apply_readiness(pool: &Pool, worker: &Worker, ready: bool) {
    match (worker.state(), ready) {
        (WorkerState::Draining, _) => {}
        (WorkerState::Ready, true) | (WorkerState::Starting, false) => {}
        (_, true) => {
            info!(pool = %pool.name, worker = %worker.name, "worker ready (reported by its source)");
            worker.set_state(WorkerState::Ready);
        }
        (_, false) => {
            info!(pool = %pool.name, worker = %worker.name, "worker not ready (reported by its source)");
            worker.set_state(WorkerState::Unhealthy);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolConfig;

    fn membership() -> Arc<Membership> {
        let config: PoolConfig =
            toml::from_str("provider = { kind = \"exec\", launch = \"x\", release = \"x\" }")
                .unwrap();
        let m = Membership::new(Pool::from_config("p", &config));
        m.set_probing(false);
        m
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn names(m: &Membership) -> Vec<String> {
        m.pool().workers().iter().map(|w| w.name.clone()).collect()
    }

    #[test]
    fn a_reset_keeps_known_members_and_replaces_the_rest() {
        let m = membership();
        let added = m.apply(MemberUpdate::Reset(vec![
            Member::probed("a", addr(1)),
            Member::probed("b", addr(2)),
        ]));
        assert_eq!(added.len(), 2);
        let a = Arc::clone(&m.pool().workers()[0]);
        // "a" stays the same worker object; "b" moved, "c" is new; nothing else is left.
        let added = m.apply(MemberUpdate::Reset(vec![
            Member::probed("a", addr(1)),
            Member::probed("b", addr(9)),
            Member::probed("c", addr(3)),
        ]));
        assert_eq!(added.len(), 2);
        assert!(Arc::ptr_eq(&a, &m.pool().workers()[0]));
        assert_eq!(names(&m), ["a", "b", "c"]);
        assert_eq!(m.pool().worker_named("b").unwrap().addr, addr(9));
        m.apply(MemberUpdate::Removed("a".into()));
        assert_eq!(names(&m), ["b", "c"]);
    }

    #[test]
    fn a_source_that_reports_readiness_drives_the_state() {
        let m = membership();
        m.apply(MemberUpdate::Added(Member {
            id: "pod-1".into(),
            addr: addr(1),
            ready: Some(false),
            revision: None,
        }));
        let w = m.pool().worker_named("pod-1").unwrap();
        assert_eq!(w.state(), WorkerState::Starting);
        m.apply(MemberUpdate::Readiness {
            id: "pod-1".into(),
            ready: true,
        });
        assert_eq!(w.state(), WorkerState::Ready);
        m.apply(MemberUpdate::Readiness {
            id: "pod-1".into(),
            ready: false,
        });
        assert_eq!(w.state(), WorkerState::Unhealthy);
        // The same member again, now ready: same worker, new state.
        m.apply(MemberUpdate::Added(Member {
            id: "pod-1".into(),
            addr: addr(1),
            ready: Some(true),
            revision: None,
        }));
        assert!(Arc::ptr_eq(&w, &m.pool().worker_named("pod-1").unwrap()));
        assert_eq!(w.state(), WorkerState::Ready);
    }

    #[tokio::test]
    async fn follow_applies_a_stream_until_it_closes() {
        let m = membership();
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(Arc::clone(&m).follow(rx));
        tx.send(MemberUpdate::Reset(vec![Member::probed("x", addr(5))]))
            .await
            .unwrap();
        tx.send(MemberUpdate::Added(Member::probed("y", addr(6))))
            .await
            .unwrap();
        drop(tx);
        task.await.unwrap();
        assert_eq!(names(&m), ["x", "y"]);
    }
}
