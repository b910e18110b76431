//! One probe of one worker, over the pool's transport (plain or TLS, HTTP/1.1 or HTTP/2): a
//! TCP connect, an HTTP GET, or a gRPC health check, each on a fresh connection.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, Request, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::pool::{ProbeKind, Transport, Worker};
use crate::upstream::{connect_for_probe, WorkerStream};

/// The gRPC health service's Check method (grpc/grpc doc/health-checking.md).
const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
/// `HealthCheckResponse.ServingStatus.SERVING`.
const SERVING: u64 = 1;

/// Probe `worker` once within `timeout`; the error says why it failed, for the log.
pub async fn probe(
    worker: &Worker,
    kind: &ProbeKind,
    transport: &Transport,
    timeout: Duration,
) -> Result<(), String> {
    match tokio::time::timeout(timeout, probe_inner(worker, kind, transport, timeout)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

async fn probe_inner(
    worker: &Worker,
    kind: &ProbeKind,
    transport: &Transport,
    timeout: Duration,
) -> Result<(), String> {
    if let ProbeKind::Tcp = kind {
        return TcpStream::connect(worker.addr)
            .await
            .map(drop)
            .map_err(|e| format!("connect: {e}"));
    }
    let stream = connect_for_probe(worker, transport, timeout)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let authority = worker.addr.to_string();
    let (method, path, body, content_type) = match kind {
        ProbeKind::Grpc { service } => (
            http::Method::POST,
            GRPC_HEALTH_CHECK.to_string(),
            health_check_request(service),
            Some("application/grpc"),
        ),
        ProbeKind::Http { path, .. } => (http::Method::GET, path.to_string(), Bytes::new(), None),
        ProbeKind::Tcp => return Ok(()),
    };
    let mut request = Request::builder()
        .method(method)
        .header(header::USER_AGENT, "weir-health-check");
    if let Some(content_type) = content_type {
        request = request
            .header(header::CONTENT_TYPE, content_type)
            .header(header::TE, "trailers");
    }
    let response = if transport.protocol.is_h2() {
        let uri = Uri::builder()
            .scheme(transport.scheme())
            .authority(authority.as_str())
            .path_and_query(path.as_str())
            .build()
            .map_err(|e| format!("request: {e}"))?;
        let request = request
            .uri(uri)
            .version(Version::HTTP_2)
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        send_h2(stream, request).await?
    } else {
        let request = request
            .uri(path.as_str())
            .header(header::HOST, authority.as_str())
            .header(header::CONNECTION, "close")
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        send_h1(stream, request).await?
    };
    let (head, body, trailers) = response;
    match kind {
        ProbeKind::Http { expect, .. } if expect.contains(head.status.as_u16()) => Ok(()),
        ProbeKind::Http { .. } => Err(format!("status {}", head.status.as_u16())),
        ProbeKind::Grpc { service } => grpc_verdict(service, &head, &body, trailers.as_ref()),
        ProbeKind::Tcp => Ok(()),
    }
}

type Answer = (http::response::Parts, Bytes, Option<HeaderMap>);

async fn send_h1(stream: WorkerStream, request: Request<Full<Bytes>>) -> Result<Answer, String> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let result = answer(sender.send_request(request).await).await;
    conn.abort();
    result
}

async fn send_h2(stream: WorkerStream, request: Request<Full<Bytes>>) -> Result<Answer, String> {
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let result = answer(sender.send_request(request).await).await;
    conn.abort();
    result
}

async fn answer(
    response: Result<http::Response<hyper::body::Incoming>, hyper::Error>,
) -> Result<Answer, String> {
    let response = response.map_err(|e| format!("request: {e}"))?;
    let (head, body) = response.into_parts();
    let collected = body
        .collect()
        .await
        .map_err(|e| format!("response body: {e}"))?;
    let trailers = collected.trailers().cloned();
    Ok((head, collected.to_bytes(), trailers))
}

/// A `HealthCheckRequest { service }` in one gRPC message frame (uncompressed).
fn health_check_request(service: &str) -> Bytes {
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.put_slice(&message);
    frame.freeze()
}

fn put_varint(buf: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        buf.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    buf.put_u8(value as u8);
}

fn get_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.first()?;
        buf.advance(1);
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

/// Whether a Check answer says SERVING: `grpc-status` 0 (in the trailers, or the head of a
/// trailers-only answer) and a `HealthCheckResponse` whose `status` (field 1) is 1.
fn grpc_verdict(
    service: &str,
    head: &http::response::Parts,
    body: &Bytes,
    trailers: Option<&HeaderMap>,
) -> Result<(), String> {
    if !head.status.is_success() {
        return Err(format!("status {}", head.status.as_u16()));
    }
    let status = trailers
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| head.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if status != "0" {
        let message = trailers
            .and_then(|t| t.get("grpc-message"))
            .or_else(|| head.headers.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        return Err(format!(
            "grpc-status {status:?} for service {service:?} {message}"
        ));
    }
    let serving = serving_status(body).ok_or("malformed HealthCheckResponse")?;
    if serving == SERVING {
        Ok(())
    } else {
        Err(format!(
            "service {service:?} is not SERVING (status {serving})"
        ))
    }
}

/// The `status` of the one `HealthCheckResponse` message in `body` (0, UNKNOWN, when absent).
fn serving_status(body: &Bytes) -> Option<u64> {
    let mut buf: &[u8] = body;
    if buf.len() < 5 || buf[0] != 0 {
        return None; // compressed or no frame
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    buf = buf.get(5..5 + len)?;
    let mut status = 0;
    while !buf.is_empty() {
        let key = get_varint(&mut buf)?;
        match key & 7 {
            0 => {
                let value = get_varint(&mut buf)?;
                if key >> 3 == 1 {
                    status = value;
                }
            }
            2 => {
                let len = usize::try_from(get_varint(&mut buf)?).ok()?;
                buf = buf.get(len..)?;
            }
            5 => buf = buf.get(4..)?,
            1 => buf = buf.get(8..)?,
            _ => return None,
        }
    }
    Some(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::WorkerState;

    #[tokio::test]
    async fn tcp_probe_fails_on_closed_port_and_passes_on_open() {
        let open = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let worker = Worker::detached("w", open.local_addr().unwrap(), WorkerState::Starting);
        let plain = Transport::plain();
        let timeout = Duration::from_secs(1);
        assert!(probe(&worker, &ProbeKind::Tcp, &plain, timeout)
            .await
            .is_ok());
        drop(open);
        assert!(probe(&worker, &ProbeKind::Tcp, &plain, timeout)
            .await
            .is_err());
    }

    #[test]
    fn health_messages_encode_and_decode() {
        assert_eq!(&health_check_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &health_check_request("app")[..],
            &[0, 0, 0, 0, 5, 0x0a, 3, b'a', b'p', b'p']
        );
        let serving = Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 1]);
        assert_eq!(serving_status(&serving), Some(1));
        let empty = Bytes::from_static(&[0, 0, 0, 0, 0]);
        assert_eq!(serving_status(&empty), Some(0));
        // An unknown field before it is skipped; a truncated frame is refused.
        let padded = Bytes::from_static(&[0, 0, 0, 0, 6, 0x12, 2, b'x', b'y', 0x08, 2]);
        assert_eq!(serving_status(&padded), Some(2));
        assert_eq!(
            serving_status(&Bytes::from_static(&[0, 0, 0, 0, 9, 8])),
            None
        );
    }
}
