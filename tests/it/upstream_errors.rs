//! What clients see when workers fail: 502 on connect failure, 504 on a slow worker, and no
//! error at all when a pooled keep-alive connection went stale.

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weir::pool::WorkerState;

#[tokio::test]
async fn connect_failure_is_502_and_weir_keeps_serving() {
    // A worker that passed its TCP probe, then stopped listening.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let weir = start_simple("", "", &[addr]);
    let workers = weir.workers("app");
    wait_until("worker ready", || workers[0].state() == WorkerState::Ready).await;
    drop(listener);
    let mut client = Client::connect(weir.addr()).await;
    let reply = client.get("/").await;
    assert_eq!(reply.status, 502);
    assert!(reply.text().starts_with("weir:"), "{}", reply.text());
    // The same client connection stays usable, and the second failure ejects the worker.
    assert_eq!(client.get("/").await.status, 502);
    assert_eq!(workers[0].state(), WorkerState::Unhealthy);
    assert_eq!(workers[0].in_flight(), 0);
}

#[tokio::test]
async fn reset_before_response_is_502() {
    // Accepts, reads, and closes without a byte of response.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = read_head(&mut stream).await;
            });
        }
    });
    let weir = start_simple("", "", &[addr]);
    let reply = get(weir.addr(), "/").await;
    assert_eq!(reply.status, 502);
}

#[tokio::test]
async fn pool_with_no_live_worker_gives_503_after_the_queue_timeout() {
    let weir = start_weir(
        "",
        &format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\nqueue = {{ timeout = \"300ms\", retry_after = \"2s\" }}\n[pools.app]\nprovider = {{ kind = \"static\", addresses = [\"{}\"] }}\n",
            dead_addr()
        ),
    );
    let started = std::time::Instant::now();
    let reply = get(weir.addr(), "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.headers["retry-after"], "2");
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
}

#[tokio::test]
async fn slow_worker_is_504_after_response_timeout() {
    let worker = demo_with_delay("slow", std::time::Duration::from_secs(5)).await;
    let weir = start_weir(
        "",
        &format!(
            "[upstream]\nresponse_timeout = \"300ms\"\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\n[pools.app]\nprovider = {{ kind = \"static\", addresses = [\"{worker}\"] }}\n"
        ),
    );
    let started = std::time::Instant::now();
    let reply = get(weir.addr(), "/").await;
    assert_eq!(reply.status, 504);
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    let workers = weir.workers("app");
    wait_until("in-flight released", || workers[0].in_flight() == 0).await;
}

/// A worker that answers the first request on each connection, then closes the connection as
/// soon as the next request arrives: the race a worker's keep-alive timeout creates.
async fn one_shot_worker() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&connections);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                if read_head(&mut stream).await.is_none() {
                    return;
                }
                let body = format!("conn {n}");
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                // Next request: close without answering.
                let _ = read_head(&mut stream).await;
            });
        }
    });
    (addr, connections)
}

async fn read_head(stream: &mut TcpStream) -> Option<()> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    Some(())
}

#[tokio::test]
async fn stale_pooled_connection_is_retried_not_a_502() {
    let (worker, connections) = one_shot_worker().await;
    let weir = start_simple("threads = 1", "", &[worker]);
    let mut client = Client::connect(weir.addr()).await;
    for i in 1..=5 {
        let reply = client.get("/").await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
    }
    // Requests 2..5 each met a pooled connection that the worker dropped, and were replayed.
    assert!(connections.load(Ordering::SeqCst) >= 5);
}

#[tokio::test]
async fn unasked_protocol_switch_is_502() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut stream).await.is_some() {
                    let _ = stream
                        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n")
                        .await;
                    let _ = read_head(&mut stream).await;
                }
            });
        }
    });
    let weir = start_simple("", "", &[addr]);
    let reply = get(weir.addr(), "/").await;
    assert_eq!(reply.status, 502, "{}", reply.text());
}
