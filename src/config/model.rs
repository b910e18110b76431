//! The serde model of `weir.toml`. Every default is a named constant saying why it has that value.
//! Key names here are a public interface: add to them, never rename.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::values::{
    Address, ByteSize, Cidr, Cron, Dur, HeaderRules, HostName, HostRule, RequestPath, StatusRanges,
    WebUrl, WorkerTarget,
};

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
/// Longest wait for the next bytes of a request body (nginx's `client_body_timeout` is 60 s):
/// a client that declared a body and stopped sending it holds a worker slot no longer.
pub const DEFAULT_REQUEST_BODY_TIMEOUT: Dur = Dur::from_secs(60);
/// Longest wait for a client to take more of a response (nginx's `send_timeout` is 60 s): a
/// client that stops reading holds a worker slot no longer.
pub const DEFAULT_SEND_TIMEOUT: Dur = Dur::from_secs(60);
/// An upgraded connection (WebSocket) with no bytes either way is closed after this long:
/// long enough for chat-style sockets that ping every few minutes.
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT: Dur = Dur::from_secs(3600);
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
/// Longest wait for the next bytes of a worker's response body once its head has come (the
/// head's own wait is `response_timeout`). nginx's `proxy_read_timeout` is 60 s too: long
/// enough for a worker that computes between chunks, short enough that a worker hung mid-body
/// gives its slot back within a minute instead of holding it until the client gives up.
pub const DEFAULT_READ_TIMEOUT: Dur = Dur::from_secs(60);
/// A response the worker has sent whole by the time weir reads its first body bytes, and that
/// fits in this many bytes, is held by weir and the worker's slot and connection released at
/// once, so a slow reader costs this much memory instead of a worker slot (nginx's
/// `proxy_buffering`). 64 KiB covers most API and page responses and matches the socket reads
/// weir makes; a thousand slow readers then hold at most 64 MiB.
pub const DEFAULT_RESPONSE_BUFFER: ByteSize = ByteSize::from_kib(64);
/// Beyond `response_buffer`, a response goes on into a temporary file up to this size, so
/// its worker is released as soon as the worker has sent it, whatever the client's speed
/// (nginx's `proxy_max_temp_file_size` is 1 GiB too). A larger response streams on from there,
/// holding its worker.
pub const DEFAULT_MAX_RESPONSE_BUFFER: ByteSize = ByteSize::from_mib(1024);
/// A request body is read into memory up to this size before the request takes a worker slot
/// (nginx's `client_body_buffer_size` is 8-16 KiB; 64 KiB matches weir's socket reads and
/// `response_buffer`).
pub const DEFAULT_REQUEST_BUFFER: ByteSize = ByteSize::from_kib(64);
/// Beyond `request_buffer`, a request body goes on into a temporary file up to this size
/// before the request takes a worker slot; a larger body streams from there (an upload that
/// large is rarely a slow client's trick, and holding it whole would delay it).
pub const DEFAULT_MAX_REQUEST_BUFFER: ByteSize = ByteSize::from_mib(16);
/// All temporary files together hold at most this much; past it bodies stream instead (a
/// flood of slow readers fills a budget, never the disk).
pub const DEFAULT_MAX_TEMP_BYTES: ByteSize = ByteSize::from_mib(4096);
/// Slowest a client may send a body or take a response, averaged, once the grace below has
/// passed (Kestrel's MinRequestBodyDataRate is 240 B/s; 1 KiB/s still serves a 2G phone).
pub const DEFAULT_MIN_DATA_RATE: ByteSize = ByteSize::from_kib(1);
/// How long a body or a response may move slower than `min_data_rate` before the rate is
/// held against it (Kestrel's grace is 5 s): room for TCP slow start and a phone waking up.
pub const DEFAULT_MIN_DATA_RATE_GRACE: Dur = Dur::from_secs(5);

/// Largest `response_buffer` accepted: it is held per slow client, so a bigger one would let a
/// few thousand clients that never read take gigabytes.
pub const MAX_RESPONSE_BUFFER: ByteSize = ByteSize::from_mib(64);

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// The admin API, /metrics and health endpoints.
    #[serde(default)]
    pub admin: AdminConfig,
    /// One JSON line per request.
    #[serde(default)]
    pub access_log: AccessLogConfig,
    /// Alert rules posting to webhooks.
    #[serde(default)]
    pub alerts: Vec<AlertConfig>,
    /// Several weirs acting as one fleet through Redis; absent: this weir alone.
    pub cluster: Option<ClusterConfig>,
    /// The ACME CA that `tls.acme` names get their certificates from.
    pub acme: Option<AcmeConfig>,
}

/// `[acme]`: where certificates for `tls.acme` names come from (RFC 8555).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's directory URL.
    pub directory: String,
    /// A contact address for the account (`mailto:` is added).
    pub email: Option<String>,
    /// Where the account key and the certificates are kept (0600), reused across restarts.
    #[serde(default = "default_acme_storage")]
    pub storage: PathBuf,
    /// An extra root to trust for the directory (a test CA's).
    pub directory_ca: Option<PathBuf>,
    /// Renew a certificate this long before it expires.
    #[serde(default = "default_renew_before")]
    pub renew_before: Dur,
    /// How the CA checks that weir answers for a name.
    #[serde(default)]
    pub challenge: AcmeChallenge,
}

