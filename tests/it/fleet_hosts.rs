//! The fleet as hosts of their own (see `hosts`): three weir containers on two or three
//! networks (see [`Layout`]), `data` carrying the weirs, the worker containers the leader
//! launches and this test's load, load at every instance, and faults made with the engine:
//! `docker kill`, `docker network disconnect`, a Redis restarted empty. Every scenario counts
//! answers from a worker over its cap (the demo worker's `x-concurrent`), answers from a
//! container other than the worker the access log names (its `x-hostname`), and failures.

use crate::hosts::{self, Answer, Container, Net};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Each worker's cap: one slot per instance of three, so every instance has a share of every
/// worker (with fewer slots than instances, an instance may have none, by design, and its
/// requests wait).
const WORKER_CAP: u32 = 3;
/// How long a lease lasts.
const LEASE_TTL: Duration = Duration::from_secs(2);
/// How long the fleet may take to form: containers starting, an election, workers launched.
const FORMING: Duration = Duration::from_secs(60);

/// How the weirs reach Redis and each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `ctl` carries Redis and the weirs' talk to each other; each weir advertises the
    /// address it reaches Redis from (learned, the default).
    Shared,
    /// Redis alone on `store`; the weirs talk on `ctl`, at fixed addresses they advertise
    /// (`[cluster] advertise`): an instance can be cut off from Redis and not from its
    /// peers, or from both.
    Split,
}

/// A fleet of `count` weirs over one pool of two Docker workers.
/// Fields drop in order: the containers before the networks they are on.
struct Fleet {
    tag: String,
    weirs: Vec<Container>,
    redis: Container,
    /// The network the weirs talk to each other on (and reach Redis on, in [`Layout::Shared`]).
    ctl: Net,
    data: Net,
    /// Redis's own network, in [`Layout::Split`].
    store: Option<Net>,
    layout: Layout,
    /// The first three bytes of `ctl`'s addresses.
    prefix: [u8; 3],
}

impl Fleet {
    fn start(test: &str, count: usize, layout: Layout) -> Fleet {
        let tag = hosts::tag(test);
        let (ctl, prefix) = Net::with_subnet(format!("{tag}-ctl"));
        let data = Net::create(format!("{tag}-data"));
        let store = (layout == Layout::Split).then(|| Net::create(format!("{tag}-store")));
        let redis = hosts::redis(format!("{tag}-redis"), store.as_ref().unwrap_or(&ctl));
        let mut fleet = Fleet {
            tag,
            weirs: Vec::new(),
            redis,
            ctl,
            data,
            store,
            layout,
            prefix,
        };
        fleet.weirs = (1..=count)
            .map(|n| {
                let config = fleet.config(n, "1");
                let mut nets = vec![&fleet.ctl, &fleet.data];
                nets.extend(fleet.store.as_ref());
                hosts::weir(
                    format!("{}-w{n}", fleet.tag),
                    &config,
                    &nets,
                    Some(fleet.ip_of(n)),
                )
            })
            .collect();
        fleet
    }

    /// Weir `n`'s fixed address on `ctl`.
    fn ip_of(&self, n: usize) -> std::net::IpAddr {
        let p = self.prefix;
        std::net::IpAddr::from([p[0], p[1], p[2], 10 + n as u8])
    }

    /// Weir `n`'s config, its workers of release `release` (their environment's `RELEASE`:
    /// another release is another revision of the launch template, rolled out on a reload).
    fn config(&self, n: usize, release: &str) -> String {
        let advertise = match self.layout {
            Layout::Shared => String::new(),
            Layout::Split => format!("advertise = \"{}:{}\"", self.ip_of(n), hosts::ADMIN_PORT),
        };
        format!(
            r#"[server]
shutdown_grace = "2s"
[access_log]
enabled = true
path = "-"
[admin]
listen = "0.0.0.0:{admin}"
token = "{token}"
[[listeners]]
listen = "0.0.0.0:{proxy}"
[cluster]
redis = "redis://{redis}:6379/0"
name = "w{n}"
prefix = "{tag}"
lease_ttl = "{ttl}s"
{advertise}
[[routes]]
pool = "{tag}"
queue = {{ timeout = "2s" }}
[pools.{tag}]
worker_concurrency = {WORKER_CAP}
provider = {{ kind = "docker", image = "{image}", port = 8080, network = "{data}", pull = "never", stop_grace = "2s", env = {{ RELEASE = "{release}" }} }}
health = {{ path = "/hello", interval = "200ms" }}
[pools.{tag}.autoscale]
min_workers = {min_workers}
max_workers = 2
max_idle_time = "10m"
[pools.{tag}.rollout]
steps = [{{ weight = 50, hold = "3s" }}]
"#,
            // Split: one worker may be drained on request (a manual scale to 1); the second
            // is asked for once the fleet has formed.
            min_workers = if self.layout == Layout::Split { 1 } else { 2 },
            admin = hosts::ADMIN_PORT,
            token = hosts::TOKEN,
            proxy = hosts::PROXY_PORT,
            ttl = LEASE_TTL.as_secs(),
            image = crate::common::IMAGE,
            data = self.data.name,
            tag = self.tag,
            // By name (the network's DNS): a restarted Redis may get another address.
            redis = self.redis.name,
        )
    }

