//! What other people see of a room without being in it: its summary (name, topic, alias,
//! avatar, join rule, member count...) from its current state. The published room directory
//! and the space hierarchy show it, to our clients and to other servers alike.

use ruma::{
    EventEncryptionAlgorithm, OwnedMxcUri, OwnedRoomAliasId, OwnedRoomId, RoomAliasId, RoomId,
    RoomVersionId, ServerName, UInt,
    directory::{PublicRoomsChunk, PublicRoomsChunkInit},
    events::room::{guest_access::GuestAccess, history_visibility::HistoryVisibility},
    room::{JoinRule, RoomSummary, RoomType},
};
use serde_json::Value as JsonValue;

use super::timeline;
use crate::{Result, storage::Storage};

/// A room's summary, from its current state.
#[derive(Debug, Clone)]
pub struct RoomInfo {
    pub room_id: OwnedRoomId,
    pub version: RoomVersionId,
    /// The short id of the room.
    pub short: u64,
    /// The state snapshot the summary was read at.
    pub snapshot: u64,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub canonical_alias: Option<OwnedRoomAliasId>,
    pub avatar_url: Option<OwnedMxcUri>,
    pub room_type: Option<RoomType>,
    pub num_joined_members: u64,
    /// `shared` when the room states none.
    pub history_visibility: HistoryVisibility,
    /// `forbidden` when the room states none.
    pub guest_access: GuestAccess,
    /// The join rule as the room states it (`invite` when it has none), with the rooms whose
    /// members may join a restricted room.
    pub join_rule: JoinRule,
    pub encryption: Option<EventEncryptionAlgorithm>,
}

fn non_empty(text: Option<&str>) -> Option<String> {
    text.filter(|text| !text.is_empty()).map(str::to_owned)
}

/// The plain-text topic: the `text/plain` representation in `m.topic`, else `topic`.
pub fn plain_topic(content: &JsonValue) -> Option<String> {
    let plain = content
        .get("m.topic")
        .and_then(|topic| topic.get("m.text"))
        .and_then(JsonValue::as_array)
        .into_iter()
        .flatten()
        .find(|text| {
            text.get("mimetype")
                .and_then(JsonValue::as_str)
                .is_none_or(|mimetype| mimetype == "text/plain")
        })
        .and_then(|text| text.get("body"))
        .and_then(JsonValue::as_str);
    non_empty(plain).or_else(|| non_empty(content.get("topic").and_then(JsonValue::as_str)))
}

impl RoomInfo {
    /// The summary of a room this server knows, `None` otherwise.
    pub fn load(storage: &Storage, room_id: &RoomId) -> Result<Option<Self>> {
        let Some(record) = super::room(storage, room_id)? else {
            return Ok(None);
        };
        let Some(heads) = super::heads(storage.engine(), record.short)? else {
            return Ok(None);
        };
        let snapshot = heads.snapshot;
        let content = |kind: &str| -> Result<Option<JsonValue>> {
            Ok(super::state_event(storage, snapshot, kind, "")?.map(|pdu| pdu.content_value()))
        };
        let field = |content: &Option<JsonValue>, name: &str| {
            non_empty(content.as_ref().and_then(|content| content.get(name)?.as_str()))
        };
        let create = content("m.room.create")?;
        let join_rule = super::content::join_rule(
            super::state_event(storage, snapshot, "m.room.join_rules", "")?.as_ref(),
        );
        let topic = content("m.room.topic")?.as_ref().and_then(plain_topic);
        let num_joined_members =
            u64::try_from(timeline::joined_members(storage, record.short)?.len()).unwrap_or(0);
        Ok(Some(Self {
            room_id: room_id.to_owned(),
            version: record.version.clone(),
            short: record.short,
            snapshot,
            name: field(&content("m.room.name")?, "name"),
            topic,
            canonical_alias: field(&content("m.room.canonical_alias")?, "alias")
                .and_then(|alias| RoomAliasId::parse(alias).ok()),
            avatar_url: field(&content("m.room.avatar")?, "url").map(OwnedMxcUri::from),
            room_type: field(&create, "type").map(RoomType::from),
            num_joined_members,
            history_visibility: super::content::history_visibility(
                super::state_event(storage, snapshot, "m.room.history_visibility", "")?.as_ref(),
            ),
            guest_access: field(&content("m.room.guest_access")?, "guest_access")
                .map_or(GuestAccess::Forbidden, GuestAccess::from),
            join_rule,
            encryption: field(&content("m.room.encryption")?, "algorithm")
                .map(EventEncryptionAlgorithm::from),
        }))
    }

