//! A room's power levels: the one reader every permission check goes through (the room actor,
//! the directory and alias rules, upgrades, push conditions), over ruma's `RoomPowerLevels`,
//! and the one writer of power levels content this server builds.
//!
//! Reads are lenient, as the auth rules already validated what a room holds: content that
//! does not parse counts as absent, with a warning. A creator of a room whose version
//! privileges creators has infinite power (`UserPowerLevel::Infinite`).

use std::sync::Arc;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, Int, OwnedUserId, RoomVersionId, UserId,
    events::{
        StateEventType,
        room::power_levels::{
            PowerLevelAction, RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource,
            UserPowerLevel,
        },
    },
    push::PushConditionPowerLevelsCtx,
    room_version_rules::AuthorizationRules,
    state_res::events::RoomCreateEvent,
};

use super::{Pdu, state_res::ResEvent};
use crate::{Error, Result, storage::Storage};

/// The power levels of a room at one point of its history.
#[derive(Debug, Clone)]
pub struct Powers {
    levels: RoomPowerLevels,
    /// Whether the room has an `m.room.power_levels` event (without one, any member may send
    /// state).
    has_event: bool,
}

impl Powers {
    /// The power levels that a room's create and power levels events define.
    pub fn from_events(
        rules: &AuthorizationRules,
        create: Option<&Arc<Pdu>>,
        power_levels: Option<&Pdu>,
    ) -> Self {
        let creators: Vec<OwnedUserId> = create
            .and_then(|create| {
                match RoomCreateEvent::new(ResEvent::in_state(Arc::clone(create))).creators(rules) {
                    Ok(creators) => Some(creators.into_iter().collect()),
                    Err(error) => {
                        tracing::warn!(room = %create.room_id, %error, "unreadable room creators");
                        None
                    }
                }
            })
            .unwrap_or_default();
        let content = power_levels.and_then(|event| {
            match serde_json::from_str::<RoomPowerLevelsEventContent>(event.content.get()) {
                Ok(content) => Some(content),
                Err(error) => {
                    tracing::warn!(event = %event.event_id, %error, "unreadable power levels");
                    None
                }
            }
        });
        Self::from_content(rules, creators, content)
    }

    /// The power levels of a content alone, or of none (`None`: the spec's defaults).
    pub fn from_content(
        rules: &AuthorizationRules,
        creators: Vec<OwnedUserId>,
        content: Option<RoomPowerLevelsEventContent>,
    ) -> Self {
        let has_event = content.is_some();
        let levels = RoomPowerLevels::new(RoomPowerLevelsSource::from(content), rules, creators);
        Self { levels, has_event }
    }

    /// The power levels of a room of `version` at state `snapshot`.
    pub fn load(storage: &Storage, version: &RoomVersionId, snapshot: u64) -> Result<Self> {
        let rules = version
            .rules()
            .ok_or_else(|| Error::internal(format!("unsupported room version {version}")))?;
        let create = super::state_event(storage, snapshot, "m.room.create", "")?;
        let power_levels = super::state_event(storage, snapshot, "m.room.power_levels", "")?;
        let create = create.map(Arc::new);
        Ok(Self::from_events(&rules.authorization, create.as_ref(), power_levels.as_ref()))
    }

    /// Whether the room has an `m.room.power_levels` event.
    pub fn has_event(&self) -> bool {
        self.has_event
    }

    /// The levels as ruma holds them.
    pub fn levels(&self) -> &RoomPowerLevels {
        &self.levels
    }

    /// `user`'s level: infinite for a privileged creator.
    pub fn for_user(&self, user: &UserId) -> UserPowerLevel {
        self.levels.for_user(user)
    }

    /// The level an action needs.
    pub fn for_action(&self, action: PowerLevelAction) -> Int {
        self.levels.for_action(action)
    }

    /// The level needed to send a state event of `kind`: 0 in a room without power levels
    /// (the spec's `state_default` when there is no `m.room.power_levels` event at all).
    pub fn for_state(&self, kind: &StateEventType) -> Int {
        if self.has_event { self.levels.for_state(kind.clone()) } else { Int::from(0u8) }
    }

    /// Whether `user` may send a state event of `kind`.
    pub fn may_send_state(&self, user: &UserId, kind: &StateEventType) -> bool {
        self.for_user(user) >= self.for_state(kind)
    }

    /// These levels as an event's content, field for field (the spec's defaults where the
    /// room has no power levels event), to edit and send with [`explicit_levels`].
    pub fn content(&self) -> RoomPowerLevelsEventContent {
        let levels = &self.levels;
        // The version's own defaults are overwritten field by field below.
        let mut content = RoomPowerLevelsEventContent::new(&AuthorizationRules::V1);
        content.ban = levels.ban;
        content.events = levels.events.clone();
        content.events_default = levels.events_default;
        content.invite = levels.invite;
        content.kick = levels.kick;
        content.redact = levels.redact;
        content.state_default = levels.state_default;
        content.users = levels.users.clone();
        content.users_default = levels.users_default;
        content.notifications = levels.notifications.clone();
        content
    }
}

impl From<Powers> for PushConditionPowerLevelsCtx {
    fn from(powers: Powers) -> Self {
        powers.levels.into()
    }
}

