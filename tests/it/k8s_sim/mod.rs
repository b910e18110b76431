//! A simulated Kubernetes API server, because no real one can run where weir's tests run. It
//! speaks the real API's JSON (serialized k8s-openapi types) for the subset weir's kubernetes
//! provider uses, over plain http on 127.0.0.1, and behaves like a small cluster behind it: a
//! Deployment whose ReplicaSet starts and deletes pods, a Service's EndpointSlice that follows
//! them, watches with resourceVersions, RBAC denials. Pods are real `weir demo-worker`
//! processes, each on its own loopback IP and the Service's port, as pods have their own IPs.
//!
//! - `state`: the cluster's objects and how they change (ReplicaSet, EndpointSlice, watches).
//! - `pods`: one pod's process, from spawn to exit.
//! - `objects`: that state as k8s-openapi objects.
//! - `server`: the HTTP API: routing, denials, patches, lists and watches.
//!
//! The simulation runs on a thread and runtime of its own, so its handles are plain functions
//! usable from any test, and dropping the [`Fleet`] stops everything however the test ends.
#![allow(dead_code)]

mod objects;
mod pods;
mod server;
mod state;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use state::Sim;

/// The bearer token the kubeconfig carries; any other gets 401.
pub const TOKEN: &str = "sim-token";
/// The service account that token stands for, as 403 messages name it.
pub const USER: &str = "weir";
/// The annotation a ReplicaSet reads to pick which pods go first on scale-in.
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// What a simulated cluster starts with.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Namespace of every object.
    pub namespace: String,
    /// The Deployment; its pods carry `app={deployment}`.
    pub deployment: String,
    /// The Service whose EndpointSlice lists the pods.
    pub service: String,
    /// The port every pod listens on, each on its own IP.
    pub port: u16,
    /// `spec.replicas` at start.
    pub replicas: i32,
    /// How long after its worker listens a pod turns ready (a readiness probe's delay).
    pub readiness_delay: Duration,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            namespace: "default".into(),
            deployment: "app".into(),
            service: "app".into(),
            port: 8080,
            replicas: 1,
            readiness_delay: Duration::ZERO,
        }
    }
}

/// One pod as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    pub ip: Ipv4Addr,
    /// `ip:port`, where its worker answers.
    pub addr: SocketAddr,
    pub ready: bool,
    /// Deleted, its process not gone yet.
    pub terminating: bool,
    /// Its `controller.kubernetes.io/pod-deletion-cost` (0 when absent).
    pub deletion_cost: i32,
}

/// A running simulated cluster; dropping it kills its pods and stops its server.
pub struct Fleet {
    sim: Arc<Sim>,
    url: String,
    kubeconfig: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Fleet {
    /// Start the API server and the Deployment's initial pods (not waiting for them).
    pub fn start(options: SimOptions) -> Fleet {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (handed, sim) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("k8s-sim".into())
            .spawn(move || state::run(options, listener, handed, stopped))
            .unwrap();
        let sim: Arc<Sim> = sim.recv().unwrap();
        let kubeconfig = std::env::temp_dir().join(format!(
            "weir-k8s-sim-{}-{}.kubeconfig",
            std::process::id(),
            sim.lock().seq
        ));
        sim.reconcile();
        Fleet {
            sim,
            url,
            kubeconfig,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The API server's base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Write a kubeconfig (cluster, user with the bearer token, context "sim", which is also
    /// the current context) and return its path; it is removed with the cluster.
    pub fn kubeconfig(&self) -> &Path {
        let ns = self.sim.lock().opts.namespace.clone();
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {}\n\
             users:\n- name: {USER}\n  user:\n    token: {TOKEN}\n\
             contexts:\n- name: sim\n  context:\n    cluster: sim\n    user: {USER}\n    \
             namespace: {ns}\ncurrent-context: sim\n",
            self.url
        );
        std::fs::write(&self.kubeconfig, text).unwrap();
        &self.kubeconfig
    }

    /// A kube client through that kubeconfig (its "sim" context).
    pub async fn client(&self) -> kube::Client {
        let file = kube::config::Kubeconfig::read_from(self.kubeconfig()).unwrap();
        let options = kube::config::KubeConfigOptions {
            context: Some("sim".into()),
            ..Default::default()
        };
        let config = kube::Config::from_custom_kubeconfig(file, &options)
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// The Deployment's `spec.replicas`.
    pub fn replicas(&self) -> i32 {
        self.sim.lock().replicas
    }

    /// Set `spec.replicas` from outside, as `kubectl scale` does.
    pub fn scale(&self, replicas: i32) {
        self.sim.lock().set_replicas(replicas);
        self.sim.reconcile();
    }

    /// Every pod that exists, terminating ones included, oldest first.
    pub fn pods(&self) -> Vec<PodInfo> {
        let st = self.sim.lock();
        st.pods.iter().map(|p| p.info(st.opts.port)).collect()
    }

    /// The pods the ReplicaSet (or [`Fleet::delete_pod`]) deleted so far, in order.
    pub fn deleted_pods(&self) -> Vec<String> {
        self.sim.lock().deleted.clone()
    }

    /// Delete a pod as `kubectl delete pod` does: it terminates, and the ReplicaSet replaces it.
    pub fn delete_pod(&self, name: &str) {
        self.sim.lock().terminate(name);
        self.sim.reconcile();
    }

    /// SIGKILL a pod's process, as a crash: its endpoint leaves, and a replacement comes.
    pub fn crash_pod(&self, name: &str) {
        self.sim.lock().signal(name, pods::Signal::Kill);
    }

    /// Forbid `verb` ("get", "list", "watch", "patch") on `resource` ("deployments",
    /// "deployments/scale", "pods", "endpointslices", "horizontalpodautoscalers"): 403s.
    pub fn deny(&self, verb: &str, resource: &str) {
        let rule = (verb.to_string(), resource.to_string());
        self.sim.lock().denied.insert(rule);
    }

    /// Undo [`Fleet::deny`].
    pub fn allow(&self, verb: &str, resource: &str) {
        let rule = (verb.to_string(), resource.to_string());
        self.sim.lock().denied.remove(&rule);
    }

    /// Delete the Deployment (it and its scale answer 404); like `kubectl delete`, the
    /// deletion cascades: its pods terminate and are not replaced.
    pub fn remove_deployment(&self) {
        self.sim.lock().deployment = false;
        self.sim.reconcile();
    }

    /// Add an autoscaling/v2 HorizontalPodAutoscaler `name` targeting Deployment `deployment`
    /// (it is only listed; it scales nothing).
    pub fn add_hpa(&self, name: &str, deployment: &str) {
        self.sim.lock().add_hpa(name, deployment);
    }

    /// End every open watch (the client sees its stream end and resumes from its last RV).
    pub fn close_watches(&self) {
        self.sim.lock().watchers.clear();
    }

    /// Compact history: open watches get an ERROR event (Status 410 Expired) and end, and so
    /// will any watch from a resourceVersion seen so far; a fresh list's is fine.
    pub fn expire_watches(&self) {
        self.sim.lock().expire();
    }

    /// Every request so far, as "VERB path?query" (query decoded, in the client's order).
    pub fn requests(&self) -> Vec<String> {
        self.sim.lock().log.clone()
    }

    /// Watch requests received so far (denied ones included).
    pub fn watch_requests(&self) -> usize {
        self.sim.lock().watch_requests
    }

    /// Watches whose stream is open now.
    pub fn open_watches(&self) -> usize {
        let mut st = self.sim.lock();
        st.watchers.retain(|w| !w.0.is_closed());
        st.watchers.len()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}
