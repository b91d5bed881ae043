//! Room key backup endpoints (`/room_keys/version` and `/room_keys/keys`). Reads come from
//! storage; every change goes through the owner's actor, which keeps `count` and `etag` exact.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    OwnedRoomId, RoomId, UInt, UserId,
    api::client::backup::{
        RoomKeyBackup, add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session,
        create_backup_version, delete_backup_keys, delete_backup_keys_for_room,
        delete_backup_keys_for_session, delete_backup_version, get_backup_info, get_backup_keys,
        get_backup_keys_for_room, get_backup_keys_for_session, get_latest_backup_info,
        update_backup_version,
    },
    serde::Raw,
};
use serde_json::{Value as JsonValue, json};

use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    accounts::UserMessage,
    http::ruma::{Ruma, route},
    keys::backup::{self, BackupCommand, KeySelection, SessionKey},
    storage::{
        Direction,
        codec::{Json, Prefix},
        keys::{BACKUP_KEYS_TABLE, BackupVersionRecord},
    },
};

pub(super) fn routes(router: Routes) -> Routes {
    let router = route(router, create_version);
    let router = route(router, latest_version);
    let router = route(router, get_version);
    let router = route(router, update_version);
    let router = route(router, delete_version);
    let router = route(router, put_keys);
    let router = route(router, put_room_keys);
    let router = route(router, put_session_key);
    let router = route(router, get_keys);
    let router = route(router, get_room_keys);
    let router = route(router, get_session_key);
    let router = route(router, delete_keys);
    let router = route(router, delete_room_keys);
    route(router, delete_session_key)
}

/// `{algorithm, auth_data}` from a request body.
fn algorithm_parts<T>(raw: &Raw<T>) -> Result<(JsonValue, JsonValue)> {
    parts_of(&serde_json::from_str(raw.json().get())?)
}

fn parts_of(body: &JsonValue) -> Result<(JsonValue, JsonValue)> {
    let algorithm = body.get("algorithm").filter(|value| value.is_string()).cloned();
    let auth_data = body.get("auth_data").filter(|value| value.is_object()).cloned();
    match (algorithm, auth_data) {
        (Some(algorithm), Some(auth_data)) => Ok((algorithm, auth_data)),
        _ => Err(Error::bad_json("A backup needs a string `algorithm` and an object `auth_data`.")),
    }
}

fn algorithm_raw<T>(record: &BackupVersionRecord) -> Result<Raw<T>> {
    Ok(Raw::from_json(serde_json::value::to_raw_value(
        &json!({ "algorithm": record.algorithm, "auth_data": record.auth_data }),
    )?))
}

fn key_json<T>(raw: &Raw<T>) -> Result<JsonValue> {
    let key: JsonValue = serde_json::from_str(raw.json().get())?;
    backup::check_key_data(&key)?;
    Ok(key)
}

async fn command<R: Send + 'static>(
    services: &Services,
    user: &UserId,
    build: impl FnOnce(crate::actors::Reply<Result<R>>) -> BackupCommand,
) -> Result<R> {
    services.accounts.call(user, |reply| UserMessage::Backup(build(reply))).await
}

fn uint(value: u64) -> UInt {
    UInt::new_saturating(value)
}

async fn create_version(
    services: Arc<Services>,
    request: Ruma<create_backup_version::v3::Request>,
) -> Result<create_backup_version::v3::Response> {
    let user = request.sender()?.user_id.clone();
    let (algorithm, auth_data) = algorithm_parts(&request.body.algorithm)?;
    let version =
        command(&services, &user, |reply| BackupCommand::Create { algorithm, auth_data, reply })
            .await?;
    Ok(create_backup_version::v3::Response::new(version))
}

async fn latest_version(
    services: Arc<Services>,
    request: Ruma<get_latest_backup_info::v3::Request>,
) -> Result<get_latest_backup_info::v3::Response> {
    let user = &request.sender()?.user_id;
    let (version, record) = backup::current_version(services.storage.engine(), user)?
        .ok_or_else(|| Error::not_found("No backup exists."))?;
    Ok(get_latest_backup_info::v3::Response::new(
        algorithm_raw(&record)?,
        uint(record.count),
        record.etag.to_string(),
        version.to_string(),
    ))
}

