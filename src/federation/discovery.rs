//! Server discovery: which address, port, TLS name and `Host` header reach a server name,
//! in exactly the order the Server-Server API gives ("Resolving server names"):
//!
//! 1. an IP literal, with its port or 8448;
//! 2. a host name with an explicit port, resolved through A/AAAA;
//! 3. `https://<hostname>/.well-known/matrix/server`, whose `m.server` is then resolved as an
//!    IP literal, a name with a port, an SRV record `_matrix-fed._tcp` then (deprecated)
//!    `_matrix._tcp`, or port 8448;
//! 4. and 5. without a usable `.well-known`: the same SRV records for the original host name;
//! 6. then the host name on port 8448.
//!
//! `.well-known` answers are cached as their `Cache-Control` / `Expires` headers say (24 hours
//! without them, 48 hours at most, an hour for error answers), failures to reach it are
//! retried after a backoff that grows to an hour. Whole resolutions are cached until the
//! earliest expiry of what they used (well-known document, SRV record); a failed resolution
//! is cached for [`FAILURE_TTL`]. Concurrent lookups for one name share one resolution.
//!
//! The resolved name is what the connection's TLS certificate is checked against; when an
//! SRV record points elsewhere, [`ConnectTargets`] tells the federation client's DNS
//! resolver which host to actually connect to.

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use reqwest::{StatusCode, Url, header, redirect};
use ruma::{OwnedServerName, ServerName};

use super::{
    dns::{Dns, SrvTarget},
    flight::SingleFlight,
};
use crate::net::ssrf::{self, IpDenylist, Refused};

/// The federation port when nothing says otherwise.
pub const DEFAULT_PORT: u16 = 8448;
/// How long a failed resolution is remembered.
pub const FAILURE_TTL: Duration = Duration::from_secs(30);
/// `.well-known` cache lifetime without caching headers (the spec's recommendation).
const WELL_KNOWN_DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest a `.well-known` answer is cached, whatever its headers say.
const WELL_KNOWN_MAX_TTL: Duration = Duration::from_secs(48 * 60 * 60);
/// The shortest: a server that forbids caching is still not asked on every request.
const WELL_KNOWN_MIN_TTL: Duration = Duration::from_secs(60);
/// How long an error answer (non-200, bad JSON, no `m.server`) is cached.
const WELL_KNOWN_ERROR_TTL: Duration = Duration::from_secs(60 * 60);
/// First retry delay after `.well-known` could not be fetched at all; doubles per failure.
const WELL_KNOWN_BACKOFF_START: Duration = Duration::from_secs(60);
/// Largest `.well-known` document read.
const WELL_KNOWN_MAX_BYTES: usize = 64 * 1024;
/// Redirects followed for `.well-known`.
const WELL_KNOWN_MAX_REDIRECTS: usize = 10;
/// Cached resolutions (and `.well-known` answers) kept before expired ones are swept.
const CACHE_CAPACITY: usize = 65_536;

/// Which step of the spec's algorithm decided a resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Step 1: the server name is an IP literal.
    IpLiteral,
    /// Step 2: a host name with an explicit port.
    ExplicitPort,
    /// Step 3.1: `.well-known` delegated to an IP literal.
    WellKnownIpLiteral,
    /// Step 3.2: `.well-known` delegated to a host name with a port.
    WellKnownExplicitPort,
    /// Step 3.3: `.well-known`, then `_matrix-fed._tcp` of the delegated name.
    WellKnownSrv,
    /// Step 3.4 (deprecated): `.well-known`, then `_matrix._tcp` of the delegated name.
    WellKnownLegacySrv,
    /// Step 3.5: `.well-known`, then the delegated name on port 8448.
    WellKnownDefaultPort,
    /// Step 4: `_matrix-fed._tcp` of the server name.
    Srv,
    /// Step 5 (deprecated): `_matrix._tcp` of the server name.
    LegacySrv,
    /// Step 6: the server name on port 8448.
    DefaultPort,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::IpLiteral => "IP literal",
            Self::ExplicitPort => "explicit port",
            Self::WellKnownIpLiteral => ".well-known, IP literal",
            Self::WellKnownExplicitPort => ".well-known, explicit port",
            Self::WellKnownSrv => ".well-known, SRV _matrix-fed._tcp",
            Self::WellKnownLegacySrv => ".well-known, SRV _matrix._tcp",
            Self::WellKnownDefaultPort => ".well-known, port 8448",
            Self::Srv => "SRV _matrix-fed._tcp",
            Self::LegacySrv => "SRV _matrix._tcp",
            Self::DefaultPort => "port 8448",
        })
    }
}

