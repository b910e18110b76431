//! Where workers come from. The scaler launches, lists (to adopt after a restart) and releases
//! workers only through the [`Provider`] trait, and a provider that discovers its workers on its
//! own (a static list, a container engine's labels, Kubernetes EndpointSlices) hands them to the
//! pool as a [`MemberStream`]; so a new backend is one more implementation, with no change to
//! the scaler or the pool.

mod dns;
mod docker;
mod exec;
mod kubernetes;
mod process;
mod static_list;

pub use docker::{DockerProvider, DockerSettings};
pub use exec::ExecProvider;
pub use kubernetes::{KubernetesProvider, KubernetesSettings, DELETION_COST};
pub use process::ProcessProvider;
pub use static_list::StaticProvider;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::ProviderConfig;
use crate::membership::MemberStream;

/// A boxed future, so the trait stays object-safe (`Arc<dyn Provider>`).
pub type ProviderFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Resolves, with a reason, when a launched worker dies on its own (process exit, lost
/// instance). Providers that cannot tell give none; health checks then catch the death.
pub type ExitWatch = Pin<Box<dyn Future<Output = String> + Send>>;

/// What the scaler asks for.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// The pool launching it.
    pub pool: String,
    /// A name unique in the pool ("app-7"), which providers may use as the worker's id.
    pub name: String,
    /// The pool's revision the worker is launched with (a Docker label, `WEIR_REVISION` for
    /// process and exec workers).
    pub revision: Option<String>,
}

/// A launched worker, as the provider knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerHandle {
    /// The provider's id for it, stable for its life and shown as the worker's id (process:
    /// the launch name; exec: what the launch command printed).
    pub id: String,
    /// Where weir proxies to.
    pub addr: SocketAddr,
    /// The revision it was launched with, where the provider can tell.
    pub revision: Option<String>,
}

/// The result of a launch.
pub struct Launched {
    /// How to reach and later release the worker.
    pub handle: WorkerHandle,
    /// Fires if the worker dies on its own.
    pub exited: Option<ExitWatch>,
}

/// Why a provider call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderError {
    /// This provider does not launch or release (static lists).
    Unsupported(&'static str),
    /// The worker (or the launch command) could not be started.
    Spawn(String),
    /// A launch or release command ran and failed.
    Command(String),
    /// A launch command's output named no usable address.
    BadOutput(String),
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProviderError::Unsupported(what) => write!(f, "not supported: {what}"),
            ProviderError::Spawn(e) => write!(f, "cannot start: {e}"),
            ProviderError::Command(e) => write!(f, "command failed: {e}"),
            ProviderError::BadOutput(e) => write!(f, "unusable launch output: {e}"),
        }
    }
}

impl ProviderError {
    /// The reason alone, without the kind's prefix (for `/readyz`, which names the pool).
    pub fn detail(&self) -> String {
        match self {
            ProviderError::Unsupported(what) => format!("not supported: {what}"),
            ProviderError::Spawn(e) | ProviderError::Command(e) | ProviderError::BadOutput(e) => {
                e.clone()
            }
        }
    }
}

impl std::error::Error for ProviderError {}

/// A source of workers.
pub trait Provider: Send + Sync {
    /// Start a worker; return once it exists (it becomes ready when its health checks pass).
    fn launch(&self, spec: LaunchSpec) -> ProviderFuture<'_, Result<Launched, ProviderError>>;

    /// Stop a worker. Called only after it has drained; must not fail on one already gone.
    fn release(&self, handle: WorkerHandle) -> ProviderFuture<'_, Result<(), ProviderError>>;

    /// The workers of this pool that exist now (launched by an earlier weir on the same
    /// config), so a restarted weir adopts them instead of launching new ones beside them.
    /// Providers whose workers cannot outlive weir list none.
    fn list(&self) -> ProviderFuture<'_, Result<Vec<WorkerHandle>, ProviderError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// A watch on a worker this provider listed (adopted, not launched by this weir), so an
    /// adopted worker's death is noticed as quickly as a launched one's. `None`: health
    /// checks catch it.
    fn watch(&self, _handle: &WorkerHandle) -> Option<ExitWatch> {
        None
    }

    /// The pool's members, for providers that discover them rather than launch them: a full
    /// set, then changes. `None` for providers whose members are the scaler's launches.
    fn discover(&self) -> Option<MemberStream> {
        None
    }

    /// Why the component behind this provider is unusable right now (an engine or API server
    /// that does not answer), for `/readyz`; `None` when it works or cannot tell.
    fn problem(&self) -> Option<String> {
        None
    }

