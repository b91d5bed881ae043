//! What one sliding sync connection has sent: the state the next response is computed
//! against, and the deltas responses add to it.
//!
//! A response does not change the state it was computed from. It produces a [`Delta`], kept
//! pending until the client presents the response's `pos` (then it is folded in) or a retry
//! of the older `pos` shows the client never got it (then it is dropped). So a retried request
//! sees exactly the state the first attempt saw.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use ruma::OwnedRoomId;

/// The state a response is computed against. Cheap to clone: the room map is shared until a
/// fold changes it.
#[derive(Clone, Debug, Default)]
pub struct ConnState {
    /// The stream position the client has everything up to (0 before the first response).
    pub since: u64,
    /// Every room sent on the connection.
    pub rooms: Arc<HashMap<OwnedRoomId, RoomEntry>>,
    /// The `count` last sent of each list, so a change is news.
    pub list_counts: BTreeMap<String, u64>,
}

impl ConnState {
    /// Whether nothing was ever sent: the connection's first response.
    pub fn is_new(&self) -> bool {
        self.since == 0 && self.rooms.is_empty()
    }

    /// Applies what a response sent.
    pub fn fold(&mut self, delta: &Delta) {
        self.since = delta.since;
        if let Some(counts) = &delta.list_counts {
            self.list_counts.clone_from(counts);
        }
        if !delta.rooms.is_empty() {
            let rooms = Arc::make_mut(&mut self.rooms);
            for (room, entry) in &delta.rooms {
                rooms.insert(room.clone(), entry.clone());
            }
        }
    }
}

/// What the connection knows it sent of one room.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomEntry {
    pub status: RoomStatus,
    /// The last `bump_stamp` sent, so an unchanged one is not repeated.
    pub bump_stamp: u64,
    /// The `timeline_limit` last sent with: a bigger one sends the latest events again.
    pub timeline_limit: u64,
    /// The `is_dm` last sent.
    pub is_dm: bool,
    /// Whether the client has an avatar for the room, so its removal is sent as `null`.
    pub avatar: bool,
    /// Whether the user had joined the room then: a room joined since is sent afresh.
    pub joined: bool,
}

/// Whether the client has a room's updates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RoomStatus {
    /// Everything up to the connection's `since`.
    #[default]
    Live,
    /// Everything up to this position: the room left every window while it had updates, so
    /// it owes the client what came after when it comes back.
    Previously(u64),
}

/// What one response sent: folded into the state once the client confirms it.
#[derive(Clone, Debug, Default)]
pub struct Delta {
    /// The position the response covers up to.
    pub since: u64,
    /// The rooms whose entry changed.
    pub rooms: Vec<(OwnedRoomId, RoomEntry)>,
    /// The lists' counts, when the response had lists.
    pub list_counts: Option<BTreeMap<String, u64>>,
}

#[cfg(test)]
mod tests {
    use ruma::owned_room_id;

    use super::*;

    #[test]
    fn a_fold_advances_the_position_and_updates_only_the_rooms_it_names() {
        let (first, second) = (owned_room_id!("!a:x"), owned_room_id!("!b:x"));
        let mut state = ConnState::default();
        assert!(state.is_new());
        state.fold(&Delta {
            since: 5,
            rooms: vec![
                (
                    first.clone(),
                    RoomEntry { status: RoomStatus::Live, bump_stamp: 3, ..RoomEntry::default() },
                ),
                (
                    second.clone(),
                    RoomEntry { status: RoomStatus::Live, bump_stamp: 4, ..RoomEntry::default() },
                ),
            ],
            list_counts: None,
        });
        let snapshot = state.clone();
        state.fold(&Delta {
            since: 9,
            rooms: vec![(
                first.clone(),
                RoomEntry {
                    status: RoomStatus::Previously(5),
                    bump_stamp: 3,
                    ..RoomEntry::default()
                },
            )],
            list_counts: None,
        });
        assert!(!state.is_new());
        assert_eq!(state.since, 9);
        assert_eq!(state.rooms[&first].status, RoomStatus::Previously(5));
        assert_eq!(state.rooms[&second].bump_stamp, 4);
        // A computation still holding the older state keeps seeing it.
        assert_eq!(snapshot.since, 5);
        assert_eq!(snapshot.rooms[&first].status, RoomStatus::Live);
    }
}