/// `acme.challenge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum AcmeChallenge {
    /// A file under `/.well-known/acme-challenge/` on port 80 (the plain listeners).
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// A TLS handshake on port 443 with ALPN `acme-tls/1` (the TLS listeners).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

fn default_acme_storage() -> PathBuf {
    PathBuf::from("/var/lib/weir/acme")
}

fn default_renew_before() -> Dur {
    Dur::from_secs(30 * 86_400)
}

/// Lease of the fleet's leader by default.
pub const DEFAULT_LEASE_TTL: Dur = Dur::from_secs(3);

/// A fleet of weir instances coordinated through Redis: one leader runs the scalers on the
/// whole fleet's load; every instance serves through every worker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The coordination store, "redis://host:port/db".
    pub redis: String,
    /// This instance's name in the fleet; default: hostname:pid.
    pub name: Option<String>,
    /// Instances with the same prefix form one fleet.
    #[serde(default = "default_cluster_prefix")]
    pub prefix: String,
    /// How long a leader's lease lasts without renewal: the most a fleet waits for a new
    /// leader after the old one died.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: Dur,
    /// The admin address the other instances (and operators) reach this one at, "IP:PORT";
    /// default: `admin.listen` when it names an IP, else the local address of this host
    /// toward Redis with `admin.listen`'s port.
    pub advertise: Option<Address>,
}

fn default_cluster_prefix() -> String {
    "weir".into()
}

fn default_lease_ttl() -> Dur {
    DEFAULT_LEASE_TTL
}

/// Least time between two firing notifications of one rule by default.
pub const DEFAULT_ALERT_MIN_INTERVAL: Dur = Dur::from_secs(300);
/// The window alerts look back over by default.
pub const DEFAULT_ALERT_WINDOW: Dur = Dur::from_secs(60);

/// What an alert watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// 5xx responses in the window >= `threshold`.
    #[serde(rename = "errors_5xx")]
    Errors5xx,
    /// p99 latency over the window > `latency`.
    LatencyP99,
    /// Unhealthy workers now >= `threshold`.
    UnhealthyWorkers,
    /// Queue rejections in the window >= `threshold`.
    QueueRejections,
    /// Every scaling event (a notification each).
    ScaleEvents,
    /// Every rollout's start and end and every rollback (a notification each).
    Rollout,
    /// A certificate weir obtained (ACME) ends within `within` (it was not renewed in time).
    CertificateExpiry,
}

impl AlertKind {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Errors5xx => "errors_5xx",
            AlertKind::LatencyP99 => "latency_p99",
            AlertKind::UnhealthyWorkers => "unhealthy_workers",
            AlertKind::QueueRejections => "queue_rejections",
            AlertKind::ScaleEvents => "scale_events",
            AlertKind::Rollout => "rollout",
            AlertKind::CertificateExpiry => "certificate_expiry",
        }
    }
}

/// One alert rule.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// Label in notifications (default: the kind).
    pub name: Option<String>,
    /// What to watch.
    pub kind: AlertKind,
    /// Count threshold (errors_5xx, unhealthy_workers, queue_rejections).
    #[serde(default = "one")]
    pub threshold: u64,
    /// Latency limit (latency_p99).
    pub latency: Option<Dur>,
    /// Sliding window.
    #[serde(default = "default_alert_window")]
    pub window: Dur,
    /// Where to POST `{"text": ...}` (http:// or https://).
    pub webhook: WebUrl,
    /// Least time between firing notifications.
    #[serde(default = "default_alert_min_interval")]
    pub min_interval: Dur,
    /// Only this pool (unhealthy_workers, scale_events).
    pub pool: Option<String>,
    /// How close to its end a certificate fires `certificate_expiry` (default 14 days).
    pub within: Option<Dur>,
}

fn one() -> u64 {
    1
}

fn default_alert_window() -> Dur {
    DEFAULT_ALERT_WINDOW
}

fn default_alert_min_interval() -> Dur {
    DEFAULT_ALERT_MIN_INTERVAL
}

/// Where the admin API listens by default: loopback only.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// [`DEFAULT_ADMIN_LISTEN`] as an address.
const DEFAULT_ADMIN_ADDR: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9901),
);
/// Admin connections open at once. The admin API serves a few operators, scrapers and probes,
/// far fewer than 256; and 256 is far below any descriptor limit, so connections that never
/// authenticate cannot take the descriptors the proxy listeners need.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 256;

/// The admin listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// "IP:port"; a non-loopback address needs a token.
    pub listen: Address,
    /// Bearer token required by /api/ and /metrics.
    pub token: Option<String>,
    /// Name of an environment variable holding the token (keeps it out of the file).
    pub token_env: Option<String>,
    /// Cap on open admin connections; at it, further admin clients wait in the kernel's listen
    /// backlog (holding no descriptor of weir's) until one closes. Admin connections also get
    /// `server.header_read_timeout` and `server.idle_timeout`, so idle ones free their slot.
    pub max_connections: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: Address::from(DEFAULT_ADMIN_ADDR),
            token: None,
            token_env: None,
            max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
        }
    }
}

impl AdminConfig {
    /// The token in force: `token`, else the value of `token_env`.
    pub fn resolved_token(&self) -> Result<Option<String>, String> {
        if let Some(token) = &self.token {
            return Ok(Some(token.clone()));
        }
        match &self.token_env {
            Some(var) => match std::env::var(var) {
                Ok(value) if !value.is_empty() => Ok(Some(value)),
                _ => Err(format!("environment variable {var} is not set")),
            },
            None => Ok(None),
        }
    }
}

