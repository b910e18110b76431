//! Turning TOML text into a [`Config`] whose every reference resolves, with errors that fit on
//! one line and name the key (and TOML line) at fault.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

mod pools;

use super::{Config, ProviderConfig};

/// A config problem, shown as `origin:line: key: message` on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `"<inline>"`) the config came from.
    pub origin: String,
    /// 1-based TOML line where the parser knows it.
    pub line: Option<usize>,
    /// Dotted key path at fault, e.g. `routes[1].pool`; empty for whole-file problems.
    pub key: String,
    /// What is wrong, in one line.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// hyper's HTTP/1.1 read buffer cannot be smaller than this, and the head must fit in it.
const MIN_HEADER_BYTES: usize = 8192;
/// Largest `server.max_header_bytes`: every connection may grow a read buffer this large, so
/// a bigger bound lets a few thousand clients hold gigabytes; 1 MiB is 16x the default and
/// above any head a browser or API client sends.
const MAX_HEADER_BYTES: usize = 1024 * 1024;
/// Most serving threads: each has its own runtime, sockets and worker connections, so far more
/// threads than cores only costs memory and descriptors; 1024 is above any machine weir runs on.
const MAX_THREADS: usize = 1024;

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Deserialize with the key path tracked, so unknown keys and bad values name where they are.
pub(super) fn deserialize(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
    };
    let deserializer = toml::Deserializer::parse(text).map_err(|e| ConfigError {
        origin: origin.to_string(),
        line: line_of(e.span()),
        key: String::new(),
        message: one_line(e.message()),
    })?;
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        ConfigError {
            origin: origin.to_string(),
            line: line_of(inner.span()),
            key: if key == "." { String::new() } else { key },
            message: one_line(inner.message()),
        }
    })
}

/// Whether the admin listener at `admin` would claim the socket of the proxy listener at
/// `listener`, so one of them could not bind: the same port (never port 0, which picks a free
/// one each time) on the same IP, or where either IP is the wildcard of the other's family,
/// which takes that port on every address. The admin socket is bound dual-stack (the Linux
/// default), so an admin `[::]` also takes the IPv4 port; proxy listeners are IPv6-only.
fn overlaps(admin: SocketAddr, listener: SocketAddr) -> bool {
    if admin.port() == 0 || admin.port() != listener.port() {
        return false;
    }
    let same_family = admin.is_ipv4() == listener.is_ipv4();
    let wildcard = admin.ip().is_unspecified() || listener.ip().is_unspecified();
    admin.ip() == listener.ip()
        || (same_family && wildcard)
        || (admin.ip() == std::net::Ipv6Addr::UNSPECIFIED && listener.is_ipv4())
}

/// How a table's check reports a problem: the key at fault and why, from `origin`.
fn failing(origin: &str) -> impl Fn(String, String) -> ConfigError + '_ {
    move |key, message| ConfigError {
        origin: origin.to_string(),
        line: None,
        key,
        message,
    }
}

/// Semantic checks the type system cannot express, one config table at a time. Values were
/// parsed when the file was read (see [`crate::values`]); what is left is how they relate.
pub(super) fn check(config: &Config, origin: &str) -> Result<(), ConfigError> {
    check_server(config, origin)?;
    check_upstream(config, origin)?;
    let admin = check_admin(config, origin)?;
    check_listeners(config, admin, origin)?;
    check_routes(config, origin)?;
    check_alerts(config, origin)?;
    check_cluster(config, origin)?;
    for (name, pool) in &config.pools {
        pools::check_pool(name, pool, origin)?;
    }
    Ok(())
}

/// `[server]`.
fn check_server(config: &Config, origin: &str) -> Result<(), ConfigError> {
    let fail = failing(origin);
    if config.server.max_connections == 0 {
        return Err(fail(
            "server.max_connections".into(),
            "must be at least 1".into(),
        ));
    }
    if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&config.server.max_header_bytes) {
        return Err(fail(
            "server.max_header_bytes".into(),
            format!("must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES} (1 MiB)"),
        ));
    }
    if config.server.threads > MAX_THREADS {
        return Err(fail(
            "server.threads".into(),
            format!("must be at most {MAX_THREADS} (0 = one per core)"),
        ));
    }
    if config.server.max_h2_streams == 0 {
        return Err(fail(
            "server.max_h2_streams".into(),
            "must be at least 1 (HTTP/2 is offered on every listener)".into(),
        ));
    }
    for (key, value) in [
        (
            "server.header_read_timeout",
            config.server.header_read_timeout,
        ),
        ("server.idle_timeout", config.server.idle_timeout),
        (
            "server.request_body_timeout",
            config.server.request_body_timeout,
        ),
        ("server.send_timeout", config.server.send_timeout),
        (
            "server.tunnel_idle_timeout",
            config.server.tunnel_idle_timeout,
        ),
        (
            "server.tls_handshake_timeout",
            config.server.tls_handshake_timeout,
        ),
    ] {
        if value.get().is_zero() {
            return Err(fail(key.into(), "must be longer than zero".into()));
        }
    }
    Ok(())
}

