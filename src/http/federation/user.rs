//! Other servers asking about our users' devices and end-to-end encryption keys:
//! `GET /user/devices/{userId}`, `POST /user/keys/query` and `POST /user/keys/claim`.
//! Device display names are shared with other servers only with
//! `allow_device_name_federation` (off by default, as in Tuwunel).

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    OwnedDeviceId, UInt, UserId,
    api::federation::{
        device::get_devices,
        keys::{claim_keys, get_keys},
    },
    serde::Raw,
};
use serde_json::Value as JsonValue;

use super::Signed;
use crate::{
    Error, Result, Services,
    accounts::UserMessage,
    keys::{
        query::{self, MASTER, SELF_SIGNING},
        store::KeyCommand,
    },
    storage::keys::DEVICE_LIST_LATEST_TABLE,
};

fn to_raw<T>(value: &JsonValue) -> Result<Raw<T>> {
    Ok(Raw::from_json(serde_json::value::to_raw_value(value)?))
}

/// Whether `user` is an account of this server.
fn is_local_account(services: &Services, user: &UserId) -> Result<bool> {
    Ok(user.server_name() == services.config.server_name
        && services.accounts.record(user)?.is_some())
}

/// `user`'s device keys as other servers see them: without device display names unless
/// `allow_device_name_federation`.
fn device_keys(services: &Services, user: &UserId) -> Result<BTreeMap<OwnedDeviceId, JsonValue>> {
    let mut keys = query::device_keys(services.storage.engine(), user, &[])?;
    if services.config.allow_device_name_federation {
        return Ok(keys);
    }
    for object in keys.values_mut() {
        if let Some(unsigned) = object.get_mut("unsigned").and_then(JsonValue::as_object_mut) {
            unsigned.remove("device_display_name");
            if unsigned.is_empty()
                && let Some(object) = object.as_object_mut()
            {
                object.remove("unsigned");
            }
        }
    }
    Ok(keys)
}

pub(super) async fn devices(
    services: Arc<Services>,
    request: Signed<get_devices::v1::Request>,
) -> Result<get_devices::v1::Response> {
    let user = &request.body.user_id;
    if !is_local_account(&services, user)? {
        return Err(Error::not_found(format!("{user} is not a user of this server.")));
    }
    let engine = services.storage.engine();
    let stream_id = DEVICE_LIST_LATEST_TABLE.get(engine, user)?.unwrap_or(0);
    let mut response =
        get_devices::v1::Response::new(user.clone(), UInt::new_saturating(stream_id));
    for (device, keys) in device_keys(&services, user)? {
        let name = keys
            .pointer("/unsigned/device_display_name")
            .and_then(JsonValue::as_str)
            .map(str::to_owned);
        let mut entry = get_devices::v1::UserDevice::new(device, to_raw(&keys)?);
        entry.device_display_name = name;
        response.devices.push(entry);
    }
    if let Some(master) = query::cross_signing_key(engine, user, MASTER, user)? {
        response.master_key = Some(to_raw(&master)?);
    }
    if let Some(self_signing) = query::cross_signing_key(engine, user, SELF_SIGNING, user)? {
        response.self_signing_key = Some(to_raw(&self_signing)?);
    }
    Ok(response)
}

pub(super) async fn keys_query(
    services: Arc<Services>,
    request: Signed<get_keys::v1::Request>,
) -> Result<get_keys::v1::Response> {
    let engine = services.storage.engine();
    let mut response = get_keys::v1::Response::default();
    for (user, devices) in &request.body.device_keys {
        if !is_local_account(&services, user)? {
            continue;
        }
        let mut found = BTreeMap::new();
        for (device, keys) in device_keys(&services, user)? {
            if devices.is_empty() || devices.contains(&device) {
                found.insert(device, to_raw(&keys)?);
            }
        }
        response.device_keys.insert(user.clone(), found);
        if let Some(master) = query::cross_signing_key(engine, user, MASTER, user)? {
            response.master_keys.insert(user.clone(), to_raw(&master)?);
        }
        if let Some(self_signing) = query::cross_signing_key(engine, user, SELF_SIGNING, user)? {
            response.self_signing_keys.insert(user.clone(), to_raw(&self_signing)?);
        }
    }
    Ok(response)
}

pub(super) async fn keys_claim(
    services: Arc<Services>,
    request: Signed<claim_keys::v1::Request>,
) -> Result<claim_keys::v1::Response> {
    let mut claimed_keys = claim_keys::v1::OneTimeKeys::new();
    for (user, wanted) in request.body.one_time_keys {
        if wanted.is_empty() || !is_local_account(&services, &user)? {
            continue;
        }
        let wanted: Vec<(OwnedDeviceId, String)> =
            wanted.into_iter().map(|(device, algorithm)| (device, algorithm.to_string())).collect();
        // The owner's actor hands each key out once, however many claims race.
        let claimed = services
            .accounts
            .call(&user, |reply| UserMessage::Keys(KeyCommand::Claim { wanted, reply }))
            .await?;
        let by_device = claimed_keys.entry(user.clone()).or_default();
        for (device, key_id, key) in claimed {
            let key_id = key_id.as_str().try_into().map_err(|_| {
                Error::internal(format!("stored one-time key id '{key_id}' is invalid"))
            })?;
            by_device.entry(device).or_default().insert(key_id, to_raw(&key)?);
        }
    }
    Ok(claim_keys::v1::Response::new(claimed_keys))
}
