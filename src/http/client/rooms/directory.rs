//! The room directory: local aliases (`/directory/room/{alias}`, `/rooms/{id}/aliases`),
//! a room's visibility in the published room directory, and that directory itself
//! (`/publicRooms`). Also the room summaries and power-level checks the space hierarchy and
//! room upgrades share.
//!
//! Alias and publication rows are global (not one room's data), so they are written here, in
//! one batch, while holding the server's alias lock.

use std::{ops::ControlFlow, sync::Arc};

use axum::http::StatusCode;
use ruma::{
    EventEncryptionAlgorithm, OwnedMxcUri, OwnedRoomAliasId, OwnedRoomId, OwnedServerName,
    OwnedUserId, RoomAliasId, RoomId, RoomVersionId, UInt, UserId,
    api::{
        client::{
            alias::{create_alias, delete_alias, get_alias},
            directory::{
                get_public_rooms, get_public_rooms_filtered, get_room_visibility,
                set_room_visibility,
            },
            room::{Visibility, aliases},
        },
        error::ErrorKind,
        federation::query::get_room_information,
    },
    directory::{Filter, PublicRoomsChunk, PublicRoomsChunkInit, RoomNetwork},
    events::TimelineEventType,
    room::{JoinRuleKind, JoinRuleSummary, RestrictedSummary, RoomSummary, RoomType},
};
use serde_json::Value as JsonValue;

use super::{create::local_alias, require_room, send};
use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    http::ruma::{Ruma, route},
    limits,
    rooms::{self, builder::Template, pdu::canonical_content, timeline},
    storage::{
        Batch, Direction,
        codec::{Json, prefix},
        rooms::{
            ALIASES_TABLE, AliasRecord, PUBLISHED_ROOMS_TABLE, ROOM_ALIASES_TABLE, RoomRecord,
        },
    },
};

/// Most rooms one `/publicRooms` page returns (also the page size when none is asked for).
const MAX_PUBLIC_ROOMS_PAGE: usize = 500;

pub(super) fn routes(router: Routes) -> Routes {
    let router = route(router, put_alias);
    let router = route(router, get_room_alias);
    let router = route(router, remove_alias);
    let router = route(router, local_aliases);
    let router = route(router, get_visibility);
    let router = route(router, set_visibility);
    let router = route(router, public_rooms);
    route(router, public_rooms_filtered)
}

// ---------------------------------------------------------------------------------------------
// Power levels

/// An integer power level field (numeric strings appear in rooms of old versions).
pub(super) fn json_int(value: &JsonValue) -> Option<i64> {
    value.as_i64().or_else(|| value.as_str().and_then(|text| text.trim().parse().ok()))
}

/// The power levels of a room at one state snapshot, as permission checks need them.
pub(super) struct Powers {
    /// Users with unlimited power (the creators of a room whose version privileges them).
    creators: Vec<OwnedUserId>,
    /// The sender of the create event (power 100 while the room has no power levels).
    create_sender: Option<OwnedUserId>,
    /// The content of `m.room.power_levels`, if the room has one.
    levels: Option<JsonValue>,
}

impl Powers {
    pub(super) fn load(services: &Services, record: &RoomRecord, snapshot: u64) -> Result<Self> {
        let storage = &services.storage;
        let create = rooms::state_event(storage, snapshot, "m.room.create", "")?;
        let privileged = record
            .version
            .rules()
            .is_some_and(|rules| rules.authorization.explicitly_privilege_room_creators);
        let mut creators = Vec::new();
        if privileged && let Some(create) = &create {
            creators.push(create.sender.clone());
            if let Some(JsonValue::Array(additional)) =
                create.content_value().get("additional_creators")
            {
                creators.extend(
                    additional
                        .iter()
                        .filter_map(JsonValue::as_str)
                        .filter_map(|user| UserId::parse(user).ok()),
                );
            }
        }
        let levels = rooms::state_event(storage, snapshot, "m.room.power_levels", "")?
            .map(|pdu| pdu.content_value());
        Ok(Self { creators, create_sender: create.map(|pdu| pdu.sender), levels })
    }

