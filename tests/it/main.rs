//! Every integration test, in one binary so weir links once: each module is one area, run
//! against real weir listeners, real workers and the real components the README lists (a
//! Docker Engine, redis-server, chromium; the Kubernetes API server alone is simulated, in
//! `k8s_sim`). Helpers: `common` (starting weir in-process or as a process, clients, demo
//! workers, conditions with deadlines), `browser` (headless Chromium over the DevTools
//! protocol), `hosts` (weir instances and Redis as containers on networks the test makes),
//! `k8s_sim` (the simulated API server).
//!
//! One process runs them all, so what is process-wide is shared: metrics are labelled by
//! route and pool, and tests that read a series use names no other test uses.

mod browser;
mod common;
mod hosts;
mod k8s_sim;

mod acme;
mod admin;
mod admin_guard;
mod adoption;
mod alerts;
mod autoscale;
mod cli;
mod client_certs;
mod client_time_limits;
mod dashboard;
mod dns_workers;
mod docker;
mod edge;
mod failure_records;
mod fleet;
mod fleet_hosts;
mod forwarded;
mod give_way;
mod grpc;
mod health_queue;
mod kubernetes;
mod kubernetes_provider;
mod protection;
mod proxy;
mod proxy_protocol;
mod read_timeout;
mod reload;
mod retry_on_status;
mod rewrites;
mod rollout;
mod slot_attacks;
mod slow_readers;
mod smuggling;
mod sticky;
mod strict_host;
mod strict_requests;
mod tls_h2;
mod upgrade;
mod upstream_errors;
mod worker_kill;
mod worker_protocols;
mod worker_wire;