/// `[upstream]`.
fn check_upstream(config: &Config, origin: &str) -> Result<(), ConfigError> {
    let fail = failing(origin);
    for (key, value) in [
        ("upstream.connect_timeout", config.upstream.connect_timeout),
        (
            "upstream.response_timeout",
            config.upstream.response_timeout,
        ),
        ("upstream.read_timeout", config.upstream.read_timeout),
    ] {
        if value.get().is_zero() {
            return Err(fail(key.into(), "must be longer than zero".into()));
        }
    }
    for (key, value) in [
        ("upstream.response_buffer", config.upstream.response_buffer),
        ("upstream.request_buffer", config.upstream.request_buffer),
    ] {
        if value > super::MAX_RESPONSE_BUFFER {
            return Err(fail(
                key.into(),
                format!(
                    "{value} is more than the {} weir holds in memory per body",
                    super::MAX_RESPONSE_BUFFER
                ),
            ));
        }
    }
    if let Some(dir) = &config.upstream.temp_dir {
        if !dir.is_dir() {
            return Err(fail(
                "upstream.temp_dir".into(),
                format!("{} is not a directory", dir.display()),
            ));
        }
    }
    Ok(())
}

/// `[admin]`: its address, which the listeners must not overlap.
fn check_admin(config: &Config, origin: &str) -> Result<SocketAddr, ConfigError> {
    let fail = failing(origin);
    if config.admin.max_connections == 0 {
        return Err(fail(
            "admin.max_connections".into(),
            "must be at least 1".into(),
        ));
    }
    let admin = config.admin.listen.get();
    let token = config
        .admin
        .resolved_token()
        .map_err(|m| fail("admin.token_env".into(), m))?;
    if !admin.ip().is_loopback() && token.is_none() {
        return Err(fail(
            "admin.listen".into(),
            format!("{admin} is not a loopback address: set admin.token (or admin.token_env) to expose the admin API"),
        ));
    }
    Ok(admin)
}

/// `[[listeners]]`.
fn check_listeners(config: &Config, admin: SocketAddr, origin: &str) -> Result<(), ConfigError> {
    let fail = failing(origin);
    if config.listeners.is_empty() {
        return Err(fail(
            "listeners".into(),
            "at least one [[listeners]] entry is required".into(),
        ));
    }
    let mut seen_listen = HashSet::new();
    for (i, listener) in config.listeners.iter().enumerate() {
        let addr = listener.listen.get();
        if addr.port() != 0 && !seen_listen.insert(addr) {
            return Err(fail(
                format!("listeners[{i}].listen"),
                format!("{addr} is listed twice"),
            ));
        }
        if overlaps(admin, addr) {
            return Err(fail(
                "admin.listen".into(),
                format!("{admin} overlaps listeners[{i}].listen ({addr}): the admin API needs a port of its own"),
            ));
        }
        if let Some(port) = listener.redirect_to_https {
            if listener.tls.is_some() {
                return Err(fail(
                    format!("listeners[{i}].redirect_to_https"),
                    "only a plain listener redirects to HTTPS (this one has tls)".into(),
                ));
            }
            if port == 0 {
                return Err(fail(
                    format!("listeners[{i}].redirect_to_https"),
                    "the HTTPS port clients are sent to (1-65535, e.g. 443)".into(),
                ));
            }
        }
        if let Some(tls) = &listener.tls {
            if tls.hsts.is_some_and(|d| d.get().is_zero()) {
                return Err(fail(
                    format!("listeners[{i}].tls.hsts"),
                    "a max-age longer than 0 (e.g. \"365d\"); leave it out for no header".into(),
                ));
            }
            if tls.client_auth.is_some() && tls.client_ca.is_none() {
                return Err(fail(
                    format!("listeners[{i}].tls.client_auth"),
                    "needs client_ca, the roots client certificates are verified against".into(),
                ));
            }
            if let Some(ca) = &tls.client_ca {
                check_file(ca, &format!("listeners[{i}].tls.client_ca"), origin)?;
            }
            match (&tls.cert, &tls.key) {
                (Some(cert), Some(key)) => {
                    check_file(cert, &format!("listeners[{i}].tls.cert"), origin)?;
                    check_file(key, &format!("listeners[{i}].tls.key"), origin)?;
                }
                (None, None) if !tls.acme.is_empty() => {}
                (None, None) => {
                    return Err(fail(
                        format!("listeners[{i}].tls.cert"),
                        "a certificate is needed: cert and key, or acme names".into(),
                    ))
                }
                (Some(_), None) => {
                    return Err(fail(
                        format!("listeners[{i}].tls.key"),
                        "cert needs its key".into(),
                    ))
                }
                (None, Some(_)) => {
                    return Err(fail(
                        format!("listeners[{i}].tls.cert"),
                        "key needs its cert".into(),
                    ))
                }
            }
            if !tls.acme.is_empty() && config.acme.is_none() {
                return Err(fail(
                    format!("listeners[{i}].tls.acme"),
                    "needs an [acme] table (the CA's directory)".into(),
                ));
            }
            if let Some(bad) = tls.acme.iter().find(|n| {
                n.starts_with("*.")
                    || crate::values::HostPort::parse(n)
                        .is_none_or(|h| h.port.is_some() || h.host.starts_with('['))
            }) {
                return Err(fail(
                    format!("listeners[{i}].tls.acme"),
                    format!("{bad:?} is not a DNS name (no wildcards: http-01 cannot prove them)"),
                ));
            }
            for (j, pair) in tls.certs.iter().enumerate() {
                check_file(
                    &pair.cert,
                    &format!("listeners[{i}].tls.certs[{j}].cert"),
                    origin,
                )?;
                check_file(
                    &pair.key,
                    &format!("listeners[{i}].tls.certs[{j}].key"),
                    origin,
                )?;
            }
        }
    }
    Ok(())
}

