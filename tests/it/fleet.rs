//! Several weir instances as one fleet through a real Redis (Debian's redis-server, started
//! here on a loopback port; `.ci/run` installs it): one leader, failover after a SIGKILL within
//! `lease_ttl` + 1 s, and a Redis that goes away and comes back empty.

use crate::browser;
use crate::common;
use crate::k8s_sim;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// A redis-server on a free loopback port, killed on drop. While stopped, its port is held
/// by a [`PortHolder`], so no other test's server can take it meanwhile.
pub(crate) struct Redis {
    port: u16,
    child: Option<Reaped>,
    holder: Option<PortHolder>,
}

/// Holds a loopback port as a store that is down: every connection is accepted and dropped
/// at once, so clients fail fast, and no other process can bind the port meanwhile.
struct PortHolder {
    stop: Arc<std::sync::atomic::AtomicBool>,
    port: u16,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PortHolder {
    fn hold(port: u16) -> PortHolder {
        let deadline = Instant::now() + DEADLINE;
        let listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(e) => assert!(Instant::now() < deadline, "cannot hold port {port}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                drop(conn);
                if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
            }
        });
        PortHolder {
            stop,
            port,
            thread: Some(thread),
        }
    }
}

impl Drop for PortHolder {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Redis {
    /// A fresh redis-server, or `None` (the test says it was skipped) when the machine has
    /// none, unless `WEIR_REQUIRE_REDIS=1` (set by `.ci/run`) makes that a failure.
    pub(crate) fn start_for(test: &str) -> Option<Redis> {
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            if std::env::var("WEIR_REQUIRE_REDIS").as_deref() == Ok("1") {
                panic!("{test}: redis-server is not installed (apt-get install redis-server)");
            }
            skipped(
                test,
                "redis-server is not installed (apt-get install redis-server)",
            );
            return None;
        }
        Some(Redis::start())
    }

    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut redis = Redis {
            port,
            child: None,
            holder: None,
        };
        redis.restart();
        redis
    }

    /// Start (again) on the same port, empty: no persistence.
    fn restart(&mut self) {
        self.holder = None;
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
            self.holder = Some(PortHolder::hold(self.port));
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.0.kill();
            let _ = child.0.wait();
        }
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

