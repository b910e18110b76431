//! Rollouts: a reload that changes a launchable pool's launch template replaces its workers
//! gradually, under load, with no failed request and no request waiting for a cold worker;
//! a revision whose workers exit at start is rolled back while the old workers serve.

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// How long a worker takes to boot: longer than any answer under load may take.
const BOOT: Duration = Duration::from_millis(1500);

/// A process pool of three demo workers, each running `command` (see [`booting`]).
fn config(command: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
listen = "127.0.0.1:0"
[[routes]]
pool = "app"
queue = {{ timeout = "20s" }}
[pools.app]
worker_concurrency = 4
provider = {{ kind = "process", command = ["sh", "-c", "{command}"] }}
health = {{ path = "/hello", interval = "100ms" }}
[pools.app.autoscale]
min_workers = 3
max_workers = 6
max_idle_time = "10m"
"#
    )
}

fn booting(name: &str) -> String {
    format!(
        "sleep {}; exec {WEIR} demo-worker --listen 127.0.0.1:{{port}} --name {name}",
        BOOT.as_secs_f64()
    )
}

/// One answer as the clients saw it.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    status: u16,
    took: Duration,
    served_by: String,
}

/// `clients` loops asking for a 20 ms answer until `running` flips.
fn load(addr: SocketAddr, clients: usize, running: &Arc<AtomicBool>) -> Arc<Mutex<Vec<Seen>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..clients {
        let (seen, running) = (Arc::clone(&seen), Arc::clone(running));
        tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                let started = Instant::now();
                let reply = get(addr, "/?delay=20ms").await;
                let served_by = reply
                    .headers
                    .get("x-served-by")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                seen.lock().unwrap().push(Seen {
                    at: Instant::now(),
                    status: reply.status.as_u16(),
                    took: started.elapsed(),
                    served_by,
                });
            }
        });
    }
    seen
}

/// A weir on `config` (written to `path`) once its three v1 workers are ready, and 8 clients
/// asking it for answers (see [`load`]) until the flag flips.
async fn loaded(
    config: &str,
    path: &std::path::Path,
) -> (Weir, Arc<AtomicBool>, Arc<Mutex<Vec<Seen>>>) {
    let weir = start_weir_at("", config, Some(path));
    wait_until("three v1 workers ready", || {
        weir.workers("app")
            .iter()
            .filter(|w| w.state() == weir::pool::WorkerState::Ready)
            .count()
            == 3
    })
    .await;
    let running = Arc::new(AtomicBool::new(true));
    let seen = load(weir.addr(), 8, &running);
    tokio::time::sleep(Duration::from_millis(500)).await;
    (weir, running, seen)
}

/// Pool `name` in `GET /api/v1/pools`.
async fn pool_view(weir: &Weir, name: &str) -> serde_json::Value {
    let (_, body) = admin_call(weir.admin(), "GET", "/api/v1/pools", None, "").await;
    let pools: serde_json::Value = serde_json::from_str(&body).unwrap();
    pools
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == name))
        .cloned()
        .unwrap_or_default()
}

