//! The kubernetes provider against a simulated API server (tests/it/k8s_sim). First the
//! simulation itself, checked with a real kube client: scaling starts and stops real pods,
//! the EndpointSlice watch follows them, a 410 makes kube's watcher re-list, denials are 403s.

use crate::common;
use crate::k8s_sim;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams, WatchEvent, WatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;

use common::wait_until;
use k8s_sim::{Fleet, PodInfo, SimOptions, DELETION_COST};

/// The watcher's selector for the default options' Service.
const SELECTOR: &str = "kubernetes.io/service-name=app";

/// One endpoint as the watcher saw it: (pod, ready, terminating).
type Seen = (String, bool, bool);

/// What a kube watcher on the slices has delivered so far.
#[derive(Default)]
struct Watched {
    inits: usize,
    inits_done: usize,
    /// Every slice state delivered, oldest first.
    states: Vec<Vec<Seen>>,
    /// Errors, with the Status code where there is one.
    errors: Vec<(Option<u16>, String)>,
}

impl Watched {
    fn latest(&self) -> Vec<Seen> {
        self.states.last().cloned().unwrap_or_default()
    }

    fn ready(&self) -> usize {
        self.latest().iter().filter(|e| e.1).count()
    }
}

/// A kube watcher on the slices, run as the provider runs it (with kube's default backoff:
/// without it, a watcher whose API server is gone retries in a tight loop that never yields),
/// recording what it delivers; dropping it stops the watcher.
struct Watch {
    watched: Arc<Mutex<Watched>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    fn start(client: kube::Client) -> Watch {
        let api: Api<EndpointSlice> = Api::namespaced(client, "default");
        let stream = watcher(api, watcher::Config::default().labels(SELECTOR)).default_backoff();
        let watched = Arc::new(Mutex::new(Watched::default()));
        let record = watched.clone();
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                record.lock().unwrap().record(event);
            }
        });
        Watch { watched, task }
    }

    fn get(&self) -> std::sync::MutexGuard<'_, Watched> {
        self.watched.lock().unwrap()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watched {
    fn record(&mut self, event: Result<watcher::Event<EndpointSlice>, watcher::Error>) {
        match event {
            Ok(watcher::Event::Init) => self.inits += 1,
            Ok(watcher::Event::InitDone) => self.inits_done += 1,
            Ok(watcher::Event::InitApply(s) | watcher::Event::Apply(s)) => {
                self.states.push(endpoints(&s))
            }
            Ok(watcher::Event::Delete(_)) => self.states.push(Vec::new()),
            Err(e) => {
                let code = match &e {
                    watcher::Error::WatchError(status) => Some(status.code),
                    watcher::Error::InitialListFailed(kube::Error::Api(status)) => {
                        Some(status.code)
                    }
                    _ => None,
                };
                self.errors.push((code, e.to_string()));
            }
        }
    }
}

fn endpoints(slice: &EndpointSlice) -> Vec<Seen> {
    let seen = slice.endpoints.iter().map(|e| {
        let name = e.target_ref.as_ref().and_then(|r| r.name.clone());
        let conditions = e.conditions.clone().unwrap_or_default();
        (
            name.unwrap_or_default(),
            conditions.ready == Some(true),
            conditions.terminating == Some(true),
        )
    });
    seen.collect()
}

/// Wait until exactly `n` pods exist and all are ready.
async fn ready_pods(cluster: &Fleet, n: usize) -> Vec<PodInfo> {
    let what = format!("{n} ready pods");
    wait_until(&what, || {
        let pods = cluster.pods();
        pods.len() == n && pods.iter().all(|p| p.ready)
    })
    .await;
    cluster.pods()
}

fn replicas(n: i32) -> Patch<serde_json::Value> {
    Patch::Merge(json!({ "spec": { "replicas": n } }))
}