/// The access log.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessLogConfig {
    /// Off by default (and in benchmarks).
    pub enabled: bool,
    /// "-" for standard output, or a file path (appended to).
    pub path: String,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            enabled: false,
            path: "-".to_string(),
        }
    }
}

/// Client-side settings (the "downstream" side, in Envoy's words).
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Longest wait for the next bytes of a request body; past it the request ends with 408
    /// (or, once its response has started, the connection is cut) and its worker slot frees.
    pub request_body_timeout: Dur,
    /// Longest wait for the client to take more of a response (HTTP/1.1 socket writes and
    /// HTTP/2 flow-control windows alike); past it the connection is cut and the worker slots
    /// its responses held free at once.
    pub send_timeout: Dur,
    /// An upgraded connection with no bytes in either direction for this long is closed.
    pub tunnel_idle_timeout: Dur,
    /// CIDRs (or bare addresses) of proxies in front of weir whose X-Forwarded-* headers are
    /// trusted. Default: none, so no client can spoof its address.
    pub trusted_proxies: Vec<Cidr>,
    /// Slowest a client may send a request body or take a response, in bytes per second,
    /// averaged from the start of the body once `min_data_rate_grace` has passed; slower is
    /// cut (408 for a body not yet forwarded), and the worker slot it held freed. 0 turns the
    /// check off (the timeouts still apply).
    pub min_data_rate: ByteSize,
    /// How long a body or response may move slower than `min_data_rate` before it counts.
    pub min_data_rate_grace: Dur,
    /// Forward request header fields whose names contain `_`. Off by default, as in nginx:
    /// CGI, WSGI and PHP map `_` and `-` to the same variable, so `X_Forwarded_For` would
    /// pass for weir's `X-Forwarded-For`; such fields are dropped (logged once per
    /// connection).
    pub underscores_in_headers: bool,
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
            request_body_timeout: DEFAULT_REQUEST_BODY_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            tunnel_idle_timeout: DEFAULT_TUNNEL_IDLE_TIMEOUT,
            trusted_proxies: Vec::new(),
            min_data_rate: DEFAULT_MIN_DATA_RATE,
            min_data_rate_grace: DEFAULT_MIN_DATA_RATE_GRACE,
            underscores_in_headers: false,
        }
    }
}

/// Worker-side settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
    /// Longest wait for the next bytes of a worker's response body; past it the worker's slot
    /// is freed and the client gets 504, or has its connection (HTTP/2: stream) cut when part
    /// of the response already reached it.
    pub read_timeout: Dur,
    /// A response the worker has finished sending when weir first reads its body, and that
    /// fits in this many bytes ("64KiB", "1MiB" or an integer; at most 64 MiB; 0 holds only
    /// bodiless responses), is sent to the client by weir alone: the worker's slot and
    /// connection are released at once. Larger or still-streaming responses stream through.
    pub response_buffer: ByteSize,
    /// Beyond `response_buffer`, weir keeps reading a response into a temporary file up to
    /// this size, so the worker is released as soon as it has sent it. Event streams, a
    /// worker's `X-Accel-Buffering: no` and routes with `buffer_responses = false` stream.
    pub max_response_buffer: ByteSize,
    /// A request body is read up to this size into memory before the request takes a worker
    /// slot (routes with `buffer_requests = false` stream instead).
    pub request_buffer: ByteSize,
    /// Beyond `request_buffer`, a request body is read into a temporary file up to this size
    /// before the request takes a worker slot; the rest of a larger one streams.
    pub max_request_buffer: ByteSize,
    /// All temporary files together hold at most this much; past it, bodies stream.
    pub max_temp_bytes: ByteSize,
    /// Where temporary files go (created unlinked, so nothing is left behind, even after a
    /// crash). Default: the system's temporary directory ($TMPDIR or /tmp).
    pub temp_dir: Option<PathBuf>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            idle_timeout: DEFAULT_UPSTREAM_IDLE_TIMEOUT,
            max_idle_per_worker: DEFAULT_MAX_IDLE_PER_WORKER,
            read_timeout: DEFAULT_READ_TIMEOUT,
            response_buffer: DEFAULT_RESPONSE_BUFFER,
            max_response_buffer: DEFAULT_MAX_RESPONSE_BUFFER,
            request_buffer: DEFAULT_REQUEST_BUFFER,
            max_request_buffer: DEFAULT_MAX_REQUEST_BUFFER,
            max_temp_bytes: DEFAULT_MAX_TEMP_BYTES,
            temp_dir: None,
        }
    }
}

/// One address weir accepts clients on.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// "IP:port"; port 0 picks a free port (tests).
    pub listen: Address,
    /// Present: terminate TLS on this listener.
    pub tls: Option<TlsConfig>,
    /// On a plain listener: answer every request (ACME challenges aside) with a 308 to the
    /// same host and path on HTTPS at this port (443 is left out of the URL).
    pub redirect_to_https: Option<u16>,
    /// Sources (CIDRs) that open every connection with a PROXY protocol header (v1 or v2),
    /// which names the client; from them it is required, and connections from anywhere
    /// else are refused. Empty: no PROXY protocol.
    #[serde(default)]
    pub proxy_protocol: Vec<crate::values::Cidr>,
}

