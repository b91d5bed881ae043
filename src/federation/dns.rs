//! DNS for federation, through hickory-resolver: SRV records for server discovery and the
//! addresses connections go to, with the `dns_*` settings (cache size, minimum TTLs,
//! attempts, timeouts, TCP) and the nameservers of `/etc/resolv.conf` or `dns_nameservers`.
//!
//! [`ConnectResolver`] is the DNS resolver of the outbound clients: it resolves a host (or
//! the SRV target discovery chose for it) and drops every address in `ip_range_denylist`,
//! so a DNS answer cannot point a request into the operator's network.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_resolver::{
    ResolveErrorKind, TokioResolver,
    config::{LookupIpStrategy, NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts},
    name_server::TokioConnectionProvider,
    proto::{ProtoErrorKind, op::ResponseCode, xfer::Protocol},
};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::discovery::ConnectTargets;
use crate::{
    Config, Error, Result,
    net::ssrf::{IpDenylist, Refused},
};

/// One SRV record's target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    pub target: String,
    pub port: u16,
}

/// An SRV lookup's answer: the records (none when the name or record does not exist) and
/// until when it may be used.
#[derive(Debug, Clone)]
pub struct SrvAnswer {
    /// `(priority, weight, target)`.
    pub records: Vec<(u16, u16, SrvTarget)>,
    pub valid_until: Instant,
}

impl SrvAnswer {
    /// The record to use: the lowest priority, then the highest weight. A target of `.`
    /// means the service is decidedly not offered there (RFC 2782), which reads as no record.
    pub fn best(&self) -> Option<SrvTarget> {
        self.records
            .iter()
            .filter(|(_, _, target)| !target.target.is_empty() && target.target != ".")
            .min_by_key(|(priority, weight, _)| (*priority, std::cmp::Reverse(*weight)))
            .map(|(_, _, target)| target.clone())
    }
}

/// The resolver.
pub struct Dns {
    resolver: TokioResolver,
    negative_min_ttl: Duration,
}

/// How long "no such record" holds when the answer carries no SOA to say.
const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(5 * 60);

impl Dns {
    pub fn from_config(config: &Config) -> Result<Self> {
        let nameservers = config.dns_nameservers();
        let (resolver_config, mut options) = if nameservers.is_empty() {
            // Without a usable resolv.conf the server still runs; only federation lookups
            // fail (with this reason in the log) until the operator sets dns_nameservers.
            hickory_resolver::system_conf::read_system_conf().unwrap_or_else(|error| {
                tracing::error!(
                    %error,
                    "cannot read the system's DNS configuration (/etc/resolv.conf); other \
                     servers cannot be found until dns_nameservers is set"
                );
                (
                    ResolverConfig::from_parts(None, Vec::new(), NameServerConfigGroup::new()),
                    ResolverOpts::default(),
                )
            })
        } else {
            let mut group = NameServerConfigGroup::new();
            for address in &nameservers {
                group.merge(NameServerConfigGroup::from_ips_clear(
                    &[address.ip()],
                    address.port(),
                    true,
                ));
            }
            (ResolverConfig::from_parts(None, Vec::new(), group), ResolverOpts::default())
        };
        let resolver_config = if config.query_over_tcp_only {
            let tcp: Vec<_> = resolver_config
                .name_servers()
                .iter()
                .filter(|server| server.protocol == Protocol::Tcp)
                .cloned()
                .collect();
            ResolverConfig::from_parts(
                resolver_config.domain().cloned(),
                resolver_config.search().to_vec(),
                tcp,
            )
        } else {
            resolver_config
        };
        options.cache_size = config.dns_cache_entries as usize;
        options.positive_min_ttl = Some(Duration::from_secs(config.dns_min_ttl));
        options.negative_min_ttl = Some(Duration::from_secs(config.dns_min_ttl_nxdomain));
        options.attempts = usize::from(config.dns_attempts.max(1));
        options.timeout = Duration::from_secs(config.dns_timeout.max(1));
        options.try_tcp_on_error = config.dns_tcp_fallback;
        options.num_concurrent_reqs = if config.query_all_nameservers { 8 } else { 1 };
        options.ip_strategy = match config.ip_lookup_strategy {
            1 => LookupIpStrategy::Ipv4Only,
            2 => LookupIpStrategy::Ipv6Only,
            3 => LookupIpStrategy::Ipv4AndIpv6,
            4 => LookupIpStrategy::Ipv6thenIpv4,
            _ => LookupIpStrategy::Ipv4thenIpv6,
        };
        options.use_hosts_file = ResolveHosts::Always;
        let mut builder =
            TokioResolver::builder_with_config(resolver_config, TokioConnectionProvider::default());
        *builder.options_mut() = options;
        Ok(Self {
            resolver: builder.build(),
            negative_min_ttl: Duration::from_secs(config.dns_min_ttl_nxdomain),
        })
    }

