//! Accounts at rest: users, their devices and tokens, registration tokens, profiles and
//! filters. Only the user's actor writes these (see `accounts::actor`); anyone may read them.

use ruma::{OwnedDeviceId, OwnedUserId};
use serde::{Deserialize, Serialize};

use super::{
    catalogue::{
        ACCESS_TOKENS, DEVICE_LAST_SEEN, DEVICES, FILTERS, OPENID_TOKENS, OPENID_TOKENS_BY_USER,
        PROFILES, REFRESH_TOKENS, REGISTRATION_TOKENS, USERS,
    },
    codec::Json,
    table::Table,
};

/// An account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// PHC-format argon2 hash; `None` for accounts that cannot log in with a password.
    pub password_hash: Option<String>,
    pub created_ms: u64,
    #[serde(default)]
    pub guest: bool,
    #[serde(default)]
    pub admin: bool,
    #[serde(default)]
    pub deactivated: bool,
    /// The application service this account was created for as its own user (its
    /// `sender_localpart`); `None` for people and the server user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appservice: Option<String>,
}

/// A device of a user and the hashes of its current tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    pub display_name: Option<String>,
    pub created_ms: u64,
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
}

/// Where and when a device was last used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSeen {
    pub ip: Option<String>,
    pub ts_ms: u64,
}

/// What an access token stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenRecord {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    /// Milliseconds since the epoch after which the token is refused (soft logout).
    pub expires_ms: Option<u64>,
    /// The refresh token this token was minted from; retired on this token's first use.
    pub minted_from: Option<String>,
    #[serde(default)]
    pub guest: bool,
}

/// What a refresh token stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshTokenRecord {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub expires_ms: Option<u64>,
}

/// What an OpenID token stands for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenIdTokenRecord {
    pub user_id: OwnedUserId,
    /// Milliseconds since the epoch after which the token is refused.
    pub expires_ms: u64,
}

/// An admin-issued registration token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationTokenRecord {
    pub uses_allowed: Option<u32>,
    pub completed: u32,
    pub expiry_ms: Option<u64>,
    /// Issued by the server itself at startup (printed in the log) rather than by an admin.
    #[serde(default)]
    pub bootstrap: bool,
}

impl RegistrationTokenRecord {
    /// Whether the token can be used at `now_ms`.
    pub fn usable(&self, now_ms: u64) -> bool {
        self.uses_allowed.is_none_or(|allowed| self.completed < allowed)
            && self.expiry_ms.is_none_or(|expiry| now_ms < expiry)
    }
}

pub const USERS_TABLE: Table<OwnedUserId, Json<UserRecord>> = Table::new(USERS);
pub const DEVICES_TABLE: Table<(OwnedUserId, OwnedDeviceId), Json<DeviceRecord>> =
    Table::new(DEVICES);
pub const LAST_SEEN_TABLE: Table<(OwnedUserId, OwnedDeviceId), Json<LastSeen>> =
    Table::new(DEVICE_LAST_SEEN);
pub const ACCESS_TOKENS_TABLE: Table<String, Json<AccessTokenRecord>> = Table::new(ACCESS_TOKENS);
pub const REFRESH_TOKENS_TABLE: Table<String, Json<RefreshTokenRecord>> =
    Table::new(REFRESH_TOKENS);
pub const REGISTRATION_TOKENS_TABLE: Table<String, Json<RegistrationTokenRecord>> =
    Table::new(REGISTRATION_TOKENS);
/// `(user, field) -> JSON value`; displayname and avatar_url are fields like any other.
pub const PROFILES_TABLE: Table<(OwnedUserId, String), Vec<u8>> = Table::new(PROFILES);
/// `(user, filter id) -> filter JSON`.
pub const FILTERS_TABLE: Table<(OwnedUserId, String), Vec<u8>> = Table::new(FILTERS);
pub const OPENID_TOKENS_TABLE: Table<String, Json<OpenIdTokenRecord>> = Table::new(OPENID_TOKENS);
/// `(user id, token hash) -> expiry in ms`.
pub const OPENID_TOKENS_BY_USER_TABLE: Table<(OwnedUserId, String), u64> =
    Table::new(OPENID_TOKENS_BY_USER);