/// Certificates for a TLS listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain served when no other certificate matches the client's SNI.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// Names whose certificate weir obtains from the `[acme]` CA (and renews), served by SNI
    /// beside `cert`/`key` and `certs`.
    #[serde(default)]
    pub acme: Vec<String>,
    /// Further certificates, chosen by SNI against the DNS names in each one's SAN list.
    #[serde(default)]
    pub certs: Vec<CertPair>,
    /// Send `Strict-Transport-Security: max-age=...` with every response for this long.
    pub hsts: Option<Dur>,
    /// PEM roots that client certificates must chain to (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: whether a client must present a certificate (`required`, the
    /// default) or may go without one (`optional`); one it presents is verified either way.
    pub client_auth: Option<ClientAuth>,
}

/// `tls.client_auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No handshake completes without a verified client certificate.
    Required,
    /// A client may present none; one it presents must verify.
    Optional,
}

/// A certificate chain and its key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Maps requests to a pool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Label for logs, metrics and the admin API; default `host + path_prefix` (e.g. "*/api").
    pub name: Option<String>,
    /// Exact host ("api.example.com"), one-label wildcard ("*.example.com") or "*" (default).
    pub host: Option<HostRule>,
    /// Path prefix matched on whole segments ("/api" matches "/api" and "/api/x", not "/apix");
    /// the longest matching prefix wins. Default "/".
    pub path_prefix: Option<String>,
    /// Name of the pool in `[pools]` (or `pools`, to split the route's requests).
    #[serde(default)]
    pub pool: String,
    /// Pools sharing the route's requests by weight (blue/green), instead of `pool`: each
    /// keeps its own queue and scaler; the split is exact over every `sum of weights`
    /// requests (divided by their greatest common divisor).
    #[serde(default)]
    pub pools: Vec<WeightedPool>,
    /// Where requests wait when no worker of the pool has a free slot.
    #[serde(default)]
    pub queue: QueueConfig,
    /// Read a request's body (up to `upstream.max_request_buffer`) before it takes a worker
    /// slot. Off for uploads that must stream to the worker as they come.
    #[serde(default = "enabled")]
    pub buffer_requests: bool,
    /// Hold a response weir cannot pass on at once (up to `upstream.max_response_buffer`) so
    /// its worker is released when the worker is done. Off for responses that must stream.
    #[serde(default = "enabled")]
    pub buffer_responses: bool,
    /// Take the route's `path_prefix` off the path the worker sees ("/api/users" reaches the
    /// worker as "/users"; "/api" as "/").
    #[serde(default)]
    pub strip_prefix: bool,
    /// Put this before the path the worker sees, after `strip_prefix` ("/v1": "/users" reaches
    /// the worker as "/v1/users").
    pub add_prefix: Option<RequestPath>,
    /// The `Host` the worker gets (and, to an HTTP/2 worker, `:authority`); the client's stays
    /// in `X-Forwarded-Host`. (`host` itself is what the route matches.)
    pub rewrite_host: Option<HostName>,
    /// Fields removed from and set on the request the worker gets.
    #[serde(default)]
    pub request_headers: HeaderRules,
    /// Fields removed from and set on the worker's response before the client gets it.
    #[serde(default)]
    pub response_headers: HeaderRules,
}

fn enabled() -> bool {
    true
}

/// One pool of a split route.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedPool {
    /// Name of the pool in `[pools]`.
    pub pool: String,
    /// Its share of the route's requests, relative to the others' (0: none).
    pub weight: u32,
}

impl RouteConfig {
    /// The pools the route sends to, with their weights (`pool` alone: weight 1).
    pub fn targets(&self) -> Vec<WeightedPool> {
        if self.pools.is_empty() {
            vec![WeightedPool {
                pool: self.pool.clone(),
                weight: 1,
            }]
        } else {
            self.pools.clone()
        }
    }
}

/// Longest a route's queue gets by default: a flood costs at most this many waiting requests.
pub const DEFAULT_QUEUE_MAX_SIZE: usize = 1024;
/// Longest a request waits for a worker by default before it gets 503.
pub const DEFAULT_QUEUE_TIMEOUT: Dur = Dur::from_secs(30);
/// `Retry-After` sent with 503s from a full or timed-out queue: a short pause that spreads
/// retries without making clients give up.
pub const DEFAULT_RETRY_AFTER: Dur = Dur::from_secs(1);

/// A route's bounded queue.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Most requests waiting at once; the next one gets 503 at once.
    pub max_size: usize,
    /// Longest wait; past it the request gets 503.
    pub timeout: Dur,
    /// `Retry-After` on those 503s (whole seconds, at least 1).
    pub retry_after: Dur,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            max_size: DEFAULT_QUEUE_MAX_SIZE,
            timeout: DEFAULT_QUEUE_TIMEOUT,
            retry_after: DEFAULT_RETRY_AFTER,
        }
    }
}

