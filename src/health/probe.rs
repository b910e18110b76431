//! One probe of one worker: a TCP connect, or an HTTP/1.1 GET on a fresh connection.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::pool::ProbeKind;

/// Probe `addr` once within `timeout`; the error says why it failed, for the log.
pub async fn probe(addr: SocketAddr, kind: &ProbeKind, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, probe_inner(addr, kind)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn probe_inner(addr: SocketAddr, kind: &ProbeKind) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (path, expect) = match kind {
        ProbeKind::Tcp => return Ok(()),
        ProbeKind::Http { path, expect } => (path, expect),
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let request = Request::get(path.as_str())
        .header(header::HOST, addr.to_string())
        .header(header::USER_AGENT, "weir-health-check")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let result = match sender.send_request(request).await {
        Ok(response) if expect.contains(response.status().as_u16()) => Ok(()),
        Ok(response) => Err(format!("status {}", response.status().as_u16())),
        Err(e) => Err(format!("request: {e}")),
    };
    conn.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tcp_probe_fails_on_closed_port_and_passes_on_open() {
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = open.local_addr().unwrap();
        assert!(probe(addr, &ProbeKind::Tcp, Duration::from_secs(1))
            .await
            .is_ok());
        drop(open);
        assert!(probe(addr, &ProbeKind::Tcp, Duration::from_secs(1))
            .await
            .is_err());
    }
}
