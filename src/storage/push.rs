//! Push notification state: unread notifying events and their counts per room and thread,
//! each user's notification list, and pushers with their delivery progress.

use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use super::{
    catalogue::{NOTIFICATIONS, PUSHER_PROGRESS, PUSHERS, PUSHKEYS, UNREAD_COUNTS, UNREAD_EVENTS},
    codec::Json,
    table::Table,
};

/// An unread event that notified a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadRecord {
    pub highlight: bool,
    /// The thread root's event id, or empty for the main timeline.
    pub thread: String,
}

/// Unread notification counts of one room thread (or the main timeline).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadCounts {
    pub notifications: u64,
    pub highlights: u64,
    /// Stream position of the last change, so /sync can tell a count changed.
    pub position: u64,
}

/// One notification in a user's list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationRecord {
    pub room_id: String,
    /// Short id of the event.
    pub event: u64,
    pub actions: JsonValue,
    pub highlight: bool,
    pub ts: u64,
}

/// A pusher as set by the client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PusherRecord {
    /// `kind`, `app_display_name`, `device_display_name`, `profile_tag`, `lang` and `data`.
    pub pusher: JsonValue,
    pub created_ms: u64,
    /// Notifications before this position are never pushed (the pusher did not exist yet).
    pub since_position: u64,
}

/// `(user, room short, position) -> unread event`.
pub const UNREAD_EVENTS_TABLE: Table<(String, u64, u64), Json<UnreadRecord>> =
    Table::new(UNREAD_EVENTS);
/// `(user, room short, thread) -> counts`.
pub const UNREAD_COUNTS_TABLE: Table<(String, u64, String), Json<UnreadCounts>> =
    Table::new(UNREAD_COUNTS);
/// `(user, position) -> notification`.
pub const NOTIFICATIONS_TABLE: Table<(String, u64), Json<NotificationRecord>> =
    Table::new(NOTIFICATIONS);
/// `(user, app id, pushkey) -> pusher`.
pub const PUSHERS_TABLE: Table<(String, String, String), Json<PusherRecord>> = Table::new(PUSHERS);
/// `(user, app id, pushkey) -> last delivered notification position`.
pub const PUSHER_PROGRESS_TABLE: Table<(String, String, String), u64> = Table::new(PUSHER_PROGRESS);
/// `(app id, pushkey, user) -> ()`.
pub const PUSHKEYS_TABLE: Table<(String, String, String), ()> = Table::new(PUSHKEYS);