/// A group of interchangeable workers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// How a worker is chosen for each request.
    #[serde(default)]
    pub balance: Balance,
    /// Where the workers come from.
    pub provider: ProviderConfig,
    /// Most requests in flight on one worker; beyond it requests wait in their route's queue.
    /// Default: unlimited.
    pub worker_concurrency: Option<u32>,
    /// Active health checks; without it a worker is ready once a TCP connect succeeds and is
    /// checked by TCP connects from then on.
    pub health: Option<HealthConfig>,
    /// Retrying requests that failed to reach a worker.
    #[serde(default)]
    pub retries: RetryConfig,
    /// Launching and releasing workers from load; needs a provider that can launch.
    pub autoscale: Option<AutoscaleConfig>,
    /// The name of this version of the pool's workers ("v42"); default: a short hash of the
    /// provider settings that shape a worker (its launch template). Only for pools weir
    /// launches (process, exec, docker).
    pub revision: Option<String>,
    /// How a new revision replaces the old one's workers.
    #[serde(default)]
    pub rollout: RolloutConfig,
    /// What the workers speak: HTTP/1.1 (default), HTTP/2 with prior knowledge (`h2c`), or
    /// HTTP/2 over TLS chosen by ALPN (`h2`).
    #[serde(default)]
    pub protocol: WorkerProtocol,
    /// TLS to the workers (required by `h2`, which defaults to the system's roots without it).
    pub tls: Option<WorkerTlsConfig>,
    /// Session affinity: requests with the same key go to the same worker while it has room.
    pub sticky: Option<StickyConfig>,
}

/// `[pools.NAME] protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerProtocol {
    /// HTTP/1.1, one request at a time per connection.
    #[default]
    Http1,
    /// HTTP/2 in plain text, with prior knowledge (RFC 9113 §3.3): few connections per
    /// worker, many streams on each.
    H2c,
    /// HTTP/2 over TLS, agreed by ALPN.
    H2,
}

impl WorkerProtocol {
    /// Whether the workers speak HTTP/2.
    pub fn is_h2(self) -> bool {
        matches!(self, WorkerProtocol::H2c | WorkerProtocol::H2)
    }
}

/// `[pools.NAME] tls`: how weir's connections to the workers are encrypted and verified.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerTlsConfig {
    /// PEM roots the workers' certificates must chain to; default: the public web roots.
    pub ca: Option<PathBuf>,
    /// The name sent as SNI and verified against the worker's certificate; default: the
    /// worker's address (an IP address, verified against the certificate's IP SANs).
    pub server_name: Option<String>,
    /// PEM client certificate chain, for workers that require one (mutual TLS).
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// Accept any certificate: encryption without authentication, for a test bench only
    /// (logged at start and named on `/readyz`).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// `[pools.NAME] sticky`: what keys a request to its worker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyConfig {
    /// A cookie weir sets on the first response (its value names the worker's place on the
    /// ring) and reads on later requests.
    pub cookie: Option<String>,
    /// With `cookie`: how long the browser keeps it (default: for the session).
    pub ttl: Option<Dur>,
    /// A request header whose value is the key (`x-user-id`); absent, the request goes by
    /// the client address.
    pub header: Option<String>,
    /// Neither: key by the client address (`client_ip = true`, the default without the others).
    #[serde(default)]
    pub client_ip: bool,
}

/// `[pools.NAME.rollout]`: a reload that changes only a pool's launch template replaces its
/// workers gradually.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// New workers started at once beyond the pool's count: a share of it ("25%") or a
    /// number ("2"); at least 1.
    pub max_surge: Surge,
    /// How far below `min_workers` the ready workers may fall while old ones go.
    pub max_unavailable: u32,
    /// How long a new worker must stay ready before an old one goes for it.
    pub min_ready: Dur,
    /// New workers failing to start in a row (exit, not ready in time) that roll the revision
    /// back.
    pub failure_threshold: u32,
    /// Canary steps before the replacement: during each, that share of the pool's requests
    /// goes to the new revision for `hold`, then the gates below compare it with the old.
    pub steps: Vec<CanaryStep>,
    /// A canary step fails when the new revision's share of 5xx answers over the step is more
    /// than this above the old revision's (0.01: one point).
    pub max_error_rate: Option<f64>,
    /// A canary step fails when the new revision's p99 over the step is more than this many
    /// times the old revision's.
    pub max_latency_ratio: Option<f64>,
}

/// One `[[pools.NAME.rollout.steps]]`: a canary weight held for a while.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CanaryStep {
    /// Percent of the pool's requests sent to the new revision (1-100).
    pub weight: u32,
    /// How long the step lasts once a new worker is ready, before its gate.
    pub hold: Dur,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            max_surge: Surge::Percent(25),
            max_unavailable: 0,
            min_ready: Dur::from_secs(0),
            failure_threshold: 3,
            steps: Vec::new(),
            max_error_rate: None,
            max_latency_ratio: None,
        }
    }
}

/// `max_surge`: a share of the pool's count, or a number of workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surge {
    /// This percent of the workers the pool should have, rounded up.
    Percent(u32),
    /// This many workers.
    Workers(u32),
}

impl Surge {
    /// Workers that may start beyond `desired`: at least 1.
    pub fn of(self, desired: u32) -> u32 {
        match self {
            Surge::Percent(p) => (desired * p).div_ceil(100),
            Surge::Workers(n) => n,
        }
        .max(1)
    }
}

impl<'de> Deserialize<'de> for Surge {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u32),
            Text(String),
        }
        let bad =
            || serde::de::Error::custom("expected a number of workers or a percent (\"25%\")");
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Surge::Workers(n)),
            Raw::Text(t) => match t.trim().strip_suffix('%') {
                Some(p) => p.trim().parse().map(Surge::Percent).map_err(|_| bad()),
                None => t.trim().parse().map(Surge::Workers).map_err(|_| bad()),
            },
        }
    }
}

