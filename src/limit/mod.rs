//! A cap on open connections that a reload can resize while connections are open: the proxy's
//! `server.max_connections` and the admin listener's `admin.max_connections`.
//!
//! Each open connection holds one permit of a semaphore. Growing the cap adds permits at once.
//! Shrinking takes back the free permits at once and records the rest as a debt: a connection
//! that ends while a debt is owed forgets its permit instead of returning it, so the cap comes
//! down as connections above it finish, and no open connection is cut.

pub mod nofile;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// A resizable cap on open connections.
pub struct ConnectionLimit {
    semaphore: Arc<Semaphore>,
    /// Permits still to take back after a shrink.
    debt: AtomicUsize,
    /// Connections holding a permit now.
    open: AtomicUsize,
    /// The cap; the lock also makes resizes one at a time.
    max: Mutex<usize>,
    /// Woken when the last open connection closes (shutdown's drain waits on it).
    none_open: Notify,
}

impl ConnectionLimit {
    /// A cap of `max` connections (at most tokio's `Semaphore::MAX_PERMITS`, far above any
    /// descriptor limit).
    pub fn new(max: usize) -> Arc<Self> {
        let max = max.min(Semaphore::MAX_PERMITS);
        Arc::new(ConnectionLimit {
            semaphore: Arc::new(Semaphore::new(max)),
            debt: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            max: Mutex::new(max),
            none_open: Notify::new(),
        })
    }

    /// A slot now, or `None` at the cap.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnectionPermit> {
        let permit = Arc::clone(&self.semaphore).try_acquire_owned().ok()?;
        Some(self.admit(permit))
    }

    /// A slot, waiting for one at the cap.
    pub async fn acquire(self: &Arc<Self>) -> ConnectionPermit {
        match Arc::clone(&self.semaphore).acquire_owned().await {
            Ok(permit) => self.admit(permit),
            // The semaphore is never closed; should it be, waiting forever is what a cap of
            // zero means.
            Err(_) => std::future::pending().await,
        }
    }

    fn admit(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> ConnectionPermit {
        self.open.fetch_add(1, Ordering::AcqRel);
        ConnectionPermit {
            permit: Some(permit),
            limit: Arc::clone(self),
        }
    }

    /// Connections open now (holding a slot).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Returns once no connection is open: at once if none is, else when the last one
    /// closes. Shutdown waits on it (with its grace as the deadline) instead of polling.
    pub async fn none_open(&self) {
        loop {
            let closed = self.none_open.notified();
            let mut closed = std::pin::pin!(closed);
            // Registered before the count is read, so a close in between is not missed.
            closed.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            closed.await;
        }
    }

    /// The cap now.
    pub fn max(&self) -> usize {
        *self.lock_max()
    }

    /// Change the cap to `new` and return the old one. Connections open above a lowered cap
    /// carry on; new ones wait until the count is under it.
    pub fn resize(&self, new: usize) -> usize {
        let new = new.min(Semaphore::MAX_PERMITS);
        let mut max = self.lock_max();
        let old = *max;
        if new > old {
            let grow = new - old;
            // Pay off what a shrink still owes before adding permits.
            let owed = self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    Some(d.saturating_sub(grow))
                })
                .unwrap_or(0);
            self.semaphore.add_permits(grow - owed.min(grow));
        } else if new < old {
            let shrink = old - new;
            let taken = self.semaphore.forget_permits(shrink);
            self.debt.fetch_add(shrink - taken, Ordering::AcqRel);
        }
        *max = new;
        old
    }

    fn lock_max(&self) -> std::sync::MutexGuard<'_, usize> {
        self.max.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One connection's slot; dropping it frees the slot (or pays a shrink's debt with it).
pub struct ConnectionPermit {
    permit: Option<OwnedSemaphorePermit>,
    limit: Arc<ConnectionLimit>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        if self.limit.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.limit.none_open.notify_waiters();
        }
        let Some(permit) = self.permit.take() else {
            return;
        };
        let owed = self
            .limit
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1))
            .is_ok();
        if owed {
            permit.forget();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(limit: &Arc<ConnectionLimit>, n: usize) -> Vec<ConnectionPermit> {
        (0..n)
            .map(|i| {
                limit
                    .try_acquire()
                    .unwrap_or_else(|| panic!("slot {i} of {n}"))
            })
            .collect()
    }

    #[test]
    fn holds_the_cap() {
        let limit = ConnectionLimit::new(2);
        let held = take(&limit, 2);
        assert!(limit.try_acquire().is_none());
        assert_eq!(limit.open(), 2);
        drop(held);
        assert_eq!(limit.open(), 0);
        assert_eq!(take(&limit, 2).len(), 2);
    }

    #[test]
    fn growing_admits_more_at_once() {
        let limit = ConnectionLimit::new(2);
        let _held = take(&limit, 2);
        assert_eq!(limit.resize(5), 2);
        let _more = take(&limit, 3);
        assert!(limit.try_acquire().is_none());
        assert_eq!((limit.open(), limit.max()), (5, 5));
    }

    #[test]
    fn shrinking_takes_free_slots_now_and_the_rest_as_connections_end() {
        let limit = ConnectionLimit::new(6);
        let mut held = take(&limit, 4);
        // Two free slots go at once; two more are owed by the open connections.
        assert_eq!(limit.resize(2), 6);
        assert!(limit.try_acquire().is_none());
        held.pop();
        held.pop();
        assert!(limit.try_acquire().is_none(), "ends paid the debt");
        assert_eq!(limit.open(), 2);
        held.pop();
        let again = limit.try_acquire().expect("under the new cap");
        assert!(limit.try_acquire().is_none());
        drop((held, again));
        let _full = take(&limit, 2);
        assert!(limit.try_acquire().is_none());
    }

    #[test]
    fn growing_again_pays_the_debt_first() {
        let limit = ConnectionLimit::new(4);
        let held = take(&limit, 4);
        limit.resize(1); // owes 3
        limit.resize(3); // owes 1
        assert!(limit.try_acquire().is_none());
        drop(held);
        let now = take(&limit, 3);
        assert!(limit.try_acquire().is_none());
        assert_eq!(now.len(), limit.max());
    }

    #[test]
    fn absurd_caps_are_clamped_not_a_panic() {
        let limit = ConnectionLimit::new(usize::MAX);
        assert_eq!(limit.max(), Semaphore::MAX_PERMITS);
        limit.resize(usize::MAX);
        limit.resize(1);
        assert_eq!(take(&limit, 1).len(), 1);
    }

    #[tokio::test]
    async fn a_waiter_gets_the_slot_a_grow_adds() {
        let limit = ConnectionLimit::new(1);
        let _held = take(&limit, 1);
        let waiter = tokio::spawn({
            let limit = Arc::clone(&limit);
            async move { limit.acquire().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        limit.resize(2);
        let _got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter is admitted")
            .unwrap();
        assert_eq!(limit.open(), 2);
    }
}
