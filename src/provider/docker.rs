//! Containers on a Docker Engine as workers, over the Engine API (bollard; no docker CLI).
//! Each launch creates and starts one container from `image` with this pool's labels; its
//! address is its IP on the pool's network (or a port published on 127.0.0.1) plus `port`.
//! weir owns each container's life: no restart policy; a release stops it (SIGTERM, then
//! SIGKILL after `stop_grace`) and removes it; `list` finds this pool's running containers by
//! their labels (adoption after a restart) and removes exited ones.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerSummary, ContainerSummaryStateEnum, HostConfig,
    NetworkCreateRequest, PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, RemoveContainerOptions,
    StopContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use tokio::sync::OnceCell;
use tracing::{info, warn};

use super::{
    ExitWatch, LaunchSpec, Launched, Provider, ProviderError, ProviderFuture, WorkerHandle,
};

/// Label naming the pool a container belongs to.
pub const LABEL_POOL: &str = "weir.pool";
/// Label naming the worker (the launch name weir gave it).
pub const LABEL_WORKER: &str = "weir.worker";
/// Label identifying the weir pool that owns a container (pool name and image), so weirs with
/// other configs on one engine never touch each other's containers.
pub const LABEL_OWNER: &str = "weir.owner";
/// The label with the pool's revision the container was created with.
pub const LABEL_REVISION: &str = "weir.revision";
/// The owner labels (comma-separated) of the containers a container was launched to replace
/// (a rollout to a new image): a weir restarted mid-rollout finds the old ones through it.
pub const LABEL_REPLACES: &str = "weir.replaces";
/// Most owners a provider keeps as predecessors (rollouts overtaken by rollouts).
const MAX_PREDECESSORS: usize = 4;
/// Longest an Engine API call may take before the launch or release fails.
const API_TIMEOUT_SECS: u64 = 30;
/// The engine's socket when neither `endpoint` nor `$DOCKER_HOST` names one.
pub const DEFAULT_ENDPOINT: &str = "unix:///var/run/docker.sock";

/// What a Docker pool's config asks for.
#[derive(Debug, Clone)]
pub struct DockerSettings {
    /// The image each container runs.
    pub image: String,
    /// The port the worker listens on inside the container (also `$PORT`).
    pub port: u16,
    /// The command, replacing the image's.
    pub command: Option<Vec<String>>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// A user-defined bridge network to join (created if missing); `None`: the default bridge.
    pub network: Option<String>,
    /// Publish `port` on 127.0.0.1 and proxy to that, for a weir that cannot reach the bridge.
    pub publish: bool,
    /// Extra labels.
    pub labels: BTreeMap<String, String>,
    /// CPU limit in cores.
    pub cpus: Option<f64>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// SIGTERM to SIGKILL on release.
    pub stop_grace: Duration,
    /// Whether a missing image may be pulled (`"missing"`) or is an error (`"never"`).
    pub pull: bool,
    /// The engine's address (`unix:///path`).
    pub endpoint: String,
}

/// The Docker provider of one pool.
pub struct DockerProvider {
    pool: String,
    owner: String,
    settings: DockerSettings,
    engine: OnceCell<Docker>,
    /// The last engine failure, until a call succeeds again (`/readyz`).
    unreachable: std::sync::Mutex<Option<String>>,
    /// Owners whose containers this provider's replace (a rollout from another image).
    predecessors: std::sync::Mutex<Vec<String>>,
}

impl DockerProvider {
    /// A provider for `pool` with `settings`.
    pub fn new(pool: &str, settings: DockerSettings) -> Self {
        DockerProvider {
            owner: format!("{pool}@{}", settings.image),
            pool: pool.to_string(),
            settings,
            engine: OnceCell::new(),
            unreachable: std::sync::Mutex::new(None),
            predecessors: std::sync::Mutex::new(Vec::new()),
        }
    }