/// Pool `name` once its rollout is in `state`.
async fn rollout_ends(weir: &Weir, name: &str, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pool = pool_view(weir, name).await;
        if pool["rollout"]["state"] == state {
            return pool;
        }
        assert!(Instant::now() < deadline, "rollout never {state}: {pool}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Each worker of pool `name` and its state.
fn states(weir: &Weir, name: &str) -> std::collections::HashMap<String, String> {
    weir.workers(name)
        .iter()
        .map(|w| (w.name.clone(), w.state().as_str().to_string()))
        .collect()
}

/// Pool `name`'s workers watched from `since` until its rollout is `state`: every launch,
/// readiness, drain and release since they were `seen`, one line each, at its time after
/// `since`. Returns the timeline and the pool as it ended.
async fn timeline(
    weir: &Weir,
    name: &str,
    state: &str,
    since: Instant,
    mut seen: std::collections::HashMap<String, String>,
) -> (Vec<String>, serde_json::Value) {
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let at = since.elapsed().as_secs_f64();
        let workers = weir.workers(name);
        for w in &workers {
            let now = w.state().as_str().to_string();
            let revision = w.revision().unwrap_or("?");
            match seen.insert(w.name.clone(), now.clone()) {
                None => lines.push(format!(
                    "{at:>6.2}s {} ({revision}) launched, {now}",
                    w.name
                )),
                Some(before) if before != now => {
                    lines.push(format!("{at:>6.2}s {} ({revision}) {now}", w.name))
                }
                _ => {}
            }
        }
        let gone: Vec<String> = seen
            .keys()
            .filter(|n| !workers.iter().any(|w| &w.name == *n))
            .cloned()
            .collect();
        for n in gone {
            seen.remove(&n);
            lines.push(format!("{at:>6.2}s {n} released"));
        }
        let pool = pool_view(weir, name).await;
        if pool["rollout"]["state"] == state {
            return (lines, pool);
        }
        assert!(Instant::now() < deadline, "rollout never {state}: {pool}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn activity(weir: &Weir) -> Vec<serde_json::Value> {
    let (_, body) = admin_call(weir.admin(), "GET", "/api/v1/activity", None, "").await;
    let all: serde_json::Value = serde_json::from_str(&body).unwrap();
    all.as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_pool_rolls_out_a_new_revision_under_load_and_rolls_back_a_broken_one() {
    let path = temp_path("rollout-process.toml");
    let (weir, running, seen) = loaded(&config(&booting("v1")), &path).await;

    // v2: the same pool, a new command.
    std::fs::write(&path, config(&booting("v2"))).unwrap();
    let before = states(&weir, "app");
    let reloaded = Instant::now();
    let (status, body) = admin_call(weir.admin(), "POST", "/api/v1/reload", None, "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("rolling out"), "{body}");
    let (steps, done) = timeline(&weir, "app", "done", reloaded, before).await;
    let rolled = reloaded.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_done = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // v3 exits at start: rolled back, and v2 serves on.
    std::fs::write(&path, config("exit 3")).unwrap();
    let (status, body) = admin_call(weir.admin(), "POST", "/api/v1/reload", None, "").await;
    assert_eq!(status, 200, "{body}");
    let back = rollout_ends(&weir, "app", "rolled_back").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let seen = seen.lock().unwrap().clone();
    let failed: Vec<&Seen> = seen.iter().filter(|s| s.status != 200).collect();
    let slowest = seen.iter().map(|s| s.took).max().unwrap_or_default();
    let v2_at_end = seen
        .iter()
        .filter(|s| s.at > after_done)
        .all(|s| s.served_by == "v2");
    // The clients' waits, by the second after the reload.
    let waits: Vec<String> = (0..6)
        .map(|second| {
            let from = reloaded + Duration::from_secs(second);
            let within: Vec<Duration> = seen
                .iter()
                .filter(|s| s.at >= from && s.at < from + Duration::from_secs(1))
                .map(|s| s.took)
                .collect();
            let worst = within.iter().max().copied().unwrap_or_default();
            format!(
                "{second}-{}s: {} answers, slowest {worst:.0?}",
                second + 1,
                within.len()
            )
        })
        .collect();
    eprintln!(
        "rollout v1 -> v2 under 8 clients: done {rolled:?} after the reload; {} answers, {} failed, slowest {slowest:?} (a worker boots in {BOOT:?}); {done}; then {back}\ntimeline after the reload:\n  {}\nanswers by second after the reload:\n  {}",
        seen.len(),
        failed.len(),
        steps.join("\n  "),
        waits.join("\n  ")
    );
    assert!(
        failed.is_empty(),
        "failed requests: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert!(
        slowest < BOOT,
        "a request waited {slowest:?}: as long as a cold worker's boot ({BOOT:?})"
    );
    assert!(v2_at_end, "every answer after the rollout from v2");
    assert_eq!(back["revision"], done["revision"], "v2's template is back");
    let events = activity(&weir).await;
    let actions: Vec<&str> = events.iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(
        actions.contains(&"rollout") && actions.contains(&"rollback"),
        "{actions:?}"
    );
    let (_, metrics) = admin_call(weir.admin(), "GET", "/metrics", None, "").await;
    for result in ["done", "rolled_back"] {
        assert!(
            metrics.lines().any(|l| l.starts_with("weir_rollouts_total")
                && l.contains("pool=\"app\"")
                && l.contains(&format!("result=\"{result}\""))),
            "{result} in metrics"
        );
    }
    let _ = std::fs::remove_file(&path);
}

/// [`config`] with two canary steps gated on the 5xx rate and p99.
fn canary_config(command: &str) -> String {
    format!(
        r#"{}
[pools.app.rollout]
steps = [{{ weight = 10, hold = "3s" }}, {{ weight = 50, hold = "2s" }}]
max_error_rate = 0.01
max_latency_ratio = 3.0
"#,
        config(command)
    )
}

/// The share of answers from `who` among `seen` within `from..to`, and how many there were.
fn share_of(seen: &[Seen], who: &str, from: Instant, to: Instant) -> (f64, usize) {
    let within: Vec<&Seen> = seen.iter().filter(|s| s.at > from && s.at < to).collect();
    let theirs = within.iter().filter(|s| s.served_by == who).count();
    (theirs as f64 / within.len().max(1) as f64, within.len())
}

/// `(new, old)` answers in a gate verdict's "5xx A% of NEW vs B% of OLD".
fn gate_counts(verdict: &str) -> (f64, f64) {
    let numbers: Vec<f64> = verdict
        .split("5xx ")
        .nth(1)
        .unwrap_or_default()
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter_map(|t| t.parse().ok())
        .collect();
    (
        numbers.get(1).copied().unwrap_or(0.0),
        numbers.get(3).copied().unwrap_or(0.0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_pass_their_gates_at_their_weights_and_a_failing_one_is_rolled_back() {
    let path = temp_path("rollout-canary.toml");
    let (weir, running, seen) = loaded(&canary_config(&booting("v1")), &path).await;

    // v2, healthy: 10% of the requests for 3 s, 50% for 2 s, then the replacement.
    std::fs::write(&path, canary_config(&booting("v2"))).unwrap();
    let reloaded = Instant::now();
    let (status, body) = admin_call(weir.admin(), "POST", "/api/v1/reload", None, "").await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let step_two = loop {
        let pool = pool_view(&weir, "app").await;
        if pool["rollout"]["step"] == 2 {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "never at step 2: {pool}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let done = rollout_ends(&weir, "app", "done").await;
    let rolled = reloaded.elapsed();
    let first_v2 = seen
        .lock()
        .unwrap()
        .iter()
        .find(|s| s.served_by == "v2")
        .map(|s| s.at)
        .expect("v2 answered");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // v3 answers 500 to every fifth request: rolled back at its first gate.
    let v3 = format!(
        "sleep {}; exec {WEIR} demo-worker --listen 127.0.0.1:{{port}} --name v3 --fail-every 5",
        BOOT.as_secs_f64()
    );
    std::fs::write(&path, canary_config(&v3)).unwrap();
    let (status, body) = admin_call(weir.admin(), "POST", "/api/v1/reload", None, "").await;
    assert_eq!(status, 200, "{body}");
    let back = rollout_ends(&weir, "app", "rolled_back").await;
    let rolled_back = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    running.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let seen = seen.lock().unwrap().clone();
    let events = activity(&weir).await;
    let reasons: Vec<String> = events
        .iter()
        .filter(|e| e["action"] == "rollout" || e["action"] == "rollback")
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect();
    let passed: Vec<&String> = reasons.iter().filter(|r| r.contains("passed")).collect();
    let (client_share, within) = share_of(&seen, "v2", first_v2, step_two);
    eprintln!(
        "canary v1 -> v2 under 8 clients: done {rolled:?} after the reload; clients saw {:.1}% of {within} answers from v2 during step 1; {done}\n  {}\nthen {back}",
        client_share * 100.0,
        reasons.join("\n  ")
    );
    assert_eq!(passed.len(), 2, "both steps passed: {reasons:?}");
    for (verdict, weight) in passed.iter().zip([10.0, 50.0]) {
        let (new, old) = gate_counts(verdict);
        let share = new * 100.0 / (new + old).max(1.0);
        assert!(new + old > 100.0, "{verdict}");
        assert!(
            (share - weight).abs() <= 3.0,
            "{share:.1}% to the new revision at a {weight}% step: {verdict}"
        );
    }
    assert!(
        (client_share * 100.0 - 10.0).abs() <= 3.0 && within > 300,
        "clients saw {:.1}% of {within} answers from v2 at the 10% step",
        client_share * 100.0
    );
    let failed: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.status != 200 && !(s.status == 500 && s.served_by == "v3"))
        .collect();
    assert!(
        failed.is_empty(),
        "failed requests: {:?}",
        &failed[..failed.len().min(5)]
    );
    let slowest = seen.iter().map(|s| s.took).max().unwrap_or_default();
    assert!(
        slowest < BOOT,
        "a request waited {slowest:?} ({BOOT:?} to boot)"
    );
    let fail_gate = reasons
        .iter()
        .find(|r| r.contains("canary step 1/2 (10%) failed: 5xx"))
        .unwrap_or_else(|| panic!("no failed gate in {reasons:?}"));
    assert!(
        fail_gate.contains("over the 1.0 points allowed"),
        "{fail_gate}"
    );
    assert_eq!(back["revision"], done["revision"], "v2's template is back");
    assert!(
        seen.iter()
            .filter(|s| s.at > rolled_back + Duration::from_millis(500))
            .all(|s| s.served_by == "v2"),
        "every answer after the rollback from v2"
    );
    assert!(
        seen.iter().filter(|s| s.served_by == "v3").count() > 0,
        "the canary took its share"
    );
    let _ = std::fs::remove_file(&path);
}

/// A Docker pool `pool` of three demo worker containers named `name`.
fn docker_config(pool: &str, name: &str) -> String {
    docker_config_of(pool, name, IMAGE)
}

/// [`docker_config`] with containers of `image`.
fn docker_config_of(pool: &str, name: &str, image: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[[listeners]]
listen = "127.0.0.1:0"
[[routes]]
pool = "{pool}"
queue = {{ timeout = "20s" }}
[pools.{pool}]
worker_concurrency = 4
provider = {{ kind = "docker", image = "{image}", port = 8080, pull = "never", stop_grace = "2s", command = ["--listen", "0.0.0.0:8080", "--name", "{name}"] }}
health = {{ path = "/hello", interval = "100ms" }}
[pools.{pool}.autoscale]
min_workers = 3
max_workers = 6
max_idle_time = "10m"
"#
    )
}

/// Removes, on drop, every container of a pool (a test that fails midway leaves none).
struct Containers(String);

impl Drop for Containers {
    fn drop(&mut self) {
        let names = containers_labelled("weir.pool", &self.0);
        if !names.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f"])
                .args(&names)
                .output();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_pool_rolls_out_a_new_revision_under_load() {
    if !engine_ready("a_docker_pool_rolls_out_a_new_revision_under_load") {
        return;
    }
    let pool = format!("dkroll{}", std::process::id());
    let _cleanup = Containers(pool.clone());
    let path = temp_path("rollout-docker.toml");
    const SERVER: &str = "threads = 2\nshutdown_grace = \"2s\"\n";
    let weir = start_weir_at(SERVER, &docker_config(&pool, "v1"), Some(&path));
    wait_until("three v1 containers ready", || {
        weir.workers(&pool)
            .iter()
            .filter(|w| w.state() == weir::pool::WorkerState::Ready)
            .count()
            == 3
    })
    .await;
    let before = containers_labelled("weir.pool", &pool);
    let running = Arc::new(AtomicBool::new(true));
    let seen = load(weir.addr(), 8, &running);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let v2 = format!("[server]\n{SERVER}{}", docker_config(&pool, "v2"));
    std::fs::write(&path, v2).unwrap();
    let reloaded = Instant::now();
    let (status, body) = admin_call(weir.admin(), "POST", "/api/v1/reload", None, "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("rolling out"), "{body}");
    let done = rollout_ends(&weir, &pool, "done").await;
    let rolled = reloaded.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_done = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    running.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let seen = seen.lock().unwrap().clone();
    let failed: Vec<&Seen> = seen.iter().filter(|s| s.status != 200).collect();
    let slowest = seen.iter().map(|s| s.took).max().unwrap_or_default();
    eprintln!(
        "docker rollout v1 -> v2 under 8 clients: done {rolled:?} after the reload; {} answers, {} failed, slowest {slowest:?}; {done}",
        seen.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "failed requests: {:?}",
        &failed[..failed.len().min(5)]
    );
    assert!(
        seen.iter()
            .filter(|s| s.at > after_done)
            .all(|s| s.served_by == "v2"),
        "every answer after the rollout from v2"
    );
    // Three containers, all new, labelled with the new revision; the old ones removed.
    let wait = Instant::now() + Duration::from_secs(20);
    let now = loop {
        let now = containers_labelled("weir.pool", &pool);
        if now.len() == 3 || Instant::now() > wait {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(now.len(), 3, "{now:?}");
    assert!(
        now.iter().all(|c| !before.contains(c)),
        "{before:?} -> {now:?}"
    );
    let revision = done["revision"].as_str().unwrap_or_default().to_string();
    for container in &now {
        let label = std::process::Command::new("docker")
            .args([
                "inspect",
                "--format",
                "{{index .Config.Labels \"weir.revision\"}}",
                container,
            ])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), revision);
    }
    drop(weir);
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weir_killed_mid_rollout_to_a_new_image_is_restarted_and_finishes_it() {
    if !engine_ready("a_weir_killed_mid_rollout_to_a_new_image_is_restarted_and_finishes_it") {
        return;
    }
    let pool = format!("dkresume{}", std::process::id());
    let _cleanup = Containers(pool.clone());
    let path = temp_path("rollout-resume.toml");
    const SERVER: &str = "[server]\nthreads = 1\nshutdown_grace = \"2s\"\n";
    std::fs::write(&path, format!("{SERVER}{}", docker_config(&pool, "v1"))).unwrap();
    let mut first = run_weir(&path);
    let ready = |admin: SocketAddr, name: &'static str| async move {
        let (_, body) = admin_call(admin, "GET", "/api/v1/workers", None, "").await;
        let workers: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let _ = name;
        workers
            .as_array()
            .map(|all| {
                all.iter()
                    .filter(|w| w["state"] == "ready")
                    .filter_map(|w| w["revision"].as_str().map(str::to_string))
                    .collect::<Vec<String>>()
            })
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready(first.admin, "v1").await.len() < 3 {
        assert!(Instant::now() < deadline, "three v1 containers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v1 = ready(first.admin, "v1").await[0].clone();

    // The rollout to a new image starts (the old image's containers belong to another owner
    // label: the new ones name it); the weir is killed as soon as one new container is ready.
    let image = format!("{IMAGE}-rollout");
    let tagged = std::process::Command::new("docker")
        .args(["tag", IMAGE, &image])
        .status()
        .unwrap();
    assert!(tagged.success(), "docker tag {IMAGE} {image}");
    std::fs::write(
        &path,
        format!("{SERVER}{}", docker_config_of(&pool, "v2", &image)),
    )
    .unwrap();
    let (status, body) = admin_call(first.admin, "POST", "/api/v1/reload", None, "").await;
    assert_eq!(status, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready(first.admin, "v2").await.iter().any(|r| *r != v1) {
        assert!(Instant::now() < deadline, "a v2 container ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.child.0.kill().unwrap();
    first.child.0.wait().unwrap();
    let left = containers_labelled("weir.pool", &pool);

    // The next weir adopts both revisions' containers and finishes the rollout.
    let second = run_weir(&path);
    let deadline = Instant::now() + Duration::from_secs(60);
    let finished = loop {
        let revisions = ready(second.admin, "v2").await;
        // Running ones: a container whose release the kill cut short may be left exited
        // until the provider next lists the pool.
        let containers = crate::hosts::running_workers(&pool);
        if revisions.len() == 3 && revisions.iter().all(|r| *r != v1) && containers.len() == 3 {
            break containers;
        }
        if Instant::now() >= deadline {
            let (_, workers) = admin_call(second.admin, "GET", "/api/v1/workers", None, "").await;
            let (_, activity) = admin_call(second.admin, "GET", "/api/v1/activity", None, "").await;
            let states = std::process::Command::new("docker")
                .args([
                    "ps",
                    "-a",
                    "--filter",
                    &format!("label=weir.pool={pool}"),
                    "--format",
                    "{{.Names}} {{.Status}} {{.Labels}}",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            panic!("the rollout did not finish after the restart: {revisions:?}, {containers:?}\n{workers}\n{activity}\n{states}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("killed mid-rollout with {left:?}; the restarted weir finished with {finished:?}");
    assert!(left.len() > 3 || left.iter().any(|c| !finished.contains(c)));
    let reply = get(second.addr, "/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply
            .headers
            .get("x-served-by")
            .and_then(|v| v.to_str().ok()),
        Some("v2")
    );
    let (_, activity) = admin_call(second.admin, "GET", "/api/v1/activity", None, "").await;
    assert!(activity.contains("carried on"), "{activity}");
    for name in &finished {
        assert_eq!(
            crate::hosts::label_of(name, "weir.owner"),
            format!("{pool}@{image}")
        );
    }
    drop(second);
    let _ = std::fs::remove_file(&path);
}

/// `POST /api/v1/pools/app/rollout` with `action`: (status, body).
async fn steer(weir: &Weir, action: &str) -> (u16, serde_json::Value) {
    let (status, body) = admin_call(
        weir.admin(),
        "POST",
        "/api/v1/pools/app/rollout",
        None,
        &format!("{{\"action\": \"{action}\"}}"),
    )
    .await;
    (
        status.as_u16(),
        serde_json::from_str(&body).unwrap_or_default(),
    )
}

/// The revisions of the pool's workers, sorted.
fn revisions(weir: &Weir) -> Vec<String> {
    let mut all: Vec<String> = weir
        .workers("app")
        .iter()
        .filter_map(|w| w.revision().map(str::to_string))
        .collect();
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_pauses_resumes_aborts_and_undoes_rollouts() {
    let path = temp_path("rollout-steer.toml");
    let fast =
        |name: &str| format!("exec {WEIR} demo-worker --listen 127.0.0.1:{{port}} --name {name}");
    // Every rollout's start and end and every rollback is posted to the webhook.
    let (hook, posted) = crate::alerts::receiver().await;
    let alert = format!("[[alerts]]\nkind = \"rollout\"\nwebhook = \"http://{hook}/rollout\"\n");
    let pool =
        |name: &str| config(&fast(name)).replace("min_workers = 3", "min_workers = 2") + &alert;
    let weir = start_weir_at("", &pool("v1"), Some(&path));
    wait_until("two v1 workers ready", || {
        weir.workers("app")
            .iter()
            .filter(|w| w.state() == weir::pool::WorkerState::Ready)
            .count()
            == 2
    })
    .await;
    let v1 = revisions(&weir)[0].clone();
    let (status, _) = steer(&weir, "pause").await;
    assert_eq!(status, 404, "no rollout yet");

    // Paused at once: it holds where it is (a first new worker may have started).
    std::fs::write(&path, pool("v2")).unwrap();
    let (status, body) = admin_call(weir.admin(), "POST", "/api/v1/reload", None, "").await;
    assert_eq!(status, 200, "{body}");
    let (status, view) = steer(&weir, "pause").await;
    assert_eq!(
        (status, view["state"].as_str()),
        (200, Some("paused")),
        "{view}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = revisions(&weir);
    assert!(
        held.iter().filter(|r| **r != v1).count() <= 1,
        "paused: no more new workers: {held:?}"
    );
    assert!(held.iter().filter(|r| **r == v1).count() >= 1, "{held:?}");
    let (status, _) = steer(&weir, "pause").await;
    assert_eq!(status, 409, "already paused");
    let (status, view) = steer(&weir, "resume").await;
    assert_eq!(
        (status, view["state"].as_str()),
        (200, Some("running")),
        "{view}"
    );
    rollout_ends(&weir, "app", "done").await;
    let v2 = revisions(&weir)[0].clone();
    assert_ne!(v2, v1);

    // Undone: v1 rolled out again, from the template kept for it.
    let (status, view) = steer(&weir, "undo").await;
    assert_eq!(
        (status, view["to"].as_str()),
        (200, Some(v1.as_str())),
        "{view}"
    );
    rollout_ends(&weir, "app", "done").await;
    wait_until("every worker of v1 again", || {
        revisions(&weir) == vec![v1.clone(), v1.clone()]
    })
    .await;

    // Aborted: v3's workers go and v1 stays.
    std::fs::write(&path, pool("v3")).unwrap();
    let (status, body) = admin_call(weir.admin(), "POST", "/api/v1/reload", None, "").await;
    assert_eq!(status, 200, "{body}");
    let (status, view) = steer(&weir, "abort").await;
    assert_eq!(
        (status, view["state"].as_str()),
        (200, Some("aborted")),
        "{view}"
    );
    wait_until("only v1 workers", || {
        revisions(&weir) == vec![v1.clone(), v1.clone()]
    })
    .await;
    assert_eq!(
        pool_view(&weir, "app").await["revision"],
        v1.as_str(),
        "the old template is back"
    );
    let (status, _) = steer(&weir, "jump").await;
    assert_eq!(status, 400);
    wait_until("the rollouts and the abort posted", || {
        let posted = posted.lock().unwrap();
        posted
            .iter()
            .any(|t| t.contains(" rollout ") && t.contains(": done"))
            && posted
                .iter()
                .any(|t| t.contains(" rollback ") && t.contains("aborted"))
    })
    .await;
    // The CLI says the same.
    let admin = format!("http://{}", weir.admin());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(WEIR)
            .args(["rollout", "app", "--admin", &admin])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.starts_with(&format!("app: rollout {v1} -> ")),
        "{text}"
    );
    assert!(text.contains(" aborted: "), "{text}");
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_split_between_pools_by_weight_moves_live_with_a_reload() {
    let (blue, green) = (demo("blue").await, demo("green").await);
    let text = |blue_weight: u32, green_weight: u32| {
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n\
             [[routes]]\npools = [{{ pool = \"blue\", weight = {blue_weight} }}, {{ pool = \"green\", weight = {green_weight} }}]\n\
             [pools.blue]\nprovider = {{ kind = \"static\", addresses = [\"{blue}\"] }}\n\
             [pools.green]\nprovider = {{ kind = \"static\", addresses = [\"{green}\"] }}\n"
        )
    };
    let path = temp_path("split.toml");
    let weir = start_weir_at("", &text(90, 10), Some(&path));
    wait_until("both pools ready", || {
        ["blue", "green"].iter().all(|p| {
            weir.workers(p)
                .iter()
                .any(|w| w.state() == weir::pool::WorkerState::Ready)
        })
    })
    .await;
    let share_of_green = |n: usize| {
        let addr = weir.addr();
        async move {
            let mut client = Client::connect(addr).await;
            let mut green = 0;
            for _ in 0..n {
                let reply = client.get("/").await;
                assert_eq!(reply.status, 200);
                if reply
                    .headers
                    .get("x-served-by")
                    .and_then(|v| v.to_str().ok())
                    == Some("green")
                {
                    green += 1;
                }
            }
            green as f64 * 100.0 / n as f64
        }
    };
    let first = share_of_green(2000).await;
    std::fs::write(
        &path,
        format!(
            "[server]\nthreads = 2\nshutdown_grace = \"200ms\"\n{}",
            text(50, 50)
        ),
    )
    .unwrap();
    let (status, body) = admin_call(weir.admin(), "POST", "/api/v1/reload", None, "").await;
    assert_eq!(status, 200, "{body}");
    let second = share_of_green(2000).await;
    eprintln!(
        "green's share: {first:.1} % of 2,000 at 90/10, then {second:.1} % of 2,000 at 50/50"
    );
    assert!((first - 10.0).abs() <= 3.0, "90/10: green had {first} %");
    assert!((second - 50.0).abs() <= 3.0, "50/50: green had {second} %");
    let _ = std::fs::remove_file(&path);
}
