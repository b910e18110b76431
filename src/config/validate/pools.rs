//! The checks of one `[pools.NAME]` table: its name, policies, provider, health and
//! autoscale settings.

use std::collections::HashSet;

use super::{failing, ConfigError};
use crate::config::{AutoscaleConfig, HealthConfig, PoolConfig, ProviderConfig, RolloutConfig};

/// `[pools.NAME]`.
pub(super) fn check_pool(name: &str, pool: &PoolConfig, origin: &str) -> Result<(), ConfigError> {
    let fail = failing(origin);
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(fail(
            format!("pools.{name}"),
            "pool names use letters, digits, '-' and '_'".into(),
        ));
    }
    if let Some(health) = &pool.health {
        check_health(health).map_err(|(key, m)| fail(format!("pools.{name}.health{key}"), m))?;
        if health.grpc.is_some() && !pool.protocol.is_h2() {
            return Err(fail(
                format!("pools.{name}.health.grpc"),
                "gRPC runs over HTTP/2: set the pool's protocol = \"h2c\" or \"h2\"".into(),
            ));
        }
        if health.grpc.is_some() && health.path.is_some() {
            return Err(fail(
                format!("pools.{name}.health.grpc"),
                "probe with path or grpc, not both".into(),
            ));
        }
    }
    if let Some(sticky) = &pool.sticky {
        let keys = [
            sticky.cookie.is_some(),
            sticky.header.is_some(),
            sticky.client_ip,
        ];
        if keys.iter().filter(|k| **k).count() > 1 {
            return Err(fail(
                format!("pools.{name}.sticky"),
                "one key: cookie, header or client_ip".into(),
            ));
        }
        if sticky.ttl.is_some() && sticky.cookie.is_none() {
            return Err(fail(
                format!("pools.{name}.sticky.ttl"),
                "ttl is the cookie's lifetime: it needs cookie".into(),
            ));
        }
        for (key, value) in [("cookie", &sticky.cookie), ("header", &sticky.header)] {
            let valid = value.as_ref().is_none_or(|v| {
                !v.is_empty() && http::HeaderName::from_bytes(v.as_bytes()).is_ok()
            });
            if !valid {
                return Err(fail(
                    format!("pools.{name}.sticky.{key}"),
                    "letters, digits and '-' make a name".into(),
                ));
            }
        }
    }
    if pool.worker_concurrency == Some(0) {
        return Err(fail(
            format!("pools.{name}.worker_concurrency"),
            "must be at least 1 (leave it out for no cap)".into(),
        ));
    }
    if pool.retries.max_tries == 0 {
        return Err(fail(
            format!("pools.{name}.retries.max_tries"),
            "must be at least 1 (1 = no retries)".into(),
        ));
    }
    if !(0.0..=1.0).contains(&pool.retries.budget) {
        return Err(fail(
            format!("pools.{name}.retries.budget"),
            "must be between 0.0 and 1.0".into(),
        ));
    }
    if let Some(bad) = pool
        .retries
        .on_status
        .iter()
        .find(|s| !(100..=599).contains(*s))
    {
        return Err(fail(
            format!("pools.{name}.retries.on_status"),
            format!("{bad} is not an HTTP status (100-599)"),
        ));
    }
    if pool.rollout.failure_threshold == 0 {
        return Err(fail(
            format!("pools.{name}.rollout.failure_threshold"),
            "must be at least 1".into(),
        ));
    }
    rollout_gates(&pool.rollout)
        .map_err(|(key, m)| fail(format!("pools.{name}.rollout{key}"), m))?;
    if let Some(revision) = &pool.revision {
        let key = format!("pools.{name}.revision");
        if pool.provider.template_revision().is_none() {
            return Err(fail(
                key,
                "only pools weir launches (process, exec, docker) have revisions".into(),
            ));
        }
        let fits = (1..=63).contains(&revision.len())
            && revision
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        if !fits {
            return Err(fail(
                key,
                "1 to 63 letters, digits, '.', '-' and '_' (it becomes a container label)".into(),
            ));
        }
    }
    match &pool.provider {
        ProviderConfig::Static {
            addresses,
            dns_refresh,
            ..
        } => {
            if addresses.is_empty() {
                return Err(fail(
                    format!("pools.{name}.provider.addresses"),
                    "a static pool needs at least one address".into(),
                ));
            }
            let mut seen = HashSet::new();
            for (j, address) in addresses.iter().enumerate() {
                let key = format!("pools.{name}.provider.addresses[{j}]");
                if !seen.insert(address) {
                    return Err(fail(key, format!("{address} is listed twice")));
                }
            }
            if dns_refresh.get() < std::time::Duration::from_secs(1) {
                return Err(fail(
                    format!("pools.{name}.provider.dns_refresh"),
                    "at least 1s".into(),
                ));
            }
            if pool.autoscale.is_some() {
                return Err(fail(
                    format!("pools.{name}.autoscale"),
                    "a static pool does not scale (its workers are exactly its addresses)".into(),
                ));
            }
        }
        ProviderConfig::Process { command, .. } => {
            if command.first().is_none_or(|c| c.trim().is_empty()) {
                return Err(fail(
                    format!("pools.{name}.provider.command"),
                    "needs at least a program, e.g. [\"{weir}\", \"demo-worker\", \"--listen\", \"127.0.0.1:{port}\"]".into(),
                ));
            }
        }
        ProviderConfig::Docker {
            image,
            port,
            cpus,
            memory,
            endpoint,
            network,
            ..
        } => {
            let key = |k: &str| format!("pools.{name}.provider.{k}");
            if image.trim().is_empty() {
                return Err(fail(
                    key("image"),
                    "needs an image, e.g. \"weir-demo:dev\"".into(),
                ));
            }
            if *port == 0 {
                return Err(fail(key("port"), "must be a port from 1 to 65535".into()));
            }
            if let Some(cpus) = cpus {
                if !(*cpus > 0.0 && cpus.is_finite()) {
                    return Err(fail(
                        key("cpus"),
                        "must be a number of cores above zero, e.g. 1.5".into(),
                    ));
                }
            }
            if memory.is_some_and(|m| m.get() < 1024 * 1024) {
                return Err(fail(
                    key("memory"),
                    "must be at least 1MiB, e.g. \"512MiB\"".into(),
                ));
            }
            if let Some(endpoint) = endpoint {
                if !endpoint.starts_with("unix://") {
                    return Err(fail(key("endpoint"), format!("{endpoint:?}: only unix:// sockets are supported, e.g. \"unix:///var/run/docker.sock\"")));
                }
            }
            if let Some(network) = network {
                // The engine takes nearly any name, but one with spaces or slashes cannot be
                // inspected through its API afterwards.
                let mut chars = network.chars();
                let sane = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
                    && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
                if !sane {
                    return Err(fail(
                        key("network"),
                        format!("{network:?}: a network name is letters, digits, '_', '.' and '-', starting with a letter or digit, e.g. \"weir\""),
                    ));
                }
            }
        }
        ProviderConfig::Kubernetes {
            namespace,
            deployment,
            port,
            service,
            kubeconfig,
            context,
        } => {
            let key = |k: &str| format!("pools.{name}.provider.{k}");
            for (k, value) in [
                ("namespace", Some(namespace)),
                ("deployment", Some(deployment)),
                ("service", service.as_ref()),
            ] {
                if let Some(value) = value {
                    if !is_dns_name(value) {
                        return Err(fail(key(k), format!("{value:?}: a Kubernetes name is lowercase letters, digits, '-' and '.', at most 253 characters, starting and ending with a letter or digit")));
                    }
                }
            }
            if *port == 0 {
                return Err(fail(key("port"), "must be a port from 1 to 65535".into()));
            }
            if let Some(path) = kubeconfig {
                if !path.is_file() {
                    return Err(fail(
                        key("kubeconfig"),
                        format!("{}: no such file", path.display()),
                    ));
                }
            }
            if context.as_ref().is_some_and(|c| c.trim().is_empty()) {
                return Err(fail(
                    key("context"),
                    "must name a kubeconfig context".into(),
                ));
            }
        }
        ProviderConfig::Exec {
            launch,
            release,
            list,
        } => {
            let list = list.as_ref();
            let scripts = [
                ("launch", Some(launch)),
                ("release", Some(release)),
                ("list", list),
            ];
            for (key, script) in scripts.into_iter().filter_map(|(k, s)| s.map(|s| (k, s))) {
                if script.trim().is_empty() {
                    return Err(fail(
                        format!("pools.{name}.provider.{key}"),
                        "needs a shell command".into(),
                    ));
                }
            }
        }
    }
    if let Some(scale) = &pool.autoscale {
        check_autoscale(scale, pool.worker_concurrency)
            .map_err(|(key, m)| fail(format!("pools.{name}.autoscale{key}"), m))?;
    }
    Ok(())
}