/// `[[routes]]`.
fn check_routes(config: &Config, origin: &str) -> Result<(), ConfigError> {
    let fail = failing(origin);
    if config.routes.is_empty() {
        return Err(fail(
            "routes".into(),
            "at least one [[routes]] entry is required".into(),
        ));
    }
    let mut seen_routes = HashSet::new();
    for (i, route) in config.routes.iter().enumerate() {
        match (route.pool.is_empty(), route.pools.is_empty()) {
            (true, true) => {
                return Err(fail(
                    format!("routes[{i}].pool"),
                    "a route needs a pool (or pools = [{ pool = ..., weight = ... }])".into(),
                ))
            }
            (false, false) => {
                return Err(fail(
                    format!("routes[{i}].pools"),
                    "give either pool or pools, not both".into(),
                ))
            }
            _ => {}
        }
        let key = if route.pools.is_empty() {
            "pool"
        } else {
            "pools"
        };
        let mut named = HashSet::new();
        for target in route.targets() {
            if !config.pools.contains_key(&target.pool) {
                return Err(fail(
                    format!("routes[{i}].{key}"),
                    format!(
                        "unknown pool {:?} (no [pools.{}] table)",
                        target.pool, target.pool
                    ),
                ));
            }
            if !named.insert(target.pool.clone()) {
                return Err(fail(
                    format!("routes[{i}].pools"),
                    format!("pool {:?} is listed twice", target.pool),
                ));
            }
        }
        if !route.pools.is_empty() {
            let total: u64 = route.pools.iter().map(|p| u64::from(p.weight)).sum();
            if total == 0 || total > 10_000 {
                return Err(fail(
                    format!("routes[{i}].pools"),
                    "the weights must add up to between 1 and 10000".into(),
                ));
            }
        }
        let host = route.host.as_ref().map_or("*", |h| h.text());
        let prefix = route.path_prefix.as_deref().unwrap_or("/");
        if !prefix.starts_with('/') {
            return Err(fail(
                format!("routes[{i}].path_prefix"),
                format!("{prefix:?} must start with '/'"),
            ));
        }
        if route
            .add_prefix
            .as_ref()
            .is_some_and(|p| p.get().query().is_some())
        {
            return Err(fail(
                format!("routes[{i}].add_prefix"),
                "a prefix is a path, without a query".into(),
            ));
        }
        if route.queue.timeout.get().is_zero() {
            return Err(fail(
                format!("routes[{i}].queue.timeout"),
                "must be longer than zero".into(),
            ));
        }
        let normalized = prefix.trim_end_matches('/');
        if !seen_routes.insert((host.to_ascii_lowercase(), normalized.to_string())) {
            return Err(fail(
                format!("routes[{i}]"),
                format!("host {host:?} with path_prefix {prefix:?} is already routed by an earlier entry"),
            ));
        }
    }
    Ok(())
}

/// `[[alerts]]`.
fn check_alerts(config: &Config, origin: &str) -> Result<(), ConfigError> {
    let fail = failing(origin);
    for (i, alert) in config.alerts.iter().enumerate() {
        let key = format!("alerts[{i}]");
        if alert.kind == super::AlertKind::LatencyP99 && alert.latency.is_none() {
            return Err(fail(
                format!("{key}.latency"),
                "latency_p99 needs a latency, e.g. \"500ms\"".into(),
            ));
        }
        if alert.window.get().is_zero() {
            return Err(fail(
                format!("{key}.window"),
                "must be longer than zero".into(),
            ));
        }
        if let Some(pool) = &alert.pool {
            if !config.pools.contains_key(pool) {
                return Err(fail(
                    format!("{key}.pool"),
                    format!("unknown pool {pool:?}"),
                ));
            }
        }
    }
    Ok(())
}

