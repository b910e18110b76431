//! The admin listener: liveness and readiness, the JSON API, Prometheus /metrics and the
//! dashboard at `/`. It runs on the control thread, never on a serving thread. With a token
//! set, /api/ and /metrics need `Authorization: Bearer <token>` (compared in constant time);
//! the dashboard's assets hold no data and need none. A state-changing call a browser makes
//! from another site is refused whatever the token. Its connections are capped and timed out
//! like the proxy's (`conn.rs`).

pub mod cli;
mod conn;
mod dashboard;
mod exposition;
mod query;
pub mod views;

pub use conn::serve;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use tracing::debug;

use crate::control::Control;
use crate::pool::WorkerState;

/// Largest admin request body (a scale request is a few bytes).
const MAX_ADMIN_BODY: usize = 64 * 1024;

type AdminResponse = Response<Full<Bytes>>;

fn json<T: Serialize>(status: StatusCode, value: &T) -> AdminResponse {
    let body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, message: impl Into<String>) -> AdminResponse {
    #[derive(Serialize)]
    struct ErrorBody {
        error: String,
    }
    json(
        status,
        &ErrorBody {
            error: message.into(),
        },
    )
}

/// Equal in time whatever the contents, so a token cannot be guessed byte by byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn authorized(req: &Request<Incoming>, token: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.trim().as_bytes(), token.as_bytes()))
}

async fn route(req: Request<Incoming>, control: &Arc<Control>, peer: SocketAddr) -> AdminResponse {
    let path = req.uri().path().trim_end_matches('/').to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => {
            return json(StatusCode::OK, &serde_json::json!({"status": "ok"}))
        }
        (&Method::GET, "/readyz") => return readiness(control),
        (&Method::GET | &Method::HEAD, p) => {
            if let Some(page) = dashboard::asset(p) {
                return page;
            }
        }
        _ => {}
    }
    if method != Method::GET && method != Method::HEAD && from_another_site(&req) {
        debug!(%peer, %path, "cross-site admin call refused");
        return error(
            StatusCode::FORBIDDEN,
            "cross-site request refused: call the admin API from its own origin or without a browser",
        );
    }
    let token = control.shared().snapshot().admin_token.clone();
    let protected = path.starts_with("/api/") || path == "/metrics";
    if protected && !authorized(&req, token.as_deref()) {
        debug!(%peer, %path, "admin call without a valid token");
        let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"weir\""),
        );
        return response;
    }
    let shared = control.shared();
    match (&method, path.as_str()) {
        (&Method::GET, "/metrics") => {
            let text = exposition::render(&shared.snapshot());
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        (&Method::GET, "/api/v1/workers") => json(StatusCode::OK, &views::workers(control)),
        (&Method::GET, "/api/v1/queue") => json(StatusCode::OK, &views::queue(control)),
        (&Method::GET, "/api/v1/pools") => json(StatusCode::OK, &views::pools(control)),
        (&Method::GET, "/api/v1/activity") => json(StatusCode::OK, &views::activity(control)),
        (&Method::GET, "/api/v1/history") => history(&req, control),
        (&Method::GET, "/api/v1/cluster") => match control.fleet() {
            Some(fleet) => json(StatusCode::OK, &fleet.view()),
            None => error(
                StatusCode::NOT_FOUND,
                "this weir is not in a fleet (no [cluster] section)",
            ),
        },
        (&Method::POST, weir_peer) if weir_peer == crate::fleet::PEER_PATH => {
            peer_news(req, control).await
        }
        (&Method::POST, "/api/v1/reload") => match control.reload().await {
            Ok(changed) => json(StatusCode::OK, &serde_json::json!({ "changed": changed })),
            Err(e) => error(StatusCode::BAD_REQUEST, e),
        },
        (&Method::GET, p) if p.starts_with("/api/v1/pools/") && p.ends_with("/rollout") => {
            let name = &p["/api/v1/pools/".len()..p.len() - "/rollout".len()];
            rollout(control, name, "status")
        }
        (&Method::POST, p) if p.starts_with("/api/v1/pools/") && p.ends_with("/rollout") => {
            let name = p["/api/v1/pools/".len()..p.len() - "/rollout".len()].to_string();
            let body = match read_body(req, control, MAX_ADMIN_BODY).await {
                Ok(body) => body,
                Err(response) => return response,
            };
            match serde_json::from_slice::<views::RolloutRequest>(&body) {
                Ok(request) => rollout(control, &name, &request.action),
                Err(e) => error(
                    StatusCode::BAD_REQUEST,
                    format!("expected {{\"action\": \"pause\"}} (pause, resume, abort, undo): {e}"),
                ),
            }
        }
        (&Method::POST, p) if p.starts_with("/api/v1/pools/") && p.ends_with("/scale") => {
            let name = &p["/api/v1/pools/".len()..p.len() - "/scale".len()];
            scale(req, control, name).await
        }
        (&Method::POST, p) if p.starts_with("/api/v1/workers/") => {
            let rest = &p["/api/v1/workers/".len()..];
            match rest.rsplit_once('/') {
                Some((id, "protect")) => protect(control, id, true),
                Some((id, "unprotect")) => protect(control, id, false),
                _ => error(StatusCode::NOT_FOUND, format!("no such endpoint: POST {p}")),
            }
        }
        (_, p) => error(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: {method} {p}"),
        ),
    }
}

