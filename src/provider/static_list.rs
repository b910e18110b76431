//! A fixed list of addresses: the pool's workers are exactly the configured ones, so there is
//! nothing to launch or release (min = max = the list).

use super::{LaunchSpec, Launched, Provider, ProviderError, ProviderFuture, WorkerHandle};

/// The static provider.
pub struct StaticProvider {
    count: usize,
}

impl StaticProvider {
    /// A list of `count` addresses.
    pub fn new(count: usize) -> Self {
        StaticProvider { count }
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

    fn describe(&self) -> String {
        format!("static: {} address(es)", self.count)
    }

    fn can_launch(&self) -> bool {
        false
    }
}
