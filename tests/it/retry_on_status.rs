//! `retries.on_status`: a replayable request answered with a listed status goes once more to
//! another worker, within `max_tries` and the pool's retry budget; anything else (a POST, an
//! exhausted budget, no other worker) gets the answer as it is.

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use weir::pool::WorkerState;

/// A worker that answers every request with `response`, keeping its connections open.
struct Answering {
    addr: SocketAddr,
    /// Connections that carried a request.
    connections: Arc<AtomicUsize>,
    /// Every request, head and body, as text.
    requests: Arc<Mutex<Vec<String>>>,
}

impl Answering {
    fn requests(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

async fn answering(response: &'static str) -> Answering {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (count, seen) = (Arc::clone(&connections), Arc::clone(&requests));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (count, seen) = (Arc::clone(&count), Arc::clone(&seen));
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut first = true;
                while let Some(request) = read_request(&mut stream, &mut pending).await {
                    // Health probes connect without a request.
                    if std::mem::take(&mut first) {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    seen.lock().unwrap().push(request);
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Answering {
        addr,
        connections,
        requests,
    }
}

const BUSY: &str = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\n\r\nbusy\n";
const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";

/// weir with pool `pool` over `workers` (round robin, so both get first tries) and the
/// given retry keys; returns once every worker is ready.
async fn weir_over(pool: &str, retries: &str, workers: &[SocketAddr]) -> Weir {
    let weir = start_weir(
        "threads = 1",
        &format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"{pool}\"\n[pools.{pool}]\nbalance = \"round_robin\"\nretries = {{ {retries} }}\nprovider = {{ kind = \"static\", addresses = {} }}\n",
            addr_list(workers)
        ),
    );
    let all = weir.workers(pool);
    wait_until("workers ready", || {
        all.iter().all(|w| w.state() == WorkerState::Ready)
    })
    .await;
    weir
}

/// `weir_retries_total` of `pool`.
async fn retries(weir: &Weir, pool: &str) -> f64 {
    let (_, text) = admin_call(weir.admin(), "GET", "/metrics", None, "").await;
    text.lines()
        .find(|l| l.starts_with(&format!("weir_retries_total{{pool=\"{pool}\"}}")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn put(body: &'static str) -> http::Request<Full<Bytes>> {
    http::Request::put("/item")
        .header("host", "x")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test]
async fn a_listed_status_goes_to_the_other_worker() {
    let (busy, ok) = (answering(BUSY).await, answering(OK).await);
    let weir = weir_over("shed", "on_status = [503]", &[busy.addr, ok.addr]).await;
    let mut client = Client::connect(weir.addr()).await;
    for i in 0..6 {
        let reply = client.get("/").await;
        assert_eq!(
            (reply.status.as_u16(), reply.text().as_str()),
            (200, "ok\n"),
            "GET {i}"
        );
    }
    // A PUT whose body weir held goes again with that body.
    for i in 0..2 {
        let reply = client.send(put("abc")).await;
        assert_eq!(reply.status, 200, "PUT {i}");
    }
    let tried_busy = busy.requests();
    assert!(
        tried_busy >= 2,
        "round robin gave the busy worker first tries"
    );
    assert_eq!(
        ok.requests(),
        8,
        "every request reached the other worker once"
    );
    assert!(ok.requests.lock().unwrap()[6..]
        .iter()
        .all(|r| r.starts_with("PUT /item") && r.ends_with("\r\n\r\nabc")));
    assert_eq!(retries(&weir, "shed").await, tried_busy as f64);
    // A discarded answer's body is never read, so its connection is never reused.
    assert_eq!(busy.connections.load(Ordering::SeqCst), tried_busy);
}

#[tokio::test]
async fn without_budget_or_tries_the_listed_status_is_passed_on() {
    // A ratio of 0 leaves the budget's floor: 10 retries per 10 s window.
    let (busy, ok) = (answering(BUSY).await, answering(OK).await);
    let weir = weir_over(
        "spent",
        "on_status = [503], budget = 0.0",
        &[busy.addr, ok.addr],
    )
    .await;
    let mut client = Client::connect(weir.addr()).await;
    let mut first_503 = None;
    for i in 0..100 {
        let reply = client.get("/").await;
        match reply.status.as_u16() {
            200 => assert_eq!(reply.text(), "ok\n"),
            503 => {
                assert_eq!(reply.text(), "busy\n", "the worker's own answer");
                first_503 = Some(i);
                break;
            }
            other => panic!("request {i}: {other}"),
        }
    }
    assert!(first_503.is_some(), "the budget never ran out");
    assert_eq!(busy.requests(), 11, "10 retried, the 11th passed on");
    assert_eq!(retries(&weir, "spent").await, 10.0);

    // Two tries at most: with every worker busy, the second answer stands.
    let (a, b) = (answering(BUSY).await, answering(BUSY).await);
    let weir = weir_over(
        "tries",
        "on_status = [503], max_tries = 2",
        &[a.addr, b.addr],
    )
    .await;
    let reply = get(weir.addr(), "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(a.requests() + b.requests(), 2);
}

#[tokio::test]
async fn a_post_is_never_retried_on_status() {
    let (busy, ok) = (answering(BUSY).await, answering(OK).await);
    let weir = weir_over("posts", "on_status = [503]", &[busy.addr, ok.addr]).await;
    let mut client = Client::connect(weir.addr()).await;
    let mut answered_503 = 0;
    for _ in 0..6 {
        let post = http::Request::post("/submit")
            .header("host", "x")
            .body(Full::new(Bytes::from_static(b"abc")))
            .unwrap();
        if client.send(post).await.status == 503 {
            answered_503 += 1;
        }
    }
    assert!(answered_503 >= 2, "round robin gave the busy worker POSTs");
    assert_eq!(busy.requests(), answered_503);
    assert_eq!(busy.requests() + ok.requests(), 6, "no POST went twice");
    assert_eq!(retries(&weir, "posts").await, 0.0);
}

#[tokio::test]
async fn a_body_read_ahead_stays_replayable_up_to_the_retry_buffer() {
    let (busy, ok) = (answering(BUSY).await, answering(OK).await);
    // Bodies are read ahead into 1 KiB of memory, but the pool replays bodies up to 64 KiB:
    // such a body is held in memory, not spilled to a file, so it can go again.
    let weir = start_weir(
        "threads = 1",
        &format!(
            "[upstream]\nrequest_buffer = 1024\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"replay\"\n[pools.replay]\nbalance = \"round_robin\"\nretries = {{ on_status = [503], buffer_body_bytes = 65536 }}\nprovider = {{ kind = \"static\", addresses = {} }}\n",
            addr_list(&[busy.addr, ok.addr])
        ),
    );
    let all = weir.workers("replay");
    wait_until("workers ready", || {
        all.iter().all(|w| w.state() == WorkerState::Ready)
    })
    .await;
    let body: &'static str = Box::leak("x".repeat(20_000).into_boxed_str());
    let mut client = Client::connect(weir.addr()).await;
    for i in 0..2 {
        let reply = client.send(put(body)).await;
        assert_eq!(reply.status, 200, "PUT {i}");
    }
    assert!(busy.requests() >= 1, "the busy worker had a first try");
    assert!(ok
        .requests
        .lock()
        .unwrap()
        .iter()
        .all(|r| r.ends_with(body)));
}
