//! The published room directory, `GET`/`POST /publicRooms`: ours from `rooms::directory`,
//! or another server's asked of it.

use std::sync::Arc;

use ruma::{
    OwnedServerName, UInt,
    api::{
        client::directory::{get_public_rooms, get_public_rooms_filtered},
        federation::directory as federation_directory,
    },
    directory::{Filter, RoomNetwork},
};

use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    http::ruma::{Ruma, route},
    rooms::{self, directory::PageRequest},
};

pub(super) fn routes(router: Routes) -> Routes {
    let router = route(router, public_rooms);
    route(router, public_rooms_filtered)
}

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