/// `[cluster]`, and what it asks of every pool.
fn check_cluster(config: &Config, origin: &str) -> Result<(), ConfigError> {
    let fail = failing(origin);
    if let Some(cluster) = &config.cluster {
        if !cluster.redis.starts_with("redis://") {
            return Err(fail(
                "cluster.redis".into(),
                format!(
                    "{:?}: expected a redis:// URL, e.g. \"redis://127.0.0.1:6379/0\"",
                    cluster.redis
                ),
            ));
        }
        if cluster.prefix.is_empty() || cluster.prefix.contains(char::is_whitespace) {
            return Err(fail(
                "cluster.prefix".into(),
                "must be a non-empty name without spaces, e.g. \"weir\"".into(),
            ));
        }
        if cluster
            .name
            .as_ref()
            .is_some_and(|n| n.trim().is_empty() || n.contains('|'))
        {
            return Err(fail(
                "cluster.name".into(),
                "must be a non-empty name without '|'".into(),
            ));
        }
        if let Some(advertise) = cluster.advertise {
            let addr = advertise.get();
            if addr.ip().is_unspecified() || addr.port() == 0 {
                return Err(fail(
                    "cluster.advertise".into(),
                    format!("{addr}: needs the IP and port the other instances reach this one's admin API at, e.g. \"10.0.0.5:9901\""),
                ));
            }
        }
        if cluster.lease_ttl.get() < std::time::Duration::from_secs(1) {
            return Err(fail(
                "cluster.lease_ttl".into(),
                "must be at least 1s, e.g. \"3s\"".into(),
            ));
        }
        for (name, pool) in &config.pools {
            let adoptable = match &pool.provider {
                ProviderConfig::Process { .. } => false,
                ProviderConfig::Exec { list, .. } => list.is_some(),
                _ => true,
            };
            if !adoptable {
                return Err(fail(
                    format!("pools.{name}.provider"),
                    "cannot be part of a fleet: its workers must be reachable by every instance and adoptable by a new leader (use docker, kubernetes, or exec with list)".into(),
                ));
            }
        }
    }
    Ok(())
}

