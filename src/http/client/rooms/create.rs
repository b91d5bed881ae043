//! `POST /createRoom`: checks what only the request says (known visibility and preset, may
//! this user create rooms), then has the rooms domain create the room
//! ([`Rooms::create_room`](crate::rooms::Rooms::create_room)).

use std::sync::Arc;

use ruma::api::client::room::{Visibility, create_room::v3 as create_room};

use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    http::{
        ruma::{Ruma, route},
        validate,
    },
    rooms::create::NewRoom,
};

/// The spec's room visibilities (createRoom and the room directory).
const VISIBILITIES: &[&str] = &["public", "private"];

/// The spec's room presets.
const PRESETS: &[&str] = &["private_chat", "public_chat", "trusted_private_chat"];

pub(super) fn routes(router: Routes) -> Routes {
    route(router, create)
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
    let publish = body.visibility == Visibility::Public;
    let preset = body.preset.unwrap_or(if publish {
        create_room::RoomPreset::PublicChat
    } else {
        create_room::RoomPreset::PrivateChat
    });
    let room = NewRoom {
        creator,
        version: body.room_version.unwrap_or_else(|| services.config.default_room_version.clone()),
        preset,
        publish,
        alias_name: body.room_alias_name,
        name: body.name,
        topic: body.topic,
        invite: body.invite,
        is_direct: body.is_direct,
        creation_content: body.creation_content,
        power_level_content_override: body.power_level_content_override,
        initial_state: body.initial_state,
    };
    let room_id = services.rooms.create_room(&services.accounts, room).await?;
    Ok(create_room::Response::new(room_id))
}
