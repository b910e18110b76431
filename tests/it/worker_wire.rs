//! weir's HTTP/1.1 client against scripted workers speaking raw bytes: what it sends, which
//! responses it accepts (1xx, chunked with trailers, close-delimited, HEAD), which it refuses
//! with a 502, and when it reuses a connection.

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the scripted worker does with a request: bytes to write, then whether to close.
type Script = Arc<dyn Fn(&str) -> (Vec<u8>, bool) + Send + Sync>;

struct Scripted {
    addr: SocketAddr,
    /// Connections that carried at least one request.
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<String>>>,
}

/// A worker that reads each request (head plus a Content-Length body) and answers by `script`.
async fn scripted(script: impl Fn(&str) -> (Vec<u8>, bool) + Send + Sync + 'static) -> Scripted {
    let script: Script = Arc::new(script);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (count, seen) = (Arc::clone(&connections), Arc::clone(&requests));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (script, seen, count) =
                (Arc::clone(&script), Arc::clone(&seen), Arc::clone(&count));
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut first = true;
                while let Some(request) = read_request(&mut stream, &mut pending).await {
                    // Health probes connect without a request; only request-carrying
                    // connections count.
                    if std::mem::take(&mut first) {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    seen.lock().unwrap().push(request.clone());
                    let (reply, close) = script(&request);
                    if stream.write_all(&reply).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    Scripted {
        addr,
        connections,
        requests,
    }
}

fn reply(text: &str) -> (Vec<u8>, bool) {
    (text.as_bytes().to_vec(), false)
}

#[tokio::test]
async fn keep_alive_connection_is_reused_and_the_request_is_rewritten() {
    let worker = scripted(|_| reply("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")).await;
    let weir = start_simple("threads = 1", "", &[worker.addr]);
    let mut client = Client::connect(weir.addr()).await;
    for _ in 0..5 {
        let reply = client.get("/path?q=1").await;
        assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "ok"));
    }
    let post = http::Request::post("/submit")
        .header("host", "test.local")
        .header("connection", "keep-alive")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"abc")))
        .unwrap();
    assert_eq!(client.send(post).await.status, 200);
    assert_eq!(worker.connections.load(Ordering::SeqCst), 1);
    let requests = worker.requests.lock().unwrap().clone();
    assert!(
        requests[0].starts_with("GET /path?q=1 HTTP/1.1\r\n"),
        "{}",
        requests[0]
    );
    assert!(requests[0].contains("host: test.local\r\n"));
    assert!(requests[0].contains("x-forwarded-for: 127.0.0.1\r\n"));
    assert!(!requests[0].contains("content-length"), "{}", requests[0]);
    let last = requests.last().unwrap();
    assert!(last.starts_with("POST /submit HTTP/1.1\r\n"), "{last}");
    assert!(last.contains("content-length: 3\r\n"), "{last}");
    assert!(!last.contains("connection:"), "{last}");
    assert!(last.ends_with("\r\n\r\nabc"), "{last}");
}