/// A power levels content with every field written out, defaults included: what clients see
/// in a room this server creates does not depend on which values happen to be the spec's
/// defaults (ruma's serializer leaves those out).
pub fn explicit_levels(content: &RoomPowerLevelsEventContent) -> CanonicalJsonObject {
    let int = |value: Int| CanonicalJsonValue::Integer(value);
    let mut object = CanonicalJsonObject::new();
    for (field, value) in [
        ("ban", content.ban),
        ("events_default", content.events_default),
        ("invite", content.invite),
        ("kick", content.kick),
        ("redact", content.redact),
        ("state_default", content.state_default),
        ("users_default", content.users_default),
    ] {
        object.insert(field.to_owned(), int(value));
    }
    let events = content.events.iter().map(|(kind, level)| (kind.to_string(), int(*level)));
    object.insert("events".to_owned(), CanonicalJsonValue::Object(events.collect()));
    let users = content.users.iter().map(|(user, level)| (user.to_string(), int(*level)));
    object.insert("users".to_owned(), CanonicalJsonValue::Object(users.collect()));
    let notifications = [("room".to_owned(), int(content.notifications.room))];
    object.insert(
        "notifications".to_owned(),
        CanonicalJsonValue::Object(notifications.into_iter().collect()),
    );
    object
}

#[cfg(test)]
mod tests {
    use ruma::{events::TimelineEventType, int, owned_user_id, user_id};
    use serde_json::json;

    use super::*;

    fn event(json: serde_json::Value) -> Pdu {
        let Ok(CanonicalJsonValue::Object(object)) = CanonicalJsonValue::try_from(json) else {
            panic!("test event is canonical");
        };
        Pdu::from_json(object).expect("test event parses")
    }

    fn create(version: &str, extra: serde_json::Value) -> Arc<Pdu> {
        let mut content = json!({ "room_version": version, "creator": "@creator:x" });
        if let (Some(content), Some(extra)) = (content.as_object_mut(), extra.as_object()) {
            content.extend(extra.clone());
        }
        Arc::new(event(json!({
            "event_id": "$create:x", "room_id": "!r:x", "sender": "@creator:x",
            "type": "m.room.create", "state_key": "", "origin_server_ts": 1,
            "content": content,
        })))
    }

    fn power_levels(content: serde_json::Value) -> Pdu {
        event(json!({
            "event_id": "$pl:x", "room_id": "!r:x", "sender": "@creator:x",
            "type": "m.room.power_levels", "state_key": "", "origin_server_ts": 2,
            "content": content,
        }))
    }

    fn rules(version: RoomVersionId) -> AuthorizationRules {
        version.rules().expect("known version").authorization
    }

    #[test]
    fn numeric_strings_read_as_their_numbers() {
        let levels = power_levels(json!({ "users": { "@a:x": "75" }, "users_default": " 5 " }));
        let powers = Powers::from_events(&rules(RoomVersionId::V6), None, Some(&levels));
        assert_eq!(powers.for_user(user_id!("@a:x")), int!(75));
        assert_eq!(powers.for_user(user_id!("@b:x")), int!(5));
    }

    #[test]
    fn without_power_levels_the_creator_has_100_and_anyone_may_send_state() {
        let create = create("11", json!({}));
        let powers = Powers::from_events(&rules(RoomVersionId::V11), Some(&create), None);
        assert_eq!(powers.for_user(user_id!("@creator:x")), int!(100));
        assert_eq!(powers.for_user(user_id!("@other:x")), int!(0));
        assert!(powers.may_send_state(user_id!("@other:x"), &StateEventType::RoomName));
        assert_eq!(powers.for_action(PowerLevelAction::RedactOther), int!(50));
    }

    #[test]
    fn privileged_creators_are_infinite_and_others_read_their_levels() {
        let create = create("12", json!({ "additional_creators": ["@extra:x"] }));
        let levels = power_levels(json!({
            "users": { "@a:x": 60 }, "state_default": 50,
            "events": { "m.room.tombstone": 150 },
        }));
        let powers = Powers::from_events(&rules(RoomVersionId::V12), Some(&create), Some(&levels));
        assert_eq!(powers.for_user(user_id!("@creator:x")), UserPowerLevel::Infinite);
        assert_eq!(powers.for_user(user_id!("@extra:x")), UserPowerLevel::Infinite);
        assert!(powers.may_send_state(user_id!("@creator:x"), &StateEventType::RoomTombstone));
        assert!(!powers.may_send_state(user_id!("@a:x"), &StateEventType::RoomTombstone));
        assert!(powers.may_send_state(user_id!("@a:x"), &StateEventType::RoomName));
    }

    #[test]
    fn unreadable_power_levels_count_as_absent() {
        let create = create("11", json!({}));
        let levels = power_levels(json!({ "users": { "@a:x": "lots" } }));
        let powers = Powers::from_events(&rules(RoomVersionId::V11), Some(&create), Some(&levels));
        assert!(!powers.has_event());
        assert_eq!(powers.for_user(user_id!("@creator:x")), int!(100));
    }

    #[test]
    fn explicit_levels_write_every_field_defaults_included() {
        let mut content = RoomPowerLevelsEventContent::new(&rules(RoomVersionId::V11));
        content.users.insert(owned_user_id!("@a:x"), int!(100));
        content.events.insert(TimelineEventType::RoomName, int!(50));
        let written = explicit_levels(&content);
        let keys: Vec<&str> = written.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "ban",
                "events",
                "events_default",
                "invite",
                "kick",
                "notifications",
                "redact",
                "state_default",
                "users",
                "users_default",
            ]
        );
        let written = serde_json::to_value(&written).expect("serializes");
        assert_eq!(written["users_default"], json!(0));
        assert_eq!(written["invite"], json!(0));
        assert_eq!(written["notifications"], json!({ "room": 50 }));
        assert_eq!(written["users"], json!({ "@a:x": 100 }));
        assert_eq!(written["events"], json!({ "m.room.name": 50 }));
    }
}
