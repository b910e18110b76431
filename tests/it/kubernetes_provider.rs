//! weir's `kubernetes` provider against the simulated API server in tests/it/k8s_sim/ (no real
//! cluster can run here): a real kube client inside weir, demo-worker processes as pods,
//! EndpointSlices over real watches, and the API failures the simulation can inject.

use crate::common;
use crate::k8s_sim;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use k8s_sim::{Fleet, SimOptions};

//
// Everything below is weir talking to the simulated API server above: a real kube client in
// weir, real demo-worker processes as pods, EndpointSlices over real watches. No real cluster.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use weir::pool::WorkerState;

/// A weir with one pool `app` on the simulated Deployment `app`.
fn k8s_weir(sim: &Fleet, concurrency: u32, autoscale: &str) -> Weir {
    start_weir(
        "shutdown_grace = \"5s\"\n",
        &format!(
            r#"
[[listeners]]
listen = "127.0.0.1:0"
[[routes]]
pool = "app"
queue = {{ timeout = "20s" }}
[pools.app]
worker_concurrency = {concurrency}
provider = {{ kind = "kubernetes", deployment = "app", port = 8080, kubeconfig = "{}", context = "sim" }}
[pools.app.autoscale]
{autoscale}
"#,
            sim.kubeconfig().display()
        ),
    )
}

fn ready_names(weir: &Weir) -> Vec<String> {
    let mut names: Vec<String> = weir
        .workers("app")
        .iter()
        .filter(|w| w.state() == WorkerState::Ready)
        .map(|w| w.name.clone())
        .collect();
    names.sort();
    names
}

fn activity_has(weir: &Weir, action: weir::scale::Action, reason: &str) -> bool {
    weir.activity()
        .iter()
        .any(|e| e.action == action && e.reason.contains(reason))
}