fn check_health(health: &HealthConfig) -> Result<(), (String, String)> {
    let err = |key: &str, m: String| Err((key.to_string(), m));
    for (key, value) in [(".interval", health.interval), (".timeout", health.timeout)] {
        if value.get().is_zero() {
            return err(key, "must be longer than zero".into());
        }
    }
    for (key, value) in [
        (".healthy_threshold", health.healthy_threshold),
        (".unhealthy_threshold", health.unhealthy_threshold),
    ] {
        if value == 0 {
            return err(key, "must be at least 1".into());
        }
    }
    Ok(())
}

fn check_autoscale(
    scale: &AutoscaleConfig,
    _concurrency: Option<u32>,
) -> Result<(), (String, String)> {
    let err = |key: &str, m: &str| Err((key.to_string(), m.to_string()));
    if scale.max_workers == 0 {
        return err(".max_workers", "must be at least 1");
    }
    if scale.min_workers > scale.max_workers {
        return err(".min_workers", "must not exceed max_workers");
    }
    if let Some(initial) = scale.initial_workers {
        if initial < scale.min_workers || initial > scale.max_workers {
            return err(
                ".initial_workers",
                "must lie between min_workers and max_workers",
            );
        }
    }
    if let Some(target) = scale.target_inflight {
        if !(target > 0.0 && target.is_finite()) {
            return err(".target_inflight", "must be a number above zero");
        }
    }
    if scale.scale_up_step == 0 {
        return err(".scale_up_step", "must be at least 1");
    }
    if scale.max_concurrent_starts == 0 {
        return err(".max_concurrent_starts", "must be at least 1");
    }
    for (key, value) in [
        (".max_idle_time", scale.max_idle_time),
        (".startup_timeout", scale.startup_timeout),
        (".drain_timeout", scale.drain_timeout),
        (".replace_unhealthy_after", scale.replace_unhealthy_after),
        (".panic_window", scale.panic_window),
        (".stable_window", scale.stable_window),
    ] {
        if value.get().is_zero() {
            return err(key, "must be longer than zero");
        }
    }
    for (i, window) in scale.schedule.iter().enumerate() {
        if window.duration.get().is_zero() {
            return err(
                &format!(".schedule[{i}].duration"),
                "must be longer than zero",
            );
        }
        if window.min_workers > scale.max_workers {
            return err(
                &format!(".schedule[{i}].min_workers"),
                "must not exceed max_workers",
            );
        }
    }
    Ok(())
}

