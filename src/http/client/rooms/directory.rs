//! The room directory: local aliases (`/directory/room/{alias}`, `/rooms/{id}/aliases`),
//! a room's visibility in the published room directory, and that directory itself
//! (`/publicRooms`, ours from `rooms::directory`, another server's asked of it).
//!
//! The rows and the rules are the domain's (`rooms::aliases`); these handlers map requests
//! and answers.

use std::sync::Arc;

use ruma::{
    OwnedServerName, UInt,
    api::{
        client::{
            alias::{create_alias, delete_alias, get_alias},
            directory::{
                get_public_rooms, get_public_rooms_filtered, get_room_visibility,
                set_room_visibility,
            },
            room::{Visibility, aliases},
        },
        federation::{directory as federation_directory, query::get_room_information},
    },
    directory::{Filter, RoomNetwork},
};

use super::require_room;
use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    http::ruma::{Ruma, route},
    rooms::{self, aliases::Aliases, directory::PageRequest},
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
// Aliases

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
    let alias = services.rooms.aliases.validate_local(body.room_alias.alias())?;
    services.rooms.create_alias(&alias, &body.room_id, &sender.user_id).await?;
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
    let (room_id, servers) = services
        .rooms
        .aliases
        .resolve_with_servers(&alias)?
        .ok_or_else(|| Aliases::unknown(&alias))?;
    Ok(get_alias::v3::Response::new(room_id, servers))
}

async fn remove_alias(
    services: Arc<Services>,
    request: Ruma<delete_alias::v3::Request>,
) -> Result<delete_alias::v3::Response> {
    let sender = request.sender()?.clone();
    let alias = request.body.room_alias;
    if alias.server_name() != services.config.server_name {
        return Err(Aliases::unknown(&alias));
    }
    let user = &sender.user_id;
    services.rooms.remove_alias(&alias, user, services.accounts.is_admin(user)).await?;
    Ok(delete_alias::v3::Response::new())
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
            rooms::current_snapshot(&services.storage, &record)?,
            "m.room.history_visibility",
            "",
        )?
        .and_then(|pdu| pdu.content_str("history_visibility"))
        .is_some_and(|visibility| visibility == "world_readable");
    if !allowed {
        return Err(Error::forbidden("You are not a member of this room."));
    }
    Ok(aliases::v3::Response::new(services.rooms.aliases.room_aliases(&room_id)?))
}

// ---------------------------------------------------------------------------------------------
// Directory visibility

async fn get_visibility(
    services: Arc<Services>,
    request: Ruma<get_room_visibility::v3::Request>,
) -> Result<get_room_visibility::v3::Response> {
    let room_id = request.body.room_id;
    require_room(&services, &room_id)?;
    let visibility = if services.rooms.aliases.is_published(&room_id)? {
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
    require_room(&services, &body.room_id)?;
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
    services
        .rooms
        .set_published(&body.room_id, user, services.accounts.is_admin(user), publish)
        .await?;
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
        let page = rooms::directory::page(&services.storage, &services.rooms.aliases, &request)?;
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
