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
    /// From the pool's `health` table; absent, TCP probes with the default timings.
    pub fn from_config(config: Option<&HealthConfig>) -> Result<Self, String> {
        let defaults = HealthConfig::default();
        let config = config.unwrap_or(&defaults);
        let kind = match &config.path {
            Some(path) => {
                if !path.starts_with('/') {
                    return Err(format!("health.path {path:?} must start with '/'"));
                }
                let path = path
                    .parse::<http::uri::PathAndQuery>()
                    .map_err(|e| format!("health.path {path:?}: {e}"))?;
                ProbeKind::Http {
                    path,
                    expect: StatusRanges::parse(&config.expect_status)
                        .map_err(|e| format!("health.expect_status: {e}"))?,
                }
            }
            None => ProbeKind::Tcp,
        };
        if config.interval.get().is_zero() || config.timeout.get().is_zero() {
            return Err("health.interval and health.timeout must be longer than zero".into());
        }
        if config.healthy_threshold == 0 || config.unhealthy_threshold == 0 {
            return Err("health thresholds must be at least 1".into());
        }
        Ok(HealthSettings {
            kind,
            interval: config.interval.get(),
            timeout: config.timeout.get(),
            healthy_threshold: config.healthy_threshold,
            unhealthy_threshold: config.unhealthy_threshold,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused() {
        let relative = HealthConfig {
            path: Some("hello".into()),
            ..HealthConfig::default()
        };
        assert!(HealthSettings::from_config(Some(&relative)).is_err());
        let zero = HealthConfig {
            unhealthy_threshold: 0,
            ..HealthConfig::default()
        };
        assert!(HealthSettings::from_config(Some(&zero)).is_err());
    }
}
