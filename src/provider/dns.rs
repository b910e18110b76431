//! Looking up the names of a static pool (`addresses = ["app.internal:8080"]`): A and AAAA
//! records through hickory-resolver, from the system's configuration (/etc/resolv.conf,
//! /etc/hosts) or the pool's `dns_servers`, each lookup with its records' remaining TTL.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

/// How long one lookup may take, retries included: a DNS server that does not answer must not
/// hold the refresh loop (the last set stays meanwhile).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// One pool's resolver.
pub struct Dns {
    resolver: TokioResolver,
}

/// What a name resolved to, and for how long that holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The addresses, A records first, sorted within each family.
    pub ips: Vec<IpAddr>,
    /// The records' remaining TTL.
    pub ttl: Duration,
}

impl Dns {
    /// A resolver asking `servers` ("IP:port", UDP then TCP), or the system's when empty.
    pub fn new(servers: &[SocketAddr]) -> Result<Dns, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if servers.is_empty() {
            hickory_resolver::Resolver::builder(provider)
                .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?
        } else {
            let name_servers = servers
                .iter()
                .map(|server| {
                    let mut config = NameServerConfig::udp_and_tcp(server.ip());
                    for connection in &mut config.connections {
                        connection.port = server.port();
                    }
                    config
                })
                .collect();
            hickory_resolver::Resolver::builder_with_config(
                ResolverConfig::from_name_servers(name_servers),
                provider,
            )
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 1;
        if !servers.is_empty() {
            // Servers named in the config answer for the names; /etc/hosts does not.
            opts.use_hosts_file = ResolveHosts::Never;
        }
        let resolver = builder
            .build()
            .map_err(|e| format!("cannot set up DNS: {e}"))?;
        Ok(Dns { resolver })
    }

    /// Look `host` up, within [`LOOKUP_TIMEOUT`]. A name with no address is an error: a
    /// pool never loses its workers to an empty answer.
    pub async fn lookup(&self, host: &str) -> Result<Resolved, String> {
        // A trailing dot: the name as written, not under a search domain.
        let fqdn = format!("{host}.");
        let answer = tokio::time::timeout(LOOKUP_TIMEOUT, self.resolver.lookup_ip(fqdn.as_str()))
            .await
            .map_err(|_| format!("no answer within {LOOKUP_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        let mut ips: Vec<IpAddr> = answer.iter().collect();
        ips.sort_by_key(|ip| (ip.is_ipv6(), *ip));
        ips.dedup();
        if ips.is_empty() {
            return Err("no address records".into());
        }
        let ttl = answer
            .valid_until()
            .saturating_duration_since(std::time::Instant::now());
        Ok(Resolved { ips, ttl })
    }
}
