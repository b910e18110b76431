//! The live, validated state every serving thread reads: one [`Snapshot`] built from a config
//! and published through `ArcSwap`, so a reload replaces routes, pools and certificates in one
//! atomic step and a request sees either the old world or the new one, never a mix.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use crate::access_log::AccessLog;
use crate::config::{Config, ConfigError};
use crate::limit::ConnectionLimit;
use crate::pool::{Pool, Transport};
use crate::routing::RouteTable;
use crate::spool::TempFiles;
use crate::telemetry::AlertCounters;
use crate::telemetry::RouteMetrics;
use crate::tls;
use crate::upstream::UpstreamSettings;
use crate::values::Cidr;

/// Everything derived from one config.
pub struct Snapshot {
    /// The config this was built from.
    pub config: Arc<Config>,
    /// Compiled routes.
    pub routes: RouteTable,
    /// Pools by name.
    pub pools: HashMap<String, Arc<Pool>>,
    /// Networks whose X-Forwarded-* headers are believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Worker-side timeouts and pool sizes.
    pub upstream: UpstreamSettings,
    /// Where bodies beyond their memory buffers go, and the budget they share.
    pub temp_files: Arc<TempFiles>,
    /// TLS settings per listener (same order as `config.listeners`); `None` for plain TCP.
    pub tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    /// What each listener answers itself and adds to its responses (same order); `None`
    /// for a listener with nothing of the kind.
    pub edges: Vec<Option<Arc<crate::edge::ListenerEdge>>>,
    /// The certificates weir obtains from its ACME CA, and their challenges.
    pub certs: Arc<crate::certs::Certs>,
    /// The access log, when on.
    pub access_log: Option<Arc<AccessLog>>,
    /// The admin token, when set.
    pub admin_token: Option<String>,
    /// What alert rules count; carried from snapshot to snapshot across reloads.
    pub alerts: Arc<AlertCounters>,
    /// The series of requests that matched no route.
    pub unrouted: Arc<RouteMetrics>,
}

impl Snapshot {
    /// Build from a config that `config::parse` accepted; loads certificates, so it can still
    /// fail on a certificate or key that does not parse.
    pub fn build(config: Config, origin: &str) -> Result<Self, ConfigError> {
        Snapshot::build_carrying(config, origin, Carried::default())
    }

