//! Application service registrations made in the admin room (`!admin appservices
//! register`). Registrations from the config and `appservice_dir` are never stored: their
//! files are their home.

use serde::{Deserialize, Serialize};

use super::{catalogue::APPSERVICES, codec::Json, table::Table};

/// One registration as an admin gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRegistration {
    /// The registration's YAML exactly as given, so `show-config` answers what was sent,
    /// unknown keys and comments included.
    pub yaml: String,
    /// When it was registered (ms since the epoch).
    pub registered_ms: u64,
    /// The admin who registered it.
    pub registered_by: String,
}

/// `appservice id -> its registration`.
pub const APPSERVICES_TABLE: Table<String, Json<StoredRegistration>> = Table::new(APPSERVICES);
