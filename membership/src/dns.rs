//! Resolving a DNS name to member addresses with hickory-resolver.

use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::MembershipError;
use crate::config::DnsConfig;

/// Per-query timeout: a DNS server that has not answered in 2 s is down for this round; the
/// next round comes after `interval` anyway.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Dns {
    resolver: TokioResolver,
    config: DnsConfig,
}

impl Dns {
    pub(crate) fn new(config: &DnsConfig) -> Result<Dns, MembershipError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match config.nameserver {
            Some(server) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = server.port();
                let nameserver = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![nameserver]),
                    provider,
                )
            }
            None => {
                TokioResolver::builder(provider).map_err(|source| MembershipError::Resolver {
                    name: config.name.clone(),
                    source,
                })?
            }
        };
        let options = builder.options_mut();
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        options.timeout = QUERY_TIMEOUT;
        options.attempts = 1;
        // Every round must see the records as they are now, not a cached answer, and never
        // /etc/hosts: the members are what the DNS says.
        options.cache_size = 0;
        options.use_hosts_file = ResolveHosts::Never;
        let resolver = builder
            .build()
            .map_err(|source| MembershipError::Resolver {
                name: config.name.clone(),
                source,
            })?;
        Ok(Dns {
            resolver,
            config: config.clone(),
        })
    }

    /// The members ([`DnsConfig::member`]) sorted by address and deduplicated, or why there
    /// are none this round (an empty answer counts as a failure).
    pub(crate) async fn resolve(&self) -> Result<Vec<String>, String> {
        let lookup = self
            .resolver
            .lookup_ip(self.config.name.as_str())
            .await
            .map_err(|error| error.to_string())?;
        let mut ips: Vec<IpAddr> = lookup.iter().collect();
        ips.sort();
        ips.dedup();
        if ips.is_empty() {
            return Err("the answer holds no A or AAAA records".into());
        }
        Ok(ips.into_iter().map(|ip| self.config.member(ip)).collect())
    }
}
