//! Client-side protection: malformed input, oversized heads, smuggling shapes, slow clients,
//! idle connections and the connection cap. Nothing a client sends stops weir serving others.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn still_serves(weir: &Weir) {
    assert_eq!(get(weir.addr(), "/").await.status, 200);
}

#[tokio::test]
async fn garbage_bytes_get_400_or_close() {
    let worker = demo("w1").await;
    let weir = start_simple("", "", &[worker]);
    let inputs: [&[u8]; 6] = [
        b"\x00\x01\x02\x03garbage\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n folded: header\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ];
    for input in inputs {
        let out = raw_exchange(weir.addr(), input).await;
        assert!(
            out.is_empty() || out.starts_with("HTTP/1.1 400"),
            "{input:?} -> {out}"
        );
        still_serves(&weir).await;
    }
}

#[tokio::test]
async fn oversized_headers_get_431() {
    let worker = demo("w1").await;
    let weir = start_simple("max_header_bytes = 16384", "", &[worker]);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(32 * 1024)
    );
    let out = raw_exchange(weir.addr(), big.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let out = raw_exchange(
        weir.addr(),
        format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    still_serves(&weir).await;
}

#[tokio::test]
async fn duplicate_differing_content_length_is_400() {
    let worker = demo("w1").await;
    let weir = start_simple("", "", &[worker]);
    let out = raw_exchange(
        weir.addr(),
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let out = raw_exchange(
        weir.addr(),
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    still_serves(&weir).await;
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_framed_by_chunks_then_closed() {
    let worker = demo("w1").await;
    let weir = start_simple("", "", &[worker]);
    // A classic CL.TE smuggling shape. weir frames the body by Transfer-Encoding alone and then
    // closes the connection (RFC 9112 §6.1), so the trailing bytes are never read as a request.
    let out = raw_exchange(
        weir.addr(),
        b"POST /headers HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\r\nconnection: close\r\n"), "{out}");
    assert_eq!(
        out.matches("x-served-by").count(),
        1,
        "exactly one response: {out}"
    );
    assert!(!out.contains("/smuggled"), "{out}");
    // The worker saw one unambiguous framing: never both headers.
    assert!(!out.contains("content-length: 30"), "{out}");
    still_serves(&weir).await;
}

#[tokio::test]
async fn slow_header_client_is_cut_off() {
    let worker = demo("w1").await;
    let weir = start_simple("header_read_timeout = \"300ms\"", "", &[worker]);
    let mut stream = TcpStream::connect(weir.addr()).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out))
        .await
        .expect("weir closes a slowloris connection")
        .ok();
    assert!(started.elapsed() >= Duration::from_millis(250));
    let out = String::from_utf8_lossy(&out);
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 408"), "{out}");
    still_serves(&weir).await;
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let worker = demo("w1").await;
    let weir = start_simple("idle_timeout = \"400ms\"", "", &[worker]);
    let mut stream = TcpStream::connect(weir.addr()).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let idle_since = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest))
        .await
        .expect("idle connection closed")
        .ok();
    assert!(idle_since.elapsed() >= Duration::from_millis(350));
}

#[tokio::test]
async fn connection_cap_holds_extra_clients_while_every_connection_is_busy() {
    let worker = demo("w1").await;
    let weir = start_simple("max_connections = 2\nthreads = 1", "", &[worker]);
    let addr = weir.addr();
    // Two connections busy with slow requests hold both slots.
    let busy: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(addr, "/?delay=800ms").await }))
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let third = tokio::spawn(async move { get(addr, "/").await });
    // While both are busy, the third is not served.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished());
    for request in busy {
        assert_eq!(request.await.unwrap().status, 200);
    }
    let reply = tokio::time::timeout(DEADLINE, third)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn at_the_cap_the_longest_idle_connection_gives_way() {
    let worker = demo("w1").await;
    let weir = start_simple("max_connections = 2\nthreads = 1", "", &[worker]);
    let idle_after_one_request = |addr| async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        stream
    };
    let mut oldest = idle_after_one_request(weir.addr()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut newer = idle_after_one_request(weir.addr()).await;
    // A third client is served at once: the longest idle connection made room.
    let reply = tokio::time::timeout(Duration::from_secs(2), get(weir.addr(), "/"))
        .await
        .expect("served without waiting for an idle timeout");
    assert_eq!(reply.status, 200);
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(DEADLINE, oldest.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the oldest idle was closed"
    );
    // The newer one is still open and still serves.
    newer
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let n = tokio::time::timeout(DEADLINE, newer.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn many_bad_clients_at_once_do_not_disturb_good_ones() {
    let worker = demo("w1").await;
    let weir = start_simple("header_read_timeout = \"2s\"", "", &[worker]);
    let mut bad = Vec::new();
    for i in 0..50u8 {
        let addr = weir.addr();
        bad.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let _ = s.write_all(&[i, 0xff, b'\r', b'\n', i]).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(s);
        }));
    }
    let mut client = Client::connect(weir.addr()).await;
    for _ in 0..20 {
        assert_eq!(client.get("/").await.status, 200);
    }
    for b in bad {
        b.await.unwrap();
    }
}
