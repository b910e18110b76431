//! Alerts: rules evaluated every second over sliding windows of weir's own counters, posting
//! Slack-compatible JSON (`{"text": ...}`) to a webhook when they fire and when they resolve.
//! Evaluation and delivery run on the control thread; a slow or dead webhook costs the request
//! path nothing. Deliveries are rate-limited per rule and retried a few times.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::{AlertConfig, AlertKind};
use crate::pool::{LatencyCounts, WorkerState};
use crate::scale::{Action, ActivityLog};
use crate::state::Shared;
pub use crate::telemetry::AlertCounters;
use crate::values::WebUrl;

/// How often rules are evaluated.
pub const EVALUATE_EVERY: Duration = Duration::from_secs(1);
/// Tries per webhook delivery.
const DELIVERY_TRIES: u32 = 3;
/// Deadline of one delivery try.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The counters at `at`.
fn sample(counters: &AlertCounters, at: Instant) -> Sample {
    Sample {
        at,
        errors: counters.responses_5xx(),
        rejections: counters.queue_rejections(),
        latency: counters.latency(),
    }
}

/// Counters at one moment.
#[derive(Clone)]
struct Sample {
    at: Instant,
    errors: u64,
    rejections: u64,
    latency: LatencyCounts,
}

/// The 99th percentile of the latencies recorded between two samples (upper bucket bound).
fn p99(old: &Sample, new: &Sample) -> Option<Duration> {
    new.latency.since(&old.latency).quantile(0.99)
}

struct RuleState {
    config: AlertConfig,
    firing: bool,
    last_sent: Option<Instant>,
    events_seen: usize,
}

/// Evaluate the snapshot's alert rules every second until the task is dropped.
pub async fn run(shared: Arc<Shared>, activity: Arc<ActivityLog>) {
    let mut samples: VecDeque<Sample> = VecDeque::new();
    let mut rules: Vec<RuleState> = Vec::new();
    let mut rules_from: Option<Arc<crate::config::Config>> = None;
    let mut tick = tokio::time::interval(EVALUATE_EVERY);
    loop {
        tick.tick().await;
        let snapshot = shared.snapshot_full();
        // Pick up new rules after a reload, keeping the state of unchanged ones.
        if rules_from
            .as_ref()
            .is_none_or(|c| !Arc::ptr_eq(c, &snapshot.config))
        {
            // At start, report the scaling since start too; after a reload, only what follows.
            let events = if rules_from.is_none() {
                0
            } else {
                activity.events().len()
            };
            let old = std::mem::take(&mut rules);
            rules = snapshot
                .config
                .alerts
                .iter()
                .map(|config| {
                    let kept = old.iter().find(|r| r.config == *config);
                    RuleState {
                        config: config.clone(),
                        firing: kept.is_some_and(|r| r.firing),
                        last_sent: kept.and_then(|r| r.last_sent),
                        events_seen: kept.map_or(events, |r| r.events_seen),
                    }
                })
                .collect();
            snapshot
                .alerts
                .track_latency(rules.iter().any(|r| r.config.kind == AlertKind::LatencyP99));
            rules_from = Some(Arc::clone(&snapshot.config));
        }
        let now = Instant::now();
        samples.push_back(sample(&snapshot.alerts, now));
        let longest = rules
            .iter()
            .map(|r| r.config.window.get())
            .max()
            .unwrap_or(Duration::ZERO);
        while samples.len() > 2 && now.duration_since(samples[1].at) >= longest {
            samples.pop_front();
        }
        let latest = samples.back().cloned();
        for rule in &mut rules {
            let window = rule.config.window.get();
            let base = samples
                .iter()
                .find(|s| now.duration_since(s.at) <= window)
                .or(samples.front());
            let (Some(base), Some(latest)) = (base, latest.as_ref()) else {
                continue;
            };
            evaluate(rule, &shared, &activity, base, latest, now);
        }
    }
}