/// Where to send requests for a server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The host of the request URL: the name the TLS certificate must be valid for (and the
    /// SNI sent), or an IP literal (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// The `Host` header the spec asks for.
    pub host_header: String,
    /// A different host to connect to (an SRV record's target), if any.
    pub connect_to: Option<String>,
    pub route: Route,
}

impl Destination {
    /// The base URL of requests: `https://host:port`.
    pub fn base_url(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("https://[{ip}]:{}", self.port),
            _ => format!("https://{}:{}", self.host, self.port),
        }
    }
}

/// Why a server name could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveError(pub String);

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ResolveError {}

/// A resolution as cached: the destination or why there is none.
type Resolution = Result<Destination, ResolveError>;

/// Hosts whose connections go to an SRV record's target instead of their own addresses;
/// read by the federation client's DNS resolver.
#[derive(Debug, Default)]
pub struct ConnectTargets {
    targets: Mutex<HashMap<String, (String, Instant)>>,
}

impl ConnectTargets {
    /// The host to resolve for a connection to `host`.
    pub fn target(&self, host: &str) -> Option<String> {
        let targets = self.targets.lock().unwrap_or_else(|poison| poison.into_inner());
        targets
            .get(&host.to_ascii_lowercase())
            .filter(|(_, until)| *until > Instant::now())
            .map(|(target, _)| target.clone())
    }

    fn set(&self, host: &str, target: &str, until: Instant) {
        let mut targets = self.targets.lock().unwrap_or_else(|poison| poison.into_inner());
        if targets.len() >= CACHE_CAPACITY {
            let now = Instant::now();
            targets.retain(|_, (_, expiry)| *expiry > now);
        }
        targets.insert(host.to_ascii_lowercase(), (target.to_owned(), until));
    }
}

/// What a `.well-known/matrix/server` lookup came to.
#[derive(Debug, Clone)]
enum WellKnown {
    /// A valid answer delegating to this name.
    Delegated(OwnedServerName),
    /// An answer that does not delegate (error status, invalid document).
    Invalid,
    /// No answer at all (connection, TLS or timeout failure); `failures` in a row so far.
    Unreachable { failures: u32 },
}

/// The resolver.
pub struct Discovery {
    dns: Arc<Dns>,
    /// Fetches `.well-known` documents (certificate checks, address denylist, timeouts).
    http: reqwest::Client,
    denylist: Arc<IpDenylist>,
    targets: Arc<ConnectTargets>,
    resolved: Mutex<HashMap<OwnedServerName, (Resolution, Instant)>>,
    well_known: Mutex<HashMap<String, (WellKnown, Instant)>>,
    flights: SingleFlight<OwnedServerName, Result<(Destination, Instant), ResolveError>>,
}

impl Discovery {
    /// `http` must verify certificates and check resolved addresses against `denylist`.
    pub fn new(dns: Arc<Dns>, http: reqwest::Client, denylist: Arc<IpDenylist>) -> Self {
        Self {
            dns,
            http,
            denylist,
            targets: Arc::default(),
            resolved: Mutex::new(HashMap::new()),
            well_known: Mutex::new(HashMap::new()),
            flights: SingleFlight::default(),
        }
    }

