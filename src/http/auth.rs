//! Who is calling: access tokens (header or query), the policy each endpoint's ruma
//! authentication scheme implies, guest restrictions, and the client's IP address.

use std::net::{IpAddr, SocketAddr};

use axum::{
    extract::ConnectInfo,
    http::{Method, request::Parts},
};
use ruma::api::auth_scheme::{
    AccessToken, AccessTokenOptional, AppserviceToken, AppserviceTokenOptional, NoAccessToken,
    NoAuthentication,
};

use crate::{Error, Result, Services, accounts::Sender};

/// What an endpoint requires of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Nobody is identified (the token, if any, is ignored).
    Anonymous,
    /// A valid access token identifies the caller if one is given.
    Optional,
    /// Like `Optional`, but an invalid token is ignored rather than refused (endpoints
    /// clients call with whatever token they hold, such as profile lookups).
    Lenient,
    /// An access token is required.
    Required,
}

/// Maps ruma's authentication schemes to our policy.
pub trait AuthPolicy {
    const POLICY: Policy;
}

impl AuthPolicy for NoAuthentication {
    const POLICY: Policy = Policy::Anonymous;
}
impl AuthPolicy for NoAccessToken {
    const POLICY: Policy = Policy::Lenient;
}
impl AuthPolicy for AccessToken {
    const POLICY: Policy = Policy::Required;
}
impl AuthPolicy for AccessTokenOptional {
    const POLICY: Policy = Policy::Optional;
}
impl AuthPolicy for AppserviceToken {
    const POLICY: Policy = Policy::Required;
}
impl AuthPolicy for AppserviceTokenOptional {
    const POLICY: Policy = Policy::Optional;
}
// Endpoints signed with X-Matrix (`ServerSignatures`) have no policy here on purpose: they
// cannot be mounted with `ruma::route`, only through `http::federation`, whose extractor
// checks the signature.

/// The access token of a request: `Authorization: Bearer` first, then `?access_token=`.
pub fn access_token(parts: &Parts) -> Result<Option<String>> {
    if let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| Error::unknown_token(false, "Malformed Authorization header."))?;
        return match value.split_once(' ') {
            Some((scheme, token))
                if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
            {
                Ok(Some(token.trim().to_owned()))
            }
            _ => Err(Error::unknown_token(
                false,
                "The Authorization header must use the Bearer scheme.",
            )),
        };
    }
    let Some(query) = parts.uri.query() else {
        return Ok(None);
    };
    Ok(query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == "access_token")
        .and_then(|(_, value)| percent_decode(value))
        .filter(|token| !token.is_empty()))
}

fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(index + 1..index + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                index += 3;
            }
            b'+' => {
                out.push(b' ');
                index += 1;
            }
            byte => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The client's address: the peer, or for a request proxied from this host (loopback or the
/// UNIX socket) the first `X-Forwarded-For` entry.
pub fn client_ip(parts: &Parts) -> Option<IpAddr> {
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
    let proxied = peer.is_none_or(|ip| ip.is_loopback());
    if proxied
        && let Some(forwarded) = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(',').next())
            .and_then(|first| first.trim().parse::<IpAddr>().ok())
    {
        return Some(forwarded);
    }
    peer
}

/// Identifies the caller according to `policy`.
pub fn authenticate(services: &Services, parts: &Parts, policy: Policy) -> Result<Option<Sender>> {
    match policy {
        Policy::Anonymous => Ok(None),
        Policy::Optional => match access_token(parts)? {
            Some(token) => services.accounts.resolve(&token).map(Some),
            None => Ok(None),
        },
        Policy::Lenient => Ok(access_token(parts)
            .ok()
            .flatten()
            .and_then(|token| services.accounts.resolve(&token).ok())),
        Policy::Required => {
            let token = access_token(parts)?.ok_or_else(Error::missing_token)?;
            let sender = services.accounts.resolve(&token)?;
            if sender.guest && !guest_allowed(&parts.method, parts.uri.path()) {
                return Err(Error::matrix(
                    axum::http::StatusCode::FORBIDDEN,
                    ruma::api::error::ErrorKind::GuestAccessForbidden,
                    "Guest accounts cannot use this endpoint; register a full account.",
                ));
            }
            Ok(Some(sender))
        }
    }
}

/// The endpoints the spec opens to guest accounts (Client-Server API, "Guest access").
fn guest_allowed(method: &Method, path: &str) -> bool {
    let Some(rest) = path
        .strip_prefix("/_matrix/client/")
        .and_then(|rest| rest.split_once('/'))
        .map(|(_version, rest)| rest)
    else {
        return false;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    matches!(
        (method.as_str(), segments.as_slice()),
        ("GET", ["rooms", _, "state"])
            | ("GET", ["rooms", _, "context", _])
            | ("GET", ["rooms", _, "event", _])
            | ("GET", ["rooms", _, "state", ..])
            | ("GET", ["rooms", _, "messages"])
            | ("GET", ["rooms", _, "members"])
            | ("GET", ["rooms", _, "initialSync"])
            | ("GET", ["sync"])
            | ("GET", ["events"])
            | ("GET", ["media", ..])
            | ("POST", ["rooms", _, "join"])
            | ("POST", ["rooms", _, "leave"])
            | ("PUT", ["rooms", _, "send", ..])
            | ("PUT", ["rooms", _, "state", ..])
            | ("PUT", ["sendToDevice", ..])
            | ("PUT" | "DELETE", ["profile", _, "displayname"])
            | ("GET", ["devices"])
            | ("GET" | "PUT", ["devices", _])
            | ("GET", ["account", "whoami"])
            | ("POST", ["keys", "upload" | "query" | "claim"])
            | ("POST", ["logout"])
            | ("PUT", ["rooms", _, "typing", _])
            | ("POST", ["rooms", _, "receipt", ..])
            | ("POST", ["rooms", _, "read_markers"])
            // Refused in the handler unless `turn_allow_guests`.
            | ("GET", ["voip", "turnServer"])
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_reach_only_listed_endpoints() {
        assert!(guest_allowed(&Method::GET, "/_matrix/client/v3/sync"));
        assert!(guest_allowed(&Method::PUT, "/_matrix/client/v3/rooms/!r:x/send/m.room.message/1"));
        assert!(guest_allowed(&Method::PUT, "/_matrix/client/v3/profile/@g:x/displayname"));
        assert!(!guest_allowed(&Method::PUT, "/_matrix/client/v3/profile/@g:x/avatar_url"));
        assert!(!guest_allowed(&Method::POST, "/_matrix/client/v3/createRoom"));
        assert!(!guest_allowed(&Method::GET, "/_matrix/client/v3/pushrules/"));
    }

    #[test]
    fn query_tokens_are_percent_decoded() {
        assert_eq!(percent_decode("a%2Bb+c"), Some("a+b c".to_owned()));
        assert_eq!(percent_decode("plain"), Some("plain".to_owned()));
        assert_eq!(percent_decode("bad%zz"), None);
    }
}
