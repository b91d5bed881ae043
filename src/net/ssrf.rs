//! Keeps requests the server makes on a user's or another server's behalf (URL previews, push
//! gateways, federation) away from the operator's own network.
//!
//! A URL is checked three times: its literal host before the request ([`check_url`]), the
//! addresses its name resolves to at connection time ([`GuardedResolver`], so a DNS answer
//! cannot smuggle in a private address), and every redirect target ([`redirect_policy`],
//! which repeats the first check; the resolver covers the rest). Checking after resolution
//! and connecting to exactly the checked addresses is what closes the DNS-rebinding gap a
//! check-then-resolve-again design leaves open.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use ipnet::IpNet;
use reqwest::{
    Url,
    dns::{Addrs, Name, Resolve, Resolving},
    redirect,
};

/// The IP ranges (`ip_range_denylist`) outbound requests may not reach.
#[derive(Debug, Clone, Default)]
pub struct IpDenylist {
    ranges: Vec<IpNet>,
}

impl IpDenylist {
    /// Parses CIDR ranges; a bare address counts as a single-address range.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let ranges = entries
            .iter()
            .map(|entry| {
                let entry = entry.trim();
                entry
                    .parse::<IpNet>()
                    .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("`{entry}` is not an IP range such as \"10.0.0.0/8\""))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { ranges })
    }

    /// Whether `ip` may not be contacted. An IPv6 address that carries an IPv4 address
    /// (see [`embedded_ipv4`]) can reach that IPv4 host, so it is judged as that address too:
    /// `::ffff:10.0.0.1` and `::10.0.0.1` are denied wherever `10.0.0.0/8` is.
    pub fn denies(&self, ip: IpAddr) -> bool {
        let embedded = match ip {
            IpAddr::V6(v6) => embedded_ipv4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        self.ranges
            .iter()
            .any(|range| range.contains(&ip) || embedded.is_some_and(|v4| range.contains(&v4)))
    }
}

/// The IPv4 address an IPv6 address leads to, for the forms that carry one in a fixed place:
/// IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`, deprecated but still
/// routed to the IPv4 host by some stacks), the NAT64 prefixes (`64:ff9b::/96`, and a /96
/// inside the local-use `64:ff9b:1::/48`, which a NAT64 gateway translates to the IPv4 host
/// in the last 32 bits) and 6to4 (`2002:AABB:CCDD::/48`, the IPv4 address in bits 16 to 48).
fn embedded_ipv4(ip: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let segments = ip.segments();
    let octets = ip.octets();
    let last32 = || std::net::Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]);
    match segments {
        // `::` and `::1` are the IPv6 unspecified and loopback addresses, not IPv4 ones;
        // the denylist covers them as IPv6.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0xffff | 0, _, _] => Some(last32()),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(last32()),
        [0x64, 0xff9b, 1, ..] => Some(last32()),
        [0x2002, ..] => Some(std::net::Ipv4Addr::new(octets[2], octets[3], octets[4], octets[5])),
        _ => None,
    }
}

/// Why an outbound request was not made. Carried through reqwest's error chain so callers
/// can tell a refusal from a network failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Finds a [`Refused`] anywhere in an error's chain of sources.
pub fn refusal<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut current = Some(error);
    // Error chains are short; the bound only guards against a cyclic `source()`.
    for _ in 0..16 {
        let error = current?;
        if let Some(refused) = error.downcast_ref::<Refused>() {
            return Some(refused);
        }
        current = error.source();
    }
    None
}

/// Checks what can be checked before connecting: the scheme, and the host when it is an
/// address literal (names are checked by [`GuardedResolver`] once resolved).
pub fn check_url(url: &Url, denylist: &IpDenylist) -> Result<(), Refused> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refused(format!("only http and https URLs are fetched, not {}", url.scheme())));
    }
    let Some(host) = url.host_str() else {
        return Err(Refused("the URL has no host".to_owned()));
    };
    // URL parsing normalises every numeric spelling of an IPv4 address to dotted form and
    // brackets IPv6 literals; anything else is a name.
    let literal = host.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).unwrap_or(host);
    let Ok(ip) = literal.parse::<IpAddr>() else {
        return Ok(());
    };
    if denylist.denies(ip) {
        return Err(Refused(format!("{ip} is in ip_range_denylist")));
    }
    Ok(())
}

