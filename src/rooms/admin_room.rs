//! The admin room `#admins:<server_name>`, run by the server user `@conduit:<server_name>`:
//! created at first start and joined by every server admin (at power level 100). Running the
//! `!admin` commands sent there is the admin front door's business.

use ruma::{
    CanonicalJsonObject, Int, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId,
    events::{
        TimelineEventType,
        room::{
            guest_access::GuestAccess,
            history_visibility::HistoryVisibility,
            join_rules::JoinRule,
            member::{MembershipState, RoomMemberEventContent},
            power_levels::RoomPowerLevelsEventContent,
            topic::{RoomTopicEventContent, TopicContentBlock},
        },
    },
    room_version_rules::AuthorizationRules,
};
use serde_json::json;

use super::{
    Rooms,
    builder::Template,
    initial_state::{InitialState, Preset, create_content},
    pdu::canonical_content,
    power_levels::explicit_levels,
};
use crate::{
    Config, Error, Result,
    accounts::Accounts,
    storage::{Batch, Storage, meta::RECORDS},
};

const ADMIN_ROOM: &str = "admin_room_id";

/// The server user, `@<server_user_localpart>:<server_name>`.
pub fn server_user(config: &Config) -> Result<OwnedUserId> {
    UserId::parse_with_server_name(config.server_user_localpart.as_str(), &config.server_name)
        .map_err(|error| Error::internal(format!("server user id: {error}")))
}

/// The admin room, once created.
pub fn id(storage: &Storage) -> Result<Option<OwnedRoomId>> {
    Ok(RECORDS
        .get(storage.engine(), &ADMIN_ROOM.to_owned())?
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|id| RoomId::parse(id).ok()))
}

/// Creates the server user and the admin room on first start.
pub async fn ensure(accounts: &Accounts, rooms: &Rooms, config: &Config) -> Result<OwnedRoomId> {
    if let Some(room) = id(rooms.storage())? {
        return Ok(room);
    }
    let server_user = server_user(config)?;
    accounts.ensure_server_user(&server_user).await?;
    let alias = RoomAliasId::parse(format!("#admins:{}", config.server_name))
        .map_err(|error| Error::internal(format!("admin room alias: {error}")))?;
    let name = format!("{} Admin Room", config.server_name);
    let topic = "Manage this server: send `!admin --help` for the commands.";
    let version = config.default_room_version.clone();
    let rules = version.rules().ok_or_else(|| Error::internal("admin room version rules"))?;
    let create =
        create_content(&version, &rules.authorization, &server_user, CanonicalJsonObject::new());
    let power_levels = admin_room_levels(&server_user, &rules.authorization);
    let mut member = RoomMemberEventContent::new(MembershipState::Join);
    member.displayname = Some("Server".to_owned());
    let mut state = InitialState::new(server_user.clone(), create, member, power_levels);
    state.canonical_alias = Some(alias.clone());
    state.preset = Some(Preset {
        join_rule: JoinRule::Invite,
        history_visibility: HistoryVisibility::Shared,
        guest_access: GuestAccess::Forbidden,
    });
    state.name = Some(name);
    // A plain topic, without the `m.topic` block createRoom writes.
    let mut topic = RoomTopicEventContent::new(topic.to_owned());
    topic.topic_block = TopicContentBlock::default();
    state.topic = Some(topic);
    let (create, then) = state.templates()?;
    let (room_id, _) = rooms.create(version, create, then).await?;
    let aliases = &rooms.aliases;
    let alias_lock = aliases.lock().await;
    let mut batch = Batch::new();
    aliases.put(&alias_lock, &mut batch, &alias, &room_id, &server_user);
    RECORDS.put(&mut batch, &ADMIN_ROOM.to_owned(), &room_id.to_string().into_bytes());
    aliases.commit(&alias_lock, batch).await?;
    tracing::info!(room = %room_id, %alias, "created the admin room");
    Ok(room_id)
}

/// Sets `user`'s power level in the admin room.
async fn set_power(
    rooms: &Rooms,
    room_id: &RoomId,
    server_user: &UserId,
    user: &UserId,
    level: Option<i64>,
) -> Result<()> {
    let current = super::current_state_event(rooms.storage(), room_id, "m.room.power_levels", "")?
        .ok_or_else(|| Error::internal("admin room without power levels"))?;
    let mut content = current.content_value();
    let Some(users) = content.get_mut("users").and_then(serde_json::Value::as_object_mut) else {
        return Err(Error::internal("admin room power levels without users"));
    };
    match level {
        Some(level) => users.insert(user.to_string(), json!(level)),
        None => users.remove(user.as_str()),
    };
    let template = Template::state(
        TimelineEventType::RoomPowerLevels,
        "",
        &server_user.to_owned(),
        canonical_content(content)?,
    );
    rooms.send(room_id, template, None).await.map(drop)
}

/// Brings an admin into the admin room with power level 100.
pub async fn join_admin(rooms: &Rooms, config: &Config, user: &UserId) -> Result<()> {
    let Some(room_id) = id(rooms.storage())? else {
        return Ok(());
    };
    let server_user = server_user(config)?;
    let membership = super::membership(rooms.storage().engine(), &room_id, user)?
        .map(|record| record.membership);
    if membership != Some(MembershipState::Join) {
        if membership != Some(MembershipState::Invite) {
            rooms
                .send_membership(&room_id, &server_user, user, MembershipState::Invite, None)
                .await?;
        }
        rooms.send_membership(&room_id, user, user, MembershipState::Join, None).await?;
    }
    set_power(rooms, &room_id, &server_user, user, Some(100)).await
}

/// Removes a former admin from the admin room.
pub async fn remove_admin(rooms: &Rooms, config: &Config, user: &UserId) -> Result<()> {
    let Some(room_id) = id(rooms.storage())? else {
        return Ok(());
    };
    let server_user = server_user(config)?;
    set_power(rooms, &room_id, &server_user, user, None).await?;
    if super::is_joined(rooms.storage().engine(), &room_id, user)? {
        rooms
            .send_membership(
                &room_id,
                &server_user,
                user,
                MembershipState::Leave,
                Some("No longer a server admin"),
            )
            .await?;
    }
    Ok(())
}

/// The admin room's own power levels: the spec's defaults with `invite` at 50 and the server
/// user at 100 (unless the version makes creators implicit), without `events` or
/// `notifications`, as it always had.
fn admin_room_levels(server_user: &OwnedUserId, rules: &AuthorizationRules) -> CanonicalJsonObject {
    let mut levels = RoomPowerLevelsEventContent::new(rules);
    levels.invite = Int::from(50u8);
    levels.events.clear();
    if !rules.explicitly_privilege_room_creators {
        levels.users.insert(server_user.clone(), Int::from(100u8));
    }
    let mut content = explicit_levels(&levels);
    content.remove("events");
    content.remove("notifications");
    content
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_room_keeps_its_own_power_levels() {
        let server_user = ruma::owned_user_id!("@conduit:x");
        let content = |version: ruma::RoomVersionId| {
            let rules = version.rules().expect("known version").authorization;
            serde_json::to_value(admin_room_levels(&server_user, &rules)).expect("serializes")
        };
        let base = |users: serde_json::Value| {
            serde_json::json!({ "users": users, "users_default": 0, "events_default": 0,
                "state_default": 50, "invite": 50, "kick": 50, "ban": 50, "redact": 50 })
        };
        assert_eq!(content(ruma::RoomVersionId::V11), base(serde_json::json!({"@conduit:x": 100})));
        assert_eq!(content(ruma::RoomVersionId::V12), base(serde_json::json!({})));
    }
}