#[tokio::test]
async fn informational_responses_are_skipped_and_chunked_bodies_decoded() {
    let worker = scripted(|_| {
        reply(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
             HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-app: 1\r\n\r\n\
             5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 9\r\n\r\n",
        )
    })
    .await;
    let weir = start_simple("threads = 1", "", &[worker.addr]);
    let mut client = Client::connect(weir.addr()).await;
    for _ in 0..2 {
        let reply = client.get("/").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "hello world");
        assert_eq!(reply.headers["x-app"], "1");
        assert!(
            !reply.headers.contains_key("transfer-encoding")
                || reply.headers["transfer-encoding"] == "chunked"
        );
    }
    assert_eq!(worker.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn close_delimited_body_is_passed_whole_and_the_connection_not_reused() {
    let worker = scripted(|_| (b"HTTP/1.1 200 OK\r\n\r\nall of it".to_vec(), true)).await;
    let weir = start_simple("threads = 1", "", &[worker.addr]);
    let mut client = Client::connect(weir.addr()).await;
    for _ in 0..3 {
        let reply = client.get("/").await;
        assert_eq!(reply.text(), "all of it");
    }
    assert_eq!(worker.connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn head_response_has_no_body_and_keeps_the_connection() {
    let worker = scripted(|_| reply("HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n")).await;
    let weir = start_simple("threads = 1", "", &[worker.addr]);
    let mut client = Client::connect(weir.addr()).await;
    for _ in 0..3 {
        let head = http::Request::head("/")
            .header("host", "test.local")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let reply = client.send(head).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.headers["content-length"], "1234");
        assert!(reply.body.is_empty());
    }
    assert_eq!(worker.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn malformed_responses_are_502_and_weir_keeps_serving() {
    let cases: [(&str, &str); 4] = [
        ("garbage", "SSH-2.0-OpenSSH_9.2\r\n\r\n"),
        (
            "bad length",
            "HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nhello",
        ),
        ("huge head", ""),
        (
            "bad status",
            "HTTP/1.1 2000 What\r\ncontent-length: 0\r\n\r\n",
        ),
    ];
    for (name, text) in cases {
        let text = if name == "huge head" {
            format!(
                "HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n",
                "a".repeat(70 * 1024)
            )
        } else {
            text.to_string()
        };
        let worker = scripted(move |_| reply(&text)).await;
        let weir = start_simple("threads = 1", "", &[worker.addr]);
        let mut client = Client::connect(weir.addr()).await;
        let reply = client.get("/").await;
        assert_eq!(reply.status, 502, "{name}: {}", reply.text());
        assert!(
            reply.text().starts_with("weir: the worker"),
            "{name}: {}",
            reply.text()
        );
        // The client's connection is still good.
        assert_eq!(client.get("/").await.status, 502, "{name}");
    }
}

#[tokio::test]
async fn worker_closing_mid_body_aborts_the_client_response() {
    let worker = scripted(|_| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b".to_vec(),
            true,
        )
    })
    .await;
    let weir = start_simple("threads = 1", "", &[worker.addr]);
    let started = std::time::Instant::now();
    let raw = raw_exchange(weir.addr(), CLOSE_GET).await;
    // The client gets a 502 when weir saw the close before passing the head on; otherwise its
    // connection is closed at once (not left waiting for 90 more bytes), with at most the head
    // and the ten bytes that came.
    assert!(
        started.elapsed() < DEADLINE / 2,
        "the client was left hanging"
    );
    let cut_or_502 = |raw: &str| {
        raw.starts_with("HTTP/1.1 502") || raw.is_empty() || raw.ends_with("only ten b")
    };
    assert!(cut_or_502(&raw), "{raw}");
    let workers = weir.workers("app");
    wait_until("in-flight released", || workers[0].in_flight() == 0).await;
    // weir keeps serving (the worker misbehaves the same way again).
    let again = raw_exchange(weir.addr(), CLOSE_GET).await;
    assert!(cut_or_502(&again), "{again}");
}

#[tokio::test]
async fn bytes_after_a_101_reach_the_client() {
    let worker = scripted(|_| {
        (
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\nhello from the worker"
                .to_vec(),
            false,
        )
    })
    .await;
    let weir = start_simple("threads = 1", "", &[worker.addr]);
    let mut stream = TcpStream::connect(weir.addr()).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nhost: test.local\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n",
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("hello from the worker") {
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .expect("bytes within the deadline")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(worker.requests.lock().unwrap()[0].contains("upgrade: echo\r\n"));
}

/// Read from `stream` until `done` says the bytes so far are complete (or the peer closes).
async fn read_until(stream: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while !done(&seen) {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    seen
}

fn ends_chunked_body(bytes: &[u8]) -> bool {
    let Some(head_end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let body = &bytes[head_end + 4..];
    body.windows(5)
        .position(|w| w == b"\r\n0\r\n")
        .is_some_and(|last| {
            body[last + 5..].windows(4).any(|w| w == b"\r\n\r\n")
                || body[last + 5..].starts_with(b"\r\n")
        })
}

#[tokio::test]
async fn chunked_request_body_goes_to_the_worker_chunked_with_its_trailers() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                let request = read_until(&mut stream, ends_chunked_body).await;
                if request.is_empty() {
                    return; // a health probe
                }
                let _ = seen_tx.send(String::from_utf8_lossy(&request).into_owned());
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                let _ = read_until(&mut stream, |_| false).await;
            });
        }
    });
    let weir = start_simple("threads = 1", "", &[addr]);
    let raw = raw_exchange(
        weir.addr(),
        b"POST /up HTTP/1.1\r\nhost: test.local\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let request = tokio::time::timeout(DEADLINE, seen_rx.recv())
        .await
        .expect("the worker got the request")
        .unwrap();
    assert!(request.starts_with("POST /up HTTP/1.1\r\n"), "{request}");
    assert!(
        request.contains("transfer-encoding: chunked\r\n"),
        "{request}"
    );
    assert!(!request.contains("content-length"), "{request}");
    let body = &request[request.find("\r\n\r\n").unwrap() + 4..];
    let data: String = body
        .split("\r\n")
        .collect::<Vec<_>>()
        .chunks(2)
        .take_while(|pair| pair[0] != "0")
        .map(|pair| pair.get(1).copied().unwrap_or_default())
        .collect();
    assert_eq!(data, "hello world", "{body:?}");
    assert!(
        body.contains("0\r\nx-sum: 11\r\n\r\n"),
        "trailers lost: {body:?}"
    );
}