async fn get_version(
    services: Arc<Services>,
    request: Ruma<get_backup_info::v3::Request>,
) -> Result<get_backup_info::v3::Response> {
    let user = &request.sender()?.user_id;
    let record = backup::live_version(services.storage.engine(), user, &request.body.version)?;
    Ok(get_backup_info::v3::Response::new(
        algorithm_raw(&record)?,
        uint(record.count),
        record.etag.to_string(),
        request.body.version.clone(),
    ))
}

async fn update_version(
    services: Arc<Services>,
    request: Ruma<update_backup_version::v3::Request>,
) -> Result<update_backup_version::v3::Response> {
    let user = request.sender()?.user_id.clone();
    // The raw `algorithm` is the whole body, so it also holds the optional `version`.
    let body: JsonValue = serde_json::from_str(request.body.algorithm.json().get())?;
    let (algorithm, auth_data) = parts_of(&body)?;
    let version = request.body.version;
    match body.get("version") {
        None => {}
        Some(JsonValue::String(named)) if *named == version => {}
        Some(_) => {
            return Err(Error::invalid_param(
                "The `version` in the body does not match the version in the path.",
            ));
        }
    }
    command(&services, &user, |reply| BackupCommand::Update {
        version,
        algorithm,
        auth_data,
        reply,
    })
    .await?;
    Ok(update_backup_version::v3::Response::new())
}

async fn delete_version(
    services: Arc<Services>,
    request: Ruma<delete_backup_version::v3::Request>,
) -> Result<delete_backup_version::v3::Response> {
    let user = request.sender()?.user_id.clone();
    let version = request.body.version;
    command(&services, &user, |reply| BackupCommand::DeleteVersion { version, reply }).await?;
    Ok(delete_backup_version::v3::Response::new())
}

async fn store(
    services: &Services,
    user: &UserId,
    version: String,
    keys: Vec<SessionKey>,
) -> Result<(UInt, String)> {
    let (count, etag) =
        command(services, user, |reply| BackupCommand::PutKeys { version, keys, reply }).await?;
    Ok((uint(count), etag))
}

async fn put_keys(
    services: Arc<Services>,
    request: Ruma<add_backup_keys::v3::Request>,
) -> Result<add_backup_keys::v3::Response> {
    let user = request.sender()?.user_id.clone();
    let mut keys = Vec::new();
    for (room, backup) in &request.body.rooms {
        for (session, key) in &backup.sessions {
            keys.push((room.clone(), session.clone(), key_json(key)?));
        }
    }
    let (count, etag) = store(&services, &user, request.body.version, keys).await?;
    Ok(add_backup_keys::v3::Response::new(etag, count))
}

async fn put_room_keys(
    services: Arc<Services>,
    request: Ruma<add_backup_keys_for_room::v3::Request>,
) -> Result<add_backup_keys_for_room::v3::Response> {
    let user = request.sender()?.user_id.clone();
    let body = request.body;
    let keys = body
        .sessions
        .iter()
        .map(|(session, key)| Ok((body.room_id.clone(), session.clone(), key_json(key)?)))
        .collect::<Result<Vec<_>>>()?;
    let (count, etag) = store(&services, &user, body.version, keys).await?;
    Ok(add_backup_keys_for_room::v3::Response::new(etag, count))
}

async fn put_session_key(
    services: Arc<Services>,
    request: Ruma<add_backup_keys_for_session::v3::Request>,
) -> Result<add_backup_keys_for_session::v3::Response> {
    let user = request.sender()?.user_id.clone();
    let body = request.body;
    let keys = vec![(body.room_id.clone(), body.session_id.clone(), key_json(&body.session_data)?)];
    let (count, etag) = store(&services, &user, body.version, keys).await?;
    Ok(add_backup_keys_for_session::v3::Response::new(etag, count))
}