    /// Power levels from a power levels content alone (a room that does not exist yet).
    pub(super) fn with_levels(levels: JsonValue) -> Self {
        Self { creators: Vec::new(), create_sender: None, levels: Some(levels) }
    }

    /// The current power levels of a room.
    pub(super) fn current(services: &Services, record: &RoomRecord) -> Result<Self> {
        Self::load(services, record, current_snapshot(services, record)?)
    }

    pub(super) fn is_creator(&self, user: &UserId) -> bool {
        self.creators.iter().any(|creator| creator == user)
    }

    /// `user`'s level; `None` stands for the unlimited power of a creator.
    pub(super) fn user(&self, user: &UserId) -> Option<i64> {
        if self.is_creator(user) {
            return None;
        }
        let Some(levels) = &self.levels else {
            return Some(if self.create_sender.as_deref() == Some(user) { 100 } else { 0 });
        };
        Some(
            levels
                .get("users")
                .and_then(|users| users.get(user.as_str()))
                .and_then(json_int)
                .or_else(|| levels.get("users_default").and_then(json_int))
                .unwrap_or(0),
        )
    }

    /// The level needed to send a state event of `kind`.
    pub(super) fn state_level(&self, kind: &str) -> i64 {
        let Some(levels) = &self.levels else {
            // Without power levels any member may send state.
            return 0;
        };
        levels
            .get("events")
            .and_then(|events| events.get(kind))
            .and_then(json_int)
            .or_else(|| levels.get("state_default").and_then(json_int))
            .unwrap_or(50)
    }

    /// A top-level level field such as `invite` or `ban`.
    pub(super) fn field(&self, field: &str, default: i64) -> i64 {
        self.levels
            .as_ref()
            .and_then(|levels| levels.get(field))
            .and_then(json_int)
            .unwrap_or(default)
    }

    pub(super) fn may_send_state(&self, user: &UserId, kind: &str) -> bool {
        self.user(user).is_none_or(|level| level >= self.state_level(kind))
    }

    /// The content of the power levels event, if any.
    pub(super) fn content(&self) -> Option<&JsonValue> {
        self.levels.as_ref()
    }
}

/// The state snapshot a room is at now.
pub(super) fn current_snapshot(services: &Services, record: &RoomRecord) -> Result<u64> {
    Ok(rooms::heads(services.storage.engine(), record.short)?
        .ok_or_else(|| Error::not_found("Unknown room."))?
        .snapshot)
}

/// Whether `user` is joined to the room and may send `m.room.canonical_alias` there: who may
/// curate a room's aliases and its place in the directory.
fn may_manage_listing(
    services: &Services,
    room_id: &RoomId,
    record: &RoomRecord,
    user: &UserId,
) -> Result<bool> {
    Ok(rooms::is_joined(services.storage.engine(), room_id, user)?
        && Powers::current(services, record)?.may_send_state(user, "m.room.canonical_alias"))
}

// ---------------------------------------------------------------------------------------------
// Room summaries

/// What the directory and the space hierarchy show of a room, from its current state.
pub(super) struct RoomInfo {
    pub(super) room_id: OwnedRoomId,
    pub(super) version: RoomVersionId,
    pub(super) snapshot: u64,
    pub(super) name: Option<String>,
    pub(super) topic: Option<String>,
    pub(super) canonical_alias: Option<OwnedRoomAliasId>,
    pub(super) avatar_url: Option<OwnedMxcUri>,
    pub(super) room_type: Option<String>,
    pub(super) num_joined_members: u64,
    pub(super) world_readable: bool,
    pub(super) guest_can_join: bool,
    /// The join rule as the room states it (`invite` when it has none).
    pub(super) join_rule: String,
    /// Rooms whose members may join a restricted room.
    pub(super) allowed_room_ids: Vec<OwnedRoomId>,
    pub(super) encryption: Option<String>,
}

fn non_empty(text: Option<&str>) -> Option<String> {
    text.filter(|text| !text.is_empty()).map(str::to_owned)
}