/// Whether a browser sent this from a page of another origin. Browsers label every
/// cross-origin POST with `Origin` (and `Sec-Fetch-Site`); without a cookie such a call has no
/// token to carry, but with no token set it would otherwise act, so it is refused. Clients
/// that are not browsers send neither header and are not affected.
fn from_another_site(req: &Request<Incoming>) -> bool {
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    origin_host.is_none() || origin_host != host
}

/// `GET /api/v1/history?pool=NAME&seconds=N`: the pool's last N samples (default and most:
/// 900, 15 minutes).
fn history(req: &Request<Incoming>, control: &Control) -> AdminResponse {
    let query = req.uri().query();
    let Some(pool) = query::param(query, "pool") else {
        return error(
            StatusCode::BAD_REQUEST,
            "which pool? GET /api/v1/history?pool=NAME[&seconds=N]",
        );
    };
    if !control.shared().snapshot().pools.contains_key(&pool) {
        return error(StatusCode::NOT_FOUND, format!("no pool named {pool:?}"));
    }
    let seconds = match query::param(query, "seconds") {
        None => crate::history::KEEP_SAMPLES,
        Some(s) => match s.parse::<usize>() {
            Ok(n) => n.min(crate::history::KEEP_SAMPLES),
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "seconds must be a whole number of seconds (at most {}); got {s:?}",
                        crate::history::KEEP_SAMPLES
                    ),
                )
            }
        },
    };
    json(StatusCode::OK, &views::history(control, &pool, seconds))
}

/// A request's body, up to `limit` bytes. It must arrive within the head's time limit, so a
/// stalled upload cannot keep an admin connection busy (and so open) for ever.
async fn read_body(
    req: Request<Incoming>,
    control: &Control,
    limit: usize,
) -> Result<Bytes, AdminResponse> {
    let deadline = control
        .shared()
        .snapshot()
        .config
        .server
        .header_read_timeout
        .get();
    let collect = Limited::new(req.into_body(), limit).collect();
    match tokio::time::timeout(deadline, collect).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(_)) | Err(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "request body too large, incomplete or too slow",
        )),
    }
}

/// `POST /api/v1/cluster/peer`: another instance of the fleet sends its news (the second
/// channel, `fleet::peers`) and gets this instance's.
async fn peer_news(req: Request<Incoming>, control: &Control) -> AdminResponse {
    let Some(fleet) = control.fleet() else {
        return error(
            StatusCode::NOT_FOUND,
            "this weir is not in a fleet (no [cluster] section)",
        );
    };
    let body = match read_body(req, control, crate::fleet::MAX_NEWS).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    match serde_json::from_slice::<crate::fleet::PeerNews>(&body) {
        Ok(news) => json(StatusCode::OK, &fleet.exchange(control.shared(), news)),
        Err(e) => error(StatusCode::BAD_REQUEST, format!("unreadable news: {e}")),
    }
}

