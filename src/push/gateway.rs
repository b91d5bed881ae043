//! The HTTP client pushers reach push gateways with. Gateways are named by users (a pusher's
//! `data.url`), so every request is held to `ip_range_denylist` like a URL preview is: the
//! literal host before sending, and every resolved address at connection time. Hosts the
//! operator lists in `push_gateway_allowlist` (a gateway on the same machine or network) are
//! reached without those checks. Gateways do not get to redirect a push elsewhere.

use std::{collections::HashSet, sync::Arc};

use reqwest::{Url, redirect};
use serde_json::Value as JsonValue;

use crate::{
    Config, Error, Result,
    net::{
        outbound,
        ssrf::{self, GuardedResolver, IpDenylist},
    },
};

/// What sending one request to a gateway came to.
pub enum GatewayAnswer {
    /// The gateway answered 2xx with this body (`{}` when it was not JSON).
    Answered(JsonValue),
    /// The address is not one this server may contact; retrying will not help.
    Denied(String),
    /// The network or the gateway failed; worth retrying.
    Failed(String),
}

pub struct GatewayClient {
    guarded: reqwest::Client,
    /// For allowlisted hosts only.
    unguarded: reqwest::Client,
    denylist: Arc<IpDenylist>,
    allowed_hosts: HashSet<String>,
}

impl GatewayClient {
    /// A client for the configured `ip_range_denylist` and `push_gateway_allowlist`.
    pub fn new(config: &Config) -> Result<Self> {
        Self::with_lists(&config.ip_range_denylist, &config.push_gateway_allowlist)
    }

    fn with_lists(denylist: &[String], allowlist: &[String]) -> Result<Self> {
        let denylist = Arc::new(IpDenylist::parse(denylist).map_err(Error::internal)?);
        let build = |builder: reqwest::ClientBuilder| {
            builder.redirect(redirect::Policy::none()).build().map_err(|error| {
                Error::internal(format!("cannot build the push gateway client: {error}"))
            })
        };
        Ok(Self {
            guarded: build(
                outbound::client_builder()
                    .dns_resolver(GuardedResolver::new(Arc::clone(&denylist))),
            )?,
            unguarded: build(outbound::client_builder())?,
            denylist,
            allowed_hosts: allowlist.iter().map(|host| normalise_host(host)).collect(),
        })
    }

    /// Whether `url`'s host is exempt from `ip_range_denylist`.
    fn allowed(&self, url: &Url) -> bool {
        url.host_str().is_some_and(|host| self.allowed_hosts.contains(&normalise_host(host)))
    }

    /// POSTs `body` to the gateway at `url`.
    pub async fn post(
        &self,
        url: &str,
        body: &JsonValue,
        timeout: std::time::Duration,
    ) -> GatewayAnswer {
        let Ok(url) = Url::parse(url) else {
            return GatewayAnswer::Denied(format!("{url} is not a URL"));
        };
        let client = if self.allowed(&url) {
            &self.unguarded
        } else {
            if let Err(refused) = ssrf::check_url(&url, &self.denylist) {
                return GatewayAnswer::Denied(refused.0);
            }
            &self.guarded
        };
        let response = match client.post(url).json(body).timeout(timeout).send().await {
            Ok(response) => response,
            Err(error) => {
                return match ssrf::refusal(&error) {
                    Some(refused) => GatewayAnswer::Denied(refused.0.clone()),
                    None => GatewayAnswer::Failed(format!("request: {error}")),
                };
            }
        };
        let status = response.status();
        if !status.is_success() {
            return GatewayAnswer::Failed(format!("gateway answered {status}"));
        }
        GatewayAnswer::Answered(response.json().await.unwrap_or_default())
    }
}

/// Host names compare case-insensitively; IPv6 literals are listed with or without brackets.
fn normalise_host(host: &str) -> String {
    let host = host.trim();
    host.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(host)
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_denylist() -> Vec<String> {
        crate::config::GlobalConfig::default().ip_range_denylist
    }

    #[test]
    fn allowlist_matches_hosts_case_insensitively_and_ipv6_in_brackets() {
        let allowlist = ["Push.Example.org".to_owned(), "[::1]".to_owned(), "127.0.0.1".to_owned()];
        let client = GatewayClient::with_lists(&default_denylist(), &allowlist).expect("client");
        for url in [
            "https://push.example.org/_matrix/push/v1/notify",
            "http://[::1]:8080/_matrix/push/v1/notify",
            "http://127.0.0.1:1/_matrix/push/v1/notify",
        ] {
            assert!(client.allowed(&Url::parse(url).expect("url")), "{url}");
        }
        for url in [
            "https://evil.push.example.org/_matrix/push/v1/notify",
            "http://127.0.0.2/_matrix/push/v1/notify",
        ] {
            assert!(!client.allowed(&Url::parse(url).expect("url")), "{url}");
        }
    }

    #[tokio::test]
    async fn denied_literal_addresses_are_refused_without_a_request() {
        let client = GatewayClient::with_lists(&default_denylist(), &[]).expect("client");
        let answer = client
            .post(
                "http://127.0.0.1:9/_matrix/push/v1/notify",
                &serde_json::json!({}),
                std::time::Duration::from_secs(1),
            )
            .await;
        assert!(matches!(answer, GatewayAnswer::Denied(_)));
    }
}
