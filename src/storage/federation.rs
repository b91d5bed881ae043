//! What the server remembers about other servers: their signing keys, what is waiting to be
//! sent to them (the outbox, each server's queue, the transaction in flight), the
//! transactions they sent, their users' device lists, and the rooms an admin took out of
//! federation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use super::{
    catalogue::{
        DESTINATION_QUEUE, DESTINATION_TRANSACTIONS, FEDERATION_DISABLED_ROOMS, FEDERATION_OUTBOX,
        INBOUND_TRANSACTIONS, REMOTE_DEVICE_LISTS, SERVER_SIGNING_KEYS,
    },
    codec::Json,
    table::Table,
};

/// One verify key of a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVerifyKey {
    /// Unpadded base64, as published.
    pub key: String,
    /// Until when (ms since the epoch) signatures by this key are valid: the key document's
    /// `valid_until_ts` (capped) while the key is current, its `expired_ts` once it is old.
    pub valid_until_ts: u64,
    /// The server no longer signs with it (an old verify key, or gone from its document).
    pub expired: bool,
}

/// Everything known about one server's keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerKeysRecord {
    /// Every key ever seen, by key id; old keys stay for verifying old events.
    pub keys: BTreeMap<String, StoredVerifyKey>,
    /// When (ms) the newest key document stops being current (capped at seven days after it
    /// was fetched, as the spec asks).
    pub valid_until_ts: u64,
    /// When (ms) the newest key document was fetched.
    pub fetched_at: u64,
    /// The newest key document as its server signed it, to vouch for it as a notary.
    pub document: JsonValue,
}

/// `server name -> its keys`.
pub const SERVER_KEYS_TABLE: Table<String, Json<ServerKeysRecord>> =
    Table::new(SERVER_SIGNING_KEYS);

/// Who receives an EDU handed to federation; resolved to server names when it is fanned out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "snake_case")]
pub enum Recipients {
    /// One server (to-device messages).
    Server { server: String },
    /// The other servers with a member joined to the room (typing, receipts).
    Room { room: String },
    /// The other servers sharing a room with the user (presence, device lists, signing keys).
    User { user: String },
}

/// What a commit hands to federation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutboxItem {
    /// A room event, for the other servers of its room: this server's own events, and
    /// other servers' events it relays (a `send_join` join), which go to every server of the
    /// room but `relay_except`, the one that sent it.
    Pdu {
        room: String,
        event: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        relay_except: Option<String>,
    },
    /// An EDU (`{"edu_type": ..., "content": ...}`) and who receives it.
    Edu { to: Recipients, edu: JsonValue },
    /// A change of a user's device, for the servers sharing a room with the user; made into
    /// an `m.device_list_update` with the device as it is when fanned out.
    DeviceListUpdate { user: String, device: String, stream_id: u64, prev_id: Vec<u64> },
    /// A change of a user's cross-signing keys, made into an `m.signing_key_update` when
    /// fanned out.
    SigningKeyUpdate { user: String },
    /// Another server's membership event was accepted in `room`: who is in the room changed.
    /// Nothing is sent; the fan-out forgets the room's servers.
    MembersChanged { room: String },
}

/// One entry of a server's queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum QueuedItem {
    /// A room event, by short event id (read when the transaction is built).
    Pdu { event: u64 },
    /// An EDU as sent, and when it was queued (ms), so a stale typing notice can be dropped.
    Edu { edu: JsonValue, queued_ms: u64 },
}

/// The transaction in flight to a server: retried as it is (same id, same entries) until the
/// server accepts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlightTransaction {
    pub txn_id: String,
    /// Positions of its entries in the server's queue, in order.
    pub entries: Vec<u64>,
    /// When it was first built (ms), for its `origin_server_ts`.
    pub created_ms: u64,
}

/// A transaction another server sent, kept to answer its retries the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundTransactionRecord {
    pub received_ms: u64,
    /// Each PDU's event id and the error it got (`None`: accepted).
    pub pdus: BTreeMap<String, Option<String>>,
}

/// One device of another server's user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteDevice {
    /// The device keys as that server published them.
    pub keys: Option<JsonValue>,
    pub display_name: Option<String>,
}

/// Another server's user's devices and cross-signing keys, kept current by
/// `m.device_list_update` and `m.signing_key_update` EDUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteDeviceList {
    /// The `stream_id` of the last update applied (or of the snapshot it was resynchronised
    /// from).
    pub stream_id: u64,
    pub devices: BTreeMap<String, RemoteDevice>,
    pub master_key: Option<JsonValue>,
    pub self_signing_key: Option<JsonValue>,
    /// When the list was last fetched whole from its server (ms).
    pub synced_ms: u64,
    /// An update was missed and the resynchronisation failed: the next update tries again.
    pub stale: bool,
}

/// `stream position -> item`: written by the commit that produced the item, deleted by the
/// fan-out in the same batch that puts it in the servers' queues.
pub const OUTBOX_TABLE: Table<u64, Json<OutboxItem>> = Table::new(FEDERATION_OUTBOX);
/// `(server name, position) -> item`: written by the fan-out, deleted by the server's
/// destination actor once the server accepted the transaction that carried it.
pub const QUEUE_TABLE: Table<(String, u64), Json<QueuedItem>> = Table::new(DESTINATION_QUEUE);
/// `server name -> transaction in flight`.
pub const IN_FLIGHT_TABLE: Table<String, Json<InFlightTransaction>> =
    Table::new(DESTINATION_TRANSACTIONS);
/// `(origin, transaction id) -> record`.
pub const INBOUND_TRANSACTIONS_TABLE: Table<(String, String), Json<InboundTransactionRecord>> =
    Table::new(INBOUND_TRANSACTIONS);
/// `user id -> device list`.
pub const REMOTE_DEVICE_LISTS_TABLE: Table<String, Json<RemoteDeviceList>> =
    Table::new(REMOTE_DEVICE_LISTS);
/// `room id -> ()`.
pub const DISABLED_ROOMS_TABLE: Table<String, ()> = Table::new(FEDERATION_DISABLED_ROOMS);
