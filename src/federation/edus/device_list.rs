//! `m.device_list_update` and `m.signing_key_update`: another server's user's devices and
//! cross-signing keys, kept in `remote_device_lists` for users who share a room with one of
//! this server's (updates about anyone else are ignored).
//!
//! Updates come in a chain per user: each names the `stream_id`s it follows (`prev_id`).
//! An update whose predecessors are all known (at or below the stored `stream_id`) is
//! applied on top; one already seen is ignored; the first one for a user, or one that
//! follows an update this server never saw, makes it fetch the whole list
//! (`GET /_matrix/federation/v1/user/devices/{userId}`) and carry on from that snapshot's
//! `stream_id`. When that fetch fails, the update is applied anyway and the list marked
//! stale, so the next update fetches again. Every change is a device list change for the
//! user: local users sharing a room with them see the user in `device_lists.changed`.

use std::time::Duration;

use ruma::{
    OwnedUserId, ServerName, UserId,
    api::federation::{
        device::get_devices,
        transactions::edu::{DeviceListUpdateContent, SigningKeyUpdateContent},
    },
};
use serde_json::Value as JsonValue;

use super::from_origin;
use crate::{
    Error, Result,
    federation::intake::Intake,
    keys::device_lists::{self, Change},
    rooms,
    storage::{
        Batch,
        codec::Json,
        federation::{REMOTE_DEVICE_LISTS_TABLE, RemoteDevice, RemoteDeviceList},
    },
};

/// How long fetching a user's whole device list may take.
const RESYNC_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn receive(
    intake: &Intake,
    origin: &ServerName,
    content: DeviceListUpdateContent,
) -> Result<()> {
    from_origin(&content.user_id, origin)?;
    let user = content.user_id.clone();
    let Some(stored) = tracked(intake, &user)? else { return Ok(()) };
    let stream_id = u64::from(content.stream_id);
    let list = match stored {
        Some(list) if !list.stale && stream_id <= list.stream_id => return Ok(()),
        Some(list)
            if !list.stale
                && content.prev_id.iter().all(|prev| u64::from(*prev) <= list.stream_id) =>
        {
            apply(list, &user, content)
        }
        previous => match resync(intake, origin, &user).await {
            Ok(list) if list.stream_id >= stream_id => list,
            Ok(list) => apply(list, &user, content),
            Err(error) => {
                tracing::info!(%user, %error, "cannot fetch a device list; keeping it as stale");
                let mut list = apply(previous.unwrap_or_else(empty), &user, content);
                list.stale = true;
                list
            }
        },
    };
    store(intake, &user, list).await
}

pub async fn receive_signing_keys(
    intake: &Intake,
    origin: &ServerName,
    content: SigningKeyUpdateContent,
) -> Result<()> {
    from_origin(&content.user_id, origin)?;
    let user = content.user_id.clone();
    let Some(stored) = tracked(intake, &user)? else { return Ok(()) };
    let mut list = match stored {
        Some(list) => list,
        None => resync(intake, origin, &user)
            .await
            .unwrap_or_else(|_| RemoteDeviceList { stale: true, ..empty() }),
    };
    if let Some(master) =
        content.master_key.as_ref().and_then(|key| own_key(key.json().get(), &user, "master"))
    {
        list.master_key = Some(master);
    }
    if let Some(self_signing) = content
        .self_signing_key
        .as_ref()
        .and_then(|key| own_key(key.json().get(), &user, "self_signing"))
    {
        list.self_signing_key = Some(self_signing);
    }
    store(intake, &user, list).await
}

/// The stored list of `user` (`Some(None)` when none is stored yet but a local user shares a
/// room with them); `None` when nobody here cares about `user`.
fn tracked(intake: &Intake, user: &UserId) -> Result<Option<Option<RemoteDeviceList>>> {
    let engine = intake.storage.engine();
    if let Some(Json(list)) = REMOTE_DEVICE_LISTS_TABLE.get_readable(engine, &user.to_string())? {
        return Ok(Some(Some(list)));
    }
    Ok((!rooms::joined_rooms(engine, user)?.is_empty()).then_some(None))
}

