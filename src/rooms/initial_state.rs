//! The first events of every room this server creates (createRoom, a room upgrade, the admin
//! room), built by one builder in one order: create, the creator's join, power levels, the
//! canonical alias, the preset's join rules / history visibility / guest access (minus any the
//! caller's own state replaces), that state, name, topic, other members, and the power levels
//! restored after a temporary raise.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, Int, OwnedRoomAliasId, OwnedUserId, RoomVersionId,
    UserId,
    events::{
        TimelineEventType,
        room::{
            canonical_alias::RoomCanonicalAliasEventContent,
            guest_access::{GuestAccess, RoomGuestAccessEventContent},
            history_visibility::{HistoryVisibility, RoomHistoryVisibilityEventContent},
            join_rules::{JoinRule, RoomJoinRulesEventContent},
            member::RoomMemberEventContent,
            name::RoomNameEventContent,
            power_levels::RoomPowerLevelsEventContent,
            topic::RoomTopicEventContent,
        },
    },
    room_version_rules::AuthorizationRules,
};

use super::{builder::Template, power_levels::explicit_levels};
use crate::Result;

/// Who may join a new room and see its history, as a createRoom preset sets them.
#[derive(Debug, Clone)]
pub struct Preset {
    pub join_rule: JoinRule,
    pub history_visibility: HistoryVisibility,
    pub guest_access: GuestAccess,
}

/// Everything a new room starts with.
#[derive(Debug, Clone)]
pub struct InitialState {
    pub creator: OwnedUserId,
    /// The create content (see [`create_content`]).
    pub create: CanonicalJsonObject,
    pub creator_member: RoomMemberEventContent,
    pub power_levels: CanonicalJsonObject,
    pub canonical_alias: Option<OwnedRoomAliasId>,
    pub preset: Option<Preset>,
    /// Further state: createRoom's `initial_state`, or what an upgrade copies.
    pub state: Vec<(TimelineEventType, String, CanonicalJsonObject)>,
    pub name: Option<String>,
    pub topic: Option<RoomTopicEventContent>,
    /// Other members' events (createRoom's invites, an upgrade's bans).
    pub members: Vec<(OwnedUserId, RoomMemberEventContent)>,
    /// The power levels to send last, when `power_levels` raised the creator for a while.
    pub restore_power_levels: Option<CanonicalJsonObject>,
}

impl InitialState {
    /// A room with only its create event, its creator's join and its power levels.
    pub fn new(
        creator: OwnedUserId,
        create: CanonicalJsonObject,
        creator_member: RoomMemberEventContent,
        power_levels: CanonicalJsonObject,
    ) -> Self {
        Self {
            creator,
            create,
            creator_member,
            power_levels,
            canonical_alias: None,
            preset: None,
            state: Vec::new(),
            name: None,
            topic: None,
            members: Vec::new(),
            restore_power_levels: None,
        }
    }

    /// The create event and the events that follow it, in order.
    pub fn templates(self) -> Result<(Template, Vec<Template>)> {
        let creator = &self.creator;
        let create = Template::state(TimelineEventType::RoomCreate, "", creator, self.create);
        let mut then = vec![Template::typed(creator, creator.as_str(), &self.creator_member)?];
        then.push(Template::state(
            TimelineEventType::RoomPowerLevels,
            "",
            creator,
            self.power_levels,
        ));
        if let Some(alias) = self.canonical_alias {
            let mut content = RoomCanonicalAliasEventContent::new();
            content.alias = Some(alias);
            then.push(Template::typed(creator, "", &content)?);
        }
        if let Some(preset) = self.preset {
            let presets = [
                Template::typed(creator, "", &RoomJoinRulesEventContent::new(preset.join_rule))?,
                Template::typed(
                    creator,
                    "",
                    &RoomHistoryVisibilityEventContent::new(preset.history_visibility),
                )?,
                Template::typed(
                    creator,
                    "",
                    &RoomGuestAccessEventContent::new(preset.guest_access),
                )?,
            ];
            // The caller's own state of a preset's type replaces the preset's.
            then.extend(presets.into_iter().filter(|preset| {
                !self.state.iter().any(|(kind, key, _)| *kind == preset.kind && key.is_empty())
            }));
        }
        for (kind, state_key, content) in self.state {
            then.push(Template::state(kind, &state_key, creator, content));
        }
        if let Some(name) = self.name {
            then.push(Template::typed(creator, "", &RoomNameEventContent::new(name))?);
        }
        if let Some(topic) = &self.topic {
            then.push(Template::typed(creator, "", topic)?);
        }
        for (member, content) in &self.members {
            then.push(Template::typed(creator, member.as_str(), content)?);
        }
        if let Some(restore) = self.restore_power_levels {
            then.push(Template::state(TimelineEventType::RoomPowerLevels, "", creator, restore));
        }
        Ok((create, then))
    }
}

