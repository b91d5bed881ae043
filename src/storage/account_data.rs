//! Account data at rest: the latest content per `(user, room, type)` and a per-user stream
//! of changes that /sync reads from a position onwards. Only the latest change of each key
//! stays in the stream: an update deletes the entry of the change it replaces.

use ruma::OwnedUserId;
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use super::{
    catalogue::{ACCOUNT_DATA, ACCOUNT_DATA_STREAM},
    codec::Json,
    table::Table,
};

/// The current content of one account data key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountDataRecord {
    /// Stream position of the change that set it.
    pub position: u64,
    pub content: JsonValue,
}

/// `(user, room id or "", type) -> record`; global data uses the empty room.
pub const ACCOUNT_DATA_TABLE: Table<(OwnedUserId, String, String), Json<AccountDataRecord>> =
    Table::new(ACCOUNT_DATA);

/// `(user, position) -> (room id or "", type)`.
pub const ACCOUNT_DATA_STREAM_TABLE: Table<(OwnedUserId, u64), Json<(String, String)>> =
    Table::new(ACCOUNT_DATA_STREAM);
