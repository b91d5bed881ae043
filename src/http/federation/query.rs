//! Queries other servers make about our users and aliases: `GET /query/profile` and
//! `GET /query/directory`.

use std::sync::Arc;

use ruma::api::federation::query::{get_profile_information, get_room_information};

use super::Signed;
use crate::{Error, Result, Services};

pub(super) async fn profile(
    services: Arc<Services>,
    request: Signed<get_profile_information::v1::Request>,
) -> Result<get_profile_information::v1::Response> {
    if !services.config.allow_inbound_profile_lookup_federation_requests {
        return Err(Error::forbidden("This server does not answer profile lookups."));
    }
    let user = &request.body.user_id;
    if user.server_name() != services.config.server_name {
        return Err(Error::invalid_param(format!("{user} is not a user of this server.")));
    }
    let fields =
        services.accounts.profile(user)?.ok_or_else(|| Error::not_found("Profile not found."))?;
    let fields: Vec<_> = match &request.body.field {
        Some(wanted) => {
            let wanted = wanted.as_str();
            let field: Vec<_> = fields.into_iter().filter(|(name, _)| name == wanted).collect();
            if field.is_empty() {
                return Err(Error::not_found("This profile field is not set."));
            }
            field
        }
        None => fields,
    };
    Ok(fields.into_iter().collect())
}

pub(super) async fn directory(
    services: Arc<Services>,
    request: Signed<get_room_information::v1::Request>,
) -> Result<get_room_information::v1::Response> {
    let alias = &request.body.room_alias;
    if alias.server_name() != services.config.server_name {
        return Err(Error::invalid_param(format!("{alias} is not an alias of this server.")));
    }
    let (room_id, servers) = services
        .rooms
        .aliases
        .resolve_with_servers(alias)?
        .ok_or_else(|| Error::not_found(format!("Room alias {alias} not found.")))?;
    Ok(get_room_information::v1::Response::new(room_id, servers))
}
