//! Micro-benchmarks of the per-request decisions: route lookup over 100 routes, a balancer pick
//! over 64 workers, queue admit/release, and metrics recording. `cargo bench` runs them.

use std::sync::Arc;
use std::time::Duration;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use weir::config::{parse, Balance, QueueConfig};
use weir::pool::{Balancer, Pool, RouteQueue, Worker, WorkerState};
use weir::routing::RouteTable;
use weir::telemetry::RouteMetrics;

fn hundred_routes() -> (RouteTable, Vec<(String, String)>) {
    let mut text = String::from(
        "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n",
    );
    let mut probes = Vec::new();
    for i in 0..100 {
        let host = match i % 4 {
            0 => "*".to_string(),
            1 => format!("h{i}.example.com"),
            2 => format!("*.t{i}.example.com"),
            _ => format!("api{i}.example.com"),
        };
        text.push_str(&format!(
            "[[routes]]\nhost = \"{host}\"\npath_prefix = \"/svc{i}/v1\"\npool = \"p\"\n"
        ));
        let probe_host = host.replace('*', "x");
        probes.push((probe_host, format!("/svc{i}/v1/items/42?q=1")));
    }
    text.push_str("[pools.p]\nprovider = { kind = \"static\", addresses = [\"127.0.0.1:1\"] }\n");
    let config = parse(&text, "bench").unwrap();
    let pools = config
        .pools
        .iter()
        .map(|(n, c)| (n.clone(), Pool::from_config(n, c)))
        .collect();
    (
        RouteTable::build(&config, &pools, &Default::default(), None).unwrap(),
        probes,
    )
}

fn route_lookup(c: &mut Criterion) {
    let (table, probes) = hundred_routes();
    let mut i = 0;
    c.bench_function("route lookup (100 routes)", |b| {
        b.iter(|| {
            i = (i + 1) % probes.len();
            let (host, path) = &probes[i];
            black_box(table.lookup(Some(host), path).is_some())
        })
    });
}

fn balancer_pick(c: &mut Criterion) {
    let workers: Vec<Arc<Worker>> = (0..64)
        .map(|i| {
            Worker::detached(
                &format!("w{i}"),
                format!("127.0.0.1:{}", 10_000 + i).parse().unwrap(),
                WorkerState::Ready,
            )
        })
        .collect();
    for policy in [Balance::LeastInflight, Balance::RoundRobin] {
        let balancer = Balancer::new(policy);
        c.bench_function(
            &format!("balancer pick+release (64 workers, {policy:?})"),
            |b| b.iter(|| drop(black_box(balancer.acquire(&workers, None)))),
        );
    }
}

fn queue_admit_release(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config: weir::config::PoolConfig = toml::from_str(
        "worker_concurrency = 1\nprovider = { kind = \"static\", addresses = [\"127.0.0.1:1\"] }",
    )
    .unwrap();
    let pool = Pool::from_config("p", &config);
    pool.add_worker(
        "p-1".into(),
        "127.0.0.1:1".parse().unwrap(),
        WorkerState::Ready,
        None,
    );
    let route = RouteQueue::new("r".into(), &QueueConfig::default());
    // Fast path: a free slot, taken and given back.
    c.bench_function("admit+release (free slot)", |b| {
        b.iter(|| {
            let admission = runtime.block_on(pool.acquire(&route, None)).unwrap();
            drop(black_box(admission.slot));
        })
    });
    // Queue path: the slot is held; a waiter queues and is handed the slot on release.
    c.bench_function("queue wait + handoff", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let held = pool.acquire(&route, None).await.unwrap();
                let waiter = pool.acquire(&route, None);
                tokio::pin!(waiter);
                assert!(futures_util::poll!(waiter.as_mut()).is_pending());
                drop(held.slot);
                let admission = waiter.await.unwrap();
                drop(black_box(admission.slot));
            })
        })
    });
}

fn metrics_recording(c: &mut Criterion) {
    let config: weir::config::PoolConfig =
        toml::from_str("provider = { kind = \"static\", addresses = [\"127.0.0.1:1\"] }").unwrap();
    let pool = Pool::from_config("p", &config);
    let metrics = RouteMetrics::new("bench", &pool, &Default::default());
    c.bench_function("metrics record (counters + histograms)", |b| {
        b.iter(|| metrics.record(black_box(200), black_box(Duration::from_micros(850))))
    });
    // The part of that the dashboard's history added: one bucket index and one relaxed add.
    let latency = weir::pool::LatencyHistogram::default();
    c.bench_function("pool latency histogram record", |b| {
        b.iter(|| latency.record(black_box(Duration::from_micros(850))))
    });
}

criterion_group!(
    benches,
    route_lookup,
    balancer_pick,
    queue_admit_release,
    metrics_recording
);
criterion_main!(benches);
