//! Per-user streams that are not room events: to-device messages waiting for a device, and
//! presence.

use ruma::{OwnedDeviceId, OwnedUserId};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use super::{
    catalogue::{PRESENCE, PRESENCE_STREAM, TO_DEVICE, TO_DEVICE_TRANSACTIONS},
    codec::Json,
    table::Table,
};

/// A to-device message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToDeviceRecord {
    pub sender: OwnedUserId,
    #[serde(rename = "type")]
    pub kind: String,
    pub content: JsonValue,
}

/// A user's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceRecord {
    /// "online", "unavailable" or "offline".
    pub state: String,
    pub status_msg: Option<String>,
    /// When the user last did something, in milliseconds since the epoch.
    pub last_active_ms: u64,
    pub position: u64,
}

/// `(user, device, position) -> message`.
pub const TO_DEVICE_TABLE: Table<(OwnedUserId, OwnedDeviceId, u64), Json<ToDeviceRecord>> =
    Table::new(TO_DEVICE);
/// `(sender, sender device, transaction key) -> ()`. The key is the client's transaction id
/// qualified by the event type, or another server's `message_id` (whose sender has no device
/// here: the device part is empty).
pub const TO_DEVICE_TRANSACTIONS_TABLE: Table<(OwnedUserId, OwnedDeviceId, String), ()> =
    Table::new(TO_DEVICE_TRANSACTIONS);
/// `user -> presence`.
pub const PRESENCE_TABLE: Table<OwnedUserId, Json<PresenceRecord>> = Table::new(PRESENCE);
/// `position -> user`.
pub const PRESENCE_STREAM_TABLE: Table<u64, OwnedUserId> = Table::new(PRESENCE_STREAM);
