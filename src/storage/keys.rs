//! End-to-end encryption key material the server stores but never reads inside: device
//! identity keys, one-time and fallback keys, cross-signing keys and signatures, the device
//! list stream, and room key backups. Everything is kept as the client's JSON so that what
//! it signed comes back byte-for-byte meaningfully identical.

use ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use super::{
    catalogue::{
        BACKUP_KEYS, BACKUP_VERSIONS, CROSS_SIGNING_KEYS, DEVICE_KEYS, DEVICE_LIST_LATEST,
        DEVICE_LIST_STREAM, FALLBACK_KEYS, KEY_SIGNATURES, ONE_TIME_KEYS,
    },
    codec::Json,
    table::Table,
};

/// A device's fallback key for one algorithm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FallbackKeyRecord {
    pub key_id: String,
    pub key: JsonValue,
    /// Handed out by a claim since it was uploaded.
    pub used: bool,
}

/// A room key backup version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupVersionRecord {
    pub algorithm: JsonValue,
    pub auth_data: JsonValue,
    /// Number of keys stored in this version.
    pub count: u64,
    /// Changes whenever the stored keys change.
    pub etag: u64,
    /// Deleted versions are kept as tombstones until the next version is created (whose id
    /// is above theirs), so a version id is never reused.
    pub deleted: bool,
}

/// `(user, device) -> device keys JSON`.
pub const DEVICE_KEYS_TABLE: Table<(OwnedUserId, OwnedDeviceId), Json<JsonValue>> =
    Table::new(DEVICE_KEYS);
/// `(user, device, algorithm, upload position, key id) -> one-time key JSON`.
pub const ONE_TIME_KEYS_TABLE: Table<
    (OwnedUserId, OwnedDeviceId, String, u64, String),
    Json<JsonValue>,
> = Table::new(ONE_TIME_KEYS);
/// `(user, device, algorithm) -> fallback key`.
pub const FALLBACK_KEYS_TABLE: Table<
    (OwnedUserId, OwnedDeviceId, String),
    Json<FallbackKeyRecord>,
> = Table::new(FALLBACK_KEYS);
/// `(user, usage) -> cross-signing key JSON`.
pub const CROSS_SIGNING_KEYS_TABLE: Table<(OwnedUserId, String), Json<JsonValue>> =
    Table::new(CROSS_SIGNING_KEYS);
/// `(target user, target key id, signer user, signer key id) -> signature`; the target key
/// id is a device id or a cross-signing public key.
pub const KEY_SIGNATURES_TABLE: Table<(OwnedUserId, String, OwnedUserId, String), String> =
    Table::new(KEY_SIGNATURES);
/// `position -> user`.
pub const DEVICE_LIST_STREAM_TABLE: Table<u64, OwnedUserId> = Table::new(DEVICE_LIST_STREAM);
/// `user -> position`.
pub const DEVICE_LIST_LATEST_TABLE: Table<OwnedUserId, u64> = Table::new(DEVICE_LIST_LATEST);
/// `(user, version) -> backup version`.
pub const BACKUP_VERSIONS_TABLE: Table<(OwnedUserId, u64), Json<BackupVersionRecord>> =
    Table::new(BACKUP_VERSIONS);
/// `(user, version, room, session) -> backed-up key JSON`.
pub const BACKUP_KEYS_TABLE: Table<(OwnedUserId, u64, OwnedRoomId, String), Json<JsonValue>> =
    Table::new(BACKUP_KEYS);
