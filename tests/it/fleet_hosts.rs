//! The fleet as hosts of their own (see `hosts`): three weir containers on two networks,
//! `ctl` (Redis and the weirs) and `data` (the weirs and the worker containers the leader
//! launches), load from this test at every instance, and faults made with the engine.

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

/// A fleet of `count` weirs over one pool of two Docker workers.
/// Fields drop in order: the containers before the networks they are on.
struct Fleet {
    tag: String,
    weirs: Vec<Container>,
    redis: Container,
    /// The network of Redis and the weirs.
    ctl: Net,
    data: Net,
}

impl Fleet {
    fn start(test: &str, count: usize) -> Fleet {
        let tag = hosts::tag(test);
        let ctl = Net::create(format!("{tag}-ctl"));
        let data = Net::create(format!("{tag}-data"));
        let redis = hosts::redis(format!("{tag}-redis"), &ctl);
        let weirs = (1..=count)
            .map(|n| {
                let config = format!(
                    r#"[server]
shutdown_grace = "2s"
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
[[routes]]
pool = "{tag}"
[pools.{tag}]
worker_concurrency = {WORKER_CAP}
provider = {{ kind = "docker", image = "{image}", port = 8080, network = "{data}", pull = "never", stop_grace = "2s" }}
health = {{ path = "/hello", interval = "200ms" }}
[pools.{tag}.autoscale]
min_workers = 2
max_workers = 2
"#,
                    admin = hosts::ADMIN_PORT,
                    token = hosts::TOKEN,
                    proxy = hosts::PROXY_PORT,
                    ttl = LEASE_TTL.as_secs(),
                    image = crate::common::IMAGE,
                    data = data.name,
                    // By name (the network's DNS): a restarted Redis may get another address.
                    redis = redis.name,
                );
                hosts::weir(format!("{tag}-w{n}"), &config, &[&ctl, &data])
            })
            .collect();
        Fleet {
            tag,
            weirs,
            redis,
            ctl,
            data,
        }
    }

    /// Three weirs once formed: one leader they all name, and the two workers every one of
    /// them routes to; `None` when the test cannot run here (said so by [`hosts::ready`]).
    async fn formed(test: &str) -> Option<(Fleet, String, Vec<String>)> {
        if !hosts::ready(test) {
            return None;
        }
        let fleet = Fleet::start(test, 3);
        let leader = fleet.agreed_leader(&[0, 1, 2], FORMING).await;
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
}

impl Tally {
    fn count(&self, answer: Result<Answer, String>) {
        match answer {
            Ok(a) if a.status == 200 => {
                self.ok.fetch_add(1, Ordering::Relaxed);
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

/// `clients` loops at `proxy` asking for a 50 ms answer until `running` flips.
fn load(proxy: SocketAddr, clients: usize, running: &Arc<AtomicBool>) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    for _ in 0..clients {
        let tally = Arc::clone(&tally);
        let running = Arc::clone(running);
        tokio::spawn(async move {
            while running.load(Ordering::Relaxed) {
                let answer =
                    hosts::fetch(proxy, "/?delay=50ms", None, Duration::from_secs(10)).await;
                tally.count(answer);
            }
        });
    }
    tally
}

/// Load at every instance of `fleet`: 4 clients each, 12 over two workers of cap 3, so
/// requests queue and each instance keeps to its share.
struct Load {
    running: Arc<AtomicBool>,
    tallies: Vec<Arc<Tally>>,
}

impl Load {
    fn start(fleet: &Fleet) -> Load {
        let running = Arc::new(AtomicBool::new(true));
        let tallies = (0..fleet.weirs.len())
            .map(|i| load(fleet.proxy(i), 4, &running))
            .collect();
        Load { running, tallies }
    }

    /// Stop, let the last answers land, and say what each instance's clients saw.
    async fn stop(&self, fleet: &Fleet, mark: Instant) -> Vec<String> {
        self.running.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
        (0..fleet.weirs.len())
            .map(|i| format!("{}: {}", fleet.weirs[i].name, self.tallies[i].summary(mark)))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_elect_one_leader_keep_the_cap_and_fail_over_after_docker_kill() {
    let Some((fleet, leader, workers)) =
        Fleet::formed("three_hosts_elect_one_leader_keep_the_cap_and_fail_over_after_docker_kill")
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
    let tallies = &load.tallies;
    eprintln!("failover to {new_leader} after {failover:?}; {report:?}");
    assert_ne!(new_leader, leader);
    assert!(
        failover <= LEASE_TTL * 3,
        "a new leader {failover:?} after the kill (lease {LEASE_TTL:?}); {report:?}"
    );
    for (i, tally) in tallies.iter().enumerate() {
        assert_eq!(
            tally.over_cap.load(Ordering::Relaxed),
            0,
            "a worker answered more than {WORKER_CAP} at once: {report:?}"
        );
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_empty_under_load_never_lets_a_worker_past_its_cap() {
    let Some((fleet, leader, workers)) =
        Fleet::formed("a_redis_restarted_empty_under_load_never_lets_a_worker_past_its_cap").await
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
    eprintln!("leader {leader}, then {back_leader}; fleet re-formed {rejoined:?} after the restart; {report:?}");
    for tally in &load.tallies {
        assert_eq!(
            tally.over_cap.load(Ordering::Relaxed),
            0,
            "a worker answered more than {WORKER_CAP} at once: {report:?}\n{}",
            fleet.logs()
        );
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_hands_the_workers_over_and_stopping_the_whole_fleet_releases_them() {
    let Some((fleet, leader, workers)) = Fleet::formed(
        "a_rolling_restart_hands_the_workers_over_and_stopping_the_whole_fleet_releases_them",
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
    let Some((fleet, leader, workers)) =
        Fleet::formed("an_instance_cut_off_from_redis_follows_the_workers_the_provider_lists")
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
    hosts::eventually("the cut-off instance notices", FORMING, || async move {
        let ready = hosts::admin_json(admin, "/readyz").await?;
        ready
            .to_string()
            .contains("redis unreachable")
            .then_some(())
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
