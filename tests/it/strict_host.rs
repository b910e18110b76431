//! Strict Host (RFC 9112 §3.2, RFC 9113 §8.3.1): a request without one on HTTP/1.1, with two,
//! with a value that is not `host[:port]`, or whose absolute-form target or HTTP/2
//! `:authority` disagrees with it gets 400 and never reaches a worker; `Host` is never
//! hop-by-hop; `X-Forwarded-Host` only ever carries a validated host.

use crate::common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Send `head` on a fresh connection and return the status of the answer.
async fn status_of(weir: SocketAddr, head: &str) -> u16 {
    let mut stream = TcpStream::connect(weir).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&seen);
    text.strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status for {head:?}: {text:?}"))
}

#[tokio::test]
async fn bad_hosts_are_400_and_never_reach_the_worker() {
    let (worker, seen) = recording_worker().await;
    let weir = start_simple("", "", &[worker]);
    let refused = [
        ("no Host on HTTP/1.1", "GET / HTTP/1.1\r\n\r\n"),
        (
            "two Host fields",
            "GET / HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\n\r\n",
        ),
        (
            "two Host fields, same value",
            "GET / HTTP/1.1\r\nhost: a.example\r\nhost: a.example\r\n\r\n",
        ),
        ("a path", "GET / HTTP/1.1\r\nhost: a.example/evil\r\n\r\n"),
        ("userinfo", "GET / HTTP/1.1\r\nhost: a@evil\r\n\r\n"),
        ("empty", "GET / HTTP/1.1\r\nhost: \r\n\r\n"),
        ("a space", "GET / HTTP/1.1\r\nhost: a example\r\n\r\n"),
        ("port 0", "GET / HTTP/1.1\r\nhost: a.example:0\r\n\r\n"),
        (
            "port too large",
            "GET / HTTP/1.1\r\nhost: a.example:65536\r\n\r\n",
        ),
        ("empty port", "GET / HTTP/1.1\r\nhost: a.example:\r\n\r\n"),
        ("bad port", "GET / HTTP/1.1\r\nhost: a.example:8x\r\n\r\n"),
        ("bare IPv6", "GET / HTTP/1.1\r\nhost: ::1\r\n\r\n"),
        ("bad IPv6", "GET / HTTP/1.1\r\nhost: [::g]:80\r\n\r\n"),
        ("query", "GET / HTTP/1.1\r\nhost: a.example?x\r\n\r\n"),
        (
            "absolute-form disagreeing with Host",
            "GET http://b.example/ HTTP/1.1\r\nhost: a.example\r\n\r\n",
        ),
        (
            "absolute-form without Host",
            "GET http://a.example/ HTTP/1.1\r\n\r\n",
        ),
        (
            "absolute-form with userinfo",
            "GET http://u@a.example/ HTTP/1.1\r\nhost: a.example\r\n\r\n",
        ),
    ];
    for (case, head) in refused {
        assert_eq!(status_of(weir.addr(), head).await, 400, "{case}");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "a refused request reached the worker: {:?}",
        seen.lock().unwrap()
    );
    // The worker is reachable: a good request gets through, and it is the only one it saw.
    assert_eq!(
        status_of(weir.addr(), "GET / HTTP/1.1\r\nhost: a.example\r\n\r\n").await,
        200
    );
    assert_eq!(seen.lock().unwrap().len(), 1, "{:?}", seen.lock().unwrap());
}

#[tokio::test]
async fn good_hosts_pass_and_host_is_never_hop_by_hop() {
    let (worker, seen) = recording_worker().await;
    let weir = start_simple("", "", &[worker]);
    let accepted = [
        (
            "reg-name",
            "GET / HTTP/1.1\r\nhost: A.Example\r\n\r\n",
            "A.Example",
        ),
        (
            "IPv4 and port",
            "GET / HTTP/1.1\r\nhost: 127.0.0.1:8080\r\n\r\n",
            "127.0.0.1:8080",
        ),
        (
            "IPv6 and port",
            "GET / HTTP/1.1\r\nhost: [::1]:65535\r\n\r\n",
            "[::1]:65535",
        ),
        (
            "Connection naming Host",
            "GET / HTTP/1.1\r\nhost: a.example\r\nconnection: host\r\n\r\n",
            "a.example",
        ),
        (
            "absolute-form agreeing with Host (case, default port)",
            "GET http://a.example:80/x HTTP/1.1\r\nhost: A.example\r\n\r\n",
            "a.example:80",
        ),
        ("HTTP/1.0 without Host", "GET / HTTP/1.0\r\n\r\n", ""),
    ];
    for (i, (case, head, host)) in accepted.into_iter().enumerate() {
        assert_eq!(status_of(weir.addr(), head).await, 200, "{case}");
        let request = seen.lock().unwrap()[i].clone();
        if host.is_empty() {
            // No authority at all: the empty Host HTTP/1.1 asks for (RFC 9112 §3.2).
            assert!(request.contains("\r\nhost: \r\n"), "{case}: {request}");
            assert!(!request.contains("x-forwarded-host"), "{case}: {request}");
        } else {
            assert!(
                request.contains(&format!("\r\nhost: {host}\r\n")),
                "{case}: {request}"
            );
            assert!(
                request.contains(&format!("\r\nx-forwarded-host: {host}\r\n")),
                "{case}: {request}"
            );
        }
        assert!(
            request.starts_with("GET / HTTP/1.1\r\n") || request.starts_with("GET /x HTTP/1.1\r\n"),
            "{case}: {request}"
        );
    }
}

#[tokio::test]
async fn a_trusted_proxy_cannot_pass_an_invalid_forwarded_host() {
    let (worker, seen) = recording_worker().await;
    let weir = start_simple("trusted_proxies = [\"127.0.0.0/8\"]", "", &[worker]);
    let head = "GET / HTTP/1.1\r\nhost: a.example\r\nx-forwarded-host: a.example/evil\r\n\r\n";
    assert_eq!(status_of(weir.addr(), head).await, 200);
    let request = seen.lock().unwrap()[0].clone();
    assert!(
        request.contains("\r\nx-forwarded-host: a.example\r\n"),
        "{request}"
    );
    assert!(!request.contains("evil"), "{request}");
}

#[tokio::test]
async fn an_http2_host_disagreeing_with_the_authority_is_400() {
    let (worker, seen) = recording_worker().await;
    let weir = start_simple("", "", &[worker]);
    let tcp = TcpStream::connect(weir.addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = |host: &str| {
        Request::get("http://a.example/")
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let refused = sender.send_request(request("b.example")).await.unwrap();
    assert_eq!(refused.status(), 400);
    assert!(seen.lock().unwrap().is_empty());
    let agreed = sender.send_request(request("a.example")).await.unwrap();
    assert_eq!(agreed.status(), 200);
    assert_eq!(seen.lock().unwrap().len(), 1);
}
