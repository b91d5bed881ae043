//! What the server remembers about other servers: their signing keys.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use super::{catalogue::SERVER_SIGNING_KEYS, codec::Json, table::Table};

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
