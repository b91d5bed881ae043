//! `POST /createRoom`: the initial events in the order the spec gives, presets, overrides,
//! an alias, invites and directory visibility, committed atomically by the new room's actor.

use std::sync::Arc;

use axum::http::StatusCode;
use ruma::{
    CanonicalJsonObject, OwnedUserId,
    api::{
        client::room::{Visibility, create_room::v3 as create_room},
        error::ErrorKind,
    },
    events::{
        TimelineEventType,
        room::{
            guest_access::GuestAccess, history_visibility::HistoryVisibility, join_rules::JoinRule,
            member::MembershipState, topic::RoomTopicEventContent,
        },
    },
};
use serde_json::{Value as JsonValue, json};

use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    http::{
        client::capabilities::CREATABLE_ROOM_VERSIONS,
        ruma::{Ruma, route},
        validate,
    },
    rooms::{
        initial_state::{InitialState, Preset, create_content, room_power_levels},
        pdu::canonical_content,
    },
    storage::Batch,
};

/// The spec's room visibilities (createRoom and the room directory).
const VISIBILITIES: &[&str] = &["public", "private"];

/// The spec's room presets.
const PRESETS: &[&str] = &["private_chat", "public_chat", "trusted_private_chat"];

pub(super) fn routes(router: Routes) -> Routes {
    route(router, create)
}

fn object(value: JsonValue) -> Result<CanonicalJsonObject> {
    canonical_content(value)
}

fn alias_in_use() -> Error {
    Error::matrix(StatusCode::BAD_REQUEST, ErrorKind::RoomInUse, "Room alias already taken.")
}

async fn create(
    services: Arc<Services>,
    request: Ruma<create_room::Request>,
) -> Result<create_room::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let creator = sender.user_id.clone();
    validate::known_value("visibility", body.visibility.as_str(), VISIBILITIES)?;
    if let Some(preset) = &body.preset {
        validate::known_value("preset", preset.as_str(), PRESETS)?;
    }
    if !services.config.allow_room_creation && !services.accounts.is_admin(&creator) {
        return Err(Error::forbidden("Room creation is disabled on this server."));
    }
    let version =
        body.room_version.clone().unwrap_or_else(|| services.config.default_room_version.clone());
    if !CREATABLE_ROOM_VERSIONS.contains(&version) {
        return Err(Error::matrix(
            StatusCode::BAD_REQUEST,
            ErrorKind::UnsupportedRoomVersion,
            format!("This server creates rooms of versions 10, 11 and 12, not {version}."),
        ));
    }
    let rules = version.rules().ok_or_else(|| Error::internal("rules of a creatable version"))?;
    let creators_are_implicit = rules.authorization.explicitly_privilege_room_creators;

    for invitee in &body.invite {
        if invitee.server_name() != services.config.server_name {
            return Err(Error::forbidden(
                "Inviting users of other servers needs federation, which this server does not offer yet.",
            ));
        }
        if services.accounts.record(invitee)?.is_none_or(|record| record.deactivated) {
            return Err(Error::invalid_param(format!("Cannot invite {invitee}: no such user.")));
        }
    }

    let aliases = &services.rooms.aliases;
    let alias =
        body.room_alias_name.as_deref().map(|name| aliases.validate_local(name)).transpose()?;
    let alias_lock = aliases.lock().await;
    if let Some(alias) = &alias
        && aliases.is_taken(alias)?
    {
        return Err(alias_in_use());
    }

    let preset = body.preset.clone().unwrap_or(match body.visibility {
        Visibility::Public => create_room::RoomPreset::PublicChat,
        _ => create_room::RoomPreset::PrivateChat,
    });
    let trusted = preset == create_room::RoomPreset::TrustedPrivateChat;

    // m.room.create: the client's extras with the fields this server decides.
    let mut extras = match &body.creation_content {
        Some(raw) => {
            serde_json::from_str::<serde_json::Map<String, JsonValue>>(raw.json().get())
                .map_err(|error| Error::bad_json(format!("Invalid creation_content: {error}")))?
        }
        None => serde_json::Map::new(),
    };
    if creators_are_implicit && trusted {
        let mut additional: Vec<JsonValue> = extras
            .get("additional_creators")
            .and_then(JsonValue::as_array)
            .cloned()
            .unwrap_or_default();
        additional.extend(body.invite.iter().map(|user| json!(user)));
        extras.insert("additional_creators".to_owned(), JsonValue::Array(additional));
    } else if !creators_are_implicit {
        extras.remove("additional_creators");
    }
    let create = create_content(
        &version,
        &rules.authorization,
        &creator,
        object(JsonValue::Object(extras))?,
    );

    let privileged: &[OwnedUserId] = if trusted { &body.invite } else { &[] };
    let mut power_levels =
        serde_json::to_value(room_power_levels(&creator, privileged, &rules.authorization))?;
    if let Some(raw) = &body.power_level_content_override {
        let overrides: serde_json::Map<String, JsonValue> = serde_json::from_str(raw.json().get())
            .map_err(|error| {
                Error::bad_json(format!("Invalid power_level_content_override: {error}"))
            })?;
        if let Some(levels) = power_levels.as_object_mut() {
            for (key, value) in overrides {
                levels.insert(key, value);
            }
        }
    }
    let creator_member = services.rooms.member_content(&creator, MembershipState::Join, None)?;
    let mut state =
        InitialState::new(creator.clone(), create, creator_member, object(power_levels)?);
    state.canonical_alias = alias.clone();
    let (join_rule, guest_access) = match preset {
        create_room::RoomPreset::PublicChat => (JoinRule::Public, GuestAccess::Forbidden),
        _ => (JoinRule::Invite, GuestAccess::CanJoin),
    };
    state.preset =
        Some(Preset { join_rule, history_visibility: HistoryVisibility::Shared, guest_access });
    for raw in &body.initial_state {
        let event: serde_json::Map<String, JsonValue> = serde_json::from_str(raw.json().get())
            .map_err(|error| Error::bad_json(format!("Invalid initial_state event: {error}")))?;
        let kind = event
            .get("type")
            .and_then(JsonValue::as_str)
            .ok_or_else(|| Error::bad_json("initial_state event without type"))?;
        if matches!(kind, "m.room.create" | "m.room.member") {
            return Err(Error::invalid_param(format!(
                "initial_state cannot contain {kind} events."
            )));
        }
        let state_key =
            event.get("state_key").and_then(JsonValue::as_str).unwrap_or_default().to_owned();
        let content = event.get("content").cloned().unwrap_or_else(|| json!({}));
        state.state.push((TimelineEventType::from(kind), state_key, object(content)?));
    }
    state.name = body.name.clone();
    state.topic = body.topic.clone().map(RoomTopicEventContent::new);
    for invitee in &body.invite {
        let mut content = services.rooms.member_content(invitee, MembershipState::Invite, None)?;
        if body.is_direct {
            content.is_direct = Some(true);
        }
        state.members.push((invitee.clone(), content));
    }
    let (create, then) = state.templates()?;

    let version_name = version.to_string();
    let (room_id, _) = services.rooms.create(version, create, then).await?;

    let mut batch = Batch::new();
    if let Some(alias) = &alias {
        aliases.put(&alias_lock, &mut batch, alias, &room_id, &creator);
    }
    if body.visibility == Visibility::Public {
        aliases.publish(&alias_lock, &mut batch, &room_id, true);
    }
    aliases.commit(&alias_lock, batch).await?;
    tracing::info!(room = %room_id, %creator, version = %version_name, "created a room");
    Ok(create_room::Response::new(room_id))
}
