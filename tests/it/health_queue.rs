//! Health checks, per-worker concurrency, the bounded per-route queue and retries, against real
//! weir listeners and real demo workers.

use crate::common;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use weir::demo::DemoOptions;
use weir::pool::WorkerState;

const HEALTH: &str = "health = { path = \"/hello\", interval = \"200ms\", timeout = \"100ms\", healthy_threshold = 1, unhealthy_threshold = 2 }";

#[tokio::test]
async fn sick_worker_stops_getting_requests_and_comes_back() {
    let sick = DemoOptions::new("a", Duration::ZERO);
    let health_flag = Arc::clone(&sick.healthy);
    let (a, _a) = demo_with(sick).await;
    let b = demo("b").await;
    let weir = start_simple("", &format!("balance = \"round_robin\"\n{HEALTH}"), &[a, b]);
    let workers = weir.workers("app");
    wait_until("both ready", || {
        workers.iter().all(|w| w.state() == WorkerState::Ready)
    })
    .await;

    health_flag.store(false, Ordering::SeqCst);
    let sick_since = Instant::now();
    wait_until("a unhealthy", || {
        workers[0].state() == WorkerState::Unhealthy
    })
    .await;
    // unhealthy_threshold (2) x interval (200 ms), plus one interval for probe phase.
    assert!(
        sick_since.elapsed() < Duration::from_millis(800),
        "{:?}",
        sick_since.elapsed()
    );
    let mut client = Client::connect(weir.addr()).await;
    for _ in 0..20 {
        assert_eq!(client.get("/").await.served_by(), "b");
    }

    health_flag.store(true, Ordering::SeqCst);
    wait_until("a ready again", || workers[0].state() == WorkerState::Ready).await;
    let served: HashSet<String> = futures_util::future::join_all(
        (0..4).map(|_| async { get(weir.addr(), "/").await.served_by() }),
    )
    .await
    .into_iter()
    .collect();
    assert!(served.contains("a"), "{served:?}");
}

#[tokio::test]
async fn concurrency_cap_and_queue_bound_give_exactly_one_plus_max_size() {
    let worker = demo("w").await;
    let weir = start_weir(
        "",
        &format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\nqueue = {{ max_size = 4, timeout = \"10s\" }}\n[pools.app]\nworker_concurrency = 1\nprovider = {{ kind = \"static\", addresses = [\"{worker}\"] }}\n"
        ),
    );
    let workers = weir.workers("app");
    wait_until("ready", || workers[0].state() == WorkerState::Ready).await;
    let replies = futures_util::future::join_all(
        (0..10).map(|_| async { get(weir.addr(), "/?delay=200ms").await }),
    )
    .await;
    let ok: Vec<_> = replies.iter().filter(|r| r.status == 200).collect();
    let rejected: Vec<_> = replies.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok.len(), 5, "1 in flight + 4 queued");
    assert_eq!(rejected.len(), 5);
    for r in &rejected {
        assert_eq!(r.headers["retry-after"], "1");
    }
    // The worker never saw two at once.
    for r in &ok {
        assert_eq!(r.headers["x-concurrent"], "1");
    }
}

#[tokio::test]
async fn queue_is_fifo() {
    let worker = demo("w").await;
    let weir = start_weir(
        "",
        &format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\n[pools.app]\nworker_concurrency = 1\nprovider = {{ kind = \"static\", addresses = [\"{worker}\"] }}\n"
        ),
    );
    let workers = weir.workers("app");
    wait_until("ready", || workers[0].state() == WorkerState::Ready).await;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    // One request holds the only slot; seven more queue, one at a time so their arrival order
    // is known. With one slot, completion order is service order.
    for i in 0..8usize {
        let (addr, order) = (weir.addr(), Arc::clone(&order));
        tasks.push(tokio::spawn(async move {
            // The first holds the slot long enough for the rest to queue behind it.
            let delay = if i == 0 { 1000 } else { 20 };
            let reply = get(addr, &format!("/?delay={delay}ms&i={i}")).await;
            assert_eq!(reply.status, 200);
            assert_eq!(reply.headers["x-concurrent"], "1");
            order.lock().unwrap().push(i);
        }));
        wait_until("request admitted or queued", || {
            workers[0].in_flight() == 1 && weir.waiting("app") == i
        })
        .await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), (0..8).collect::<Vec<_>>());
}

#[tokio::test]
async fn client_that_gives_up_leaves_the_queue_and_is_never_sent() {
    let options = DemoOptions::new("w", Duration::ZERO);
    let busy = Arc::clone(&options.busy);
    let (worker, _w) = demo_with(options).await;
    let weir = start_simple("", "worker_concurrency = 1", &[worker]);
    let workers = weir.workers("app");
    wait_until("ready", || workers[0].state() == WorkerState::Ready).await;
    let addr = weir.addr();
    let holder = tokio::spawn(async move { get(addr, "/?delay=600ms").await });
    wait_until("slot taken", || workers[0].in_flight() == 1).await;
    let quitter = tokio::spawn(async move { get(addr, "/?quitter").await });
    wait_until("queued", || weir.waiting("app") == 1).await;
    quitter.abort();
    wait_until("left the queue", || weir.waiting("app") == 0).await;
    assert_eq!(holder.await.unwrap().status, 200);
    wait_until("slot free", || workers[0].in_flight() == 0).await;
    // Only the holder's request reached the worker.
    assert_eq!(workers[0].served(), 1);
    assert_eq!(busy.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn requests_wait_for_a_starting_worker_instead_of_failing() {
    // Nothing listens yet: the worker stays starting, and the request waits in the queue.
    let listener_addr = dead_addr();
    let weir = start_simple("", "", &[listener_addr]);
    let addr = weir.addr();
    let waiting = tokio::spawn(async move { get(addr, "/").await });
    wait_until("queued", || weir.waiting("app") == 1).await;
    let listener = tokio::net::TcpListener::bind(listener_addr).await.unwrap();
    tokio::spawn(weir::demo::serve(
        listener,
        DemoOptions::new("late", Duration::ZERO),
    ));
    let reply = tokio::time::timeout(DEADLINE, waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "hello from late\n");
}

#[tokio::test]
async fn idempotent_requests_with_small_bodies_are_retried_elsewhere() {
    // One worker reads each whole request, body included, then closes without a response; the
    // other answers.
    let resetter = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad = resetter.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = resetter.accept().await {
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                while !(seen.ends_with(b"once") || seen.ends_with(b"replayed body")) {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    let good = demo("good").await;
    let weir = start_simple("", "balance = \"round_robin\"", &[bad, good]);
    let workers = weir.workers("app");
    wait_until("both ready", || {
        workers.iter().all(|w| w.state() == WorkerState::Ready)
    })
    .await;
    let mut client = Client::connect(weir.addr()).await;
    let put = http::Request::put("/echo")
        .header("host", "x")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"replayed body",
        )))
        .unwrap();
    let reply = client.send(put).await;
    assert_eq!(reply.status, 200);
    assert_eq!(&reply.body[..], b"replayed body");
    assert_eq!(
        workers[0].served(),
        1,
        "the first try went to the failing worker"
    );
    // A POST is not idempotent: once written to the failing worker, it is not replayed.
    workers[0].set_state(WorkerState::Ready);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let post = http::Request::post("/echo")
            .header("host", "x")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"once",
            )))
            .unwrap();
        statuses.push(client.send(post).await.status.as_u16());
        workers[0].set_state(WorkerState::Ready);
    }
    // Round robin sends every other POST to the failing worker.
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        2,
        "{statuses:?}"
    );
}