    fn joined(&self) -> UInt {
        UInt::try_from(self.num_joined_members).unwrap_or(UInt::MAX)
    }

    pub fn is_space(&self) -> bool {
        self.room_type == Some(RoomType::Space)
    }

    /// Whether anyone may read the room's history.
    pub fn world_readable(&self) -> bool {
        self.history_visibility == HistoryVisibility::WorldReadable
    }

    /// Whether guests may join the room.
    pub fn guest_can_join(&self) -> bool {
        self.guest_access == GuestAccess::CanJoin
    }

    /// The room as the published room directory lists it.
    pub fn chunk(&self) -> PublicRoomsChunk {
        let mut chunk = PublicRoomsChunk::from(PublicRoomsChunkInit {
            num_joined_members: self.joined(),
            room_id: self.room_id.clone(),
            world_readable: self.world_readable(),
            guest_can_join: self.guest_can_join(),
        });
        chunk.name = self.name.clone();
        chunk.topic = self.topic.clone();
        chunk.canonical_alias = self.canonical_alias.clone();
        chunk.avatar_url = self.avatar_url.clone();
        chunk.join_rule = self.join_rule.kind();
        chunk.room_type = self.room_type.clone();
        chunk
    }

    /// The room as the space hierarchy summarises it.
    pub fn summary(&self) -> RoomSummary {
        let join_rule = super::content::join_rule_summary(&self.join_rule);
        let mut summary = RoomSummary::new(
            self.room_id.clone(),
            join_rule,
            self.guest_can_join(),
            self.joined(),
            self.world_readable(),
        );
        summary.name = self.name.clone();
        summary.topic = self.topic.clone();
        summary.canonical_alias = self.canonical_alias.clone();
        summary.avatar_url = self.avatar_url.clone();
        summary.room_type = self.room_type.clone();
        summary.encryption = self.encryption.clone();
        summary.room_version = Some(self.version.clone());
        summary
    }

    /// Whether the room matches a directory search term (case-insensitive substring of its
    /// name, topic, canonical alias or id).
    pub fn matches(&self, term: &str) -> bool {
        let term = term.to_lowercase();
        [
            self.name.as_deref(),
            self.topic.as_deref(),
            self.canonical_alias.as_ref().map(|alias| alias.as_str()),
            Some(self.room_id.as_str()),
        ]
        .into_iter()
        .flatten()
        .any(|text| text.to_lowercase().contains(&term))
    }
}

/// Whether a user of `server` is joined to the room with short id `short`.
pub fn server_is_joined(storage: &Storage, short: u64, server: &ServerName) -> Result<bool> {
    Ok(timeline::joined_members(storage, short)?
        .iter()
        .filter_map(|user| ruma::UserId::parse(user.as_str()).ok())
        .any(|user| user.server_name() == server))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn plain_topic_prefers_the_text_plain_block() {
        let content = json!({
            "topic": "fallback",
            "m.topic": {"m.text": [
                {"mimetype": "text/html", "body": "<b>rich</b>"},
                {"body": "plain"},
            ]},
        });
        assert_eq!(plain_topic(&content).as_deref(), Some("plain"));
        assert_eq!(plain_topic(&json!({"topic": "only"})).as_deref(), Some("only"));
        assert_eq!(plain_topic(&json!({"topic": ""})), None);
    }
}