/// The plain-text topic: the `text/plain` representation in `m.topic`, else `topic`.
fn plain_topic(content: &JsonValue) -> Option<String> {
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
    pub(super) fn load(services: &Services, room_id: &RoomId) -> Result<Option<Self>> {
        let storage = &services.storage;
        let Some(record) = rooms::room(storage, room_id)? else {
            return Ok(None);
        };
        let Some(heads) = rooms::heads(storage.engine(), record.short)? else {
            return Ok(None);
        };
        let snapshot = heads.snapshot;
        let content = |kind: &str| -> Result<Option<JsonValue>> {
            Ok(rooms::state_event(storage, snapshot, kind, "")?.map(|pdu| pdu.content_value()))
        };
        let field = |content: &Option<JsonValue>, name: &str| {
            non_empty(content.as_ref().and_then(|content| content.get(name)?.as_str()))
        };
        let create = content("m.room.create")?;
        let join_rules = content("m.room.join_rules")?;
        let join_rule = field(&join_rules, "join_rule").unwrap_or_else(|| "invite".to_owned());
        let allowed_room_ids = if matches!(join_rule.as_str(), "restricted" | "knock_restricted") {
            join_rules
                .as_ref()
                .and_then(|content| content.get("allow"))
                .and_then(JsonValue::as_array)
                .into_iter()
                .flatten()
                .filter(|rule| {
                    rule.get("type").and_then(JsonValue::as_str) == Some("m.room_membership")
                })
                .filter_map(|rule| rule.get("room_id").and_then(JsonValue::as_str))
                .filter_map(|room| RoomId::parse(room).ok())
                .collect()
        } else {
            Vec::new()
        };
        let topic = content("m.room.topic")?.as_ref().and_then(plain_topic);
        let num_joined_members =
            u64::try_from(timeline::joined_members(storage, record.short)?.len()).unwrap_or(0);
        Ok(Some(Self {
            room_id: room_id.to_owned(),
            version: record.version.clone(),
            snapshot,
            name: field(&content("m.room.name")?, "name"),
            topic,
            canonical_alias: field(&content("m.room.canonical_alias")?, "alias")
                .and_then(|alias| RoomAliasId::parse(alias).ok()),
            avatar_url: field(&content("m.room.avatar")?, "url").map(OwnedMxcUri::from),
            room_type: field(&create, "type"),
            num_joined_members,
            world_readable: field(&content("m.room.history_visibility")?, "history_visibility")
                .is_some_and(|visibility| visibility == "world_readable"),
            guest_can_join: field(&content("m.room.guest_access")?, "guest_access")
                .is_some_and(|access| access == "can_join"),
            join_rule,
            allowed_room_ids,
            encryption: field(&content("m.room.encryption")?, "algorithm"),
        }))
    }

    fn joined(&self) -> UInt {
        UInt::try_from(self.num_joined_members).unwrap_or(UInt::MAX)
    }

    /// The room as the published room directory lists it.
    pub(super) fn chunk(&self) -> PublicRoomsChunk {
        let mut chunk = PublicRoomsChunk::from(PublicRoomsChunkInit {
            num_joined_members: self.joined(),
            room_id: self.room_id.clone(),
            world_readable: self.world_readable,
            guest_can_join: self.guest_can_join,
        });
        chunk.name = self.name.clone();
        chunk.topic = self.topic.clone();
        chunk.canonical_alias = self.canonical_alias.clone();
        chunk.avatar_url = self.avatar_url.clone();
        chunk.join_rule = JoinRuleKind::from(self.join_rule.as_str());
        chunk.room_type = self.room_type.as_deref().map(RoomType::from);
        chunk
    }

    /// The room as the space hierarchy summarises it.
    pub(super) fn summary(&self) -> RoomSummary {
        let restricted = || RestrictedSummary::new(self.allowed_room_ids.clone());
        let join_rule = match self.join_rule.as_str() {
            "public" => JoinRuleSummary::Public,
            "knock" => JoinRuleSummary::Knock,
            "restricted" => JoinRuleSummary::Restricted(restricted()),
            "knock_restricted" => JoinRuleSummary::KnockRestricted(restricted()),
            "invite" => JoinRuleSummary::Invite,
            // `private` and join rules this server does not know let nobody in unasked.
            _ => JoinRuleSummary::Private,
        };
        let mut summary = RoomSummary::new(
            self.room_id.clone(),
            join_rule,
            self.guest_can_join,
            self.joined(),
            self.world_readable,
        );
        summary.name = self.name.clone();
        summary.topic = self.topic.clone();
        summary.canonical_alias = self.canonical_alias.clone();
        summary.avatar_url = self.avatar_url.clone();
        summary.room_type = self.room_type.as_deref().map(RoomType::from);
        summary.encryption = self.encryption.as_deref().map(EventEncryptionAlgorithm::from);
        summary.room_version = Some(self.version.clone());
        summary
    }

    /// Whether the room matches a directory search term (case-insensitive substring of its
    /// name, topic, canonical alias or id).
    fn matches(&self, term: &str) -> bool {
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

// ---------------------------------------------------------------------------------------------
// Aliases

fn alias_taken(alias: &RoomAliasId) -> Error {
    Error::matrix(
        StatusCode::CONFLICT,
        ErrorKind::RoomInUse,
        format!("Room alias {alias} already exists."),
    )
}

fn unknown_alias(alias: &RoomAliasId) -> Error {
    Error::not_found(format!("Room alias {alias} not found."))
}

async fn put_alias(
    services: Arc<Services>,
    request: Ruma<create_alias::v3::Request>,
) -> Result<create_alias::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    if body.room_alias.server_name() != services.config.server_name {
        return Err(Error::invalid_param(format!(
            "This server only maintains aliases ending in :{}.",
            services.config.server_name
        )));
    }
    // The same localpart rules (and reserved names) as an alias given to /createRoom.
    let alias = local_alias(&services, body.room_alias.alias())?;
    require_room(&services, &body.room_id)?;
    if !rooms::is_joined(services.storage.engine(), &body.room_id, &sender.user_id)? {
        return Err(Error::forbidden("You must be joined to a room to give it an alias."));
    }
    let key = alias.to_string();
    let _aliases = services.rooms.aliases.lock().await;
    let engine = services.storage.engine();
    if ALIASES_TABLE.contains(engine, &key)? {
        return Err(alias_taken(&alias));
    }
    // Under the alias lock, so two new aliases cannot both take the last place.
    let room_aliases = prefix(&body.room_id.as_str());
    if ROOM_ALIASES_TABLE.count(engine, &room_aliases, limits::MAX_ROOM_ALIASES)?
        >= limits::MAX_ROOM_ALIASES
    {
        return Err(Error::field_too_large(format!(
            "A room can have at most {} aliases on this server; remove one first.",
            limits::MAX_ROOM_ALIASES
        )));
    }
    let mut batch = Batch::new();
    ALIASES_TABLE.put(
        &mut batch,
        &key,
        &Json(AliasRecord { room_id: body.room_id.clone(), creator: sender.user_id.clone() }),
    );
    ROOM_ALIASES_TABLE.put(&mut batch, &(body.room_id.to_string(), key), &());
    services.storage.writer().commit(batch).await?;
    tracing::info!(%alias, room = %body.room_id, user = %sender.user_id, "created a room alias");
    Ok(create_alias::v3::Response::new())
}

async fn get_room_alias(
    services: Arc<Services>,
    request: Ruma<get_alias::v3::Request>,
) -> Result<get_alias::v3::Response> {
    let alias = request.body.room_alias;
    if alias.server_name() != services.config.server_name {
        let response = services
            .federation
            .client
            .send(alias.server_name(), get_room_information::v1::Request::new(alias.clone()))
            .await
            .map_err(|error| error.into_client_error(&format!("Room alias {alias}")))?;
        return Ok(get_alias::v3::Response::new(response.room_id, response.servers));
    }
    let (room_id, servers) = rooms::resolve_local_alias(&services.storage, &alias)?
        .ok_or_else(|| unknown_alias(&alias))?;
    Ok(get_alias::v3::Response::new(room_id, servers))
}

/// Drops `alias` from the room's `m.room.canonical_alias`, as the user removing the alias.
/// The alias is gone either way; lacking the power to update the event is not an error.
async fn forget_canonical_alias(
    services: &Services,
    room_id: &RoomId,
    alias: &RoomAliasId,
    user: &OwnedUserId,
) -> Result<()> {
    let Some(event) =
        rooms::current_state_event(&services.storage, room_id, "m.room.canonical_alias", "")?
    else {
        return Ok(());
    };
    let mut content = event.content_value();
    let Some(object) = content.as_object_mut() else {
        return Ok(());
    };
    let mut changed = false;
    if object.get("alias").and_then(JsonValue::as_str) == Some(alias.as_str()) {
        object.remove("alias");
        changed = true;
    }
    if let Some(JsonValue::Array(alt)) = object.get_mut("alt_aliases") {
        let before = alt.len();
        alt.retain(|other| other.as_str() != Some(alias.as_str()));
        changed |= alt.len() != before;
    }
    if !changed {
        return Ok(());
    }
    let template = Template::state(
        TimelineEventType::RoomCanonicalAlias,
        "",
        user,
        canonical_content(content)?,
    );
    if let Err(error) = send(services, room_id, template, None).await {
        tracing::debug!(%alias, room = %room_id, %error, "could not update the canonical alias");
    }
    Ok(())
}

async fn remove_alias(
    services: Arc<Services>,
    request: Ruma<delete_alias::v3::Request>,
) -> Result<delete_alias::v3::Response> {
    let sender = request.sender()?.clone();
    let alias = request.body.room_alias;
    if alias.server_name() != services.config.server_name {
        return Err(unknown_alias(&alias));
    }
    let key = alias.to_string();
    let _aliases = services.rooms.aliases.lock().await;
    let Some(Json(record)) = ALIASES_TABLE.get(services.storage.engine(), &key)? else {
        return Err(unknown_alias(&alias));
    };
    let user = &sender.user_id;
    let allowed = record.creator == *user
        || services.accounts.is_admin(user)
        || match rooms::room(&services.storage, &record.room_id)? {
            Some(room) => may_manage_listing(&services, &record.room_id, &room, user)?,
            None => false,
        };
    if !allowed {
        return Err(Error::forbidden(
            "Only the alias's creator, a server admin or a room moderator may remove it.",
        ));
    }
    let mut batch = Batch::new();
    ALIASES_TABLE.delete(&mut batch, &key);
    ROOM_ALIASES_TABLE.delete(&mut batch, &(record.room_id.to_string(), key));
    services.storage.writer().commit(batch).await?;
    tracing::info!(%alias, room = %record.room_id, %user, "removed a room alias");
    forget_canonical_alias(&services, &record.room_id, &alias, user).await?;
    Ok(delete_alias::v3::Response::new())
}

/// The local aliases of a room, in alias order.
pub(super) fn room_aliases(services: &Services, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
    let mut aliases = Vec::new();
    ROOM_ALIASES_TABLE.scan(
        services.storage.engine(),
        &prefix(&room_id.as_str()),
        None,
        Direction::Forward,
        |(_, alias), ()| {
            if let Ok(alias) = RoomAliasId::parse(alias) {
                aliases.push(alias);
            }
            ControlFlow::Continue(())
        },
    )?;
    Ok(aliases)
}

async fn local_aliases(
    services: Arc<Services>,
    request: Ruma<aliases::v3::Request>,
) -> Result<aliases::v3::Response> {
    let sender = request.sender()?.clone();
    let room_id = request.body.room_id;
    let record = require_room(&services, &room_id)
        .map_err(|_| Error::forbidden("You are not a member of this room."))?;
    let user = &sender.user_id;
    let allowed = rooms::is_joined(services.storage.engine(), &room_id, user)?
        || services.accounts.is_admin(user)
        || rooms::state_event(
            &services.storage,
            current_snapshot(&services, &record)?,
            "m.room.history_visibility",
            "",
        )?
        .and_then(|pdu| pdu.content_str("history_visibility"))
        .is_some_and(|visibility| visibility == "world_readable");
    if !allowed {
        return Err(Error::forbidden("You are not a member of this room."));
    }
    Ok(aliases::v3::Response::new(room_aliases(&services, &room_id)?))
}

// ---------------------------------------------------------------------------------------------
// Directory visibility

async fn get_visibility(
    services: Arc<Services>,
    request: Ruma<get_room_visibility::v3::Request>,
) -> Result<get_room_visibility::v3::Response> {
    let room_id = request.body.room_id;
    require_room(&services, &room_id)?;
    let visibility =
        if PUBLISHED_ROOMS_TABLE.contains(services.storage.engine(), &room_id.to_string())? {
            Visibility::Public
        } else {
            Visibility::Private
        };
    Ok(get_room_visibility::v3::Response::new(visibility))
}

async fn set_visibility(
    services: Arc<Services>,
    request: Ruma<set_room_visibility::v3::Request>,
) -> Result<set_room_visibility::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let record = require_room(&services, &body.room_id)?;
    let publish = match body.visibility {
        Visibility::Public => true,
        Visibility::Private => false,
        other => {
            return Err(Error::invalid_param(format!(
                "Unknown visibility '{}': use 'public' or 'private'.",
                other.as_str()
            )));
        }
    };
    let user = &sender.user_id;
    if !services.accounts.is_admin(user)
        && !may_manage_listing(&services, &body.room_id, &record, user)?
    {
        return Err(Error::forbidden(
            "Only room members allowed to change the room's canonical alias may list it.",
        ));
    }
    let key = body.room_id.to_string();
    let _aliases = services.rooms.aliases.lock().await;
    let mut batch = Batch::new();
    if publish {
        PUBLISHED_ROOMS_TABLE.put(&mut batch, &key, &());
    } else {
        PUBLISHED_ROOMS_TABLE.delete(&mut batch, &key);
    }
    services.storage.writer().commit(batch).await?;
    tracing::info!(room = %body.room_id, %user, publish, "changed the room's directory visibility");
    Ok(set_room_visibility::v3::Response::new())
}