/// `/readyz`'s reasons, decoded from its JSON and joined.
fn reasons(body: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    value["reasons"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The (verb, resource) pairs a request log shows, as RBAC names them.
fn rbac_of(requests: &[String]) -> BTreeSet<(String, String)> {
    requests
        .iter()
        .filter_map(|r| {
            let (method, target) = r.split_once(' ')?;
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
            // .../namespaces/NS/RESOURCE[/NAME[/SUBRESOURCE]]
            let at = parts.iter().position(|p| *p == "namespaces")?;
            let rest = &parts[at + 2..];
            let resource = match rest {
                [resource, _, sub] => format!("{resource}/{sub}"),
                [resource, ..] => resource.to_string(),
                [] => return None,
            };
            let verb = match (method, rest.len(), query.contains("watch=true")) {
                ("GET", 1, true) => "watch",
                ("GET", 1, false) => "list",
                ("GET", _, _) => "get",
                ("PATCH", _, _) => "patch",
                (other, _, _) => return Some((other.to_lowercase(), resource)),
            };
            Some((verb.to_string(), resource))
        })
        .collect()
}

/// The (verb, resource) pairs the shipped Role grants (config/kubernetes/rbac.yaml).
fn shipped_role() -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/kubernetes/rbac.yaml"
    ))
    .expect("config/kubernetes/rbac.yaml");
    let list = |line: &str| -> Vec<String> {
        let inner = line.split_once('[').map_or("", |(_, r)| r);
        let inner = inner.split_once(']').map_or("", |(l, _)| l);
        inner
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let mut granted = BTreeSet::new();
    let mut resources = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with("resources:") {
            resources = list(line);
        } else if line.starts_with("verbs:") {
            for verb in list(line) {
                for resource in &resources {
                    granted.insert((verb.clone(), resource.clone()));
                }
            }
        }
    }
    granted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_scales_pods_1_to_3_to_1_and_the_drained_pods_are_the_deleted_ones() {
    let sim = Fleet::start(SimOptions::default());
    let mut weir = k8s_weir(
        &sim,
        2,
        "min_workers = 1\nmax_workers = 3\nmax_idle_time = \"1s\"\ndrain_timeout = \"5s\"",
    );
    wait_until("one pod ready in weir", || ready_names(&weir).len() == 1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let loaded = Instant::now();
    let clients = looping_clients(weir.addr(), 8, "/?delay=50ms", &stop);
    wait_until("three pods ready", || ready_names(&weir).len() == 3).await;
    eprintln!(
        "trace: 1 -> 3 ready pods {:?} after the load began",
        loaded.elapsed()
    );
    assert_eq!(
        sim.replicas(),
        3,
        "never above max_workers: {:#?}\n{:#?}",
        weir.activity(),
        sim.requests()
    );
    stop.store(true, Ordering::SeqCst);
    assert_eq!(
        failures_of(clients).await,
        Vec::<http::StatusCode>::new(),
        "no failed request"
    );
    let quiet = Instant::now();
    wait_until("back to one pod", || {
        sim.replicas() == 1 && sim.pods().len() == 1 && weir.workers("app").len() == 1
    })
    .await;
    eprintln!("trace: 3 -> 1 pods {:?} after the load", quiet.elapsed());
    // The pods weir marked cheapest to delete (after draining them) are the ones the
    // ReplicaSet deleted, and the survivor is the pod weir kept.
    let marked: BTreeSet<String> = sim
        .requests()
        .iter()
        .filter_map(|r| r.strip_prefix("PATCH /api/v1/namespaces/default/pods/"))
        .map(|r| r.split('?').next().unwrap_or(r).to_string())
        .collect();
    let deleted: BTreeSet<String> = sim.deleted_pods().into_iter().collect();
    assert_eq!(deleted.len(), 2, "{deleted:?}");
    assert_eq!(deleted, marked, "the deleted pods are the drained ones");
    let survivor = sim.pods()[0].name.clone();
    assert_eq!(ready_names(&weir), vec![survivor.clone()]);
    assert_eq!(get(weir.addr(), "/").await.status, 200);
    // Every API call weir made is one the shipped Role grants, and the Role grants nothing
    // this scenario did not need.
    assert_eq!(rbac_of(&sim.requests()), shipped_role());
    // A stopping weir leaves the Deployment's pods alone.
    weir.stop();
    assert_eq!(sim.replicas(), 1);
    assert_eq!(sim.pods().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replicas_change_made_outside_weir_is_a_manual_count() {
    let sim = Fleet::start(SimOptions::default());
    let weir = k8s_weir(
        &sim,
        4,
        "min_workers = 1\nmax_workers = 4\nmax_idle_time = \"60s\"",
    );
    wait_until("one pod ready", || ready_names(&weir).len() == 1).await;
    // weir's first read of replicas is its baseline: scale only after it.
    wait_until("weir's first read of the Deployment", || {
        sim.requests().iter().any(|r| {
            r.starts_with("GET") && r.contains("/deployments/app") && !r.contains("/scale")
        })
    })
    .await;
    sim.scale(3);
    wait_until("a manual activity with reason external", || {
        activity_has(&weir, weir::scale::Action::Manual, "external")
    })
    .await;
    wait_until("three pods ready in weir", || ready_names(&weir).len() == 3).await;
    assert_eq!(sim.replicas(), 3, "weir launched none beside them");
    assert!(
        !sim.requests()
            .iter()
            .any(|r| r.starts_with("PATCH") && r.contains("/scale")),
        "weir did not touch replicas"
    );
    assert_eq!(sim.pods().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_watch_and_a_410_are_relisted_without_losing_the_pool() {
    let sim = Fleet::start(SimOptions {
        replicas: 2,
        ..SimOptions::default()
    });
    let weir = k8s_weir(
        &sim,
        4,
        "min_workers = 1\nmax_workers = 4\nmax_idle_time = \"60s\"",
    );
    wait_until("two pods ready", || ready_names(&weir).len() == 2).await;
    let identities = |weir: &Weir| {
        let mut ids: Vec<u64> = weir.workers("app").iter().map(|w| w.id).collect();
        ids.sort();
        ids
    };
    let before = identities(&weir);
    for (what, break_it) in [
        (
            "closed",
            &(|sim: &Fleet| sim.close_watches()) as &dyn Fn(&Fleet),
        ),
        ("expired (410 Gone)", &|sim: &Fleet| sim.expire_watches()),
    ] {
        // A watch registered first: one still on its way (counted, not yet open) would
        // escape the break and never be followed by a new one.
        wait_until("a watch open", || sim.open_watches() >= 1).await;
        let watches = sim.watch_requests();
        break_it(&sim);
        wait_until(&format!("a new watch after the old one was {what}"), || {
            sim.watch_requests() > watches && sim.open_watches() >= 1
        })
        .await;
        assert_eq!(
            identities(&weir),
            before,
            "the same workers after a {what} watch"
        );
        assert_eq!(ready_names(&weir).len(), 2);
        assert_eq!(get(weir.addr(), "/").await.status, 200);
    }
    // The new watch carries changes.
    sim.scale(3);
    wait_until("the third pod, seen through the new watch", || {
        ready_names(&weir).len() == 3
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_scale_is_a_clear_error_a_503_and_a_readyz_reason() {
    let sim = Fleet::start(SimOptions {
        replicas: 0,
        ..SimOptions::default()
    });
    sim.deny("patch", "deployments/scale");
    let weir = k8s_weir(&sim, 4, "min_workers = 0\nmax_workers = 1");
    let reason = first_request_meets_a_launch_failure(&weir).await;
    let needs = "forbidden: weir's service account needs RBAC verb \"patch\" on \"deployments/scale\" in namespace default";
    assert!(reason.contains(needs), "{reason}");
    let (status, body) = admin_call(weir.admin(), "GET", "/readyz", None, "").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        reasons(&body).contains(&format!("pool app: {needs}")),
        "{body}"
    );
    // Granted again: the next attempt (after the backoff) scales and serves.
    sim.allow("patch", "deployments/scale");
    let deadline = Instant::now() + DEADLINE;
    while get(weir.addr(), "/").await.status != 200 {
        assert!(Instant::now() < deadline, "served once the verb is granted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sim.replicas(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_that_refuses_leaves_serving_on_the_known_pods() {
    let sim = Fleet::start(SimOptions {
        replicas: 2,
        ..SimOptions::default()
    });
    let weir = k8s_weir(
        &sim,
        4,
        "min_workers = 1\nmax_workers = 4\nmax_idle_time = \"60s\"",
    );
    wait_until("two pods ready", || ready_names(&weir).len() == 2).await;
    for (verb, resource) in [
        ("get", "deployments"),
        ("list", "endpointslices"),
        ("watch", "endpointslices"),
    ] {
        sim.deny(verb, resource);
    }
    sim.close_watches();
    let readyz = || async {
        let (_, body) = admin_call(weir.admin(), "GET", "/readyz", None, "").await;
        reasons(&body)
    };
    let deadline = Instant::now() + DEADLINE;
    loop {
        let body = readyz().await;
        if body.contains("RBAC verb \"get\" on \"deployments\"")
            && body.contains("on \"endpointslices\"")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz names the refused calls: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Serving goes on through the pods weir knows.
    let mut client = Client::connect(weir.addr()).await;
    for _ in 0..20 {
        assert_eq!(client.get("/").await.status, 200);
    }
    assert_eq!(ready_names(&weir).len(), 2);
    for (verb, resource) in [
        ("get", "deployments"),
        ("list", "endpointslices"),
        ("watch", "endpointslices"),
    ] {
        sim.allow(verb, resource);
    }
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = admin_call(weir.admin(), "GET", "/readyz", None, "").await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ready again once granted: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_is_a_clear_failure_not_a_hang() {
    let sim = Fleet::start(SimOptions::default());
    // A kubeconfig like the simulation's, pointing at a port nothing listens on.
    let dead = dead_addr();
    let text = std::fs::read_to_string(sim.kubeconfig())
        .unwrap()
        .replace(sim.url(), &format!("http://{dead}"));
    let path = temp_path("k8s-unreachable.kubeconfig");
    std::fs::write(&path, text).unwrap();
    let weir = start_weir(
        "",
        &format!(
            "[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\n[pools.app]\n\
             provider = {{ kind = \"kubernetes\", deployment = \"app\", port = 8080, kubeconfig = \"{}\" }}\n\
             [pools.app.autoscale]\nmin_workers = 0\nmax_workers = 1\n",
            path.display()
        ),
    );
    let asked = Instant::now();
    let reason = first_request_meets_a_launch_failure(&weir).await;
    eprintln!("unreachable API server: 503 after {:?}", asked.elapsed());
    assert!(reason.contains("kubernetes API unreachable"), "{reason}");
    let (status, body) = admin_call(weir.admin(), "GET", "/readyz", None, "").await;
    assert_eq!(status, 503);
    assert!(
        reasons(&body).contains("pool app: kubernetes API unreachable"),
        "{body}"
    );
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_deployment_that_an_hpa_scales_is_refused_at_start() {
    let sim = Fleet::start(SimOptions::default());
    sim.add_hpa("app-hpa", "app");
    let config = temp_path("k8s-hpa.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n[[listeners]]\nlisten = \"127.0.0.1:0\"\n[[routes]]\npool = \"app\"\n[pools.app]\n\
             provider = {{ kind = \"kubernetes\", deployment = \"app\", port = 8080, kubeconfig = \"{}\" }}\n",
            sim.kubeconfig().display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(WEIR)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .expect("run weir");
    assert!(!out.status.success(), "weir must refuse to start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pools.app: deployment default/app is the target of HorizontalPodAutoscaler default/app-hpa"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(&config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_deployment_is_a_clear_reason_and_a_failed_launch() {
    let sim = Fleet::start(SimOptions {
        replicas: 0,
        ..SimOptions::default()
    });
    sim.remove_deployment();
    let weir = k8s_weir(&sim, 4, "min_workers = 0\nmax_workers = 1");
    let missing = "not found: deployments app in namespace default";
    let reason = first_request_meets_a_launch_failure(&weir).await;
    assert!(reason.contains(missing), "{reason}");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, body) = admin_call(weir.admin(), "GET", "/readyz", None, "").await;
        if reasons(&body).contains(&format!("pool app: {missing}")) {
            assert_eq!(status, 503);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz names the missing deployment: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_pod_drains_and_its_replacement_joins() {
    // A Deployment's rolling update (or `kubectl delete pod`) terminates a pod: weir stops
    // sending it new requests (draining, not unhealthy) and routes to the new pod once ready.
    let sim = Fleet::start(SimOptions::default());
    let weir = k8s_weir(&sim, 4, "min_workers = 2\nmax_workers = 2");
    wait_until("two pods ready in weir", || ready_names(&weir).len() == 2).await;
    let before = ready_names(&weir);
    let victim = before[0].clone();
    sim.delete_pod(&victim);
    let mut states = Vec::new();
    wait_until("the terminating pod drains", || {
        let state = weir
            .workers("app")
            .iter()
            .find(|w| w.name == victim)
            .map(|w| w.state());
        states.push(state);
        state.is_none_or(|s| s == WorkerState::Draining)
    })
    .await;
    assert!(
        !states.contains(&Some(WorkerState::Unhealthy)),
        "a terminating pod is not unhealthy: {states:?}"
    );
    wait_until("its replacement ready", || {
        let ready = ready_names(&weir);
        ready.len() == 2 && !ready.contains(&victim)
    })
    .await;
    assert_eq!(get(weir.addr(), "/").await.status, 200);
}
