//! A room's visibility in the published room directory:
//! `GET`/`PUT /directory/list/room/{roomId}`. Who may change it is the domain's rule
//! (`Rooms::set_published`).

use std::sync::Arc;

use ruma::api::client::{
    directory::{get_room_visibility, set_room_visibility},
    room::Visibility,
};

use super::require_room;
use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    http::ruma::{Ruma, route},
};

pub(super) fn routes(router: Routes) -> Routes {
    let router = route(router, get_visibility);
    route(router, set_visibility)
}

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
