//! The autoscaler with real worker processes (the demo worker, launched by the process
//! provider): growing under load with no failed request, shrinking back to the minimum after
//! the load with no request lost while workers drain, scale from zero, and replacement of a
//! killed worker.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use weir::pool::WorkerState;
use weir::scale::Action;

fn scaling_weir(autoscale: &str) -> Weir {
    start_weir(
        "",
        &format!(
            r#"
[[listeners]]
listen = "127.0.0.1:0"
[[routes]]
pool = "app"
queue = {{ timeout = "20s" }}
[pools.app]
worker_concurrency = 2
provider = {{ kind = "process", command = ["{WEIR}", "demo-worker", "--listen", "127.0.0.1:{{port}}"] }}
health = {{ path = "/hello", interval = "200ms", timeout = "200ms" }}
[pools.app.autoscale]
{autoscale}
"#
        ),
    )
}

fn ready(weir: &Weir) -> usize {
    weir.workers("app")
        .iter()
        .filter(|w| w.state() == WorkerState::Ready)
        .count()
}

/// Clients looping GETs until `stop`; returns every non-200 they saw.
fn clients(
    weir: &Weir,
    n: usize,
    path: &'static str,
    pause: Duration,
    stop: &Arc<AtomicBool>,
    done: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..n)
        .map(|_| {
            let (addr, stop, done) = (weir.addr(), Arc::clone(stop), Arc::clone(done));
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                let mut failures = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let reply = client.get(path).await;
                    if reply.status != 200 {
                        failures.push(format!("{} {}", reply.status, reply.text()));
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(pause).await;
                }
                failures
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_grows_the_pool_and_its_end_shrinks_it_without_a_failed_request() {
    let weir = scaling_weir(
        "min_workers = 1\nmax_workers = 4\nmax_idle_time = \"1500ms\"\npanic_window = \"1s\"\nstable_window = \"2s\"",
    );
    wait_until("first worker ready", || ready(&weir) == 1).await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let load_start = Instant::now();
    let heavy = clients(&weir, 8, "/?delay=50ms", Duration::ZERO, &stop, &done);
    wait_until("three workers ready", || ready(&weir) >= 3).await;
    let grown_after = load_start.elapsed();
    assert!(grown_after < Duration::from_secs(5), "{grown_after:?}");
    stop.store(true, Ordering::SeqCst);
    for c in heavy {
        assert_eq!(c.await.unwrap(), Vec::<String>::new());
    }

    // A trickle continues while the pool shrinks: nothing is lost while workers drain.
    let trickle_stop = Arc::new(AtomicBool::new(false));
    let trickle = clients(
        &weir,
        1,
        "/",
        Duration::from_millis(100),
        &trickle_stop,
        &done,
    );
    let quiet = Instant::now();
    wait_until("back to one worker", || weir.workers("app").len() == 1).await;
    let shrunk_after = quiet.elapsed();
    trickle_stop.store(true, Ordering::SeqCst);
    for c in trickle {
        assert_eq!(c.await.unwrap(), Vec::<String>::new());
    }
    assert!(
        shrunk_after >= Duration::from_millis(1500),
        "{shrunk_after:?}"
    );
    eprintln!("grew to 3 ready in {grown_after:?}; back to 1 in {shrunk_after:?} after the load");
    let actions: Vec<Action> = weir.activity().iter().map(|e| e.action).collect();
    assert!(
        actions.contains(&Action::ScaleUp) && actions.contains(&Action::ScaleDown),
        "{actions:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_to_zero_serves_the_first_request_after_a_cold_start() {
    let weir = scaling_weir("min_workers = 0\nmax_workers = 2\nmax_idle_time = \"1s\"");
    assert!(weir.workers("app").is_empty());
    let reply = get(weir.addr(), "/").await;
    assert_eq!(reply.status, 200);
    let cold = reply
        .headers
        .get("x-weir-cold-start")
        .expect("cold-start header");
    assert!(cold.to_str().unwrap().ends_with("ms"));
    // Warm now: no header.
    let reply = get(weir.addr(), "/").await;
    assert!(reply.headers.get("x-weir-cold-start").is_none());
    // The launch's cold start is in the metrics.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, metrics) = admin_call(weir.admin(), "GET", "/metrics", None, "").await;
        if metrics.contains("weir_cold_start_seconds_count{pool=\"app\"}") {
            break;
        }
        assert!(Instant::now() < deadline, "no cold-start metric: {metrics}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Idle: back to zero.
    wait_until("scaled to zero", || weir.workers("app").is_empty()).await;
    let reply = get(weir.addr(), "/").await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers.get("x-weir-cold-start").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_process_is_replaced() {
    let weir = scaling_weir("min_workers = 2\nmax_workers = 3");
    wait_until("two ready", || ready(&weir) == 2).await;
    let victim = weir.workers("app")[0].addr;
    let killed = std::process::Command::new("pkill")
        .args(["-KILL", "-f", &format!("listen {victim}")])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_until("replaced", || {
        ready(&weir) == 2 && weir.workers("app").iter().all(|w| w.addr != victim)
    })
    .await;
    assert!(weir.activity().iter().any(|e| e.action == Action::Replace));
    assert_eq!(get(weir.addr(), "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_load_falls_scale_in_follows_max_idle_time() {
    // 8 clients grow the pool to 4 (worker_concurrency 2); then 2 keep going. The stable and
    // panic windows are left at their defaults (60 s and 6 s): max_idle_time governs.
    let weir = scaling_weir("min_workers = 1\nmax_workers = 4\nmax_idle_time = \"2s\"");
    wait_until("first worker ready", || ready(&weir) == 1).await;
    let stop_six = Arc::new(AtomicBool::new(false));
    let stop_two = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let six = clients(&weir, 6, "/?delay=50ms", Duration::ZERO, &stop_six, &done);
    let two = clients(&weir, 2, "/?delay=50ms", Duration::ZERO, &stop_two, &done);
    wait_until("grown to four workers", || ready(&weir) == 4).await;
    stop_six.store(true, Ordering::SeqCst);
    for c in six {
        assert_eq!(c.await.unwrap(), Vec::<String>::new());
    }
    let dropped = Instant::now();
    wait_until("at most three workers", || weir.workers("app").len() <= 3).await;
    let shrunk_after = dropped.elapsed();
    // The burst leaves the 2 s hold window, the surplus idles 2 s, then drains: about 4 s.
    assert!(
        shrunk_after < Duration::from_secs(8),
        "still above three workers {shrunk_after:?} after the drop"
    );
    stop_two.store(true, Ordering::SeqCst);
    for c in two {
        assert_eq!(c.await.unwrap(), Vec::<String>::new(), "no failed request");
    }
    eprintln!("at <= 3 workers {shrunk_after:?} after the load fell from 8 clients to 2");
}
