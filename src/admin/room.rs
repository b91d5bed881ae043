//! The admin room `#admins:<server_name>`, run by the server user `@conduit:<server_name>`:
//! created at first start, joined by every server admin, and where messages starting with
//! `!admin` run admin commands whose output the server user posts back.

use std::sync::Arc;

use ruma::{
    CanonicalJsonObject, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId,
    events::{
        TimelineEventType,
        room::{
            guest_access::GuestAccess,
            history_visibility::HistoryVisibility,
            join_rules::JoinRule,
            member::{MembershipState, RoomMemberEventContent},
            message::RoomMessageEventContent,
            topic::{RoomTopicEventContent, TopicContentBlock},
        },
    },
};
use serde_json::json;

use crate::{
    Error, Result, Services,
    accounts::UserMessage,
    actors::{contain::contained, tasks},
    rooms::{
        builder::Template,
        initial_state::{InitialState, Preset, create_content},
        pdu::canonical_content,
    },
    storage::{Batch, meta::RECORDS, users::UserRecord},
};

const ADMIN_ROOM: &str = "admin_room_id";

/// The server user, `@<server_user_localpart>:<server_name>`.
pub fn server_user(services: &Services) -> Result<OwnedUserId> {
    UserId::parse_with_server_name(
        services.config.server_user_localpart.as_str(),
        &services.config.server_name,
    )
    .map_err(|error| Error::internal(format!("server user id: {error}")))
}

/// The admin room, once created.
pub fn admin_room(services: &Services) -> Result<Option<OwnedRoomId>> {
    Ok(RECORDS
        .get(services.storage.engine(), &ADMIN_ROOM.to_owned())?
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|id| RoomId::parse(id).ok()))
}

/// Creates the server user and the admin room on first start.
pub async fn ensure(services: &Arc<Services>) -> Result<OwnedRoomId> {
    if let Some(room) = admin_room(services)? {
        return Ok(room);
    }
    let server_user = server_user(services)?;
    if services.accounts.record(&server_user)?.is_none() {
        let record = UserRecord {
            password_hash: None,
            created_ms: services.time.now_ms(),
            guest: false,
            admin: true,
            deactivated: false,
        };
        let profile = vec![("displayname".to_owned(), json!("Server"))];
        services
            .accounts
            .call(&server_user, |reply| UserMessage::Create {
                record,
                profile,
                also: Batch::new(),
                reply,
            })
            .await?;
    }
    let alias = RoomAliasId::parse(format!("#admins:{}", services.config.server_name))
        .map_err(|error| Error::internal(format!("admin room alias: {error}")))?;
    let name = format!("{} Admin Room", services.config.server_name);
    let topic = "Manage this server: send `!admin --help` for the commands.";
    let version = services.config.default_room_version.clone();
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
    let (room_id, _) = services.rooms.create(version, create, then).await?;
    let aliases = &services.rooms.aliases;
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
    services: &Services,
    room_id: &RoomId,
    server_user: &UserId,
    user: &UserId,
    level: Option<i64>,
) -> Result<()> {
    let current =
        crate::rooms::current_state_event(&services.storage, room_id, "m.room.power_levels", "")?
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
    services.rooms.send(room_id, template, None).await.map(drop)
}

/// Brings an admin into the admin room with power level 100.
pub async fn join_admin(services: &Services, user: &UserId) -> Result<()> {
    let Some(room_id) = admin_room(services)? else {
        return Ok(());
    };
    let server_user = server_user(services)?;
    let rooms = &services.rooms;
    let membership = crate::rooms::membership(services.storage.engine(), &room_id, user)?
        .map(|record| record.membership);
    if membership != Some(MembershipState::Join) {
        if membership != Some(MembershipState::Invite) {
            rooms
                .send_membership(&room_id, &server_user, user, MembershipState::Invite, None)
                .await?;
        }
        rooms.send_membership(&room_id, user, user, MembershipState::Join, None).await?;
    }
    set_power(services, &room_id, &server_user, user, Some(100)).await
}

/// Removes a former admin from the admin room.
pub async fn remove_admin(services: &Services, user: &UserId) -> Result<()> {
    let Some(room_id) = admin_room(services)? else {
        return Ok(());
    };
    let server_user = server_user(services)?;
    set_power(services, &room_id, &server_user, user, None).await?;
    if crate::rooms::is_joined(services.storage.engine(), &room_id, user)? {
        services
            .rooms
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

/// Runs `!admin ...` sent by an admin in the admin room and posts the output as the server
/// user. Returns at once; the command runs in the background.
pub fn maybe_run(services: &Arc<Services>, room_id: &RoomId, sender: &UserId, body: &str) {
    let Some(command) = body.trim().strip_prefix("!admin") else {
        return;
    };
    let in_admin_room =
        admin_room(services).ok().flatten().is_some_and(|admin_room| admin_room == room_id);
    if !in_admin_room || !services.accounts.is_admin(sender) {
        return;
    }
    let command = command.trim().to_owned();
    let services = Arc::clone(services);
    let room_id = room_id.to_owned();
    tasks::spawn("admin_room_command", async move {
        let line = if command.is_empty() { "--help" } else { &command };
        // A command that panics is reported (logged and counted) and answered, so the admin
        // is not left waiting for output that never comes.
        let output = match contained(super::execute(&services, line)).await {
            Ok(Ok(output)) => output,
            Ok(Err(error)) => format!("Command failed: {error}"),
            Err(panic) => {
                tasks::report_panic("admin_room_command", &panic);
                "Command failed: it panicked; the server log has the details.".to_owned()
            }
        };
        let Ok(server_user) = server_user(&services) else { return };
        let notice = RoomMessageEventContent::notice_plain(output);
        let sent = match Template::message_typed(&server_user, &notice) {
            Ok(template) => services.rooms.send(&room_id, template, None).await.map(drop),
            Err(error) => Err(error),
        };
        if let Err(error) = sent {
            tracing::warn!(%error, "could not post admin command output");
        }
    });
}