    /// The `.well-known` client's redirect policy: at most
    /// [`WELL_KNOWN_MAX_REDIRECTS`] redirects, no loops, no denied address literals (names are
    /// checked by the client's resolver).
    pub fn redirect_policy(denylist: Arc<IpDenylist>) -> redirect::Policy {
        redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > WELL_KNOWN_MAX_REDIRECTS {
                return attempt.error(Refused("too many redirects".to_owned()));
            }
            if attempt.previous().iter().any(|previous| previous == attempt.url()) {
                return attempt.error(Refused("a redirect loop".to_owned()));
            }
            match ssrf::check_url(attempt.url(), &denylist) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        })
    }

    pub fn dns(&self) -> &Arc<Dns> {
        &self.dns
    }

    pub fn connect_targets(&self) -> Arc<ConnectTargets> {
        Arc::clone(&self.targets)
    }

    /// Where `server` is reached, from the cache or resolved now.
    pub async fn resolve(&self, server: &ServerName) -> Result<Destination, ResolveError> {
        // Steps 1 and 2 need no lookup worth caching.
        if let Some(destination) = literal_destination(server) {
            return Ok(destination);
        }
        if let Some(cached) = self.cached(server) {
            return cached;
        }
        let key = server.to_owned();
        let outcome = self.flights.run(&key, || self.resolve_uncached(server)).await;
        let (result, until) = match outcome {
            Ok((destination, until)) => (Ok(destination), until),
            Err(error) => (Err(error), Instant::now() + FAILURE_TTL),
        };
        if let Ok(destination) = &result
            && let Some(target) = &destination.connect_to
        {
            self.targets.set(&destination.host, target, until);
        }
        let mut resolved = self.resolved.lock().unwrap_or_else(|poison| poison.into_inner());
        sweep(&mut resolved);
        resolved.insert(key, (result.clone(), until));
        result
    }

    /// A cached resolution that has not expired, and how long it stays cached.
    pub fn cached_with_expiry(
        &self,
        server: &ServerName,
    ) -> Option<(Result<Destination, ResolveError>, Duration)> {
        let resolved = self.resolved.lock().unwrap_or_else(|poison| poison.into_inner());
        let (result, until) = resolved.get(server)?;
        let left = until.checked_duration_since(Instant::now())?;
        Some((result.clone(), left))
    }

    fn cached(&self, server: &ServerName) -> Option<Result<Destination, ResolveError>> {
        self.cached_with_expiry(server).map(|(result, _)| result)
    }

    /// Forgets every cached resolution and `.well-known` answer (for `server` only, if given).
    pub fn forget(&self, server: Option<&ServerName>) {
        let mut resolved = self.resolved.lock().unwrap_or_else(|poison| poison.into_inner());
        let mut well_known = self.well_known.lock().unwrap_or_else(|poison| poison.into_inner());
        match server {
            Some(server) => {
                resolved.remove(server);
                well_known.remove(&server.host().to_ascii_lowercase());
            }
            None => {
                resolved.clear();
                well_known.clear();
            }
        }
    }

    /// Steps 3 to 6, with the instant the answer stops being valid.
    async fn resolve_uncached(
        &self,
        server: &ServerName,
    ) -> Result<(Destination, Instant), ResolveError> {
        let hostname = server.host();
        let (well_known, well_known_until) = self.well_known(hostname).await;
        if let WellKnown::Delegated(delegated) = well_known {
            let host = delegated.host();
            let header = delegated.to_string();
            if let Some(ip) = ip_literal(host) {
                let port = delegated.port().unwrap_or(DEFAULT_PORT);
                return Ok((
                    Destination {
                        host: ip.to_string(),
                        port,
                        host_header: header,
                        connect_to: None,
                        route: Route::WellKnownIpLiteral,
                    },
                    well_known_until,
                ));
            }
            if let Some(port) = delegated.port() {
                return Ok((
                    Destination {
                        host: host.to_owned(),
                        port,
                        host_header: header,
                        connect_to: None,
                        route: Route::WellKnownExplicitPort,
                    },
                    well_known_until,
                ));
            }
            let (destination, until) = self
                .by_srv(
                    host,
                    [Route::WellKnownSrv, Route::WellKnownLegacySrv],
                    Route::WellKnownDefaultPort,
                )
                .await?;
            return Ok((destination, until.min(well_known_until)));
        }
        let (destination, until) =
            self.by_srv(hostname, [Route::Srv, Route::LegacySrv], Route::DefaultPort).await?;
        Ok((destination, until.min(well_known_until)))
    }

    /// `_matrix-fed._tcp.<host>`, then `_matrix._tcp.<host>`, then `<host>:8448`. The `Host`
    /// header and the certificate name are `host` in every case.
    async fn by_srv(
        &self,
        host: &str,
        routes: [Route; 2],
        fallback: Route,
    ) -> Result<(Destination, Instant), ResolveError> {
        let mut until = Instant::now() + WELL_KNOWN_DEFAULT_TTL;
        for (service, route) in ["_matrix-fed._tcp", "_matrix._tcp"].into_iter().zip(routes) {
            let name = format!("{service}.{host}.");
            let answer =
                self.dns.srv(&name).await.map_err(|error| {
                    ResolveError(format!("SRV lookup of {name} failed: {error}"))
                })?;
            until = until.min(answer.valid_until);
            if let Some(SrvTarget { target, port }) = answer.best() {
                return Ok((
                    Destination {
                        host: host.to_owned(),
                        port,
                        host_header: host.to_owned(),
                        connect_to: Some(target),
                        route,
                    },
                    until,
                ));
            }
        }
        Ok((
            Destination {
                host: host.to_owned(),
                port: DEFAULT_PORT,
                host_header: host.to_owned(),
                connect_to: None,
                route: fallback,
            },
            until,
        ))
    }

    /// The `.well-known` answer for `hostname`, from the cache or fetched now, and until
    /// when it holds.
    async fn well_known(&self, hostname: &str) -> (WellKnown, Instant) {
        let key = hostname.to_ascii_lowercase();
        let previous_failures = {
            let cache = self.well_known.lock().unwrap_or_else(|poison| poison.into_inner());
            match cache.get(&key) {
                Some((answer, until)) if *until > Instant::now() => {
                    return (answer.clone(), *until);
                }
                Some((WellKnown::Unreachable { failures }, _)) => *failures,
                _ => 0,
            }
        };
        let (answer, ttl) = match self.fetch_well_known(hostname).await {
            Ok((answer, ttl)) => (answer, ttl),
            Err(error) => {
                let failures = previous_failures.saturating_add(1);
                let backoff = WELL_KNOWN_BACKOFF_START
                    .saturating_mul(2u32.saturating_pow(failures - 1))
                    .min(WELL_KNOWN_ERROR_TTL);
                tracing::debug!(%hostname, %error, ?backoff, "no .well-known/matrix/server");
                (WellKnown::Unreachable { failures }, backoff)
            }
        };
        let until = Instant::now() + ttl;
        let mut cache = self.well_known.lock().unwrap_or_else(|poison| poison.into_inner());
        sweep(&mut cache);
        cache.insert(key, (answer.clone(), until));
        (answer, until)
    }

    /// Fetches `https://<server name>/.well-known/matrix/support` (the server's contacts for
    /// administrators; served at the server name itself, so no discovery), with the same
    /// certificate checks, address denylist, timeouts and size bound as `.well-known/matrix/server`.
    pub async fn fetch_support(&self, server: &ServerName) -> Result<serde_json::Value, String> {
        let url = match ip_literal(server.host()) {
            Some(IpAddr::V6(ip)) => match server.port() {
                Some(port) => format!("https://[{ip}]:{port}/.well-known/matrix/support"),
                None => format!("https://[{ip}]/.well-known/matrix/support"),
            },
            _ => format!("https://{server}/.well-known/matrix/support"),
        };
        let url = Url::parse(&url).map_err(|error| format!("bad URL {url}: {error}"))?;
        ssrf::check_url(&url, &self.denylist).map_err(|refused| refused.0)?;
        let mut response = self.http.get(url).send().await.map_err(|error| error.to_string())?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|error| error.to_string())? {
            if body.len() + chunk.len() > WELL_KNOWN_MAX_BYTES {
                return Err(format!("the answer is larger than {WELL_KNOWN_MAX_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        if status != StatusCode::OK {
            return Err(format!("answered {status}"));
        }
        serde_json::from_slice(&body).map_err(|error| format!("not JSON: {error}"))
    }

    /// Fetches `https://<hostname>/.well-known/matrix/server`. An `Err` means no HTTP answer
    /// was had; every answer, valid or not, comes back with how long to cache it.
    async fn fetch_well_known(&self, hostname: &str) -> Result<(WellKnown, Duration), String> {
        let url = match ip_literal(hostname) {
            Some(IpAddr::V6(ip)) => format!("https://[{ip}]/.well-known/matrix/server"),
            _ => format!("https://{hostname}/.well-known/matrix/server"),
        };
        let url = Url::parse(&url).map_err(|error| format!("bad URL {url}: {error}"))?;
        ssrf::check_url(&url, &self.denylist).map_err(|refused| refused.0)?;
        let mut response = self.http.get(url).send().await.map_err(|error| error.to_string())?;
        let status = response.status();
        let ttl = cache_lifetime(response.headers(), SystemTime::now());
        if status != StatusCode::OK {
            return Ok((
                WellKnown::Invalid,
                ttl.unwrap_or(WELL_KNOWN_ERROR_TTL).min(WELL_KNOWN_ERROR_TTL),
            ));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|error| error.to_string())? {
            if body.len() + chunk.len() > WELL_KNOWN_MAX_BYTES {
                return Ok((WellKnown::Invalid, WELL_KNOWN_ERROR_TTL));
            }
            body.extend_from_slice(&chunk);
        }
        let delegated = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|document| document.get("m.server")?.as_str().map(str::to_owned))
            .and_then(|name| OwnedServerName::try_from(name).ok());
        Ok(match delegated {
            Some(name) => (WellKnown::Delegated(name), ttl.unwrap_or(WELL_KNOWN_DEFAULT_TTL)),
            None => {
                (WellKnown::Invalid, ttl.unwrap_or(WELL_KNOWN_ERROR_TTL).min(WELL_KNOWN_ERROR_TTL))
            }
        })
    }
}

