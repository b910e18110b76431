//! Several weir instances as one fleet through a real Redis (Debian's redis-server, started
//! here on a loopback port; `.ci/run` installs it): one leader, failover after a SIGKILL within
//! `lease_ttl` + 1 s, and a Redis that goes away and comes back empty.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// A redis-server on a free loopback port, killed on drop.
struct Redis {
    port: u16,
    child: Option<Reaped>,
}

impl Redis {
    /// A fresh redis-server, or `None` (the test says it was skipped) when the machine has
    /// none, unless `WEIR_REQUIRE_REDIS=1` (set by `.ci/run`) makes that a failure.
    fn start_for(test: &str) -> Option<Redis> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            if std::env::var("WEIR_REQUIRE_REDIS").as_deref() == Ok("1") {
                panic!("{test}: redis-server is not installed (apt-get install redis-server)");
            }
            eprintln!("{test}: skipped: redis-server is not installed");
            return None;
        }
        Some(Redis::start())
    }

    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut redis = Redis { port, child: None };
        redis.restart();
        redis
    }

    /// Start (again) on the same port, empty: no persistence.
    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        self.child = Some(Reaped(child));
        let deadline = Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.0.kill();
            let _ = child.0.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A weir binary in fleet `prefix` as `name`, in front of the static `worker`.
fn instance(redis: &Redis, prefix: &str, name: &str, worker: SocketAddr) -> Running {
    instance_with(redis, prefix, name, worker, "")
}

/// [`instance`] with more keys for the pool.
fn instance_with(
    redis: &Redis,
    prefix: &str,
    name: &str,
    worker: SocketAddr,
    pool_keys: &str,
) -> Running {
    let config = temp_path(&format!("fleet-{prefix}-{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[server]\nthreads = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n\
             [[routes]]\npool = \"app\"\n[pools.app]\n{pool_keys}\nprovider = {{ kind = \"static\", addresses = [\"{worker}\"] }}\n\
             [cluster]\nredis = \"{}\"\nname = \"{name}\"\nprefix = \"{prefix}\"\nlease_ttl = \"1s\"\n",
            redis.url()
        ),
    )
    .unwrap();
    run_weir(&config)
}

/// `GET /api/v1/cluster` at `admin`.
async fn cluster(admin: SocketAddr) -> serde_json::Value {
    let (_, body) = admin_call(admin, "GET", "/api/v1/cluster", None, "").await;
    serde_json::from_str(&body).unwrap_or_default()
}

