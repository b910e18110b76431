//! The scaler loop on a paused clock, with an in-memory provider: exact timings, no processes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize};
use std::sync::OnceLock;

use tokio::sync::oneshot;

use super::*;
use crate::config::{AutoscaleConfig, Dur, PoolConfig, QueueConfig};
use crate::pool::{InFlightGuard, Rejection, RouteQueue};
use crate::provider::{LaunchSpec, Launched, ProviderError, ProviderFuture, WorkerHandle};

/// Launches "workers" that become ready after `boot` of (virtual) time.
struct FakeProvider {
    pool: OnceLock<std::sync::Weak<Pool>>,
    boot: Duration,
    fail: AtomicBool,
    launches: Mutex<Vec<Instant>>,
    released: AtomicUsize,
    next_port: AtomicU16,
    deaths: Mutex<HashMap<SocketAddr, oneshot::Sender<String>>>,
    /// What `list` reports (workers "left by an earlier weir").
    listed: Mutex<Vec<WorkerHandle>>,
    released_ids: Mutex<Vec<String>>,
    /// How long a launch call takes before it returns the worker (ms).
    call_ms: std::sync::atomic::AtomicU64,
}

impl FakeProvider {
    fn new(boot: Duration) -> Arc<Self> {
        Arc::new(FakeProvider {
            pool: OnceLock::new(),
            boot,
            fail: AtomicBool::new(false),
            launches: Mutex::new(Vec::new()),
            released: AtomicUsize::new(0),
            next_port: AtomicU16::new(20_000),
            deaths: Mutex::new(HashMap::new()),
            listed: Mutex::new(Vec::new()),
            released_ids: Mutex::new(Vec::new()),
            call_ms: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn launches(&self) -> Vec<Instant> {
        self.launches.lock().unwrap().clone()
    }

    fn kill(&self, addr: SocketAddr) {
        if let Some(tx) = self.deaths.lock().unwrap().remove(&addr) {
            let _ = tx.send("killed by test".into());
        }
    }
}

impl Provider for FakeProvider {
    fn launch(
        &self,
        spec: LaunchSpec,
    ) -> ProviderFuture<'_, Result<Launched, crate::provider::ProviderError>> {
        self.launches.lock().unwrap().push(Instant::now());
        let failing = self.fail.load(Ordering::SeqCst);
        let port = self.next_port.fetch_add(1, Ordering::SeqCst);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let pool = self.pool.get().cloned();
        let boot = self.boot;
        let call = Duration::from_millis(self.call_ms.load(Ordering::SeqCst));
        let (tx, rx) = oneshot::channel();
        self.deaths.lock().unwrap().insert(addr, tx);
        Box::pin(async move {
            tokio::time::sleep(call).await;
            if failing {
                return Err(ProviderError::Spawn("test says no".into()));
            }
            tokio::spawn(async move {
                tokio::time::sleep(boot).await;
                let Some(pool) = pool.and_then(|p| p.upgrade()) else {
                    return;
                };
                if let Some(w) = pool.workers().iter().find(|w| w.addr == addr) {
                    if w.state() == WorkerState::Starting {
                        w.set_state(WorkerState::Ready);
                    }
                }
            });
            Ok(Launched {
                handle: WorkerHandle {
                    id: format!("fake-{port}"),
                    addr,
                    revision: spec.revision.clone(),
                },
                exited: Some(Box::pin(async move { rx.await.unwrap_or_default() })),
            })
        })
    }

    fn release(
        &self,
        handle: WorkerHandle,
    ) -> ProviderFuture<'_, Result<(), crate::provider::ProviderError>> {
        self.released.fetch_add(1, Ordering::SeqCst);
        self.released_ids.lock().unwrap().push(handle.id);
        Box::pin(async { Ok(()) })
    }

    fn list(&self) -> ProviderFuture<'_, Result<Vec<WorkerHandle>, ProviderError>> {
        let listed = self.listed.lock().unwrap().clone();
        Box::pin(async move { Ok(listed) })
    }

    fn describe(&self) -> String {
        "fake".into()
    }