/// A worker that answers 413 as soon as a request head is in, then reads and drops the declared
/// body and serves the next request on the connection the same way.
async fn early_413_worker() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let head_end = loop {
                        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end + 4;
                        }
                        match stream.read(&mut buf).await {
                            Ok(n) if n > 0 => pending.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    };
                    let head = String::from_utf8_lossy(&pending[..head_end]).into_owned();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    let answer = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 4\r\n\r\nbig!";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                    pending.drain(..head_end);
                    while pending.len() < length {
                        match stream.read(&mut buf).await {
                            Ok(n) if n > 0 => pending.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    pending.drain(..length);
                }
            });
        }
    });
    addr
}

/// POST a 16 MiB body (larger than the retry buffer, so it is streamed, and than the socket
/// buffers) while reading the answer until `marker`. Returns the answer once the upload has
/// gone on to its end: the connection must not be closed under the client with its request
/// unread (a reset that can destroy the response before the client reads it).
async fn upload_and_read_answer(weir: SocketAddr, marker: &str) -> String {
    const LEN: usize = 16 * 1024 * 1024;
    let client = TcpStream::connect(weir).await.unwrap();
    let (mut read_half, mut write_half) = client.into_split();
    write_half
        .write_all(
            format!("POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: {LEN}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    // The write half is handed back, not dropped: dropping it would half-close the
    // connection, which weir (like nginx) takes for a client that left.
    let upload = tokio::spawn(async move {
        let chunk = vec![b'u'; 64 * 1024];
        for _ in 0..LEN / chunk.len() {
            if write_half.write_all(&chunk).await.is_err() {
                return (write_half, false);
            }
        }
        (write_half, true)
    });
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains(marker) {
        let n = tokio::time::timeout(DEADLINE, read_half.read(&mut buf))
            .await
            .expect("the answer within the deadline")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let (_write_half, completed) = tokio::time::timeout(DEADLINE, upload)
        .await
        .expect("the upload finishes")
        .unwrap();
    assert!(completed, "the connection was closed under the upload");
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn an_answer_before_the_upload_ends_reaches_the_client() {
    let weir = start_simple("threads = 1", "", &[early_413_worker().await]);
    for _ in 0..3 {
        // The rest of the upload reaches the worker.
        let answer = upload_and_read_answer(weir.addr(), "big!").await;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }
    let workers = weir.workers("app");
    wait_until("in-flight released", || workers[0].in_flight() == 0).await;
}

#[tokio::test]
async fn an_error_during_an_upload_reaches_the_client() {
    // Reads a request head, then neither reads the body nor answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = read_until(&mut stream, |b| b.windows(4).any(|w| w == b"\r\n\r\n")).await;
                tokio::time::sleep(DEADLINE).await;
            });
        }
    });
    let weir = start_weir(
        "",
        &format!(
            "[upstream]\nresponse_timeout = \"300ms\"\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\n[pools.app]\nprovider = {{ kind = \"static\", addresses = [\"{addr}\"] }}\n"
        ),
    );
    // The rest of the body is read and dropped, not left to a reset.
    let answer = upload_and_read_answer(weir.addr(), "in time").await;
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer}");
}

#[tokio::test]
async fn a_refusal_before_the_upload_is_sent_reaches_the_client() {
    // A worker that passed its probe, then stopped listening: the upload never leaves weir.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let weir = start_simple("threads = 1", "", &[addr]);
    let workers = weir.workers("app");
    wait_until("worker ready", || {
        workers[0].state() == weir::pool::WorkerState::Ready
    })
    .await;
    drop(listener);
    let answer = upload_and_read_answer(weir.addr(), "connect to a worker").await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    // Refused before it was even routed.
    let weir = start_weir(
        "",
        &format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nhost = \"only.test\"\npool = \"app\"\n[pools.app]\nprovider = {{ kind = \"static\", addresses = [\"{addr}\"] }}\n"
        ),
    );
    let answer = upload_and_read_answer(weir.addr(), "no route").await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}