/// The leader every one of `admins` names once they agree on one and see `instances`.
async fn agreed_leader(admins: &[SocketAddr], instances: usize) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut views = Vec::new();
        for admin in admins {
            views.push(cluster(*admin).await);
        }
        let leaders: Vec<Option<&str>> = views.iter().map(|v| v["leader"].as_str()).collect();
        let counts: Vec<usize> = views
            .iter()
            .map(|v| v["instances"].as_array().map_or(0, Vec::len))
            .collect();
        if let Some(Some(leader)) = leaders.first() {
            if leaders.iter().all(|l| l == &Some(*leader)) && counts.iter().all(|c| *c == instances)
            {
                return leader.to_string();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader among {instances}: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_agree_on_one_leader_and_fail_over_after_a_sigkill() {
    let Some(redis) =
        Redis::start_for("three_instances_agree_on_one_leader_and_fail_over_after_a_sigkill")
    else {
        return;
    };
    let (_worker, worker) = demo_process("fleet-a");
    let prefix = format!("fleet{}", std::process::id());
    let mut fleet: Vec<(String, Running)> = ["weir-a", "weir-b", "weir-c"]
        .iter()
        .map(|name| (name.to_string(), instance(&redis, &prefix, name, worker)))
        .collect();
    let admins: Vec<SocketAddr> = fleet.iter().map(|(_, r)| r.admin).collect();
    let leader = agreed_leader(&admins, 3).await;
    let view = cluster(admins[0]).await;
    let leading: Vec<&str> = view["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["leader"] == true)
        .filter_map(|i| i["name"].as_str())
        .collect();
    assert_eq!(leading, vec![leader.as_str()], "exactly one leader: {view}");
    let metrics = |admin| async move {
        let (_, body) = admin_call(admin, "GET", "/metrics", None, "").await;
        body
    };
    let leader_index = fleet.iter().position(|(n, _)| *n == leader).unwrap();
    assert!(metrics(admins[leader_index])
        .await
        .contains("weir_cluster_leader 1"));
    assert!(metrics(admins[leader_index])
        .await
        .contains("weir_cluster_instances 3"));

    let (_, mut dead) = fleet.remove(leader_index);
    let killed = Instant::now();
    dead.child.0.kill().unwrap();
    dead.child.0.wait().unwrap();
    let survivors: Vec<SocketAddr> = fleet.iter().map(|(_, r)| r.admin).collect();
    let deadline = Instant::now() + DEADLINE;
    let next = loop {
        let view = cluster(survivors[0]).await;
        if let Some(l) = view["leader"].as_str() {
            if l != leader {
                break l.to_string();
            }
        }
        assert!(Instant::now() < deadline, "no new leader: {view}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let failover = killed.elapsed();
    eprintln!("failover: {next} leads {failover:?} after {leader} was SIGKILLed (lease_ttl 1s)");
    assert!(
        failover <= Duration::from_secs(2),
        "a new leader within lease_ttl + 1s: {failover:?}"
    );
    assert_eq!(agreed_leader(&survivors, 2).await, next);
    for (_, r) in &fleet {
        assert_eq!(get(r.addr, "/").await.status, 200, "the survivors serve");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_keeps_serving_and_an_empty_redis_is_rejoined() {
    let Some(mut redis) =
        Redis::start_for("a_redis_outage_keeps_serving_and_an_empty_redis_is_rejoined")
    else {
        return;
    };
    let (_worker, worker) = demo_process("fleet-b");
    let prefix = format!("outage{}", std::process::id());
    let fleet: Vec<Running> = ["weir-x", "weir-y"]
        .iter()
        .map(|name| instance(&redis, &prefix, name, worker))
        .collect();
    let admins: Vec<SocketAddr> = fleet.iter().map(|r| r.admin).collect();
    agreed_leader(&admins, 2).await;

    redis.stop();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = admin_call(admins[0], "GET", "/readyz", None, "").await;
        if body.contains("cluster: redis unreachable at") {
            assert_eq!(status, 200, "degraded, not unready: {body}");
            break;
        }
        assert!(Instant::now() < deadline, "readyz names the outage: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + DEADLINE;
    loop {
        let view = cluster(admins[0]).await;
        let (_, metrics) = admin_call(admins[0], "GET", "/metrics", None, "").await;
        if metrics.contains("weir_cluster_redis_up 0") && metrics.contains("weir_cluster_leader 0")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nobody leads without redis: {view}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for r in &fleet {
        assert_eq!(get(r.addr, "/").await.status, 200, "serving never stops");
    }

    redis.restart();
    agreed_leader(&admins, 2).await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = admin_call(admins[0], "GET", "/readyz", None, "").await;
        if status == 200 && !body.contains("degraded") {
            break;
        }
        assert!(Instant::now() < deadline, "the outage is over: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each instance's cap on the one worker, by the admin API.
async fn caps(admins: &[SocketAddr]) -> Vec<u64> {
    let mut caps = Vec::new();
    for admin in admins {
        let (_, body) = admin_call(*admin, "GET", "/api/v1/workers", None, "").await;
        let workers: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        caps.push(workers[0]["cap"].as_u64().unwrap_or(0));
    }
    caps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_workers_concurrency_is_divided_among_the_live_instances() {
    let Some(redis) =
        Redis::start_for("each_workers_concurrency_is_divided_among_the_live_instances")
    else {
        return;
    };
    let (_worker, worker) = demo_process("fleet-c");
    let prefix = format!("share{}", std::process::id());
    let mut fleet: Vec<Running> = ["weir-p", "weir-q"]
        .iter()
        .map(|name| instance_with(&redis, &prefix, name, worker, "worker_concurrency = 3"))
        .collect();
    let admins: Vec<SocketAddr> = fleet.iter().map(|r| r.admin).collect();
    agreed_leader(&admins, 2).await;
    let deadline = Instant::now() + DEADLINE;
    let shares = loop {
        let now = caps(&admins).await;
        if now.iter().sum::<u64>() == 3 && now.iter().all(|c| *c >= 1) {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "shares of 3 over 2 instances: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Load on one instance stays within its share; the rest waits in its queue.
    let (busy, share) = (0, shares[0]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = looping_clients(fleet[busy].addr, 6, "/?delay=100ms", &stop);
    let until = Instant::now() + Duration::from_millis(800);
    let mut peak = 0;
    while Instant::now() < until {
        let (_, body) = admin_call(admins[busy], "GET", "/api/v1/workers", None, "").await;
        let workers: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        peak = peak.max(workers[0]["in_flight"].as_u64().unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(failures_of(clients).await, Vec::<http::StatusCode>::new());
    assert_eq!(
        peak, share,
        "in flight at the busy instance up to its share, not above"
    );
    // One instance gone: the survivor takes the whole cap once its report expires.
    let mut dead = fleet.remove(1);
    dead.child.0.kill().unwrap();
    dead.child.0.wait().unwrap();
    let deadline = Instant::now() + DEADLINE;
    while caps(&admins[..1]).await != vec![3] {
        assert!(Instant::now() < deadline, "the survivor's cap back to 3");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_is_fenced_off() {
    use weir::cluster::Lease;
    let Some(redis) = Redis::start_for("a_leader_paused_past_its_lease_is_fenced_off") else {
        return;
    };
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let prefix = format!("fence{}", std::process::id());
    let ttl = Duration::from_millis(300);
    let (a, b) = (Lease::new(&prefix, "a", ttl), Lease::new(&prefix, "b", ttl));
    let held_a = a.hold(&mut conn, None).await.unwrap().expect("a leads");
    assert!(
        b.hold(&mut conn, None).await.unwrap().is_none(),
        "one leader"
    );
    assert!(a
        .still_held(&mut conn, &held_a, Duration::from_millis(100))
        .await
        .unwrap());
    // a "pauses": it renews nothing past its lease, and b takes over.
    let deadline = Instant::now() + DEADLINE;
    let held_b = loop {
        if let Some(held) = b.hold(&mut conn, None).await.unwrap() {
            break held;
        }
        assert!(Instant::now() < deadline, "b never took the expired lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(held_b.token > held_a.token, "the fencing token grows");
    // a resumes: its check before a provider call fails, and it cannot renew its old lease.
    assert!(!a
        .still_held(&mut conn, &held_a, Duration::ZERO)
        .await
        .unwrap());
    assert!(a.hold(&mut conn, Some(&held_a)).await.unwrap().is_none());
    assert_eq!(a.leader(&mut conn).await.unwrap().as_deref(), Some("b"));
    // Not enough lease left covers no call either.
    assert!(!b
        .still_held(&mut conn, &held_b, Duration::from_secs(10))
        .await
        .unwrap());
}