/// Steps 1 and 2: an IP literal, or a name with an explicit port.
fn literal_destination(server: &ServerName) -> Option<Destination> {
    let host = server.host();
    if let Some(ip) = ip_literal(host) {
        return Some(Destination {
            host: ip.to_string(),
            port: server.port().unwrap_or(DEFAULT_PORT),
            host_header: server.to_string(),
            connect_to: None,
            route: Route::IpLiteral,
        });
    }
    server.port().map(|port| Destination {
        host: host.to_owned(),
        port,
        host_header: server.to_string(),
        connect_to: None,
        route: Route::ExplicitPort,
    })
}

/// The address of an IP literal host (`[::1]` in brackets, as server names write IPv6).
fn ip_literal(host: &str) -> Option<IpAddr> {
    let bare = host.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).unwrap_or(host);
    bare.parse().ok()
}

/// How long an answer may be cached per its `Cache-Control` (`max-age`, `no-store`,
/// `no-cache`) or `Expires` header, within [`WELL_KNOWN_MIN_TTL`] and
/// [`WELL_KNOWN_MAX_TTL`]; `None` when the headers say nothing.
fn cache_lifetime(headers: &header::HeaderMap, now: SystemTime) -> Option<Duration> {
    let clamp = |ttl: Duration| ttl.clamp(WELL_KNOWN_MIN_TTL, WELL_KNOWN_MAX_TTL);
    let directives: Vec<String> = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|directive| directive.trim().to_ascii_lowercase())
        .collect();
    if directives.iter().any(|directive| directive == "no-store" || directive == "no-cache") {
        return Some(WELL_KNOWN_MIN_TTL);
    }
    let max_age = directives.iter().find_map(|directive| {
        directive.strip_prefix("max-age=")?.trim_matches('"').parse::<u64>().ok()
    });
    if let Some(seconds) = max_age {
        return Some(clamp(Duration::from_secs(seconds)));
    }
    let expires = headers.get(header::EXPIRES)?.to_str().ok()?;
    // An unparseable date means "already expired" (RFC 9111, 5.3).
    let at = httpdate::parse_http_date(expires).unwrap_or(SystemTime::UNIX_EPOCH);
    Some(clamp(at.duration_since(now).unwrap_or_default()))
}