// ---------------------------------------------------------------------------------------------
// The published room directory

/// Where a directory page starts: `n<index>` is the page from `index` on, `p<index>` the page
/// that ends before `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Since {
    Next(usize),
    Previous(usize),
}

impl Since {
    fn parse(token: &str) -> Result<Self> {
        let invalid = || Error::invalid_param(format!("Invalid pagination token '{token}'."));
        let number = |digits: &str| digits.parse::<usize>().map_err(|_| invalid());
        if let Some(digits) = token.strip_prefix('n') {
            Ok(Self::Next(number(digits)?))
        } else if let Some(digits) = token.strip_prefix('p') {
            Ok(Self::Previous(number(digits)?))
        } else {
            Err(invalid())
        }
    }
}

/// One page of the directory.
struct DirectoryPage {
    chunk: Vec<PublicRoomsChunk>,
    next_batch: Option<String>,
    prev_batch: Option<String>,
    total: usize,
}

/// The published rooms this server knows that pass `filter`, largest first.
fn published_rooms(services: &Services, filter: &Filter) -> Result<Vec<RoomInfo>> {
    let mut ids = Vec::new();
    PUBLISHED_ROOMS_TABLE.scan(
        services.storage.engine(),
        &[],
        None,
        Direction::Forward,
        |room_id, ()| {
            ids.push(room_id);
            ControlFlow::Continue(())
        },
    )?;
    let term = filter.generic_search_term.as_deref().map(str::trim).filter(|term| !term.is_empty());
    let mut rooms = Vec::new();
    for room_id in ids {
        let Ok(room_id) = RoomId::parse(room_id) else { continue };
        let Some(info) = RoomInfo::load(services, &room_id)? else { continue };
        if !filter.room_types.is_empty()
            && !filter.room_types.iter().any(|wanted| wanted.as_str() == info.room_type.as_deref())
        {
            continue;
        }
        if term.is_some_and(|term| !info.matches(term)) {
            continue;
        }
        rooms.push(info);
    }
    rooms.sort_by(|a, b| {
        b.num_joined_members.cmp(&a.num_joined_members).then_with(|| a.room_id.cmp(&b.room_id))
    });
    Ok(rooms)
}

