//! Upgrading a room (the spec's server behaviour for `/upgrade`): check the power to send
//! `m.room.tombstone`, create the replacement with a `predecessor`, copy the transferable
//! state, move the local aliases (and the directory listing), tombstone the old room and stop
//! conversation there.

use ruma::{
    CanonicalJsonObject, Int, OwnedRoomId, OwnedUserId, RoomId, RoomVersionId, UserId,
    events::{
        StateEventType, TimelineEventType,
        room::{
            canonical_alias::RoomCanonicalAliasEventContent,
            create::{PreviousRoom, RoomCreateEventContent},
            member::MembershipState,
            power_levels::{PowerLevelAction, UserPowerLevel},
            tombstone::RoomTombstoneEventContent,
        },
    },
    room::RoomType,
    room_version_rules::AuthorizationRules,
};
use serde_json::Value as JsonValue;

use super::{
    Rooms,
    builder::{Template, canonical},
    create::creatable_rules,
    initial_state::{InitialState, create_content},
    pdu::canonical_content,
    power_levels::{Powers, explicit_levels},
    state,
};
use crate::{Error, Result, storage::Batch};

/// State copied to the replacement room (besides the power levels), in sending order.
const COPIED_STATE: [&str; 8] = [
    "m.room.join_rules",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.name",
    "m.room.topic",
    "m.room.avatar",
    "m.room.encryption",
    "m.room.server_acl",
];

/// The power levels content of the replacement room and the events it starts with, before
/// and after the copied state: the upgrader may need a temporary raise to send that state in
/// a room version without privileged creators.
struct Levels {
    initial: CanonicalJsonObject,
    restore: Option<CanonicalJsonObject>,
}

fn new_room_levels(
    old: &Powers,
    upgrader: &OwnedUserId,
    additional: &[OwnedUserId],
    rules: &AuthorizationRules,
    sent_kinds: &[StateEventType],
    bans: bool,
) -> Levels {
    let mut levels = old.content();
    let privileged = rules.explicitly_privilege_room_creators;
    if privileged {
        // Creators hold unlimited power that power levels may not mention.
        levels.users.remove(upgrader);
        for creator in additional {
            levels.users.remove(creator);
        }
    } else if old.for_user(upgrader) == UserPowerLevel::Infinite || !old.has_event() {
        // A creator of the old room (or of a room without power levels): 100 is the most a
        // room of the new version expresses.
        levels.users.insert(upgrader.clone(), Int::from(100u8));
    }
    if privileged {
        return Levels { initial: explicit_levels(&levels), restore: None };
    }
    let target = Powers::from_content(rules, Vec::new(), Some(levels.clone()));
    let own = target.for_user(upgrader);
    let mut needed = sent_kinds
        .iter()
        .map(|kind| target.for_state(kind))
        .chain([target.for_state(&StateEventType::RoomPowerLevels)])
        .max()
        .unwrap_or_default();
    if bans {
        needed = needed.max(target.for_action(PowerLevelAction::Ban));
    }
    if own >= needed {
        return Levels { initial: explicit_levels(&levels), restore: None };
    }
    let mut raised = levels.clone();
    raised.users.insert(upgrader.clone(), needed);
    Levels { initial: explicit_levels(&raised), restore: Some(explicit_levels(&levels)) }
}

/// Sends a state event whose failure should not undo an upgrade that already happened.
async fn send_best_effort(rooms: &Rooms, room_id: &RoomId, template: Template, what: &str) {
    if let Err(error) = rooms.send(room_id, template, None).await {
        tracing::warn!(room = %room_id, %error, "room upgrade: could not {what}");
    }
}

/// Stops conversation in the old room: `events_default` and `invite` rise to the greater of
/// 50 and `users_default + 1`.
async fn restrict_old_room(rooms: &Rooms, room_id: &RoomId, user: &OwnedUserId) -> Result<()> {
    let storage = rooms.storage();
    let record = super::require_room(storage, room_id)?;
    let powers =
        Powers::load(storage, &record.version, super::current_snapshot(storage, &record)?)?;
    if !powers.has_event() {
        return Ok(());
    }
    let mut levels = powers.content();
    let restricted = levels.users_default.saturating_add(Int::from(1u8)).max(Int::from(50u8));
    let mut changed = false;
    for field in [&mut levels.events_default, &mut levels.invite] {
        if *field < restricted {
            *field = restricted;
            changed = true;
        }
    }
    if changed {
        let template =
            Template::state(TimelineEventType::RoomPowerLevels, "", user, explicit_levels(&levels));
        send_best_effort(rooms, room_id, template, "restrict the old room's power levels").await;
    }
    Ok(())
}