/// The create content of a new room of `version`: `extras` (what the client asked for, or what
/// an upgrade carries over) with the room version and, for versions that name one in the
/// content, the creator. A version that takes the creator from the sender gets no `creator`.
pub fn create_content(
    version: &RoomVersionId,
    rules: &AuthorizationRules,
    creator: &UserId,
    mut extras: CanonicalJsonObject,
) -> CanonicalJsonObject {
    extras.insert("room_version".to_owned(), CanonicalJsonValue::String(version.to_string()));
    if rules.use_room_create_sender {
        extras.remove("creator");
    } else {
        extras.insert("creator".to_owned(), CanonicalJsonValue::String(creator.to_string()));
    }
    extras
}

/// The power levels createRoom starts a room with: `users` at 100 for the creator and the
/// trusted invitees (`privileged`) unless the version makes creators implicit, and stricter
/// levels for the state events that change who the room is for.
pub fn room_power_levels(
    creator: &OwnedUserId,
    privileged: &[OwnedUserId],
    rules: &AuthorizationRules,
) -> CanonicalJsonObject {
    let mut levels = RoomPowerLevelsEventContent::new(rules);
    if !rules.explicitly_privilege_room_creators {
        for user in std::iter::once(creator).chain(privileged) {
            levels.users.insert(user.clone(), Int::from(100u8));
        }
    }
    levels.events = [
        (TimelineEventType::RoomName, 50u8),
        (TimelineEventType::RoomPowerLevels, 100),
        (TimelineEventType::RoomHistoryVisibility, 100),
        (TimelineEventType::RoomCanonicalAlias, 50),
        (TimelineEventType::RoomAvatar, 50),
        (TimelineEventType::RoomTombstone, 100),
        (TimelineEventType::RoomServerAcl, 100),
        (TimelineEventType::RoomEncryption, 100),
    ]
    .into_iter()
    .map(|(kind, level)| (kind, Int::from(level)))
    .collect();
    explicit_levels(&levels)
}

#[cfg(test)]
mod tests {
    use ruma::{
        events::room::{member::MembershipState, topic::TopicContentBlock},
        owned_room_alias_id, owned_user_id,
    };
    use serde_json::json;

    use super::*;

    fn rules(version: RoomVersionId) -> AuthorizationRules {
        version.rules().expect("known version").authorization
    }

    fn json(object: &CanonicalJsonObject) -> serde_json::Value {
        serde_json::to_value(object).expect("serializes")
    }

    fn kinds(then: &[Template]) -> Vec<String> {
        then.iter()
            .map(|template| {
                format!("{} {}", template.kind, template.state_key.as_deref().unwrap_or(""))
            })
            .collect()
    }

