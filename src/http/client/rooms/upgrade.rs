//! `POST /rooms/{roomId}/upgrade`: has the rooms domain replace the room by a new one of the
//! requested version ([`Rooms::upgrade_room`](crate::rooms::Rooms::upgrade_room)).

use std::sync::Arc;

use ruma::api::client::room::upgrade_room::v3 as upgrade_room;

use crate::http::routes::Routes;
use crate::{
    Result, Services,
    http::ruma::{Ruma, route},
};

pub(super) fn routes(router: Routes) -> Routes {
    route(router, upgrade)
}

async fn upgrade(
    services: Arc<Services>,
    request: Ruma<upgrade_room::Request>,
) -> Result<upgrade_room::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let new_room = services
        .rooms
        .upgrade_room(&sender.user_id, &body.room_id, body.new_version, &body.additional_creators)
        .await?;
    Ok(upgrade_room::Response::new(new_room))
}
