//! Every phase of a request is bounded on the client side: a client that stops reading its
//! response (HTTP/1.1 or an HTTP/2 window held at zero), one that declares a body and stops
//! sending it, and an idle tunnel all let go of their worker slots once their limit passes,
//! while a good client beside them keeps being served.

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Short limits so the test sees them pass; a pool of `slots` worker slots in all.
fn limited_weir(worker: SocketAddr, slots: u32) -> Weir {
    limited_weir_with(worker, slots, "")
}

const LIMITS: &str =
    "send_timeout = \"800ms\"\nrequest_body_timeout = \"800ms\"\ntunnel_idle_timeout = \"800ms\"\n";

fn limited_weir_with(worker: SocketAddr, slots: u32, route_keys: &str) -> Weir {
    start_routed(
        LIMITS,
        route_keys,
        &format!("worker_concurrency = {slots}\nretries = {{ max_tries = 1 }}"),
        &[worker],
    )
}

/// A route whose responses stream as they come (`buffer_responses = false`): what holds a
/// worker while the client reads, and so what the client-side limits must bound.
fn streaming_weir(worker: SocketAddr, slots: u32) -> Weir {
    limited_weir_with(worker, slots, "buffer_responses = false")
}

async fn wait_ready(weir: &Weir) {
    wait_until("worker ready", || {
        weir.workers("app")
            .iter()
            .any(|w| w.state() == weir::pool::WorkerState::Ready)
    })
    .await;
}

/// A good client looping GETs for `for_`; (successes, tries). Each request may wait in the
/// queue (30 s by default) while attackers hold the slots.
async fn good_client(addr: SocketAddr, for_: Duration) -> (usize, usize) {
    let until = Instant::now() + for_;
    let (mut ok, mut tries) = (0, 0);
    while Instant::now() < until {
        tries += 1;
        let t0 = Instant::now();
        let reply = tokio::time::timeout(DEADLINE, get(addr, "/hello")).await;
        if tries == 1 {
            eprintln!("first good request took {:?}", t0.elapsed());
        }
        if matches!(reply, Ok(r) if r.status == 200) {
            ok += 1;
        }
    }
    (ok, tries)
}

type H2Sender = hyper::client::conn::http2::SendRequest<Empty<Bytes>>;

/// An h2c (prior knowledge) client connection built by `builder`, and a flag that is set when
/// the connection ends.
async fn h2c(
    addr: SocketAddr,
    builder: &hyper::client::conn::http2::Builder<TokioExecutor>,
) -> (H2Sender, Arc<AtomicBool>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = builder.handshake(TokioIo::new(tcp)).await.unwrap();
    let ended = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ended);
    tokio::spawn(async move {
        let _ = conn.await;
        flag.store(true, Ordering::SeqCst);
    });
    (sender, ended)
}

/// A connection that asks for a large response and never reads it.
async fn slow_reader(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /bytes/33554432 HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    stream
}

