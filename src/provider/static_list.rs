//! A fixed list of workers: addresses as they are, and names looked up in DNS. The pool's
//! workers are exactly these, so there is nothing to launch or release; the list is a member
//! source that emits its set once, or, with names, again whenever a lookup changes it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{info, warn};

use super::dns::Dns;
use super::{LaunchSpec, Launched, Provider, ProviderError, ProviderFuture, WorkerHandle};
use crate::membership::{Member, MemberStream, MemberUpdate};
use crate::values::WorkerTarget;

/// Soonest a name is looked up again, whatever its TTL (records with TTL 0 exist).
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// First retry after a failed lookup; doubled while failures go on, up to `dns_refresh`.
const FAILED_RETRY: Duration = Duration::from_secs(1);

/// The static provider.
pub struct StaticProvider(Arc<StaticList>);

/// What a static provider knows: its list and how to look up names.
struct StaticList {
    pool: String,
    targets: Vec<WorkerTarget>,
    refresh: Duration,
    dns_servers: Vec<SocketAddr>,
    /// The last lookup's failure, for `/readyz`.
    problem: Arc<Mutex<Option<String>>>,
}

impl StaticProvider {
    /// The workers of `pool` at `targets`: addresses are named "POOL-1", "POOL-2", ... by
    /// their place in the list; each address a name resolves to is "POOL-NAME-IP". Names are
    /// looked up at least every `refresh`, through `dns_servers` (empty: the system's).
    pub fn new(
        pool: &str,
        targets: Vec<WorkerTarget>,
        refresh: Duration,
        dns_servers: Vec<SocketAddr>,
    ) -> Self {
        StaticProvider(Arc::new(StaticList {
            pool: pool.to_string(),
            targets,
            refresh: refresh.max(MIN_REFRESH),
            dns_servers,
            problem: Arc::default(),
        }))
    }

    /// A list of addresses only.
    pub fn of_addresses(pool: &str, addresses: Vec<SocketAddr>) -> Self {
        let targets = addresses.into_iter().map(WorkerTarget::Addr).collect();
        StaticProvider::new(pool, targets, MIN_REFRESH, Vec::new())
    }
}

impl StaticList {
    /// The members: the addresses, and what each name resolved to last (`resolved`).
    fn members(&self, resolved: &HashMap<(String, u16), Vec<IpAddr>>) -> Vec<Member> {
        let mut members: Vec<Member> = Vec::new();
        for (i, target) in self.targets.iter().enumerate() {
            let found: Vec<(String, SocketAddr)> = match target {
                WorkerTarget::Addr(addr) => vec![(format!("{}-{}", self.pool, i + 1), *addr)],
                WorkerTarget::Name { host, port } => resolved
                    .get(&(host.clone(), *port))
                    .into_iter()
                    .flatten()
                    .map(|ip| {
                        (
                            format!("{}-{host}-{ip}", self.pool),
                            SocketAddr::new(*ip, *port),
                        )
                    })
                    .collect(),
            };
            for (id, addr) in found {
                // One worker per address, however many entries lead to it.
                if !members.iter().any(|m| m.addr == addr) {
                    members.push(Member::probed(id, addr));
                }
            }
        }
        members
    }

    fn names(&self) -> Vec<(String, u16)> {
        let mut names: Vec<(String, u16)> = self
            .targets
            .iter()
            .filter_map(|t| match t {
                WorkerTarget::Name { host, port } => Some((host.clone(), *port)),
                WorkerTarget::Addr(_) => None,
            })
            .collect();
        names.dedup();
        names
    }

    fn set_problem(&self, problem: Option<String>) {
        *self.problem.lock().unwrap_or_else(|p| p.into_inner()) = problem;
    }

