//! The cluster's state and the controllers that change it: the ReplicaSet (pods up to
//! `replicas`, the surplus deleted in a real ReplicaSet's order), the EndpointSlice controller
//! (one slice following the pods; each change a new resourceVersion and a MODIFIED event) and
//! the watches those events go to. All behind one mutex, never held across an await.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::WatchEvent;
use k8s_openapi::jiff::Timestamp;
use tokio::sync::{mpsc, oneshot, watch};

use super::objects::{bookmark_line, expired_line, line};
use super::pods::{self, Signal};
use super::{PodInfo, SimOptions, DELETION_COST};

/// How long the ReplicaSet takes to replace a pod that died on its own; also keeps a worker
/// that cannot start from being respawned in a tight loop.
const REPLACE_DELAY: Duration = Duration::from_millis(100);
/// The alphabet Kubernetes draws generated name suffixes from.
const NAME_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
const HEX: &[u8] = b"0123456789abcdef";

/// Clusters started by this process: each gets its own 127.X.0.0/16 for its pods.
static CLUSTERS: AtomicU32 = AtomicU32::new(0);

/// The simulation, shared by the server, the pod tasks and the test's handles.
pub struct Sim {
    state: Mutex<State>,
    runtime: tokio::runtime::Handle,
    /// Turns true when the cluster is dropped: pod tasks kill their process and end.
    pub stopping: watch::Sender<bool>,
    /// Cloned into every pod task; the runtime thread waits for every clone to drop.
    alive: Mutex<Option<mpsc::Sender<()>>>,
}

/// One pod, from creation until its process has exited.
pub struct SimPod {
    pub name: String,
    pub uid: String,
    pub ip: Ipv4Addr,
    pub created: Timestamp,
    /// When it turned ready, if it has.
    pub ready_since: Option<Timestamp>,
    /// Its deletionTimestamp: terminating since then.
    pub deleted_at: Option<Timestamp>,
    pub annotations: BTreeMap<String, String>,
    pub rv: u64,
    /// To its process's task.
    signals: mpsc::UnboundedSender<Signal>,
}

impl SimPod {
    /// Its pod-deletion-cost, 0 when absent (as the ReplicaSet reads it).
    fn cost(&self) -> i32 {
        let cost = self.annotations.get(DELETION_COST);
        cost.and_then(|c| c.parse().ok()).unwrap_or(0)
    }

    pub fn info(&self, port: u16) -> PodInfo {
        PodInfo {
            name: self.name.clone(),
            ip: self.ip,
            addr: SocketAddr::new(self.ip.into(), port),
            ready: self.ready_since.is_some() && self.deleted_at.is_none(),
            terminating: self.deleted_at.is_some(),
            deletion_cost: self.cost(),
        }
    }
}

/// An open watch: its response body's channel, and whether its selector matches the slice.
pub struct Watcher(pub mpsc::UnboundedSender<Bytes>, bool);

/// The event lines of one watch's response body.
pub type Events = mpsc::UnboundedReceiver<Bytes>;

/// Everything the cluster holds.
#[derive(Default)]
pub struct State {
    pub opts: SimOptions,
    /// This cluster's number in the process.
    pub seq: u32,
    /// The Deployment exists.
    pub deployment: bool,
    pub replicas: i32,
    pub generation: i64,
    pub deployment_rv: u64,
    /// The cluster-wide resourceVersion, bumped by every write.
    pub rv: u64,
    /// Watches and continues from before this get 410 Expired.
    pub min_rv: u64,
    /// The ReplicaSet's pod-template-hash.
    pub hash: String,
    /// UIDs of the Deployment, the slice and the ReplicaSet.
    pub uids: [String; 3],
    pub slice_name: String,
    pub slice_rv: u64,
    /// When the cluster's own objects were created.
    pub created: Timestamp,
    pub pods: Vec<SimPod>,
    pub deleted: Vec<String>,
    /// The slice's events since `min_rv`: (resourceVersion, event line).
    history: Vec<(u64, Bytes)>,
    pub watchers: Vec<Watcher>,
    /// (verb, resource) pairs answered with 403.
    pub denied: HashSet<(String, String)>,
    /// (name, target deployment, uid, resourceVersion).
    pub hpas: Vec<(String, String, String, u64)>,
    pub log: Vec<String>,
    pub watch_requests: usize,
    /// The cluster was dropped: no more pods.
    pub stopped: bool,
    /// Pod IPs are 127.{net}.x.y, numbered from `host_base`; `hosts` handed out so far.
    net: u8,
    host_base: u32,
    hosts: u32,
    rng: u64,
}