fn directory_page(
    services: &Services,
    server: Option<&OwnedServerName>,
    limit: Option<UInt>,
    since: Option<&str>,
    filter: &Filter,
    network: &RoomNetwork,
) -> Result<DirectoryPage> {
    if let Some(server) = server
        && *server != services.config.server_name
    {
        return Err(Error::not_found(format!(
            "The room directory of {server} cannot be fetched: this server does not federate yet."
        )));
    }
    let limit = match limit.map(u64::from) {
        None | Some(0) => MAX_PUBLIC_ROOMS_PAGE,
        Some(limit) => usize::try_from(limit).unwrap_or(usize::MAX).min(MAX_PUBLIC_ROOMS_PAGE),
    };
    let since = since.map(Since::parse).transpose()?;
    let rooms = match network {
        RoomNetwork::Matrix | RoomNetwork::All => published_rooms(services, filter)?,
        // No application service offers third-party networks here.
        _ => Vec::new(),
    };
    let total = rooms.len();
    let (start, end) = match since {
        None => (0, limit.min(total)),
        Some(Since::Next(start)) => (start.min(total), start.saturating_add(limit).min(total)),
        Some(Since::Previous(end)) => {
            let end = end.min(total);
            (end.saturating_sub(limit), end)
        }
    };
    let chunk = rooms.get(start..end).unwrap_or_default().iter().map(RoomInfo::chunk).collect();
    Ok(DirectoryPage {
        chunk,
        next_batch: (end < total).then(|| format!("n{end}")),
        prev_batch: (start > 0).then(|| format!("p{start}")),
        total,
    })
}