impl Rooms {
    /// Replaces `old_room` by a new room of `version` on behalf of `user`, who must be joined
    /// to it and may send `m.room.tombstone` there. `additional_creators` (for versions with
    /// privileged creators) become creators of the new room too.
    pub async fn upgrade_room(
        &self,
        user: &UserId,
        old_room: &RoomId,
        version: RoomVersionId,
        additional_creators: &[OwnedUserId],
    ) -> Result<OwnedRoomId> {
        let user = user.to_owned();
        let old_room = old_room.to_owned();
        let rules = creatable_rules(&version)?;
        let privileged = rules.authorization.explicitly_privilege_room_creators;
        let mut additional: Vec<OwnedUserId> = Vec::new();
        if privileged {
            for creator in additional_creators {
                if creator.is_historical() {
                    return Err(Error::invalid_param(format!(
                        "{creator} is not a valid user id for room version {version}."
                    )));
                }
                if *creator != user && !additional.contains(creator) {
                    additional.push(creator.clone());
                }
            }
        }

        let storage = self.storage();
        let record = super::require_room(storage, &old_room)
            .map_err(|_| Error::forbidden("You are not a member of this room."))?;
        if !super::is_joined(storage.engine(), &old_room, &user)? {
            return Err(Error::forbidden("You are not a member of this room."));
        }
        // One upgrade (and alias change) at a time: the aliases move as one step.
        let aliases = &self.aliases;
        let alias_lock = aliases.lock().await;
        let heads = super::heads(storage.engine(), record.short)?
            .ok_or_else(|| Error::internal("room without a head"))?;
        let snapshot = super::current_snapshot(storage, &record)?;
        let powers = Powers::load(storage, &record.version, snapshot)?;
        if !powers.may_send_state(&user, &StateEventType::RoomTombstone) {
            return Err(Error::forbidden(
                "You need the power to send m.room.tombstone to upgrade this room.",
            ));
        }
        let current =
            |kind: &str, state_key: &str| super::state_event(storage, snapshot, kind, state_key);
        let old_create = current("m.room.create", "")?
            .ok_or_else(|| Error::internal("room without a create event"))?;
        // Its room type and federation flag carry over; unreadable, they are the defaults.
        let old_create =
            old_create.content_as::<RoomCreateEventContent>().unwrap_or_else(|error| {
                tracing::warn!(room = %old_room, %error, "unreadable create event content");
                RoomCreateEventContent::new_v11()
            });

        // m.room.create of the replacement.
        let mut predecessor = PreviousRoom::new(old_room.clone());
        #[allow(deprecated)] // Servers should still send it; clients must not rely on it.
        {
            predecessor.event_id = heads.extremities.last().cloned();
        }
        let mut create = RoomCreateEventContent::new_v11();
        create.predecessor = Some(predecessor);
        create.room_type = old_create.room_type.clone();
        create.federate = old_create.federate;
        create.additional_creators = additional.clone();
        let create = create_content(&version, &rules.authorization, &user, canonical(&create)?);

        // The transferable state: the recommended events, a space's children, and bans.
        let is_space = old_create.room_type == Some(RoomType::Space);
        let mut copied: Vec<(String, String, JsonValue)> = Vec::new();
        for kind in COPIED_STATE {
            if let Some(pdu) = current(kind, "")? {
                copied.push((kind.to_owned(), String::new(), pdu.content_value()));
            }
        }
        let mut bans = Vec::new();
        for (key, short) in state::load(storage, snapshot)? {
            let Some((kind, state_key)) = state::resolve_key(storage, key)? else { continue };
            let wanted = (is_space && kind == "m.space.child") || kind == "m.room.member";
            if !wanted {
                continue;
            }
            let Some(pdu) = super::pdu(storage.engine(), short)? else { continue };
            if kind == "m.room.member" {
                if super::content::membership(&pdu) == Some(MembershipState::Ban)
                    && state_key != user.as_str()
                {
                    bans.push((state_key, pdu.content_str("reason")));
                }
            } else {
                copied.push((kind, state_key, pdu.content_value()));
            }
        }
        let sent_kinds: Vec<StateEventType> =
            copied.iter().map(|(kind, _, _)| StateEventType::from(kind.as_str())).collect();
        let levels = new_room_levels(
            &powers,
            &user,
            &additional,
            &rules.authorization,
            &sent_kinds,
            !bans.is_empty(),
        );

        let member = self.member_content(&user, MembershipState::Join, None)?;
        let mut state = InitialState::new(user.clone(), create, member, levels.initial);
        for (kind, state_key, content) in copied {
            state.state.push((
                TimelineEventType::from(kind),
                state_key,
                canonical_content(content)?,
            ));
        }
        for (banned, reason) in &bans {
            let Ok(banned) = UserId::parse(banned.as_str()) else { continue };
            let ban = self.member_content(&banned, MembershipState::Ban, reason.as_deref())?;
            state.members.push((banned, ban));
        }
        state.restore_power_levels = levels.restore;
        let (create, then) = state.templates()?;
        let (new_room, _) = self.create(version.clone(), create, then).await?;

        // Aliases follow the room; so does the canonical alias event.
        let mut batch = Batch::new();
        aliases.move_all(&alias_lock, &mut batch, &old_room, &new_room)?;
        aliases.commit(&alias_lock, batch).await?;
        let canonical_alias = current("m.room.canonical_alias", "")?
            .and_then(|event| event.content_as::<RoomCanonicalAliasEventContent>().ok())
            .filter(|content| content.alias.is_some() || !content.alt_aliases.is_empty());
        if let Some(content) = canonical_alias {
            let template = Template::typed(&user, "", &content)?;
            send_best_effort(self, &new_room, template, "copy the canonical alias").await;
            let template = Template::typed(&user, "", &RoomCanonicalAliasEventContent::new())?;
            send_best_effort(self, &old_room, template, "clear the old canonical alias").await;
        }

        let tombstone = Template::typed(
            &user,
            "",
            &RoomTombstoneEventContent::new(
                "This room has been replaced".to_owned(),
                new_room.clone(),
            ),
        )?;
        self.send(&old_room, tombstone, None).await?;
        restrict_old_room(self, &old_room, &user).await?;
        tracing::info!(old = %old_room, new = %new_room, %user, %version, "upgraded a room");
        Ok(new_room)
    }
}