/// A DNS resolver that drops every address in the denylist, and fails when none is left.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    denylist: Arc<IpDenylist>,
}

impl GuardedResolver {
    pub fn new(denylist: Arc<IpDenylist>) -> Self {
        Self { denylist }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let denylist = Arc::clone(&self.denylist);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> =
                resolved.iter().copied().filter(|address| !denylist.denies(address.ip())).collect();
            if allowed.is_empty() {
                return Err(Box::new(Refused(format!(
                    "{host} resolves only to addresses in ip_range_denylist"
                ))) as Box<dyn std::error::Error + Send + Sync>);
            }
            if allowed.len() < resolved.len() {
                tracing::debug!(%host, "dropped denied addresses from a DNS answer");
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Follows at most `max` redirects, each only if `allowed` accepts the target and
/// [`check_url`] passes (the resolver checks names at connection time).
pub fn redirect_policy(
    denylist: Arc<IpDenylist>,
    max: usize,
    allowed: impl Fn(&Url) -> Result<(), Refused> + Send + Sync + 'static,
) -> redirect::Policy {
    redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > max {
            return attempt.error(Refused(format!("more than {max} redirects")));
        }
        match check_url(attempt.url(), &denylist).and_then(|()| allowed(attempt.url())) {
            Ok(()) => attempt.follow(),
            Err(refused) => attempt.error(refused),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_list() -> IpDenylist {
        let config = crate::config::GlobalConfig::default();
        IpDenylist::parse(&config.ip_range_denylist).expect("default list parses")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn default_list_denies_internal_addresses() {
        let list = default_list();
        for denied in [
            "127.0.0.1",
            "127.1.2.3",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(list.denies(ip(denied)), "{denied} should be denied");
        }
        for allowed in ["1.1.1.1", "8.8.8.8", "2606:4700::1111", "::ffff:1.1.1.1"] {
            assert!(!list.denies(ip(allowed)), "{allowed} should be allowed");
        }
    }

    /// IANA's special-purpose registries (IPv4 and IPv6) list these as not globally
    /// reachable (or, for the translation prefixes, as reaching IPv4 hosts): one address of
    /// each must be denied by default.
    #[test]
    fn default_list_covers_the_special_purpose_registries() {
        let list = default_list();
        for denied in [
            "0.1.2.3",          // "this network"
            "192.0.0.8",        // IETF protocol assignments
            "192.88.99.1",      // deprecated 6to4 relay anycast
            "198.18.0.1",       // benchmarking
            "198.51.100.1",     // documentation (TEST-NET-2)
            "203.0.113.1",      // documentation (TEST-NET-3)
            "240.0.0.1",        // reserved
            "::ffff:0:1",       // IPv4-mapped, empty
            "64:ff9b::1.1.1.1", // NAT64 well-known prefix, whatever it embeds
            "64:ff9b:1::1",     // local-use NAT64
            "100::1",           // discard-only
            "100:0:0:1::1",     // dummy prefix
            "2001::1",          // Teredo
            "2001:2::1",        // benchmarking
            "2001:10::1",       // ORCHID (deprecated)
            "2001:20::1",       // ORCHIDv2
            "3fff::1",          // documentation
            "5f00::1",          // segment routing SIDs
            "fec0::1",          // site-local (deprecated)
        ] {
            assert!(list.denies(ip(denied)), "{denied} should be denied");
        }
    }

    /// Every IPv6 spelling that reaches an IPv4 host is judged as that host, whatever the
    /// list holds for IPv6: with only `127.0.0.0/8` denied, each form of 127.0.0.1 is denied.
    #[test]
    fn ipv6_forms_of_a_denied_ipv4_address_are_denied() {
        let list = IpDenylist::parse(&["127.0.0.0/8".to_owned()]).expect("list");
        for form in [
            "::ffff:127.0.0.1",    // IPv4-mapped
            "::127.0.0.1",         // IPv4-compatible
            "::7f00:1",            // the same, written in hex
            "64:ff9b::127.0.0.1",  // NAT64 well-known prefix
            "64:ff9b:1::7f00:1",   // local-use NAT64
            "2002:7f00:1::",       // 6to4
            "2002:7f00:1:1234::5", // 6to4, any host behind it
        ] {
            assert!(list.denies(ip(form)), "{form} reaches 127.0.0.1");
        }
        for form in ["::ffff:8.8.8.8", "::8.8.8.8", "64:ff9b::8.8.8.8", "2002:808:808::"] {
            assert!(!list.denies(ip(form)), "{form} reaches 8.8.8.8");
        }
        // `::` and `::1` are IPv6's own unspecified and loopback addresses.
        assert!(!list.denies(ip("::1")));
        assert!(!list.denies(ip("::")));
    }

    #[test]
    fn ipv4_compatible_and_translated_loopback_urls_are_refused_before_connecting() {
        let list = default_list();
        let check = |url: &str| check_url(&Url::parse(url).expect("url"), &list);
        for url in [
            "http://[::127.0.0.1]:8008/",
            "http://[::7f00:1]/",
            "http://[::ffff:7f00:1]/",
            "http://[64:ff9b::127.0.0.1]/",
            "http://[64:ff9b::a00:1]/",
            "http://[2002:7f00:1::1]/",
            "http://[::169.254.169.254]/",
        ] {
            assert!(check(url).is_err(), "{url} must be refused");
        }
    }

    #[test]
    fn parsing_names_the_bad_entry() {
        let error =
            IpDenylist::parse(&["10.0.0.0/8".to_owned(), "lan".to_owned()]).expect_err("must fail");
        assert!(error.contains("`lan`"), "{error}");
        let single = IpDenylist::parse(&["192.0.2.7".to_owned()]).expect("bare address");
        assert!(single.denies(ip("192.0.2.7")));
        assert!(!single.denies(ip("192.0.2.8")));
    }

    #[test]
    fn literal_hosts_are_checked_before_connecting() {
        let list = default_list();
        let check = |url: &str| check_url(&Url::parse(url).expect("url"), &list);
        assert!(check("http://127.0.0.1:8008/").is_err());
        assert!(check("http://[::1]/").is_err());
        assert!(check("http://[::ffff:127.0.0.1]/").is_err());
        // Alternative spellings of loopback that URL parsing normalises.
        assert!(check("http://2130706433/").is_err());
        assert!(check("http://0x7f.1/").is_err());
        assert!(check("ftp://example.org/").is_err());
        assert!(check("file:///etc/passwd").is_err());
        assert!(check("https://example.org/").is_ok());
        assert!(check("http://93.184.215.14/").is_ok());
    }

    #[test]
    fn refusals_are_found_in_error_chains() {
        #[derive(Debug)]
        struct Wrapper(Refused);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let error = Wrapper(Refused("no".to_owned()));
        assert_eq!(refusal(&error), Some(&Refused("no".to_owned())));
    }

    #[tokio::test]
    async fn resolver_drops_denied_answers() {
        let resolver = GuardedResolver::new(Arc::new(default_list()));
        let name: Name = "localhost".parse().expect("name");
        let error = match resolver.resolve(name).await {
            Ok(addresses) => panic!("localhost resolved to {:?}", addresses.collect::<Vec<_>>()),
            Err(error) => error,
        };
        assert!(refusal(error.as_ref()).is_some(), "{error}");

        let open = GuardedResolver::new(Arc::new(IpDenylist::default()));
        let name: Name = "localhost".parse().expect("name");
        let addresses: Vec<SocketAddr> = open.resolve(name).await.expect("resolves").collect();
        assert!(addresses.iter().all(|address| address.ip().is_loopback()));
    }
}
