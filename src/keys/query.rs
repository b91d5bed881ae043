//! Reading key material as clients receive it: stored key objects with the signatures added
//! later merged in, one-time key counts and unused fallback key types.

use std::{collections::BTreeMap, ops::ControlFlow};

use ruma::{DeviceId, OwnedDeviceId, UserId};
use serde_json::{Value as JsonValue, json};

use super::signatures::single_ed25519_key;
use crate::{
    Result,
    storage::{
        Direction, Read,
        codec::{Json, Prefix},
        keys::{
            CROSS_SIGNING_KEYS_TABLE, DEVICE_KEYS_TABLE, FALLBACK_KEYS_TABLE, KEY_SIGNATURES_TABLE,
            ONE_TIME_KEYS_TABLE,
        },
        users::DEVICES_TABLE,
    },
};

/// Cross-signing key usages, as stored.
pub const MASTER: &str = "master";
pub const SELF_SIGNING: &str = "self_signing";
pub const USER_SIGNING: &str = "user_signing";

/// Adds the stored signatures on `(owner, key id)` by the signers `visible` accepts.
fn merge_signatures(
    reader: &(impl Read + ?Sized),
    object: &mut JsonValue,
    owner: &UserId,
    key_id: &str,
    visible: impl Fn(&str) -> bool,
) -> Result<()> {
    let mut extra = Vec::new();
    KEY_SIGNATURES_TABLE.scan(
        reader,
        &Prefix::of2(owner, key_id),
        None,
        Direction::Forward,
        |(_, _, signer, signer_key), signature| {
            if visible(signer.as_str()) {
                extra.push((signer, signer_key, signature));
            }
            ControlFlow::Continue(())
        },
    )?;
    if extra.is_empty() {
        return Ok(());
    }
    let Some(object) = object.as_object_mut() else { return Ok(()) };
    let signatures = object.entry("signatures").or_insert_with(|| json!({}));
    for (signer, signer_key, signature) in extra {
        if let Some(signatures) = signatures.as_object_mut() {
            let by_signer = signatures.entry(signer.as_str()).or_insert_with(|| json!({}));
            if let Some(by_signer) = by_signer.as_object_mut() {
                by_signer.insert(signer_key, JsonValue::String(signature));
            }
        }
    }
    Ok(())
}

/// The device keys of `owner`'s devices (all of them when `devices` is empty), as `viewer`
/// sees them.
pub fn device_keys(
    reader: &(impl Read + ?Sized),
    owner: &UserId,
    devices: &[OwnedDeviceId],
) -> Result<BTreeMap<OwnedDeviceId, JsonValue>> {
    let mut found = Vec::new();
    if devices.is_empty() {
        DEVICE_KEYS_TABLE.scan(
            reader,
            &Prefix::of(owner),
            None,
            Direction::Forward,
            |(_, device), Json(keys)| {
                found.push((device, keys));
                ControlFlow::Continue(())
            },
        )?;
    } else {
        for device in devices {
            if let Some(Json(keys)) =
                DEVICE_KEYS_TABLE.get(reader, &(owner.to_owned(), device.clone()))?
            {
                found.push((device.clone(), keys));
            }
        }
    }
    let mut result = BTreeMap::new();
    for (device, mut keys) in found {
        merge_signatures(reader, &mut keys, owner, device.as_str(), |signer| {
            signer == owner.as_str()
        })?;
        let display_name = DEVICES_TABLE
            .get(reader, &(owner.to_owned(), device.clone()))?
            .and_then(|Json(record)| record.display_name);
        if let Some(object) = keys.as_object_mut() {
            let unsigned = object.entry("unsigned").or_insert_with(|| json!({}));
            if let (Some(unsigned), Some(name)) = (unsigned.as_object_mut(), display_name) {
                unsigned.insert("device_display_name".to_owned(), JsonValue::String(name));
            }
        }
        result.insert(device, keys);
    }
    Ok(result)
}

/// The stored cross-signing key of `owner` for `usage`, without added signatures.
pub fn stored_cross_signing_key(
    reader: &(impl Read + ?Sized),
    owner: &UserId,
    usage: &str,
) -> Result<Option<JsonValue>> {
    Ok(CROSS_SIGNING_KEYS_TABLE
        .get(reader, &(owner.to_owned(), usage.to_owned()))?
        .map(|Json(key)| key))
}

/// `owner`'s cross-signing key for `usage` as `viewer` sees it: signatures on a master key by
/// other users' user-signing keys are shown only to those users.
pub fn cross_signing_key(
    reader: &(impl Read + ?Sized),
    owner: &UserId,
    usage: &str,
    viewer: &UserId,
) -> Result<Option<JsonValue>> {
    let Some(mut key) = stored_cross_signing_key(reader, owner, usage)? else { return Ok(None) };
    if let Some((_, public)) = single_ed25519_key(&key) {
        merge_signatures(reader, &mut key, owner, &public, |signer| {
            signer == owner.as_str() || signer == viewer.as_str()
        })?;
    }
    Ok(Some(key))
}

/// Unclaimed one-time keys of a device, per algorithm.
pub fn one_time_key_counts(
    reader: &(impl Read + ?Sized),
    user: &UserId,
    device: &DeviceId,
) -> Result<BTreeMap<String, u64>> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    ONE_TIME_KEYS_TABLE.scan_keys(
        reader,
        &Prefix::of2(user, device),
        None,
        Direction::Forward,
        |(_, _, algorithm, _, _)| {
            *counts.entry(algorithm).or_default() += 1;
            ControlFlow::Continue(())
        },
    )?;
    Ok(counts)
}

/// [`one_time_key_counts`] and [`unused_fallback_key_types`] through the coherent cache, for
/// /sync (a device that keeps fifty keys uploaded would otherwise have them all decoded on
/// every sync).
pub fn cached_key_supply(
    storage: &crate::storage::Storage,
    user: &UserId,
    device: &DeviceId,
) -> Result<std::sync::Arc<crate::storage::coherent_cache::KeySupply>> {
    storage.coherent().key_supply.get(&(user.to_owned(), device.to_owned()), || {
        Ok((
            one_time_key_counts(storage.engine(), user, device)?,
            unused_fallback_key_types(storage.engine(), user, device)?,
        ))
    })
}

/// Algorithms for which the device has a fallback key that was not handed out yet.
pub fn unused_fallback_key_types(
    reader: &(impl Read + ?Sized),
    user: &UserId,
    device: &DeviceId,
) -> Result<Vec<String>> {
    let mut types = Vec::new();
    FALLBACK_KEYS_TABLE.scan(
        reader,
        &Prefix::of2(user, device),
        None,
        Direction::Forward,
        |(_, _, algorithm), Json(record)| {
            if !record.used {
                types.push(algorithm);
            }
            ControlFlow::Continue(())
        },
    )?;
    Ok(types)
}