/// The Status of a failed call.
fn api_status(e: kube::Error) -> kube::core::Status {
    match e {
        kube::Error::Api(status) => *status,
        other => panic!("not an API error: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scale_subresource_starts_and_stops_real_pods() {
    let cluster = Fleet::start(SimOptions::default());
    let client = cluster.client().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let scale = deployments.get_scale("app").await.unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(1));
    ready_pods(&cluster, 1).await;

    let params = PatchParams::default();
    let scale = deployments.patch_scale("app", &params, &replicas(3)).await;
    assert_eq!(scale.unwrap().spec.unwrap().replicas, Some(3));
    let pods = ready_pods(&cluster, 3).await;
    for pod in &pods {
        assert_eq!(pod.addr.port(), 8080);
        let reply = common::get(pod.addr, "/").await;
        assert_eq!(reply.text(), format!("hello from {}\n", pod.name));
    }
    let deployment = deployments.get("app").await.unwrap();
    assert_eq!(deployment.status.unwrap().ready_replicas, Some(3));

    // The cheapest pod goes on scale-in, whatever its age.
    let victim = &pods[1];
    let cost = json!({ "metadata": { "annotations": { DELETION_COST: "-100" } } });
    let pods_api: Api<Pod> = Api::namespaced(client, "default");
    let pod = pods_api
        .patch(&victim.name, &params, &Patch::Merge(cost))
        .await;
    assert_eq!(
        pod.unwrap().metadata.annotations.unwrap()[DELETION_COST],
        "-100"
    );
    deployments
        .patch_scale("app", &params, &replicas(2))
        .await
        .unwrap();
    assert_eq!(cluster.deleted_pods(), std::slice::from_ref(&victim.name));
    wait_until("the deleted pod's process to exit", || {
        cluster.pods().iter().all(|p| p.name != victim.name)
    })
    .await;
    assert!(tokio::net::TcpStream::connect(victim.addr).await.is_err());
    let left = ready_pods(&cluster, 2).await;
    let patched = "PATCH /apis/apps/v1/namespaces/default/deployments/app/scale".to_string();
    assert!(cluster.requests().contains(&patched));

    // A pod deleted from outside is replaced.
    let gone = left[0].name.clone();
    cluster.delete_pod(&gone);
    assert_eq!(cluster.deleted_pods().last(), Some(&gone));
    let left = ready_pods(&cluster, 2).await;
    assert!(left.iter().all(|p| p.name != gone));

    // Dropping the cluster leaves no worker behind.
    drop(cluster);
    for pod in left {
        assert!(tokio::net::TcpStream::connect(pod.addr).await.is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_sees_pods_turn_ready_and_a_deleted_one_leave() {
    let options = SimOptions {
        readiness_delay: Duration::from_millis(300),
        ..Default::default()
    };
    let cluster = Fleet::start(options);
    let watched = Watch::start(cluster.client().await);
    wait_until("one ready endpoint", || watched.get().ready() == 1).await;

    cluster.scale(2);
    wait_until("two ready endpoints", || watched.get().ready() == 2).await;
    let first = cluster.pods()[0].name.clone();
    let states = watched.get().states.clone();
    let starting = |s: &Vec<Seen>| s.len() == 2 && s.iter().any(|e| e.0 != first && !e.1);
    assert!(
        states.iter().any(starting),
        "the new pod not ready first: {states:?}"
    );

    cluster.scale(1);
    let victim = cluster.deleted_pods()[0].clone();
    wait_until("the deleted pod gone from the slice", || {
        let latest = watched.get().latest();
        latest.len() == 1 && latest[0].0 != victim
    })
    .await;
    {
        let w = watched.get();
        let terminating = (victim.clone(), false, true);
        assert!(w.states.iter().any(|s| s.contains(&terminating)));
        assert_eq!((w.inits, w.errors.len()), (1, 0), "{:?}", w.errors);
    }

    // A pod whose process dies leaves, and the ReplicaSet replaces it.
    let crashed = cluster.pods()[0].name.clone();
    cluster.crash_pod(&crashed);
    wait_until("a ready replacement in the slice", || {
        let latest = watched.get().latest();
        latest.len() == 1 && latest[0].0 != crashed && latest[0].1
    })
    .await;
    assert_eq!(cluster.deleted_pods(), [victim]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_makes_the_watcher_relist_and_its_stream_carries_on() {
    let cluster = Fleet::start(SimOptions::default());
    let client = cluster.client().await;
    let watched = Watch::start(client.clone());
    wait_until("the watch open, one ready endpoint", || {
        cluster.open_watches() == 1 && watched.get().ready() == 1
    })
    .await;

    // A watch that ends is resumed from its last resourceVersion, with no new list.
    cluster.close_watches();
    wait_until("a second watch", || {
        cluster.watch_requests() == 2 && cluster.open_watches() == 1
    })
    .await;
    assert_eq!(watched.get().inits, 1);

    // Expiry: an ERROR 410 on the open watch, then a fresh list and watch.
    cluster.expire_watches();
    wait_until("a re-list after the 410", || {
        let w = watched.get();
        w.inits_done == 2 && cluster.open_watches() == 1
    })
    .await;
    let errors = watched.get().errors.clone();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, Some(410), "{errors:?}");
    cluster.scale(2);
    wait_until("two ready endpoints", || watched.get().ready() == 2).await;

    // Resuming from a resourceVersion from before the expiry gets the 410 in the stream.
    let api: Api<EndpointSlice> = Api::namespaced(client, "default");
    let events = api.watch(&WatchParams::default(), "1001").await.unwrap();
    let first = std::pin::pin!(events).next().await.unwrap().unwrap();
    let WatchEvent::Error(status) = first else {
        panic!("not an error event: {first:?}");
    };
    assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
    let lists = cluster.requests().into_iter().filter(|r| {
        r.starts_with("GET /apis/discovery.k8s.io/v1/namespaces/default/endpointslices?")
            && !r.contains("watch=true")
    });
    assert_eq!(lists.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_and_missing_objects_answer_as_an_apiserver_does() {
    let cluster = Fleet::start(SimOptions::default());
    let client = cluster.client().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let params = PatchParams::default();

    cluster.deny("patch", "deployments/scale");
    let denied = deployments.patch_scale("app", &params, &replicas(2)).await;
    let status = api_status(denied.unwrap_err());
    assert_eq!((status.code, status.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        status.message,
        "deployments.apps \"app\" is forbidden: User \"system:serviceaccount:default:weir\" \
         cannot patch resource \"deployments/scale\" in API group \"apps\" \
         in the namespace \"default\""
    );
    assert_eq!(cluster.replicas(), 1);
    assert!(deployments.get_scale("app").await.is_ok());
    cluster.allow("patch", "deployments/scale");
    deployments
        .patch_scale("app", &params, &replicas(2))
        .await
        .unwrap();
    assert_eq!(cluster.replicas(), 2);

    cluster.deny("list", "endpointslices");
    let watched = Watch::start(client.clone());
    wait_until("a failed list", || !watched.get().errors.is_empty()).await;
    assert_eq!(watched.get().errors[0].0, Some(403));

    cluster.add_hpa("app-hpa", "app");
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), "default");
    let list = hpas.list(&ListParams::default()).await.unwrap();
    assert_eq!(
        list.items[0].spec.as_ref().unwrap().scale_target_ref.name,
        "app"
    );

    cluster.remove_deployment();
    let status = api_status(deployments.get("app").await.unwrap_err());
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    let status = api_status(deployments.get_scale("app").await.unwrap_err());
    assert_eq!(status.message, "deployments.apps \"app\" not found");
    wait_until("the pods gone", || cluster.pods().is_empty()).await;
    let unknown = http::Request::get("/apis/example.com/v1/widgets").body(Vec::new());
    let status = api_status(client.request_text(unknown.unwrap()).await.unwrap_err());
    assert_eq!(status.code, 404);
}