    /// Checks that must pass before weir starts serving with this provider (a Kubernetes
    /// Deployment that an HPA already scales): `Err` is the one-line reason weir refuses to
    /// start. A component that does not answer now is no reason to refuse.
    fn preflight(&self) -> ProviderFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    /// Whether launched and listed workers join the pool through [`Provider::discover`]'s
    /// stream (Kubernetes EndpointSlices) rather than from the handles `launch` and `list`
    /// return: the scaler then waits for them to show up instead of adding them itself.
    fn joins_by_discovery(&self) -> bool {
        false
    }

    /// Whether the workers stay when weir stops (a Deployment owns its pods: a weir restart
    /// must not scale the app to zero). Otherwise a stopping weir releases them all.
    fn keeps_workers_on_stop(&self) -> bool {
        false
    }

    /// A worker count set outside weir since the last call (someone scaled the Deployment),
    /// which the scaler takes as a manual count.
    fn outside_count(&self) -> Option<u32> {
        None
    }

    /// The marks of the workers this provider owns, its own first, then those of the launch
    /// templates it replaces (a rollout under way). Only providers whose ownership depends on
    /// the template have any (Docker's containers are owned per image).
    fn lineage(&self) -> Vec<String> {
        Vec::new()
    }

    /// Take over the workers of an older provider of the same pool (its [`Provider::lineage`]):
    /// they are listed with this provider's own, and the workers it launches say whom they
    /// replace, so a weir restarted mid-rollout still finds the old ones.
    fn succeed(&self, _lineage: Vec<String>) {}

    /// A one-line description for logs and the admin API.
    fn describe(&self) -> String;

    /// Whether `launch` works (false for fixed lists: the scaler leaves such pools alone).
    fn can_launch(&self) -> bool;
}

/// Run every pool's [`Provider::preflight`] before weir starts serving; the first refusal,
/// as `pools.NAME: reason`.
pub async fn preflight(config: &crate::config::Config) -> Result<(), String> {
    for (name, pool) in &config.pools {
        let provider =
            from_config(name, &pool.provider).map_err(|e| format!("pools.{name}: {e}"))?;
        provider
            .preflight()
            .await
            .map_err(|e| format!("pools.{name}: {e}"))?;
    }
    Ok(())
}

/// Build the provider a pool's config names.
pub fn from_config(pool: &str, config: &ProviderConfig) -> Result<Arc<dyn Provider>, String> {
    Ok(match config {
        ProviderConfig::Static {
            addresses,
            dns_refresh,
            dns_servers,
        } => Arc::new(StaticProvider::new(
            pool,
            addresses.clone(),
            dns_refresh.get(),
            dns_servers.iter().map(|a| a.get()).collect(),
        )),
        ProviderConfig::Process {
            command,
            env,
            cwd,
            stop_grace,
        } => Arc::new(ProcessProvider::new(
            pool,
            command.clone(),
            env.clone(),
            cwd.clone(),
            stop_grace.get(),
        )?),
        ProviderConfig::Docker {
            image,
            port,
            command,
            env,
            network,
            publish,
            labels,
            cpus,
            memory,
            stop_grace,
            pull,
            endpoint,
        } => Arc::new(DockerProvider::new(
            pool,
            DockerSettings {
                image: image.clone(),
                port: *port,
                command: command.clone(),
                env: env.clone(),
                network: network.clone(),
                publish: *publish,
                labels: labels.clone(),
                cpus: *cpus,
                memory: memory.map(|m| m.get()),
                stop_grace: stop_grace.get(),
                pull: *pull == crate::config::PullPolicy::Missing,
                endpoint: endpoint
                    .clone()
                    .or_else(|| std::env::var("DOCKER_HOST").ok())
                    .unwrap_or_else(|| docker::DEFAULT_ENDPOINT.to_string()),
            },
        )),
        ProviderConfig::Kubernetes {
            namespace,
            deployment,
            port,
            service,
            kubeconfig,
            context,
        } => Arc::new(KubernetesProvider::new(
            pool,
            KubernetesSettings {
                namespace: namespace.clone(),
                deployment: deployment.clone(),
                service: service.clone().unwrap_or_else(|| deployment.clone()),
                port: *port,
                kubeconfig: kubeconfig.clone(),
                context: context.clone(),
            },
        )),
        ProviderConfig::Exec {
            launch,
            release,
            list,
        } => Arc::new(ExecProvider::new(
            pool,
            launch.clone(),
            release.clone(),
            list.clone(),
        )),
    })
}
