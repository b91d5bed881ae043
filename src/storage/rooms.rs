//! Rooms at rest: events (PDUs) and their metadata, per-room timelines, state snapshots,
//! memberships from both sides, and the indexes the read paths use. Only a room's actor
//! writes that room's rows.

use ruma::{
    OwnedEventId, OwnedRoomId, OwnedUserId, RoomVersionId, events::room::member::MembershipState,
};
use serde::{Deserialize, Serialize};
use serde_json::Value as JsonValue;

use super::{
    catalogue::{
        ALIASES, EVENT_META, EVENT_TIMES, PDUS, PUBLISHED_ROOMS, RELATIONS, REPORTS, ROOM_ACTIVITY,
        ROOM_ALIASES, ROOM_HEADS, ROOM_MEMBERS, ROOMS, SEARCH_INDEX, STATE_SNAPSHOTS, THREADS,
        TIMELINE, TRANSACTIONS, UNREDACTED, USER_ROOMS,
    },
    codec::{CodecError, Json, Value},
    table::Table,
};

/// A room this server knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomRecord {
    pub short: u64,
    pub version: RoomVersionId,
    pub creator: OwnedUserId,
    pub created_ms: u64,
}

/// The head of a room: what new events build on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomHeads {
    pub snapshot: u64,
    /// Deltas since the last full snapshot on the current chain.
    pub snapshot_chain: u32,
    pub extremities: Vec<OwnedEventId>,
    pub depth: u64,
    /// The last place handed out in `backfill_timeline`: backfilled history counts up from
    /// here towards older events. Kept by every write of the heads (rooms stored before
    /// backfill existed read 0).
    #[serde(default)]
    pub backfill_seq: u64,
}

/// What this server made of a stored event. Only [`EventStatus::Timeline`] events are shown
/// to clients; the others are kept because the room's DAG references them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Accepted into the room: part of the DAG and of the timeline (live or backfilled).
    #[default]
    Timeline,
    /// Passed the checks against its auth events and the state before it, failed against
    /// the current state: kept in the DAG, never shown, never a forward extremity.
    SoftFailed,
    /// Failed the auth rules: its state never enters a state map, its children are rejected.
    Rejected,
    /// Known without its place in the DAG (an auth chain or fetched state): no state of its
    /// own, no timeline row.
    Outlier,
}

impl EventStatus {
    pub fn is_timeline(&self) -> bool {
        *self == Self::Timeline
    }

    /// Whether clients may see the event: in the timeline, or part of the room's state and
    /// auth events (an outlier); never a rejected or soft-failed one.
    pub fn is_client_visible(&self) -> bool {
        matches!(self, Self::Timeline | Self::Outlier)
    }
}

/// Where an event sits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMeta {
    pub room: u64,
    pub position: u64,
    /// State before the event.
    pub state_before: u64,
    /// State after the event (equal to `state_before` for non-state events).
    pub state_after: u64,
    #[serde(default)]
    pub redacted: bool,
    /// `(device id, transaction id)` of a local client's send, shown back to that device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<(String, String)>,
    /// Whether any event relates to this one (`m.relates_to`): rendering skips the relation
    /// scans for an event known to have none. `None` for events stored before this was
    /// recorded, which are looked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_children: Option<bool>,
    /// Timeline for every event stored before statuses existed.
    #[serde(default, skip_serializing_if = "EventStatus::is_timeline")]
    pub status: EventStatus,
    /// Backfilled history: its place in `backfill_timeline` (its `position` is 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<u64>,
}

/// A membership as seen from the room or from the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipRecord {
    /// As the member event gave it: `join`, `leave`... (any other string is kept as given).
    pub membership: MembershipState,
    /// Stream position of the membership event.
    pub position: u64,
    pub event_id: OwnedEventId,
    /// Stripped state shown with an invite or knock.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stripped_state: Vec<JsonValue>,
    /// The user forgot the room after leaving it.
    #[serde(default)]
    pub forgotten: bool,
}

/// An alias of a local room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasRecord {
    pub room_id: OwnedRoomId,
    pub creator: OwnedUserId,
}

/// A report for admins: of an event, a room or a user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRecord {
    pub reporter: OwnedUserId,
    pub room_id: Option<OwnedRoomId>,
    pub event_id: Option<OwnedEventId>,
    pub user_id: Option<OwnedUserId>,
    pub reason: Option<String>,
    pub received_ms: u64,
}