    fn predecessors(&self) -> Vec<String> {
        self.predecessors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Add `owners` to the predecessors (not this provider's own; newest first, a few).
    fn add_predecessors(&self, owners: impl IntoIterator<Item = String>) {
        let mut known = self.predecessors.lock().unwrap_or_else(|p| p.into_inner());
        for owner in owners {
            if owner != self.owner && !owner.is_empty() && !known.contains(&owner) {
                known.insert(0, owner);
            }
        }
        known.truncate(MAX_PREDECESSORS);
    }

    /// Remember whether the engine answered, for [`Provider::problem`].
    fn note<T>(&self, result: Result<T, ProviderError>) -> Result<T, ProviderError> {
        let down = match &result {
            Err(ProviderError::Spawn(why)) if why.contains("docker engine unreachable") => {
                Some(why.clone())
            }
            _ => None,
        };
        *self.unreachable.lock().unwrap_or_else(|p| p.into_inner()) = down;
        result
    }

    /// The engine, connected (and its API version agreed) on first use.
    async fn engine(&self) -> Result<&Docker, ProviderError> {
        self.engine
            .get_or_try_init(|| async {
                let path = self
                    .settings
                    .endpoint
                    .strip_prefix("unix://")
                    .ok_or_else(|| {
                        ProviderError::Spawn(format!(
                            "docker endpoint {:?}: only unix:// sockets are supported",
                            self.settings.endpoint
                        ))
                    })?;
                let docker =
                    Docker::connect_with_unix(path, API_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
                        .map_err(|e| unreachable_engine(&self.settings.endpoint, e))?;
                docker
                    .negotiate_version()
                    .await
                    .map_err(|e| unreachable_engine(&self.settings.endpoint, e))
            })
            .await
    }

    fn labels(&self, worker: &str, revision: Option<&str>) -> HashMap<String, String> {
        let mut labels: HashMap<String, String> = self
            .settings
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(LABEL_POOL.into(), self.pool.clone());
        labels.insert(LABEL_WORKER.into(), worker.into());
        labels.insert(LABEL_OWNER.into(), self.owner.clone());
        let predecessors = self.predecessors();
        if !predecessors.is_empty() {
            labels.insert(LABEL_REPLACES.into(), predecessors.join(","));
        }
        if let Some(revision) = revision {
            labels.insert(LABEL_REVISION.into(), revision.into());
        }
        labels
    }

    async fn ensure_image(&self, docker: &Docker) -> Result<(), ProviderError> {
        match docker.inspect_image(&self.settings.image).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) && !self.settings.pull => {
                Err(ProviderError::Spawn(format!(
                    "image {} is not on the engine (pull = \"never\")",
                    self.settings.image
                )))
            }
            Err(e) if is_not_found(&e) => {
                use futures_util::StreamExt;
                let options = bollard::query_parameters::CreateImageOptions {
                    from_image: Some(self.settings.image.clone()),
                    ..Default::default()
                };
                let mut pull = docker.create_image(Some(options), None, None);
                while let Some(step) = pull.next().await {
                    step.map_err(|e| {
                        ProviderError::Spawn(format!(
                            "image {} is missing and the pull failed: {}",
                            self.settings.image,
                            one_line(&e)
                        ))
                    })?;
                }
                Ok(())
            }
            Err(e) => Err(engine_error("inspect image", &e)),
        }
    }

    async fn ensure_network(&self, docker: &Docker) -> Result<(), ProviderError> {
        let Some(network) = &self.settings.network else {
            return Ok(());
        };
        match docker
            .inspect_network(
                network,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => {
                let request = NetworkCreateRequest {
                    name: network.clone(),
                    driver: Some("bridge".into()),
                    ..Default::default()
                };
                match docker.create_network(request).await {
                    Ok(_) => {
                        info!(pool = %self.pool, %network, "created docker network");
                        Ok(())
                    }
                    // Another launch created it meanwhile.
                    Err(e) if is_conflict(&e) => Ok(()),
                    Err(e) => Err(ProviderError::Spawn(format!(
                        "network {network} is missing and cannot be created: {}",
                        one_line(&e)
                    ))),
                }
            }
            Err(e) => Err(engine_error("inspect network", &e)),
        }
    }

    async fn create_and_start(&self, spec: &LaunchSpec) -> Result<Launched, ProviderError> {
        let began = std::time::Instant::now();
        let docker = self.engine().await?;
        self.ensure_image(docker).await?;
        self.ensure_network(docker).await?;
        let s = &self.settings;
        let port_key = format!("{}/tcp", s.port);
        let mut env: Vec<String> = s.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.push(format!("PORT={}", s.port));
        env.push(format!("WEIR_POOL={}", self.pool));
        env.push(format!("WEIR_WORKER={}", spec.name));
        if let Some(revision) = &spec.revision {
            env.push(format!("WEIR_REVISION={revision}"));
        }
        let host_config = HostConfig {
            network_mode: s.network.clone(),
            nano_cpus: s.cpus.map(|c| (c * 1e9) as i64),
            memory: s.memory.map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
            port_bindings: s.publish.then(|| {
                HashMap::from([(
                    port_key.clone(),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(String::new()),
                    }]),
                )])
            }),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(s.image.clone()),
            cmd: s.command.clone(),
            env: Some(env),
            labels: Some(self.labels(&spec.name, spec.revision.as_deref())),
            exposed_ports: Some(vec![port_key.clone()]),
            host_config: Some(host_config),
            ..Default::default()
        };
        let mut name = format!("weir-{}", spec.name);
        let create = |name: &str| {
            let options = CreateContainerOptions {
                name: Some(name.to_string()),
                ..Default::default()
            };
            // Its host name is its name (what it logs, and says, names the worker weir
            // knows), where the name fits in one (63 bytes); else the engine's default.
            let body = ContainerCreateBody {
                hostname: (name.len() <= 63).then(|| name.to_string()),
                ..body.clone()
            };
            docker.create_container(Some(options), body)
        };
        match create(&name).await {
            Ok(_) => {}
            // The name is taken by a container of another weir's pool (same pool name, other
            // image) on this engine: use one that carries this owner's mark.
            Err(e) if is_conflict(&e) => {
                name = format!("weir-{}-{:04x}", spec.name, owner_mark(&self.owner));
                create(&name)
                    .await
                    .map_err(|e| engine_error("create container", &e))?;
            }
            Err(e) => return Err(engine_error("create container", &e)),
        }
        let created = began.elapsed();
        info!(pool = %self.pool, container = %name, create = ?created, "container created (image and network checked)");
        if let Err(e) = docker.start_container(&name, None).await {
            self.remove(docker, &name).await;
            let reason = if is_port_taken(&e) {
                format!("port already published: {}", one_line(&e))
            } else {
                format!("start container: {}", one_line(&e))
            };
            return Err(ProviderError::Spawn(reason));
        }
        let inspect = docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await
            .map_err(|e| engine_error("inspect container", &e))?;
        if inspect
            .state
            .as_ref()
            .is_some_and(|st| st.running == Some(false))
        {
            let code = inspect.state.as_ref().and_then(|st| st.exit_code);
            self.remove(docker, &name).await;
            return Err(ProviderError::Spawn(format!(
                "container exited during start (exit code {})",
                code.map_or("unknown".into(), |c| c.to_string())
            )));
        }
        let addr = address_of(&inspect, s, &port_key).ok_or_else(|| {
            ProviderError::BadOutput(format!("container {name} has no address on its network"))
        })?;
        info!(pool = %self.pool, container = %name, %addr, start = ?began.elapsed().saturating_sub(created), "container started");
        let exited = self.watch_exit(docker.clone(), name.clone());
        Ok(Launched {
            handle: WorkerHandle {
                id: name,
                addr,
                revision: spec.revision.clone(),
            },
            exited: Some(exited),
        })
    }

    /// Resolves with the exit code and the OOM flag when the container stops.
    fn watch_exit(&self, docker: Docker, name: String) -> ExitWatch {
        Box::pin(async move {
            use futures_util::StreamExt;
            let mut wait = docker.wait_container(&name, None::<WaitContainerOptions>);
            let code = match wait.next().await {
                Some(Ok(exit)) => exit.status_code.to_string(),
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
                    code.to_string()
                }
                Some(Err(e)) => format!("unknown ({})", one_line(&e)),
                None => "unknown".into(),
            };
            let oom = docker
                .inspect_container(&name, None::<InspectContainerOptions>)
                .await
                .ok()
                .and_then(|i| i.state.and_then(|s| s.oom_killed))
                .unwrap_or(false);
            format!("container exited: exit code {code}, oom_killed {oom}")
        })
    }

    async fn remove(&self, docker: &Docker, name: &str) {
        let options = RemoveContainerOptions {
            force: true,
            ..Default::default()
        };
        if let Err(e) = docker.remove_container(name, Some(options)).await {
            if !is_not_found(&e) {
                warn!(pool = %self.pool, container = %name, error = %one_line(&e), "cannot remove container");
            }
        }
    }

    async fn stop_and_remove(&self, handle: &WorkerHandle) -> Result<(), ProviderError> {
        let docker = self.engine().await?;
        let grace = i32::try_from(self.settings.stop_grace.as_secs()).unwrap_or(i32::MAX);
        let options = StopContainerOptions {
            t: Some(grace),
            ..Default::default()
        };
        match docker.stop_container(&handle.id, Some(options)).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => {}
            Err(e) => return Err(engine_error("stop container", &e)),
        }
        self.remove(docker, &handle.id).await;
        info!(pool = %self.pool, container = %handle.id, "container stopped and removed");
        Ok(())
    }

    /// The containers of this pool labelled with `owner`, whatever their state.
    async fn owned_by(
        &self,
        docker: &Docker,
        owner: &str,
    ) -> Result<Vec<ContainerSummary>, ProviderError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_POOL}={}", self.pool),
                format!("{LABEL_OWNER}={owner}"),
            ],
        )]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        docker
            .list_containers(Some(options))
            .await
            .map_err(|e| engine_error("list containers", &e))
    }

    /// This pool's containers: its own, and those of the owners they replace (named on them,
    /// or known from the rollout), which the rollout under way, or carried on, retires.
    async fn listed(&self) -> Result<Vec<WorkerHandle>, ProviderError> {
        let docker = self.engine().await?;
        let mut containers = self.owned_by(docker, &self.owner).await?;
        self.add_predecessors(
            containers
                .iter()
                .filter_map(|c| c.labels.as_ref()?.get(LABEL_REPLACES))
                .flat_map(|owners| owners.split(',').map(str::to_string))
                .collect::<Vec<_>>(),
        );
        for owner in self.predecessors() {
            containers.extend(self.owned_by(docker, &owner).await?);
        }
        let port_key = format!("{}/tcp", self.settings.port);
        let mut handles = Vec::new();
        for c in containers {
            let Some(name) = c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
            else {
                continue;
            };
            match c.state {
                Some(ContainerSummaryStateEnum::RUNNING) => {}
                Some(ContainerSummaryStateEnum::EXITED | ContainerSummaryStateEnum::DEAD) => {
                    info!(pool = %self.pool, container = %name, "removing a stopped container of this pool");
                    self.remove(docker, &name).await;
                    continue;
                }
                // Created and not yet started (a launch under way, perhaps another
                // instance's), restarting, paused: not a worker now, and not this listing's
                // to remove.
                _ => continue,
            }
            match docker
                .inspect_container(&name, None::<InspectContainerOptions>)
                .await
            {
                Ok(inspect) => match address_of(&inspect, &self.settings, &port_key) {
                    Some(addr) => handles.push(WorkerHandle {
                        id: name,
                        addr,
                        revision: c
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(LABEL_REVISION))
                            .cloned(),
                    }),
                    None => {
                        warn!(pool = %self.pool, container = %name, "running container has no address; leaving it")
                    }
                },
                Err(e) => {
                    warn!(pool = %self.pool, container = %name, error = %one_line(&e), "cannot inspect container")
                }
            }
        }
        Ok(handles)
    }
}

