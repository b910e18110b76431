//! The second channel: instances exchange what they know directly, at each other's
//! advertised admin addresses under the admin token (`POST /api/v1/cluster/peer`), so one
//! that is alive but cut off from Redis is heard, and not taken for gone. Each exchange goes
//! both ways in one round trip: the caller sends its news and gets the callee's. An instance
//! with Redis writes what it hears this way into Redis (`Registry::relay`), so every reader
//! of Redis hears a cut-off instance too, and one without Redis takes the leader's records
//! from a peer that read them.
//!
//! Nobody asks while Redis works for everyone: an instance asks only the peers whose reports
//! do not come through Redis (missing, stale, or relayed) and, while its own heartbeat fails,
//! every peer it knows.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use serde::{Deserialize, Serialize};

use super::{PoolMembers, Report};

/// Where an instance takes its peers' news.
pub const PEER_PATH: &str = "/api/v1/cluster/peer";
/// Largest news accepted, either way (reports of a large fleet with many workers).
pub const MAX_NEWS: usize = 4 * 1024 * 1024;

/// What one instance tells another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerNews {
    /// The sender's own report, made for this exchange.
    pub report: Report,
    /// The latest report the sender holds of every other instance it hears.
    #[serde(default)]
    pub reports: Vec<Report>,
    /// The leader's records per pool, when the sender read them from Redis lately (empty
    /// otherwise: stale records could list workers released since).
    #[serde(default)]
    pub records: BTreeMap<String, PoolMembers>,
}

/// Exchange news with the instance whose admin API is at `admin`, within `within`.
pub async fn exchange(
    admin: &str,
    token: Option<&str>,
    news: &PeerNews,
    within: Duration,
) -> Result<PeerNews, String> {
    let body = serde_json::to_vec(news).map_err(|e| e.to_string())?;
    let call = async {
        let stream = tokio::net::TcpStream::connect(admin)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        tokio::spawn(conn);
        let mut request = http::Request::post(PEER_PATH)
            .header(http::header::HOST, admin)
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), MAX_NEWS)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
            return Err(format!("status {status}: {text}"));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("unreadable answer: {e}"))
    };
    tokio::time::timeout(within, call)
        .await
        .map_err(|_| format!("no answer within {within:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn news_without_the_optional_parts_reads() {
        let text = r#"{"report":{"name":"a","admin":"10.0.0.1:9901","leader":false,"at_ms":5,"pools":{}}}"#;
        let news: PeerNews = serde_json::from_str(text).unwrap();
        assert_eq!(news.report.name, "a");
        assert!(news.reports.is_empty() && news.records.is_empty());
        assert!(!news.report.redis, "an old sender says nothing of Redis");
    }

    #[tokio::test]
    async fn an_unreachable_peer_is_an_error_within_the_time_given() {
        let news = PeerNews {
            report: serde_json::from_str(
                r#"{"name":"a","admin":"","leader":false,"at_ms":1,"pools":{}}"#,
            )
            .unwrap(),
            reports: Vec::new(),
            records: BTreeMap::new(),
        };
        // A listener that never answers: the exchange gives up in time.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let started = std::time::Instant::now();
        let result = exchange(&addr, None, &news, Duration::from_millis(200)).await;
        assert!(result.is_err(), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(silent);
    }
}
