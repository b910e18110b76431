//! Adoption after a restart, with the real binary: an exec pool whose commands start detached
//! demo workers and list them; weir is SIGKILLed; a new weir on the same config adopts and
//! serves through the same two workers with no new launch, and its SIGTERM releases them.

use crate::common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{exec_provider, file_lines, pid_alive, run_weir, wait_ready_ids, DEADLINE};

/// The demo workers' names seen serving `n` requests.
async fn served_by(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut client = common::Client::connect(addr).await;
    let mut names = Vec::new();
    for _ in 0..n {
        let reply = client.get("/").await;
        assert_eq!(reply.status, 200);
        names.push(reply.served_by());
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn a_restarted_weir_adopts_the_workers_it_launched_and_releases_them_on_sigterm() {
    let dir: PathBuf = common::temp_path("adoption");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nthreads = 1\nshutdown_grace = \"2s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\n[pools.app]\n{}\n\
             health = {{ path = \"/hello\", interval = \"200ms\" }}\n\
             [pools.app.autoscale]\nmin_workers = 2\nmax_workers = 4\n",
            exec_provider(&dir, "")
        ),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut first = run_weir(&config);
    let ids = runtime.block_on(wait_ready_ids(first.admin, 2));
    assert_eq!(file_lines(&dir.join("launches")).len(), 2);
    let pids: Vec<String> = ids
        .iter()
        .map(|id| std::fs::read_to_string(dir.join(format!("{id}.pid"))).unwrap())
        .map(|p| p.trim().to_string())
        .collect();

    // SIGKILL: no shutdown, the workers are left running.
    first.child.0.kill().unwrap();
    first.child.0.wait().unwrap();
    assert!(pids.iter().all(|p| pid_alive(p)), "workers outlived weir");

    let mut second = run_weir(&config);
    let adopted = runtime.block_on(wait_ready_ids(second.admin, 2));
    assert_eq!(adopted, ids, "the same two workers, by their provider ids");
    let names = runtime.block_on(served_by(second.addr, 20));
    assert_eq!(names, ids, "requests reach the adopted workers");
    assert_eq!(
        file_lines(&dir.join("launches")).len(),
        2,
        "nothing new was launched"
    );
    let (_, activity) = runtime.block_on(common::admin_call(
        second.admin,
        "GET",
        "/api/v1/activity",
        None,
        "",
    ));
    assert!(activity.contains("\"adopt\""), "{activity}");

    // SIGTERM releases both.
    let status = Command::new("kill")
        .args(["-TERM", &second.child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + DEADLINE;
    let exit = loop {
        if let Some(exit) = second.child.0.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "weir did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(exit.success(), "{exit:?}");
    let mut released = file_lines(&dir.join("releases"));
    released.sort();
    assert_eq!(released, ids);
    let deadline = Instant::now() + DEADLINE;
    while pids.iter().any(|p| pid_alive(p)) {
        assert!(Instant::now() < deadline, "released workers still running");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(second.stderr);
    let _ = std::fs::remove_dir_all(&dir);
}