    #[test]
    fn create_room_levels_keep_every_key_of_today() {
        let creator = owned_user_id!("@c:x");
        let invitee = owned_user_id!("@i:x");
        let levels = room_power_levels(&creator, &[invitee], &rules(RoomVersionId::V11));
        assert_eq!(
            json(&levels),
            json!({
                "users": { "@c:x": 100, "@i:x": 100 },
                "users_default": 0,
                "events": {
                    "m.room.name": 50,
                    "m.room.power_levels": 100,
                    "m.room.history_visibility": 100,
                    "m.room.canonical_alias": 50,
                    "m.room.avatar": 50,
                    "m.room.tombstone": 100,
                    "m.room.server_acl": 100,
                    "m.room.encryption": 100,
                },
                "events_default": 0,
                "state_default": 50,
                "ban": 50,
                "kick": 50,
                "redact": 50,
                "invite": 0,
                "notifications": { "room": 50 },
            })
        );
        let implicit = room_power_levels(&creator, &[], &rules(RoomVersionId::V12));
        assert_eq!(json(&implicit)["users"], json!({}));
        assert_eq!(json(&implicit)["events"]["m.room.tombstone"], json!(100));
    }

    #[test]
    fn the_creator_is_named_only_where_the_version_wants_it() {
        let creator = owned_user_id!("@c:x");
        let mut extras = CanonicalJsonObject::new();
        extras.insert("creator".to_owned(), CanonicalJsonValue::String("@evil:x".to_owned()));
        extras.insert("m.federate".to_owned(), CanonicalJsonValue::Bool(false));
        let v10 = create_content(
            &RoomVersionId::V10,
            &rules(RoomVersionId::V10),
            &creator,
            extras.clone(),
        );
        assert_eq!(
            json(&v10),
            json!({ "creator": "@c:x", "m.federate": false, "room_version": "10" })
        );
        let v11 = create_content(
            &RoomVersionId::V11,
            &rules(RoomVersionId::V11),
            &creator,
            extras.clone(),
        );
        assert_eq!(json(&v11), json!({ "m.federate": false, "room_version": "11" }));
        let v12 = create_content(&RoomVersionId::V12, &rules(RoomVersionId::V12), &creator, extras);
        assert_eq!(json(&v12), json!({ "m.federate": false, "room_version": "12" }));
    }

    #[test]
    fn events_come_in_one_order_and_own_state_replaces_the_preset() {
        let creator = owned_user_id!("@c:x");
        let mut state = InitialState::new(
            creator.clone(),
            CanonicalJsonObject::new(),
            RoomMemberEventContent::new(MembershipState::Join),
            CanonicalJsonObject::new(),
        );
        state.canonical_alias = Some(owned_room_alias_id!("#a:x"));
        state.preset = Some(Preset {
            join_rule: JoinRule::Public,
            history_visibility: HistoryVisibility::Shared,
            guest_access: GuestAccess::Forbidden,
        });
        state.state =
            vec![(TimelineEventType::RoomGuestAccess, String::new(), CanonicalJsonObject::new())];
        state.name = Some("N".to_owned());
        state.topic = Some(RoomTopicEventContent::new("T".to_owned()));
        state.members =
            vec![(owned_user_id!("@i:x"), RoomMemberEventContent::new(MembershipState::Invite))];
        state.restore_power_levels = Some(CanonicalJsonObject::new());
        let (create, then) = state.templates().expect("builds");
        assert_eq!(create.kind, TimelineEventType::RoomCreate);
        assert_eq!(
            kinds(&then),
            [
                "m.room.member @c:x",
                "m.room.power_levels ",
                "m.room.canonical_alias ",
                "m.room.join_rules ",
                "m.room.history_visibility ",
                "m.room.guest_access ",
                "m.room.name ",
                "m.room.topic ",
                "m.room.member @i:x",
                "m.room.power_levels ",
            ]
        );
        assert_eq!(json(&then[3].content), json!({ "join_rule": "public" }));
        assert_eq!(
            json(&then[5].content),
            json!({}),
            "the caller's guest access, not the preset's"
        );
        assert_eq!(
            json(&then[7].content),
            json!({ "topic": "T", "m.topic": { "m.text": [{ "body": "T" }] } })
        );
        let mut plain = RoomTopicEventContent::new("T".to_owned());
        plain.topic_block = TopicContentBlock::default();
        let template = Template::typed(&creator, "", &plain).expect("builds");
        assert_eq!(json(&template.content), json!({ "topic": "T" }));
    }
}