fn evaluate(
    rule: &mut RuleState,
    shared: &Shared,
    activity: &ActivityLog,
    base: &Sample,
    latest: &Sample,
    now: Instant,
) {
    let c = &rule.config;
    let name = c
        .name
        .clone()
        .unwrap_or_else(|| c.kind.as_str().to_string());
    let window = humantime::format_duration(c.window.get());
    let (breached, detail) = match c.kind {
        AlertKind::Errors5xx => {
            let n = latest.errors - base.errors;
            (
                n >= c.threshold,
                format!(
                    "{n} 5xx responses in the last {window} (threshold {})",
                    c.threshold
                ),
            )
        }
        AlertKind::QueueRejections => {
            let n = latest.rejections - base.rejections;
            (
                n >= c.threshold,
                format!(
                    "{n} queue rejections in the last {window} (threshold {})",
                    c.threshold
                ),
            )
        }
        AlertKind::LatencyP99 => {
            let limit = c.latency.map(|d| d.get()).unwrap_or(Duration::MAX);
            match p99(base, latest) {
                Some(p) => (
                    p > limit,
                    format!("p99 latency about {p:?} over the last {window} (limit {limit:?})"),
                ),
                None => (false, "no requests".into()),
            }
        }
        AlertKind::UnhealthyWorkers => {
            let snapshot = shared.snapshot();
            let n = snapshot
                .pools
                .iter()
                .filter(|(name, _)| c.pool.as_ref().is_none_or(|p| p == *name))
                .flat_map(|(_, pool)| pool.workers().iter().map(|w| w.state()).collect::<Vec<_>>())
                .filter(|s| *s == WorkerState::Unhealthy)
                .count() as u64;
            (
                n >= c.threshold,
                format!("{n} unhealthy worker(s) (threshold {})", c.threshold),
            )
        }
        AlertKind::CertificateExpiry => {
            let within = c.within.map_or(DEFAULT_CERTIFICATE_WITHIN, |d| d.get());
            let soon = std::time::SystemTime::now() + within;
            let ending: Vec<String> = shared
                .snapshot()
                .certs
                .ends()
                .into_iter()
                .filter(|(_, end)| *end <= soon)
                .map(|(name, end)| {
                    let left = end
                        .duration_since(std::time::SystemTime::now())
                        .unwrap_or_default();
                    format!(
                        "{name} ends in {}",
                        humantime::format_duration(Duration::from_secs(left.as_secs()))
                    )
                })
                .collect();
            let detail = if ending.is_empty() {
                format!(
                    "no certificate ends within {}",
                    humantime::format_duration(within)
                )
            } else {
                format!(
                    "{} (within {}; renewal has not replaced it)",
                    ending.join(", "),
                    humantime::format_duration(within)
                )
            };
            (!ending.is_empty(), detail)
        }
        AlertKind::ScaleEvents | AlertKind::Rollout => {
            let events = activity.events();
            let wanted = |a: Action| {
                c.kind == AlertKind::ScaleEvents || matches!(a, Action::Rollout | Action::Rollback)
            };
            let new: Vec<_> = events
                .iter()
                .skip(rule.events_seen.min(events.len()))
                .filter(|e| c.pool.as_ref().is_none_or(|p| *p == e.pool))
                .filter(|e| wanted(e.action))
                .collect();
            rule.events_seen = events.len();
            for e in new {
                let text = format!(
                    "weir: {} {} {} -> {}: {}",
                    e.pool,
                    e.action.as_str(),
                    e.from,
                    e.to,
                    e.reason
                );
                deliver(c.webhook.clone(), text);
            }
            return;
        }
    };
    if breached && !rule.firing {
        let allowed = rule
            .last_sent
            .is_none_or(|t| now.duration_since(t) >= c.min_interval.get());
        if allowed {
            rule.firing = true;
            rule.last_sent = Some(now);
            info!(alert = %name, %detail, "alert firing");
            deliver(
                c.webhook.clone(),
                format!("FIRING weir alert {name}: {detail}"),
            );
        }
    } else if !breached && rule.firing {
        rule.firing = false;
        info!(alert = %name, "alert resolved");
        deliver(
            c.webhook.clone(),
            format!("RESOLVED weir alert {name}: {detail}"),
        );
    }
}

/// How close to its end a certificate fires `certificate_expiry` unless `within` says.
const DEFAULT_CERTIFICATE_WITHIN: Duration = Duration::from_secs(14 * 86_400);

/// Post `{"text": text}` to `url` in the background, with retries.
fn deliver(url: WebUrl, text: String) {
    tokio::spawn(async move {
        let body = serde_json::json!({ "text": text }).to_string();
        for attempt in 1..=DELIVERY_TRIES {
            match tokio::time::timeout(DELIVERY_TIMEOUT, post(&url, body.clone())).await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => warn!(%url, attempt, error = %e, "alert webhook failed"),
                Err(_) => warn!(%url, attempt, "alert webhook timed out"),
            }
            tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
        }
        warn!(%url, "alert dropped after {DELIVERY_TRIES} tries");
    });
}

async fn post(url: &WebUrl, body: String) -> Result<(), String> {
    let host = url.host().to_string();
    let tcp = TcpStream::connect((host.as_str(), url.port()))
        .await
        .map_err(|e| e.to_string())?;
    let request = Request::post(url.target())
        .header(header::HOST, url.authority())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, "weir-alerts")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let status = if url.is_https() {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name =
            rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        send(TokioIo::new(tls), request).await?
    } else {
        send(TokioIo::new(tcp), request).await?
    };
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}

async fn send<I>(io: TokioIo<I>, request: Request<Full<Bytes>>) -> Result<http::StatusCode, String>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_from_bucket_deltas() {
        let counters = AlertCounters::default();
        counters.track_latency(true);
        let old = sample(&counters, Instant::now());
        for _ in 0..98 {
            counters.record_response(200, Duration::from_micros(150));
        }
        for _ in 0..2 {
            counters.record_response(200, Duration::from_millis(100));
        }
        let new = sample(&counters, Instant::now());
        let p = p99(&old, &new).unwrap_or_default();
        assert!(
            p > Duration::from_millis(100) && p < Duration::from_millis(120),
            "{p:?}"
        );
        assert_eq!(p99(&old, &old), None);
    }
}