    /// Look the names up, send the set when it changed, and again after the shortest TTL (or
    /// `refresh`), until the pool stops listening. A failed lookup keeps that name's last
    /// addresses and is retried sooner, backing off.
    async fn follow_names(self: Arc<Self>, tx: mpsc::Sender<MemberUpdate>) {
        let dns = match Dns::new(&self.dns_servers) {
            Ok(dns) => dns,
            Err(e) => {
                warn!(pool = %self.pool, error = %e, "DNS cannot be set up; only the pool's IP addresses serve");
                self.set_problem(Some(format!("dns: {e}")));
                let _ = tx
                    .send(MemberUpdate::Reset(self.members(&HashMap::new())))
                    .await;
                tx.closed().await;
                return;
            }
        };
        let names = self.names();
        let mut resolved: HashMap<(String, u16), Vec<IpAddr>> = HashMap::new();
        let mut sent: Option<Vec<Member>> = None;
        let mut retry = FAILED_RETRY;
        loop {
            let mut next = self.refresh;
            let mut failures = Vec::new();
            for (host, port) in &names {
                match dns.lookup(host).await {
                    Ok(answer) => {
                        next = next.min(answer.ttl.max(MIN_REFRESH));
                        let before = resolved.insert((host.clone(), *port), answer.ips.clone());
                        if before.as_ref() != Some(&answer.ips) {
                            info!(pool = %self.pool, name = %host, addresses = ?answer.ips, "name resolved");
                        }
                    }
                    Err(e) => {
                        let kept = resolved.get(&(host.clone(), *port)).map_or(0, Vec::len);
                        warn!(pool = %self.pool, name = %host, error = %e, kept, "DNS lookup failed; keeping the last addresses");
                        failures.push(format!("{host}: {e} (keeping {kept} address(es))"));
                    }
                }
            }
            if failures.is_empty() {
                retry = FAILED_RETRY;
                self.set_problem(None);
            } else {
                next = next.min(retry);
                retry = (retry * 2).min(self.refresh);
                self.set_problem(Some(format!("dns lookup failed: {}", failures.join("; "))));
            }
            let members = self.members(&resolved);
            if sent.as_ref() != Some(&members) {
                if tx.send(MemberUpdate::Reset(members.clone())).await.is_err() {
                    return;
                }
                sent = Some(members);
            }
            tokio::select! {
                () = tokio::time::sleep(next) => {}
                () = tx.closed() => return,
            }
        }
    }
}

impl Provider for StaticProvider {
    fn launch(&self, _spec: LaunchSpec) -> ProviderFuture<'_, Result<Launched, ProviderError>> {
        Box::pin(async {
            Err(ProviderError::Unsupported(
                "a static pool cannot launch workers",
            ))
        })
    }

    fn release(&self, _handle: WorkerHandle) -> ProviderFuture<'_, Result<(), ProviderError>> {
        Box::pin(async { Ok(()) })
    }

    fn discover(&self) -> Option<MemberStream> {
        let (tx, rx) = mpsc::channel(4);
        if self.0.names().is_empty() {
            // The channel has room for this one update; the sender then drops, closing the
            // stream.
            let _ = tx.try_send(MemberUpdate::Reset(self.0.members(&HashMap::new())));
        } else {
            tokio::spawn(Arc::clone(&self.0).follow_names(tx));
        }
        Some(rx)
    }

    fn problem(&self) -> Option<String> {
        self.0
            .problem
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn describe(&self) -> String {
        format!("static: {} address(es)", self.0.targets.len())
    }

    fn can_launch(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn emits_its_list_once_then_closes() {
        let p = StaticProvider::of_addresses(
            "app",
            vec![
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:2".parse().unwrap(),
            ],
        );
        let mut stream = p.discover().unwrap();
        let Some(MemberUpdate::Reset(members)) = stream.recv().await else {
            panic!("a reset first");
        };
        let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["app-1", "app-2"]);
        assert!(stream.recv().await.is_none());
    }

    #[test]
    fn names_become_one_member_per_address() {
        let p = StaticProvider::new(
            "app",
            vec![
                WorkerTarget::Addr("127.0.0.2:80".parse().unwrap()),
                WorkerTarget::Name {
                    host: "web.test".into(),
                    port: 80,
                },
            ],
            Duration::from_secs(30),
            Vec::new(),
        );
        let mut resolved = HashMap::new();
        resolved.insert(
            ("web.test".to_string(), 80),
            vec!["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()],
        );
        let members = p.0.members(&resolved);
        let ids: Vec<&str> = members.iter().map(|m| m.id.as_str()).collect();
        // 127.0.0.2 is listed and resolved: one worker.
        assert_eq!(ids, ["app-1", "app-web.test-127.0.0.3"]);
    }
}
