//! weir: a load-aware HTTPS reverse proxy with built-in worker autoscaling.
//!
//! A map of the crate, in layers from the top; a module imports only from its own layer or
//! those below (`layers.rs` checks it):
//! - [`app`]: start-up and shutdown. Binds the listeners, builds the data plane and the
//!   control plane, starts the control, admin and serving threads, stops them in order.
//! - [`admin`]: the admin API on its own thread, `/metrics`, the dashboard, the CLI views.
//! - [`control`]: the control plane. Owns the scalers, activity, history and fleet
//!   membership; starts pools, runs alerts, history and the fleet; reloads.
//! - [`alerts`], [`demo`]: alert rules and their webhooks; the demo worker.
//! - [`scale`], [`server`]: the autoscaler (a pure decision and the per-pool loop around it);
//!   the serving threads (SO_REUSEPORT listeners, TLS, weir's HTTP/1.1 server, HTTP/2 on
//!   hyper, the per-connection watchdog, draining), and nothing else.
//! - [`fleet`], [`history`], [`provider`], [`proxy`], [`acme`]: several weirs as one fleet
//!   through Redis (`[cluster]`); each pool's last 15 minutes; where workers come from (static
//!   lists, processes, shell commands, Docker, Kubernetes); the request path (route, pick,
//!   rewrite, send, stream back, tunnel); certificates from an ACME CA.
//! - [`membership`], [`state`]: the one way workers enter and leave a pool; the data plane's
//!   state (the live `ArcSwap` snapshot, the open connections).
//! - [`health`], [`routing`]: active probes; the host + longest path prefix table.
//! - [`telemetry`], [`upstream`]: Prometheus metrics and the alert counters; weir's HTTP/1.1
//!   client for workers and its per-thread keep-alive pool.
//! - [`error`], [`pool`], [`tls`], [`limit`], [`heap`], [`edge`], [`client_cert`]: the
//!   request path's one failure type and its one mapping to status, log line and metric
//!   stage; workers, their counters and states, balancers, queues, retry budgets and
//!   settings; rustls set-up; the resizable connection cap and the descriptor limit; giving
//!   freed heap back; what a listener answers itself (redirects to HTTPS) and adds to
//!   responses (HSTS); a verified client certificate as the worker's header; the
//!   certificates weir obtained ([`certs`]), served by SNI.
//! - [`http1`], [`config`]: HTTP/1.1 framing both sides share (the decoder, a client's body,
//!   the upgrade hand-off); the TOML model, read straight into checked values, validated by
//!   table.
//! - [`values`], `sys`, [`spool`], [`access_log`]: the value types the config reads into,
//!   each with its parser and tests; the one module allowed unsafe code (the few libc calls
//!   std does not offer); bodies held in memory then in unlinked temporary files within one
//!   budget; the JSON access log.

#![deny(unsafe_code)]

pub mod access_log;
pub mod acme;
pub mod admin;
pub mod alerts;
pub mod app;
pub mod certs;
pub mod client_cert;
pub mod config;
pub mod control;
pub mod demo;
pub mod edge;
pub mod error;
pub mod fleet;
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