impl PoolConfig {
    /// The revision new workers are launched with: `revision`, else the template's hash;
    /// `None` for a pool weir does not launch.
    pub fn revision(&self) -> Option<String> {
        let template = self.provider.template_revision()?;
        Some(self.revision.clone().unwrap_or(template))
    }
}

/// Most workers by default: enough for a 2-to-8-core box of demo workers.
pub const DEFAULT_MAX_WORKERS: u32 = 8;
/// Launches in progress at once.
pub const DEFAULT_MAX_CONCURRENT_STARTS: u32 = 4;
/// Most workers added per scaling decision, so one spike does not launch the whole maximum.
pub const DEFAULT_SCALE_UP_STEP: u32 = 2;
/// A worker idle this long (no request in flight, none served) is drained and released.
pub const DEFAULT_MAX_IDLE_TIME: Dur = Dur::from_secs(60);
/// A launched worker that has not passed a health check by then is given up on.
pub const DEFAULT_STARTUP_TIMEOUT: Dur = Dur::from_secs(60);
/// Longest a released worker may take to finish its in-flight requests.
pub const DEFAULT_DRAIN_TIMEOUT: Dur = Dur::from_secs(30);
/// A worker unhealthy this long is released and replaced (an autoscaling group's behaviour).
pub const DEFAULT_REPLACE_UNHEALTHY_AFTER: Dur = Dur::from_secs(30);
/// Short window whose peak load scales up at once (Knative's panic window is 6 s).
pub const DEFAULT_PANIC_WINDOW: Dur = Dur::from_secs(6);
/// Accepted for configs written before scale-in followed `max_idle_time`; no longer used.
pub const DEFAULT_STABLE_WINDOW: Dur = Dur::from_secs(60);
/// Desired in-flight per worker when the pool has no `worker_concurrency` to derive it from.
pub const DEFAULT_TARGET_INFLIGHT: f64 = 10.0;

/// The load-driven scaler of a pool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscaleConfig {
    /// Never fewer workers (0 = scale to zero: the first request waits for a launch).
    pub min_workers: u32,
    /// Never more workers.
    pub max_workers: u32,
    /// Launched at start; default `min_workers`.
    pub initial_workers: Option<u32>,
    /// Spare ready workers kept above current demand (a warm pool).
    pub buffer_workers: u32,
    /// Desired in-flight requests per worker; default 0.7 x `worker_concurrency`, or 10.
    pub target_inflight: Option<f64>,
    /// Launches in progress at once.
    pub max_concurrent_starts: u32,
    /// Most workers added per decision.
    pub scale_up_step: u32,
    /// A worker idle this long is drained and released while the pool is above its minimum.
    pub max_idle_time: Dur,
    /// A launch that has not become ready by then fails (and the requests waiting only on it).
    pub startup_timeout: Dur,
    /// Longest wait for a released worker's in-flight requests.
    pub drain_timeout: Dur,
    /// An unhealthy worker is replaced after this long.
    pub replace_unhealthy_after: Dur,
    /// Window of the peak load that sets capacity (scales up at once, and keeps what it asks
    /// for); capped at `max_idle_time`, so scale-in follows `max_idle_time`.
    pub panic_window: Dur,
    /// No longer used (scale-in follows `max_idle_time`); accepted so older configs load.
    pub stable_window: Dur,
    /// Scheduled capacity: a higher minimum at given times.
    pub schedule: Vec<ScheduleConfig>,
}

impl Default for AutoscaleConfig {
    fn default() -> Self {
        AutoscaleConfig {
            min_workers: 1,
            max_workers: DEFAULT_MAX_WORKERS,
            initial_workers: None,
            buffer_workers: 0,
            target_inflight: None,
            max_concurrent_starts: DEFAULT_MAX_CONCURRENT_STARTS,
            scale_up_step: DEFAULT_SCALE_UP_STEP,
            max_idle_time: DEFAULT_MAX_IDLE_TIME,
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            replace_unhealthy_after: DEFAULT_REPLACE_UNHEALTHY_AFTER,
            panic_window: DEFAULT_PANIC_WINDOW,
            stable_window: DEFAULT_STABLE_WINDOW,
            schedule: Vec::new(),
        }
    }
}

/// A time window with a raised minimum.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Five-field cron (minute hour day-of-month month day-of-week), in UTC, for the start.
    pub cron: Cron,
    /// How long the window lasts from each start.
    pub duration: Dur,
    /// The minimum while the window is open.
    pub min_workers: u32,
}

/// How often a ready or unhealthy worker is probed.
pub const DEFAULT_HEALTH_INTERVAL: Dur = Dur::from_secs(1);
/// How long a probe may take; a local worker's health endpoint answers in milliseconds.
pub const DEFAULT_HEALTH_TIMEOUT: Dur = Dur::from_millis(500);
/// Passes in a row that make a worker ready: one, so a recovered worker takes traffic at once.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;
/// Failures in a row that make a worker unhealthy: two, so one lost probe does not eject it.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 2;