fn empty() -> RemoteDeviceList {
    RemoteDeviceList {
        stream_id: 0,
        devices: Default::default(),
        master_key: None,
        self_signing_key: None,
        synced_ms: 0,
        stale: false,
    }
}

/// `content` applied to `list`.
fn apply(
    mut list: RemoteDeviceList,
    user: &UserId,
    content: DeviceListUpdateContent,
) -> RemoteDeviceList {
    let device = content.device_id.to_string();
    if content.deleted.unwrap_or(false) {
        list.devices.remove(&device);
    } else {
        let keys = content
            .keys
            .as_ref()
            .and_then(|keys| serde_json::from_str::<JsonValue>(keys.json().get()).ok())
            .filter(|keys| {
                keys.get("user_id").and_then(JsonValue::as_str) == Some(user.as_str())
                    && keys.get("device_id").and_then(JsonValue::as_str) == Some(device.as_str())
            });
        let entry =
            list.devices.entry(device).or_insert(RemoteDevice { keys: None, display_name: None });
        if keys.is_some() {
            entry.keys = keys;
        }
        if content.device_display_name.is_some() {
            entry.display_name = content.device_display_name;
        }
    }
    list.stream_id = list.stream_id.max(u64::from(content.stream_id));
    list
}

/// A cross-signing key of `user` with `usage`, or `None` if `json` is not one.
fn own_key(json: &str, user: &UserId, usage: &str) -> Option<JsonValue> {
    let key: JsonValue = serde_json::from_str(json).ok()?;
    let owned = key.get("user_id").and_then(JsonValue::as_str) == Some(user.as_str());
    let usages = key.get("usage").and_then(JsonValue::as_array)?;
    (owned && usages.iter().any(|value| value.as_str() == Some(usage))).then_some(key)
}

/// `user`'s whole device list, fetched from `origin`.
async fn resync(intake: &Intake, origin: &ServerName, user: &UserId) -> Result<RemoteDeviceList> {
    metrics::counter!("tuwunel_federation_device_list_resyncs_total").increment(1);
    let request = get_devices::v1::Request::new(user.to_owned());
    let response = intake
        .client
        .send_with_timeout(origin, request, RESYNC_TIMEOUT)
        .await
        .map_err(|error| Error::internal(format!("fetching the devices of {user}: {error}")))?;
    if response.user_id != user {
        return Err(Error::internal(format!(
            "{origin} answered with the devices of {}",
            response.user_id
        )));
    }
    let mut list = empty();
    list.stream_id = u64::from(response.stream_id);
    list.synced_ms = intake.time.now_ms();
    for device in response.devices {
        let id = device.device_id.to_string();
        let keys =
            serde_json::from_str::<JsonValue>(device.keys.json().get()).ok().filter(|keys| {
                keys.get("user_id").and_then(JsonValue::as_str) == Some(user.as_str())
                    && keys.get("device_id").and_then(JsonValue::as_str) == Some(id.as_str())
            });
        list.devices.insert(id, RemoteDevice { keys, display_name: device.device_display_name });
    }
    list.master_key =
        response.master_key.as_ref().and_then(|key| own_key(key.json().get(), user, "master"));
    list.self_signing_key = response
        .self_signing_key
        .as_ref()
        .and_then(|key| own_key(key.json().get(), user, "self_signing"));
    Ok(list)
}

/// Stores `list` as `user`'s, as a device list change local users see.
async fn store(intake: &Intake, user: &OwnedUserId, list: RemoteDeviceList) -> Result<()> {
    let mut batch = Batch::new();
    REMOTE_DEVICE_LISTS_TABLE.put(&mut batch, &user.to_string(), &Json(list));
    device_lists::commit_change(
        &intake.storage,
        &intake.hub,
        &intake.outbox,
        user,
        batch,
        Change::Unshared,
    )
    .await
}