/// Wait until the peer closed `stream` (EOF or reset), reading and dropping what is buffered.
async fn closed_by_weir(stream: &mut TcpStream) -> bool {
    let mut buf = vec![0u8; 1 << 20];
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_let_go_of_their_slots_after_send_timeout() {
    let worker = demo("w").await;
    let weir = streaming_weir(worker, 4);
    wait_ready(&weir).await;
    // Eight readers that never read, against four slots.
    let mut readers = Vec::new();
    for _ in 0..8 {
        readers.push(slow_reader(weir.addr()).await);
    }
    wait_until("the slow readers hold every slot", || {
        weir.workers("app")[0].in_flight() == 4
    })
    .await;
    let started = Instant::now();
    let (ok, tries) = good_client(weir.addr(), Duration::from_secs(3)).await;
    eprintln!(
        "good client beside 8 slow readers: {ok} of {tries} succeeded in {:?}",
        started.elapsed()
    );
    assert!(
        ok * 100 >= tries * 99 && ok > 0,
        "good client: {ok} of {tries} succeeded"
    );
    for mut reader in readers {
        assert!(closed_by_weir(&mut reader).await, "slow reader was cut");
    }
    wait_until("every slot free", || {
        weir.workers("app")[0].in_flight() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_sending_its_body_gets_408_and_frees_the_slot() {
    let worker = body_first_worker().await;
    // A route that streams request bodies (`buffer_requests = false`): the one case where a
    // body still coming holds a worker slot, so the case the body timeout must bound.
    let weir = start_routed(
        "request_body_timeout = \"800ms\"\n",
        "buffer_requests = false",
        "worker_concurrency = 2\nretries = { max_tries = 1 }\nhealth = { interval = \"200ms\" }",
        &[worker],
    );
    wait_ready(&weir).await;
    let mut stalled = Vec::new();
    for _ in 0..6 {
        let mut stream = TcpStream::connect(weir.addr()).await.unwrap();
        stream
            .write_all(
                b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\nfirst bytes",
            )
            .await
            .unwrap();
        stalled.push(stream);
    }
    wait_until("the stalled uploads hold every slot", || {
        weir.workers("app")[0].in_flight() == 2
    })
    .await;
    let (ok, tries) = good_client(weir.addr(), Duration::from_secs(3)).await;
    eprintln!("good client beside 6 stalled uploads: {ok} of {tries} succeeded");
    assert!(
        ok * 100 >= tries * 99 && ok > 0,
        "good client: {ok} of {tries} succeeded"
    );
    for mut stream in stalled {
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    }
    wait_until("every slot free", || {
        weir.workers("app")[0].in_flight() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_stalls_after_its_response_began_is_cut() {
    // The demo's /echo answers at once and streams the body back as it comes (on a route
    // that streams request bodies to the worker).
    let worker = demo("w").await;
    let weir = limited_weir_with(worker, 2, "buffer_requests = false");
    wait_ready(&weir).await;
    let mut stream = TcpStream::connect(weir.addr()).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\nfirst bytes")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !text.ends_with("0\r\n\r\n"),
        "the response is cut, not finished: {text}"
    );
    wait_until("slot free", || weir.workers("app")[0].in_flight() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_holding_its_window_at_zero_does_not_keep_the_slots() {
    let worker = demo("w").await;
    let weir = limited_weir(worker, 4);
    wait_ready(&weir).await;
    // One h2c connection whose streams get no window at all, with many large responses.
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder.initial_stream_window_size(0);
    let (sender, conn_ended) = h2c(weir.addr(), &builder).await;
    let heads = Arc::new(AtomicUsize::new(0));
    for _ in 0..20 {
        let mut sender = sender.clone();
        let heads = Arc::clone(&heads);
        tokio::spawn(async move {
            let req = http::Request::get("/bytes/1048576")
                .header("host", "x")
                .body(Empty::new())
                .unwrap();
            if let Ok(response) = sender.send_request(req).await {
                heads.fetch_add(1, Ordering::SeqCst);
                // Hold the body unread.
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(response);
            }
        });
    }
    wait_until("the stalled streams hold every slot", || {
        weir.workers("app")[0].in_flight() == 4
    })
    .await;
    let (ok, tries) = good_client(weir.addr(), Duration::from_secs(3)).await;
    eprintln!("good client beside a zero-window h2 connection: {ok} of {tries} succeeded");
    assert!(
        ok * 100 >= tries * 99 && ok > 0,
        "good client: {ok} of {tries} succeeded"
    );
    wait_until("the stalled connection was cut", || {
        conn_ended.load(Ordering::SeqCst)
    })
    .await;
    wait_until("every slot free", || {
        weir.workers("app")[0].in_flight() == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stalled_http2_stream_is_cut_while_the_others_on_its_connection_flow() {
    use http_body_util::BodyExt;
    let worker = demo("w").await;
    let weir = streaming_weir(worker, 4);
    wait_ready(&weir).await;
    // Stream windows of 64 KiB, a connection window large enough that the stalled stream
    // cannot starve the other.
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder.initial_connection_window_size(64 << 20);
    let (sender, conn_ended) = h2c(weir.addr(), &builder).await;
    let get = |sender: &H2Sender| {
        let mut sender = sender.clone();
        async move {
            let req = http::Request::get("/bytes/33554432")
                .header("host", "x")
                .body(Empty::new())
                .unwrap();
            sender.send_request(req).await.unwrap()
        }
    };
    let stalled = get(&sender).await; // never read
    let flowing = get(&sender).await;
    let read = Arc::new(AtomicUsize::new(0));
    let reader = {
        let read = Arc::clone(&read);
        tokio::spawn(async move {
            let mut body = flowing.into_body();
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    read.fetch_add(data.len(), Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    wait_until("both streams hold a slot", || {
        weir.workers("app")[0].in_flight() == 2
    })
    .await;
    wait_until("the stalled stream's slot is freed", || {
        weir.workers("app")[0].in_flight() == 1
    })
    .await;
    let at_cut = read.load(Ordering::SeqCst);
    wait_until("the other stream keeps flowing", || {
        read.load(Ordering::SeqCst) > at_cut + (256 << 10)
    })
    .await;
    assert_eq!(
        weir.workers("app")[0].in_flight(),
        1,
        "the flowing stream keeps its slot"
    );
    assert!(
        !conn_ended.load(Ordering::SeqCst),
        "the connection stays up"
    );
    drop(stalled);
    reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed_at_tunnel_idle_timeout() {
    let worker = demo("w").await;
    let weir = limited_weir(worker, 4);
    wait_ready(&weir).await;
    let mut stream = TcpStream::connect(weir.addr()).await.unwrap();
    stream
        .write_all(b"GET /chat HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 4096];
    let n = tokio::time::timeout(DEADLINE, stream.read(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );
    // Traffic keeps it open past the limit...
    let opened = Instant::now();
    while opened.elapsed() < Duration::from_millis(1500) {
        stream.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tokio::time::timeout(DEADLINE, stream.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&back, b"ping");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        weir.workers("app")[0].in_flight(),
        1,
        "the tunnel holds its slot"
    );
    // ...silence closes it.
    let quiet = Instant::now();
    assert!(closed_by_weir(&mut stream).await, "idle tunnel closed");
    let took = quiet.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(3),
        "{took:?}"
    );
    wait_until("slot free", || weir.workers("app")[0].in_flight() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_taking_its_response_slower_than_min_data_rate_is_cut() {
    use tokio::net::TcpSocket;
    // A worker process of its own: producing megabytes on the test's runtime would slow the
    // other tests of this file, whose limits are short.
    let (_worker, worker) = demo_process("w");
    let weir = start_simple(
        "min_data_rate = \"64KiB\"\nmin_data_rate_grace = \"500ms\"\n",
        "",
        &[worker],
    );
    wait_ready(&weir).await;
    // Larger than the kernel's socket buffers (4 MiB each way), so the slow reader is slow
    // to weir too.
    const SIZE: usize = 12 << 20;
    let request = format!("GET /bytes/{SIZE} HTTP/1.1\r\nhost: x\r\n\r\n");
    // A reader at about 10 KiB/s: it never gets the whole response.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(1024).unwrap();
    let mut slow = socket.connect(weir.addr()).await.unwrap();
    slow.write_all(request.as_bytes()).await.unwrap();
    let started = Instant::now();
    let mut taken = 0usize;
    let mut buf = [0u8; 1024];
    let cut = loop {
        match tokio::time::timeout(DEADLINE, slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => taken += n,
            Err(_) => break false,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!(
        "slow reader cut after {:?} with {taken} bytes",
        started.elapsed()
    );
    assert!(cut && taken < SIZE, "cut: {cut}, {taken} bytes");
    // A reader at full speed gets all of it.
    let mut fast = TcpStream::connect(weir.addr()).await.unwrap();
    fast.write_all(request.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    while all.len() < SIZE + 64 {
        match tokio::time::timeout(DEADLINE, fast.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => all.extend_from_slice(&chunk[..n]),
            _ => break,
        }
        if all
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .is_some_and(|end| all.len() >= end + 4 + SIZE)
        {
            break;
        }
    }
    let head_end = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(all.len() - head_end, SIZE, "the fast reader got it all");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_upload_slower_than_min_data_rate_gets_408_and_frees_the_slot() {
    let worker = body_first_worker().await;
    // Streamed to the worker as it comes (`buffer_requests = false`), with a body timeout far
    // away: only the rate can end it.
    let weir = start_routed(
        "request_body_timeout = \"1m\"\nmin_data_rate = \"1KiB\"\nmin_data_rate_grace = \"1s\"\n",
        "buffer_requests = false",
        "worker_concurrency = 2\nretries = { max_tries = 1 }",
        &[worker],
    );
    wait_ready(&weir).await;
    let mut stream = TcpStream::connect(weir.addr()).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    wait_until("the upload holds a slot", || {
        weir.workers("app")[0].in_flight() == 1
    })
    .await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    while started.elapsed() < DEADLINE {
        // A byte every 100 ms: 10 B/s, far below the minimum.
        let _ = stream.write_all(b"x").await;
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await
        {
            answer.extend_from_slice(&buf[..n]);
            if n == 0 || answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut after {:?}",
        started.elapsed()
    );
    wait_until("slot free", || weir.workers("app")[0].in_flight() == 0).await;
}