/// Drops expired entries once a cache is full; if everything is still fresh, starts over.
fn sweep<K, V>(cache: &mut HashMap<K, (V, Instant)>) {
    if cache.len() < CACHE_CAPACITY {
        return;
    }
    let now = Instant::now();
    cache.retain(|_, (_, until)| *until > now);
    if cache.len() >= CACHE_CAPACITY {
        cache.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> OwnedServerName {
        text.try_into().expect("server name")
    }

    #[test]
    fn literals_and_explicit_ports_need_no_lookup() {
        let ip = literal_destination(&name("192.0.2.1")).expect("literal");
        assert_eq!((ip.host.as_str(), ip.port, ip.route), ("192.0.2.1", 8448, Route::IpLiteral));
        assert_eq!(ip.host_header, "192.0.2.1");
        let v6 = literal_destination(&name("[2001:db8::1]:1234")).expect("literal");
        assert_eq!(v6.base_url(), "https://[2001:db8::1]:1234");
        assert_eq!(v6.host_header, "[2001:db8::1]:1234");
        let port = literal_destination(&name("example.org:8449")).expect("explicit port");
        assert_eq!(port.route, Route::ExplicitPort);
        assert_eq!(port.base_url(), "https://example.org:8449");
        assert_eq!(port.host_header, "example.org:8449");
        assert!(literal_destination(&name("example.org")).is_none());
    }

    #[test]
    fn cache_headers_decide_the_lifetime() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut map = header::HeaderMap::new();
            for (key, value) in pairs {
                map.append(*key, value.parse().expect("header value"));
            }
            map
        };
        assert_eq!(cache_lifetime(&headers(&[]), now), None);
        assert_eq!(
            cache_lifetime(&headers(&[("cache-control", "public, max-age=7200")]), now),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(
            cache_lifetime(&headers(&[("cache-control", "max-age=999999999")]), now),
            Some(WELL_KNOWN_MAX_TTL)
        );
        assert_eq!(
            cache_lifetime(&headers(&[("cache-control", "no-store")]), now),
            Some(WELL_KNOWN_MIN_TTL)
        );
        let in_two_hours = httpdate::fmt_http_date(now + Duration::from_secs(7200));
        assert_eq!(
            cache_lifetime(&headers(&[("expires", &in_two_hours)]), now),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(
            cache_lifetime(&headers(&[("expires", "not a date")]), now),
            Some(WELL_KNOWN_MIN_TTL)
        );
        // max-age wins over Expires.
        assert_eq!(
            cache_lifetime(
                &headers(&[("expires", &in_two_hours), ("cache-control", "max-age=600")]),
                now
            ),
            Some(Duration::from_secs(600))
        );
    }
}
