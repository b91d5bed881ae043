//! The room directory: local aliases (`/directory/room/{alias}`, `/rooms/{id}/aliases`),
//! a room's visibility in the published room directory, and that directory itself
//! (`/publicRooms`, ours from `rooms::directory`, another server's asked of it).
//!
//! Alias and publication rows are global (not one room's data), so they are written here, in
//! one batch, while holding the server's alias lock.

use std::{ops::ControlFlow, sync::Arc};

use axum::http::StatusCode;
use ruma::{
    OwnedRoomAliasId, OwnedServerName, OwnedUserId, RoomAliasId, RoomId, UInt, UserId,
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
        federation::{directory as federation_directory, query::get_room_information},
    },
    directory::{Filter, RoomNetwork},
    events::{StateEventType, TimelineEventType},
};
use serde_json::Value as JsonValue;

use super::{create::local_alias, require_room, send};
use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    http::ruma::{Ruma, route},
    limits,
    rooms::{
        self, builder::Template, directory::PageRequest, pdu::canonical_content,
        power_levels::Powers,
    },
    storage::{
        Batch, Direction,
        codec::{Json, prefix},
        rooms::{
            ALIASES_TABLE, AliasRecord, PUBLISHED_ROOMS_TABLE, ROOM_ALIASES_TABLE, RoomRecord,
        },
    },
};

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
// Permissions

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
        && Powers::load(&services.storage, &record.version, current_snapshot(services, record)?)?
            .may_send_state(user, &StateEventType::RoomCanonicalAlias))
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

/// A page of the directory `server` publishes: ours from `rooms::directory`, another
/// server's asked of it (unless `forbidden_remote_room_directory_server_names` names it).
async fn directory_page(
    services: &Services,
    authenticated: bool,
    server: Option<&OwnedServerName>,
    request: PageRequest<'_>,
    filtered: bool,
) -> Result<get_public_rooms_filtered::v3::Response> {
    let mut response = get_public_rooms_filtered::v3::Response::new();
    let remote = server.filter(|server| **server != services.config.server_name);
    let Some(server) = remote else {
        let page = rooms::directory::page(&services.storage, &request)?;
        response.chunk = page.chunk;
        response.next_batch = page.next_batch;
        response.prev_batch = page.prev_batch;
        response.total_room_count_estimate = UInt::try_from(page.total).ok();
        return Ok(response);
    };
    // Anyone may read our directory, but only our users make this server ask another.
    if !authenticated {
        return Err(Error::missing_token());
    }
    if !services.federation.policy.allows_directory(server) {
        return Err(Error::forbidden(format!(
            "This server does not browse the room directory of {server}."
        )));
    }
    let what = format!("The room directory of {server}");
    let client = &services.federation.client;
    let remote = if filtered {
        let mut asked = federation_directory::get_public_rooms_filtered::v1::Request::new();
        asked.limit = request.limit;
        asked.since = request.since.map(str::to_owned);
        asked.filter = request.filter;
        asked.room_network = request.network;
        let answer =
            client.send(server, asked).await.map_err(|error| error.into_client_error(&what))?;
        (answer.chunk, answer.next_batch, answer.prev_batch, answer.total_room_count_estimate)
    } else {
        let mut asked = federation_directory::get_public_rooms::v1::Request::new();
        asked.limit = request.limit;
        asked.since = request.since.map(str::to_owned);
        asked.room_network = request.network;
        let answer =
            client.send(server, asked).await.map_err(|error| error.into_client_error(&what))?;
        (answer.chunk, answer.next_batch, answer.prev_batch, answer.total_room_count_estimate)
    };
    (
        response.chunk,
        response.next_batch,
        response.prev_batch,
        response.total_room_count_estimate,
    ) = remote;
    Ok(response)
}

async fn public_rooms(
    services: Arc<Services>,
    request: Ruma<get_public_rooms::v3::Request>,
) -> Result<get_public_rooms::v3::Response> {
    let body = request.body;
    let page = PageRequest {
        limit: body.limit,
        since: body.since.as_deref(),
        filter: Filter::new(),
        network: RoomNetwork::Matrix,
    };
    let authenticated = request.sender.is_some();
    let page = directory_page(&services, authenticated, body.server.as_ref(), page, false).await?;
    let mut response = get_public_rooms::v3::Response::new(page.chunk);
    response.next_batch = page.next_batch;
    response.prev_batch = page.prev_batch;
    response.total_room_count_estimate = page.total_room_count_estimate;
    Ok(response)
}

async fn public_rooms_filtered(
    services: Arc<Services>,
    request: Ruma<get_public_rooms_filtered::v3::Request>,
) -> Result<get_public_rooms_filtered::v3::Response> {
    let body = request.body;
    let page = PageRequest {
        limit: body.limit,
        since: body.since.as_deref(),
        filter: body.filter,
        network: body.room_network,
    };
    let authenticated = request.sender.is_some();
    directory_page(&services, authenticated, body.server.as_ref(), page, true).await
}
