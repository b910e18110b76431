//! Early release (`upstream.response_buffer`): a response the worker has sent whole and that
//! fits in the buffer frees the worker's slot and connection at once, so clients that never
//! read their small responses hold weir's memory, not worker slots (the slow-read attack).
//!
//! On loopback the kernel's socket buffers take megabytes per connection, so a client that
//! merely never reads one small response does not stall anything. The attack needs the
//! response to find no room: an HTTP/2 stream whose window the client keeps closed, or an
//! HTTP/1.1 connection with so many pipelined requests unread that the buffers are full.

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// A small response: under the default 64 KiB buffer, over one 8 KiB head read, so the worker
/// sends it in more than one piece.
const SMALL: usize = 40_000;

/// An HTTP/2 connection whose streams get a 1 KiB window the client never opens further:
/// response heads arrive, bodies stop after their first KiB.
async fn closed_window_h2(
    weir: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = TcpStream::connect(weir).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(1024)
        .handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// Ask for `SMALL` bytes over `sender` and return the response unread.
async fn unread(
    sender: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
) -> http::Response<Incoming> {
    let request = Request::get(format!("http://x/bytes/{SMALL}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    tokio::time::timeout(DEADLINE, sender.send_request(request))
        .await
        .expect("response head within the deadline")
        .unwrap()
}

/// An HTTP/1.1 connection that pipelines `count` requests for `SMALL` bytes and never reads:
/// its socket buffers fill after a few dozen responses, and the next response has nowhere to
/// go.
async fn pipelining_reader(weir: SocketAddr, count: usize) -> TcpStream {
    unread_pipeline(weir, count, SMALL).await
}

/// Read `response`'s body to its end (within the deadline) and check it is `n` bytes of the
/// demo worker's pattern.
async fn read_whole_pattern(response: http::Response<Incoming>, n: usize) {
    let body = tokio::time::timeout(DEADLINE, response.into_body().collect())
        .await
        .expect("the body within the deadline")
        .unwrap()
        .to_bytes();
    assert!(is_pattern(&body, n), "{} bytes", body.len());
}

/// A body of `/bytes/N` is N bytes of the demo worker's pattern.
fn is_pattern(body: &[u8], n: usize) -> bool {
    body.len() == n
        && body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == weir::demo::pattern_byte(i))
}

#[tokio::test]
async fn a_client_not_reading_a_small_response_does_not_hold_the_only_slot() {
    let worker = demo("w").await;
    let weir = start_simple("", "worker_concurrency = 1", &[worker]);
    let workers = weir.workers("app");
    let mut slow = closed_window_h2(weir.addr()).await;
    let response = unread(&mut slow).await;
    assert_eq!(response.status(), 200);
    // The body cannot reach the client (its window stays closed), yet the worker is free...
    wait_until("the only slot released", || workers[0].in_flight() == 0).await;
    // ...and a second client is served by it while the first still reads nothing.
    let reply = get(weir.addr(), &format!("/bytes/{SMALL}")).await;
    assert_eq!(reply.status, 200);
    assert!(is_pattern(&reply.body, SMALL));
    // Whenever the first client reads, its response is all there, byte for byte.
    read_whole_pattern(response, SMALL).await;
}

const LARGE: usize = 1_000_000;

/// A weir with one slot (its route keyed by `route_keys`) and a `LARGE` response to an HTTP/2
/// stream whose window stays closed, unread.
async fn large_response_unread(route_keys: &str) -> (Weir, http::Response<Incoming>) {
    let worker = demo("w").await;
    let weir = start_routed("", route_keys, "worker_concurrency = 1", &[worker]);
    let mut slow = closed_window_h2(weir.addr()).await;
    let request = Request::get(format!("http://x/bytes/{LARGE}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = slow.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    (weir, response)
}

#[tokio::test]
async fn a_response_larger_than_the_buffer_frees_its_worker_before_the_client_reads_it() {
    let (weir, response) = large_response_unread("").await;
    let workers = weir.workers("app");
    // The client has taken next to nothing, yet weir holds the rest (memory, then a
    // temporary file) and the worker's only slot is free...
    wait_until("slot released before the client read", || {
        workers[0].in_flight() == 0
    })
    .await;
    assert_eq!(get(weir.addr(), "/hello").await.status, 200);
    // ...and the client still gets all of it.
    read_whole_pattern(response, LARGE).await;
}

#[tokio::test]
async fn a_streaming_route_holds_the_worker_until_the_client_reads() {
    let (weir, response) = large_response_unread("buffer_responses = false").await;
    let workers = weir.workers("app");
    // Its body cannot all be in hand yet: the worker stays busy with it...
    assert_eq!(workers[0].in_flight(), 1);
    // ...until the client reads it, all of it.
    read_whole_pattern(response, LARGE).await;
    wait_until("slot released", || workers[0].in_flight() == 0).await;
}

#[tokio::test]
async fn a_good_client_keeps_99_percent_success_beside_slow_readers() {
    const GOOD_REQUESTS: usize = 200;
    const H2_STREAMS: usize = 16;
    const PIPELINES: usize = 8;
    const PIPELINED: usize = 128;
    let workers = [demo("w1").await, demo("w2").await];
    // Four slots; a request finding none waits at most 200 ms.
    let weir = start_weir(
        "",
        &format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\nqueue = {{ timeout = \"200ms\" }}\n[pools.app]\nworker_concurrency = 2\nprovider = {{ kind = \"static\", addresses = {} }}\n",
            addr_list(&workers)
        ),
    );
    let pool = weir.workers("app");
    wait_until("both workers ready", || {
        pool.iter()
            .all(|w| w.state() == weir::pool::WorkerState::Ready)
    })
    .await;
    // The attack: pipelines that stop reading, and HTTP/2 streams never given a window.
    let mut held = Vec::new();
    for _ in 0..PIPELINES {
        held.push(pipelining_reader(weir.addr(), PIPELINED).await);
    }
    let mut slow = closed_window_h2(weir.addr()).await;
    let mut unread_responses = Vec::new();
    for _ in 0..H2_STREAMS {
        unread_responses.push(unread(&mut slow).await);
    }
    // More slow readers keep arriving while the good client works.
    let addr = weir.addr();
    let arrived = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&arrived);
    let more = tokio::spawn(async move {
        let mut more = Vec::new();
        loop {
            more.push(pipelining_reader(addr, PIPELINED).await);
            count.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
            if more.len() >= 64 {
                std::future::pending::<()>().await;
            }
        }
    });
    let mut good = Client::connect(weir.addr()).await;
    let mut ok = 0;
    for _ in 0..GOOD_REQUESTS {
        let reply = good.get(&format!("/bytes/{SMALL}")).await;
        if reply.status == 200 && is_pattern(&reply.body, SMALL) {
            ok += 1;
        }
    }
    more.abort();
    let rate = 100.0 * ok as f64 / GOOD_REQUESTS as f64;
    let pipelines = PIPELINES + arrived.load(Ordering::Relaxed);
    eprintln!(
        "good client: {ok}/{GOOD_REQUESTS} ({rate:.1} %) beside {pipelines} pipelining readers and {H2_STREAMS} closed HTTP/2 streams"
    );
    assert!(rate >= 99.0, "good client success {rate:.1} %");
    drop((held, unread_responses));
}