/// Active health checking of a pool's workers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Path of an HTTP GET probe; absent: a TCP connect is the probe.
    pub path: Option<RequestPath>,
    /// Time between probes of ready and unhealthy workers (starting ones are probed every
    /// 25 ms).
    pub interval: Dur,
    /// Probe deadline.
    pub timeout: Dur,
    /// Consecutive passes that make a worker ready.
    pub healthy_threshold: u32,
    /// Consecutive failures (probes, or connect failures and resets of real requests) that make
    /// a worker unhealthy.
    pub unhealthy_threshold: u32,
    /// Statuses that pass: "200", "200-399", or a comma list of both ("200,204,300-399").
    pub expect_status: StatusRanges,
    /// Probe with the standard gRPC health protocol (`grpc.health.v1.Health/Check`) for this
    /// service name ("" for the whole server), instead of `path`; passes on SERVING.
    pub grpc: Option<String>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: None,
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            healthy_threshold: DEFAULT_HEALTHY_THRESHOLD,
            unhealthy_threshold: DEFAULT_UNHEALTHY_THRESHOLD,
            expect_status: StatusRanges::between(200, 399),
            grpc: None,
        }
    }
}

/// Tries per request, counting the first (two: one retry on another worker).
pub const DEFAULT_RETRY_MAX_TRIES: u32 = 2;
/// Retries allowed as a share of a pool's requests over the last 10 s, so a dying pool is not
/// hammered (Linkerd's default ratio).
pub const DEFAULT_RETRY_BUDGET: f64 = 0.2;
/// Largest request body weir holds in memory so an idempotent request can be retried.
pub const DEFAULT_RETRY_BUFFER_BYTES: usize = 64 * 1024;

/// Retry policy of a pool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Tries per request, first included; 1 turns retries off.
    pub max_tries: u32,
    /// Retries as a share of requests over 10 s (plus 10 per window, so a quiet pool can retry).
    pub budget: f64,
    /// Bodies of idempotent requests up to this size are buffered so they can be replayed.
    pub buffer_body_bytes: usize,
    /// Response statuses (100-599) that send a replayable request to another worker once more,
    /// before any of the response reaches the client (say `[503]` for a worker that sheds
    /// load). Default: none, so a worker's answer is always passed on.
    pub on_status: Vec<u16>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_tries: DEFAULT_RETRY_MAX_TRIES,
            budget: DEFAULT_RETRY_BUDGET,
            buffer_body_bytes: DEFAULT_RETRY_BUFFER_BYTES,
            on_status: Vec::new(),
        }
    }
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

/// How often a static pool's names are looked up again when their records do not say sooner:
/// a moved service is followed within half a minute, without a query a second per name.
pub const DEFAULT_DNS_REFRESH: Dur = Dur::from_secs(30);

fn default_dns_refresh() -> Dur {
    DEFAULT_DNS_REFRESH
}

/// Time a released process gets between SIGTERM and SIGKILL.
pub const DEFAULT_STOP_GRACE: Dur = Dur::from_secs(10);

/// A list of addresses whose errors name the entry: inside a provider table (an internally
/// tagged enum) the key path stops at `provider`, so the index goes into the message.
fn addresses<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<WorkerTarget>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts
        .into_iter()
        .enumerate()
        .map(|(i, text)| {
            WorkerTarget::try_from(text)
                .map_err(|m| serde::de::Error::custom(format!("addresses[{i}]: {m}")))
        })
        .collect()
}

/// `dns_servers`, its errors naming the entry (as [`addresses`]).
fn dns_servers<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Address>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts
        .into_iter()
        .enumerate()
        .map(|(i, text)| {
            Address::try_from(text)
                .map_err(|m| serde::de::Error::custom(format!("dns_servers[{i}]: {m}")))
        })
        .collect()
}

/// Source of a pool's workers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProviderConfig {
    /// A fixed list of worker addresses.
    Static {
        /// "IP:port" of each worker, or "host:port": every address the name resolves to
        /// (A and AAAA) is a worker, looked up again every `dns_refresh`.
        #[serde(deserialize_with = "addresses")]
        addresses: Vec<WorkerTarget>,
        /// Longest time between lookups of the names in `addresses`; a record's shorter TTL
        /// brings the next lookup forward (never sooner than a second).
        #[serde(default = "default_dns_refresh")]
        dns_refresh: Dur,
        /// DNS servers ("IP:port") asked for those names; default: the system's
        /// (/etc/resolv.conf, /etc/hosts).
        #[serde(default, deserialize_with = "dns_servers")]
        dns_servers: Vec<Address>,
    },
    /// Local processes that weir starts and stops.
    Process {
        /// Program and arguments; `{port}` becomes a free port weir picked (also in `PORT`),
        /// `{weir}` the path of the running weir binary.
        command: Vec<String>,
        /// Extra environment variables.
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// Working directory (default: weir's).
        cwd: Option<PathBuf>,
        /// Time between SIGTERM and SIGKILL on release.
        #[serde(default = "default_stop_grace")]
        stop_grace: Dur,
    },
    /// Shell commands for anything with a CLI (a cloud's scaling group, a container runtime).
    Exec {
        /// Run with `sh -c`; prints the worker's "IP:port" (or "ID IP:port") as its last line.
        launch: String,
        /// Run with `sh -c` to release; gets the id as `{id}` and in `WEIR_WORKER_ID`.
        release: String,
        /// Run with `sh -c` to list the pool's live workers, one "ID IP:port" line each, so a
        /// restarted weir adopts them instead of launching new ones. Optional.
        list: Option<String>,
    },
    /// Containers on a Docker Engine, created from `image` and removed on release.
    Docker {
        /// The image each worker container runs (it must be on the engine, or pullable).
        image: String,
        /// The port the worker listens on inside the container (also set as `$PORT`).
        port: u16,
        /// Command and arguments, replacing the image's.
        command: Option<Vec<String>>,
        /// Extra environment variables.
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// A user-defined bridge network the containers join (created if missing); default: the
        /// engine's default bridge.
        network: Option<String>,
        /// Publish `port` on 127.0.0.1 and proxy to that (for a weir that cannot reach the
        /// bridge network, e.g. Docker Desktop).
        #[serde(default)]
        publish: bool,
        /// Extra labels on every container.
        #[serde(default)]
        labels: BTreeMap<String, String>,
        /// CPU limit per container, in cores (e.g. 1.5).
        cpus: Option<f64>,
        /// Memory limit per container ("512MiB").
        memory: Option<ByteSize>,
        /// Time between SIGTERM and SIGKILL on release.
        #[serde(default = "default_stop_grace")]
        stop_grace: Dur,
        /// Whether a missing image may be pulled.
        #[serde(default)]
        pull: PullPolicy,
        /// The engine's socket, "unix:///var/run/docker.sock"; default: `$DOCKER_HOST`, else
        /// that.
        endpoint: Option<String>,
    },
    /// The pods of a Kubernetes Deployment: members from its Service's EndpointSlices, scaled
    /// through its `/scale` subresource, each victim drained before the ReplicaSet deletes it.
    Kubernetes {
        /// The Deployment's namespace.
        #[serde(default = "default_namespace")]
        namespace: String,
        /// The Deployment weir scales.
        deployment: String,
        /// The port the pods' workers listen on (pod IP + this port is a worker's address).
        port: u16,
        /// The Service whose EndpointSlices list the Deployment's pods; default: the
        /// Deployment's name.
        service: Option<String>,
        /// A kubeconfig file; default: the in-cluster service account, else `$KUBECONFIG` or
        /// ~/.kube/config.
        kubeconfig: Option<PathBuf>,
        /// The kubeconfig context; default: its current context.
        context: Option<String>,
    },
}