/// The simulation thread: build the runtime, hand the shared state back, serve until the
/// cluster is dropped, then kill every pod and wait until their processes are reaped.
pub fn run(
    opts: SimOptions,
    listener: std::net::TcpListener,
    handed: std::sync::mpsc::Sender<Arc<Sim>>,
    stopped: oneshot::Receiver<()>,
) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (alive, mut gone) = mpsc::channel::<()>(1);
    let sim = Arc::new(Sim {
        state: Mutex::new(State::new(opts)),
        runtime: runtime.handle().clone(),
        stopping: watch::channel(false).0,
        alive: Mutex::new(Some(alive)),
    });
    handed.send(sim.clone()).unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let server = tokio::spawn(super::server::serve(listener, sim.clone()));
        let _ = stopped.await;
        sim.lock().stopped = true;
        sim.stopping.send_replace(true);
        sim.alive.lock().unwrap().take();
        while gone.recv().await.is_some() {}
        server.abort();
    });
}

impl Sim {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ReplicaSet's sync: create pods up to the wanted count, or delete the surplus.
    pub fn reconcile(self: &Arc<Self>) {
        let mut st = self.lock();
        if st.stopped {
            return;
        }
        let want = usize::from(st.deployment) * st.replicas.max(0) as usize;
        let mut active: Vec<&SimPod> = st.pods.iter().filter(|p| p.deleted_at.is_none()).collect();
        let (now, count) = (Timestamp::now(), active.len());
        active.sort_by(|a, b| delete_order(a, b, now));
        let surplus = active[..count.saturating_sub(want)].iter();
        for name in surplus.map(|p| p.name.clone()).collect::<Vec<_>>() {
            st.terminate(&name);
        }
        for _ in count..want {
            let (name, addr, signals) = st.new_pod();
            if let Some(alive) = self.alive.lock().unwrap().clone() {
                let delay = st.opts.readiness_delay;
                let task = pods::run(self.clone(), name, addr, delay, signals, alive);
                self.runtime.spawn(task);
            }
            st.emit_slice();
        }
    }

    /// A pod's worker has listened for the readiness delay: it turns ready.
    pub fn pod_ready(&self, name: &str) {
        let mut st = self.lock();
        let rv = st.bump();
        let starting = |p: &&mut SimPod| p.ready_since.is_none() && p.deleted_at.is_none();
        if let Some(pod) = st.pods.iter_mut().filter(starting).find(|p| p.name == name) {
            (pod.ready_since, pod.rv) = (Some(Timestamp::now()), rv);
            st.emit_slice();
        }
    }

    /// A pod's process has exited: the pod is gone. One that was not deleted died on its
    /// own, and the ReplicaSet replaces it.
    pub fn pod_exited(self: &Arc<Self>, name: &str) {
        let mut st = self.lock();
        let Some(i) = st.pods.iter().position(|p| p.name == name) else {
            return;
        };
        let crashed = st.pods.remove(i).deleted_at.is_none();
        st.emit_slice();
        if crashed {
            let sim = self.clone();
            self.runtime.spawn(async move {
                tokio::time::sleep(REPLACE_DELAY).await;
                sim.reconcile();
            });
        }
    }
}

impl State {
    fn new(opts: SimOptions) -> State {
        let (seq, pid) = (CLUSTERS.fetch_add(1, Relaxed), std::process::id());
        let clock = Timestamp::now().as_nanosecond() as u64;
        let mut st = State {
            seq,
            deployment: true,
            replicas: opts.replicas,
            generation: 1,
            rv: 1000,
            created: Timestamp::now(),
            net: 2 + (pid.wrapping_mul(37).wrapping_add(seq) % 250) as u8,
            host_base: pid.wrapping_mul(7919) % 60000,
            rng: (clock ^ (u64::from(pid) << 32) ^ u64::from(seq)) | 1,
            opts,
            ..Default::default()
        };
        st.hash = st.random(10, HEX);
        let suffix = st.random(5, NAME_CHARS);
        st.slice_name = format!("{}-{suffix}", st.opts.service);
        st.uids = [st.uid(), st.uid(), st.uid()];
        (st.deployment_rv, st.slice_rv) = (st.bump(), st.bump());
        st
    }

    /// The next cluster-wide resourceVersion.
    pub fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// `n` characters drawn from `chars` (xorshift64*: names need no better).
    fn random(&mut self, n: usize, chars: &[u8]) -> String {
        let mut next = || {
            self.rng ^= self.rng >> 12;
            self.rng ^= self.rng << 25;
            self.rng ^= self.rng >> 27;
            let x = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33;
            chars[x as usize % chars.len()] as char
        };
        (0..n).map(|_| next()).collect()
    }

    /// A fresh UID in the usual 8-4-4-4-12 form.
    pub fn uid(&mut self) -> String {
        [8, 4, 4, 4, 12].map(|n| self.random(n, HEX)).join("-")
    }