fn check_file(path: &Path, key: &str, origin: &str) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(ConfigError {
            origin: origin.to_string(),
            line: None,
            key: key.to_string(),
            message: format!("{} is not a file", path.display()),
        }),
        Err(e) => Err(ConfigError {
            origin: origin.to_string(),
            line: None,
            key: key.to_string(),
            message: format!("cannot read {}: {e}", path.display()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    const BASE: &str = r#"
[[listeners]]
listen = "127.0.0.1:8080"

[[routes]]
pool = "app"

[pools.app]
provider = { kind = "static", addresses = ["127.0.0.1:3001"] }
"#;

    fn err(text: &str) -> String {
        parse(text, "weir.toml").unwrap_err().to_string()
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        let config = parse(BASE, "weir.toml").unwrap();
        assert_eq!(config.listeners.len(), 1);
        assert_eq!(
            config.server.header_read_timeout,
            super::super::DEFAULT_HEADER_READ_TIMEOUT
        );
        assert_eq!(
            config.pools["app"].balance,
            super::super::Balance::LeastInflight
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = BASE.replace("[pools.app]", "[pools.app]\nbalanse = \"round_robin\"");
        let e = err(&text);
        assert!(e.starts_with("weir.toml:9: pools.app"), "{e}");
        assert!(e.contains("balanse"), "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn bad_duration_names_key() {
        let text = format!("[upstream]\nresponse_timeout = \"soon\"\n{BASE}");
        let e = err(&text);
        assert!(
            e.starts_with("weir.toml:2: upstream.response_timeout"),
            "{e}"
        );
        assert!(e.contains("soon"), "{e}");
    }

    #[test]
    fn edge_keys_are_checked_by_key() {
        let tls = |extra: &str| {
            BASE.replace(
                "listen = \"127.0.0.1:8080\"",
                &format!("listen = \"127.0.0.1:8080\"\ntls = {{ cert = \"certs-dev/cert.pem\", key = \"certs-dev/key.pem\"{extra} }}"),
            )
        };
        for (text, key) in [
            (
                tls(", client_auth = \"optional\""),
                "listeners[0].tls.client_auth",
            ),
            (
                tls(", client_ca = \"missing.pem\""),
                "listeners[0].tls.client_ca",
            ),
            (tls(", hsts = \"0s\""), "listeners[0].tls.hsts"),
            (
                tls("").replace("[[routes]]", "redirect_to_https = 443\n[[routes]]"),
                "listeners[0].redirect_to_https",
            ),
            (
                BASE.replace("[[routes]]", "redirect_to_https = 0\n[[routes]]"),
                "listeners[0].redirect_to_https",
            ),
            (
                BASE.replace(
                    "[[routes]]",
                    "proxy_protocol = [\"10.0.0.0/33\"]\n[[routes]]",
                ),
                "listeners[0].proxy_protocol",
            ),
        ] {
            let e = err(&text);
            assert!(e.contains(key), "{text}: {e}");
        }
        let acme_only = BASE.replace(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\ntls = { acme = [\"app.example.com\"] }",
        );
        let with_acme = format!("[acme]\ndirectory = \"https://ca.test/dir\"\n{acme_only}");
        assert!(err(&acme_only).contains("listeners[0].tls.acme"));
        assert!(parse(&with_acme, "weir.toml").is_ok());
        for (bad, key) in [
            ("*.example.com", "listeners[0].tls.acme"),
            ("app.example.com:443", "listeners[0].tls.acme"),
        ] {
            let e = err(&with_acme.replace("app.example.com", bad));
            assert!(e.contains(key), "{bad}: {e}");
        }
        let no_cert = BASE.replace(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8080\"\ntls = { key = \"certs-dev/key.pem\" }",
        );
        assert!(err(&no_cert).contains("listeners[0].tls.cert"));
        let good = tls(", client_ca = \"certs-dev/client-ca.pem\", client_auth = \"optional\", hsts = \"365d\"")
            .replace("[[routes]]", "proxy_protocol = [\"10.0.0.0/8\"]\n[[routes]]");
        assert!(parse(&good, "weir.toml").is_ok(), "{good}");
    }

    #[test]
    fn canary_steps_and_gates_are_checked_by_key() {
        let with = |rollout: &str| {
            BASE.replace(
                "kind = \"static\", addresses = [\"127.0.0.1:3001\"]",
                "kind = \"process\", command = [\"x\"]",
            ) + "[pools.app.rollout]\n"
                + rollout
        };
        let good = with("steps = [{ weight = 10, hold = \"1m\" }, { weight = 50, hold = \"1m\" }]\nmax_error_rate = 0.01\nmax_latency_ratio = 1.5\n");
        let config = parse(&good, "weir.toml").unwrap();
        assert_eq!(config.pools["app"].rollout.steps[1].weight, 50);
        for (rollout, key) in [
            (
                "steps = [{ weight = 101, hold = \"1m\" }]",
                "pools.app.rollout.steps[0].weight",
            ),
            (
                "steps = [{ weight = 5, hold = \"0s\" }]",
                "pools.app.rollout.steps[0].hold",
            ),
            ("max_error_rate = 2.0", "pools.app.rollout.max_error_rate"),
            (
                "max_latency_ratio = 0.5",
                "pools.app.rollout.max_latency_ratio",
            ),
        ] {
            let e = err(&with(rollout));
            assert!(e.contains(key), "{rollout}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn unknown_pool_is_refused() {
        let e = err(&BASE.replace("pool = \"app\"", "pool = \"nope\""));
        assert_eq!(
            e,
            "weir.toml: routes[0].pool: unknown pool \"nope\" (no [pools.nope] table)"
        );
    }

    #[test]
    fn empty_pool_is_refused() {
        let e = err(&BASE.replace("[\"127.0.0.1:3001\"]", "[]"));
        assert!(e.contains("pools.app.provider.addresses"), "{e}");
    }

    #[test]
    fn missing_cert_names_path() {
        let text = BASE.replace(
            "listen = \"127.0.0.1:8080\"",
            "listen = \"127.0.0.1:8443\"\ntls = { cert = \"/nonexistent/cert.pem\", key = \"/nonexistent/key.pem\" }",
        );
        let e = err(&text);
        assert!(e.contains("listeners[0].tls.cert"), "{e}");
        assert!(e.contains("/nonexistent/cert.pem"), "{e}");
    }

    #[test]
    fn bad_balance_and_provider_kind_are_refused() {
        assert!(
            err(&BASE.replace("[pools.app]", "[pools.app]\nbalance = \"random\""))
                .contains("pools.app.balance")
        );
        let e = err(&BASE.replace("kind = \"static\"", "kind = \"magic\""));
        assert!(e.contains("pools.app.provider"), "{e}");
    }

    #[test]
    fn bad_addresses_and_prefixes_are_refused() {
        assert!(
            err(&BASE.replace("127.0.0.1:8080", "localhost:8080")).contains("listeners[0].listen")
        );
        assert!(
            err(&BASE.replace("pool = \"app\"", "pool = \"app\"\npath_prefix = \"api\""))
                .contains("routes[0].path_prefix")
        );
        assert!(
            err(&BASE.replace("pool = \"app\"", "pool = \"app\"\nhost = \"a.*.com\""))
                .contains("routes[0].host")
        );
    }

    #[test]
    fn queue_health_and_concurrency_are_checked() {
        let ok = BASE.replace(
            "pool = \"app\"",
            "pool = \"app\"\nqueue = { max_size = 64, timeout = \"10s\" }",
        ).replace(
            "[pools.app]",
            "[pools.app]\nworker_concurrency = 4\nhealth = { path = \"/hello\", interval = \"1s\", timeout = \"500ms\", healthy_threshold = 1, unhealthy_threshold = 2, expect_status = \"200-399\" }",
        );
        let config = parse(&ok, "weir.toml").unwrap();
        assert_eq!(config.routes[0].queue.max_size, 64);
        assert_eq!(config.pools["app"].worker_concurrency, Some(4));
        let e = err(&ok.replace("\"200-399\"", "\"ok\""));
        assert!(e.contains("pools.app.health"), "{e}");
        let e = err(&ok.replace("worker_concurrency = 4", "worker_concurrency = 0"));
        assert!(e.contains("pools.app.worker_concurrency"), "{e}");
        let e = err(&ok.replace("max_size = 64", "max_size = 64, depth = 3"));
        assert!(e.contains("routes[0].queue") && e.contains("depth"), "{e}");
        let e = err(&ok.replace("timeout = \"10s\"", "timeout = \"0s\""));
        assert!(e.contains("routes[0].queue.timeout"), "{e}");
    }

    #[test]
    fn retry_statuses_are_checked() {
        let ok = BASE.replace(
            "[pools.app]",
            "[pools.app]\nretries = { on_status = [503, 429] }",
        );
        let config = parse(&ok, "weir.toml").unwrap();
        assert_eq!(config.pools["app"].retries.on_status, vec![503, 429]);
        assert!(parse(BASE, "weir.toml").unwrap().pools["app"]
            .retries
            .on_status
            .is_empty());
        let e = err(&ok.replace("429", "600"));
        assert_eq!(
            e,
            "weir.toml: pools.app.retries.on_status: 600 is not an HTTP status (100-599)"
        );
        let e = err(&ok.replace("429", "99"));
        assert!(e.contains("pools.app.retries.on_status"), "{e}");
    }

    #[test]
    fn server_bounds_are_checked() {
        let with = |keys: &str| format!("[server]\n{keys}\n{BASE}");
        for ok in [
            "max_h2_streams = 1",
            "threads = 1024",
            "max_header_bytes = 1048576",
            "max_header_bytes = 8192",
        ] {
            assert!(parse(&with(ok), "weir.toml").is_ok(), "{ok}");
        }
        assert_eq!(
            err(&with("max_h2_streams = 0")),
            "weir.toml: server.max_h2_streams: must be at least 1 (HTTP/2 is offered on every listener)"
        );
        assert_eq!(
            err(&with("threads = 1025")),
            "weir.toml: server.threads: must be at most 1024 (0 = one per core)"
        );
        for bad in ["max_header_bytes = 1048577", "max_header_bytes = 8191"] {
            let e = err(&with(bad));
            assert!(
                e.starts_with(
                    "weir.toml: server.max_header_bytes: must be between 8192 and 1048576"
                ),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn every_duration_is_bounded_and_names_its_key() {
        for (table, key) in [
            ("server", "idle_timeout"),
            ("server", "shutdown_grace"),
            ("upstream", "connect_timeout"),
            ("upstream", "idle_timeout"),
        ] {
            let e = err(&format!(
                "[{table}]\n{key} = \"18446744073709551615s\"\n{BASE}"
            ));
            assert!(
                e.starts_with(&format!("weir.toml:2: {table}.{key}: ")),
                "{e}"
            );
            assert!(e.contains("longer than the 1 year"), "{e}");
        }
        let e = err(&BASE.replace(
            "pool = \"app\"",
            "pool = \"app\"\nqueue = { timeout = \"400d\" }",
        ));
        assert!(e.contains("routes[0].queue.timeout"), "{e}");
        assert!(parse(
            &format!("[server]\nshutdown_grace = \"1y\"\n{BASE}"),
            "weir.toml"
        )
        .is_ok());
    }

    #[test]
    fn admin_connection_cap_is_at_least_one() {
        let config = parse(BASE, "weir.toml").unwrap();
        assert_eq!(
            config.admin.max_connections,
            super::super::DEFAULT_ADMIN_MAX_CONNECTIONS
        );
        let with = |n: &str| format!("[admin]\nmax_connections = {n}\n{BASE}");
        assert_eq!(
            parse(&with("1"), "weir.toml")
                .unwrap()
                .admin
                .max_connections,
            1
        );
        assert_eq!(
            err(&with("0")),
            "weir.toml: admin.max_connections: must be at least 1"
        );
    }

    #[test]
    fn admin_listen_must_not_be_a_listener() {
        let with_admin = |admin: &str, listen: &str| {
            format!(
                "[admin]\nlisten = \"{admin}\"\n{}",
                BASE.replace("127.0.0.1:8080", listen)
            )
        };
        let e = err(&with_admin("127.0.0.1:8080", "127.0.0.1:8080"));
        assert_eq!(
            e,
            "weir.toml: admin.listen: 127.0.0.1:8080 overlaps listeners[0].listen (127.0.0.1:8080): the admin API needs a port of its own"
        );
        // A wildcard listener takes the port on every address, loopback included.
        assert!(err(&with_admin("127.0.0.1:8080", "0.0.0.0:8080")).contains("admin.listen"));
        // The admin socket is dual-stack: `[::]` takes the IPv4 port too.
        let dual = format!("[admin]\nlisten = \"[::]:8080\"\ntoken = \"t\"\n{BASE}");
        assert!(err(&dual).contains("admin.listen"));
        // Another port, another family, or port 0 (a fresh free port each time) do not collide.
        for (admin, listen) in [
            ("127.0.0.1:9901", "127.0.0.1:8080"),
            ("127.0.0.1:0", "127.0.0.1:0"),
            ("[::1]:8080", "0.0.0.0:8080"),
            ("127.0.0.1:8080", "[::]:8080"),
            ("127.0.0.1:8080", "127.0.0.2:8080"),
        ] {
            assert!(
                parse(&with_admin(admin, listen), "weir.toml").is_ok(),
                "{admin} {listen}"
            );
        }
    }

    #[test]
    fn docker_provider_keys_are_checked() {
        let with = |keys: &str| {
            BASE.replace(
                "provider = { kind = \"static\", addresses = [\"127.0.0.1:3001\"] }",
                &format!("provider = {{ kind = \"docker\", image = \"weir-demo:dev\", port = 8080{keys} }}"),
            )
        };
        let config = parse(
            &with(", cpus = 1.5, memory = \"512MiB\", pull = \"never\""),
            "weir.toml",
        );
        assert!(config.is_ok(), "{config:?}");
        assert_eq!(
            err(&with(", cpus = 0.0")),
            "weir.toml: pools.app.provider.cpus: must be a number of cores above zero, e.g. 1.5"
        );
        let e = err(&with(", memory = \"512 lots\""));
        assert!(
            e.contains("pools.app.provider") && e.contains("invalid size"),
            "{e}"
        );
        assert!(err(&with(", memory = \"1KiB\"")).contains("at least 1MiB"));
        assert!(err(&with(", endpoint = \"tcp://1.2.3.4:2375\"")).contains("only unix://"));
        assert!(err(&with(", pull = \"always\"")).contains("pools.app.provider"));
        assert!(err(&with(", network = \"my net\"")).contains("pools.app.provider.network"));
        assert!(parse(&with(", network = \"weir_1.a-b\""), "weir.toml").is_ok());
        assert!(
            err(&with(", port = 0").replace("port = 8080, port = 0", "port = 0"))
                .contains("provider.port")
        );
    }

    #[test]
    fn cluster_keys_are_checked() {
        let with = |cluster: &str| format!("{BASE}[cluster]\n{cluster}\n");
        let ok = parse(&with("redis = \"redis://127.0.0.1:6379/0\""), "weir.toml").unwrap();
        let cluster = ok.cluster.unwrap();
        assert_eq!(
            (cluster.prefix.as_str(), cluster.lease_ttl),
            ("weir", super::super::DEFAULT_LEASE_TTL)
        );
        assert!(err(&with("redis = \"http://x\"")).contains("cluster.redis"));
        assert!(err(&with("redis = \"redis://x\"\nlease_ttl = \"100ms\""))
            .contains("cluster.lease_ttl"));
        assert!(err(&with("redis = \"redis://x\"\nprefix = \"\"")).contains("cluster.prefix"));
        for bad in ["0.0.0.0:9901", "10.0.0.5:0", "host:9901"] {
            let e = err(&with(&format!(
                "redis = \"redis://x\"\nadvertise = \"{bad}\""
            )));
            assert!(e.contains("cluster.advertise"), "{bad}: {e}");
        }
        let advertised = parse(
            &with("redis = \"redis://x\"\nadvertise = \"10.0.0.5:9901\""),
            "weir.toml",
        )
        .unwrap();
        assert_eq!(
            advertised.cluster.unwrap().advertise.map(|a| a.to_string()),
            Some("10.0.0.5:9901".into())
        );
        let process = BASE.replace(
            "provider = { kind = \"static\", addresses = [\"127.0.0.1:3001\"] }",
            "provider = { kind = \"process\", command = [\"w\"] }",
        );
        let e = err(&format!("{process}[cluster]\nredis = \"redis://x\"\n"));
        assert!(
            e.contains("pools.app.provider: cannot be part of a fleet"),
            "{e}"
        );
    }

    #[test]
    fn kubernetes_provider_keys_are_checked() {
        let with = |keys: &str| {
            BASE.replace(
                "provider = { kind = \"static\", addresses = [\"127.0.0.1:3001\"] }",
                &format!("provider = {{ kind = \"kubernetes\", deployment = \"app\", port = 8080{keys} }}"),
            )
        };
        let config = parse(
            &with(", namespace = \"shop\", service = \"app-web\""),
            "weir.toml",
        );
        assert!(config.is_ok(), "{config:?}");
        assert_eq!(
            err(&with(", namespace = \"Shop\"")),
            "weir.toml: pools.app.provider.namespace: \"Shop\": a Kubernetes name is lowercase letters, digits, '-' and '.', at most 253 characters, starting and ending with a letter or digit"
        );
        assert!(err(&with(", kubeconfig = \"/nonexistent/kubeconfig\""))
            .contains("pools.app.provider.kubeconfig: /nonexistent/kubeconfig: no such file"));
        assert!(err(&with(", service = \"-x\"")).contains("pools.app.provider.service"));
        assert!(err(&with(", context = \"\"")).contains("pools.app.provider.context"));
    }

    #[test]
    fn read_timeout_and_response_buffer_are_checked() {
        let config = parse(BASE, "weir.toml").unwrap();
        assert_eq!(
            config.upstream.read_timeout,
            super::super::DEFAULT_READ_TIMEOUT
        );
        assert_eq!(
            config.upstream.response_buffer,
            super::super::DEFAULT_RESPONSE_BUFFER
        );
        let with = |keys: &str| format!("[upstream]\n{keys}\n{BASE}");
        let config = parse(
            &with("read_timeout = \"5s\"\nresponse_buffer = \"1MiB\""),
            "weir.toml",
        )
        .unwrap();
        assert_eq!(config.upstream.read_timeout.get().as_secs(), 5);
        assert_eq!(config.upstream.response_buffer.get(), 1 << 20);
        let config = parse(&with("response_buffer = 0"), "weir.toml").unwrap();
        assert_eq!(config.upstream.response_buffer.get(), 0);
        assert_eq!(
            err(&with("read_timeout = \"0s\"")),
            "weir.toml: upstream.read_timeout: must be longer than zero"
        );
        let e = err(&with("response_buffer = \"65MiB\""));
        assert!(
            e.starts_with("weir.toml: upstream.response_buffer: "),
            "{e}"
        );
        let e = err(&with("response_buffer = \"64k\""));
        assert!(
            e.starts_with("weir.toml:2: upstream.response_buffer"),
            "{e}"
        );
        assert!(e.contains("unknown unit"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn syntax_error_has_line() {
        let e = err("[[listeners]]\nlisten = \n");
        assert!(e.starts_with("weir.toml:2"), "{e}");
    }

    fn docker_pool(extra: &str) -> String {
        BASE.replace(
            r#"provider = { kind = "static", addresses = ["127.0.0.1:3001"] }"#,
            &format!(r#"provider = {{ kind = "docker", image = "app:1", port = 8080{extra} }}"#),
        )
    }

    fn revision(text: &str) -> Option<String> {
        parse(text, "weir.toml").unwrap().pools["app"].revision()
    }

    #[test]
    fn a_revision_is_the_hash_of_what_shapes_a_worker_or_the_name_given() {
        let base = revision(&docker_pool(""));
        // Stable across runs and builds: a worker launched by another weir reads the same.
        assert_eq!(base.as_deref(), Some("92f2dbf7"));
        assert_eq!(revision(&docker_pool("")), base);
        assert_ne!(
            revision(&docker_pool("").replace("app:1", "app:2")),
            base,
            "a new image"
        );
        assert_ne!(revision(&docker_pool(r#", env = { A = "1" }"#)), base);
        assert_ne!(revision(&docker_pool(r#", memory = "512MiB""#)), base);
        assert_eq!(
            revision(&docker_pool(r#", stop_grace = "3s", network = "n""#)),
            base,
            "how weir handles workers is no new version of them"
        );
        let named = docker_pool("").replace("[pools.app]", "[pools.app]\nrevision = \"v42\"");
        assert_eq!(revision(&named).as_deref(), Some("v42"));
        assert_eq!(revision(BASE), None, "a static pool has none");
    }

    #[test]
    fn a_bad_revision_names_its_key() {
        let text = docker_pool("").replace("[pools.app]", "[pools.app]\nrevision = \"v 42\"");
        assert!(err(&text).contains("pools.app.revision"), "{}", err(&text));
        let text = BASE.replace("[pools.app]", "[pools.app]\nrevision = \"v42\"");
        assert!(
            err(&text).contains("pools.app.revision: only pools"),
            "{}",
            err(&text)
        );
    }
}
