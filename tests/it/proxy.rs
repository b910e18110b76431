//! HTTP/1.1 proxying end to end: methods, streamed bodies, header rewriting, routing, balancing
//! and exact in-flight accounting.

use crate::common;

use std::collections::HashMap;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[tokio::test]
async fn get_and_post_over_http1() {
    let worker = demo("w1").await;
    let weir = start_simple("", "", &[worker]);
    let mut client = Client::connect(weir.addr()).await;

    let reply = client.get("/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "hello from w1\n");
    assert_eq!(reply.served_by(), "w1");

    let post = Request::post("/echo")
        .header("host", "x")
        .body(Full::new(Bytes::from_static(b"ping payload")))
        .unwrap();
    let reply = client.send(post).await;
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.body[..], b"ping payload");

    // The same client connection keeps working (keep-alive) and statuses pass through.
    let reply = client.get("/status/418").await;
    assert_eq!(reply.status, 418);
}

/// FNV-1a, enough to compare a streamed body end to end without holding it.
fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= u64::from(*b);
        *hash = hash.wrapping_mul(0x100_0000_01b3);
    }
}

#[tokio::test]
async fn multi_mib_body_streams_both_ways_intact() {
    let worker = demo("w1").await;
    let weir = start_simple("", "", &[worker]);

    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 128; // 8 MiB
    let mut sent_hash = 0xcbf2_9ce4_8422_2325u64;
    let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = (0..CHUNKS)
        .map(|c| {
            let data: Vec<u8> = (0..CHUNK).map(|i| ((c * 31 + i * 7) % 256) as u8).collect();
            fnv(&mut sent_hash, &data);
            Ok(Frame::data(Bytes::from(data)))
        })
        .collect();
    // Streamed with chunked encoding: no Content-Length, so nothing can be pre-sized.
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let req = Request::post("/echo")
        .header("host", "x")
        .body(body)
        .unwrap();

    let stream = TcpStream::connect(weir.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = tokio::time::timeout(DEADLINE, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut got_hash = 0xcbf2_9ce4_8422_2325u64;
    let mut got_len = 0usize;
    while let Some(frame) = tokio::time::timeout(DEADLINE, body.frame()).await.unwrap() {
        if let Ok(data) = frame.unwrap().into_data() {
            fnv(&mut got_hash, &data);
            got_len += data.len();
        }
    }
    assert_eq!(got_len, CHUNK * CHUNKS);
    assert_eq!(got_hash, sent_hash);

    // A large download with Content-Length passes through and matches the pattern.
    let reply = get(weir.addr(), "/bytes/3000000").await;
    assert_eq!(reply.body.len(), 3_000_000);
    assert!(reply
        .body
        .iter()
        .enumerate()
        .all(|(i, b)| *b == weir::demo::pattern_byte(i)));
}

#[tokio::test]
async fn forwards_headers_and_strips_hop_by_hop() {
    let worker = demo("w1").await;
    let weir = start_simple("", "", &[worker]);
    let req = Request::get("/headers?x=1")
        .header("host", "app.example")
        .header("x-custom", "kept")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "dropped")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = Client::connect(weir.addr()).await.send(req).await;
    let seen = reply.text();
    assert!(seen.starts_with("GET /headers?x=1 HTTP/1.1\n"), "{seen}");
    assert!(seen.contains("\nx-custom: kept\n"), "{seen}");
    assert!(seen.contains("\nhost: app.example\n"), "{seen}");
    assert!(seen.contains("\nx-forwarded-for: 127.0.0.1\n"), "{seen}");
    assert!(seen.contains("\nx-forwarded-proto: http\n"), "{seen}");
    assert!(seen.contains("\nx-forwarded-host: app.example\n"), "{seen}");
    for gone in [
        "x-private",
        "keep-alive:",
        "proxy-authorization",
        "\nte:",
        "\nconnection:",
    ] {
        assert!(!seen.contains(gone), "{gone} leaked: {seen}");
    }
    // Response hop-by-hop headers are stripped too; end-to-end ones pass.
    assert!(reply.headers.get("x-served-by").is_some());
    assert!(reply.headers.get("keep-alive").is_none());
}

#[tokio::test]
async fn routes_by_host_and_longest_prefix() {
    let (a, b, c, d) = (
        demo("a").await,
        demo("b").await,
        demo("c").await,
        demo("d").await,
    );
    let weir = start_weir(
        "",
        &format!(
            r#"
[[listeners]]
listen = "127.0.0.1:0"
[[routes]]
pool = "a"
[[routes]]
path_prefix = "/api"
pool = "b"
[[routes]]
host = "admin.test"
pool = "c"
[[routes]]
host = "*.tenants.test"
path_prefix = "/api/v2"
pool = "d"
[pools.a]
provider = {{ kind = "static", addresses = ["{a}"] }}
[pools.b]
provider = {{ kind = "static", addresses = ["{b}"] }}
[pools.c]
provider = {{ kind = "static", addresses = ["{c}"] }}
[pools.d]
provider = {{ kind = "static", addresses = ["{d}"] }}
"#
        ),
    );
    let mut client = Client::connect(weir.addr()).await;
    let cases = [
        ("x.test", "/", "a"),
        ("x.test", "/api", "b"),
        ("x.test", "/api/users", "b"),
        ("x.test", "/apiary", "a"),
        ("ADMIN.test:8080", "/api", "c"),
        ("one.tenants.test", "/api/v2/x", "d"),
        ("one.tenants.test", "/api/v1", "b"),
        ("two.one.tenants.test", "/api/v2", "b"),
    ];
    for (host, path, want) in cases {
        let reply = client.send(get_req(path, host)).await;
        assert_eq!(reply.served_by(), want, "{host}{path}");
    }
}

#[tokio::test]
async fn no_route_is_404() {
    let worker = demo("w1").await;
    let weir = start_weir(
        "",
        &format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\nhost = \"only.test\"\npool = \"app\"\n[pools.app]\nprovider = {{ kind = \"static\", addresses = [\"{worker}\"] }}\n"
        ),
    );
    let reply = Client::connect(weir.addr())
        .await
        .send(get_req("/", "other.test"))
        .await;
    assert_eq!(reply.status, 404);
    assert!(reply.text().starts_with("weir:"), "{}", reply.text());
}

