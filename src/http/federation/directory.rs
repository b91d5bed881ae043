//! Other servers reading our published room directory: `GET` and `POST /publicRooms`.
//! Only with `allow_public_room_directory_over_federation` (off by default, as in Tuwunel),
//! and never for servers `forbidden_remote_room_directory_server_names` names.

use std::sync::Arc;

use ruma::{
    ServerName, UInt,
    api::federation::directory::{get_public_rooms, get_public_rooms_filtered},
    directory::Filter,
};

use super::Signed;
use crate::{
    Error, Result, Services,
    rooms::directory::{self, Page, PageRequest},
};

fn page(services: &Services, origin: &ServerName, request: &PageRequest<'_>) -> Result<Page> {
    if !services.config.allow_public_room_directory_over_federation {
        return Err(Error::forbidden("This server does not share its room directory."));
    }
    if !services.federation.policy.allows_directory(origin) {
        return Err(Error::forbidden(format!(
            "This server does not share its room directory with {origin}."
        )));
    }
    directory::page(&services.storage, &services.rooms.aliases, request)
}

pub(super) async fn public_rooms(
    services: Arc<Services>,
    request: Signed<get_public_rooms::v1::Request>,
) -> Result<get_public_rooms::v1::Response> {
    let body = request.body;
    let asked = PageRequest {
        limit: body.limit,
        since: body.since.as_deref(),
        filter: Filter::new(),
        network: body.room_network,
    };
    let page = page(&services, &request.origin, &asked)?;
    let mut response = get_public_rooms::v1::Response::new();
    response.chunk = page.chunk;
    response.next_batch = page.next_batch;
    response.prev_batch = page.prev_batch;
    response.total_room_count_estimate = UInt::try_from(page.total).ok();
    Ok(response)
}

pub(super) async fn public_rooms_filtered(
    services: Arc<Services>,
    request: Signed<get_public_rooms_filtered::v1::Request>,
) -> Result<get_public_rooms_filtered::v1::Response> {
    let body = request.body;
    let asked = PageRequest {
        limit: body.limit,
        since: body.since.as_deref(),
        filter: body.filter,
        network: body.room_network,
    };
    let page = page(&services, &request.origin, &asked)?;
    let mut response = get_public_rooms_filtered::v1::Response::new();
    response.chunk = page.chunk;
    response.next_batch = page.next_batch;
    response.prev_batch = page.prev_batch;
    response.total_room_count_estimate = UInt::try_from(page.total).ok();
    Ok(response)
}
