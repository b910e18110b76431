//! What a reload changes outside the pools, key by key, and when each change takes effect; and
//! the changes a reload must refuse because only a restart can make them.
//!
//! The wording follows where each key is read. Per-connection settings are copied from the
//! snapshot when a connection is accepted, so open connections keep the old value; per-request
//! settings apply from the next request; `server.max_connections` and `admin.max_connections`
//! are resized by the reload itself; `server.threads` is read once, when the serving threads
//! start. The server, upstream and admin sections are destructured in full, so a key added to
//! the model does not compile until its reload behaviour is stated here.

use std::fmt::Display;

use super::{AdminConfig, Config, ServerConfig, UpstreamConfig};
use crate::values::Address;

/// Read when a connection is accepted (proxy and admin listeners alike).
const NEW_CONNECTIONS: &str = "applies to connections accepted from now on";
/// Read when a proxy connection is accepted.
const NEW_PROXY_CONNECTIONS: &str = "applies to proxy connections accepted from now on";
/// Read from the snapshot by every request.
const NEXT_REQUEST: &str = "applies from the next request";
/// Resized by the reload.
const APPLIED: &str = "applied now; connections open above a lower cap finish normally";

/// Refuse a reload that changes what only a restart can change: listening sockets.
pub fn check_restart_only(old: &Config, new: &Config) -> Result<(), String> {
    let listens = |c: &Config| -> Vec<(Address, bool)> {
        c.listeners
            .iter()
            .map(|l| (l.listen, l.tls.is_some()))
            .collect()
    };
    if listens(old) != listens(new) {
        return Err("listeners: addresses or TLS on/off changed; those need a restart (nothing was applied)".into());
    }
    if old.admin.listen != new.admin.listen {
        return Err("admin.listen changed; that needs a restart (nothing was applied)".into());
    }
    Ok(())
}

/// What changed outside the pools, one entry per key (per section for routes, access log and
/// alerts), each saying when it takes effect.
pub fn describe(old: &Config, new: &Config) -> Vec<String> {
    let Config {
        server,
        upstream,
        listeners,
        routes,
        pools: _, // the reload applies and reports pools itself
        admin,
        access_log,
        alerts,
        cluster,
        acme,
    } = new;
    let mut changes = Vec::new();
    if old.acme != *acme {
        changes.push("acme: changed (the next order uses it)".into());
    }
    if old.cluster != *cluster {
        changes.push("cluster: changed (takes effect after a restart)".into());
    }
    if old.routes != *routes {
        changes.push("routes: changed".into());
    }
    // Certificates are re-read from disk on every reload: the files may have changed.
    for (i, listener) in listeners.iter().enumerate() {
        if listener.tls.is_some() {
            changes.push(format!("listeners[{i}].tls: certificates reloaded"));
        }
    }
    server_changes(&old.server, server, &mut changes);
    upstream_changes(&old.upstream, upstream, &mut changes);
    admin_changes(&old.admin, admin, &mut changes);
    if old.access_log != *access_log {
        changes.push(format!("access_log: changed ({NEXT_REQUEST})"));
    }
    if old.alerts != *alerts {
        changes.push("alerts: changed (applies within a second)".into());
    }
    changes
}

/// `key: old -> new (when)` if the value changed.
fn push_value<T: PartialEq + Display>(
    changes: &mut Vec<String>,
    key: &str,
    old: &T,
    new: &T,
    when: &str,
) {
    if old != new {
        changes.push(format!("{key}: {old} -> {new} ({when})"));
    }
}