    /// The SRV records of `name` (a fully qualified name such as
    /// `_matrix-fed._tcp.example.org.`). A name or record that does not exist is an empty
    /// answer, not an error.
    pub async fn srv(&self, name: &str) -> Result<SrvAnswer, String> {
        match self.resolver.srv_lookup(name).await {
            Ok(lookup) => {
                let records = lookup
                    .iter()
                    .map(|srv| {
                        let target = srv.target().to_utf8();
                        let target = target.strip_suffix('.').unwrap_or(&target).to_owned();
                        (srv.priority(), srv.weight(), SrvTarget { target, port: srv.port() })
                    })
                    .collect();
                Ok(SrvAnswer { records, valid_until: lookup.as_lookup().valid_until() })
            }
            Err(error) => match no_records(&error) {
                Some(ttl) => {
                    let ttl = ttl.unwrap_or(DEFAULT_NEGATIVE_TTL).max(self.negative_min_ttl);
                    let now = Instant::now();
                    // A configured minimum can be absurdly large; a year is forever here.
                    let valid_until = now
                        .checked_add(ttl)
                        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 60 * 60));
                    Ok(SrvAnswer { records: Vec::new(), valid_until })
                }
                None => Err(error.to_string()),
            },
        }
    }

    /// The addresses of `host`.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, String> {
        let lookup = self.resolver.lookup_ip(host).await.map_err(|error| error.to_string())?;
        Ok(lookup.iter().collect())
    }
}

/// For NXDOMAIN, or a name without records of the type asked, how long that answer holds
/// (its SOA's negative TTL, if it came with one); `None` for real failures (SERVFAIL,
/// timeouts, refusals).
fn no_records(error: &hickory_resolver::ResolveError) -> Option<Option<Duration>> {
    let ResolveErrorKind::Proto(proto) = error.kind() else { return None };
    match proto.kind() {
        ProtoErrorKind::NoRecordsFound { response_code, negative_ttl, .. }
            if matches!(*response_code, ResponseCode::NXDomain | ResponseCode::NoError) =>
        {
            Some(negative_ttl.map(|ttl| Duration::from_secs(u64::from(ttl))))
        }
        _ => None,
    }
}

/// The outbound clients' DNS resolver; see the module documentation.
#[derive(Clone)]
pub struct ConnectResolver {
    dns: Arc<Dns>,
    denylist: Arc<IpDenylist>,
    targets: Option<Arc<ConnectTargets>>,
}

impl ConnectResolver {
    /// `targets`: SRV targets to connect to instead of a host's own addresses (the
    /// federation client); `None` resolves hosts as they are (`.well-known` fetches).
    pub fn new(
        dns: Arc<Dns>,
        denylist: Arc<IpDenylist>,
        targets: Option<Arc<ConnectTargets>>,
    ) -> Self {
        Self { dns, denylist, targets }
    }
}

impl Resolve for ConnectResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let this = self.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let target = this.targets.as_ref().and_then(|targets| targets.target(&host));
            let lookup = target.as_deref().unwrap_or(&host);
            let resolved = this.dns.addresses(lookup).await.map_err(
                |error| -> Box<dyn std::error::Error + Send + Sync> {
                    format!("cannot resolve {lookup}: {error}").into()
                },
            )?;
            let allowed: Vec<SocketAddr> = resolved
                .iter()
                .filter(|ip| !this.denylist.denies(**ip))
                .map(|ip| SocketAddr::new(*ip, 0))
                .collect();
            if allowed.is_empty() {
                return Err(Box::new(Refused(format!(
                    "{lookup} resolves only to addresses in ip_range_denylist"
                ))) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The certificate authorities of `[global.tls] ca_file`, added to the system's.
pub fn extra_roots(config: &Config) -> Result<Vec<reqwest::Certificate>> {
    let Some(path) = &config.tls.ca_file else { return Ok(Vec::new()) };
    let pem = std::fs::read(path).map_err(|error| {
        Error::internal(format!("cannot read tls.ca_file {}: {error}", path.display()))
    })?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| {
        Error::internal(format!(
            "tls.ca_file {} holds no usable certificate: {error}",
            path.display()
        ))
    })?;
    if certificates.is_empty() {
        return Err(Error::internal(format!(
            "tls.ca_file {} holds no certificate",
            path.display()
        )));
    }
    Ok(certificates)
}