    fn can_launch(&self) -> bool {
        true
    }
}

struct Rig {
    pool: Arc<Pool>,
    provider: Arc<FakeProvider>,
    scaler: Arc<PoolScaler>,
    route: Arc<RouteQueue>,
    _stop: watch::Sender<bool>,
}

fn rig(autoscale: AutoscaleConfig, concurrency: u32, boot: Duration) -> Rig {
    rig_with(autoscale, concurrency, FakeProvider::new(boot))
}

fn rig_with(autoscale: AutoscaleConfig, concurrency: u32, provider: Arc<FakeProvider>) -> Rig {
    let config: PoolConfig = toml::from_str(&format!(
        "worker_concurrency = {concurrency}\nrevision = \"r1\"\nprovider = {{ kind = \"exec\", launch = \"x\", release = \"x\" }}"
    ))
    .unwrap();
    let pool = Pool::from_config("p", &config);
    let _ = provider.pool.set(Arc::downgrade(&pool));
    let policy = ScalePolicy::from_config(&autoscale, Some(concurrency));
    let membership = Membership::new(Arc::clone(&pool));
    membership.set_probing(false);
    let scaler = PoolScaler::new(
        membership,
        provider.clone(),
        policy,
        Arc::new(ActivityLog::default()),
    );
    scaler.set_revision(config.revision());
    let (stop, stop_rx) = watch::channel(false);
    tokio::spawn(Arc::clone(&scaler).run(stop_rx));
    let route = RouteQueue::new(
        "r".into(),
        &QueueConfig {
            max_size: 1000,
            timeout: Dur::from_secs(120),
            ..QueueConfig::default()
        },
    );
    Rig {
        pool,
        provider,
        scaler,
        route,
        _stop: stop,
    }
}

fn ready(pool: &Pool) -> usize {
    pool.workers()
        .iter()
        .filter(|w| w.state() == WorkerState::Ready)
        .count()
}

async fn advance_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() <= limit, "{what} not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    start.elapsed()
}

/// Hold `n` requests (each for `hold`) through the pool's admission, as clients would.
fn load(
    rig: &Rig,
    n: usize,
    hold: Duration,
) -> Vec<tokio::task::JoinHandle<Result<(), Rejection>>> {
    (0..n)
        .map(|_| {
            let (pool, route) = (Arc::clone(&rig.pool), Arc::clone(&rig.route));
            tokio::spawn(async move {
                let admission = pool.acquire(&route, None).await?;
                tokio::time::sleep(hold).await;
                drop::<InFlightGuard>(admission.slot);
                Ok(())
            })
        })
        .collect()
}

fn policy(min: u32, max: u32, idle_secs: u64) -> AutoscaleConfig {
    AutoscaleConfig {
        min_workers: min,
        max_workers: max,
        max_idle_time: Dur::from_secs(idle_secs),
        panic_window: Dur::from_secs(2),
        stable_window: Dur::from_secs(10),
        ..AutoscaleConfig::default()
    }
}

#[tokio::test(start_paused = true)]
async fn burst_grows_the_pool_fast_and_idle_shrinks_it_to_min() {
    let rig = rig(policy(1, 8, 30), 2, Duration::from_millis(300));
    advance_until("initial worker", Duration::from_secs(1), || {
        ready(&rig.pool) == 1
    })
    .await;

    // A burst of 12 long requests against 1 worker with 2 slots.
    let burst_at = Instant::now();
    let tasks = load(&rig, 12, Duration::from_secs(5));
    let decided = advance_until("first scale-up launch", Duration::from_secs(1), || {
        rig.provider.launches().len() > 1
    })
    .await;
    assert!(
        decided <= Duration::from_millis(250),
        "scale-up decision after {decided:?}"
    );
    advance_until("at least 3 ready", Duration::from_secs(3), || {
        ready(&rig.pool) >= 3
    })
    .await;
    let peak = advance_until("pool at its size", Duration::from_secs(5), || {
        ready(&rig.pool) >= 6
    })
    .await;
    assert!(rig.pool.workers().len() <= 8);
    for t in tasks {
        assert_eq!(t.await.unwrap(), Ok(()), "no request failed");
    }
    let _ = (burst_at, peak);

    // Load gone: back to the minimum about max_idle_time later, never below it.
    let quiet_at = Instant::now();
    advance_until("back to min", Duration::from_secs(45), || {
        rig.pool.workers().len() == 1
    })
    .await;
    // Workers idle since before the last request ended may go a little earlier.
    let took = quiet_at.elapsed();
    assert!(
        took >= Duration::from_secs(25) && took <= Duration::from_secs(32),
        "{took:?}"
    );
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(rig.pool.workers().len(), 1);
    let events = rig.scaler.activity.events();
    assert!(
        events
            .iter()
            .any(|e| e.action == Action::ScaleUp && e.reason.contains("queue depth")),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e.action == Action::ScaleDown));
}

