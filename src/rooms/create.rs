//! Creating a room on behalf of a user (createRoom): the room versions this server creates,
//! the checks a new room must pass, its initial state from the preset, the creator's extras,
//! overrides and invites, and its alias and directory listing, written once the room's
//! actor has committed the initial events.

use axum::http::StatusCode;
use ruma::{
    CanonicalJsonObject, OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomVersionId,
    api::{
        client::room::create_room::{
            RoomPowerLevelsContentOverride,
            v3::{CreationContent, RoomPreset},
        },
        error::ErrorKind,
    },
    events::{
        AnyInitialStateEvent, TimelineEventType,
        room::{
            guest_access::GuestAccess, history_visibility::HistoryVisibility, join_rules::JoinRule,
            member::MembershipState, topic::RoomTopicEventContent,
        },
    },
    room_version_rules::RoomVersionRules,
    serde::Raw,
};
use serde_json::{Value as JsonValue, json};

use super::{
    Rooms,
    initial_state::{InitialState, Preset, create_content, room_power_levels},
    pdu::canonical_content,
};
use crate::{Error, Result, accounts::Accounts, storage::Batch};

/// Room versions this server creates rooms in (new rooms and upgrades).
pub const CREATABLE_ROOM_VERSIONS: [RoomVersionId; 3] =
    [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12];

/// The rules of `version`, when this server creates rooms of it; `M_UNSUPPORTED_ROOM_VERSION`
/// otherwise.
pub fn creatable_rules(version: &RoomVersionId) -> Result<RoomVersionRules> {
    if !CREATABLE_ROOM_VERSIONS.contains(version) {
        return Err(Error::matrix(
            StatusCode::BAD_REQUEST,
            ErrorKind::UnsupportedRoomVersion,
            format!("This server creates rooms of versions 10, 11 and 12, not {version}."),
        ));
    }
    version.rules().ok_or_else(|| Error::internal("rules of a creatable version"))
}

/// What a user asks a new room to be. The JSON parts stay as the client sent them until
/// [`Rooms::create_room`] reads them, so a bad one is reported in the same order as the
/// other checks.
#[derive(Debug)]
pub struct NewRoom {
    pub creator: OwnedUserId,
    pub version: RoomVersionId,
    pub preset: RoomPreset,
    /// Whether the room is listed in the published room directory.
    pub publish: bool,
    /// The localpart of a local alias to give the room.
    pub alias_name: Option<String>,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub invite: Vec<OwnedUserId>,
    pub is_direct: bool,
    pub creation_content: Option<Raw<CreationContent>>,
    pub power_level_content_override: Option<Raw<RoomPowerLevelsContentOverride>>,
    pub initial_state: Vec<Raw<AnyInitialStateEvent>>,
}

fn object(value: JsonValue) -> Result<CanonicalJsonObject> {
    canonical_content(value)
}

fn alias_in_use() -> Error {
    Error::matrix(StatusCode::BAD_REQUEST, ErrorKind::RoomInUse, "Room alias already taken.")
}

impl Rooms {
    /// Creates a room as `room.creator` asks: its initial events in the order the spec
    /// gives, committed atomically by the new room's actor, then its alias and listing.
    /// Invitees must be existing local accounts (`accounts` says which).
    pub async fn create_room(&self, accounts: &Accounts, room: NewRoom) -> Result<OwnedRoomId> {
        let creator = &room.creator;
        let version = room.version;
        let rules = creatable_rules(&version)?;
        let creators_are_implicit = rules.authorization.explicitly_privilege_room_creators;

        for invitee in &room.invite {
            if invitee.server_name() != self.server_name {
                return Err(Error::forbidden(
                    "Inviting users of other servers needs federation, which this server does not offer yet.",
                ));
            }
            if accounts.record(invitee)?.is_none_or(|record| record.deactivated) {
                return Err(Error::invalid_param(format!(
                    "Cannot invite {invitee}: no such user."
                )));
            }
        }

        let aliases = &self.aliases;
        let alias: Option<OwnedRoomAliasId> =
            room.alias_name.as_deref().map(|name| aliases.validate_local(name)).transpose()?;
        let alias_lock = aliases.lock().await;
        if let Some(alias) = &alias
            && aliases.is_taken(alias)?
        {
            return Err(alias_in_use());
        }

        let trusted = room.preset == RoomPreset::TrustedPrivateChat;

        // m.room.create: the client's extras with the fields this server decides.
        let mut extras = match &room.creation_content {
            Some(raw) => {
                serde_json::from_str::<serde_json::Map<String, JsonValue>>(raw.json().get())
                    .map_err(|error| {
                        Error::bad_json(format!("Invalid creation_content: {error}"))
                    })?
            }
            None => serde_json::Map::new(),
        };
        if creators_are_implicit && trusted {
            let mut additional: Vec<JsonValue> = extras
                .get("additional_creators")
                .and_then(JsonValue::as_array)
                .cloned()
                .unwrap_or_default();
            additional.extend(room.invite.iter().map(|user| json!(user)));
            extras.insert("additional_creators".to_owned(), JsonValue::Array(additional));
        } else if !creators_are_implicit {
            extras.remove("additional_creators");
        }
        let create = create_content(
            &version,
            &rules.authorization,
            creator,
            object(JsonValue::Object(extras))?,
        );

        let privileged: &[OwnedUserId] = if trusted { &room.invite } else { &[] };
        let mut power_levels =
            serde_json::to_value(room_power_levels(creator, privileged, &rules.authorization))?;
        if let Some(raw) = &room.power_level_content_override {
            let overrides: serde_json::Map<String, JsonValue> =
                serde_json::from_str(raw.json().get()).map_err(|error| {
                    Error::bad_json(format!("Invalid power_level_content_override: {error}"))
                })?;
            if let Some(levels) = power_levels.as_object_mut() {
                for (key, value) in overrides {
                    levels.insert(key, value);
                }
            }
        }
        let creator_member = self.member_content(creator, MembershipState::Join, None)?;
        let mut state =
            InitialState::new(creator.clone(), create, creator_member, object(power_levels)?);
        state.canonical_alias = alias.clone();
        let (join_rule, guest_access) = match room.preset {
            RoomPreset::PublicChat => (JoinRule::Public, GuestAccess::Forbidden),
            _ => (JoinRule::Invite, GuestAccess::CanJoin),
        };
        state.preset =
            Some(Preset { join_rule, history_visibility: HistoryVisibility::Shared, guest_access });
        for raw in &room.initial_state {
            let event: serde_json::Map<String, JsonValue> = serde_json::from_str(raw.json().get())
                .map_err(|error| {
                    Error::bad_json(format!("Invalid initial_state event: {error}"))
                })?;
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
        state.name = room.name;
        state.topic = room.topic.map(RoomTopicEventContent::new);
        for invitee in &room.invite {
            let mut content = self.member_content(invitee, MembershipState::Invite, None)?;
            if room.is_direct {
                content.is_direct = Some(true);
            }
            state.members.push((invitee.clone(), content));
        }
        let (create, then) = state.templates()?;

        let version_name = version.to_string();
        let (room_id, _) = self.create(version, create, then).await?;

        let mut batch = Batch::new();
        if let Some(alias) = &alias {
            aliases.put(&alias_lock, &mut batch, alias, &room_id, creator);
        }
        if room.publish {
            aliases.publish(&alias_lock, &mut batch, &room_id, true);
        }
        aliases.commit(&alias_lock, batch).await?;
        tracing::info!(room = %room_id, %creator, version = %version_name, "created a room");
        Ok(room_id)
    }
}