fn default_namespace() -> String {
    "default".into()
}

impl ProviderConfig {
    /// Whether `other` launches through the same kind of provider on the same engine, so a
    /// change between them can be rolled out rather than rebuilt (Docker: the same endpoint).
    pub fn same_engine(&self, other: &ProviderConfig) -> bool {
        match (self, other) {
            (ProviderConfig::Process { .. }, ProviderConfig::Process { .. })
            | (ProviderConfig::Exec { .. }, ProviderConfig::Exec { .. }) => true,
            (
                ProviderConfig::Docker { endpoint: a, .. },
                ProviderConfig::Docker { endpoint: b, .. },
            ) => a == b,
            _ => false,
        }
    }

    /// A short hash (8 hex digits) of the settings that shape a worker: process `command`,
    /// `env`, `cwd`; exec `launch`; Docker `image`, `port`, `command`, `env`, `labels`,
    /// `cpus`, `memory`. Settings of how weir handles workers (grace periods, networks, the
    /// engine, how to release or list) are not part of it. `None` for providers weir does not
    /// launch from a template (static lists, Kubernetes, whose Deployment owns its pods).
    pub fn template_revision(&self) -> Option<String> {
        let mut template = Template::default();
        match self {
            ProviderConfig::Static { .. } | ProviderConfig::Kubernetes { .. } => return None,
            ProviderConfig::Process {
                command, env, cwd, ..
            } => {
                template.field("process");
                template.list(command);
                template.map(env);
                template.field(
                    &cwd.as_ref()
                        .map(|c| c.display().to_string())
                        .unwrap_or_default(),
                );
            }
            ProviderConfig::Exec { launch, .. } => {
                template.field("exec");
                template.field(launch);
            }
            ProviderConfig::Docker {
                image,
                port,
                command,
                env,
                labels,
                cpus,
                memory,
                ..
            } => {
                template.field("docker");
                template.field(image);
                template.field(&port.to_string());
                template.list(command.as_deref().unwrap_or_default());
                template.map(env);
                template.map(labels);
                template.field(&cpus.map(|c| c.to_string()).unwrap_or_default());
                template.field(&memory.map(|m| m.0.to_string()).unwrap_or_default());
            }
        }
        Some(format!("{:08x}", template.hash >> 32))
    }
}

/// FNV-1a over the fields of a launch template, each ended by a 0 byte (so "ab","c" and
/// "a","bc" differ): stable across runs and builds, unlike std's hasher.
struct Template {
    hash: u64,
}

impl Default for Template {
    fn default() -> Self {
        Template {
            hash: 0xcbf2_9ce4_8422_2325,
        }
    }
}

impl Template {
    fn field(&mut self, text: &str) {
        for byte in text.bytes().chain([0]) {
            self.hash ^= u64::from(byte);
            self.hash = self.hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn list(&mut self, items: &[String]) {
        self.field(&items.len().to_string());
        for item in items {
            self.field(item);
        }
    }

    fn map(&mut self, map: &BTreeMap<String, String>) {
        self.field(&map.len().to_string());
        for (key, value) in map {
            self.field(key);
            self.field(value);
        }
    }
}

/// Whether the Docker provider may pull an image the engine does not have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Pull when the image is missing.
    #[default]
    Missing,
    /// Never pull: a missing image fails the launch.
    Never,
}

fn default_stop_grace() -> Dur {
    DEFAULT_STOP_GRACE
}
