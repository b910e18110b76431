//! `upstream.read_timeout`: a worker that stalls in its response body gives its slot back when
//! the limit passes; the client gets 504 when nothing of the response reached it yet, else its
//! connection is cut; either way it is counted as a 504 at stage `timeout`.

use crate::common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// The limit under test: short, so the test is quick, long enough to tell apart from "at once".
const READ_TIMEOUT: Duration = Duration::from_millis(300);

/// A worker that, by path, sends a head promising 100 bytes and then only 10 of them
/// (`/stall-body`) or none (`/stall-head`) and holds the connection open; anything else is
/// answered `ok`.
async fn stalling_worker() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut buf).await {
                            Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                            _ => return, // a health probe, or weir closed it
                        }
                        continue;
                    };
                    let head: Vec<u8> = seen.drain(..end + 4).collect();
                    let head = String::from_utf8_lossy(&head);
                    let answer: &[u8] = if head.starts_with("GET /stall-body ") {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789"
                    } else if head.starts_with("GET /stall-head ") {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                    };
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                    if head.starts_with("GET /stall") {
                        // Hold the connection, sending nothing more, until weir lets go.
                        let _ = stream.read(&mut buf).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// weir with a one-slot pool in front of the stalling worker, under route `route`.
fn one_slot_weir(route: &str, worker: SocketAddr) -> Weir {
    start_named(
        route,
        &format!("read_timeout = \"{}ms\"", READ_TIMEOUT.as_millis()),
        "worker_concurrency = 1",
        &[worker],
    )
}

#[tokio::test]
async fn a_worker_stalling_mid_body_frees_its_only_slot_and_the_client_is_cut() {
    let weir = one_slot_weir("stall-body", stalling_worker().await);
    let workers = weir.workers("app");
    let mut stalled = TcpStream::connect(weir.addr()).await.unwrap();
    stalled
        .write_all(b"GET /stall-body HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // The head and the ten bytes reach the client: the response has started.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.ends_with(b"0123456789") {
        let n = tokio::time::timeout(DEADLINE, stalled.read(&mut buf))
            .await
            .expect("the first bytes within the deadline")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let started = Instant::now();
    assert!(seen.starts_with(b"HTTP/1.1 200"));
    assert_eq!(
        workers[0].in_flight(),
        1,
        "the stalled response holds the slot"
    );
    // The only slot comes free at the read timeout: the next request gets it.
    let reply = get(weir.addr(), "/next").await;
    assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "ok"));
    assert!(
        started.elapsed() >= READ_TIMEOUT - Duration::from_millis(50),
        "freed after {:?}, before the read timeout",
        started.elapsed()
    );
    // The stalled client's connection is cut, without the 90 bytes that never came.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stalled.read_to_end(&mut rest))
        .await
        .expect("the stalled client's connection is closed");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    let route = ("route", "stall-body");
    let class = |c| [route, ("status_class", c)];
    assert_eq!(
        metric(&weir, "weir_requests_total", &class("5xx")).await,
        1.0
    );
    assert_eq!(
        metric(&weir, "weir_requests_total", &class("2xx")).await,
        1.0
    );
    assert_eq!(
        metric(
            &weir,
            "weir_request_errors_total",
            &[route, ("stage", "timeout")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_worker_stalling_before_its_first_body_byte_is_a_504_and_frees_its_slot() {
    let weir = one_slot_weir("stall-head", stalling_worker().await);
    let started = Instant::now();
    let raw = raw_exchange(
        weir.addr(),
        b"GET /stall-head HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 504"), "{raw}");
    assert!(
        raw.ends_with("weir: the worker stalled mid-response\n"),
        "{raw}"
    );
    assert!(started.elapsed() >= READ_TIMEOUT - Duration::from_millis(50));
    let workers = weir.workers("app");
    wait_until("slot released", || workers[0].in_flight() == 0).await;
    let reply = get(weir.addr(), "/next").await;
    assert_eq!(reply.status, 200);
    let route = ("route", "stall-head");
    assert_eq!(
        metric(
            &weir,
            "weir_request_errors_total",
            &[route, ("stage", "timeout")]
        )
        .await,
        1.0
    );
}
