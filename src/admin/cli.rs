//! The CLI views (`weir workers`, `queue`, `pools`, `activity`, `scale`, `reload`): a small
//! HTTP client for the admin API and aligned tables that read well at 80 columns.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;

use super::views::{ActivityView, PoolView, QueueView, WorkerView};

/// How long a CLI call waits for the admin API.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to reach the admin API.
#[derive(Debug, Clone)]
pub struct AdminTarget {
    /// "host:port" from an `http://host:port` URL.
    pub authority: String,
    /// Bearer token, if any.
    pub token: Option<String>,
}

impl AdminTarget {
    /// From `--admin URL` (http only: the admin API is meant for loopback or a private net).
    pub fn parse(url: &str, token: Option<String>) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("--admin {url:?}: expected http://HOST:PORT"))?;
        let authority = rest.trim_end_matches('/').to_string();
        if authority.is_empty() || authority.contains('/') {
            return Err(format!("--admin {url:?}: expected http://HOST:PORT"));
        }
        Ok(AdminTarget { authority, token })
    }

    /// Call the API; the response body on 2xx, else the API's error message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Bytes, String> {
        tokio::time::timeout(CALL_TIMEOUT, self.call_inner(method, path, body))
            .await
            .map_err(|_| {
                format!(
                    "no answer from http://{} within {CALL_TIMEOUT:?}",
                    self.authority
                )
            })?
    }

    async fn call_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Bytes, String> {
        let stream = TcpStream::connect(&self.authority).await.map_err(|e| {
            format!(
                "cannot reach the admin API at http://{}: {e}",
                self.authority
            )
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if status.is_success() {
            return Ok(bytes);
        }
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        Err(format!("{}: {message}", status.as_u16()))
    }

    /// GET and decode.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<(T, Bytes), String> {
        let bytes = self.call(Method::GET, path, None).await?;
        let value =
            serde_json::from_slice(&bytes).map_err(|e| format!("unexpected answer: {e}"))?;
        Ok((value, bytes))
    }
}

/// Render rows as an aligned table with a header; the last column is cut to fit `width`.
pub fn table(headers: &[&str], rows: &[Vec<String>], width: usize) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        let text = text.trim_end();
        if text.chars().count() > width {
            let cut: String = text.chars().take(width.saturating_sub(1)).collect();
            out.push_str(&cut);
            out.push('…');
        } else {
            out.push_str(text);
        }
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// "2026-11-24T10:51:17.635Z" shown as "2026-11-24 10:51:17".
fn short_time(rfc3339: &str) -> String {
    rfc3339.get(..19).unwrap_or(rfc3339).replace('T', " ")
}

/// The worker list.
pub fn workers_table(workers: &[WorkerView]) -> String {
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            vec![
                w.id.clone(),
                w.pool.clone(),
                format!("{}{}", w.state, if w.protected { "*" } else { "" }),
                w.in_flight.to_string(),
                w.address.clone(),
                w.revision.clone().unwrap_or_else(|| "-".into()),
                short_time(&w.created_at),
            ]
        })
        .collect();
    // `served` and the flags are in --json; the table keeps to 80 columns.
    table(
        &[
            "ID",
            "POOL",
            "STATE",
            "IN_FLIGHT",
            "ADDRESS",
            "REVISION",
            "CREATED_AT",
        ],
        &rows,
        80,
    )
}

/// The queue.
pub fn queue_table(queue: &[QueueView]) -> String {
    if queue.is_empty() {
        return "no request is waiting\n".to_string();
    }
    let rows: Vec<Vec<String>> = queue
        .iter()
        .map(|q| {
            vec![
                q.route.clone(),
                q.pool.clone(),
                q.reason.clone(),
                q.waited_ms.to_string(),
                short_time(&q.enqueued_at),
            ]
        })
        .collect();
    table(
        &["ROUTE", "POOL", "REASON", "WAITED_MS", "ENQUEUED_AT"],
        &rows,
        80,
    )
}

/// The pools.
pub fn pools_table(pools: &[PoolView]) -> String {
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.ready.to_string(),
                p.starting.to_string(),
                p.desired.to_string(),
                p.min_workers.to_string(),
                p.max_workers.to_string(),
                p.in_flight.to_string(),
                p.queued.to_string(),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "READY",
            "STARTING",
            "DESIRED",
            "MIN",
            "MAX",
            "IN_FLIGHT",
            "QUEUED",
        ],
        &rows,
        80,
    )
}

/// The scaling history.
pub fn activity_table(events: &[ActivityView]) -> String {
    if events.is_empty() {
        return "no scaling activity yet\n".to_string();
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.at.get(11..19).unwrap_or(&e.at).to_string(),
                e.pool.clone(),
                e.action.clone(),
                format!("{}->{}", e.from, e.to),
                e.reason.clone(),
            ]
        })
        .collect();
    table(&["AT", "POOL", "ACTION", "SIZE", "REASON"], &rows, 80)
}

/// `weir cluster`: the fleet's instances, the leader marked, with each one's share of every
/// pool (requests it may have in flight over the pool's workers).
pub fn cluster_table(view: &crate::fleet::FleetView) -> String {
    let rows: Vec<Vec<String>> = view
        .instances
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                if i.leader { "leader" } else { "" }.to_string(),
                i.admin.clone(),
                format!("{}ms", i.last_seen_ms),
                i.in_flight.to_string(),
                i.queued.to_string(),
                i.shares
                    .iter()
                    .map(|(pool, share)| format!("{pool}={share}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    let leader = view.leader.as_deref().unwrap_or("none (scaling frozen)");
    format!(
        "this instance: {}; leader: {leader}\n{}",
        view.name,
        table(
            &[
                "NAME",
                "ROLE",
                "ADMIN",
                "LAST SEEN",
                "IN-FLIGHT",
                "QUEUED",
                "SHARES"
            ],
            &rows,
            80
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_fit() {
        let t = table(
            &["ID", "STATE"],
            &[
                vec!["app-1".into(), "ready".into()],
                vec!["app-10".into(), "draining".into()],
            ],
            80,
        );
        assert_eq!(t, "ID      STATE\napp-1   ready\napp-10  draining\n");
        let long = table(&["A", "REASON"], &[vec!["x".into(), "y".repeat(200)]], 80);
        assert!(long.lines().all(|l| l.chars().count() <= 80));
    }

    #[test]
    fn admin_urls() {
        assert_eq!(
            AdminTarget::parse("http://127.0.0.1:9901/", None)
                .unwrap()
                .authority,
            "127.0.0.1:9901"
        );
        assert!(AdminTarget::parse("https://x:1", None).is_err());
        assert!(AdminTarget::parse("127.0.0.1:9901", None).is_err());
    }
}
