//! The serde model of `weir.toml`. Every default is a named constant saying why it has that value.
//! Key names here are a public interface: add to them, never rename.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::duration::Dur;

/// Time allowed for a client to send a complete request head. Short enough that a slowloris
/// client holds a connection slot for seconds, long enough for a slow mobile link.
pub const DEFAULT_HEADER_READ_TIMEOUT: Dur = Dur::from_secs(10);
/// A client connection with no request in progress is closed after this long (nginx uses 75s).
pub const DEFAULT_IDLE_TIMEOUT: Dur = Dur::from_secs(60);
/// Largest request head accepted; beyond it the client gets 431. Matches common proxy limits.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Open client connections across all listeners; past it weir stops accepting until one closes.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// Time allowed for a TLS handshake, so half-open TLS clients cannot pin connection slots.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Dur = Dur::from_secs(10);
/// Concurrent HTTP/2 streams per client connection (the value most servers advertise).
pub const DEFAULT_MAX_H2_STREAMS: u32 = 256;
/// How long shutdown waits for in-flight requests before closing what is left.
pub const DEFAULT_SHUTDOWN_GRACE: Dur = Dur::from_secs(30);
/// Time to establish a TCP connection to a worker; a local worker answers in microseconds.
pub const DEFAULT_CONNECT_TIMEOUT: Dur = Dur::from_secs(5);
/// Time a worker has to start its response (headers) before the client gets 504.
pub const DEFAULT_RESPONSE_TIMEOUT: Dur = Dur::from_secs(60);
/// Pooled worker connections idle longer than this are not reused. Kept below Node.js's 5 s
/// keep-alive, the shortest common worker default, so weir lets go of a connection before the
/// worker closes it under a request.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Dur = Dur::from_secs(4);
/// Idle connections kept per worker per thread; enough for bursts without hoarding sockets.
pub const DEFAULT_MAX_IDLE_PER_WORKER: usize = 256;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How weir treats the clients that connect to it.
    #[serde(default)]
    pub server: ServerConfig,
    /// How weir talks to workers.
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// Addresses weir accepts clients on; at least one.
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// Host and path-prefix rules mapping requests to pools.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Named groups of workers.
    #[serde(default)]
    pub pools: BTreeMap<String, PoolConfig>,
}

/// Client-side settings (the "downstream" side, in Envoy's words).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Serving threads, each with its own runtime, listeners and worker connections; 0 = one per
    /// core.
    pub threads: usize,
    /// Cap on open client connections across all listeners.
    pub max_connections: usize,
    /// Time to receive a full request head. For HTTP/1.1 the clock starts as soon as the
    /// connection waits for a request, so it also bounds idle time between keep-alive requests.
    pub header_read_timeout: Dur,
    /// Close a connection (HTTP/1.1 or HTTP/2) with no request in progress after this long.
    pub idle_timeout: Dur,
    /// Largest request head in bytes; larger gets 431.
    pub max_header_bytes: usize,
    /// Time allowed for the TLS handshake.
    pub tls_handshake_timeout: Dur,
    /// Concurrent streams per HTTP/2 client connection.
    pub max_h2_streams: u32,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Dur,
    /// CIDRs (or bare addresses) of proxies in front of weir whose X-Forwarded-* headers are
    /// trusted. Default: none, so no client can spoof its address.
    pub trusted_proxies: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            threads: 0,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            tls_handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
            max_h2_streams: DEFAULT_MAX_H2_STREAMS,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Worker-side settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Time to open a TCP connection to a worker; past it the client gets 502.
    pub connect_timeout: Dur,
    /// Time for a worker to send response headers; past it the client gets 504.
    pub response_timeout: Dur,
    /// Pooled idle worker connections older than this are not reused.
    pub idle_timeout: Dur,
    /// Idle connections kept per worker per serving thread.
    pub max_idle_per_worker: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            idle_timeout: DEFAULT_UPSTREAM_IDLE_TIMEOUT,
            max_idle_per_worker: DEFAULT_MAX_IDLE_PER_WORKER,
        }
    }
}

/// One address weir accepts clients on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// "IP:port"; port 0 picks a free port (tests).
    pub listen: String,
    /// Present: terminate TLS on this listener.
    pub tls: Option<TlsConfig>,
}

/// Certificates for a TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain served when no other certificate matches the client's SNI.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// Further certificates, chosen by SNI against the DNS names in each one's SAN list.
    #[serde(default)]
    pub certs: Vec<CertPair>,
}

/// A certificate chain and its key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Maps requests to a pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Label for logs, metrics and the admin API; default `host + path_prefix` (e.g. "*/api").
    pub name: Option<String>,
    /// Exact host ("api.example.com"), one-label wildcard ("*.example.com") or "*" (default).
    pub host: Option<String>,
    /// Path prefix matched on whole segments ("/api" matches "/api" and "/api/x", not "/apix");
    /// the longest matching prefix wins. Default "/".
    pub path_prefix: Option<String>,
    /// Name of the pool in `[pools]`.
    pub pool: String,
}

/// A group of interchangeable workers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// How a worker is chosen for each request.
    #[serde(default)]
    pub balance: Balance,
    /// Where the workers come from.
    pub provider: ProviderConfig,
}

/// Balancing policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Power of two choices over live in-flight counts: near-optimal spread, no global scan.
    #[default]
    LeastInflight,
    /// Each worker in turn.
    RoundRobin,
}

/// Source of a pool's workers.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProviderConfig {
    /// A fixed list of worker addresses.
    Static {
        /// "IP:port" of each worker.
        addresses: Vec<String>,
    },
}