/// The requests of route `route` in `weir_requests_total` by status class, and its failures at
/// `stage`.
async fn counted(weir: &Weir, route: &str, stage: &str) -> (f64, f64, f64) {
    let route = ("route", route);
    let class = |c| [route, ("status_class", c)];
    (
        metric(weir, "weir_requests_total", &class("2xx")).await,
        metric(weir, "weir_requests_total", &class("5xx")).await,
        metric(
            weir,
            "weir_request_errors_total",
            &[route, ("stage", stage)],
        )
        .await,
    )
}

const CLOSE_GET: &[u8] = b"GET / HTTP/1.1\r\nhost: test.local\r\nconnection: close\r\n\r\n";

#[tokio::test]
async fn a_malformed_first_chunk_is_a_502_never_an_empty_2xx() {
    let worker = scripted(|_| {
        reply("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
    })
    .await;
    let weir = start_named("bad-first-chunk", "", "", &[worker.addr]);
    let raw = raw_exchange(weir.addr(), CLOSE_GET).await;
    assert!(raw.starts_with("HTTP/1.1 502"), "{raw:?}");
    assert!(
        raw.ends_with("weir: the worker sent a malformed chunked body\n"),
        "{raw:?}"
    );
    let (ok, failed, stage) = counted(&weir, "bad-first-chunk", "worker_mid_response").await;
    assert_eq!((ok, failed, stage), (0.0, 1.0, 1.0));
}

/// A worker that answers each request with `head`, then resets the connection (SO_LINGER 0).
async fn head_then_reset(head: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut pending = Vec::new();
                if read_request(&mut stream, &mut pending).await.is_none() {
                    return; // a health probe
                }
                let _ = stream.write_all(head.as_bytes()).await;
                // Closing with SO_LINGER 0 sends a reset instead of a FIN (it cannot block).
                let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_worker_resetting_right_after_its_head_is_a_502() {
    let worker = head_then_reset("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n").await;
    let weir = start_named("reset-after-head", "", "", &[worker]);
    let raw = raw_exchange(weir.addr(), CLOSE_GET).await;
    assert!(raw.starts_with("HTTP/1.1 502"), "{raw:?}");
    assert!(raw.contains("weir: the worker"), "{raw:?}");
    let (ok, failed, stage) = counted(&weir, "reset-after-head", "worker_mid_response").await;
    assert_eq!((ok, failed, stage), (0.0, 1.0, 1.0));
    let workers = weir.workers("app");
    wait_until("in-flight released", || workers[0].in_flight() == 0).await;
}

#[tokio::test]
async fn a_malformed_chunk_after_bytes_reached_the_client_cuts_it_and_counts_a_502() {
    // The first chunk; once the client has it, a malformed one.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client_has_it = Arc::new(tokio::sync::Notify::new());
    let notified = Arc::clone(&client_has_it);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut pending = Vec::new();
            if read_request(&mut stream, &mut pending).await.is_none() {
                continue; // a health probe
            }
            let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n";
            stream.write_all(head).await.unwrap();
            notified.notified().await;
            let _ = stream.write_all(b"zz\r\n").await;
            let _ = read_request(&mut stream, &mut pending).await;
        }
    });
    let weir = start_named("bad-later-chunk", "", "", &[addr]);
    let mut client = TcpStream::connect(weir.addr()).await.unwrap();
    client.write_all(CLOSE_GET).await.unwrap();
    let seen = read_until(&mut client, |b| b.windows(5).any(|w| w == b"hello")).await;
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    client_has_it.notify_one();
    // The connection is cut: closed without the last chunk.
    let rest = read_until(&mut client, |_| false).await;
    let all = format!("{text}{}", String::from_utf8_lossy(&rest));
    assert!(!all.contains("\r\n0\r\n\r\n"), "{all:?}");
    let (ok, failed, stage) = counted(&weir, "bad-later-chunk", "worker_mid_response").await;
    assert_eq!((ok, failed, stage), (0.0, 1.0, 1.0));
}
