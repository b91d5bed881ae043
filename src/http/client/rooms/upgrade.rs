//! `POST /rooms/{roomId}/upgrade`: replaces a room by a new one of another version, as the
//! spec's server behaviour lists: check the power to send `m.room.tombstone`, create the
//! replacement with a `predecessor`, copy the transferable state, move the local aliases (and
//! the directory listing), tombstone the old room and stop conversation there.

use std::sync::Arc;

use axum::http::StatusCode;
use ruma::{
    OwnedRoomId, OwnedUserId, RoomId,
    api::{client::room::upgrade_room::v3 as upgrade_room, error::ErrorKind},
    events::TimelineEventType,
};
use serde_json::{Map, Value as JsonValue, json};

use super::{
    directory::{Powers, current_snapshot, json_int, room_aliases},
    member_content, require_room, send,
};
use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    http::{
        client::capabilities::CREATABLE_ROOM_VERSIONS,
        ruma::{Ruma, route},
    },
    rooms::{self, builder::Template, pdu::canonical_content, state},
    storage::{
        Batch,
        codec::Json,
        rooms::{ALIASES_TABLE, PUBLISHED_ROOMS_TABLE, ROOM_ALIASES_TABLE},
    },
};

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

pub(super) fn routes(router: Routes) -> Routes {
    route(router, upgrade)
}

fn object(value: JsonValue) -> Map<String, JsonValue> {
    match value {
        JsonValue::Object(object) => object,
        _ => Map::new(),
    }
}

/// The power levels content of the replacement room and the events it starts with, before
/// and after the copied state: the upgrader may need a temporary raise to send that state in
/// a room version without privileged creators.
struct Levels {
    initial: JsonValue,
    restore: Option<JsonValue>,
}

fn new_room_levels(
    old: &Powers,
    upgrader: &OwnedUserId,
    additional: &[OwnedUserId],
    privileged: bool,
    sent_kinds: &[String],
    bans: bool,
) -> Levels {
    let mut levels = object(old.content().cloned().unwrap_or_else(|| json!({})));
    let mut users = match levels.remove("users") {
        Some(JsonValue::Object(users)) => users,
        _ => Map::new(),
    };
    if privileged {
        // Creators hold unlimited power that power levels may not mention.
        users.remove(upgrader.as_str());
        for creator in additional {
            users.remove(creator.as_str());
        }
    } else if old.user(upgrader).is_none() || old.content().is_none() {
        // A creator of the old room (or of a room without power levels): 100 is the most a
        // room of the new version expresses.
        users.insert(upgrader.to_string(), json!(100));
    }
    levels.insert("users".to_owned(), JsonValue::Object(users));
    let levels = JsonValue::Object(levels);
    if privileged {
        return Levels { initial: levels, restore: None };
    }
    let target = Powers::with_levels(levels.clone());
    let own = target.user(upgrader).unwrap_or(i64::MAX);
    let mut needed = sent_kinds
        .iter()
        .map(|kind| target.state_level(kind))
        .chain([target.state_level("m.room.power_levels")])
        .max()
        .unwrap_or(0);
    if bans {
        needed = needed.max(target.field("ban", 50));
    }
    if own >= needed {
        return Levels { initial: levels, restore: None };
    }
    let mut raised = levels.clone();
    if let Some(users) = raised.get_mut("users").and_then(JsonValue::as_object_mut) {
        users.insert(upgrader.to_string(), json!(needed));
    }
    Levels { initial: raised, restore: Some(levels) }
}

/// Re-points the old room's local aliases and its directory listing to the new room.
async fn move_aliases(services: &Services, old: &RoomId, new: &OwnedRoomId) -> Result<()> {
    let engine = services.storage.engine();
    let mut batch = Batch::new();
    for alias in room_aliases(services, old)? {
        let key = alias.to_string();
        ROOM_ALIASES_TABLE.delete(&mut batch, &(old.to_string(), key.clone()));
        match ALIASES_TABLE.get(engine, &key)? {
            Some(Json(mut record)) if record.room_id == old => {
                record.room_id = new.clone();
                ALIASES_TABLE.put(&mut batch, &key, &Json(record));
                ROOM_ALIASES_TABLE.put(&mut batch, &(new.to_string(), key), &());
            }
            // A stale index row: the alias went elsewhere (or away) already.
            _ => {}
        }
    }
    if PUBLISHED_ROOMS_TABLE.contains(engine, &old.to_string())? {
        PUBLISHED_ROOMS_TABLE.delete(&mut batch, &old.to_string());
        PUBLISHED_ROOMS_TABLE.put(&mut batch, &new.to_string(), &());
    }
    if !batch.is_empty() {
        services.storage.writer().commit(batch).await?;
    }
    Ok(())
}

