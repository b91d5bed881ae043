//! Local room aliases: `PUT`/`GET`/`DELETE /directory/room/{roomAlias}` (another server's
//! alias asked of it) and `GET /rooms/{roomId}/aliases`. The rows and the rules are the
//! domain's (`rooms::aliases`); these handlers map requests and answers.

use std::sync::Arc;

use ruma::api::{
    client::{
        alias::{create_alias, delete_alias, get_alias},
        room::aliases,
    },
    federation::query::get_room_information,
};

use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    http::ruma::{Ruma, route},
    rooms::aliases::Aliases,
};

pub(super) fn routes(router: Routes) -> Routes {
    let router = route(router, put_alias);
    let router = route(router, get_room_alias);
    let router = route(router, remove_alias);
    route(router, local_aliases)
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
    let user = &sender.user_id;
    let aliases = services.rooms.visible_aliases(
        &request.body.room_id,
        user,
        services.accounts.is_admin(user),
    )?;
    Ok(aliases::v3::Response::new(aliases))
}