fn readiness(control: &Control) -> AdminResponse {
    let shared = control.shared();
    let snapshot = shared.snapshot();
    let mut not_ready = Vec::new();
    for route in snapshot.routes.all() {
        let pool = &route.pool;
        let has_ready = pool
            .workers()
            .iter()
            .any(|w| w.state() == WorkerState::Ready);
        let can_launch = control.scalers.contains_key(&pool.name);
        if !has_ready && !can_launch {
            not_ready.push(format!(
                "route {} (pool {}) has no ready worker",
                route.name, pool.name
            ));
        }
    }
    // A name whose first certificate has not come yet: its handshakes fail.
    not_ready.extend(snapshot.certs.waiting());
    for scaler in control.scalers.iter() {
        if let Some(problem) = scaler.provider_problem() {
            not_ready.push(format!("pool {}: {problem}", scaler.key()));
        }
    }
    // A failed DNS lookup keeps the last addresses: still serving, so degraded, not unready
    // (unless the pool has no worker left, which the route check above says).
    let source_problems = control.source_problems();
    // An instance that hears too little of its fleet uses no shared capacity: its clients
    // are better served elsewhere.
    if let Some(isolated) = control.fleet().and_then(|f| f.isolation()) {
        not_ready.push(isolated);
    }
    // A fleet whose Redis is down keeps serving with the workers it knows: that is degraded,
    // not unready (pulling every instance out of its balancer would be the outage).
    let mut degraded: Vec<String> = control
        .fleet()
        .and_then(|c| c.problem())
        .into_iter()
        .collect();
    // Serving, but not as safely as it looks: said on every readiness check, so it is not
    // forgotten after the start-up log line.
    for (name, pool) in &snapshot.pools {
        if pool.transport().tls.as_ref().is_some_and(|t| t.insecure) {
            degraded.push(format!(
                "pool {name}: tls.insecure_skip_verify is on: the workers' certificates are not verified"
            ));
        }
    }
    degraded.extend(source_problems);
    degraded.sort();
    match (not_ready.is_empty(), degraded.is_empty()) {
        (true, true) => json(StatusCode::OK, &serde_json::json!({"status": "ready"})),
        (true, false) => json(
            StatusCode::OK,
            &serde_json::json!({"status": "ready", "degraded": degraded}),
        ),
        (false, _) => {
            let mut reasons = not_ready;
            reasons.extend(degraded);
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"status": "not_ready", "reasons": reasons}),
            )
        }
    }
}

async fn scale(req: Request<Incoming>, control: &Control, name: &str) -> AdminResponse {
    let shared = control.shared();
    if !shared.snapshot().pools.contains_key(name) {
        return error(StatusCode::NOT_FOUND, format!("no pool named {name:?}"));
    }
    let Some(scaler) = control.scalers.get(name).map(|s| Arc::clone(&s)) else {
        return error(
            StatusCode::BAD_REQUEST,
            format!("pool {name:?} is static: its workers are exactly its addresses"),
        );
    };
    let body = match read_body(req, control, MAX_ADMIN_BODY).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let request: views::ScaleRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("expected {{\"workers\": N}}: {e}"),
            )
        }
    };
    let max = scaler.policy().max_workers;
    if request.workers > max {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "workers must be between 0 and max_workers ({max}); got {}",
                request.workers
            ),
        );
    }
    scaler.set_manual(request.workers);
    let min = scaler
        .policy()
        .effective_min(crate::values::unix_minutes_now());
    json(
        StatusCode::OK,
        &serde_json::json!({"pool": name, "workers": request.workers.max(min), "requested": request.workers}),
    )
}

/// `GET`/`POST /api/v1/pools/{name}/rollout`: the rollout, or an operator's action on it.
fn rollout(control: &Control, name: &str, action: &str) -> AdminResponse {
    let Some(scaler) = control.scalers.get(name).map(|s| Arc::clone(&s)) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no pool named {name:?} that weir launches"),
        );
    };
    match scaler.rollout_action(action) {
        Ok(view) => json(StatusCode::OK, &view),
        Err(e) if e.starts_with("no rollout") => error(StatusCode::NOT_FOUND, e),
        Err(e) if e.starts_with("unknown action") => error(StatusCode::BAD_REQUEST, e),
        Err(e) => error(StatusCode::CONFLICT, e),
    }
}

fn protect(control: &Control, id: &str, protected: bool) -> AdminResponse {
    let snapshot = control.shared().snapshot();
    for pool in snapshot.pools.values() {
        if let Some(w) = pool.workers().iter().find(|w| w.name == id) {
            w.set_protected(protected);
            return json(
                StatusCode::OK,
                &serde_json::json!({"id": id, "protected": protected}),
            );
        }
    }
    error(StatusCode::NOT_FOUND, format!("no worker {id:?}"))
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(constant_time_eq(b"", b""));
    }
}