/// Sends a state event whose failure should not undo an upgrade that already happened.
async fn send_best_effort(services: &Services, room_id: &RoomId, template: Template, what: &str) {
    if let Err(error) = send(services, room_id, template, None).await {
        tracing::warn!(room = %room_id, %error, "room upgrade: could not {what}");
    }
}

/// Stops conversation in the old room: `events_default` and `invite` rise to the greater of
/// 50 and `users_default + 1`.
async fn restrict_old_room(
    services: &Services,
    room_id: &RoomId,
    user: &OwnedUserId,
) -> Result<()> {
    let record = require_room(services, room_id)?;
    let powers = Powers::current(services, &record)?;
    let Some(JsonValue::Object(mut levels)) = powers.content().cloned() else {
        return Ok(());
    };
    let users_default = levels.get("users_default").and_then(json_int).unwrap_or(0);
    let restricted = users_default.saturating_add(1).max(50);
    let mut changed = false;
    for field in ["events_default", "invite"] {
        if levels.get(field).and_then(json_int).unwrap_or(0) < restricted {
            levels.insert(field.to_owned(), json!(restricted));
            changed = true;
        }
    }
    if changed {
        let template = Template::state(
            TimelineEventType::RoomPowerLevels,
            "",
            user,
            canonical_content(JsonValue::Object(levels))?,
        );
        send_best_effort(services, room_id, template, "restrict the old room's power levels").await;
    }
    Ok(())
}

