//! As strict as nginx where it matters: header names with `_` never reach a worker (unless
//! `server.underscores_in_headers`), the path is normalised before routing and the worker gets
//! the normalised one (a path climbing above the root is 400), `Expect` in an HTTP/1.0
//! request is ignored, and a worker's response with a transfer coding other than chunked is
//! 502, never raw coded bytes.

use crate::common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The status of the first answer on `stream` after writing `raw`, and all that came.
async fn exchange(weir: SocketAddr, raw: &str) -> (u16, String) {
    let text = raw_exchange(weir, raw.as_bytes()).await;
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_default();
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_with_underscores_are_dropped_unless_allowed() {
    let (worker, seen) = recording_worker().await;
    let weir = start_simple("", "", &[worker]);
    let (status, _) = exchange(
        weir.addr(),
        "GET /u HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 6.6.6.6\r\nX-Fine: 1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let head = seen.lock().unwrap().pop().expect("forwarded");
    let lower = head.to_ascii_lowercase();
    assert!(!lower.contains("x_forwarded_for"), "{head}");
    assert!(!lower.contains("6.6.6.6"), "{head}");
    assert!(lower.contains("x-fine: 1"), "{head}");
    assert!(lower.contains("x-forwarded-for: 127.0.0.1"), "{head}");

    let allowing = start_simple("underscores_in_headers = true\n", "", &[worker]);
    exchange(
        allowing.addr(),
        "GET /u HTTP/1.1\r\nHost: x\r\nX_Custom: 1\r\nConnection: close\r\n\r\n",
    )
    .await;
    let head = seen.lock().unwrap().pop().expect("forwarded");
    assert!(head.to_ascii_lowercase().contains("x_custom: 1"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_is_normalised_before_routing_and_forwarded_normalised() {
    let (public, public_seen) = recording_worker().await;
    let (admin, admin_seen) = recording_worker().await;
    let weir = start_weir(
        "",
        &format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n\
             [[routes]]\npath_prefix = \"/public\"\npool = \"public\"\n\
             [[routes]]\npath_prefix = \"/admin\"\npool = \"admin\"\n\
             [pools.public]\nprovider = {{ kind = \"static\", addresses = [\"{public}\"] }}\n\
             [pools.admin]\nprovider = {{ kind = \"static\", addresses = [\"{admin}\"] }}\n"
        ),
    );
    let close = "Host: x\r\nConnection: close\r\n\r\n";
    let (status, _) = exchange(
        weir.addr(),
        &format!("GET /public/../admin/users?q=1 HTTP/1.1\r\n{close}"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(public_seen.lock().unwrap().is_empty(), "routed by /public");
    let head = admin_seen.lock().unwrap().pop().expect("routed to admin");
    assert!(
        head.starts_with("GET /admin/users?q=1 HTTP/1.1\r\n"),
        "{head}"
    );

    let (status, _) = exchange(
        weir.addr(),
        &format!("GET //public/./a//b/%2e%2e/c HTTP/1.1\r\n{close}"),
    )
    .await;
    assert_eq!(status, 200);
    let head = public_seen.lock().unwrap().pop().expect("routed to public");
    assert!(head.starts_with("GET /public/a/c HTTP/1.1\r\n"), "{head}");

    for climbing in ["/../admin", "/public/../../admin", "/%2e%2e/admin"] {
        let (status, _) =
            exchange(weir.addr(), &format!("GET {climbing} HTTP/1.1\r\n{close}")).await;
        assert_eq!(status, 400, "{climbing}");
    }
    assert!(public_seen.lock().unwrap().is_empty());
    assert!(admin_seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_in_an_http_1_0_request_gets_no_100() {
    let worker = demo("w").await;
    let weir = start_simple("", "", &[worker]);
    let (status, text) = exchange(
        weir.addr(),
        "POST /echo HTTP/1.0\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    // HTTP/1.1 still gets its 100.
    let mut stream = TcpStream::connect(weir.addr()).await.unwrap();
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 100 Continue\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_transfer_coding_other_than_chunked_is_502() {
    let worker = answering_worker(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\n\x1f\x8b\x08\x00\x00\r\n0\r\n\r\n",
    )
    .await;
    let weir = start_simple("", "", &[worker]);
    let (status, text) = exchange(
        weir.addr(),
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("transfer coding"), "{text}");
}
