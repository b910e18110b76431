//! A worker process killed under load: in-flight and new GETs are retried on the surviving
//! worker, and no client sees an error.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use weir::pool::WorkerState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_fails_no_get() {
    let (victim, victim_addr) = demo_process("victim");
    let (_survivor, survivor_addr) = demo_process("survivor");
    let weir = start_simple("", "", &[victim_addr, survivor_addr]);
    let workers = weir.workers("app");
    wait_until("both ready", || {
        workers.iter().all(|w| w.state() == WorkerState::Ready)
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..16 {
        let (addr, stop, done) = (weir.addr(), Arc::clone(&stop), Arc::clone(&done));
        clients.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let reply = client.get("/?delay=20ms").await;
                if reply.status != 200 {
                    failures.push((reply.status, reply.text()));
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    wait_until("load running", || done.load(Ordering::Relaxed) > 200).await;
    let mut victim = victim;
    victim.0.kill().unwrap(); // SIGKILL
    victim.0.wait().unwrap();
    let at_kill = done.load(Ordering::Relaxed);
    wait_until("load continues after the kill", || {
        done.load(Ordering::Relaxed) > at_kill + 300
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let failures = client.await.unwrap();
        assert!(failures.is_empty(), "{failures:?}");
    }
    wait_until("victim ejected", || {
        workers[0].state() == WorkerState::Unhealthy
    })
    .await;
}