    /// Three weirs once formed: one leader they all name, and the two workers every one of
    /// them routes to; `None` when the test cannot run here (said so by [`hosts::ready`]).
    async fn formed(test: &str, layout: Layout) -> Option<(Fleet, String, Vec<String>)> {
        if !hosts::ready(test) {
            return None;
        }
        let fleet = Fleet::start(test, 3, layout);
        let leader = fleet.agreed_leader(&[0, 1, 2], FORMING).await;
        if layout == Layout::Split {
            let scale = format!("/api/v1/pools/{}/scale", fleet.tag);
            let admin = fleet.admin(fleet.index_of(&leader));
            hosts::eventually("the leader takes a manual scale to 2", FORMING, || {
                hosts::admin_post(admin, &scale, r#"{"workers": 2}"#)
            })
            .await;
        }
        let workers = fleet.ready_workers(0, 2).await;
        for i in 1..3 {
            assert_eq!(
                fleet.ready_workers(i, 2).await,
                workers,
                "one set of workers"
            );
        }
        Some((fleet, leader, workers))
    }

    /// Which of the weirs is instance `name` (w1, w2, ...).
    fn index_of(&self, name: &str) -> usize {
        let suffix = format!("-{name}");
        self.weirs
            .iter()
            .position(|w| w.name.ends_with(&suffix))
            .unwrap_or_else(|| panic!("{name} is one of the weirs"))
    }

    /// Where the test reaches weir `i`: its address on `data`, which partitions of `ctl`
    /// leave alone.
    fn proxy(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.weirs[i].ip_on(&self.data), hosts::PROXY_PORT)
    }

    fn admin(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.weirs[i].ip_on(&self.data), hosts::ADMIN_PORT)
    }

    /// The leader every instance in `alive` names, once they agree, see `alive.len()`
    /// instances and list the leader among them.
    async fn agreed_leader(&self, alive: &[usize], within: Duration) -> String {
        let admins: Vec<SocketAddr> = alive.iter().map(|&i| self.admin(i)).collect();
        let want = alive.len();
        hosts::eventually("one leader all instances agree on", within, || {
            let admins = admins.clone();
            async move {
                let mut leaders = Vec::new();
                for admin in admins {
                    let view = hosts::admin_json(admin, "/api/v1/cluster").await?;
                    let instances = view["instances"].as_array()?;
                    let leader = view["leader"].as_str()?.to_string();
                    // A crashed leader's lease can outlive its report by a beat.
                    let listed = instances.iter().any(|i| i["name"] == leader.as_str());
                    if instances.len() != want || !listed {
                        return None;
                    }
                    leaders.push(leader);
                }
                leaders.dedup();
                (leaders.len() == 1).then(|| leaders.remove(0))
            }
        })
        .await
    }

    /// The ids of the ready workers instance `i` routes to, once there are `n`.
    async fn ready_workers(&self, i: usize, n: usize) -> Vec<String> {
        let admin = self.admin(i);
        hosts::eventually("the pool's workers ready", FORMING, || async move {
            let workers = hosts::admin_json(admin, "/api/v1/workers").await?;
            let mut ready: Vec<String> = workers
                .as_array()?
                .iter()
                .filter(|w| w["state"] == "ready")
                .filter_map(|w| w["id"].as_str().map(str::to_string))
                .collect();
            ready.sort();
            (ready.len() == n).then_some(ready)
        })
        .await
    }

    fn logs(&self) -> String {
        self.weirs
            .iter()
            .map(|w| format!("--- {}\n{}", w.name, w.logs()))
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // The weirs first (a killed one leaves its workers), then the workers; the fields
        // then drop in order (Redis, then the networks).
        self.weirs.clear();
        hosts::remove_workers(&self.tag);
    }
}

/// What the clients at one instance saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    /// Answers from a worker that was answering more than its cap at once.
    over_cap: AtomicU64,
    /// The first failure, for the message.
    first_failure: std::sync::Mutex<Option<String>>,
    /// When answers came over the cap, first and last.
    over_cap_between: std::sync::Mutex<Option<(Instant, Instant)>>,
    /// Each answer's path (unique) and the container that answered it.
    answered_by: std::sync::Mutex<Vec<(String, String)>>,
}