impl Provider for DockerProvider {
    fn launch(&self, spec: LaunchSpec) -> ProviderFuture<'_, Result<Launched, ProviderError>> {
        Box::pin(async move { self.note(self.create_and_start(&spec).await) })
    }

    fn release(&self, handle: WorkerHandle) -> ProviderFuture<'_, Result<(), ProviderError>> {
        Box::pin(async move { self.note(self.stop_and_remove(&handle).await) })
    }

    fn list(&self) -> ProviderFuture<'_, Result<Vec<WorkerHandle>, ProviderError>> {
        Box::pin(async move { self.note(self.listed().await) })
    }

    fn watch(&self, handle: &WorkerHandle) -> Option<ExitWatch> {
        let docker = self.engine.get()?.clone();
        Some(self.watch_exit(docker, handle.id.clone()))
    }

    fn problem(&self) -> Option<String> {
        self.unreachable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn lineage(&self) -> Vec<String> {
        let mut lineage = vec![self.owner.clone()];
        lineage.extend(self.predecessors());
        lineage
    }

    fn succeed(&self, lineage: Vec<String>) {
        self.add_predecessors(lineage.into_iter().rev());
    }

    fn describe(&self) -> String {
        format!(
            "docker: {} on {}",
            self.settings.image, self.settings.endpoint
        )
    }

    fn can_launch(&self) -> bool {
        true
    }
}

