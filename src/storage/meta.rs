//! Server-wide records in the `meta` table: schema version and the persisted high-water
//! marks of the stream-position and short-id counters.

use super::{catalogue::META, table::Table};

/// `meta` maps a record name to its bytes.
pub(crate) const RECORDS: Table<String, Vec<u8>> = Table::new(META);

/// Counters stored as big-endian u64 under these names.
pub(crate) const COUNTERS: Table<String, u64> = Table::new(META);

pub(crate) const SCHEMA_VERSION: &str = "schema_version";
pub(crate) const STREAM_POSITION: &str = "stream_position";
pub(crate) const SHORTID_COUNTER: &str = "shortid_counter";