impl Tally {
    fn count(&self, path: String, answer: Result<Answer, String>) {
        match answer {
            Ok(a) if a.status == 200 => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                if let Some(host) = a.hostname.clone() {
                    self.answered_by.lock().unwrap().push((path, host));
                }
                if a.concurrent.is_some_and(|c| c > WORKER_CAP) {
                    self.over_cap.fetch_add(1, Ordering::Relaxed);
                    let now = Instant::now();
                    let mut between = self.over_cap_between.lock().unwrap();
                    let first = between.map_or(now, |(first, _)| first);
                    *between = Some((first, now));
                }
            }
            other => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_failure.lock().unwrap();
                if first.is_none() {
                    *first = Some(format!("{other:?}"));
                }
            }
        }
    }

    /// What it saw; times are relative to `mark` (a fault), negative before it.
    fn summary(&self, mark: Instant) -> String {
        let relative = |t: Instant| {
            if t >= mark {
                format!("+{:?}", t - mark)
            } else {
                format!("-{:?}", mark - t)
            }
        };
        let over = self
            .over_cap_between
            .lock()
            .unwrap()
            .map(|(a, b)| format!(" from {} to {}", relative(a), relative(b)))
            .unwrap_or_default();
        format!(
            "ok {} failed {} over cap {}{over} (first failure: {:?})",
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.over_cap.load(Ordering::Relaxed),
            self.first_failure.lock().unwrap()
        )
    }
}

/// `clients` loops at `proxy` asking for a 50 ms answer until `running` flips; every path is
/// unique (`n` marks this instance's), to find each request in the access log.
fn load(proxy: SocketAddr, n: usize, clients: usize, running: &Arc<AtomicBool>) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    for client in 0..clients {
        let tally = Arc::clone(&tally);
        let running = Arc::clone(running);
        tokio::spawn(async move {
            let mut k = 0u64;
            while running.load(Ordering::Relaxed) {
                k += 1;
                let path = format!("/?delay=50ms&req={n}-{client}-{k}");
                let answer = hosts::fetch(proxy, &path, None, Duration::from_secs(10)).await;
                tally.count(path, answer);
            }
        });
    }
    tally
}

/// Load at every instance of `fleet`: 4 clients each, 12 over two workers of cap 3, so
/// requests queue and each instance keeps to its share.
struct Load {
    /// One flag per instance: its clients stop when it flips.
    running: Vec<Arc<AtomicBool>>,
    tallies: Vec<Arc<Tally>>,
}

impl Load {
    fn start(fleet: &Fleet) -> Load {
        let running: Vec<Arc<AtomicBool>> = (0..fleet.weirs.len())
            .map(|_| Arc::new(AtomicBool::new(true)))
            .collect();
        let tallies = (0..fleet.weirs.len())
            .map(|i| load(fleet.proxy(i), i, 4, &running[i]))
            .collect();
        Load { running, tallies }
    }

    /// Stop the clients of instance `i` (killed: a worker launched after may take its
    /// address, and clients there would reach that worker directly, past every cap).
    fn stop_at(&self, i: usize) {
        self.running[i].store(false, Ordering::Relaxed);
    }

    /// Answers (status 200) checked against the access logs: how many, how many came from a
    /// container other than the worker weir's access log names, and the first few of those.
    fn misrouted(&self, fleet: &Fleet) -> (usize, usize, Vec<String>) {
        let (mut checked, mut wrong, mut examples) = (0, 0, Vec::new());
        for (i, tally) in self.tallies.iter().enumerate() {
            let mut logged = std::collections::HashMap::new();
            for line in fleet.weirs[i].logs().lines() {
                let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if let (Some(path), Some(worker)) =
                    (entry["path"].as_str(), entry["worker"].as_str())
                {
                    logged.insert(path.to_string(), worker.to_string());
                }
            }
            for (path, host) in tally.answered_by.lock().unwrap().iter() {
                let Some(worker) = logged.get(path) else {
                    continue;
                };
                checked += 1;
                if worker != host {
                    wrong += 1;
                    if examples.len() < 5 {
                        examples.push(format!("{path}: logged {worker}, answered by {host}"));
                    }
                }
            }
        }
        (checked, wrong, examples)
    }

    /// No answer, at any instance, came from a worker over its cap.
    fn assert_within_caps(&self, fleet: &Fleet, report: &[String]) {
        for tally in &self.tallies {
            assert_eq!(
                tally.over_cap.load(Ordering::Relaxed),
                0,
                "a worker answered more than {WORKER_CAP} at once: {report:?}\n{}",
                fleet.logs()
            );
        }
    }

