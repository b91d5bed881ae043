//! Which servers this server federates with: `allow_federation`,
//! `forbidden_remote_server_names` and `allowed_remote_server_names_experimental`, checked on
//! every request another server makes and every request sent to one; and
//! `forbidden_remote_room_directory_server_names`, the servers whose room directory is not
//! browsed from here nor ours from there.

use regex::RegexSet;
use ruma::{OwnedServerName, ServerName};

use crate::{Config, Error, Result};

/// The operator's federation policy.
#[derive(Debug, Clone)]
pub struct ServerPolicy {
    own: OwnedServerName,
    enabled: bool,
    forbidden: RegexSet,
    allowed: RegexSet,
    directory_forbidden: RegexSet,
}

impl ServerPolicy {
    pub fn from_config(config: &Config) -> Result<Self> {
        let set = |key: &str, patterns: &[String]| {
            RegexSet::new(patterns).map_err(|error| Error::internal(format!("{key}: {error}")))
        };
        Ok(Self {
            own: config.server_name.clone(),
            enabled: config.allow_federation,
            forbidden: set("forbidden_remote_server_names", &config.forbidden_remote_server_names)?,
            allowed: set(
                "allowed_remote_server_names_experimental",
                &config.allowed_remote_server_names_experimental,
            )?,
            directory_forbidden: set(
                "forbidden_remote_room_directory_server_names",
                &config.forbidden_remote_room_directory_server_names,
            )?,
        })
    }

    /// Whether federation is on at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether `server` may be talked to. The patterns see the host without its port, as in
    /// Tuwunel; this server itself is always allowed.
    pub fn allows(&self, server: &ServerName) -> bool {
        if server == self.own {
            return true;
        }
        if !self.enabled {
            return false;
        }
        let host = server.host();
        if self.forbidden.is_match(host) {
            return false;
        }
        self.allowed.is_empty() || self.allowed.is_match(host)
    }

    /// Whether the published room directory may be exchanged with `server`: federation
    /// with it is allowed and `forbidden_remote_room_directory_server_names` does not name
    /// it (matched against the host, like the other lists).
    pub fn allows_directory(&self, server: &ServerName) -> bool {
        self.allows(server)
            && (server == self.own || !self.directory_forbidden.is_match(server.host()))
    }

    /// [`Self::allows`] as the spec's error: `403 M_FORBIDDEN`.
    pub fn check(&self, server: &ServerName) -> Result<()> {
        if !self.enabled {
            return Err(Error::forbidden("Federation is disabled on this server."));
        }
        if self.allows(server) {
            Ok(())
        } else {
            Err(Error::forbidden(format!(
                "Federation with {server} is not allowed by this server."
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(forbidden: &[&str], allowed: &[&str]) -> ServerPolicy {
        policy_with_directory(forbidden, allowed, &[])
    }

    fn policy_with_directory(
        forbidden: &[&str],
        allowed: &[&str],
        directory: &[&str],
    ) -> ServerPolicy {
        let owned = |list: &[&str]| list.iter().map(|entry| (*entry).to_owned()).collect();
        let global = crate::config::GlobalConfig {
            server_name: Some(name("here.example")),
            forbidden_remote_server_names: owned(forbidden),
            allowed_remote_server_names_experimental: owned(allowed),
            forbidden_remote_room_directory_server_names: owned(directory),
            ..Default::default()
        };
        let config = Config::from_global(global).expect("valid configuration");
        ServerPolicy::from_config(&config).expect("valid patterns")
    }

    fn name(text: &str) -> OwnedServerName {
        text.try_into().expect("server name")
    }

    #[test]
    fn forbidden_names_are_refused_and_the_port_is_ignored() {
        let policy = policy(&["bad\\.example$"], &[]);
        assert!(!policy.allows(&name("bad.example")));
        assert!(!policy.allows(&name("bad.example:8448")));
        assert!(policy.allows(&name("good.example")));
        assert!(policy.check(&name("bad.example")).is_err());
    }

    #[test]
    fn an_allowlist_admits_only_its_matches_and_the_denylist_still_applies() {
        let policy = policy(&["^bad\\."], &["\\.example$"]);
        assert!(policy.allows(&name("friend.example")));
        assert!(!policy.allows(&name("bad.example")));
        assert!(!policy.allows(&name("stranger.org")));
    }

    #[test]
    fn the_directory_list_only_closes_the_directory() {
        let policy = policy_with_directory(&["^bad\\."], &[], &["spam\\.example$"]);
        assert!(policy.allows(&name("spam.example")), "federation itself stays open");
        assert!(!policy.allows_directory(&name("spam.example:8448")));
        assert!(!policy.allows_directory(&name("bad.example")), "the global list applies");
        assert!(policy.allows_directory(&name("good.example")));
        assert!(policy.allows_directory(&name("here.example")));
    }
}