/// The scale-ups and scale-downs an instance has recorded, oldest first.
async fn scaling_recorded(admin: SocketAddr) -> Vec<String> {
    let (_, body) = admin_call(admin, "GET", "/api/v1/activity", None, "").await;
    let events: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["action"] == "scale_up" || e["action"] == "scale_down")
        .map(|e| e.to_string())
        .collect()
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
async fn the_dashboard_shows_the_fleet_and_which_instance_leads() {
    let Some(redis) = Redis::start_for("the_dashboard_shows_the_fleet_and_which_instance_leads")
    else {
        return;
    };
    if !browser::available("dashboard fleet") {
        return;
    }
    let (_worker, worker) = demo_process("fleet-dashboard");
    let prefix = format!("fleetui{}", std::process::id());
    let fleet: Vec<Running> = ["weir-a", "weir-b"]
        .iter()
        .map(|name| instance(&redis, &prefix, name, worker))
        .collect();
    let admins: Vec<SocketAddr> = fleet.iter().map(|r| r.admin).collect();
    let leader = agreed_leader(&admins, 2).await;
    let mut page = browser::Browser::open(&format!("http://{}/", admins[1]), 1000, 900).await;
    page.wait_for(
        "both instances, the leader marked, this one named",
        &format!(
            "(() => {{ const rows = [...document.querySelectorAll('#instances tbody tr')]; \
               return !document.getElementById('fleet').hidden && rows.length === 2 \
                 && rows.filter(r => r.cells[1].textContent === 'leader').map(r => r.dataset.key).join() === '{leader}' \
                 && rows.some(r => r.cells[0].textContent === 'weir-b (this one)') \
                 && document.getElementById('fleet-summary').textContent.includes('leader {leader}'); }})()"
        ),
        "document.getElementById('fleet').innerText",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_keeps_serving_and_an_empty_redis_is_rejoined() {
    let Some(mut redis) =
        Redis::start_for("a_redis_outage_keeps_serving_and_an_empty_redis_is_rejoined")
    else {
        return;
    };
    let workers = ExecWorkers::fresh("fleet-outage");
    let dir = workers.0.clone();
    let fleet = scaling_fleet(&redis, "outage", &["weir-x", "weir-y"], &dir);
    let admins: Vec<SocketAddr> = fleet.iter().map(|(_, r)| r.admin).collect();
    agreed_leader(&admins, 2).await;
    let known = all_see_ready(&admins, 1).await;

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
    for (_, r) in &fleet {
        assert_eq!(get(r.addr, "/").await.status, 200, "serving never stops");
    }
    assert_eq!(
        ready_ids(admins[1]).await,
        known,
        "with the workers it knows"
    );

    redis.restart();
    let leader = agreed_leader(&admins, 2).await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = admin_call(admins[0], "GET", "/readyz", None, "").await;
        if status == 200 && !body.contains("degraded") {
            break;
        }
        assert!(Instant::now() < deadline, "the outage is over: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Scaling resumes on the rebuilt state: load at the follower grows the pool.
    let follower = fleet.iter().find(|(n, _)| *n != leader).unwrap().1.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = looping_clients(follower, 4, "/?delay=100ms", &stop);
    let grown = all_see_ready(&admins, 3).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(failures_of(clients).await, Vec::<http::StatusCode>::new());
    assert!(
        grown.contains(&known[0]),
        "the known worker kept: {grown:?}"
    );
    assert_eq!(file_lines(&dir.join("launches")).len(), 3);
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

#[tokio::test]
async fn fencing_tokens_never_go_back_when_redis_restarts_empty() {
    use weir::fleet::Lease;
    let Some(redis) = Redis::start_for("fencing_tokens_never_go_back_when_redis_restarts_empty")
    else {
        return;
    };
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    let prefix = format!("floor{}", std::process::id());
    let ttl = Duration::from_millis(300);
    let (a, b) = (Lease::new(&prefix, "a", ttl), Lease::new(&prefix, "b", ttl));
    let first = a.hold(&mut conn, None).await.unwrap().expect("a leads");
    let second = a
        .hold(&mut conn, Some(&first))
        .await
        .unwrap()
        .expect("a renews");
    assert_eq!(first.token, second.token);
    // b read a's records (token 1); then Redis restarts empty: its counter starts again.
    b.raise_floor(first.token);
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let next = b.hold(&mut conn, None).await.unwrap().expect("b leads");
    assert!(
        next.token > first.token,
        "a new leader's token {} after {}: a deposed leader's writes must stay refusable",
        next.token,
        first.token
    );
    // And the counter itself moved on, for an instance that saw nothing.
    let _: () = redis::cmd("DEL")
        .arg(format!("{prefix}:leader"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let fresh = Lease::new(&prefix, "c", ttl);
    let later = fresh.hold(&mut conn, None).await.unwrap().expect("c leads");
    assert!(
        later.token > next.token,
        "{} after {}",
        later.token,
        next.token
    );
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
    // A third instance joins under load at every instance: it takes its share only once
    // the others have made room, so the worker never has more than its cap.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut clients = Vec::new();
    for r in &fleet {
        clients.extend(looping_clients_watching(
            r.addr,
            3,
            "/?delay=50ms",
            &stop,
            &peak,
        ));
    }
    fleet.push(instance_with(
        &redis,
        &prefix,
        "weir-r",
        worker,
        "worker_concurrency = 3",
    ));
    clients.extend(looping_clients_watching(
        fleet[2].addr,
        3,
        "/?delay=50ms",
        &stop,
        &peak,
    ));
    let all: Vec<SocketAddr> = fleet.iter().map(|r| r.admin).collect();
    let deadline = Instant::now() + DEADLINE;
    while caps(&all).await != vec![1, 1, 1] {
        assert!(Instant::now() < deadline, "shares of 3 over 3 instances");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let until = Instant::now() + Duration::from_millis(500);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(failures_of(clients).await, Vec::<http::StatusCode>::new());
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("a third instance joined under load: the worker's peak in flight {peak} (cap 3)");
    assert!(peak <= 3, "never above the cap while shares move: {peak}");
    // The third stops cleanly: it reports that it is leaving, and is let go at once.
    let mut third = fleet.pop().expect("a third instance");
    signal(&third, "TERM");
    third.child.0.wait().unwrap();

    // Then one crashes: the survivor, with Redis and half of the fleet, takes the whole cap
    // once the crashed one's report would have expired.
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
    use weir::fleet::Lease;
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
    // Membership writes are fenced too: a's is refused and leaves b's record as it was.
    use weir::fleet::{FleetMember, MemberBook, PoolMembers};
    let book = MemberBook::new(&prefix, Duration::from_secs(30));
    let record = |token, id: &str| {
        let members = PoolMembers {
            token,
            workers: vec![FleetMember {
                id: id.into(),
                addr: "127.0.0.1:1".parse().unwrap(),
                draining: false,
                surplus: false,
                revision: None,
            }],
            split: None,
            rollout: None,
        };
        vec![("app".to_string(), serde_json::to_string(&members).unwrap())]
    };
    assert!(book
        .write(&mut conn, &held_b, &record(held_b.token, "b-1"))
        .await
        .unwrap());
    assert!(
        !book
            .write(&mut conn, &held_a, &record(held_a.token, "a-9"))
            .await
            .unwrap(),
        "a stale token's membership write is refused"
    );
    let read = book.read(&mut conn, &["app".to_string()]).await.unwrap();
    let kept: PoolMembers = serde_json::from_str(read[0].as_deref().unwrap()).unwrap();
    assert_eq!(
        (kept.token, kept.workers[0].id.as_str()),
        (held_b.token, "b-1")
    );
}

/// An instance of a fleet whose pool launches through exec commands (detached demo workers
/// listed from `dir`), so every instance reaches them and a new leader adopts them; its
/// launches and releases are tagged with its name. The tag makes each instance's launch
/// template its own, so the pool names its revision: one revision for the whole fleet (a new
/// leader would otherwise roll its own template out over the workers).
fn scaling_instance(redis: &Redis, prefix: &str, name: &str, dir: &std::path::Path) -> Running {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[server]\nthreads = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n\
             [[routes]]\npool = \"app\"\n[pools.app]\nworker_concurrency = 2\n\
             health = {{ path = \"/hello\", interval = \"100ms\" }}\n{}\n\
             revision = \"one\"\n\
             [pools.app.autoscale]\nmin_workers = 1\nmax_workers = 3\nmax_idle_time = \"1s\"\ndrain_timeout = \"10s\"\n\
             [cluster]\nredis = \"{}\"\nname = \"{name}\"\nprefix = \"{prefix}\"\nlease_ttl = \"1s\"\n",
            exec_provider(dir, name),
            redis.url()
        ),
    )
    .unwrap();
    run_weir(&config)
}

/// Instances `names` of fleet `prefix` (made unique to this test run) on [`scaling_instance`].
fn scaling_fleet(
    redis: &Redis,
    prefix: &str,
    names: &[&str],
    dir: &std::path::Path,
) -> Vec<(String, Running)> {
    let prefix = format!("{prefix}{}", std::process::id());
    names
        .iter()
        .map(|name| {
            (
                name.to_string(),
                scaling_instance(redis, &prefix, name, dir),
            )
        })
        .collect()
}

/// Wait until every one of `admins` has exactly `n` ready workers, all the same; their ids.
async fn all_see_ready(admins: &[SocketAddr], n: usize) -> Vec<String> {
    all_see_ready_or_say(admins, n, &[]).await
}

/// [`all_see_ready`], with the log lines of `instances` in the failure's message.
async fn all_see_ready_or_say(
    admins: &[SocketAddr],
    n: usize,
    instances: &[&Running],
) -> Vec<String> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut seen = Vec::new();
        for admin in admins {
            seen.push(ready_ids(*admin).await);
        }
        if seen.iter().all(|ids| ids.len() == n && *ids == seen[0]) {
            return seen.swap_remove(0);
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = instances
                .iter()
                .map(|r| r.stderr.try_iter().collect::<Vec<_>>().join("\n"))
                .collect();
            panic!(
                "every instance with the same {n} ready workers: {seen:?}\n{}",
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_scales_on_its_followers_load_fails_over_mid_load_and_drains_back() {
    let Some(redis) = Redis::start_for(
        "a_fleet_scales_on_its_followers_load_fails_over_mid_load_and_drains_back",
    ) else {
        return;
    };
    let workers = ExecWorkers::fresh("fleet-scale");
    let dir = workers.0.clone();
    let mut fleet = scaling_fleet(&redis, "scale", &["weir-a", "weir-b", "weir-c"], &dir);
    let admins: Vec<SocketAddr> = fleet.iter().map(|(_, r)| r.admin).collect();
    let leader = agreed_leader(&admins, 3).await;
    let first = all_see_ready(&admins, 1).await;
    assert_eq!(
        file_lines(&dir.join("launches")).len(),
        1,
        "min_workers, once"
    );

    // Load only at the two followers: 8 requests at once for a fleet-wide cap of 2 a worker.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut clients = Vec::new();
    for (name, r) in &fleet {
        if *name != leader {
            clients.extend(looping_clients_watching(
                r.addr,
                4,
                "/?delay=100ms",
                &stop,
                &peak,
            ));
        }
    }
    let grown = Instant::now();
    let three = all_see_ready(&admins, 3).await;
    eprintln!(
        "load at the followers only: 3 workers ready at every instance {:?} after it began",
        grown.elapsed()
    );
    assert!(three.contains(&first[0]));
    let launches = file_lines(&dir.join("launches"));
    assert_eq!(launches.len(), 3, "never above max_workers: {launches:?}");
    assert!(
        launches.iter().all(|l| l.ends_with(&leader)),
        "only the leader launches: {launches:?}"
    );

    // SIGKILL the leader mid-load.
    let index = fleet.iter().position(|(n, _)| *n == leader).unwrap();
    let (_, mut dead) = fleet.remove(index);
    let killed = Instant::now();
    dead.child.0.kill().unwrap();
    dead.child.0.wait().unwrap();
    let survivors: Vec<SocketAddr> = fleet.iter().map(|(_, r)| r.admin).collect();
    let next = loop {
        let view = cluster(survivors[0]).await;
        if let Some(l) = view["leader"].as_str().filter(|l| *l != leader) {
            break l.to_string();
        }
        assert!(killed.elapsed() < DEADLINE, "no new leader: {view}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let failover = killed.elapsed();
    eprintln!("failover under load: {next} leads {failover:?} after the SIGKILL (lease_ttl 1s)");
    assert!(failover <= Duration::from_secs(2), "within lease_ttl + 1s");
    assert_eq!(agreed_leader(&survivors, 2).await, next);
    // The new leader adopts the three and goes on: one more second of load, nothing new.
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        all_see_ready(&survivors, 3).await,
        three,
        "the same workers"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        failures_of(clients).await,
        Vec::<http::StatusCode>::new(),
        "no failed request at the survivors"
    );
    assert_eq!(
        file_lines(&dir.join("launches")),
        launches,
        "no extra launch"
    );
    let peak_seen = peak.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("peak in flight at one worker, all instances together: {peak_seen} (cap 2)");
    assert!(peak_seen <= 2, "no worker over its cap: {peak_seen}");

    // After the load: drained back to min, with a light load at the follower that never
    // fails meanwhile (the leader's surplus marks reach it, so it spares the victims).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let follower = fleet.iter().find(|(n, _)| *n != next).unwrap().1.addr;
    let light = looping_clients(follower, 1, "/?delay=10ms", &stop);
    let drained = Instant::now();
    let instances: Vec<&Running> = fleet.iter().map(|(_, r)| r).collect();
    all_see_ready_or_say(&survivors, 1, &instances).await;
    eprintln!(
        "drained back to 1 worker {:?} after the load",
        drained.elapsed()
    );
    let deadline = Instant::now() + DEADLINE;
    while file_lines(&dir.join("releases")).len() < 2 {
        assert!(Instant::now() < deadline, "two releases");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(failures_of(light).await, Vec::<http::StatusCode>::new());
    let releases = file_lines(&dir.join("releases"));
    assert!(
        releases.len() == 2 && releases.iter().all(|l| l.ends_with(&next)),
        "the new leader released two: {releases:?}"
    );
    drop(fleet);
}

/// Send `signal` (STOP, CONT) to a running instance.
fn signal(r: &Running, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &r.child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_sigstopped_past_its_lease_neither_launches_nor_releases_when_resumed() {
    let Some(redis) = Redis::start_for(
        "a_leader_sigstopped_past_its_lease_neither_launches_nor_releases_when_resumed",
    ) else {
        return;
    };
    let workers = ExecWorkers::fresh("fleet-pause");
    let dir = workers.0.clone();
    let mut fleet = scaling_fleet(&redis, "pause", &["weir-m", "weir-n"], &dir);
    let admins: Vec<SocketAddr> = fleet.iter().map(|(_, r)| r.admin).collect();
    let leader = agreed_leader(&admins, 2).await;
    let l = fleet.iter().position(|(n, _)| *n == leader).unwrap();
    let f = 1 - l;
    let follower = fleet[f].0.clone();
    all_see_ready(&admins, 1).await;

    // Load at the follower grows the pool to three; then the fleet is idle.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = looping_clients(fleet[f].1.addr, 4, "/?delay=100ms", &stop);
    all_see_ready(&admins, 3).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(failures_of(clients).await, Vec::<http::StatusCode>::new());
    let deadline = Instant::now() + DEADLINE;
    loop {
        let view = cluster(admins[l]).await;
        let instances = view["instances"].as_array().cloned().unwrap_or_default();
        if instances.len() == 2 && instances.iter().all(|i| i["in_flight"] == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "an idle fleet: {view}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let launched_before = file_lines(&dir.join("launches")).len();
    let scaling_before = scaling_recorded(admins[l]).await;

    // The leader pauses with two surplus workers it would release after max_idle_time.
    signal(&fleet[l].1, "STOP");
    let deadline = Instant::now() + DEADLINE;
    while cluster(admins[f]).await["leader"].as_str() != Some(follower.as_str()) {
        assert!(Instant::now() < deadline, "the follower takes the lead");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The new leader releases the surplus itself.
    all_see_ready(&admins[f..=f], 1).await;
    let deadline = Instant::now() + DEADLINE;
    while file_lines(&dir.join("releases")).len() < 2 {
        assert!(Instant::now() < deadline, "the new leader releases two");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Resumed, the old leader's view is stale (three workers, two idle surplus, itself
    // leading); the fence in Redis refuses what it would do.
    signal(&fleet[l].1, "CONT");
    let deadline = Instant::now() + DEADLINE;
    while cluster(admins[l]).await["leader"].as_str() != Some(follower.as_str()) {
        assert!(Instant::now() < deadline, "the old leader follows");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = all_see_ready(&admins, 1).await;
    let until = Instant::now() + Duration::from_secs(2);
    let mut refused = Vec::new();
    while Instant::now() < until {
        while let Ok(line) = fleet[l].1.stderr.try_recv() {
            if line.contains("no longer the fleet's leader") || line.contains("refused") {
                refused.push(line);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("the resumed leader's refused actions: {refused:#?}");
    let launches = file_lines(&dir.join("launches"));
    let releases = file_lines(&dir.join("releases"));
    assert_eq!(
        launches.len(),
        launched_before,
        "no launch since: {launches:?}"
    );
    assert!(
        releases.iter().all(|r| r.ends_with(&follower)),
        "only the new leader released: {releases:?}"
    );
    assert_eq!(ready.len(), 1);
    // What it did not do, it does not record as done.
    let scaling_after = scaling_recorded(admins[l]).await;
    assert_eq!(
        scaling_after[..scaling_before.len().min(scaling_after.len())],
        scaling_before[..],
        "its activity before the pause is kept"
    );
    assert_eq!(
        scaling_after.len(),
        scaling_before.len(),
        "no scaling recorded after the resume: {scaling_after:?}"
    );
    assert_eq!(get(fleet[l].1.addr, "/").await.status, 200, "it serves");
    fleet.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_started_while_redis_is_down_takes_no_share_until_it_hears_the_fleet() {
    // Before it ever heard the fleet, an instance cannot tell whose capacity it would take:
    // it holds its requests (and turns them away at the queue's timeout), says it is not
    // ready, and serves once Redis answers.
    let Some(mut redis) = Redis::start_for(
        "an_instance_started_while_redis_is_down_takes_no_share_until_it_hears_the_fleet",
    ) else {
        return;
    };
    redis.stop();
    let (_worker, worker) = demo_process("fleet-d");
    let config = temp_path(&format!("fleet-down-{}.toml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "[server]\nthreads = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n\
             [[routes]]\npool = \"app\"\nqueue = {{ timeout = \"300ms\" }}\n\
             [pools.app]\nworker_concurrency = 4\n\
             provider = {{ kind = \"static\", addresses = [\"{worker}\"] }}\n\
             [cluster]\nredis = \"{}\"\nlease_ttl = \"1s\"\n",
            redis.url()
        ),
    )
    .unwrap();
    let weir = run_weir(&config);
    let deadline = Instant::now() + DEADLINE;
    let body = loop {
        let (status, body) = admin_call(weir.admin, "GET", "/readyz", None, "").await;
        if body.contains("cluster: redis unreachable at") {
            assert_eq!(status, 503, "{body}");
            break body;
        }
        assert!(Instant::now() < deadline, "redis never missed: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(body.contains("isolated from the fleet"), "{body}");
    assert_eq!(caps(&[weir.admin]).await, vec![0], "no share");
    assert_eq!(
        get(weir.addr, "/").await.status,
        503,
        "held, then turned away"
    );

    redis.restart();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let reply = get(weir.addr, "/").await;
        if reply.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never served: {}", reply.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(caps(&[weir.admin]).await, vec![4], "alone: the whole cap");
    let (status, body) = admin_call(weir.admin, "GET", "/readyz", None, "").await;
    assert_eq!(status, 200, "{body}");
}

/// Removes, on drop, every container of a Docker pool (a fleet leaves its workers running).
struct PoolContainers(String);

impl Drop for PoolContainers {
    fn drop(&mut self) {
        let names = containers_labelled("weir.pool", &self.0);
        if !names.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&names)
                .stdout(Stdio::null())
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_pool_is_shared_by_the_fleet_and_adopted_by_the_next_leader() {
    let test = "a_docker_pool_is_shared_by_the_fleet_and_adopted_by_the_next_leader";
    if !engine_ready(test) {
        return;
    }
    let Some(redis) = Redis::start_for(test) else {
        return;
    };
    let pool = format!("dkfleet{}", std::process::id());
    let _containers = PoolContainers(pool.clone());
    let prefix = format!("docker{}", std::process::id());
    let mut fleet: Vec<(String, Running)> = ["weir-d1", "weir-d2"]
        .iter()
        .map(|name| {
            let config = temp_path(&format!("fleet-{prefix}-{name}.toml"));
            std::fs::write(
                &config,
                format!(
                    "[server]\nthreads = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n\
                     [[routes]]\npool = \"{pool}\"\n[pools.{pool}]\n\
                     provider = {{ kind = \"docker\", image = \"{IMAGE}\", port = 8080, stop_grace = \"2s\", pull = \"never\" }}\n\
                     health = {{ path = \"/hello\", interval = \"200ms\" }}\n\
                     [pools.{pool}.autoscale]\nmin_workers = 1\nmax_workers = 2\n\
                     [cluster]\nredis = \"{}\"\nname = \"{name}\"\nprefix = \"{prefix}\"\nlease_ttl = \"1s\"\n",
                    redis.url()
                ),
            )
            .unwrap();
            (name.to_string(), run_weir(&config))
        })
        .collect();
    let admins: Vec<SocketAddr> = fleet.iter().map(|(_, r)| r.admin).collect();
    let leader = agreed_leader(&admins, 2).await;
    let ids = all_see_ready(&admins, 1).await;
    assert_eq!(
        containers_labelled("weir.pool", &pool),
        ids,
        "one container"
    );
    for (_, r) in &fleet {
        assert_eq!(get(r.addr, "/").await.status, 200, "every instance serves");
    }

    // The leader dies: the survivor leads, keeps the container, and watches it.
    let index = fleet.iter().position(|(n, _)| *n == leader).unwrap();
    let (_, mut dead) = fleet.remove(index);
    dead.child.0.kill().unwrap();
    dead.child.0.wait().unwrap();
    let survivor = fleet[0].1.admin;
    agreed_leader(&[survivor], 1).await;
    assert_eq!(
        all_see_ready(&[survivor], 1).await,
        ids,
        "adopted, not relaunched"
    );
    assert_eq!(containers_labelled("weir.pool", &pool), ids);
    let killed = Command::new("docker")
        .args(["kill", &ids[0]])
        .output()
        .expect("docker kill");
    assert!(killed.status.success(), "{killed:?}");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, activity) = admin_call(survivor, "GET", "/api/v1/activity", None, "").await;
        if activity.contains(&format!("{}: container exited", ids[0])) {
            break;
        }
        assert!(Instant::now() < deadline, "the exit is noticed: {activity}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replaced = all_see_ready(&[survivor], 1).await;
    assert_ne!(replaced, ids, "replaced by the new leader");
    assert_eq!(get(fleet[0].1.addr, "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_pool_in_a_fleet_is_scaled_once_by_whoever_leads() {
    // The simulated API server of tests/it/k8s_sim: no real cluster can run here.
    let Some(redis) =
        Redis::start_for("a_kubernetes_pool_in_a_fleet_is_scaled_once_by_whoever_leads")
    else {
        return;
    };
    let sim = k8s_sim::Fleet::start(k8s_sim::SimOptions::default());
    let prefix = format!("kube{}", std::process::id());
    let mut fleet: Vec<(String, Running)> = ["weir-k1", "weir-k2"]
        .iter()
        .map(|name| {
            let config = temp_path(&format!("fleet-{prefix}-{name}.toml"));
            std::fs::write(
                &config,
                format!(
                    "[server]\nthreads = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n\
                     [[routes]]\npool = \"app\"\n[pools.app]\nworker_concurrency = 2\n\
                     provider = {{ kind = \"kubernetes\", deployment = \"app\", port = 8080, kubeconfig = \"{}\", context = \"sim\" }}\n\
                     [pools.app.autoscale]\nmin_workers = 1\nmax_workers = 3\nmax_idle_time = \"1s\"\n\
                     [cluster]\nredis = \"{}\"\nname = \"{name}\"\nprefix = \"{prefix}\"\nlease_ttl = \"1s\"\n",
                    sim.kubeconfig().display(),
                    redis.url()
                ),
            )
            .unwrap();
            (name.to_string(), run_weir(&config))
        })
        .collect();
    let admins: Vec<SocketAddr> = fleet.iter().map(|(_, r)| r.admin).collect();
    let leader = agreed_leader(&admins, 2).await;
    all_see_ready(&admins, 1).await;

    // Load at the follower: the leader scales the Deployment, both route to the new pods.
    let follower = fleet.iter().find(|(n, _)| *n != leader).unwrap().1.addr;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = looping_clients(follower, 4, "/?delay=100ms", &stop);
    all_see_ready(&admins, 3).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(failures_of(clients).await, Vec::<http::StatusCode>::new());
    assert_eq!(sim.replicas(), 3, "one scaler: never above max");

    // The leader dies; the survivor leads and, with a light load, scales back to 1. The
    // leader's own scaling, seen while following, is not an outside change to it.
    let index = fleet.iter().position(|(n, _)| *n == leader).unwrap();
    let (_, mut dead) = fleet.remove(index);
    dead.child.0.kill().unwrap();
    dead.child.0.wait().unwrap();
    let survivor = fleet[0].1.admin;
    agreed_leader(&[survivor], 1).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let light = looping_clients(fleet[0].1.addr, 1, "/?delay=10ms", &stop);
    all_see_ready(&[survivor], 1).await;
    let deadline = Instant::now() + DEADLINE;
    while sim.replicas() != 1 {
        assert!(
            Instant::now() < deadline,
            "replicas back to 1: {}",
            sim.replicas()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(failures_of(light).await, Vec::<http::StatusCode>::new());
    let (_, activity) = admin_call(survivor, "GET", "/api/v1/activity", None, "").await;
    assert!(
        !activity.contains("external"),
        "no outside change: {activity}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_worker_no_instance_has_is_adopted_by_the_leader() {
    let Some(redis) = Redis::start_for("a_listed_worker_no_instance_has_is_adopted_by_the_leader")
    else {
        return;
    };
    let workers = ExecWorkers::fresh("fleet-stray");
    let dir = workers.0.clone();
    let fleet = scaling_fleet(&redis, "stray", &["weir-s1", "weir-s2"], &dir);
    let admins: Vec<SocketAddr> = fleet.iter().map(|(_, r)| r.admin).collect();
    agreed_leader(&admins, 2).await;
    let first = all_see_ready(&admins, 1).await;
    // A worker the provider lists that no pool has: a launch that returned to a leader
    // deposed meanwhile leaves one like it.
    let (stray, addr) = demo_process("app-99");
    std::fs::write(dir.join("app-99.addr"), format!("app-99 {addr}\n")).unwrap();
    // Adopted and routed to by every instance (then, idle, one of the two may be released
    // as surplus: the pool is at min_workers 1).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut seen = Vec::new();
        for admin in &admins {
            seen.push(ready_ids(*admin).await);
        }
        if seen.iter().all(|ids| ids.contains(&"app-99".to_string())) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "app-99 adopted: {seen:?} (had {first:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(stray);
}