    /// Stop, let the last answers land, and say what each instance's clients saw.
    async fn stop(&self, fleet: &Fleet, mark: Instant) -> Vec<String> {
        for running in &self.running {
            running.store(false, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        (0..fleet.weirs.len())
            .map(|i| format!("{}: {}", fleet.weirs[i].name, self.tallies[i].summary(mark)))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_elect_one_leader_keep_the_cap_and_fail_over_after_docker_kill() {
    let Some((fleet, leader, workers)) = Fleet::formed(
        "three_hosts_elect_one_leader_keep_the_cap_and_fail_over_after_docker_kill",
        Layout::Shared,
    )
    .await
    else {
        return;
    };
    // Each instance is shown at the address it reaches Redis from (its address on ctl,
    // learned: admin.listen is 0.0.0.0), and the shares of the pool add up to its workers'
    // caps.
    let view = hosts::eventually("every instance's share reported", FORMING, || async {
        let view = hosts::admin_json(fleet.admin(0), "/api/v1/cluster").await?;
        let instances = view["instances"].as_array()?;
        let total: u64 = instances
            .iter()
            .filter_map(|i| i["shares"][&fleet.tag].as_u64())
            .sum();
        // Settled: every instance keeps to the whole fleet (while one joins, the others'
        // shares add up to the caps as well).
        let settled = instances
            .iter()
            .all(|i| i["fleet"] == serde_json::json!(["w1", "w2", "w3"]));
        (settled && total == 2 * u64::from(WORKER_CAP)).then_some(view)
    })
    .await;
    for i in 0..3 {
        let name = format!("w{}", i + 1);
        let shown = view["instances"]
            .as_array()
            .and_then(|all| all.iter().find(|v| v["name"] == name.as_str()))
            .unwrap_or_else(|| panic!("{name} in {view}"));
        let expected = format!("{}:{}", fleet.weirs[i].ip_on(&fleet.ctl), hosts::ADMIN_PORT);
        assert_eq!(shown["admin"], expected.as_str(), "{view}");
        assert_eq!(
            shown["fleet"],
            serde_json::json!(["w1", "w2", "w3"]),
            "{view}"
        );
    }
    let leader_index = fleet.index_of(&leader);

    let load = Load::start(&fleet);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The leader crashes; the others elect a new one and go on serving.
    fleet.weirs[leader_index].kill();
    let killed_at = Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader_index).collect();
    let new_leader = fleet.agreed_leader(&survivors, LEASE_TTL * 5).await;
    let failover = killed_at.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = load.stop(&fleet, killed_at).await;
    load.assert_within_caps(&fleet, &report);
    let tallies = &load.tallies;
    eprintln!("failover to {new_leader} after {failover:?}; {report:?}");
    assert_ne!(new_leader, leader);
    assert!(
        failover <= LEASE_TTL * 3,
        "a new leader {failover:?} after the kill (lease {LEASE_TTL:?}); {report:?}"
    );
    for (i, tally) in tallies.iter().enumerate() {
        if i != leader_index {
            assert_eq!(
                tally.failed.load(Ordering::Relaxed),
                0,
                "failed requests at a surviving instance: {report:?}\n{}",
                fleet.logs()
            );
            assert!(tally.ok.load(Ordering::Relaxed) > 20, "{report:?}");
        }
    }
    // No relaunch: the survivors still route to the same two workers.
    for &i in &survivors {
        assert_eq!(fleet.ready_workers(i, 2).await, workers, "the same workers");
    }
    assert_routed_right(&load, &fleet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_empty_under_load_never_lets_a_worker_past_its_cap() {
    let Some((fleet, leader, workers)) = Fleet::formed(
        "a_redis_restarted_empty_under_load_never_lets_a_worker_past_its_cap",
        Layout::Shared,
    )
    .await
    else {
        return;
    };
    let load = Load::start(&fleet);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Redis restarts empty: for a moment every instance sees nobody else. Seeing nobody may
    // take the whole cap only once that has lasted lease_ttl; the others are back in a beat.
    let restarted_at = Instant::now();
    fleet.redis.restart();
    let back_leader = fleet.agreed_leader(&[0, 1, 2], LEASE_TTL * 10).await;
    let rejoined = restarted_at.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let report = load.stop(&fleet, restarted_at).await;
    load.assert_within_caps(&fleet, &report);
    eprintln!("leader {leader}, then {back_leader}; fleet re-formed {rejoined:?} after the restart; {report:?}");
    for tally in &load.tallies {
        assert_eq!(
            tally.failed.load(Ordering::Relaxed),
            0,
            "failed requests: {report:?}\n{}",
            fleet.logs()
        );
        assert!(tally.ok.load(Ordering::Relaxed) > 20, "{report:?}");
    }
    for i in 0..3 {
        assert_eq!(fleet.ready_workers(i, 2).await, workers, "the same workers");
    }
    assert_routed_right(&load, &fleet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_hands_the_workers_over_and_stopping_the_whole_fleet_releases_them() {
    let Some((fleet, leader, workers)) = Fleet::formed(
        "a_rolling_restart_hands_the_workers_over_and_stopping_the_whole_fleet_releases_them",
        Layout::Shared,
    )
    .await
    else {
        return;
    };
    let containers = || {
        let mut names = crate::common::containers_labelled("weir.pool", &fleet.tag);
        names.sort();
        names
    };
    let before = containers();
    assert_eq!(before.len(), 2, "{before:?}");

    // A rolling restart: each instance stops (SIGTERM) and starts again in turn, the leader
    // last; the workers are handed over each time, never released.
    let leader_index = fleet.index_of(&leader);
    let order: Vec<usize> = (0..3)
        .filter(|&i| i != leader_index)
        .chain([leader_index])
        .collect();
    for i in order {
        fleet.weirs[i].stop(Duration::from_secs(30));
        assert_eq!(
            containers(),
            before,
            "stopping {} released workers",
            fleet.weirs[i].name
        );
        fleet.weirs[i].start();
        fleet.agreed_leader(&[0, 1, 2], FORMING).await;
        assert_eq!(fleet.ready_workers(i, 2).await, workers, "the same workers");
    }
    assert_eq!(containers(), before, "a rolling restart keeps the workers");

    // The whole fleet stops at once: the last leader releases the workers.
    let stops: Vec<_> = fleet
        .weirs
        .iter()
        .map(|w| {
            let name = w.name.clone();
            std::thread::spawn(move || hosts::docker(&["stop", "--time", "30", &name]))
        })
        .collect();
    for stop in stops {
        stop.join().expect("docker stop");
    }
    let left = hosts::eventually("the workers released", Duration::from_secs(30), || async {
        let left = containers();
        left.is_empty().then_some(left)
    })
    .await;
    assert!(left.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_cut_off_from_redis_follows_the_workers_the_provider_lists() {
    let Some((fleet, leader, workers)) = Fleet::formed(
        "an_instance_cut_off_from_redis_follows_the_workers_the_provider_lists",
        Layout::Shared,
    )
    .await
    else {
        return;
    };
    let leader_index = fleet.index_of(&leader);
    let cut = (0..3).find(|&i| i != leader_index).expect("a follower");

    // The follower loses Redis and its peers (ctl); it still reaches the workers (data) and
    // the engine.
    fleet.weirs[cut].disconnect(&fleet.ctl);
    let admin = fleet.admin(cut);
    hosts::eventually("the cut-off instance notices", FORMING, || async {
        let (_, body) = readiness(&fleet, cut).await?;
        body.contains("redis unreachable").then_some(())
    })
    .await;

    // A worker dies; the leader replaces it (its address may well go to the new one). The
    // cut-off instance cannot read the leader's record: it must route to what the provider
    // lists, not keep the dead worker's name at an address another container may now hold.
    hosts::docker(&["kill", &workers[0]]);
    hosts::eventually("a replacement running", FORMING, || async {
        let running = hosts::running_workers(&fleet.tag);
        (running.len() == 2 && !running.contains(&workers[0])).then_some(())
    })
    .await;
    // Compared with what runs at each look: the leader may replace a worker again meanwhile.
    let followed = hosts::eventually(
        "the cut-off instance routes to the listed workers",
        FORMING,
        || async {
            let view = hosts::admin_json(admin, "/api/v1/workers").await?;
            let mut ids: Vec<String> = view
                .as_array()?
                .iter()
                .filter_map(|w| w["id"].as_str().map(str::to_string))
                .collect();
            ids.sort();
            (ids == hosts::running_workers(&fleet.tag)).then_some(ids)
        },
    )
    .await;
    assert!(!followed.contains(&workers[0]), "{followed:?}");
    fleet.weirs[cut].connect(&fleet.ctl);
}

/// Instance `i`'s `/readyz`: status and body; `None` while it does not answer.
async fn readiness(fleet: &Fleet, i: usize) -> Option<(u16, String)> {
    let answer = hosts::fetch(
        fleet.admin(i),
        "/readyz",
        Some(hosts::TOKEN),
        Duration::from_secs(2),
    )
    .await
    .ok()?;
    Some((answer.status, answer.body))
}

/// Instance `name` as instance `i` shows it in `/api/v1/cluster`.
async fn shown(fleet: &Fleet, i: usize, name: &str) -> Option<serde_json::Value> {
    let view = hosts::admin_json(fleet.admin(i), "/api/v1/cluster").await?;
    view["instances"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == name)
        .cloned()
}

/// Every answer found in the access logs came from the worker the log names; how many.
fn assert_routed_right(load: &Load, fleet: &Fleet) -> usize {
    let (checked, wrong, examples) = load.misrouted(fleet);
    eprintln!("access log check: {checked} answers, {wrong} from a container other than the worker logged");
    assert!(checked > 50, "answers found in the access logs: {checked}");
    assert_eq!(wrong, 0, "answers from another container: {examples:?}");
    checked
}

/// Failed requests each instance's clients have seen so far.
fn failures(load: &Load) -> Vec<u64> {
    load.tallies
        .iter()
        .map(|t| t.failed.load(Ordering::Relaxed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_from_redis_but_not_its_peers_keeps_its_share_within_the_cap() {
    let Some((fleet, leader, workers)) = Fleet::formed(
        "a_follower_cut_off_from_redis_but_not_its_peers_keeps_its_share_within_the_cap",
        Layout::Split,
    )
    .await
    else {
        return;
    };
    let leader_index = fleet.index_of(&leader);
    let cut = (0..3).find(|&i| i != leader_index).expect("a follower");
    let cut_name = format!("w{}", cut + 1);
    let store = fleet.store.as_ref().expect("a split layout");
    let load = Load::start(&fleet);
    tokio::time::sleep(Duration::from_secs(2)).await;

    fleet.weirs[cut].disconnect(store);
    let cut_at = Instant::now();
    // It notices and stays ready (degraded); the leader hears it through the peers, who
    // carry its reports into Redis.
    hosts::eventually(
        "the cut-off follower notices and stays ready",
        FORMING,
        || async {
            let (status, body) = readiness(&fleet, cut).await?;
            (body.contains("redis unreachable") && !body.contains("isolated")).then_some(status)
        },
    )
    .await;
    let relayed = hosts::eventually("the leader hears it through its peers", FORMING, || async {
        let seen = shown(&fleet, leader_index, &cut_name).await?;
        (seen["redis"] == false).then_some(seen)
    })
    .await;
    eprintln!("relayed after {:?}: {relayed}", cut_at.elapsed());
    // Two leases on, nobody took its share: it is still one of three, and keeps its own.
    tokio::time::sleep(LEASE_TTL * 2).await;
    let seen = shown(&fleet, leader_index, &cut_name)
        .await
        .expect("still in the fleet");
    assert!(
        seen["shares"][&fleet.tag].as_u64().is_some_and(|s| s > 0),
        "{seen}"
    );
    let ready = readiness(&fleet, cut).await.expect("it answers");
    assert_eq!(ready.0, 200, "{ready:?}");
    let before_kill = failures(&load);

    // A worker dies and the leader replaces it: the cut-off follower learns the new record
    // through its peers and routes to the replacement, not to the dead worker's address.
    hosts::docker(&["kill", &workers[0]]);
    hosts::eventually("a replacement running", FORMING, || async {
        let running = hosts::running_workers(&fleet.tag);
        (running.len() == 2 && !running.contains(&workers[0])).then_some(())
    })
    .await;
    let admin = fleet.admin(cut);
    hosts::eventually(
        "the cut-off follower routes to the replacement",
        FORMING,
        || async {
            let view = hosts::admin_json(admin, "/api/v1/workers").await?;
            let mut ready: Vec<String> = view
                .as_array()?
                .iter()
                .filter(|w| w["state"] == "ready")
                .filter_map(|w| w["id"].as_str().map(str::to_string))
                .collect();
            ready.sort();
            (ready == hosts::running_workers(&fleet.tag)).then_some(())
        },
    )
    .await;

    let report = load.stop(&fleet, cut_at).await;
    load.assert_within_caps(&fleet, &report);
    eprintln!("cut off from redis only: {report:?}; failed before the worker kill {before_kill:?}");
    for (i, tally) in load.tallies.iter().enumerate() {
        assert_eq!(
            before_kill[i], 0,
            "failed before the worker died: {report:?}"
        );
        // The killed worker's requests in flight (at most its cap) may break, and so may those
        // sent to it before its death is known here: an instance stops sending to a worker
        // after `unhealthy_threshold` (2) failures in a row, or its probes, whichever first.
        // (Under a loaded machine the probes lag: one run in four saw 4 at one instance.)
        assert!(
            tally.failed.load(Ordering::Relaxed) <= u64::from(WORKER_CAP) + 2,
            "{report:?}"
        );
        assert!(tally.ok.load(Ordering::Relaxed) > 20, "{report:?}");
    }
    assert_routed_right(&load, &fleet);

    // Still cut off, with clients of its own, the follower sees the leader drain a worker (a
    // manual scale to 1, which a light load does not undo): it learns of the drain through
    // its peers and stops sending to the worker, and the leader releases the worker only once
    // the follower, heard through the peers, has nothing left in flight on it.
    let running = Arc::new(AtomicBool::new(true));
    let light = self::load(fleet.proxy(cut), cut, 2, &running);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let scale = format!("/api/v1/pools/{}/scale", fleet.tag);
    hosts::admin_post(fleet.admin(leader_index), &scale, r#"{"workers": 1}"#)
        .await
        .expect("the leader takes a manual scale");
    let drain_at = Instant::now();
    hosts::eventually("one worker released", FORMING, || async {
        (hosts::running_workers(&fleet.tag).len() == 1).then_some(())
    })
    .await;
    let drained = drain_at.elapsed();
    hosts::eventually(
        "the cut-off follower routes to the one left",
        FORMING,
        || async {
            let view = hosts::admin_json(admin, "/api/v1/workers").await?;
            let ids: Vec<String> = view
                .as_array()?
                .iter()
                .filter_map(|w| w["id"].as_str().map(str::to_string))
                .collect();
            (ids == hosts::running_workers(&fleet.tag)).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    running.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = light.summary(drain_at);
    eprintln!(
        "drained and released {drained:?} after the scale; the cut-off follower's clients: {seen}"
    );
    assert_eq!(light.failed.load(Ordering::Relaxed), 0, "{seen}");
    assert_eq!(light.over_cap.load(Ordering::Relaxed), 0, "{seen}");
    assert!(light.ok.load(Ordering::Relaxed) > 20, "{seen}");

    fleet.weirs[cut].connect(store);
    hosts::eventually("the follower reaches redis again", FORMING, || async {
        let (status, body) = readiness(&fleet, cut).await?;
        (status == 200 && !body.contains("redis unreachable")).then_some(())
    })
    .await;
}

/// One instance (the leader, or a follower) loses Redis and its peers but still reaches the
/// workers and its clients: half a lease on it uses no shared capacity and is not ready; a
/// lease after the others last heard it, they share its part out (never before it let go);
/// reconnected, it rejoins. No worker ever answers over its cap.
async fn cut_off_from_everything(test: &str, leader_cut: bool) {
    let Some((fleet, leader, workers)) = Fleet::formed(test, Layout::Split).await else {
        return;
    };
    let leader_index = fleet.index_of(&leader);
    let cut = if leader_cut {
        leader_index
    } else {
        (0..3).find(|&i| i != leader_index).expect("a follower")
    };
    let survivors: Vec<usize> = (0..3).filter(|&i| i != cut).collect();
    let names: Vec<String> = survivors.iter().map(|i| format!("w{}", i + 1)).collect();
    let store = fleet.store.as_ref().expect("a split layout");
    let load = Load::start(&fleet);
    tokio::time::sleep(Duration::from_secs(2)).await;

    fleet.weirs[cut].disconnect(store);
    fleet.weirs[cut].disconnect(&fleet.ctl);
    let cut_at = Instant::now();
    let isolated = hosts::eventually("it says it is isolated", FORMING, || async {
        let (status, body) = readiness(&fleet, cut).await?;
        (status == 503 && body.contains("isolated from the fleet")).then(|| cut_at.elapsed())
    })
    .await;
    let new_leader = fleet.agreed_leader(&survivors, FORMING).await;
    let shared_out = hosts::eventually("the survivors share its part out", FORMING, || async {
        let view = hosts::admin_json(fleet.admin(survivors[0]), "/api/v1/cluster").await?;
        let instances = view["instances"].as_array()?;
        let total: u64 = instances
            .iter()
            .filter_map(|i| i["shares"][&fleet.tag].as_u64())
            .sum();
        let settled = instances
            .iter()
            .all(|i| i["fleet"] == serde_json::json!(names));
        (settled && total == 2 * u64::from(WORKER_CAP)).then(|| cut_at.elapsed())
    })
    .await;
    let failed_at_cut_while_away = failures(&load)[cut];
    tokio::time::sleep(Duration::from_secs(2)).await;

    fleet.weirs[cut].connect(store);
    fleet.weirs[cut].connect(&fleet.ctl);
    let back_at = Instant::now();
    let cut_name = format!("w{}", cut + 1);
    let rejoined = hosts::eventually("it rejoins and takes a share again", FORMING, || async {
        let (status, _) = readiness(&fleet, cut).await?;
        let seen = shown(&fleet, cut, &cut_name).await?;
        let share = seen["shares"][&fleet.tag].as_u64()?;
        (status == 200 && share > 0).then(|| back_at.elapsed())
    })
    .await;
    fleet.agreed_leader(&[0, 1, 2], FORMING).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = load.stop(&fleet, cut_at).await;
    load.assert_within_caps(&fleet, &report);
    eprintln!(
        "cut off from everything ({}): isolated after {isolated:?}, its part shared out after \
         {shared_out:?}, new leader {new_leader}, rejoined {rejoined:?} after reconnecting, \
         {failed_at_cut_while_away} requests turned away there meanwhile; {report:?}",
        if leader_cut {
            "the leader"
        } else {
            "a follower"
        }
    );
    assert!(
        isolated < shared_out,
        "it let its share go ({isolated:?}) before the others took it ({shared_out:?})"
    );
    if leader_cut {
        assert_ne!(new_leader, leader);
    } else {
        assert_eq!(new_leader, leader);
    }
    for (i, tally) in load.tallies.iter().enumerate() {
        if i != cut {
            assert_eq!(
                tally.failed.load(Ordering::Relaxed),
                0,
                "failed requests at an instance that kept redis: {report:?}\n{}",
                fleet.logs()
            );
        }
        assert!(tally.ok.load(Ordering::Relaxed) > 20, "{report:?}");
    }
    // No relaunch: the same two workers throughout.
    assert_eq!(hosts::running_workers(&fleet.tag), workers);
    assert_routed_right(&load, &fleet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_from_redis_and_its_peers_lets_its_share_go_before_it_is_taken() {
    cut_off_from_everything(
        "a_follower_cut_off_from_redis_and_its_peers_lets_its_share_go_before_it_is_taken",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_redis_and_its_peers_is_replaced_and_the_cap_holds() {
    cut_off_from_everything(
        "a_leader_cut_off_from_redis_and_its_peers_is_replaced_and_the_cap_holds",
        true,
    )
    .await;
}

/// Pool `pool`'s `rollout` as instance `admin` shows it.
async fn rollout_at(admin: SocketAddr, pool: &str) -> Option<serde_json::Value> {
    let pools = hosts::admin_json(admin, "/api/v1/pools").await?;
    let view = pools.as_array()?.iter().find(|p| p["name"] == pool)?;
    Some(serde_json::json!({"revision": view["revision"], "rollout": view["rollout"]}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_rollout_hands_it_to_the_next_which_finishes_it() {
    let Some((fleet, leader, workers)) = Fleet::formed(
        "a_leader_killed_mid_rollout_hands_it_to_the_next_which_finishes_it",
        Layout::Shared,
    )
    .await
    else {
        return;
    };
    let leader_index = fleet.index_of(&leader);
    let follower = (leader_index + 1) % 3;
    let load = Load::start(&fleet);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Release 2 everywhere: the leader starts a canary at half the requests, and every
    // instance routes by the split its record carries.
    for (i, weir) in fleet.weirs.iter().enumerate() {
        std::fs::write(hosts::config_path(&weir.name), fleet.config(i + 1, "2")).unwrap();
        let reloaded = hosts::admin_post(fleet.admin(i), "/api/v1/reload", "").await;
        assert!(reloaded.is_some(), "{} reloads", weir.name);
    }
    let reloaded_at = Instant::now();
    let (pool, leader_admin) = (fleet.tag.clone(), fleet.admin(leader_index));
    let at_leader = hosts::eventually(
        "the leader's canary step held, a new worker ready",
        FORMING,
        || {
            let pool = pool.clone();
            async move {
                let view = rollout_at(leader_admin, &pool).await?;
                let r = &view["rollout"];
                (r["state"] == "running" && r["weight"] == 50 && r["new_ready"] == 1)
                    .then_some(view)
            }
        },
    )
    .await;
    let new_revision = at_leader["revision"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let follower_admin = fleet.admin(follower);
    hosts::eventually("a follower routing by the leader's split", FORMING, || {
        let pool = pool.clone();
        async move {
            let view = rollout_at(follower_admin, &pool).await?;
            (view["rollout"]["weight"] == 50).then_some(())
        }
    })
    .await;

    // The leader crashes mid-rollout: the next one carries it on to the end.
    load.stop_at(leader_index);
    fleet.weirs[leader_index].kill();
    let killed_at = Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader_index).collect();
    let new_leader = fleet.agreed_leader(&survivors, LEASE_TTL * 5).await;
    let new_admin = fleet.admin(fleet.index_of(&new_leader));
    let done = hosts::eventually("the rollout done by the new leader", FORMING, || {
        let pool = pool.clone();
        async move {
            let view = rollout_at(new_admin, &pool).await?;
            (view["rollout"]["state"] == "done").then_some(view)
        }
    })
    .await;
    let finished = reloaded_at.elapsed();
    // The other survivor, a follower, mirrors the leader's rollout.
    let other_admin = fleet.admin(
        survivors
            .iter()
            .copied()
            .find(|&i| i != fleet.index_of(&new_leader))
            .unwrap_or(survivors[0]),
    );
    hosts::eventually("the follower's rollout done too", FORMING, || {
        let pool = pool.clone();
        async move {
            let view = rollout_at(other_admin, &pool).await?;
            (view["rollout"]["state"] == "done").then_some(())
        }
    })
    .await;
    // Two workers at the end, both of release 2, the same at both survivors.
    let new_workers = fleet.ready_workers(survivors[0], 2).await;
    assert_eq!(fleet.ready_workers(survivors[1], 2).await, new_workers);
    let running = hosts::eventually("the old workers released", FORMING, || {
        let pool = pool.clone();
        async move {
            let running = hosts::running_workers(&pool);
            (running.len() == 2).then_some(running)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.stop(&fleet, killed_at).await;
    eprintln!(
        "rollout over a leader kill: canary at 50% {:?} after the reload; {leader} killed, {new_leader} leads and finished {finished:?} after the reload; {done}; workers {workers:?} -> {new_workers:?}; {report:?}",
        killed_at - reloaded_at
    );
    assert_eq!(running, new_workers, "the workers the fleet routes to");
    for name in &new_workers {
        assert!(!workers.contains(name), "{name} is a new worker");
        assert_eq!(hosts::label_of(name, "weir.revision"), new_revision);
    }
    load.assert_within_caps(&fleet, &report);
    for &i in &survivors {
        assert_eq!(
            load.tallies[i].failed.load(Ordering::Relaxed),
            0,
            "failed requests at a surviving instance: {report:?}\n{}",
            fleet.logs()
        );
    }
    assert_routed_right(&load, &fleet);
}
