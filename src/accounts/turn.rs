//! TURN credentials for voice and video calls (`GET /voip/turnServer`): the configured
//! servers with either time-limited credentials derived from a secret shared with the TURN
//! server, or a static username and password.
//!
//! The time-limited kind follows the TURN REST API convention that coturn implements with
//! `use-auth-secret`: the username is `<expiry in unix seconds>:<user id>` and the password is
//! base64(HMAC-SHA1(secret, username)), so the TURN server checks them without asking us.

use std::time::Duration;

use ruma::{
    UserId,
    serde::{Base64, base64::Standard},
};

use crate::{Config, Error, Result};

/// How credentials are made, fixed at startup.
#[derive(Clone)]
enum Credentials {
    /// The shared secret (`turn_secret` or the contents of `turn_secret_file`).
    Secret(String),
    /// `turn_username` / `turn_password`, the same for everyone.
    Static { username: String, password: String },
    /// Neither: the URIs are handed out without credentials (a TURN server open to all).
    None,
}

/// The TURN settings, or nothing when no `turn_uris` are configured.
#[derive(Clone)]
pub struct Turn {
    uris: Vec<String>,
    credentials: Credentials,
    ttl: Duration,
    allow_guests: bool,
}

/// What a client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCredentials {
    pub uris: Vec<String>,
    pub username: String,
    pub password: String,
    pub ttl: Duration,
}

impl Turn {
    /// Reads the settings, and the secret file if one is named: a file that cannot be read
    /// (or is empty) is a broken setup to report at startup, not at the first call.
    pub fn from_config(config: &Config) -> Result<Option<Self>> {
        let file_secret = match &config.turn_secret_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| {
                    Error::internal(format!(
                        "cannot read turn_secret_file {}: {error}",
                        path.display()
                    ))
                })?;
                let secret = text.trim();
                if secret.is_empty() {
                    return Err(Error::internal(format!(
                        "turn_secret_file {} is empty",
                        path.display()
                    )));
                }
                Some(secret.to_owned())
            }
            None => None,
        };
        if config.turn_uris.is_empty() {
            return Ok(None);
        }
        let secret = file_secret.or_else(|| config.turn_secret.clone().filter(|s| !s.is_empty()));
        let credentials = match (secret, &config.turn_username, &config.turn_password) {
            (Some(secret), _, _) => Credentials::Secret(secret),
            (None, Some(username), Some(password)) => {
                Credentials::Static { username: username.clone(), password: password.clone() }
            }
            (None, _, _) => Credentials::None,
        };
        Ok(Some(Self {
            uris: config.turn_uris.clone(),
            credentials,
            ttl: Duration::from_secs(config.turn_ttl.max(1)),
            allow_guests: config.turn_allow_guests,
        }))
    }

    pub fn allows_guests(&self) -> bool {
        self.allow_guests
    }

    /// Credentials for `user_id`, valid from `now_secs` (unix seconds) for the TTL.
    pub fn credentials(&self, user_id: &UserId, now_secs: u64) -> TurnCredentials {
        let (username, password) = match &self.credentials {
            Credentials::Secret(secret) => {
                let expiry = now_secs.saturating_add(self.ttl.as_secs());
                let username = format!("{expiry}:{user_id}");
                let password = rest_api_password(secret, &username);
                (username, password)
            }
            Credentials::Static { username, password } => (username.clone(), password.clone()),
            Credentials::None => (String::new(), String::new()),
        };
        TurnCredentials { uris: self.uris.clone(), username, password, ttl: self.ttl }
    }
}

/// base64(HMAC-SHA1(secret, username)): the password a TURN server with the same secret
/// expects for `username`.
fn rest_api_password(secret: &str, username: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let tag = ring::hmac::sign(&key, username.as_bytes());
    // Padded, as coturn compares it: ruma's encoder leaves the padding out.
    let mut password = Base64::<Standard, _>::new(tag.as_ref()).encode();
    while password.len() % 4 != 0 {
        password.push('=');
    }
    password
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_is_the_rest_api_hmac() {
        // RFC 2202 test case 2 (key "Jefe"), whose HMAC-SHA1 is
        // effcdf6ae5eb2fa2d27416d5f184df9c259a7c79, in base64.
        assert_eq!(
            rest_api_password("Jefe", "what do ya want for nothing?"),
            "7/zfauXrL6LSdBbV8YTfnCWafHk="
        );
        // Computed independently with
        // python3 -c 'import hmac,hashlib,base64;print(base64.b64encode(hmac.new(b"s3cret",
        //   b"1700086400:@alice:example.com",hashlib.sha1).digest()).decode())'
        assert_eq!(
            rest_api_password("s3cret", "1700086400:@alice:example.com"),
            "4Civl3ykxht6RErA0yx5OJ304p0="
        );
    }
}