fn server_changes(old: &ServerConfig, new: &ServerConfig, changes: &mut Vec<String>) {
    let ServerConfig {
        threads,
        max_connections,
        header_read_timeout,
        idle_timeout,
        max_header_bytes,
        tls_handshake_timeout,
        max_h2_streams,
        shutdown_grace,
        request_body_timeout,
        send_timeout,
        tunnel_idle_timeout,
        trusted_proxies,
        min_data_rate,
        min_data_rate_grace,
        underscores_in_headers,
    } = new;
    push_value(
        changes,
        "server.request_body_timeout",
        &old.request_body_timeout,
        request_body_timeout,
        NEXT_REQUEST,
    );
    push_value(
        changes,
        "server.send_timeout",
        &old.send_timeout,
        send_timeout,
        NEW_PROXY_CONNECTIONS,
    );
    push_value(
        changes,
        "server.tunnel_idle_timeout",
        &old.tunnel_idle_timeout,
        tunnel_idle_timeout,
        "applies to tunnels opened from now on",
    );
    push_value(
        changes,
        "server.threads",
        &old.threads,
        threads,
        "needs a restart: serving threads are started once",
    );
    push_value(
        changes,
        "server.max_connections",
        &old.max_connections,
        max_connections,
        APPLIED,
    );
    push_value(
        changes,
        "server.header_read_timeout",
        &old.header_read_timeout,
        header_read_timeout,
        NEW_CONNECTIONS,
    );
    push_value(
        changes,
        "server.idle_timeout",
        &old.idle_timeout,
        idle_timeout,
        NEW_CONNECTIONS,
    );
    push_value(
        changes,
        "server.max_header_bytes",
        &old.max_header_bytes,
        max_header_bytes,
        NEW_CONNECTIONS,
    );
    push_value(
        changes,
        "server.tls_handshake_timeout",
        &old.tls_handshake_timeout,
        tls_handshake_timeout,
        NEW_PROXY_CONNECTIONS,
    );
    push_value(
        changes,
        "server.max_h2_streams",
        &old.max_h2_streams,
        max_h2_streams,
        NEW_PROXY_CONNECTIONS,
    );
    push_value(
        changes,
        "server.shutdown_grace",
        &old.shutdown_grace,
        shutdown_grace,
        "applies at shutdown",
    );
    if old.trusted_proxies != *trusted_proxies {
        changes.push(format!(
            "server.trusted_proxies: changed ({NEW_PROXY_CONNECTIONS})"
        ));
    }
    push_value(
        changes,
        "server.min_data_rate",
        &old.min_data_rate,
        min_data_rate,
        NEW_PROXY_CONNECTIONS,
    );
    push_value(
        changes,
        "server.min_data_rate_grace",
        &old.min_data_rate_grace,
        min_data_rate_grace,
        NEW_PROXY_CONNECTIONS,
    );
    push_value(
        changes,
        "server.underscores_in_headers",
        &old.underscores_in_headers,
        underscores_in_headers,
        NEXT_REQUEST,
    );
}

fn upstream_changes(old: &UpstreamConfig, new: &UpstreamConfig, changes: &mut Vec<String>) {
    let UpstreamConfig {
        connect_timeout,
        response_timeout,
        idle_timeout,
        max_idle_per_worker,
        read_timeout,
        response_buffer,
        max_response_buffer,
        request_buffer,
        max_request_buffer,
        max_temp_bytes,
        temp_dir,
    } = new;
    for (key, old, new) in [
        (
            "upstream.max_response_buffer",
            &old.max_response_buffer,
            max_response_buffer,
        ),
        (
            "upstream.request_buffer",
            &old.request_buffer,
            request_buffer,
        ),
        (
            "upstream.max_request_buffer",
            &old.max_request_buffer,
            max_request_buffer,
        ),
        (
            "upstream.max_temp_bytes",
            &old.max_temp_bytes,
            max_temp_bytes,
        ),
    ] {
        push_value(changes, key, old, new, NEXT_REQUEST);
    }
    if old.temp_dir != *temp_dir {
        changes.push(format!("upstream.temp_dir: changed ({NEXT_REQUEST})"));
    }
    push_value(
        changes,
        "upstream.read_timeout",
        &old.read_timeout,
        read_timeout,
        NEXT_REQUEST,
    );
    push_value(
        changes,
        "upstream.response_buffer",
        &old.response_buffer,
        response_buffer,
        NEXT_REQUEST,
    );
    push_value(
        changes,
        "upstream.connect_timeout",
        &old.connect_timeout,
        connect_timeout,
        NEXT_REQUEST,
    );
    push_value(
        changes,
        "upstream.response_timeout",
        &old.response_timeout,
        response_timeout,
        NEXT_REQUEST,
    );
    push_value(
        changes,
        "upstream.idle_timeout",
        &old.idle_timeout,
        idle_timeout,
        NEXT_REQUEST,
    );
    push_value(
        changes,
        "upstream.max_idle_per_worker",
        &old.max_idle_per_worker,
        max_idle_per_worker,
        NEXT_REQUEST,
    );
}

