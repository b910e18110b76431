//! weir: a load-aware HTTPS reverse proxy with built-in worker autoscaling.
//!
//! A map of the crate, in the order a request meets it:
//! - [`server`]: thread-per-core serving threads, SO_REUSEPORT listeners, TLS, the per-connection
//!   HTTP/1.1 + HTTP/2 driver with its timeouts and connection cap.
//! - [`proxy`]: the request path, top to bottom: route, pick, rewrite, send, stream back, tunnel.
//! - [`routing`]: host + longest path prefix lookup.
//! - [`pool`]: workers, their live atomic counters and states, the balancers, the bounded
//!   per-route queue and the retry budget.
//! - [`http1`]: the HTTP/1.1 framing both sides share: the message and body decoder, a
//!   client's request body, the hand-off of an upgraded connection.
//! - [`upstream`]: weir's HTTP/1.1 client for workers and its per-thread keep-alive pool.
//! - [`membership`]: the one way workers enter and leave a pool (a source's full set, then
//!   changes), with health probing attached to every member.
//! - [`health`]: active probes that move workers between starting, ready and unhealthy.
//! - [`scale`]: the autoscaler: a pure decision function and the per-pool loop around it.
//! - [`provider`]: where workers come from (static lists, local processes, shell commands).
//! - [`error`]: the one failure type of the request path (stage, whether the worker saw the
//!   request, retry verdict) and its one mapping to status, log line and metric stage.
//! - [`config`] and [`state`]: the TOML model, validation, and the live `ArcSwap` snapshot.
//! - [`control`]: the control-plane thread: health, scalers, admin API, reload.
//! - [`admin`], [`telemetry`], [`access_log`]: the admin API, the dashboard and CLI views,
//!   Prometheus metrics, the JSON access log.
//! - [`history`]: each pool's last 15 minutes, sampled every second for the dashboard.
//! - [`tls`] and [`limit`]: rustls set-up (certificates by SNI, the one crypto provider) and
//!   the resizable cap on open connections, below the serving code that uses them.
//! - [`spool`]: bodies held between a fast side and a slow one, in memory and then in unlinked
//!   temporary files within one shared budget.
//! - [`heap`]: gives the allocator's free pages back to the kernel after a burst.
//! - [`demo`]: the demo worker used by the shipped config, tests and benchmarks.
//! - [`values`]: the small value types at the bottom (durations, byte sizes, CIDRs, host
//!   patterns and the `Host` check, status lists, cron schedules, wall-clock formatting), each
//!   with its parser and tests.
//! - `sys`: the one module allowed unsafe code: the few libc calls std does not offer (worker
//!   process groups, the parent-death signal, the descriptor limit, heap statistics and trim).

#![deny(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod alerts;
pub mod app;
pub mod cluster;
pub mod config;
pub mod control;
pub mod demo;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod health;
pub mod heap;
pub mod history;
pub mod http1;
#[cfg(test)]
mod layers;
pub mod limit;
pub mod membership;
pub mod pool;
pub mod provider;
pub mod proxy;
pub mod routing;
pub mod scale;
pub mod server;
pub mod spool;
pub mod state;
mod sys;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod values;
