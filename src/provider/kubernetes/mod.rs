//! The pods of a Kubernetes Deployment as workers (kube-rs over rustls with aws-lc-rs).
//!
//! Members come from the Service's EndpointSlices (discovery.k8s.io/v1), watched: a ready
//! endpoint is a ready worker, a terminating or not-ready one takes no new requests, a vanished
//! one leaves. Scaling goes through the Deployment's `/scale` subresource (apps/v1): a launch
//! raises `replicas` and returns the new pod once its endpoint shows up; a release comes after
//! weir has drained the pod, marks it `controller.kubernetes.io/pod-deletion-cost` below every
//! other pod and only then lowers `replicas`, so the ReplicaSet deletes that pod and not a busy
//! one. A `replicas` change made by someone else is handed to the scaler as a manual count.
//! weir leaves the pods in place when it stops: the Deployment owns them.

mod api_error;
mod slices;

use api_error::Call;
use slices::SliceBook;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use tokio::sync::{mpsc, watch, OnceCell};
use tracing::{info, warn};

use super::{LaunchSpec, Launched, Provider, ProviderError, ProviderFuture, WorkerHandle};
use crate::membership::{MemberStream, MemberUpdate};

/// The annotation a ReplicaSet reads to pick which pods go first on scale-in.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
/// The label an EndpointSlice carries naming its Service.
const SERVICE_LABEL: &str = "kubernetes.io/service-name";
/// Longest one API call (not a watch) may take.
const API_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `replicas` is read, to notice a change made outside weir.
const REPLICAS_POLL: Duration = Duration::from_secs(1);
/// First pause after a failed EndpointSlice watch; doubles per failure in a row.
const WATCH_BACKOFF_START: Duration = Duration::from_millis(500);
/// Longest pause between EndpointSlice watch attempts.
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Longest a scale-in waits for starting pods to turn ready before it lowers replicas.
const STARTING_WAIT: Duration = Duration::from_secs(30);
/// Longest a launch or a list waits for the first EndpointSlice list.
const SYNC_WAIT: Duration = Duration::from_secs(15);

/// What a Kubernetes pool's config asks for.
#[derive(Debug, Clone)]
pub struct KubernetesSettings {
    /// The Deployment's namespace.
    pub namespace: String,
    /// The Deployment weir scales.
    pub deployment: String,
    /// The Service whose EndpointSlices list the pods.
    pub service: String,
    /// The port the pods listen on.
    pub port: u16,
    /// A kubeconfig file instead of the in-cluster account.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context.
    pub context: Option<String>,
}

/// The Kubernetes provider of one pool. Its background tasks (the EndpointSlice watch and the
/// replicas poll) end when it is dropped.
pub struct KubernetesProvider {
    inner: Arc<Inner>,
    /// Dropped with the provider, which ends its background tasks.
    stop: watch::Sender<()>,
}

/// What the provider and its background tasks share.
struct Inner {
    pool: String,
    settings: KubernetesSettings,
    client: OnceCell<kube::Client>,
    pods: Mutex<Pods>,
    /// Bumped on every change of `pods`, for launches waiting on a new pod.
    changed: watch::Sender<u64>,
    /// One replicas change at a time; holds the value weir last wrote or read.
    replicas: tokio::sync::Mutex<Option<i32>>,
    /// A replicas value set outside weir, not yet taken by the scaler.
    outside: Mutex<Option<u32>>,
    problems: Mutex<Problems>,
}

/// The pods as the EndpointSlices show them, and what weir did with them.
struct Pods {
    book: SliceBook,
    /// Pods handed out by a launch.
    claimed: HashSet<String>,
    /// Pods weir released (drained, to be deleted): never members again.
    released: HashSet<String>,
}

/// Why parts of the provider do not work right now, for `/readyz`.
#[derive(Default)]
struct Problems {
    watch: Option<String>,
    /// The last launch or release failed (until one succeeds).
    scale: Option<String>,
    /// The replicas poll failed.
    poll: Option<String>,
    /// A HorizontalPodAutoscaler targets the Deployment: weir will not scale it.
    refused: Option<String>,
}

impl KubernetesProvider {
    /// A provider for `pool` with `settings`; it connects on first use.
    pub fn new(pool: &str, settings: KubernetesSettings) -> Self {
        let (stop, _) = watch::channel(());
        KubernetesProvider {
            inner: Arc::new(Inner {
                pool: pool.to_string(),
                settings: settings.clone(),
                client: OnceCell::new(),
                pods: Mutex::new(Pods {
                    book: SliceBook::new(settings.port),
                    claimed: HashSet::new(),
                    released: HashSet::new(),
                }),
                changed: watch::channel(0).0,
                replicas: tokio::sync::Mutex::new(None),
                outside: Mutex::new(None),
                problems: Mutex::new(Problems::default()),
            }),
            stop,
        }
    }

