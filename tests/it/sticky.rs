//! Session affinity: keys stay on their worker, a hot key spills instead of passing the cap,
//! and a pool going from 4 to 5 workers and back moves only the keys it must, with no failed
//! request while clients keep sending.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;

use crate::common::*;

const KEYS: usize = 400;
/// Probes that a busy test machine does not fail: a key whose worker is ejected moves (as
/// it should), which would read here as a key that wandered.
const PATIENT_PROBES: &str = "health = { timeout = \"5s\", unhealthy_threshold = 5 }";

fn config(workers: &[std::net::SocketAddr]) -> String {
    format!(
        "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\n[pools.app]\nworker_concurrency = 64\nsticky = {{ header = \"x-user-id\" }}\n{PATIENT_PROBES}\nprovider = {{ kind = \"static\", addresses = {} }}\n",
        addr_list(workers)
    )
}

async fn served_by(client: &mut Client, user: usize) -> Reply {
    client
        .send(
            hyper::Request::get("/")
                .header("host", "test.local")
                .header("x-user-id", format!("user-{user}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
}

/// Where each key goes now (asking each twice: a key must not wander).
async fn placement(weir: &Weir) -> HashMap<usize, String> {
    let mut client = Client::connect(weir.addr()).await;
    let mut seen = HashMap::new();
    for user in 0..KEYS {
        let first = served_by(&mut client, user).await;
        let again = served_by(&mut client, user).await;
        assert_eq!(first.status, 200);
        assert_eq!(first.served_by(), again.served_by(), "user-{user} wandered");
        seen.insert(user, first.served_by());
    }
    seen
}

fn moved(a: &HashMap<usize, String>, b: &HashMap<usize, String>) -> f64 {
    (0..KEYS).filter(|k| a[k] != b[k]).count() as f64 / KEYS as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_move_only_as_far_as_the_pool_changes_with_no_failed_request() {
    let mut workers = Vec::new();
    for i in 0..5 {
        workers.push(demo(&format!("sticky-{i}")).await);
    }
    let path = temp_path("sticky.toml");
    let weir = start_weir_at("", &config(&workers[..4]), Some(&path));
    wait_until("four ready", || weir.ready("app") == 4).await;
    let four = placement(&weir).await;
    let spread: std::collections::HashSet<_> = four.values().collect();
    assert_eq!(spread.len(), 4, "keys on every worker");

    // Clients keep sending through both changes; none may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for c in 0..4 {
        let (stop, sent, failed, at) = (stop.clone(), sent.clone(), failed.clone(), weir.addr());
        load.push(tokio::spawn(async move {
            let mut client = Client::connect(at).await;
            let mut user = c;
            while !stop.load(Ordering::Relaxed) {
                if served_by(&mut client, user % KEYS).await.status != 200 {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                sent.fetch_add(1, Ordering::Relaxed);
                user += 7;
            }
        }));
    }

    let started = std::fs::read_to_string(&path).unwrap();
    let with = |n: usize| started.replace(&addr_list(&workers[..4]), &addr_list(&workers[..n]));
    std::fs::write(&path, with(5)).unwrap();
    let (status, body) = admin_call(weir.admin(), "POST", "/api/v1/reload", None, "").await;
    assert_eq!(status, 200, "{body}");
    wait_until("five ready", || weir.ready("app") == 5).await;
    let five = placement(&weir).await;
    let fifth = five.values().filter(|w| **w == "sticky-4").count();
    for k in 0..KEYS {
        assert!(
            four[&k] == five[&k] || five[&k] == "sticky-4",
            "user-{k} moved between old workers"
        );
    }

    std::fs::write(&path, with(4)).unwrap();
    let (status, body) = admin_call(weir.admin(), "POST", "/api/v1/reload", None, "").await;
    assert_eq!(status, 200, "{body}");
    wait_until("four again", || weir.workers("app").len() == 4).await;
    let back = placement(&weir).await;

    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let (up, down) = (moved(&four, &five), moved(&five, &back));
    eprintln!(
        "sticky: 4->5 moved {:.1}% of {KEYS} keys (all to the new worker, which took {fifth}); 5->4 moved {:.1}%; back to the 4-worker placement: {}; {} requests during the changes, {} failed",
        up * 100.0,
        down * 100.0,
        back == four,
        sent.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert!((0.10..0.30).contains(&up), "{up}");
    assert_eq!(back, four, "going back restores every key's worker");
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(sent.load(Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn a_hot_key_spills_past_a_full_worker_and_cookies_stick() {
    let slow_a = demo_with_delay("hot-a", Duration::from_millis(300)).await;
    let slow_b = demo_with_delay("hot-b", Duration::from_millis(300)).await;
    let weir = start_weir(
        "",
        &format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\n[pools.app]\nworker_concurrency = 1\nsticky = {{ cookie = \"weir_sticky\", ttl = \"1h\" }}\nprovider = {{ kind = \"static\", addresses = [\"{slow_a}\", \"{slow_b}\"] }}\n"
        ),
    );
    // A first visit gets a cookie; sent back, it keeps the client on one worker.
    let first = get(weir.addr(), "/").await;
    let cookie = first.headers["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with("weir_sticky=") && cookie.contains("Max-Age=3600"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let with_cookie = || {
        hyper::Request::get("/")
            .header("host", "test.local")
            .header("cookie", pair.clone())
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let mut client = Client::connect(weir.addr()).await;
    let home = client.send(with_cookie()).await.served_by();
    for _ in 0..3 {
        let reply = client.send(with_cookie()).await;
        assert_eq!(reply.served_by(), home);
        assert!(reply.headers.get("set-cookie").is_none());
    }
    // Two at once with the same cookie: the second does not wait behind the first's cap,
    // it goes to the other worker.
    let (a, b) = tokio::join!(
        async { Client::connect(weir.addr()).await.send(with_cookie()).await },
        async { Client::connect(weir.addr()).await.send(with_cookie()).await }
    );
    assert_eq!((a.status.as_u16(), b.status.as_u16()), (200, 200));
    assert_ne!(a.served_by(), b.served_by(), "the hot key spilled");
}

#[tokio::test]
async fn the_key_is_what_the_client_sent_even_when_a_rewrite_removes_it() {
    let mut workers = Vec::new();
    for i in 0..4 {
        workers.push(demo(&format!("keyed-{i}")).await);
    }
    let weir = start_routed(
        "",
        "request_headers = { remove = [\"x-user-id\"] }",
        &format!("sticky = {{ header = \"x-user-id\" }}\n{PATIENT_PROBES}"),
        &workers,
    );
    wait_until("four ready", || weir.ready("app") == 4).await;
    let mut client = Client::connect(weir.addr()).await;
    let mut homes = std::collections::HashSet::new();
    for user in 0..40 {
        let first = served_by(&mut client, user).await.served_by();
        for _ in 0..3 {
            assert_eq!(served_by(&mut client, user).await.served_by(), first);
        }
        homes.insert(first);
    }
    assert!(homes.len() > 1, "keys spread over the workers");
}
