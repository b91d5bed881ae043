//! The admin room `#admins:<server_name>`, run by the server user `@conduit:<server_name>`:
//! created at first start and joined by every server admin (at power level 100). Running the
//! `!admin` commands sent there is the admin front door's business.

use ruma::{
    CanonicalJsonObject, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId,
    events::{
        TimelineEventType,
        room::{
            guest_access::GuestAccess,
            history_visibility::HistoryVisibility,
            join_rules::JoinRule,
            member::{MembershipState, RoomMemberEventContent},
            topic::{RoomTopicEventContent, TopicContentBlock},
        },
    },
};
use serde_json::json;

use super::{
    Rooms,
    builder::Template,
    initial_state::{InitialState, Preset, create_content},
    pdu::canonical_content,
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
    let mut users = serde_json::Map::new();
    if !rules.authorization.explicitly_privilege_room_creators {
        users.insert(server_user.to_string(), json!(100));
    }
    // The admin room's own levels (invite 50, no `events` or `notifications`), as it always had.
    let power_levels = canonical_content(
        json!({ "users": users, "users_default": 0, "events_default": 0, "state_default": 50, "invite": 50, "kick": 50, "ban": 50, "redact": 50 }),
    )?;
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