/// A Kubernetes object name (RFC 1123 subdomain): what namespaces, Deployments and Services
/// may be called.
fn is_dns_name(name: &str) -> bool {
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    name.len() <= 253
        && edge_ok(name.chars().next())
        && edge_ok(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
}

/// `[pools.NAME.rollout]` canary steps and gates: weights are percents, holds last, and the
/// gates are a rate and a ratio. On error: the key below the table, and what is wrong.
fn rollout_gates(rollout: &RolloutConfig) -> Result<(), (String, String)> {
    for (i, step) in rollout.steps.iter().enumerate() {
        if !(1..=100).contains(&step.weight) {
            return Err((
                format!(".steps[{i}].weight"),
                format!("{} is not a percent of requests (1-100)", step.weight),
            ));
        }
        if step.hold.get().is_zero() {
            return Err((
                format!(".steps[{i}].hold"),
                "must be longer than 0: the gate judges what the step saw".into(),
            ));
        }
    }
    if let Some(rate) = rollout.max_error_rate {
        if !(0.0..=1.0).contains(&rate) {
            return Err((
                ".max_error_rate".into(),
                format!("{rate} is not a share of requests (0-1, e.g. 0.01)"),
            ));
        }
    }
    if let Some(ratio) = rollout.max_latency_ratio {
        if !(ratio >= 1.0 && ratio.is_finite()) {
            return Err((
                ".max_latency_ratio".into(),
                format!("{ratio} must be at least 1 (1.5: half again the old p99)"),
            ));
        }
    }
    Ok(())
}