    /// Build, taking over what `carried` holds from the running snapshot (a reload keeps its
    /// unchanged pools, route queues and alert counters). Reads certificate, key and log files:
    /// call it off the control thread.
    pub fn build_carrying(
        config: Config,
        origin: &str,
        carried: Carried<'_>,
    ) -> Result<Self, ConfigError> {
        let Carried {
            pools: reuse,
            routes: previous_routes,
            alerts,
            temp_files: previous_temp_files,
            certs,
        } = carried;
        let certs = certs.unwrap_or_default();
        let fail = |key: String, message: String| ConfigError {
            origin: origin.to_string(),
            line: None,
            key,
            message,
        };
        let pools: HashMap<String, Arc<Pool>> = config
            .pools
            .iter()
            .map(|(name, pc)| {
                if let Some(pool) = reuse.get(name) {
                    return (name.clone(), Arc::clone(pool));
                }
                let pool = Pool::from_config(name, pc);
                if config.cluster.is_some() {
                    // No share of any worker's cap until the fleet has made room for this
                    // instance (its first heartbeats).
                    pool.set_fleet_place(crate::pool::FleetPlace::Joining);
                }
                (name.clone(), pool)
            })
            .collect();
        // Built (reading CA and certificate files) before anything live changes; handed to
        // the pools once the whole snapshot has built.
        let mut transports = Vec::with_capacity(config.pools.len());
        for (name, pc) in &config.pools {
            let transport = Transport::from_config(pc)
                .map_err(|(key, m)| fail(format!("pools.{name}.{key}"), m))?;
            if transport.tls.as_ref().is_some_and(|t| t.insecure) {
                tracing::warn!(pool = %name, "tls.insecure_skip_verify is on: the workers' certificates are not verified (anyone on the path can pose as a worker)");
            }
            if let Some(pool) = pools.get(name) {
                transports.push((Arc::clone(pool), Arc::new(transport), pc.sticky.clone()));
            }
        }
        let routes = RouteTable::build(&config, &pools, &alerts, previous_routes)
            .map_err(|m| fail(String::new(), m))?;
        let trusted_proxies = config.server.trusted_proxies.clone();
        let tls = config
            .listeners
            .iter()
            .enumerate()
            .map(|(i, l)| {
                l.tls
                    .as_ref()
                    .map(|t| {
                        tls::server_config(t, &certs)
                            .map_err(|(key, m)| fail(format!("listeners[{i}].tls.{key}"), m))
                    })
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        let config_edges = config
            .listeners
            .iter()
            .map(|l| {
                let acme = (config.acme.is_some() && l.tls.is_none()).then(|| Arc::clone(&certs));
                crate::edge::ListenerEdge::of(l, acme).map(Arc::new)
            })
            .collect();
        let access_log = if config.access_log.enabled {
            Some(AccessLog::open(&config.access_log.path).map_err(|e| {
                fail(
                    "access_log.path".into(),
                    format!("{}: {e}", config.access_log.path),
                )
            })?)
        } else {
            None
        };
        let admin_token = config
            .admin
            .resolved_token()
            .map_err(|m| fail("admin.token_env".into(), m))?;
        for (pool, transport, sticky) in transports {
            pool.set_transport(transport);
            pool.set_sticky(sticky);
        }
        Ok(Snapshot {
            unrouted: RouteMetrics::unrouted(&alerts),
            alerts,
            access_log,
            admin_token,
            upstream: UpstreamSettings::new(&config.upstream, &config.server),
            temp_files: temp_files(&config, previous_temp_files),
            config: Arc::new(config),
            routes,
            pools,
            trusted_proxies,
            tls,
            edges: config_edges,
            certs,
        })
    }

    /// Whether X-Forwarded-* from `ip` may be believed.
    pub fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|c| c.contains(ip))
    }
}

/// What a reload carries from the running snapshot into the one it builds.
#[derive(Default)]
pub struct Carried<'a> {
    /// Pools kept as they are, with their workers and waiting requests (same provider).
    pub pools: HashMap<String, Arc<Pool>>,
    /// The running routes: an unchanged route keeps its queue and metric objects.
    pub routes: Option<&'a RouteTable>,
    /// The counters alert rules read.
    pub alerts: Arc<AlertCounters>,
    /// The temporary files of the running snapshot: their budget counts the bodies held now.
    pub temp_files: Option<Arc<TempFiles>>,
    /// The certificates weir obtained (ACME), kept across reloads.
    pub certs: Option<Arc<crate::certs::Certs>>,
}

/// The running snapshot's temporary files when they stay in the same directory (with the new
/// budget), so bodies held across a reload still count; else a fresh set.
fn temp_files(config: &Config, previous: Option<Arc<TempFiles>>) -> Arc<TempFiles> {
    let dir = config
        .upstream
        .temp_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    let max = config.upstream.max_temp_bytes.get();
    match previous {
        Some(temp) if temp.dir() == dir => {
            temp.set_max_bytes(max);
            temp
        }
        _ => TempFiles::new(dir, max),
    }
}

/// The data plane's state, shared by all serving threads and read by the control plane: the
/// live snapshot and the open connections. What only the control plane keeps (scalers,
/// activity, history, the fleet) lives in `control::Control`.
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    /// `server.max_connections` across all listeners and serving threads; a reload resizes it.
    pub connections: Arc<ConnectionLimit>,
}

impl Shared {
    /// Shared state starting from `snapshot`.
    pub fn new(snapshot: Snapshot) -> Arc<Self> {
        Arc::new(Shared {
            connections: ConnectionLimit::new(crate::limit::nofile::client_cap(&snapshot.config)),
            snapshot: ArcSwap::from_pointee(snapshot),
        })
    }

    /// The current snapshot, for short synchronous use (do not hold across an await).
    pub fn snapshot(&self) -> Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// The current snapshot as an owned `Arc`, for holding across awaits (control plane).
    pub fn snapshot_full(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Publish a new snapshot (config reload).
    pub fn publish(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }
}