#[cfg(test)]
mod tests {
    use ruma::{RoomVersionId, int, owned_user_id};
    use serde_json::json;

    use super::*;

    fn levels(content: JsonValue) -> Powers {
        let rules = RoomVersionId::V11.rules().expect("known version").authorization;
        let content = serde_json::from_value(content).expect("power levels content");
        Powers::from_content(&rules, Vec::new(), Some(content))
    }

    fn rules(version: RoomVersionId) -> AuthorizationRules {
        version.rules().expect("known version").authorization
    }

    fn json(levels: &CanonicalJsonObject) -> JsonValue {
        serde_json::to_value(levels).expect("serializes")
    }

    #[test]
    fn privileged_creators_leave_the_users_map() {
        let upgrader = owned_user_id!("@a:x");
        let extra = owned_user_id!("@b:x");
        let old = levels(json!({"users": {"@a:x": 100, "@b:x": 50, "@c:x": 20}}));
        let result =
            new_room_levels(&old, &upgrader, &[extra], &rules(RoomVersionId::V12), &[], false);
        assert_eq!(json(&result.initial)["users"], json!({"@c:x": 20}));
        assert!(result.restore.is_none());
    }

    #[test]
    fn unprivileged_upgraders_are_raised_while_copying_state() {
        let upgrader = owned_user_id!("@a:x");
        let old = levels(json!({
            "users": {"@a:x": 60},
            "events": {"m.room.server_acl": 100, "m.room.tombstone": 50},
            "state_default": 50,
        }));
        let kinds = vec![StateEventType::RoomServerAcl, StateEventType::RoomName];
        let v11 = rules(RoomVersionId::V11);
        let result = new_room_levels(&old, &upgrader, &[], &v11, &kinds, false);
        assert_eq!(json(&result.initial)["users"]["@a:x"], json!(100));
        assert_eq!(
            result.restore.as_ref().map(|levels| json(levels)["users"]["@a:x"].clone()),
            Some(json!(60))
        );

        let strong = levels(json!({"users": {"@a:x": 100}}));
        let result = new_room_levels(&strong, &upgrader, &[], &v11, &kinds, true);
        assert!(result.restore.is_none());
        assert_eq!(strong.for_user(&upgrader), int!(100));
    }
}
