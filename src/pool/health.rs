//! A pool's health-probe settings: part of its policy, parsed and checked once from its
//! `health` table. The probing itself lives in `health`, above the pool.

use std::time::Duration;

use http::uri::PathAndQuery;

use crate::config::HealthConfig;
use crate::values::StatusRanges;

/// What a probe does.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeKind {
    /// Pass when a TCP connection opens.
    Tcp,
    /// Pass when `GET path` answers with an expected status.
    Http {
        /// Request target.
        path: PathAndQuery,
        /// Statuses that pass.
        expect: StatusRanges,
    },
    /// Pass when `grpc.health.v1.Health/Check` for `service` ("" for the whole server)
    /// answers SERVING.
    Grpc {
        /// The service asked about.
        service: String,
    },
}

/// A pool's probe settings, parsed and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    /// HTTP GET or TCP connect.
    pub kind: ProbeKind,
    /// Period for ready and unhealthy workers.
    pub interval: Duration,
    /// Probe deadline.
    pub timeout: Duration,
    /// Passes in a row that make a worker ready.
    pub healthy_threshold: u32,
    /// Failures in a row that make it unhealthy.
    pub unhealthy_threshold: u32,
}

impl HealthSettings {
    /// From the pool's `health` table (checked when the config was read); absent, TCP probes
    /// with the default timings.
    pub fn from_config(config: Option<&HealthConfig>) -> Self {
        let defaults = HealthConfig::default();
        let config = config.unwrap_or(&defaults);
        let kind = match (&config.grpc, &config.path) {
            (Some(service), _) => ProbeKind::Grpc {
                service: service.clone(),
            },
            (None, Some(path)) => ProbeKind::Http {
                path: path.get().clone(),
                expect: config.expect_status.clone(),
            },
            (None, None) => ProbeKind::Tcp,
        };
        HealthSettings {
            kind,
            interval: config.interval.get(),
            timeout: config.timeout.get(),
            healthy_threshold: config.healthy_threshold,
            unhealthy_threshold: config.unhealthy_threshold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn pool_with_health(health: &str) -> Result<crate::config::Config, String> {
        parse(
            &format!(
                "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\n[pools.app]\nprovider = {{ kind = \"static\", addresses = [\"127.0.0.1:3001\"] }}\nhealth = {{ {health} }}\n"
            ),
            "weir.toml",
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn bad_settings_are_refused() {
        // Refused where the file is read, naming the key; settings are only built from a
        // config that passed.
        let relative = pool_with_health("path = \"hello\"").unwrap_err();
        assert!(relative.contains("pools.app.health.path"), "{relative}");
        let zero = pool_with_health("unhealthy_threshold = 0").unwrap_err();
        assert!(
            zero.contains("pools.app.health.unhealthy_threshold"),
            "{zero}"
        );
    }

    #[test]
    fn a_path_makes_an_http_probe_with_its_statuses() {
        let config = pool_with_health("path = \"/up?deep=1\", expect_status = \"204\"").unwrap();
        let settings = HealthSettings::from_config(config.pools["app"].health.as_ref());
        let ProbeKind::Http { path, expect } = settings.kind else {
            panic!("an HTTP probe");
        };
        assert_eq!(path.as_str(), "/up?deep=1");
        assert!(expect.contains(204) && !expect.contains(200));
        assert_eq!(HealthSettings::from_config(None).kind, ProbeKind::Tcp);
    }
}