/// An event kept in its original form after redaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnredactedRecord {
    pub original: String,
    pub redacted_ms: u64,
}

/// A state snapshot: the entries that differ from `parent`, or every entry when `parent` is
/// none. Entries are `(short state key, short event id)` sorted by state key, so a single
/// key is found by binary search. In a delta, the event [`Snapshot::ABSENT`] removes the key
/// (state resolution can drop one); full snapshots never contain it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    pub parent: Option<u64>,
    pub entries: Vec<(u64, u64)>,
}

impl Snapshot {
    /// The entry value of a removed key. Short event ids start at 1, so it names no event.
    pub const ABSENT: u64 = 0;
}

/// Where a room's activity stands: the stream positions of its newest timeline event and of
/// its newest event of a type that moves it up a client's room list (0 for none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomActivity {
    pub last: u64,
    pub bump: u64,
}

impl Value for RoomActivity {
    fn encode_value(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(&self.last.to_be_bytes());
        out.extend_from_slice(&self.bump.to_be_bytes());
        out
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, CodecError> {
        let (last, bump) = bytes
            .split_first_chunk::<8>()
            .and_then(|(last, rest)| Some((last, <&[u8; 8]>::try_from(rest).ok()?)))
            .ok_or(CodecError("room activity of wrong length"))?;
        Ok(Self { last: u64::from_be_bytes(*last), bump: u64::from_be_bytes(*bump) })
    }
}

impl Value for Snapshot {
    fn encode_value(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.entries.len() * 16);
        out.extend_from_slice(&self.parent.unwrap_or(0).to_be_bytes());
        for (key, event) in &self.entries {
            out.extend_from_slice(&key.to_be_bytes());
            out.extend_from_slice(&event.to_be_bytes());
        }
        out
    }

    fn decode_value(bytes: &[u8]) -> Result<Self, CodecError> {
        if bytes.len() < 8 || !(bytes.len() - 8).is_multiple_of(16) {
            return Err(CodecError("malformed state snapshot"));
        }
        let word = |at: usize| {
            let mut buffer = [0u8; 8];
            buffer.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(buffer)
        };
        let parent = match word(0) {
            0 => None,
            parent => Some(parent),
        };
        let entries = (8..bytes.len()).step_by(16).map(|at| (word(at), word(at + 8))).collect();
        Ok(Self { parent, entries })
    }
}

pub const ROOMS_TABLE: Table<String, Json<RoomRecord>> = Table::new(ROOMS);
pub const ROOM_HEADS_TABLE: Table<u64, Json<RoomHeads>> = Table::new(ROOM_HEADS);
pub const PDUS_TABLE: Table<u64, Vec<u8>> = Table::new(PDUS);
pub const EVENT_META_TABLE: Table<u64, Json<EventMeta>> = Table::new(EVENT_META);
pub const TIMELINE_TABLE: Table<(u64, u64), u64> = Table::new(TIMELINE);
pub const SNAPSHOTS_TABLE: Table<u64, Snapshot> = Table::new(STATE_SNAPSHOTS);
pub const ROOM_MEMBERS_TABLE: Table<(u64, String), Json<MembershipRecord>> =
    Table::new(ROOM_MEMBERS);
pub const USER_ROOMS_TABLE: Table<(String, String), Json<MembershipRecord>> =
    Table::new(USER_ROOMS);
/// `(user, device, room, transaction id) -> event id`: a transaction id is scoped to the
/// device and the room it was sent to.
pub const TRANSACTIONS_TABLE: Table<(String, String, String, String), String> =
    Table::new(TRANSACTIONS);