async fn public_rooms(
    services: Arc<Services>,
    request: Ruma<get_public_rooms::v3::Request>,
) -> Result<get_public_rooms::v3::Response> {
    let body = request.body;
    let page = directory_page(
        &services,
        body.server.as_ref(),
        body.limit,
        body.since.as_deref(),
        &Filter::new(),
        &RoomNetwork::Matrix,
    )?;
    let mut response = get_public_rooms::v3::Response::new(page.chunk);
    response.next_batch = page.next_batch;
    response.prev_batch = page.prev_batch;
    response.total_room_count_estimate = UInt::try_from(page.total).ok();
    Ok(response)
}

async fn public_rooms_filtered(
    services: Arc<Services>,
    request: Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<get_public_rooms_filtered::v3::Response> {
    let body = request.body;
    let page = directory_page(
        &services,
        body.server.as_ref(),
        body.limit,
        body.since.as_deref(),
        &body.filter,
        &body.room_network,
    )?;
    let mut response = get_public_rooms_filtered::v3::Response::new();
    response.chunk = page.chunk;
    response.next_batch = page.next_batch;
    response.prev_batch = page.prev_batch;
    response.total_room_count_estimate = UInt::try_from(page.total).ok();
    Ok(response)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn since_tokens_round_trip_and_reject_garbage() {
        assert_eq!(Since::parse("n20").ok(), Some(Since::Next(20)));
        assert_eq!(Since::parse("p3").ok(), Some(Since::Previous(3)));
        assert!(Since::parse("x1").is_err());
        assert!(Since::parse("n").is_err());
        assert!(Since::parse("n-1").is_err());
    }

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

    #[test]
    fn power_level_fields_accept_numeric_strings() {
        assert_eq!(json_int(&json!(50)), Some(50));
        assert_eq!(json_int(&json!("75")), Some(75));
        assert_eq!(json_int(&json!("x")), None);
    }
}
