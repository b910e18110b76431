//! A fixed list of addresses: the pool's workers are exactly the configured ones, so there is
//! nothing to launch or release; the list is a member source that emits its set once.

use std::net::SocketAddr;

use tokio::sync::mpsc;

use super::{LaunchSpec, Launched, Provider, ProviderError, ProviderFuture, WorkerHandle};
use crate::membership::{Member, MemberStream, MemberUpdate};

/// The static provider.
pub struct StaticProvider {
    pool: String,
    addresses: Vec<SocketAddr>,
}

impl StaticProvider {
    /// The workers of `pool` at `addresses`, named "POOL-1", "POOL-2", ... in list order.
    pub fn new(pool: &str, addresses: Vec<SocketAddr>) -> Self {
        StaticProvider {
            pool: pool.to_string(),
            addresses,
        }
    }

    /// The members, ids by position in the list.
    pub fn members(&self) -> Vec<Member> {
        self.addresses
            .iter()
            .enumerate()
            .map(|(i, addr)| Member::probed(format!("{}-{}", self.pool, i + 1), *addr))
            .collect()
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
        let (tx, rx) = mpsc::channel(1);
        // The channel has room for this one update; the sender then drops, closing the stream.
        let _ = tx.try_send(MemberUpdate::Reset(self.members()));
        Some(rx)
    }

    fn describe(&self) -> String {
        format!("static: {} address(es)", self.addresses.len())
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
        let p = StaticProvider::new(
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
}
