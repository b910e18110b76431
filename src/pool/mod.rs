//! Pools of workers and their live state. A pool's worker list is an `ArcSwap` snapshot so the
//! request path reads it without locking while health checks and the autoscaler change it.

mod balance;
mod worker;

pub use balance::Balancer;
pub use worker::{InFlightGuard, Worker, WorkerState};

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{parse_socket_addr, PoolConfig, ProviderConfig};

/// A named group of interchangeable workers.
#[derive(Debug)]
pub struct Pool {
    /// The `[pools.NAME]` key.
    pub name: String,
    balancer: Balancer,
    workers: ArcSwap<Vec<Arc<Worker>>>,
}

impl Pool {
    /// Build a pool from its config; static workers start `Ready` (health checks come later).
    pub fn from_config(name: &str, config: &PoolConfig) -> Result<Self, String> {
        let workers = match &config.provider {
            ProviderConfig::Static { addresses } => addresses
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let addr = parse_socket_addr(a)?;
                    Ok(Worker::new(
                        format!("{name}-{}", i + 1),
                        addr,
                        WorkerState::Ready,
                    ))
                })
                .collect::<Result<Vec<_>, String>>()?,
        };
        Ok(Pool {
            name: name.to_string(),
            balancer: Balancer::new(config.balance),
            workers: ArcSwap::from_pointee(workers),
        })
    }

    /// Pick a ready worker for a new request.
    pub fn pick(&self) -> Option<Arc<Worker>> {
        let workers = self.workers.load();
        self.balancer.pick(&workers).cloned()
    }

    /// The current workers (a snapshot).
    pub fn workers(&self) -> Arc<Vec<Arc<Worker>>> {
        self.workers.load_full()
    }

    /// Requests in flight across the pool's workers.
    pub fn in_flight(&self) -> u64 {
        self.workers
            .load()
            .iter()
            .map(|w| u64::from(w.in_flight()))
            .sum()
    }
}
