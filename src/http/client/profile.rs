//! Profiles: the whole profile, and each field (`displayname`, `avatar_url` and the custom
//! fields of Matrix 1.16), with the spec's size limits. Profiles of other servers' users are
//! asked of their server.

use std::sync::Arc;

use axum::http::StatusCode;
use ruma::{
    UserId,
    api::{
        client::profile::{
            delete_profile_field, get_profile, get_profile_field, set_profile_field,
        },
        error::ErrorKind,
        federation::query::get_profile_information,
    },
    profile::{ProfileFieldName, ProfileFieldValue},
};
use serde_json::Value as JsonValue;

use super::require_self;
use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    accounts::UserMessage,
    http::{
        ruma::{Ruma, route},
        validate,
    },
    limits,
};

/// The spec's limit on a field name.
const KEY_LIMIT: usize = 255;

pub(super) fn routes(router: Routes) -> Routes {
    let router = route(router, profile);
    let router = route(router, get_field);
    let router = route(router, set_field);
    route(router, delete_field)
}

/// Every stored field of local `user`, or `M_NOT_FOUND` for unknown users.
fn load(services: &Services, user: &UserId) -> Result<Vec<(String, JsonValue)>> {
    services.accounts.profile(user)?.ok_or_else(|| Error::not_found("Profile not found."))
}

/// The profile of `user`: stored for our users, asked of their server for others (only
/// `field` when given).
async fn fetch(
    services: &Services,
    user: &UserId,
    field: Option<ProfileFieldName>,
) -> Result<Vec<(String, JsonValue)>> {
    if user.server_name() == services.config.server_name {
        return load(services, user);
    }
    let mut request = get_profile_information::v1::Request::new(user.to_owned());
    request.field = field;
    let response = services
        .federation
        .client
        .send(user.server_name(), request)
        .await
        .map_err(|error| error.into_client_error("Profile not available"))?;
    Ok(response.iter().map(|(field, value)| (field.clone(), value.clone())).collect())
}

fn require_token_if_configured<T>(services: &Services, request: &Ruma<T>) -> Result<()> {
    if services.config.require_auth_for_profile_requests && request.sender.is_none() {
        return Err(Error::missing_token());
    }
    Ok(())
}

async fn profile(
    services: Arc<Services>,
    request: Ruma<get_profile::v3::Request>,
) -> Result<get_profile::v3::Response> {
    require_token_if_configured(&services, &request)?;
    let fields = fetch(&services, &request.body.user_id, None).await?;
    let mut response = get_profile::v3::Response::new();
    response.data = fields.into_iter().collect();
    Ok(response)
}

async fn get_field(
    services: Arc<Services>,
    request: Ruma<get_profile_field::v3::Request>,
) -> Result<get_profile_field::v3::Response> {
    require_token_if_configured(&services, &request)?;
    let fields = fetch(&services, &request.body.user_id, Some(request.body.field.clone())).await?;
    let name = request.body.field.as_str().to_owned();
    let value = fields
        .into_iter()
        .find(|(field, _)| *field == name)
        .ok_or_else(|| Error::not_found("This profile field is not set."))?
        .1;
    let value = ProfileFieldValue::new(&name, value)
        .map_err(|error| Error::internal(format!("stored profile field {name}: {error}")))?;
    Ok(get_profile_field::v3::Response::new(value))
}

/// Fields that member events carry and must follow.
fn is_member_field(name: &str) -> bool {
    name == ProfileFieldName::DisplayName.as_str() || name == ProfileFieldName::AvatarUrl.as_str()
}

fn check_field_name(services: &Services, sender_guest: bool, name: &str) -> Result<()> {
    if name.len() > KEY_LIMIT {
        return Err(Error::matrix(
            StatusCode::BAD_REQUEST,
            ErrorKind::KeyTooLarge,
            format!("Profile field names are limited to {KEY_LIMIT} bytes."),
        ));
    }
    if name.is_empty() {
        return Err(Error::missing_param("The profile field name is empty."));
    }
    if sender_guest && name != ProfileFieldName::DisplayName.as_str() {
        return Err(Error::matrix(
            StatusCode::FORBIDDEN,
            ErrorKind::GuestAccessForbidden,
            "Guest accounts may only change their display name.",
        ));
    }
    let _ = services;
    Ok(())
}

/// The display name and avatar URL go into every member event of the user and are shown to
/// everyone sharing a room: Synapse's bounds apply.
fn check_member_field(name: &str, value: &JsonValue) -> Result<()> {
    let Some(text) = value.as_str() else { return Ok(()) };
    if name == ProfileFieldName::DisplayName.as_str() {
        validate::max_chars("A display name", text, limits::MAX_DISPLAYNAME_CHARS)?;
    } else if name == ProfileFieldName::AvatarUrl.as_str() {
        validate::max_chars("An avatar URL", text, limits::MAX_AVATAR_URL_CHARS)?;
    }
    Ok(())
}

async fn set_field(
    services: Arc<Services>,
    request: Ruma<set_profile_field::v3::Request>,
) -> Result<set_profile_field::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    require_self(&sender, &body.user_id, "change the profile")?;
    let name = body.value.field_name().as_str().to_owned();
    check_field_name(&services, sender.guest, &name)?;
    let value = body.value.value().into_owned();
    check_member_field(&name, &value)?;
    if name == ProfileFieldName::AvatarUrl.as_str()
        && !value.as_str().is_some_and(|url| url.is_empty() || url.starts_with("mxc://"))
    {
        return Err(Error::invalid_param("avatar_url must be an mxc:// URI."));
    }
    // The whole profile's size limit is checked by the user's actor, where profile writes
    // are serialised.
    let propagate = is_member_field(&name);
    services
        .accounts
        .call(&sender.user_id, |reply| UserMessage::SetProfileField {
            field: name,
            value: Some(value),
            reply,
        })
        .await?;
    if propagate {
        services.rooms.propagate_profile(&sender.user_id).await?;
    }
    Ok(set_profile_field::v3::Response::new())
}

async fn delete_field(
    services: Arc<Services>,
    request: Ruma<delete_profile_field::v3::Request>,
) -> Result<delete_profile_field::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    require_self(&sender, &body.user_id, "change the profile")?;
    let name = body.field.as_str().to_owned();
    check_field_name(&services, sender.guest, &name)?;
    let propagate = is_member_field(&name);
    services
        .accounts
        .call(&sender.user_id, |reply| UserMessage::SetProfileField {
            field: name,
            value: None,
            reply,
        })
        .await?;
    if propagate {
        services.rooms.propagate_profile(&sender.user_id).await?;
    }
    Ok(delete_profile_field::v3::Response::new())
}