async fn upgrade(
    services: Arc<Services>,
    request: Ruma<upgrade_room::Request>,
) -> Result<upgrade_room::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let user = sender.user_id.clone();
    let old_room = body.room_id.clone();
    let version = body.new_version.clone();
    if !CREATABLE_ROOM_VERSIONS.contains(&version) {
        return Err(Error::matrix(
            StatusCode::BAD_REQUEST,
            ErrorKind::UnsupportedRoomVersion,
            format!("This server creates rooms of versions 10, 11 and 12, not {version}."),
        ));
    }
    let rules = version.rules().ok_or_else(|| Error::internal("rules of a creatable version"))?;
    let privileged = rules.authorization.explicitly_privilege_room_creators;
    let mut additional: Vec<OwnedUserId> = Vec::new();
    if privileged {
        for creator in &body.additional_creators {
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

    let record = require_room(&services, &old_room)
        .map_err(|_| Error::forbidden("You are not a member of this room."))?;
    if !rooms::is_joined(services.storage.engine(), &old_room, &user)? {
        return Err(Error::forbidden("You are not a member of this room."));
    }
    // One upgrade (and alias change) at a time: the aliases move as one step.
    let _aliases = services.rooms.aliases.lock().await;
    let heads = rooms::heads(services.storage.engine(), record.short)?
        .ok_or_else(|| Error::internal("room without a head"))?;
    let snapshot = current_snapshot(&services, &record)?;
    let powers = Powers::load(&services, &record, snapshot)?;
    if !powers.may_send_state(&user, "m.room.tombstone") {
        return Err(Error::forbidden(
            "You need the power to send m.room.tombstone to upgrade this room.",
        ));
    }
    let storage = &services.storage;
    let current =
        |kind: &str, state_key: &str| rooms::state_event(storage, snapshot, kind, state_key);
    let old_create = current("m.room.create", "")?
        .ok_or_else(|| Error::internal("room without a create event"))?
        .content_value();

    // m.room.create of the replacement.
    let mut create = Map::new();
    create.insert("room_version".to_owned(), json!(version.as_str()));
    let mut predecessor = Map::new();
    predecessor.insert("room_id".to_owned(), json!(old_room));
    if let Some(last) = heads.extremities.last() {
        predecessor.insert("event_id".to_owned(), json!(last));
    }
    create.insert("predecessor".to_owned(), JsonValue::Object(predecessor));
    for field in ["type", "m.federate"] {
        if let Some(value) = old_create.get(field) {
            create.insert(field.to_owned(), value.clone());
        }
    }
    if !rules.authorization.use_room_create_sender {
        create.insert("creator".to_owned(), json!(user));
    }
    if !additional.is_empty() {
        create.insert("additional_creators".to_owned(), json!(additional));
    }
    let create = Template::state(
        TimelineEventType::RoomCreate,
        "",
        &user,
        canonical_content(JsonValue::Object(create))?,
    );

    // The transferable state: the recommended events, a space's children, and bans.
    let is_space = old_create.get("type").and_then(JsonValue::as_str) == Some("m.space");
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
        let Some(pdu) = rooms::pdu(storage.engine(), short)? else { continue };
        if kind == "m.room.member" {
            if pdu.content_str("membership").as_deref() == Some("ban") && state_key != user.as_str()
            {
                bans.push((state_key, pdu.content_str("reason")));
            }
        } else {
            copied.push((kind, state_key, pdu.content_value()));
        }
    }
    let sent_kinds: Vec<String> = copied.iter().map(|(kind, _, _)| kind.clone()).collect();
    let levels =
        new_room_levels(&powers, &user, &additional, privileged, &sent_kinds, !bans.is_empty());

    let mut then = vec![Template::state(
        TimelineEventType::RoomMember,
        user.as_str(),
        &user,
        member_content(&services, &user, "join", None)?,
    )];
    then.push(Template::state(
        TimelineEventType::RoomPowerLevels,
        "",
        &user,
        canonical_content(levels.initial)?,
    ));
    for (kind, state_key, content) in copied {
        then.push(Template::state(
            TimelineEventType::from(kind),
            &state_key,
            &user,
            canonical_content(content)?,
        ));
    }
    for (banned, reason) in &bans {
        let Ok(banned) = ruma::UserId::parse(banned.as_str()) else { continue };
        then.push(Template::state(
            TimelineEventType::RoomMember,
            banned.as_str(),
            &user,
            member_content(&services, &banned, "ban", reason.as_deref())?,
        ));
    }
    if let Some(restore) = levels.restore {
        then.push(Template::state(
            TimelineEventType::RoomPowerLevels,
            "",
            &user,
            canonical_content(restore)?,
        ));
    }
    let (new_room, _) = services.rooms.create(version.clone(), create, then).await?;

    // Aliases follow the room; so does the canonical alias event.
    move_aliases(&services, &old_room, &new_room).await?;
    if let Some(canonical) = current("m.room.canonical_alias", "")? {
        let content = canonical.content_value();
        let names_aliases = content.get("alias").is_some_and(JsonValue::is_string)
            || content
                .get("alt_aliases")
                .and_then(JsonValue::as_array)
                .is_some_and(|alt| !alt.is_empty());
        if names_aliases {
            let template = Template::state(
                TimelineEventType::RoomCanonicalAlias,
                "",
                &user,
                canonical_content(content)?,
            );
            send_best_effort(&services, &new_room, template, "copy the canonical alias").await;
            let template = Template::state(
                TimelineEventType::RoomCanonicalAlias,
                "",
                &user,
                canonical_content(json!({}))?,
            );
            send_best_effort(&services, &old_room, template, "clear the old canonical alias").await;
        }
    }

    let tombstone = Template::state(
        TimelineEventType::RoomTombstone,
        "",
        &user,
        canonical_content(json!({
            "body": "This room has been replaced",
            "replacement_room": new_room,
        }))?,
    );
    send(&services, &old_room, tombstone, None).await?;
    restrict_old_room(&services, &old_room, &user).await?;
    tracing::info!(old = %old_room, new = %new_room, %user, %version, "upgraded a room");
    Ok(upgrade_room::Response::new(new_room))
}

#[cfg(test)]
mod tests {
    use ruma::owned_user_id;

    use super::*;

    fn levels(content: JsonValue) -> Powers {
        Powers::with_levels(content)
    }

    #[test]
    fn privileged_creators_leave_the_users_map() {
        let upgrader = owned_user_id!("@a:x");
        let extra = owned_user_id!("@b:x");
        let old = levels(json!({"users": {"@a:x": 100, "@b:x": 50, "@c:x": 20}}));
        let result = new_room_levels(&old, &upgrader, &[extra], true, &[], false);
        assert_eq!(result.initial["users"], json!({"@c:x": 20}));
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
        let kinds = vec!["m.room.server_acl".to_owned(), "m.room.name".to_owned()];
        let result = new_room_levels(&old, &upgrader, &[], false, &kinds, false);
        assert_eq!(result.initial["users"]["@a:x"], json!(100));
        assert_eq!(
            result.restore.as_ref().map(|levels| levels["users"]["@a:x"].clone()),
            Some(json!(60))
        );

        let strong = levels(json!({"users": {"@a:x": 100}}));
        let result = new_room_levels(&strong, &upgrader, &[], false, &kinds, true);
        assert!(result.restore.is_none());
    }
}