async fn spread(balance: &str) -> HashMap<String, usize> {
    let (a, b) = (demo("a").await, demo("b").await);
    let weir = start_simple("", &format!("balance = \"{balance}\""), &[a, b]);
    // Until both have passed their first probe, every request goes to the one that has.
    let workers = weir.workers("app");
    wait_until("both workers ready", || {
        workers
            .iter()
            .all(|w| w.state() == weir::pool::WorkerState::Ready)
    })
    .await;
    let mut counts = HashMap::new();
    let mut client = Client::connect(weir.addr()).await;
    for _ in 0..200 {
        *counts.entry(client.get("/").await.served_by()).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn round_robin_alternates_over_two_workers() {
    let counts = spread("round_robin").await;
    assert_eq!(counts.get("a"), Some(&100), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&100), "{counts:?}");
}

#[tokio::test]
async fn least_inflight_uses_both_workers() {
    let counts = spread("least_inflight").await;
    // Sequential requests leave both idle, so P2C splits them about evenly.
    assert!(counts.get("a").copied().unwrap_or(0) >= 50, "{counts:?}");
    assert!(counts.get("b").copied().unwrap_or(0) >= 50, "{counts:?}");
}

#[tokio::test]
async fn least_inflight_avoids_the_busy_worker() {
    let slow = demo_with_delay("slow", std::time::Duration::from_secs(3)).await;
    let fast = demo("fast").await;
    let weir = start_simple("", "balance = \"least_inflight\"", &[slow, fast]);
    // Pin one long request on each worker's count, then see new requests go to the free one.
    let addr = weir.addr();
    let held = tokio::spawn(async move { get(addr, "/?delay=2s").await });
    let workers = weir.workers("app");
    wait_until("a request in flight", || {
        workers.iter().map(|w| w.in_flight()).sum::<u32>() == 1
    })
    .await;
    let busy = workers
        .iter()
        .find(|w| w.in_flight() == 1)
        .unwrap()
        .name
        .clone();
    let mut client = Client::connect(weir.addr()).await;
    for _ in 0..20 {
        let reply = client.get("/?delay=0ms").await;
        let served = if reply.served_by() == "slow" {
            "app-1"
        } else {
            "app-2"
        };
        assert_ne!(served, busy);
    }
    held.abort();
}

#[tokio::test]
async fn in_flight_counts_are_exact_even_when_clients_leave() {
    let worker = demo("w1").await;
    // Responses streamed as they come, so one is still in flight when its client leaves
    // mid-body (a buffered one frees its worker as soon as the worker has sent it).
    let weir = start_routed("", "buffer_responses = false", "", &[worker]);
    let workers = weir.workers("app");
    let mut client = Client::connect(weir.addr()).await;
    for _ in 0..10 {
        client.get("/").await;
    }
    wait_until("in-flight back to zero", || workers[0].in_flight() == 0).await;
    assert_eq!(workers[0].served(), 10);

    // A client that leaves while its request is being served: the count still comes back.
    let addr = weir.addr();
    let leaver = tokio::spawn(async move { get(addr, "/?delay=500ms").await });
    wait_until("request in flight", || workers[0].in_flight() == 1).await;
    leaver.abort();
    wait_until("abandoned request released", || workers[0].in_flight() == 0).await;

    // A client that leaves in the middle of a large response body.
    let stream = TcpStream::connect(weir.addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .unwrap();
    let conn_task = tokio::spawn(conn);
    let response = sender
        .send_request(get_req("/bytes/50000000", "x"))
        .await
        .unwrap();
    let mut body = response.into_body();
    let _first = body.frame().await;
    assert_eq!(workers[0].in_flight(), 1);
    drop(body);
    drop(sender);
    conn_task.abort();
    wait_until("mid-body abandon released", || workers[0].in_flight() == 0).await;
}