fn admin_changes(old: &AdminConfig, new: &AdminConfig, changes: &mut Vec<String>) {
    let AdminConfig {
        listen: _, // refused by check_restart_only
        token,
        token_env,
        max_connections,
    } = new;
    // Never print a token.
    if old.token != *token || old.token_env != *token_env {
        changes.push("admin: token changed (applies from the next admin request)".into());
    }
    push_value(
        changes,
        "admin.max_connections",
        &old.max_connections,
        max_connections,
        APPLIED,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[[listeners]]\nlisten = \"127.0.0.1:8080\"\n[[routes]]\npool = \"app\"\n[pools.app]\nprovider = { kind = \"static\", addresses = [\"127.0.0.1:3001\"] }\n";

    fn config(server: &str, rest: &str) -> Config {
        super::super::parse(&format!("[server]\n{server}\n{rest}\n{BASE}"), "t.toml").unwrap()
    }

    #[test]
    fn nothing_changed_says_nothing() {
        assert!(describe(&config("", ""), &config("", "")).is_empty());
    }

    #[test]
    fn every_server_key_says_when_it_applies() {
        let old = config("", "");
        let new = config(
            "threads = 3\nmax_connections = 10\nheader_read_timeout = \"5s\"\nidle_timeout = \"30s\"\nmax_header_bytes = 16384\ntls_handshake_timeout = \"3s\"\nmax_h2_streams = 8\nshutdown_grace = \"1s\"\ntrusted_proxies = [\"10.0.0.0/8\"]",
            "",
        );
        assert_eq!(
            describe(&old, &new),
            [
                "server.threads: 0 -> 3 (needs a restart: serving threads are started once)",
                "server.max_connections: 20000 -> 10 (applied now; connections open above a lower cap finish normally)",
                "server.header_read_timeout: 10s -> 5s (applies to connections accepted from now on)",
                "server.idle_timeout: 1m -> 30s (applies to connections accepted from now on)",
                "server.max_header_bytes: 65536 -> 16384 (applies to connections accepted from now on)",
                "server.tls_handshake_timeout: 10s -> 3s (applies to proxy connections accepted from now on)",
                "server.max_h2_streams: 256 -> 8 (applies to proxy connections accepted from now on)",
                "server.shutdown_grace: 30s -> 1s (applies at shutdown)",
                "server.trusted_proxies: changed (applies to proxy connections accepted from now on)",
            ]
        );
    }

    #[test]
    fn upstream_admin_and_sections() {
        let old = config("", "[admin]\ntoken = \"a\"");
        let new = config(
            "",
            "[upstream]\nconnect_timeout = \"1s\"\nmax_idle_per_worker = 4\n[admin]\ntoken = \"b\"\nmax_connections = 8\n[access_log]\nenabled = true",
        );
        let changes = describe(&old, &new);
        assert_eq!(
            changes,
            [
                "upstream.connect_timeout: 5s -> 1s (applies from the next request)",
                "upstream.max_idle_per_worker: 256 -> 4 (applies from the next request)",
                "admin: token changed (applies from the next admin request)",
                "admin.max_connections: 256 -> 8 (applied now; connections open above a lower cap finish normally)",
                "access_log: changed (applies from the next request)",
            ]
        );
        assert!(!changes
            .iter()
            .any(|c| c.contains("\"b\"") || c.contains(" b ")));
    }

    #[test]
    fn listening_sockets_need_a_restart() {
        let old = config("", "");
        let moved =
            super::super::parse(&BASE.replace("127.0.0.1:8080", "127.0.0.1:8081"), "t.toml")
                .unwrap();
        assert!(check_restart_only(&old, &moved)
            .unwrap_err()
            .contains("listeners"));
        let admin = config("", "[admin]\nlisten = \"127.0.0.1:9902\"");
        assert!(check_restart_only(&old, &admin)
            .unwrap_err()
            .contains("admin.listen"));
        assert!(check_restart_only(&old, &config("threads = 4", "")).is_ok());
    }
}