/// Where weir reaches a container: the published host port, or its IP on its network.
fn address_of(
    inspect: &bollard::models::ContainerInspectResponse,
    s: &DockerSettings,
    port_key: &str,
) -> Option<SocketAddr> {
    let net = inspect.network_settings.as_ref()?;
    if s.publish {
        let binding = net.ports.as_ref()?.get(port_key)?.as_ref()?.first()?;
        let port: u16 = binding.host_port.as_ref()?.parse().ok()?;
        return Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    let networks = net.networks.as_ref()?;
    let endpoint = match &s.network {
        Some(name) => networks.get(name)?,
        None => networks
            .get("bridge")
            .or_else(|| networks.values().next())?,
    };
    let ip: IpAddr = endpoint.ip_address.as_ref()?.parse().ok()?;
    Some(SocketAddr::new(ip, s.port))
}

/// A short, stable mark of an owner label, to tell two weirs' container names apart.
fn owner_mark(owner: &str) -> u16 {
    // FNV-1a, folded to 16 bits: stable across builds, unlike std's hasher.
    let hash = owner.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash ^ (hash >> 16) ^ (hash >> 32) ^ (hash >> 48)) as u16
}

fn one_line(e: &bollard::errors::Error) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn status_of(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    status_of(e) == Some(404)
}

