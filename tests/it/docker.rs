//! The Docker provider against the real engine at /var/run/docker.sock, with the test image
//! `.ci/test-image` builds from this repo (`weir-demo:dev`, no registry involved; built by the
//! first test that needs it when it is missing). Without an engine a test fails, or with
//! `WEIR_ALLOW_SKIP=1` (set by `.ci/test`) is listed as skipped.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use weir::pool::WorkerState;

/// Wait until no container of `pool` is left, running or not.
async fn all_removed(pool: &str) {
    let deadline = Instant::now() + DEADLINE;
    while !containers_labelled("weir.pool", pool).is_empty() {
        assert!(
            Instant::now() < deadline,
            "containers of {pool} left behind"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A scale-from-zero pool whose provider line is `provider`: the first request's answer and
/// the reason of the launch failure it must meet.
async fn first_launch_failure(pool: &str, provider: &str) -> (Weir, String) {
    let weir = start_weir(
        "",
        &format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"{pool}\"\n[pools.{pool}]\n{provider}\n[pools.{pool}.autoscale]\nmin_workers = 0\nmax_workers = 1\n"
        ),
    );
    let reason = first_request_meets_a_launch_failure(&weir).await;
    (weir, reason)
}

/// A weir with one Docker pool of `concurrency`-slot containers of the test image.
fn docker_weir(pool: &str, concurrency: u32, autoscale: &str, provider_extra: &str) -> Weir {
    start_weir(
        "shutdown_grace = \"5s\"\n",
        &format!(
            r#"
[[listeners]]
listen = "127.0.0.1:0"
[[routes]]
pool = "{pool}"
queue = {{ timeout = "20s" }}
[pools.{pool}]
worker_concurrency = {concurrency}
provider = {{ kind = "docker", image = "{IMAGE}", port = 8080, stop_grace = "2s", pull = "never"{provider_extra} }}
health = {{ path = "/hello", interval = "200ms" }}
[pools.{pool}.autoscale]
{autoscale}
"#
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_launch_serve_and_are_removed_on_release() {
    if !engine_ready("containers_launch_serve_and_are_removed_on_release") {
        return;
    }
    let pool = format!("dk{}", std::process::id());
    let mut weir = docker_weir(&pool, 4, "min_workers = 2\nmax_workers = 3", "");
    let started = Instant::now();
    wait_until("two containers ready", || {
        weir.workers(&pool)
            .iter()
            .filter(|w| w.state() == WorkerState::Ready)
            .count()
            == 2
    })
    .await;
    eprintln!("two containers ready {:?} after start", started.elapsed());
    let names = containers_labelled("weir.pool", &pool);
    assert_eq!(names.len(), 2, "{names:?}");
    let mut served = Vec::new();
    let mut client = Client::connect(weir.addr()).await;
    for _ in 0..20 {
        let reply = client.get("/").await;
        assert_eq!(reply.status, 200);
        served.push(reply.headers["x-served-by"].to_str().unwrap().to_string());
    }
    served.sort();
    served.dedup();
    assert!(!served.is_empty());
    // The ids weir shows are the containers' names.
    let mut ids: Vec<String> = weir.workers(&pool).iter().map(|w| w.name.clone()).collect();
    ids.sort();
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(ids, expected);
    weir.stop();
    all_removed(&pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_a_clear_launch_failure_and_a_503() {
    if !engine_ready("a_missing_image_is_a_clear_launch_failure_and_a_503") {
        return;
    }
    let pool = format!("dkmissing{}", std::process::id());
    let provider = "provider = { kind = \"docker\", image = \"weir-no-such-image:never\", port = 8080, pull = \"never\" }";
    let (_weir, reason) = first_launch_failure(&pool, provider).await;
    assert!(
        reason.contains("weir-no-such-image:never") && reason.contains("never"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_container_is_noticed_and_replaced() {
    if !engine_ready("a_killed_container_is_noticed_and_replaced") {
        return;
    }
    let pool = format!("dkkill{}", std::process::id());
    let mut weir = docker_weir(&pool, 4, "min_workers = 1\nmax_workers = 2", "");
    let ready = |weir: &Weir| {
        weir.workers(&pool)
            .iter()
            .filter(|w| w.state() == WorkerState::Ready)
            .map(|w| w.name.clone())
            .collect::<Vec<_>>()
    };
    wait_until("one container ready", || ready(&weir).len() == 1).await;
    let victim = ready(&weir).remove(0);
    let killed = Command::new("docker")
        .args(["kill", &victim])
        .output()
        .expect("docker kill");
    assert!(killed.status.success(), "{killed:?}");
    wait_until("replaced by another container", || {
        let now = ready(&weir);
        now.len() == 1 && now[0] != victim
    })
    .await;
    let events = weir.activity();
    let replaced = events
        .iter()
        .find(|e| e.action == weir::scale::Action::Replace && e.reason.contains(&victim))
        .expect("the exit is in the activity log");
    assert!(
        replaced.reason.contains("exit code 137") && replaced.reason.contains("oom_killed false"),
        "{}",
        replaced.reason
    );
    assert_eq!(get(weir.addr(), "/").await.status, 200);
    weir.stop();
    all_removed(&pool).await;
}

#[test]
fn a_restarted_weir_adopts_its_running_containers() {
    if !engine_ready("a_restarted_weir_adopts_its_running_containers") {
        return;
    }
    let pool = format!("dkadopt{}", std::process::id());
    let config = temp_path("docker-adopt.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nthreads = 1\nshutdown_grace = \"2s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"{pool}\"\n[pools.{pool}]\n\
             revision = \"v7\"\n\
             provider = {{ kind = \"docker\", image = \"{IMAGE}\", port = 8080, stop_grace = \"2s\", pull = \"never\" }}\n\
             health = {{ path = \"/hello\", interval = \"200ms\" }}\n\
             [pools.{pool}.autoscale]\nmin_workers = 2\nmax_workers = 3\n"
        ),
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut first = run_weir(&config);
    let ids = runtime.block_on(wait_ready_ids(first.admin, 2));
    first.child.0.kill().unwrap();
    first.child.0.wait().unwrap();
    let mut left = containers_labelled("weir.pool", &pool);
    left.sort();
    assert_eq!(left, ids, "the containers outlive a SIGKILLed weir");

    let mut second = run_weir(&config);
    let (proxy, admin) = (second.addr, second.admin);
    assert_eq!(
        runtime.block_on(wait_ready_ids(admin, 2)),
        ids,
        "the same containers, adopted"
    );
    let mut now = containers_labelled("weir.pool", &pool);
    now.sort();
    assert_eq!(now, ids, "none launched twice");
    runtime.block_on(async {
        assert_eq!(get(proxy, "/").await.status, 200);
        // Each container carries the revision it was launched with, read back on adoption.
        let (_, body) = admin_call(admin, "GET", "/api/v1/workers", None, "").await;
        let workers: serde_json::Value = serde_json::from_str(&body).unwrap();
        let revisions: Vec<&str> = workers
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|w| w["revision"].as_str())
            .collect();
        assert_eq!(revisions, ["v7", "v7"], "{body}");
    });
    let label = Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{index .Config.Labels \"weir.revision\"}}",
            &ids[0],
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), "v7");
    // An adopted container is watched like a launched one: its exit is noticed and replaced.
    let killed = Command::new("docker")
        .args(["kill", &ids[0]])
        .output()
        .expect("docker kill");
    assert!(killed.status.success(), "{killed:?}");
    runtime.block_on(async {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let (_, activity) = admin_call(admin, "GET", "/api/v1/activity", None, "").await;
            if activity.contains(&format!("{}: container exited: exit code 137", ids[0])) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the adopted container's exit: {activity}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let now = wait_ready_ids(admin, 2).await;
        assert!(!now.contains(&ids[0]), "{now:?}");
    });
    let status = Command::new("kill")
        .args(["-TERM", &second.child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + DEADLINE;
    while second.child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "weir did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        containers_labelled("weir.pool", &pool).is_empty(),
        "released on SIGTERM"
    );
    let _ = std::fs::remove_file(&config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_engine_is_a_clear_failure_and_a_readyz_reason() {
    // Needs no engine: the endpoint names a socket that does not exist.
    let pool = format!("dkgone{}", std::process::id());
    let provider = format!("provider = {{ kind = \"docker\", image = \"{IMAGE}\", port = 8080, endpoint = \"unix:///nonexistent/docker.sock\" }}");
    let (weir, reason) = first_launch_failure(&pool, &provider).await;
    assert!(
        reason.contains("docker engine unreachable at unix:///nonexistent/docker.sock"),
        "{reason}"
    );
    let (status, body) = admin_call(weir.admin(), "GET", "/readyz", None, "").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!("pool {pool}: docker engine unreachable")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_scales_containers_1_to_3_to_1_without_a_failed_request() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    if !engine_ready("load_scales_containers_1_to_3_to_1_without_a_failed_request") {
        return;
    }
    let pool = format!("dkscale{}", std::process::id());
    let mut weir = docker_weir(
        &pool,
        2,
        "min_workers = 1\nmax_workers = 3\nmax_idle_time = \"1s\"",
        "",
    );
    let ready = |weir: &Weir| {
        weir.workers(&pool)
            .iter()
            .filter(|w| w.state() == WorkerState::Ready)
            .count()
    };
    wait_until("one container ready", || ready(&weir) == 1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = looping_clients(weir.addr(), 8, "/?delay=50ms", &stop);
    let loaded = Instant::now();
    wait_until("three containers ready", || ready(&weir) == 3).await;
    eprintln!(
        "1 -> 3 ready containers in {:?} under load",
        loaded.elapsed()
    );
    stop.store(true, Ordering::SeqCst);
    assert_eq!(
        failures_of(clients).await,
        Vec::<http::StatusCode>::new(),
        "no failed request"
    );
    let quiet = Instant::now();
    wait_until("back to one container", || {
        containers_labelled("weir.pool", &pool).len() == 1
    })
    .await;
    eprintln!("3 -> 1 containers {:?} after the load", quiet.elapsed());
    weir.stop();
    all_removed(&pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_from_zero_pool_serves_its_first_request_from_a_new_container() {
    if !engine_ready("a_scale_from_zero_pool_serves_its_first_request_from_a_new_container") {
        return;
    }
    let pool = format!("dkzero{}", std::process::id());
    let mut weir = docker_weir(&pool, 4, "min_workers = 0\nmax_workers = 1", "");
    assert!(containers_labelled("weir.pool", &pool).is_empty());
    let asked = Instant::now();
    let reply = tokio::time::timeout(DEADLINE, get(weir.addr(), "/"))
        .await
        .expect("no hang");
    assert_eq!(reply.status, 200, "the first request waits for a container");
    eprintln!(
        "cold start at min_workers = 0: first response {:?} after the request",
        asked.elapsed()
    );
    let names = containers_labelled("weir.pool", &pool);
    assert_eq!(names.len(), 1, "{names:?}");
    weir.stop();
    all_removed(&pool).await;
}

/// A socket proxy in front of the real engine, as teams run one to limit what a client may do:
/// every request is passed on to /var/run/docker.sock, except those `deny` answers itself.
struct EngineProxy {
    path: std::path::PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl EngineProxy {
    async fn start(
        name: &str,
        deny: fn(&http::Method, &str) -> Option<(u16, &'static str)>,
    ) -> Self {
        use http_body_util::{Either, Full};
        use hyper::body::{Bytes, Incoming};
        use hyper_util::rt::TokioIo;
        let path = temp_path(name);
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).expect("bind the proxy socket");
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let service = hyper::service::service_fn(
                    move |mut req: http::Request<Incoming>| async move {
                        if let Some((status, message)) = deny(req.method(), req.uri().path()) {
                            let body =
                                Full::new(Bytes::from(format!("{{\"message\":\"{message}\"}}")));
                            let mut reply = http::Response::new(Either::Left(body));
                            *reply.status_mut() =
                                http::StatusCode::from_u16(status).expect("a status");
                            return Ok::<_, hyper::Error>(reply);
                        }
                        let target = req
                            .uri()
                            .path_and_query()
                            .map_or("/", |p| p.as_str())
                            .to_string();
                        *req.uri_mut() = target.parse().expect("a path");
                        req.headers_mut()
                            .entry(http::header::HOST)
                            .or_insert(http::HeaderValue::from_static("docker"));
                        let engine = tokio::net::UnixStream::connect("/var/run/docker.sock")
                            .await
                            .expect("the engine's socket");
                        let (mut sender, conn) =
                            hyper::client::conn::http1::handshake(TokioIo::new(engine)).await?;
                        tokio::spawn(conn);
                        Ok(sender.send_request(req).await?.map(Either::Right))
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        EngineProxy { path, task }
    }

    fn endpoint(&self) -> String {
        format!("unix://{}", self.path.display())
    }
}

impl Drop for EngineProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_that_cannot_be_created_is_a_clear_launch_failure() {
    if !engine_ready("a_network_that_cannot_be_created_is_a_clear_launch_failure") {
        return;
    }
    let pool = format!("dknet{}", std::process::id());
    let proxy = EngineProxy::start("docker-no-networks.sock", |method, path| {
        (method == http::Method::POST && path.ends_with("/networks/create"))
            .then_some((403, "network creation is not allowed through this socket"))
    })
    .await;
    let network = format!("weirdenied{}", std::process::id());
    let provider = format!(
        "provider = {{ kind = \"docker\", image = \"{IMAGE}\", port = 8080, pull = \"never\", network = \"{network}\", endpoint = \"{}\" }}",
        proxy.endpoint()
    );
    let (mut weir, reason) = first_launch_failure(&pool, &provider).await;
    assert!(
        reason.contains(&format!(
            "network {network} is missing and cannot be created"
        )) && reason.contains("not allowed through this socket"),
        "{reason}"
    );
    weir.stop();
    all_removed(&pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_exits_during_start_is_a_launch_failure_and_a_503() {
    if !engine_ready("a_container_that_exits_during_start_is_a_launch_failure_and_a_503") {
        return;
    }
    let pool = format!("dkexit{}", std::process::id());
    // The demo worker rejects an unknown flag with exit code 2, at once.
    let provider = format!(
        "provider = {{ kind = \"docker\", image = \"{IMAGE}\", port = 8080, pull = \"never\", command = [\"--no-such-flag\"] }}"
    );
    let (mut weir, reason) = first_launch_failure(&pool, &provider).await;
    assert!(reason.contains("exit code 2"), "{reason}");
    weir.stop();
    all_removed(&pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_weirs_with_one_pool_name_never_touch_each_others_containers() {
    if !engine_ready("two_weirs_with_one_pool_name_never_touch_each_others_containers") {
        return;
    }
    let other = "weir-demo:other-owner";
    let tagged = Command::new("docker")
        .args(["tag", IMAGE, other])
        .output()
        .expect("docker tag");
    assert!(tagged.status.success(), "{tagged:?}");
    let pool = format!("dktwo{}", std::process::id());
    let ready = |weir: &Weir| {
        weir.workers(&pool)
            .iter()
            .filter(|w| w.state() == WorkerState::Ready)
            .map(|w| w.name.clone())
            .collect::<Vec<_>>()
    };
    let mut first = docker_weir(&pool, 4, "min_workers = 1\nmax_workers = 1", "");
    wait_until("the first weir's container", || ready(&first).len() == 1).await;
    // Same pool name, another image: another owner. Its container gets a name of its own
    // and its start adopts nothing of the first's.
    let mut second = start_weir(
        "shutdown_grace = \"5s\"\n",
        &format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"{pool}\"\n[pools.{pool}]\n\
             provider = {{ kind = \"docker\", image = \"{other}\", port = 8080, stop_grace = \"2s\", pull = \"never\" }}\n\
             health = {{ path = \"/hello\", interval = \"200ms\" }}\n\
             [pools.{pool}.autoscale]\nmin_workers = 1\nmax_workers = 1\n"
        ),
    );
    wait_until("the second weir's container", || ready(&second).len() == 1).await;
    let (a, b) = (ready(&first).remove(0), ready(&second).remove(0));
    assert_ne!(a, b);
    assert_eq!(get(first.addr(), "/").await.status, 200);
    assert_eq!(get(second.addr(), "/").await.status, 200);
    first.stop();
    let left = containers_labelled("weir.pool", &pool);
    assert_eq!(
        left,
        vec![b.clone()],
        "only the first weir's container went"
    );
    assert_eq!(ready(&second), vec![b]);
    second.stop();
    all_removed(&pool).await;
    let _ = Command::new("docker").args(["rmi", other]).output();
}