pub const ALIASES_TABLE: Table<String, Json<AliasRecord>> = Table::new(ALIASES);
pub const ROOM_ALIASES_TABLE: Table<(String, String), ()> = Table::new(ROOM_ALIASES);
pub const PUBLISHED_ROOMS_TABLE: Table<String, ()> = Table::new(PUBLISHED_ROOMS);
pub const RELATIONS_TABLE: Table<(u64, String, u64), u64> = Table::new(RELATIONS);
pub const THREADS_TABLE: Table<(u64, u64), u64> = Table::new(THREADS);
pub const ROOM_ACTIVITY_TABLE: Table<u64, RoomActivity> = Table::new(ROOM_ACTIVITY);
pub const SEARCH_TABLE: Table<(u64, String, u64), u64> = Table::new(SEARCH_INDEX);
pub const EVENT_TIMES_TABLE: Table<(u64, u64, u64), u64> = Table::new(EVENT_TIMES);
pub const REPORTS_TABLE: Table<(u64, String), Json<ReportRecord>> = Table::new(REPORTS);
pub const UNREDACTED_TABLE: Table<u64, Json<UnredactedRecord>> = Table::new(UNREDACTED);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_records_keep_their_stored_form() {
        let stored = r#"{"membership":"join","position":7,"event_id":"$a:x","forgotten":false}"#;
        let Json(record) =
            Json::<MembershipRecord>::decode_value(stored.as_bytes()).expect("decodes");
        assert_eq!(record.membership, MembershipState::Join);
        assert_eq!(Json(record).encode_value(), stored.as_bytes());

        // A value the spec does not name (or none) survives as it was stored.
        for membership in ["org.example.custom", ""] {
            let stored = format!(
                r#"{{"membership":"{membership}","position":1,"event_id":"$b:x","forgotten":false}}"#
            );
            let Json(record) =
                Json::<MembershipRecord>::decode_value(stored.as_bytes()).expect("decodes");
            assert_eq!(record.membership.as_str(), membership);
            assert_eq!(Json(record).encode_value(), stored.as_bytes());
        }
    }

    #[test]
    fn snapshots_round_trip() {
        let snapshot = Snapshot { parent: Some(7), entries: vec![(1, 10), (5, 50)] };
        assert_eq!(Snapshot::decode_value(&snapshot.encode_value()), Ok(snapshot));
        let full = Snapshot { parent: None, entries: vec![] };
        assert_eq!(Snapshot::decode_value(&full.encode_value()), Ok(full));
        assert!(Snapshot::decode_value(&[1, 2, 3]).is_err());
    }

    #[test]
    fn records_stored_before_statuses_and_backfill_decode() {
        let meta: EventMeta = serde_json::from_str(
            r#"{"room":1,"position":2,"state_before":3,"state_after":4,"redacted":false}"#,
        )
        .expect("old meta");
        assert_eq!((meta.status, meta.backfill), (EventStatus::Timeline, None));
        // A timeline event without backfill writes exactly the old fields.
        let written = serde_json::to_value(&meta).expect("encode");
        assert!(written.get("status").is_none() && written.get("backfill").is_none());

        let heads: RoomHeads = serde_json::from_str(
            r#"{"snapshot":5,"snapshot_chain":1,"extremities":["$e:example.org"],"depth":9}"#,
        )
        .expect("old heads");
        assert_eq!(heads.backfill_seq, 0);
    }

    #[test]
    fn statuses_round_trip() {
        for status in [
            EventStatus::Timeline,
            EventStatus::SoftFailed,
            EventStatus::Rejected,
            EventStatus::Outlier,
        ] {
            let meta = EventMeta {
                room: 1,
                position: 0,
                state_before: 2,
                state_after: 2,
                redacted: false,
                transaction: None,
                has_children: None,
                status,
                backfill: Some(3),
            };
            let Json(decoded) = Json::<EventMeta>::decode_value(&Json(meta.clone()).encode_value())
                .expect("decode");
            assert_eq!(decoded, meta);
            assert_eq!(status.is_timeline(), status == EventStatus::Timeline);
        }
        assert_eq!(
            serde_json::to_value(EventStatus::SoftFailed).expect("encode"),
            serde_json::json!("soft_failed")
        );
    }
}

/// A user's latest receipt of one type (and thread) in a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptRecord {
    pub event_id: OwnedEventId,
    pub ts: u64,
    pub position: u64,
}

/// `(room short, receipt type, user, thread id or "")`.
pub const RECEIPTS_TABLE: Table<(u64, String, String, String), Json<ReceiptRecord>> =
    Table::new(super::catalogue::RECEIPTS);
/// Which receipt changed: `(user, receipt type, thread id or "")`.
pub type ReceiptKey = (String, String, String);

/// `(room short, position) -> the receipt that changed`.
pub const RECEIPT_STREAM_TABLE: Table<(u64, u64), Json<ReceiptKey>> =
    Table::new(super::catalogue::RECEIPT_STREAM);