fn is_conflict(e: &bollard::errors::Error) -> bool {
    status_of(e) == Some(409)
}

fn is_port_taken(e: &bollard::errors::Error) -> bool {
    let text = e.to_string();
    text.contains("port is already allocated") || text.contains("address already in use")
}

fn engine_error(what: &str, e: &bollard::errors::Error) -> ProviderError {
    if status_of(e).is_none() {
        ProviderError::Spawn(format!(
            "docker engine unreachable ({what}): {}",
            one_line(e)
        ))
    } else {
        ProviderError::Command(format!("{what}: {}", one_line(e)))
    }
}

fn unreachable_engine(endpoint: &str, e: bollard::errors::Error) -> ProviderError {
    ProviderError::Spawn(format!(
        "docker engine unreachable at {endpoint}: {}",
        one_line(&e)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(image: &str) -> DockerProvider {
        DockerProvider::new(
            "app",
            DockerSettings {
                image: image.into(),
                port: 8080,
                command: None,
                env: BTreeMap::new(),
                network: None,
                publish: false,
                labels: BTreeMap::new(),
                cpus: None,
                memory: None,
                stop_grace: Duration::from_secs(1),
                pull: false,
                endpoint: DEFAULT_ENDPOINT.into(),
            },
        )
    }

    #[test]
    fn a_provider_that_succeeds_another_owns_its_containers_and_says_so_on_its_own() {
        let (a, b, c) = (provider("app:1"), provider("app:2"), provider("app:3"));
        assert_eq!(a.lineage(), vec!["app@app:1"]);
        assert!(!a.labels("w", None).contains_key(LABEL_REPLACES));
        b.succeed(a.lineage());
        assert_eq!(b.lineage(), vec!["app@app:2", "app@app:1"]);
        assert_eq!(b.labels("w", None)[LABEL_REPLACES], "app@app:1");
        // A rollout overtaken by another: the newest owns both older images' containers.
        c.succeed(b.lineage());
        assert_eq!(c.lineage(), vec!["app@app:3", "app@app:2", "app@app:1"]);
        // Back to an image it replaced (a rollback, rolled out again): never its own
        // predecessor, and only a few are kept.
        a.succeed(c.lineage());
        assert_eq!(a.lineage(), vec!["app@app:1", "app@app:3", "app@app:2"]);
        for i in 0..10 {
            a.succeed(vec![format!("app@app:x{i}")]);
        }
        assert_eq!(a.lineage().len(), 1 + MAX_PREDECESSORS);
        assert_eq!(a.lineage()[1], "app@app:x9", "the newest kept");
    }
}