    /// A new pod on the next IP; its process is started by the caller.
    fn new_pod(&mut self) -> (String, SocketAddr, mpsc::UnboundedReceiver<Signal>) {
        let name = loop {
            let suffix = self.random(5, NAME_CHARS);
            let name = format!("{}-{}-{suffix}", self.opts.deployment, self.hash);
            if !self.pods.iter().any(|p| p.name == name) {
                break name;
            }
        };
        let host = self.host_base + self.hosts;
        self.hosts += 1;
        let ip = Ipv4Addr::from([127, self.net, (host / 250) as u8, (1 + host % 250) as u8]);
        let (signals, rx) = mpsc::unbounded_channel();
        let (uid, rv) = (self.uid(), self.bump());
        self.pods.push(SimPod {
            name: name.clone(),
            uid,
            ip,
            created: Timestamp::now(),
            ready_since: None,
            deleted_at: None,
            annotations: BTreeMap::new(),
            rv,
            signals,
        });
        (name, SocketAddr::new(ip.into(), self.opts.port), rx)
    }

    /// Delete a pod: terminating at once, SIGTERM to its process.
    pub fn terminate(&mut self, name: &str) {
        let rv = self.bump();
        let alive = |p: &&mut SimPod| p.deleted_at.is_none();
        if let Some(pod) = self.pods.iter_mut().filter(alive).find(|p| p.name == name) {
            (pod.deleted_at, pod.rv) = (Some(Timestamp::now()), rv);
            let _ = pod.signals.send(Signal::Term);
            self.deleted.push(name.to_string());
            self.emit_slice();
        }
    }

    /// Signal a pod's process without deleting the pod.
    pub fn signal(&mut self, name: &str, signal: Signal) {
        if let Some(pod) = self.pods.iter().find(|p| p.name == name) {
            let _ = pod.signals.send(signal);
        }
    }

    pub fn set_replicas(&mut self, replicas: i32) {
        (self.replicas, self.generation) = (replicas, self.generation + 1);
        self.deployment_rv = self.bump();
    }

    pub fn add_hpa(&mut self, name: &str, deployment: &str) {
        let (uid, rv) = (self.uid(), self.bump());
        self.hpas.push((name.into(), deployment.into(), uid, rv));
    }

    /// The slice changed: a new resourceVersion, a MODIFIED event to every matching watch.
    pub fn emit_slice(&mut self) {
        self.slice_rv = self.bump();
        let event = line(&WatchEvent::Modified(self.slice()));
        self.history.push((self.slice_rv, event.clone()));
        self.watchers
            .retain(|w| !w.1 || w.0.send(event.clone()).is_ok());
    }

    /// Forget history up to now; open watches get 410 and end.
    pub fn expire(&mut self) {
        self.min_rv = self.bump();
        self.history.clear();
        for watcher in self.watchers.drain(..) {
            let _ = watcher.0.send(expired_line(self.min_rv - 1, self.min_rv));
        }
    }

    /// Open a watch from resourceVersion `from` (`None`: from now, the current slice first as
    /// ADDED, then with `initial_end` the bookmark ending a streaming list's initial events),
    /// sending the slice's events if `matches` (its label selector selects the slice).
    pub fn open_watch(&mut self, from: Option<u64>, initial_end: bool, matches: bool) -> Events {
        let (tx, rx) = mpsc::unbounded_channel();
        let send = |event: Bytes| drop(tx.send(event));
        match from {
            Some(rv) if rv < self.min_rv => {
                send(expired_line(rv, self.min_rv));
                return rx;
            }
            Some(rv) => {
                let later = self.history.iter().filter(|e| e.0 > rv && matches);
                later.for_each(|e| send(e.1.clone()));
            }
            None if matches => send(line(&WatchEvent::Added(self.slice()))),
            None => {}
        }
        if from.is_none() && initial_end {
            send(bookmark_line(self.rv));
        }
        self.watchers.push(Watcher(tx, matches));
        rx
    }
}

/// A ReplicaSet's deletion preference (`ActivePodsWithRanks.Less` in kube-controller-manager;
/// one node, so its unassigned, phase, co-location and restart rules never decide): not
/// ready first, then lower deletion cost, then the more recently ready, then the newer. Times
/// compare in log2 buckets (LogarithmicScaleDown), ties broken by UID, so pods of about the
/// same age go in pseudo-random order, as in a real cluster.
fn delete_order(a: &SimPod, b: &SimPod, now: Timestamp) -> Ordering {
    let bucket = |t: Timestamp| match now.duration_since(t).as_nanos() {
        ..=0 => -1,
        d => (d as f64).log2() as i64,
    };
    let by_time = |ta: Timestamp, tb: Timestamp| match ta == tb {
        true => Ordering::Equal,
        false => bucket(ta).cmp(&bucket(tb)).then(a.uid.cmp(&b.uid)),
    };
    let by_ready_time = || match (a.ready_since, b.ready_since) {
        (Some(ra), Some(rb)) => by_time(ra, rb),
        _ => Ordering::Equal,
    };
    (a.ready_since.is_some().cmp(&b.ready_since.is_some()))
        .then(a.cost().cmp(&b.cost()))
        .then_with(by_ready_time)
        .then_with(|| by_time(a.created, b.created))
}
