//! Account data, global and per room, and room tags (which are the `m.tag` room account
//! data). Every change gets a stream position that /sync delivers from.

use std::sync::Arc;

use axum::http::StatusCode;
use ruma::{
    RoomId, UserId,
    api::{
        client::{
            config::{
                get_global_account_data, get_room_account_data, set_global_account_data,
                set_room_account_data,
            },
            tag::{create_tag, delete_tag, get_tags},
        },
        error::ErrorKind,
    },
    events::tag::{TagEventContent, TagName, Tags},
    serde::Raw,
};
use serde_json::Value as JsonValue;

use super::require_self;
use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    accounts::{AccountDataUpdate, UserMessage},
    http::{
        ruma::{Ruma, route},
        validate,
    },
    limits,
    storage::{account_data::ACCOUNT_DATA_TABLE, codec::Json},
};

pub(super) fn routes(router: Routes) -> Routes {
    let router = route(router, get_global);
    let router = route(router, set_global);
    let router = route(router, get_room);
    let router = route(router, set_room);
    let router = route(router, tags);
    let router = route(router, add_tag);
    route(router, remove_tag)
}

/// Types the server maintains itself; clients set them through their own endpoints.
const SERVER_MANAGED: &[&str] = &["m.fully_read", "m.push_rules"];

/// The stored content of one account data key.
pub(crate) fn read(
    services: &Services,
    user: &UserId,
    room: Option<&RoomId>,
    kind: &str,
) -> Result<Option<JsonValue>> {
    let key =
        (user.to_owned(), room.map_or_else(String::new, |room| room.to_string()), kind.to_owned());
    Ok(ACCOUNT_DATA_TABLE
        .get_readable(services.storage.engine(), &key)?
        .map(|Json(record)| record.content))
}

/// Writes one account data key through the user's actor.
pub(crate) async fn write(
    services: &Services,
    user: &UserId,
    room: Option<&RoomId>,
    kind: String,
    content: JsonValue,
) -> Result<u64> {
    let room = room.map_or_else(String::new, |room| room.to_string());
    services
        .accounts
        .call(user, |reply| UserMessage::SetAccountData { room, kind, content, reply })
        .await
}

fn check_writable(kind: &str, content: &JsonValue) -> Result<()> {
    validate::max_bytes("An account data type", kind, limits::MAX_ID_BYTES)?;
    if SERVER_MANAGED.contains(&kind) {
        return Err(Error::matrix(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::BadJson,
            format!("Cannot set {kind} through this API."),
        ));
    }
    if !content.is_object() {
        return Err(Error::bad_json("Account data content must be a JSON object."));
    }
    Ok(())
}

fn raw<T>(content: JsonValue) -> Result<Raw<T>> {
    Ok(Raw::from_json(serde_json::value::to_raw_value(&content)?))
}

async fn get_global(
    services: Arc<Services>,
    request: Ruma<get_global_account_data::v3::Request>,
) -> Result<get_global_account_data::v3::Response> {
    let sender = request.sender()?;
    require_self(sender, &request.body.user_id, "read account data")?;
    let content = read(&services, &sender.user_id, None, &request.body.event_type.to_string())?
        .ok_or_else(|| Error::not_found("No account data of that type."))?;
    Ok(get_global_account_data::v3::Response::new(raw(content)?))
}

async fn set_global(
    services: Arc<Services>,
    request: Ruma<set_global_account_data::v3::Request>,
) -> Result<set_global_account_data::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    require_self(&sender, &body.user_id, "add account data")?;
    let kind = body.event_type.to_string();
    let content: JsonValue = serde_json::from_str(body.data.json().get())?;
    check_writable(&kind, &content)?;
    write(&services, &sender.user_id, None, kind, content).await?;
    Ok(set_global_account_data::v3::Response::new())
}

