//! What the access log and the metrics record when a request does not end normally: 499 for a
//! client that goes away before its response (while the worker works, or mid-upload), and a
//! 502 with its stage for a worker that breaks off mid-body, whatever status its head had.

use crate::common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// weir with its access log at `log`, one route named `route` to `worker`.
fn logged_weir(route: &str, worker: SocketAddr, log: &Path) -> Weir {
    let _ = std::fs::remove_file(log);
    start_weir(
        "",
        &format!(
            "[access_log]\nenabled = true\npath = \"{}\"\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nname = \"{route}\"\npool = \"app\"\n[pools.app]\nprovider = {{ kind = \"static\", addresses = [\"{worker}\"] }}\n",
            log.display()
        ),
    )
}

/// The access log's lines, parsed.
fn entries(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Wait for the access log's `n`th line and return the lines.
async fn wait_for_entries(log: &Path, n: usize) -> Vec<serde_json::Value> {
    wait_until("access log lines", || entries(log).len() >= n).await;
    entries(log)
}

fn log_path(name: &str) -> PathBuf {
    temp_path(&format!("{name}.log"))
}

#[tokio::test]
async fn a_client_that_leaves_while_the_worker_works_is_499() {
    // The worker would answer long after the test's deadline: only weir noticing the client
    // leave can produce the record in time.
    let worker = demo("slow").await;
    let log = log_path("gone-wait");
    let weir = logged_weir("gone-wait", worker, &log);
    let workers = weir.workers("app");
    let mut client = TcpStream::connect(weir.addr()).await.unwrap();
    client
        .write_all(b"GET /?delay=60s HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    wait_until("the worker has the request", || workers[0].in_flight() == 1).await;
    drop(client);
    let lines = wait_for_entries(&log, 1).await;
    assert_eq!(lines[0]["status"], 499, "{}", lines[0]);
    assert_eq!(lines[0]["error"], "client", "{}", lines[0]);
    assert_eq!(lines[0]["worker"], "", "no worker answered: {}", lines[0]);
    wait_until("slot released", || workers[0].in_flight() == 0).await;
    let route = ("route", "gone-wait");
    assert_eq!(
        metric(
            &weir,
            "weir_requests_total",
            &[route, ("status_class", "4xx")]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &weir,
            "weir_requests_total",
            &[route, ("status_class", "5xx")]
        )
        .await,
        0.0
    );
    assert_eq!(
        metric(
            &weir,
            "weir_request_errors_total",
            &[route, ("stage", "client")]
        )
        .await,
        1.0
    );
    let _ = std::fs::remove_file(&log);
}

#[tokio::test]
async fn a_client_that_leaves_mid_upload_is_499() {
    let worker = demo("w").await;
    let log = log_path("gone-upload");
    let weir = logged_weir("gone-upload", worker, &log);
    // A streamed POST and a PUT small enough to be read into memory first (so it could be
    // retried): both break off after 10 of their 1000 bytes.
    for (i, method) in ["POST", "PUT"].into_iter().enumerate() {
        let mut client = TcpStream::connect(weir.addr()).await.unwrap();
        let head =
            format!("{method} /?delay=60s HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n");
        client.write_all(head.as_bytes()).await.unwrap();
        client.write_all(b"0123456789").await.unwrap();
        // Whatever weir still writes, the record is what counts.
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, client.read_to_end(&mut rest)).await;
        let lines = wait_for_entries(&log, i + 1).await;
        let line = &lines[i];
        assert_eq!(line["method"], method, "{line}");
        assert_eq!(line["status"], 499, "{line}");
        assert_eq!(line["error"], "client", "{line}");
    }
    let route = ("route", "gone-upload");
    assert_eq!(
        metric(
            &weir,
            "weir_request_errors_total",
            &[route, ("stage", "client")]
        )
        .await,
        2.0
    );
    assert_eq!(
        metric(
            &weir,
            "weir_requests_total",
            &[route, ("status_class", "4xx")]
        )
        .await,
        2.0
    );
    let workers = weir.workers("app");
    wait_until("slots released", || workers[0].in_flight() == 0).await;
    let _ = std::fs::remove_file(&log);
}

#[tokio::test]
async fn a_worker_breaking_off_mid_body_counts_as_a_502_and_says_where() {
    // Answers every request with a head promising 100 bytes, sends 10, and closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let worker = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                        _ => return, // a health probe
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b")
                    .await;
            });
        }
    });
    let log = log_path("mid-body");
    let weir = logged_weir("mid-body", worker, &log);
    let raw = raw_exchange(
        weir.addr(),
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    // weir saw the close before it passed the head on (a 502), or after (the client's
    // connection is cut after the bytes that came); never a whole 200.
    assert!(
        raw.starts_with("HTTP/1.1 502") || raw.is_empty() || raw.ends_with("only ten b"),
        "{raw}"
    );
    let lines = wait_for_entries(&log, 1).await;
    assert_eq!(lines[0]["status"], 502, "{}", lines[0]);
    assert_eq!(lines[0]["error"], "worker_mid_response", "{}", lines[0]);
    let route = ("route", "mid-body");
    assert_eq!(
        metric(
            &weir,
            "weir_request_errors_total",
            &[route, ("stage", "worker_mid_response")]
        )
        .await,
        1.0
    );
    for (class, count) in [("2xx", 0.0), ("5xx", 1.0)] {
        assert_eq!(
            metric(
                &weir,
                "weir_requests_total",
                &[route, ("status_class", class)]
            )
            .await,
            count,
            "{class}"
        );
    }
    let _ = std::fs::remove_file(&log);
}
