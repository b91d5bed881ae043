//! `GET /_matrix/client/v1/room_summary/{roomIdOrAlias}` (Matrix 1.15, MSC3266; also the
//! unstable `im.nheko.summary` path): a room preview before joining, from the summary the
//! space hierarchy uses (`rooms::summary`). A signed-in user sees rooms they are joined or
//! invited to, and rooms they could join or knock on or read (public, knockable,
//! world-readable, restricted to a room they are in); without a token, only public,
//! knockable and world-readable rooms. Everything else, banned users and rooms this server
//! does not know included, is `404 M_NOT_FOUND`, the spec's only answer, so the endpoint
//! does not tell which rooms exist.

use std::sync::Arc;

use ruma::{api::client::room::get_summary, events::room::member::MembershipState};

use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    http::ruma::{Ruma, route},
    rooms::{spaces, summary::RoomInfo},
};

pub(super) fn routes(router: Routes) -> Routes {
    route(router, room_summary)
}

async fn room_summary(
    services: Arc<Services>,
    request: Ruma<get_summary::v1::Request>,
) -> Result<get_summary::v1::Response> {
    let unknown = || Error::not_found("Room not found, or you may not see it.");
    let room_id = services.rooms.aliases.resolve_room(&request.body.room_id_or_alias)?;
    let storage = &services.storage;
    let info = RoomInfo::load(storage, &room_id)?.ok_or_else(unknown)?;
    let summary = info.summary();
    let mut response = get_summary::v1::Response::new(summary.clone());
    match &request.sender {
        Some(sender) => {
            if !spaces::user_may_see(storage, &summary, &sender.user_id)? {
                return Err(unknown());
            }
            let membership = crate::rooms::membership(storage.engine(), &room_id, &sender.user_id)?
                .map_or(MembershipState::Leave, |record| record.membership);
            response.membership = Some(membership);
        }
        None => {
            if !spaces::open_to_all(&summary.join_rule, summary.world_readable) {
                return Err(unknown());
            }
        }
    }
    Ok(response)
}