/// Stored keys of a live version, optionally of one room: `room -> session -> key`.
fn stored_keys(
    services: &Services,
    user: &UserId,
    version: &str,
    room: Option<&RoomId>,
) -> Result<BTreeMap<OwnedRoomId, BTreeMap<String, JsonValue>>> {
    backup::live_version(services.storage.engine(), user, version)?;
    let number = backup::parse_version(version)?;
    let prefix = match room {
        Some(room) => Prefix::of3(user, &number, room),
        None => Prefix::of2(user, &number),
    };
    let mut rooms: BTreeMap<OwnedRoomId, BTreeMap<String, JsonValue>> = BTreeMap::new();
    BACKUP_KEYS_TABLE.scan(
        services.storage.engine(),
        &prefix,
        None,
        Direction::Forward,
        |(_, _, room, session), Json(key)| {
            rooms.entry(room).or_default().insert(session, key);
            std::ops::ControlFlow::Continue(())
        },
    )?;
    Ok(rooms)
}

fn raw_sessions<T>(sessions: BTreeMap<String, JsonValue>) -> Result<BTreeMap<String, Raw<T>>> {
    sessions
        .into_iter()
        .map(|(session, key)| Ok((session, Raw::from_json(serde_json::value::to_raw_value(&key)?))))
        .collect()
}

async fn get_keys(
    services: Arc<Services>,
    request: Ruma<get_backup_keys::v3::Request>,
) -> Result<get_backup_keys::v3::Response> {
    let user = &request.sender()?.user_id;
    let mut rooms = BTreeMap::new();
    for (room, sessions) in stored_keys(&services, user, &request.body.version, None)? {
        rooms.insert(room, RoomKeyBackup::new(raw_sessions(sessions)?));
    }
    Ok(get_backup_keys::v3::Response::new(rooms))
}

async fn get_room_keys(
    services: Arc<Services>,
    request: Ruma<get_backup_keys_for_room::v3::Request>,
) -> Result<get_backup_keys_for_room::v3::Response> {
    let user = &request.sender()?.user_id;
    let room = &request.body.room_id;
    let sessions = stored_keys(&services, user, &request.body.version, Some(room))?
        .remove(room)
        .unwrap_or_default();
    Ok(get_backup_keys_for_room::v3::Response::new(raw_sessions(sessions)?))
}

async fn get_session_key(
    services: Arc<Services>,
    request: Ruma<get_backup_keys_for_session::v3::Request>,
) -> Result<get_backup_keys_for_session::v3::Response> {
    let user = &request.sender()?.user_id;
    let body = &request.body;
    backup::live_version(services.storage.engine(), user, &body.version)?;
    let key = (
        user.clone(),
        backup::parse_version(&body.version)?,
        body.room_id.clone(),
        body.session_id.clone(),
    );
    let Json(key) = BACKUP_KEYS_TABLE
        .get(services.storage.engine(), &key)?
        .ok_or_else(|| Error::not_found("No such key in the backup."))?;
    Ok(get_backup_keys_for_session::v3::Response::new(Raw::from_json(
        serde_json::value::to_raw_value(&key)?,
    )))
}

async fn remove(
    services: &Services,
    user: &UserId,
    version: String,
    selection: KeySelection,
) -> Result<(UInt, String)> {
    let (count, etag) =
        command(services, user, |reply| BackupCommand::DeleteKeys { version, selection, reply })
            .await?;
    Ok((uint(count), etag))
}

async fn delete_keys(
    services: Arc<Services>,
    request: Ruma<delete_backup_keys::v3::Request>,
) -> Result<delete_backup_keys::v3::Response> {
    let user = request.sender()?.user_id.clone();
    let (count, etag) = remove(&services, &user, request.body.version, KeySelection::All).await?;
    Ok(delete_backup_keys::v3::Response::new(etag, count))
}

async fn delete_room_keys(
    services: Arc<Services>,
    request: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> Result<delete_backup_keys_for_room::v3::Response> {
    let user = request.sender()?.user_id.clone();
    let body = request.body;
    let (count, etag) =
        remove(&services, &user, body.version, KeySelection::Room(body.room_id)).await?;
    Ok(delete_backup_keys_for_room::v3::Response::new(etag, count))
}

async fn delete_session_key(
    services: Arc<Services>,
    request: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> Result<delete_backup_keys_for_session::v3::Response> {
    let user = request.sender()?.user_id.clone();
    let body = request.body;
    let selection = KeySelection::Session(body.room_id, body.session_id);
    let (count, etag) = remove(&services, &user, body.version, selection).await?;
    Ok(delete_backup_keys_for_session::v3::Response::new(etag, count))
}