    /// Refuse a Deployment that a HorizontalPodAutoscaler scales (two autoscalers fight).
    /// An API server that cannot be asked now is not a refusal: the replicas poll asks again.
    async fn refuse_hpa_target(&self) -> Result<(), String> {
        match self.inner.hpa_conflict().await {
            Ok(None) => Ok(()),
            Ok(Some(reason)) => Err(reason),
            Err(e) => {
                warn!(pool = %self.inner.pool, error = %e, "cannot check for a HorizontalPodAutoscaler now; checking again later");
                Ok(())
            }
        }
    }
}

impl Inner {
    fn pods(&self) -> MutexGuard<'_, Pods> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn problems(&self) -> MutexGuard<'_, Problems> {
        self.problems.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn call<'a>(&'a self, verb: &'a str, resource: &'a str, name: Option<&'a str>) -> Call<'a> {
        Call {
            verb,
            resource,
            name,
            namespace: &self.settings.namespace,
        }
    }

    /// The API client, built on first use: the kubeconfig named in the config, else the
    /// in-cluster service account, else `$KUBECONFIG` / ~/.kube/config.
    async fn client(&self) -> Result<kube::Client, ProviderError> {
        self.client
            .get_or_try_init(|| async {
                let s = &self.settings;
                let options = kube::config::KubeConfigOptions {
                    context: s.context.clone(),
                    ..Default::default()
                };
                let config = match &s.kubeconfig {
                    Some(path) => {
                        let file = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                            ProviderError::Spawn(format!("kubeconfig {}: {e}", path.display()))
                        })?;
                        kube::Config::from_custom_kubeconfig(file, &options).await
                    }
                    None if s.context.is_none() => match kube::Config::incluster() {
                        Ok(config) => Ok(config),
                        Err(_) => kube::Config::from_kubeconfig(&options).await,
                    },
                    None => kube::Config::from_kubeconfig(&options).await,
                }
                .map_err(|e| ProviderError::Spawn(format!("kubernetes client config: {e}")))?;
                kube::Client::try_from(config)
                    .map_err(|e| ProviderError::Spawn(format!("kubernetes client: {e}")))
            })
            .await
            .cloned()
    }

    fn deployments(&self, client: kube::Client) -> Api<Deployment> {
        Api::namespaced(client, &self.settings.namespace)
    }

    /// The Deployment's `spec.replicas`.
    async fn read_replicas(&self, client: &kube::Client) -> Result<i32, ProviderError> {
        let call = self.call("get", "deployments/scale", Some(&self.settings.deployment));
        let api = self.deployments(client.clone());
        let scale = tokio::time::timeout(API_TIMEOUT, api.get_scale(&self.settings.deployment))
            .await
            .map_err(|_| call.timed_out(API_TIMEOUT))?
            .map_err(|e| call.failed(&e))?;
        Ok(scale.spec.and_then(|s| s.replicas).unwrap_or(0))
    }

    /// The Deployment's `spec.replicas`, read from the Deployment itself (the poll: `get
    /// deployments`, the same verb `kubectl get` needs).
    async fn deployment_replicas(&self, client: &kube::Client) -> Result<i32, ProviderError> {
        let call = self.call("get", "deployments", Some(&self.settings.deployment));
        let api = self.deployments(client.clone());
        let deployment = tokio::time::timeout(API_TIMEOUT, api.get(&self.settings.deployment))
            .await
            .map_err(|_| call.timed_out(API_TIMEOUT))?
            .map_err(|e| call.failed(&e))?;
        Ok(deployment.spec.and_then(|s| s.replicas).unwrap_or(1))
    }

    async fn write_replicas(
        &self,
        client: &kube::Client,
        replicas: i32,
    ) -> Result<(), ProviderError> {
        let call = self.call(
            "patch",
            "deployments/scale",
            Some(&self.settings.deployment),
        );
        let api = self.deployments(client.clone());
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        let params = PatchParams::default();
        tokio::time::timeout(
            API_TIMEOUT,
            api.patch_scale(&self.settings.deployment, &params, &Patch::Merge(&patch)),
        )
        .await
        .map_err(|_| call.timed_out(API_TIMEOUT))?
        .map_err(|e| call.failed(&e))?;
        info!(pool = %self.pool, deployment = %self.settings.deployment, replicas, "set replicas");
        Ok(())
    }

    /// Whether a HorizontalPodAutoscaler targets the Deployment: `Some(reason)` if so.
    async fn hpa_conflict(&self) -> Result<Option<String>, ProviderError> {
        let client = self.client().await?;
        let call = self.call("list", "horizontalpodautoscalers", None);
        let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client, &self.settings.namespace);
        let list = tokio::time::timeout(API_TIMEOUT, api.list(&ListParams::default()))
            .await
            .map_err(|_| call.timed_out(API_TIMEOUT))?
            .map_err(|e| call.failed(&e))?;
        let s = &self.settings;
        Ok(list.items.iter().find_map(|hpa| {
            let target = &hpa.spec.as_ref()?.scale_target_ref;
            (target.kind == "Deployment" && target.name == s.deployment).then(|| {
                format!(
                    "deployment {}/{} is the target of HorizontalPodAutoscaler {}/{}: two autoscalers would fight over it (remove the HPA or this pool)",
                    s.namespace,
                    s.deployment,
                    s.namespace,
                    hpa.metadata.name.as_deref().unwrap_or("?")
                )
            })
        }))
    }

    fn refused(&self) -> Result<(), ProviderError> {
        match &self.problems().refused {
            Some(reason) => Err(ProviderError::Command(reason.clone())),
            None => Ok(()),
        }
    }

    /// Remember whether a scale call worked, for `/readyz`.
    fn note_scale<T>(&self, result: Result<T, ProviderError>) -> Result<T, ProviderError> {
        self.problems().scale = result.as_ref().err().map(ProviderError::detail);
        result
    }

    /// Wait until the EndpointSlices have been listed once.
    async fn synced(&self) -> Result<(), ProviderError> {
        let mut changed = self.changed.subscribe();
        let wait = async {
            // A watch that has failed fails the wait at once: no point holding a launch (and
            // the requests waiting on it) for an API server that does not answer.
            while !self.pods().book.synced() && self.problems().watch.is_none() {
                if changed.changed().await.is_err() {
                    break;
                }
            }
        };
        if tokio::time::timeout(SYNC_WAIT, wait).await.is_err() || !self.pods().book.synced() {
            let why = self
                .problems()
                .watch
                .clone()
                .unwrap_or_else(|| "no answer yet".into());
            return Err(ProviderError::Spawn(format!(
                "the EndpointSlices of service {} are not listed yet: {why}",
                self.settings.service
            )));
        }
        Ok(())
    }

    /// One more pod: raise `replicas` by one and return the first new pod that shows up and
    /// no other launch has taken.
    async fn add_pod(&self) -> Result<Launched, ProviderError> {
        self.refused()?;
        let client = self.client().await?;
        self.synced().await?;
        let mut changed = self.changed.subscribe();
        let before: HashSet<String> = {
            let mut written = self.replicas.lock().await;
            let replicas = self.read_replicas(&client).await?;
            let before = self.pods().book.view().keys().cloned().collect();
            self.write_replicas(&client, replicas + 1).await?;
            *written = Some(replicas + 1);
            before
        };
        loop {
            {
                let mut pods = self.pods();
                let Pods {
                    book,
                    claimed,
                    released,
                    ..
                } = &mut *pods;
                let new = book.view().iter().find(|(name, e)| {
                    !e.terminating
                        && !before.contains(*name)
                        && !claimed.contains(*name)
                        && !released.contains(*name)
                });
                if let Some((name, endpoint)) = new {
                    let handle = WorkerHandle {
                        id: name.clone(),
                        addr: endpoint.addr,
                        revision: None,
                    };
                    claimed.insert(name.clone());
                    return Ok(Launched {
                        handle,
                        exited: None,
                    });
                }
            }
            if changed.changed().await.is_err() {
                return Err(ProviderError::Spawn("the provider stopped".into()));
            }
        }
    }

    /// Let a drained pod go: mark it cheapest to delete, then lower `replicas` by one so the
    /// ReplicaSet deletes exactly it.
    async fn remove_pod(&self, handle: &WorkerHandle) -> Result<(), ProviderError> {
        self.refused()?;
        let client = self.client().await?;
        let mut written = self.replicas.lock().await;
        self.pods().released.insert(handle.id.clone());
        let call = self.call("patch", "pods", Some(&handle.id));
        let pods: Api<Pod> = Api::namespaced(client.clone(), &self.settings.namespace);
        let patch = serde_json::json!({
            "metadata": { "annotations": { DELETION_COST: i32::MIN.to_string() } }
        });
        let marked = tokio::time::timeout(
            API_TIMEOUT,
            pods.patch(&handle.id, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await
        .map_err(|_| call.timed_out(API_TIMEOUT))?;
        match marked {
            Ok(_) => {}
            // Deleted meanwhile by someone else: its replacement is the ReplicaSet's business.
            Err(e) if api_error::is_not_found(&e) => return Ok(()),
            Err(e) => return Err(call.failed(&e)),
        }
        // A ReplicaSet deletes a not-ready pod before any low-cost one: lowering replicas while
        // another pod is still starting would delete that one and leave the drained pod.
        self.no_pod_starting(&handle.id).await;
        let still_live = self
            .pods()
            .book
            .view()
            .get(&handle.id)
            .is_some_and(|e| !e.terminating);
        let replicas = self.read_replicas(&client).await?;
        if still_live && replicas > 0 {
            self.write_replicas(&client, replicas - 1).await?;
            *written = Some(replicas - 1);
        } else {
            *written = Some(replicas);
        }
        info!(pool = %self.pool, pod = %handle.id, "pod drained and marked for deletion");
        Ok(())
    }

    /// Wait (up to [`STARTING_WAIT`]) until no live pod but `victim` is not ready.
    async fn no_pod_starting(&self, victim: &str) {
        let mut changed = self.changed.subscribe();
        let starting = || {
            let pods = self.pods();
            pods.book.view().iter().any(|(name, e)| {
                name != victim && !e.ready && !e.terminating && !pods.released.contains(name)
            })
        };
        let wait = async {
            while starting() {
                if changed.changed().await.is_err() {
                    return;
                }
            }
        };
        if tokio::time::timeout(STARTING_WAIT, wait).await.is_err() {
            warn!(pool = %self.pool, pod = %victim, wait = ?STARTING_WAIT, "a pod is still not ready; lowering replicas anyway (the ReplicaSet may delete that one)");
        }
    }

    /// The pods that exist now, once the slices have been listed (adoption on start).
    async fn live_pods(&self) -> Result<Vec<WorkerHandle>, ProviderError> {
        self.client().await?;
        self.synced().await?;
        let pods = self.pods();
        Ok(pods
            .book
            .view()
            .iter()
            .filter(|(name, e)| !e.terminating && !pods.released.contains(*name))
            .map(|(name, e)| WorkerHandle {
                id: name.clone(),
                addr: e.addr,
                revision: None,
            })
            .collect())
    }

    /// Follow the Service's EndpointSlices, handing changes to the pool, until the pool or the
    /// provider goes away. The watcher re-lists on its own after a broken watch or a 410 Gone.
    async fn follow_slices(
        self: Arc<Self>,
        updates: mpsc::Sender<MemberUpdate>,
        mut stop: watch::Receiver<()>,
    ) {
        let client = loop {
            match self.client().await {
                Ok(client) => break client,
                Err(e) => {
                    self.problems().watch = Some(e.detail());
                    self.changed.send_modify(|v| *v += 1);
                    warn!(pool = %self.pool, error = %e, "no kubernetes client; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(REPLICAS_POLL * 5) => continue,
                        _ = stop.changed() => return,
                    }
                }
            }
        };
        let api: Api<EndpointSlice> = Api::namespaced(client, &self.settings.namespace);
        let config = watcher::Config::default()
            .labels(&format!("{SERVICE_LABEL}={}", self.settings.service));
        let call = self.call("watch", "endpointslices", None);
        let mut pause = WATCH_BACKOFF_START;
        loop {
            // A fresh watcher starts with a full list: after a failure, its end is the proof
            // that the API answers again (a resumed watch with no changes would show nothing).
            let mut events = watcher(api.clone(), config.clone()).boxed();
            loop {
                let event = tokio::select! {
                    event = events.next() => event,
                    _ = stop.changed() => return,
                };
                let event = match event {
                    Some(Ok(event)) => event,
                    Some(Err(watcher::Error::WatchError(status))) if status.code == 410 => {
                        // History moved on (compaction, an API server restart): routine; list
                        // again at once, and the diff keeps the pool as it is.
                        info!(pool = %self.pool, "endpointslice watch expired (410 Gone); listing again");
                        pause = Duration::ZERO;
                        break;
                    }
                    Some(Err(e)) => {
                        let reason = watch_failure(&call, &e);
                        warn!(pool = %self.pool, error = %reason, retry_in = ?pause, "endpointslice watch failed; listing again after a pause");
                        self.problems().watch = Some(reason);
                        self.changed.send_modify(|v| *v += 1);
                        break;
                    }
                    None => break,
                };
                let listed = matches!(event, watcher::Event::InitDone);
                let changes = {
                    let mut pods = self.pods();
                    let changes = pods.book.apply(event);
                    let released = &pods.released;
                    changes
                        .into_iter()
                        .filter(
                            |u| !matches!(u, MemberUpdate::Added(m) if released.contains(&m.id)),
                        )
                        .collect::<Vec<_>>()
                };
                if listed {
                    self.problems().watch = None;
                    pause = WATCH_BACKOFF_START;
                }
                self.changed.send_modify(|v| *v += 1);
                for change in changes {
                    if updates.send(change).await.is_err() {
                        return; // the pool is gone
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => return,
            }
            pause = (pause * 2).clamp(WATCH_BACKOFF_START, WATCH_BACKOFF_MAX);
        }
    }

    /// Read `replicas` every second: a value weir did not write is an outside change for the
    /// scaler; also keep asking whether an HPA targets the Deployment until that is known.
    async fn poll_replicas(self: Arc<Self>, mut stop: watch::Receiver<()>) {
        let mut hpa_known = false;
        let mut first = true;
        loop {
            // The first read at once: it is the baseline a later outside change differs from.
            let pause = if std::mem::take(&mut first) {
                Duration::ZERO
            } else {
                REPLICAS_POLL
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => return,
            }
            if !hpa_known {
                match self.hpa_conflict().await {
                    Ok(conflict) => {
                        hpa_known = true;
                        if let Some(reason) = conflict {
                            warn!(pool = %self.pool, %reason, "not scaling");
                            self.problems().refused = Some(reason);
                        }
                    }
                    Err(e) => {
                        warn!(pool = %self.pool, error = %e, "cannot check for a HorizontalPodAutoscaler")
                    }
                }
            }
            let Ok(client) = self.client().await else {
                continue;
            };
            let mut written = self.replicas.lock().await;
            let read = self.deployment_replicas(&client).await;
            self.problems().poll = read.as_ref().err().map(ProviderError::detail);
            match read {
                Ok(now) => {
                    if written.is_some_and(|w| w != now) {
                        info!(pool = %self.pool, deployment = %self.settings.deployment, replicas = now, "replicas changed outside weir");
                        *self.outside.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(u32::try_from(now).unwrap_or(0));
                    }
                    *written = Some(now);
                }
                Err(e) => warn!(pool = %self.pool, error = %e, "cannot read replicas"),
            }
        }
    }
}

/// A watcher failure as a one-line reason.
fn watch_failure(call: &Call<'_>, e: &watcher::Error) -> String {
    match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => call.failed(e).detail(),
        other => format!("watch endpointslices: {other}"),
    }
}

impl Provider for KubernetesProvider {
    fn launch(&self, _spec: LaunchSpec) -> ProviderFuture<'_, Result<Launched, ProviderError>> {
        Box::pin(async move { self.inner.note_scale(self.inner.add_pod().await) })
    }

    fn release(&self, handle: WorkerHandle) -> ProviderFuture<'_, Result<(), ProviderError>> {
        Box::pin(async move { self.inner.note_scale(self.inner.remove_pod(&handle).await) })
    }

    fn list(&self) -> ProviderFuture<'_, Result<Vec<WorkerHandle>, ProviderError>> {
        Box::pin(self.inner.live_pods())
    }

    fn discover(&self) -> Option<MemberStream> {
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(Arc::clone(&self.inner).follow_slices(tx, self.stop.subscribe()));
        tokio::spawn(Arc::clone(&self.inner).poll_replicas(self.stop.subscribe()));
        Some(rx)
    }

    fn preflight(&self) -> ProviderFuture<'_, Result<(), String>> {
        Box::pin(self.refuse_hpa_target())
    }

    fn joins_by_discovery(&self) -> bool {
        true
    }

    fn keeps_workers_on_stop(&self) -> bool {
        true
    }

    fn outside_count(&self) -> Option<u32> {
        self.inner
            .outside
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    fn problem(&self) -> Option<String> {
        let p = self.inner.problems();
        let all: Vec<&str> = [&p.refused, &p.watch, &p.scale, &p.poll]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        (!all.is_empty()).then(|| all.join("; "))
    }

    fn describe(&self) -> String {
        let s = &self.inner.settings;
        format!(
            "kubernetes: deployment {}/{} (service {})",
            s.namespace, s.deployment, s.service
        )
    }

    fn can_launch(&self) -> bool {
        true
    }
}
