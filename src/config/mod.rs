//! Configuration: sources, precedence, typed keys, validation and the generated example.
//!
//! [`Config::load`] merges every source (see [`sources`]), parses each known key into its
//! declared type (see [`options`]), and checks the combination. Failures name the key and the
//! source that set it, so `main` can print one line and exit with status 1.

pub mod args;
pub mod example;
pub mod options;
pub mod section;
pub mod sources;
pub mod types;

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    ops::Deref,
    path::PathBuf,
};

use ruma::OwnedServerName;

pub use self::{
    options::{AppserviceConfig, AppserviceNamespace, GlobalConfig, TlsConfig, WellKnownConfig},
    sources::{Inputs, Origin},
};
use self::{
    section::{ParseContext, Section, UnknownKey},
    sources::Layers,
};

/// The smallest `max_request_size` accepted: media uploads and large state need room.
const MIN_REQUEST_SIZE: u64 = 10_000_000;
/// What `client_request_timeout` must leave beyond the longest `/sync` long poll: time to
/// compute and send the response once the wait ends.
const SYNC_SLACK_MS: u64 = 5_000;

/// A configuration problem that stops the server from starting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    Unreadable { path: PathBuf, reason: String },
    Syntax { origin: Origin, reason: String },
    InvalidValue { key: String, origin: Origin, reason: String },
    Missing { key: &'static str, reason: String },
    Conflict { reason: String },
    UnknownKeys(Vec<String>),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreadable { path, reason } => {
                write!(f, "cannot read config file {}: {reason}", path.display())
            }
            Self::Syntax { origin, reason } => write!(f, "syntax error in {origin}: {reason}"),
            Self::InvalidValue { key, origin, reason } => {
                write!(f, "invalid value for `{key}` (set by {origin}): {reason}")
            }
            Self::Missing { key, reason } => write!(f, "`{key}` is required: {reason}"),
            Self::Conflict { reason } => f.write_str(reason),
            Self::UnknownKeys(keys) => write!(
                f,
                "unknown configuration keys (and error_on_unknown_config_opts is set): {}",
                keys.join(", ")
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The validated configuration of one server.
#[derive(Clone, Debug)]
pub struct Config {
    global: GlobalConfig,
    /// `server_name`, resolved (the development default when no file was given).
    pub server_name: OwnedServerName,
    /// True when started without any configuration file.
    pub development: bool,
    /// Messages to log once logging is up (unknown keys and the like).
    pub warnings: Vec<String>,
}

impl Deref for Config {
    type Target = GlobalConfig;

    fn deref(&self) -> &GlobalConfig {
        &self.global
    }
}

impl Config {
    /// Loads, merges and validates the configuration.
    pub fn load(inputs: &Inputs) -> Result<Self, ConfigError> {
        let layers = Layers::gather(inputs)?;
        let mut ctx = ParseContext::new(&layers.origins);
        let global = GlobalConfig::parse(layers.table, &mut ctx)?;
        let mut unknown = ctx.unknown;
        unknown.extend(
            layers.foreign_tables.into_iter().map(|(path, origin)| UnknownKey { path, origin }),
        );
        Self::validate(global, unknown, !layers.from_file, &layers.origins)
    }

    /// Builds a configuration from an already-parsed `[global]` table; for tests and tools.
    pub fn from_global(global: GlobalConfig) -> Result<Self, ConfigError> {
        Self::validate(global, Vec::new(), false, &sources::Origins::default())
    }

    fn validate(
        global: GlobalConfig,
        unknown: Vec<UnknownKey>,
        development: bool,
        origins: &sources::Origins,
    ) -> Result<Self, ConfigError> {
        let invalid = |key: &str, reason: &dyn fmt::Display| ConfigError::InvalidValue {
            key: key.to_owned(),
            origin: origins.get(key),
            reason: reason.to_string(),
        };
        let mut warnings = Vec::new();
        if !unknown.is_empty() {
            if global.error_on_unknown_config_opts {
                return Err(ConfigError::UnknownKeys(
                    unknown.iter().map(|key| format!("`{}` ({})", key.path, key.origin)).collect(),
                ));
            }
            for key in &unknown {
                warnings.push(format!(
                    "config key `{}` (set by {}) is unknown to tuwunel and ignored",
                    key.path, key.origin
                ));
            }
        }

        let server_name = match (&global.server_name, development) {
            (Some(name), _) => name.clone(),
            (None, true) => ruma::server_name!("localhost").to_owned(),
            (None, false) => {
                return Err(ConfigError::Missing {
                    key: "server_name",
                    reason: "set it in [global] of your config file (or TUWUNEL_SERVER_NAME); \
                             it becomes part of every user and room ID"
                        .to_owned(),
                });
            }
        };

        if global.unix_socket_path.is_some() && global.address.is_some() {
            return Err(ConfigError::Conflict {
                reason: "`address` and `unix_socket_path` are both set; listen on one or the other"
                    .to_owned(),
            });
        }
        if global.port.to_vec().is_empty() {
            return Err(ConfigError::Conflict { reason: "`port` is an empty list".to_owned() });
        }
        if global.address.as_ref().is_some_and(|address| address.to_vec().is_empty()) {
            return Err(ConfigError::Conflict { reason: "`address` is an empty list".to_owned() });
        }
        if global.max_request_size.0 < MIN_REQUEST_SIZE {
            return Err(invalid(
                "max_request_size",
                &format!("must be at least {MIN_REQUEST_SIZE} bytes"),
            ));
        }
        if global.rocksdb_max_log_files == 0 {
            return Err(invalid("rocksdb_max_log_files", &"must be at least 1"));
        }
        if !matches!(global.rocksdb_compression_algo.as_str(), "zstd" | "lz4" | "none") {
            return Err(invalid(
                "rocksdb_compression_algo",
                &"must be \"zstd\", \"lz4\" or \"none\" (this build has no other codecs)",
            ));
        }
        if global.rocksdb_recovery_mode > 3 {
            return Err(invalid("rocksdb_recovery_mode", &"must be 0, 1, 2 or 3"));
        }
        if !matches!(
            global.rocksdb_log_level.as_str(),
            "debug" | "info" | "warn" | "error" | "fatal" | "header"
        ) {
            return Err(invalid(
                "rocksdb_log_level",
                &"must be one of debug, info, warn, error, fatal, header",
            ));
        }
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&global.log) {
            return Err(invalid("log", &format!("not a valid log filter: {error}")));
        }
        if global.registration_token.as_deref().is_some_and(str::is_empty) {
            return Err(invalid(
                "registration_token",
                &"must not be empty; remove the key instead",
            ));
        }
        if global.unix_socket_perms > 0o7777 || !octal_digits(global.unix_socket_perms) {
            return Err(invalid("unix_socket_perms", &"must be octal digits such as 660"));
        }
        if let Some(role) = &global.well_known.support_role
            && !matches!(role.as_str(), "m.role.admin" | "m.role.security")
        {
            return Err(invalid(
                "well_known.support_role",
                &"must be m.role.admin or m.role.security",
            ));
        }
        for transport in &global.well_known.rtc_transports {
            if transport.get("type").and_then(toml::Value::as_str).is_none_or(str::is_empty) {
                return Err(invalid(
                    "well_known.rtc_transports",
                    &"every transport needs a `type` string, e.g. { type = \"livekit\", \
                      livekit_service_url = \"https://...\" }",
                ));
            }
        }
        if global.well_known.livekit_url.as_deref().is_some_and(str::is_empty) {
            return Err(invalid(
                "well_known.livekit_url",
                &"must not be empty; remove the key instead",
            ));
        }
        for pattern in &global.forbidden_alias_names {
            if let Err(error) = regex::Regex::new(pattern) {
                return Err(invalid(
                    "forbidden_alias_names",
                    &format!("`{pattern}` is not a regular expression: {error}"),
                ));
            }
        }
        for pattern in &global.forbidden_usernames {
            if let Err(error) = regex::Regex::new(pattern) {
                return Err(invalid(
                    "forbidden_usernames",
                    &format!("`{pattern}` is not a regular expression: {error}"),
                ));
            }
        }
        if !matches!(global.default_room_version.as_str(), "10" | "11" | "12") {
            return Err(invalid("default_room_version", &"must be \"10\", \"11\" or \"12\""));
        }
        if global.allow_outgoing_presence && !global.allow_local_presence {
            return Err(invalid("allow_outgoing_presence", &"needs allow_local_presence"));
        }
        if global.database_backups_to_keep < 0 {
            return Err(invalid("database_backups_to_keep", &"must not be negative"));
        }
        for pattern in &global.prevent_media_downloads_from {
            if let Err(error) = regex::Regex::new(pattern) {
                return Err(invalid(
                    "prevent_media_downloads_from",
                    &format!("`{pattern}` is not a regular expression: {error}"),
                ));
            }
        }
        for (key, patterns) in [
            ("forbidden_remote_server_names", &global.forbidden_remote_server_names),
            (
                "allowed_remote_server_names_experimental",
                &global.allowed_remote_server_names_experimental,
            ),
        ] {
            for pattern in patterns {
                if let Err(error) = regex::Regex::new(pattern) {
                    return Err(invalid(
                        key,
                        &format!("`{pattern}` is not a regular expression: {error}"),
                    ));
                }
            }
        }
        if let Err(error) = parse_nameservers(&global.dns_nameservers) {
            return Err(invalid("dns_nameservers", &error));
        }
        if !(1..=5).contains(&global.ip_lookup_strategy) {
            return Err(invalid("ip_lookup_strategy", &"must be 1, 2, 3, 4 or 5"));
        }
        if let Err(error) = crate::net::ssrf::IpDenylist::parse(&global.ip_range_denylist) {
            return Err(invalid("ip_range_denylist", &error));
        }
        for (key, seconds) in [
            ("client_header_timeout", global.client_header_timeout),
            ("client_receive_timeout", global.client_receive_timeout),
            ("client_request_timeout", global.client_request_timeout),
            ("client_response_timeout", global.client_response_timeout),
            ("client_idle_timeout", global.client_idle_timeout),
        ] {
            if seconds == 0 {
                return Err(invalid(key, &"must be at least 1 second"));
            }
        }
        let longest_poll_ms = global.client_sync_timeout_max.max(global.client_sync_timeout_min);
        if global.client_request_timeout.saturating_mul(1000) < longest_poll_ms + SYNC_SLACK_MS {
            return Err(invalid(
                "client_request_timeout",
                &format!(
                    "must exceed the longest /sync long poll (client_sync_timeout_max, {} s) by \
                     at least {} s, or long polls would be cut off",
                    longest_poll_ms / 1000,
                    SYNC_SLACK_MS / 1000
                ),
            ));
        }
        match (&global.tls.certs, &global.tls.key) {
            (Some(_), None) => return Err(invalid("tls.key", &"is needed with tls.certs")),
            (None, Some(_)) => return Err(invalid("tls.certs", &"is needed with tls.key")),
            (None, None) if !global.tls.port.is_empty() => {
                return Err(invalid("tls.port", &"needs tls.certs and tls.key"));
            }
            _ => {}
        }
        let ports = global.port.to_vec();
        if let Some(port) = global.tls.port.iter().find(|port| !ports.contains(port)) {
            return Err(invalid("tls.port", &format!("lists {port}, which is not in `port`")));
        }
        if global.media_thumbnail_max_pixels == 0 {
            return Err(invalid("media_thumbnail_max_pixels", &"must be at least 1"));
        }

        Ok(Self { global, server_name, development, warnings })
    }

    /// Addresses to bind, and whether they were chosen by the operator (explicit addresses
    /// must bind; defaults may fail per address family).
    pub fn listen_addresses(&self) -> (Vec<IpAddr>, bool) {
        match &self.global.address {
            Some(address) => (address.to_vec(), true),
            None => (
                vec![IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)],
                false,
            ),
        }
    }

    /// The socket permissions as a mode (the key is written with octal digits).
    pub fn unix_socket_mode(&self) -> u32 {
        u32::from_str_radix(&self.global.unix_socket_perms.to_string(), 8).unwrap_or(0o660)
    }

    /// The read cache size in bytes.
    pub fn db_cache_bytes(&self) -> usize {
        megabytes_or_per_core(self.global.db_cache_capacity_mb, 128.0, 64.0)
    }

    /// The bound on all memtables together, in bytes.
    pub fn db_write_buffer_bytes(&self) -> usize {
        megabytes_or_per_core(self.global.db_write_buffer_capacity_mb, 48.0, 4.0)
    }

    /// The nameservers of `dns_nameservers` (port 53 unless given); empty means the
    /// system's.
    pub fn dns_nameservers(&self) -> Vec<SocketAddr> {
        // Validated when the configuration was loaded.
        parse_nameservers(&self.global.dns_nameservers).unwrap_or_default()
    }

    /// Mutable access for tests and tools that adjust a loaded configuration.
    pub fn global_mut(&mut self) -> &mut GlobalConfig {
        &mut self.global
    }
}

/// A size configured in MiB, or by default `base` plus `per_core` MiB per CPU core, in bytes.
fn megabytes_or_per_core(configured: Option<f64>, base: f64, per_core: f64) -> usize {
    let mb = configured.unwrap_or_else(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        base + per_core * cores as f64
    });
    // Megabytes to bytes; the cast saturates on absurd values by design.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bytes = (mb.max(1.0) * 1024.0 * 1024.0) as usize;
    bytes
}

/// Parses `"ip"` or `"ip:port"` entries (IPv6 with a port in brackets: `"[::1]:53"`).
fn parse_nameservers(entries: &[String]) -> Result<Vec<SocketAddr>, String> {
    entries
        .iter()
        .map(|entry| {
            let entry = entry.trim();
            entry
                .parse::<SocketAddr>()
                .or_else(|_| entry.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| {
                    format!("`{entry}` is not an address such as \"10.0.0.53\" or \"10.0.0.53:53\"")
                })
        })
        .collect()
}

fn octal_digits(value: u32) -> bool {
    value.to_string().chars().all(|digit| ('0'..='7').contains(&digit))
}