async fn get_room(
    services: Arc<Services>,
    request: Ruma<get_room_account_data::v3::Request>,
) -> Result<get_room_account_data::v3::Response> {
    let sender = request.sender()?;
    let body = &request.body;
    require_self(sender, &body.user_id, "read account data")?;
    let content =
        read(&services, &sender.user_id, Some(&body.room_id), &body.event_type.to_string())?
            .ok_or_else(|| Error::not_found("No account data of that type for this room."))?;
    Ok(get_room_account_data::v3::Response::new(raw(content)?))
}

async fn set_room(
    services: Arc<Services>,
    request: Ruma<set_room_account_data::v3::Request>,
) -> Result<set_room_account_data::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    require_self(&sender, &body.user_id, "add account data")?;
    let kind = body.event_type.to_string();
    let content: JsonValue = serde_json::from_str(body.data.json().get())?;
    check_writable(&kind, &content)?;
    write(&services, &sender.user_id, Some(&body.room_id), kind, content).await?;
    Ok(set_room_account_data::v3::Response::new())
}

fn current_tags(services: &Services, user: &UserId, room: &RoomId) -> Result<Tags> {
    Ok(tags_of(read(services, user, Some(room), "m.tag")?))
}

/// The tags in stored `m.tag` content (none when there is none, or it is not tags).
fn tags_of(content: Option<JsonValue>) -> Tags {
    content
        .and_then(|content| serde_json::from_value::<TagEventContent>(content).ok())
        .map(|content| content.tags)
        .unwrap_or_default()
}

/// Changes the room's tags in the user's actor, from the stored ones, so that two tags added
/// at once are both kept.
async fn update_tags(
    services: &Services,
    user: &UserId,
    room: &RoomId,
    change: impl FnOnce(&mut Tags) -> Result<()> + Send + 'static,
) -> Result<()> {
    let update: AccountDataUpdate = Box::new(move |stored| {
        let mut tags = tags_of(stored);
        change(&mut tags)?;
        Ok(serde_json::to_value(TagEventContent::new(tags))?)
    });
    let room = room.to_string();
    services
        .accounts
        .call(user, |reply| UserMessage::UpdateAccountData {
            room,
            kind: "m.tag".to_owned(),
            update,
            reply,
        })
        .await?;
    Ok(())
}

async fn tags(
    services: Arc<Services>,
    request: Ruma<get_tags::v3::Request>,
) -> Result<get_tags::v3::Response> {
    let sender = request.sender()?;
    require_self(sender, &request.body.user_id, "read tags")?;
    Ok(get_tags::v3::Response::new(current_tags(
        &services,
        &sender.user_id,
        &request.body.room_id,
    )?))
}

async fn add_tag(
    services: Arc<Services>,
    request: Ruma<create_tag::v3::Request>,
) -> Result<create_tag::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    require_self(&sender, &body.user_id, "tag rooms")?;
    validate::max_bytes("A tag", &body.tag, limits::MAX_TAG_BYTES)?;
    if body.tag_info.order.is_some_and(|order| !(0.0..=1.0).contains(&order)) {
        return Err(Error::invalid_param("Tag order must be between 0 and 1."));
    }
    let (tag, info) = (TagName::from(body.tag), body.tag_info);
    update_tags(&services, &sender.user_id, &body.room_id, move |tags| {
        if !tags.contains_key(&tag) && tags.len() >= limits::MAX_TAGS_PER_ROOM {
            return Err(Error::user_limit(format!(
                "A room can have at most {} tags.",
                limits::MAX_TAGS_PER_ROOM
            )));
        }
        tags.insert(tag, info);
        Ok(())
    })
    .await?;
    Ok(create_tag::v3::Response::new())
}

async fn remove_tag(
    services: Arc<Services>,
    request: Ruma<delete_tag::v3::Request>,
) -> Result<delete_tag::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    require_self(&sender, &body.user_id, "tag rooms")?;
    let tag = TagName::from(body.tag);
    update_tags(&services, &sender.user_id, &body.room_id, move |tags| {
        tags.remove(&tag);
        Ok(())
    })
    .await?;
    Ok(delete_tag::v3::Response::new())
}