#[tokio::test(start_paused = true)]
async fn scale_from_zero_launches_at_once_and_serves_the_first_request() {
    let rig = rig(policy(0, 4, 30), 4, Duration::from_millis(800));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        rig.provider.launches().is_empty(),
        "min 0 starts with nothing"
    );
    let asked = Instant::now();
    let (pool, route) = (Arc::clone(&rig.pool), Arc::clone(&rig.route));
    let first = tokio::spawn(async move {
        pool.acquire(&route, None)
            .await
            .map(|a| (a.waited, a.reason))
    });
    advance_until("launch", Duration::from_millis(5), || {
        !rig.provider.launches().is_empty()
    })
    .await;
    assert!(rig.provider.launches()[0].duration_since(asked) <= Duration::from_millis(5));
    let (waited, reason) = first.await.unwrap().unwrap();
    assert_eq!(reason, Some(crate::pool::WaitReason::NoWorker));
    assert!(
        waited >= Duration::from_millis(800) && waited <= Duration::from_millis(850),
        "{waited:?}"
    );
    assert_eq!(rig.provider.launches().len(), 1, "one request, one launch");

    // Idle again: scaled back to zero after max_idle_time.
    advance_until("scaled to zero", Duration::from_secs(40), || {
        rig.pool.workers().is_empty()
    })
    .await;
    assert_eq!(rig.provider.released.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn failed_launch_fails_its_waiters_fast_and_backs_off() {
    let rig = rig(policy(0, 4, 30), 4, Duration::from_millis(100));
    rig.provider.fail.store(true, Ordering::SeqCst);
    let (pool, route) = (Arc::clone(&rig.pool), Arc::clone(&rig.route));
    let started = Instant::now();
    let result = pool.acquire(&route, None).await.map(|_| ());
    assert_eq!(result, Err(Rejection::NoCapacity));
    assert!(started.elapsed() < Duration::from_millis(50));
    // More requests keep coming: launches are spaced by the growing backoff, not a tight loop.
    let _tasks = load(&rig, 3, Duration::from_millis(10));
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut decisions = rig.provider.launches();
    decisions.dedup();
    assert!(
        decisions.len() <= 4,
        "{} launch decisions in 10 s",
        decisions.len()
    );
    for pair in decisions.windows(2) {
        assert!(
            pair[1].duration_since(pair[0]) >= Duration::from_millis(900),
            "{decisions:?}"
        );
    }
    assert!(rig
        .scaler
        .activity
        .events()
        .iter()
        .any(|e| e.action == Action::LaunchFailed));
}

#[tokio::test(start_paused = true)]
async fn a_dead_worker_is_replaced() {
    let rig = rig(policy(2, 4, 30), 4, Duration::from_millis(200));
    advance_until("two ready", Duration::from_secs(2), || {
        ready(&rig.pool) == 2
    })
    .await;
    let victim = rig.pool.workers()[0].addr;
    rig.provider.kill(victim);
    advance_until("replaced", Duration::from_secs(2), || {
        ready(&rig.pool) == 2 && rig.pool.workers().iter().all(|w| w.addr != victim)
    })
    .await;
    assert_eq!(rig.provider.launches().len(), 3);
    let revision = rig.scaler.revision().expect("an exec pool has a revision");
    assert!(
        rig.pool
            .workers()
            .iter()
            .all(|w| w.revision() == Some(revision.as_str())),
        "launched with the pool's revision"
    );
    assert!(rig
        .scaler
        .activity
        .events()
        .iter()
        .any(|e| e.action == Action::Replace));
}

#[tokio::test(start_paused = true)]
async fn scale_in_drains_before_release_and_loses_nothing() {
    let rig = rig(policy(1, 4, 5), 1, Duration::from_millis(100));
    rig.scaler.set_manual(3);
    advance_until("three ready", Duration::from_secs(2), || {
        ready(&rig.pool) == 3
    })
    .await;
    // Requests on every worker, then an operator scales to 1 while they run.
    let tasks = load(&rig, 3, Duration::from_secs(2));
    advance_until("all busy", Duration::from_secs(1), || {
        rig.pool.in_flight() == 3
    })
    .await;
    rig.scaler.set_manual(1);
    advance_until("draining", Duration::from_secs(1), || {
        rig.pool
            .workers()
            .iter()
            .filter(|w| w.state() == WorkerState::Draining)
            .count()
            == 2
    })
    .await;
    // Nothing is released while its request runs.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rig.provider.released.load(Ordering::SeqCst), 0);
    for t in tasks {
        assert_eq!(t.await.unwrap(), Ok(()));
    }
    advance_until("released after drain", Duration::from_secs(1), || {
        rig.provider.released.load(Ordering::SeqCst) == 2
    })
    .await;
    assert_eq!(rig.pool.workers().len(), 1);
    assert_eq!(rig.scaler.desired(), 1);
    assert_eq!(
        rig.provider.launches().len(),
        3,
        "the operator's count was not undone"
    );
}

#[tokio::test(start_paused = true)]
async fn a_surplus_worker_goes_idle_and_a_returning_burst_reuses_it() {
    let rig = rig(policy(1, 4, 20), 4, Duration::from_millis(100));
    rig.scaler.set_manual(3);
    advance_until("three ready", Duration::from_secs(2), || {
        ready(&rig.pool) == 3
    })
    .await;
    // Light steady load (1 request at a time): two workers are surplus.
    let light = tokio::spawn({
        let (pool, route) = (Arc::clone(&rig.pool), Arc::clone(&rig.route));
        async move {
            for _ in 0..100 {
                let a = pool.acquire(&route, None).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
                drop(a);
            }
        }
    });
    advance_until("surplus marked", Duration::from_secs(15), || {
        rig.pool.workers().iter().filter(|w| w.is_surplus()).count() == 2
    })
    .await;
    // A burst before max_idle_time: the surplus workers serve it, nothing new launches.
    let launches_before = rig.provider.launches().len();
    let burst = load(&rig, 5, Duration::from_millis(500));
    for t in burst {
        assert_eq!(t.await.unwrap(), Ok(()));
    }
    assert_eq!(
        rig.provider.launches().len(),
        launches_before,
        "no cold start"
    );
    light.abort();
}

#[tokio::test(start_paused = true)]
async fn listed_workers_are_adopted_up_to_max_and_the_rest_released() {
    let provider = FakeProvider::new(Duration::from_millis(100));
    *provider.listed.lock().unwrap() = (1..=4)
        .map(|i| WorkerHandle {
            id: format!("old-{i}"),
            addr: SocketAddr::from(([127, 0, 0, 1], 30_000 + i)),
            revision: Some("r1".into()),
        })
        .collect();
    // max_idle_time far off: only the startup deadline releases anything below.
    let rig = rig_with(policy(2, 3, 600), 4, provider);
    advance_until("adopted", Duration::from_secs(1), || {
        rig.pool.workers().len() == 3
    })
    .await;
    assert!(
        rig.pool
            .workers()
            .iter()
            .all(|w| w.revision() == Some("r1")),
        "adopted workers keep the revision they were launched with"
    );
    advance_until("still adopted", Duration::from_millis(1), || {
        rig.pool.workers().len() == 3
    })
    .await;
    let mut ids: Vec<String> = rig.pool.workers().iter().map(|w| w.name.clone()).collect();
    ids.sort();
    assert_eq!(
        ids,
        ["old-1", "old-2", "old-3"],
        "ids come from the provider"
    );
    advance_until("the extra released", Duration::from_secs(1), || {
        rig.provider.released.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(*rig.provider.released_ids.lock().unwrap(), ["old-4"]);
    // Adopted workers count toward the minimum: nothing is launched for it.
    for id in ["old-2", "old-3"] {
        rig.pool
            .worker_named(id)
            .unwrap()
            .set_state(WorkerState::Ready);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(rig.provider.launches().is_empty());
    assert!(rig
        .scaler
        .activity
        .events()
        .iter()
        .any(|e| e.action == Action::Adopt && e.to == 3));
    // One that never passes a probe is given up at the startup deadline and released; the
    // other two still make the minimum.
    advance_until("given up", Duration::from_secs(70), || {
        rig.pool.worker_named("old-1").is_none()
    })
    .await;
    advance_until("released", Duration::from_secs(1), || {
        rig.provider.released_ids.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(rig.provider.released_ids.lock().unwrap()[1], "old-1");
    assert!(rig.provider.launches().is_empty());
}

/// A second provider for the same pool (a new revision's), on ports of its own.
fn next_revision_provider(rig: &Rig, boot: Duration) -> Arc<FakeProvider> {
    let next = FakeProvider::new(boot);
    next.next_port.store(21_000, Ordering::SeqCst);
    let _ = next.pool.set(Arc::downgrade(&rig.pool));
    next
}

fn rollout_state(rig: &Rig) -> Option<RolloutState> {
    rig.scaler.rollout_view().map(|r| r.state)
}

#[tokio::test(start_paused = true)]
async fn a_rollout_replaces_every_worker_and_never_falls_below_the_ready_count() {
    let rig = rig(policy(3, 6, 600), 4, Duration::from_millis(500));
    advance_until("three ready", Duration::from_secs(5), || {
        ready(&rig.pool) == 3
    })
    .await;
    let next = next_revision_provider(&rig, Duration::from_millis(500));
    rig.scaler.start_rollout(
        next.clone(),
        (Some("r2".into()), Some("t2".into())),
        crate::config::RolloutConfig::default(),
    );
    let mut lowest = usize::MAX;
    let mut most = 0;
    advance_until("every worker of r2", Duration::from_secs(30), || {
        lowest = lowest.min(ready(&rig.pool));
        most = most.max(rig.pool.workers().len());
        let workers = rig.pool.workers();
        workers.len() == 3
            && workers
                .iter()
                .all(|w| w.revision() == Some("r2") && w.state() == WorkerState::Ready)
    })
    .await;
    assert_eq!(lowest, 3, "ready workers never below the pool's count");
    assert_eq!(
        most, 4,
        "one new worker at a time beyond it (25%, at least 1)"
    );
    assert_eq!(next.launches().len(), 3, "one new worker per old one");
    assert_eq!(
        rig.provider.released.load(Ordering::SeqCst),
        3,
        "the old workers released through the provider that launched them"
    );
    advance_until("done", Duration::from_secs(1), || {
        rollout_state(&rig) == Some(RolloutState::Done)
    })
    .await;
    let rollouts = rig
        .scaler
        .activity
        .events()
        .iter()
        .filter(|e| e.action == Action::Rollout)
        .count();
    assert_eq!(rollouts, 2, "started and done");
}

#[tokio::test(start_paused = true)]
async fn a_revision_whose_workers_fail_to_start_is_rolled_back_and_the_old_workers_stay() {
    let rig = rig(policy(2, 4, 600), 4, Duration::from_millis(200));
    advance_until("two ready", Duration::from_secs(5), || {
        ready(&rig.pool) == 2
    })
    .await;
    let old = rig.scaler.revision();
    let bad = next_revision_provider(&rig, Duration::from_millis(200));
    bad.fail.store(true, Ordering::SeqCst);
    rig.scaler.start_rollout(
        bad.clone(),
        (Some("bad".into()), Some("t-bad".into())),
        crate::config::RolloutConfig::default(),
    );
    let mut lowest = usize::MAX;
    advance_until("rolled back", Duration::from_secs(60), || {
        lowest = lowest.min(ready(&rig.pool));
        rollout_state(&rig) == Some(RolloutState::RolledBack)
    })
    .await;
    assert_eq!(lowest, 2, "the old workers served throughout");
    assert_eq!(bad.launches().len(), 3, "failure_threshold launches");
    assert_eq!(rig.scaler.revision(), old, "the old template is back");
    assert_eq!(rig.provider.released.load(Ordering::SeqCst), 0);
    assert!(rig
        .scaler
        .activity
        .events()
        .iter()
        .any(|e| e.action == Action::Rollback));
    // New workers come from the old template again: a dead worker is replaced through it.
    let before = rig.provider.launches().len();
    let victim = rig.pool.workers()[0].addr;
    rig.provider.kill(victim);
    advance_until(
        "replaced by the old revision",
        Duration::from_secs(30),
        || ready(&rig.pool) == 2 && rig.pool.workers().iter().all(|w| w.addr != victim),
    )
    .await;
    assert_eq!(rig.provider.launches().len(), before + 1);
    assert_eq!(bad.launches().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_rollout_begun_by_another_weir_is_carried_on_after_adoption() {
    // A restarted weir (or a new leader) finds workers of an older revision: it replaces them
    // as the rollout it finds under way.
    let provider = FakeProvider::new(Duration::from_millis(100));
    *provider.listed.lock().unwrap() = (1..=2)
        .map(|i| WorkerHandle {
            id: format!("old-{i}"),
            addr: SocketAddr::from(([127, 0, 0, 1], 31_000 + i)),
            revision: Some("r0".into()),
        })
        .collect();
    let rig = rig_with(policy(2, 4, 600), 4, provider);
    advance_until("adopted", Duration::from_secs(1), || {
        rig.pool.workers().len() >= 2
    })
    .await;
    for w in rig.pool.workers().iter() {
        w.set_state(WorkerState::Ready);
    }
    let mut lowest = usize::MAX;
    advance_until("every worker of r1", Duration::from_secs(30), || {
        lowest = lowest.min(ready(&rig.pool));
        let workers = rig.pool.workers();
        workers.len() == 2
            && workers
                .iter()
                .all(|w| w.revision() == Some("r1") && w.state() == WorkerState::Ready)
    })
    .await;
    assert_eq!(lowest, 2, "the adopted workers served until replaced");
    assert_eq!(rig.provider.released.load(Ordering::SeqCst), 2);
    let view = rig.scaler.rollout_view().expect("a rollout");
    assert_eq!(view.from.as_deref(), Some("r0"));
}

/// A rollout with one canary step of `weight` percent held for 10 s, gated on the 5xx rate.
fn canary_settings(weight: u32) -> crate::config::RolloutConfig {
    crate::config::RolloutConfig {
        steps: vec![crate::config::CanaryStep {
            weight,
            hold: Dur::from_secs(10),
        }],
        max_error_rate: Some(0.01),
        max_latency_ratio: Some(1.5),
        ..crate::config::RolloutConfig::default()
    }
}

/// Whether the activity log holds a `action` event whose reason contains `text`.
fn logged(rig: &Rig, action: Action, text: &str) -> bool {
    rig.scaler
        .activity
        .events()
        .iter()
        .any(|e| e.action == action && e.reason.contains(text))
}

/// A pool of three r1 workers whose rollout to r2 holds a canary step at `weight` percent
/// (its new worker ready), and r2's provider.
async fn canary_held(weight: u32) -> (Rig, Arc<FakeProvider>) {
    let rig = rig(policy(3, 6, 600), 4, Duration::from_millis(500));
    advance_until("three ready", Duration::from_secs(5), || {
        ready(&rig.pool) == 3
    })
    .await;
    let next = next_revision_provider(&rig, Duration::from_millis(500));
    rig.scaler.start_rollout(
        next.clone(),
        (Some("r2".into()), Some("t2".into())),
        canary_settings(weight),
    );
    advance_until("the canary step held", Duration::from_secs(5), || {
        logged(&rig, Action::Rollout, &format!("step 1/1, {weight}%"))
    })
    .await;
    (rig, next)
}

/// Serve `n` requests one after another through the pool's balancer, each answered in 5 ms;
/// the new revision `r2` answers every `fail_every`th of its own 500. Returns how many `r2`
/// answered.
fn serve(rig: &Rig, n: usize, fail_every: usize) -> usize {
    let mut new = 0;
    for _ in 0..n {
        let slot = rig.pool.try_acquire(None).expect("a free slot");
        let worker = Arc::clone(slot.worker());
        let status = if worker.revision() == Some("r2") {
            new += 1;
            if fail_every > 0 && new % fail_every == 0 {
                500
            } else {
                200
            }
        } else {
            200
        };
        drop(slot);
        worker.record_answer(status, Duration::from_millis(5));
    }
    new
}

#[tokio::test(start_paused = true)]
async fn a_canary_step_sends_its_weight_to_the_new_revision_then_the_rollout_replaces() {
    let (rig, _) = canary_held(20).await;
    let view = rig.scaler.rollout_view().expect("a rollout");
    assert_eq!((view.step, view.steps, view.weight), (Some(1), 1, Some(20)));
    assert_eq!(
        (view.old_ready, view.new_ready),
        (3, 1),
        "the old workers all stay"
    );
    assert_eq!(serve(&rig, 2_000, 0), 400, "exactly 20% of the requests");
    advance_until("the gate passed", Duration::from_secs(11), || {
        logged(&rig, Action::Rollout, "passed")
    })
    .await;
    assert_eq!(rig.pool.split(), None, "no split while replacing");
    advance_until("done", Duration::from_secs(30), || {
        rollout_state(&rig) == Some(RolloutState::Done)
    })
    .await;
    assert!(rig
        .pool
        .workers()
        .iter()
        .all(|w| w.revision() == Some("r2")));
    let view = rig.scaler.rollout_view().expect("a rollout");
    assert!(
        view.gate
            .as_deref()
            .is_some_and(|g| g.contains("5xx 0.0% of 400")),
        "{:?}",
        view.gate
    );
}

#[tokio::test(start_paused = true)]
async fn a_canary_that_answers_500_to_a_fifth_of_its_requests_is_rolled_back_at_its_gate() {
    let (rig, next) = canary_held(10).await;
    assert_eq!(serve(&rig, 1_000, 5), 100);
    let mut lowest = usize::MAX;
    advance_until("rolled back at the gate", Duration::from_secs(11), || {
        lowest = lowest.min(ready(&rig.pool));
        rollout_state(&rig) == Some(RolloutState::RolledBack)
    })
    .await;
    assert!(
        logged(&rig, Action::Rollback, "5xx 20.0% of 100 vs 0.0% of 900"),
        "{:?}",
        rig.scaler.activity.events()
    );
    assert_eq!(lowest, 3, "the old workers served throughout");
    assert_eq!(
        rig.scaler.revision().as_deref(),
        Some("r1"),
        "the old template is back"
    );
    assert_eq!(rig.pool.split(), None);
    advance_until("the canary released", Duration::from_secs(30), || {
        rig.pool
            .workers()
            .iter()
            .all(|w| w.revision() == Some("r1"))
    })
    .await;
    assert_eq!(next.released.load(Ordering::SeqCst), 1);
}

#[test]
fn a_gate_judges_rates_and_latency_against_the_old_revision() {
    use crate::pool::RevisionStats;
    let settings = canary_settings(10);
    let answers = |errors: u64, of: u64, ms: u64| {
        let stats = RevisionStats::default();
        for i in 0..of {
            stats.record(
                if i < errors { 503 } else { 200 },
                Duration::from_millis(ms),
            );
        }
        stats.snapshot()
    };
    let judge = |old, new| super::rollout::judge_for_tests(old, new, &settings);
    assert!(
        judge(answers(0, 100, 10), answers(0, 0, 10)).is_ok(),
        "nothing seen"
    );
    assert!(
        judge(answers(1, 100, 10), answers(1, 50, 10)).is_ok(),
        "2% vs 1%: within a point"
    );
    assert!(
        judge(answers(0, 100, 10), answers(2, 50, 10)).is_err(),
        "4% vs 0%"
    );
    assert!(
        judge(answers(0, 100, 10), answers(0, 50, 14)).is_ok(),
        "1.4 times"
    );
    let slow = judge(answers(0, 100, 10), answers(0, 50, 20));
    assert!(slow.as_ref().is_err_and(|e| e.contains("p99")), "{slow:?}");
    assert!(
        judge(answers(0, 100, 10), answers(0, 10, 50)).is_ok(),
        "too few to judge a p99"
    );
}

#[tokio::test(start_paused = true)]
async fn a_follower_mirrors_the_leaders_rollout_and_gives_up_a_revision_it_gave_up() {
    use crate::fleet::RolloutMark;
    let rig = rig(policy(2, 4, 600), 4, Duration::from_millis(100));
    advance_until("two ready", Duration::from_secs(5), || {
        ready(&rig.pool) == 2
    })
    .await;
    // Stand in for a follower: its reload began the rollout; the leader runs it.
    let next = next_revision_provider(&rig, Duration::from_millis(100));
    rig.scaler.start_rollout(
        next,
        (Some("r2".into()), Some("t2".into())),
        crate::config::RolloutConfig::default(),
    );
    let mark = |to: &str, state: &str| RolloutMark {
        to: to.into(),
        state: state.into(),
    };
    rig.scaler.mirror_rollout(Some(&mark("r9", "rolled_back")));
    assert_eq!(
        rollout_state(&rig),
        Some(RolloutState::Running),
        "another revision's"
    );
    rig.scaler.mirror_rollout(Some(&mark("r2", "paused")));
    assert_eq!(rollout_state(&rig), Some(RolloutState::Paused));
    rig.scaler.mirror_rollout(Some(&mark("r2", "rolled_back")));
    assert_eq!(rollout_state(&rig), Some(RolloutState::RolledBack));
    assert_eq!(
        rig.scaler.revision().as_deref(),
        Some("r1"),
        "the old template is back"
    );
    assert_eq!(
        rig.scaler.rollout_mark(),
        Some(mark("r2", "rolled_back")),
        "as it would publish it, should it lead"
    );
}

#[tokio::test(start_paused = true)]
async fn a_worker_whose_launch_returns_after_its_rollout_was_aborted_is_released() {
    let rig = rig(policy(2, 4, 600), 4, Duration::from_millis(100));
    advance_until("two ready", Duration::from_secs(5), || {
        ready(&rig.pool) == 2
    })
    .await;
    let next = next_revision_provider(&rig, Duration::from_millis(100));
    next.call_ms.store(1_000, Ordering::SeqCst);
    rig.scaler.start_rollout(
        next.clone(),
        (Some("r2".into()), Some("t2".into())),
        crate::config::RolloutConfig::default(),
    );
    advance_until("a launch under way", Duration::from_secs(1), || {
        !next.launches().is_empty()
    })
    .await;
    assert!(rig
        .pool
        .workers()
        .iter()
        .all(|w| w.revision() == Some("r1")));
    rig.scaler.rollout_action("abort").expect("aborted");
    advance_until(
        "the late r2 worker released",
        Duration::from_secs(5),
        || next.released.load(Ordering::SeqCst) == 1,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let workers = rig.pool.workers();
    let revisions: Vec<Option<&str>> = workers.iter().map(|w| w.revision()).collect();
    assert_eq!(revisions.len(), 2, "{revisions:?}");
    assert!(rig
        .pool
        .workers()
        .iter()
        .all(|w| w.revision() == Some("r1")));
}
