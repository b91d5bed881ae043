//! Push notification state: unread notifying events and their counts per room and thread,
//! each user's notification list, and pushers with their delivery progress.

use ruma::{OwnedRoomId, OwnedUserId};
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

/// A user's unread counts in one room by thread (`""` is the main timeline), sorted by
/// thread. A sorted vector rather than a map: the coherent cache holds one per user and
/// room, most hold only the main timeline, and a map's first node alone takes 640 bytes
/// (20,000 of them were 13 MB of a 10,000-room server).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ThreadCounts(Vec<(String, UnreadCounts)>);

impl ThreadCounts {
    fn position(&self, thread: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(held, _)| held.as_str().cmp(thread))
    }

    pub fn get(&self, thread: &str) -> Option<&UnreadCounts> {
        self.position(thread).ok().map(|index| &self.0[index].1)
    }

    /// Sets the counts of `thread`.
    pub fn insert(&mut self, thread: String, counts: UnreadCounts) {
        match self.position(&thread) {
            Ok(index) => self.0[index].1 = counts,
            Err(index) => self.0.insert(index, (thread, counts)),
        }
    }

    pub fn remove(&mut self, thread: &str) -> Option<UnreadCounts> {
        self.position(thread).ok().map(|index| self.0.remove(index).1)
    }

    /// Threads and their counts, in thread order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &UnreadCounts)> {
        self.0.iter().map(|(thread, counts)| (thread.as_str(), counts))
    }

    pub fn values(&self) -> impl Iterator<Item = &UnreadCounts> {
        self.0.iter().map(|(_, counts)| counts)
    }

    /// Gives back spare capacity, for a value about to be cached.
    pub fn shrunk(mut self) -> Self {
        self.0.shrink_to_fit();
        self
    }
}

/// One notification in a user's list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationRecord {
    pub room_id: OwnedRoomId,
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
pub const UNREAD_EVENTS_TABLE: Table<(OwnedUserId, u64, u64), Json<UnreadRecord>> =
    Table::new(UNREAD_EVENTS);
/// `(user, room short, thread) -> counts`.
pub const UNREAD_COUNTS_TABLE: Table<(OwnedUserId, u64, String), Json<UnreadCounts>> =
    Table::new(UNREAD_COUNTS);
/// `(user, position) -> notification`.
pub const NOTIFICATIONS_TABLE: Table<(OwnedUserId, u64), Json<NotificationRecord>> =
    Table::new(NOTIFICATIONS);
/// `(user, app id, pushkey) -> pusher`.
pub const PUSHERS_TABLE: Table<(OwnedUserId, String, String), Json<PusherRecord>> =
    Table::new(PUSHERS);
/// `(user, app id, pushkey) -> last delivered notification position`.
pub const PUSHER_PROGRESS_TABLE: Table<(OwnedUserId, String, String), u64> =
    Table::new(PUSHER_PROGRESS);
/// `(app id, pushkey, user) -> ()`.
pub const PUSHKEYS_TABLE: Table<(String, String, OwnedUserId), ()> = Table::new(PUSHKEYS);

#[cfg(test)]
mod tests {
    use super::{NotificationRecord, ThreadCounts, UnreadCounts};

    #[test]
    fn notification_rows_keep_their_stored_form() {
        // A row as written while the room id was a string: it reads back, and writes the same.
        let stored = r#"{"room_id":"!room:example.org","event":7,"actions":["notify"],"highlight":false,"ts":1}"#;
        let record: NotificationRecord = serde_json::from_str(stored).expect("decodes");
        assert_eq!(record.room_id.as_str(), "!room:example.org");
        assert_eq!(serde_json::to_string(&record).expect("encodes"), stored);
        let invalid = stored.replace("!room:example.org", "not a room");
        assert!(serde_json::from_str::<NotificationRecord>(&invalid).is_err());
    }

    fn counts(notifications: u64) -> UnreadCounts {
        UnreadCounts { notifications, ..UnreadCounts::default() }
    }

    #[test]
    fn thread_counts_stay_sorted_and_answer_by_thread() {
        let mut by_thread = ThreadCounts::default();
        by_thread.insert("$b".to_owned(), counts(2));
        by_thread.insert(String::new(), counts(1));
        by_thread.insert("$a".to_owned(), counts(3));
        by_thread.insert("$b".to_owned(), counts(4));
        let threads: Vec<(&str, u64)> =
            by_thread.iter().map(|(thread, counts)| (thread, counts.notifications)).collect();
        assert_eq!(threads, [("", 1), ("$a", 3), ("$b", 4)]);
        assert_eq!(by_thread.get("$a"), Some(&counts(3)));
        assert_eq!(by_thread.remove("$a"), Some(counts(3)));
        assert_eq!(by_thread.get("$a"), None);
        assert_eq!(by_thread.remove("$c"), None);
        assert_eq!(by_thread.values().map(|counts| counts.notifications).sum::<u64>(), 5);
    }
}
