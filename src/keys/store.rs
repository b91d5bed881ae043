//! Writes to a user's key material, run inside that user's actor so each user's keys change
//! one command at a time: uploads, claims of their one-time keys, cross-signing keys, the
//! signatures they make, and the removal of a device's keys.

use std::{collections::BTreeMap, ops::ControlFlow};

use ruma::{DeviceId, OwnedDeviceId, OwnedUserId, UserId};
use serde_json::Value as JsonValue;

use super::{
    device_lists::{self, Change},
    query::{self, MASTER, SELF_SIGNING, USER_SIGNING},
    signatures::{ed25519_key, same_key, single_ed25519_key, verify},
};
use crate::{
    Error, Result,
    actors::Reply,
    federation::outbox::Outbox,
    limits,
    storage::{
        Batch, Direction, Storage,
        codec::{Json, Prefix},
        keys::{
            CROSS_SIGNING_KEYS_TABLE, DEVICE_KEYS_TABLE, FALLBACK_KEYS_TABLE, FallbackKeyRecord,
            KEY_SIGNATURES_TABLE, ONE_TIME_KEYS_TABLE,
        },
        users::DEVICES_TABLE,
    },
    sync::hub::SyncHub,
};

/// One uploaded one-time or fallback key: `("<algorithm>:<key id>", key object)`.
pub type UploadedKey = (String, JsonValue);

/// A signature the user made on a key, already checked: `(target user, target key id,
/// signer key id, signature)`.
pub type CheckedSignature = (OwnedUserId, String, String, String);

pub enum KeyCommand {
    /// `POST /keys/upload` for one of the user's devices; answers the one-time key counts.
    Upload {
        device: OwnedDeviceId,
        device_keys: Option<JsonValue>,
        one_time_keys: Vec<UploadedKey>,
        fallback_keys: Vec<UploadedKey>,
        reply: Reply<Result<BTreeMap<String, u64>>>,
    },
    /// Hands out one key per `(device, algorithm)`: the oldest one-time key, else the
    /// fallback key. Answers `(device, "<algorithm>:<key id>", key)`.
    Claim {
        wanted: Vec<(OwnedDeviceId, String)>,
        reply: Reply<Result<Vec<(OwnedDeviceId, String, JsonValue)>>>,
    },
    /// `POST /keys/device_signing/upload`; `authenticated` says whether the caller passed
    /// User-Interactive Authentication.
    UploadCrossSigning {
        master: Option<JsonValue>,
        self_signing: Option<JsonValue>,
        user_signing: Option<JsonValue>,
        authenticated: bool,
        reply: Reply<Result<()>>,
    },
    /// Stores signatures this user made (checked by the handler).
    AddSignatures { signatures: Vec<CheckedSignature>, reply: Reply<Result<()>> },
}

/// Whether uploading these cross-signing keys needs User-Interactive Authentication: only
/// when a master key exists and the upload would change any stored key.
pub fn cross_signing_needs_auth(
    storage: &Storage,
    user: &UserId,
    uploads: [(&str, Option<&JsonValue>); 3],
) -> Result<bool> {
    let engine = storage.engine();
    if query::stored_cross_signing_key(engine, user, MASTER)?.is_none() {
        return Ok(false);
    }
    for (usage, upload) in uploads {
        let Some(upload) = upload else { continue };
        match query::stored_cross_signing_key(engine, user, usage)? {
            Some(stored) if same_key(&stored, upload) => {}
            _ => return Ok(true),
        }
    }
    Ok(false)
}

/// Splits `"<algorithm>:<key id>"`.
fn split_key_id(full: &str) -> Result<(&str, &str)> {
    full.split_once(':')
        .filter(|(algorithm, id)| !algorithm.is_empty() && !id.is_empty())
        .ok_or_else(|| {
            Error::invalid_param(format!("'{full}' is not an '<algorithm>:<key id>' key id."))
        })
}

/// Refuses `value` when it takes more than `most` bytes as JSON: `400 M_TOO_LARGE`.
fn check_size(what: &str, value: &JsonValue, most: usize) -> Result<()> {
    if serde_json::to_vec(value)?.len() > most {
        return Err(Error::field_too_large(format!("{what} is limited to {most} bytes.")));
    }
    Ok(())
}

fn invalid_signature(message: impl Into<String>) -> Error {
    Error::custom(axum::http::StatusCode::BAD_REQUEST, "M_INVALID_SIGNATURE", message.into())
}

/// The key material of one user, driven by their actor.
pub struct KeyStore<'a> {
    pub storage: &'a Storage,
    pub hub: &'a SyncHub,
    pub outbox: &'a Outbox,
    pub user: &'a UserId,
}

impl KeyStore<'_> {
    pub async fn handle(&self, command: KeyCommand) {
        match command {
            KeyCommand::Upload { device, device_keys, one_time_keys, fallback_keys, reply } => {
                let _ = reply
                    .send(self.upload(&device, device_keys, one_time_keys, fallback_keys).await);
            }
            KeyCommand::Claim { wanted, reply } => {
                let _ = reply.send(self.claim(wanted).await);
            }
            KeyCommand::UploadCrossSigning {
                master,
                self_signing,
                user_signing,
                authenticated,
                reply,
            } => {
                let _ = reply.send(
                    self.upload_cross_signing(master, self_signing, user_signing, authenticated)
                        .await,
                );
            }
            KeyCommand::AddSignatures { signatures, reply } => {
                let _ = reply.send(self.add_signatures(signatures).await);
            }
        }
    }

    fn check_device_keys(&self, device: &DeviceId, keys: &JsonValue) -> Result<()> {
        if !keys.is_object() {
            return Err(Error::bad_json("device_keys must be an object."));
        }
        if keys.get("user_id").and_then(JsonValue::as_str) != Some(self.user.as_str()) {
            return Err(Error::invalid_param("device_keys.user_id must be the uploading user."));
        }
        if keys.get("device_id").and_then(JsonValue::as_str) != Some(device.as_str()) {
            return Err(Error::invalid_param(
                "device_keys.device_id must be the uploading device.",
            ));
        }
        if !keys.get("algorithms").is_some_and(JsonValue::is_array) {
            return Err(Error::invalid_param("device_keys.algorithms must be a list."));
        }
        let public = ed25519_key(keys, device.as_str()).ok_or_else(|| {
            Error::invalid_param(format!("device_keys.keys lacks 'ed25519:{device}'."))
        })?;
        verify(keys, self.user.as_str(), &format!("ed25519:{device}"), public)
            .map_err(invalid_signature)
    }

    async fn upload(
        &self,
        device: &DeviceId,
        device_keys: Option<JsonValue>,
        one_time_keys: Vec<UploadedKey>,
        fallback_keys: Vec<UploadedKey>,
    ) -> Result<BTreeMap<String, u64>> {
        let engine = self.storage.engine();
        let user = self.user.to_owned();
        let mut batch = Batch::new();
        let mut keys_changed = false;
        for (_, key) in one_time_keys.iter().chain(&fallback_keys) {
            check_size("A one-time or fallback key", key, limits::MAX_ONE_TIME_KEY_BYTES)?;
        }
        if let Some(keys) = device_keys {
            check_size("device_keys", &keys, limits::MAX_DEVICE_KEYS_BYTES)?;
            self.check_device_keys(device, &keys)?;
            let key = (user.clone(), device.to_owned());
            if DEVICE_KEYS_TABLE.get(engine, &key)?.is_none_or(|Json(stored)| stored != keys) {
                DEVICE_KEYS_TABLE.put(&mut batch, &key, &Json(keys));
                keys_changed = true;
            }
        }

        let mut existing: BTreeMap<String, JsonValue> = BTreeMap::new();
        if !one_time_keys.is_empty() {
            ONE_TIME_KEYS_TABLE.scan(
                engine,
                &Prefix::of2(&user, device),
                None,
                Direction::Forward,
                |(_, _, algorithm, _, id), Json(key)| {
                    existing.insert(format!("{algorithm}:{id}"), key);
                    ControlFlow::Continue(())
                },
            )?;
        }
        let mut new_one_time = Vec::new();
        for (full_id, key) in one_time_keys {
            let (algorithm, id) = split_key_id(&full_id)?;
            if !(key.is_object() || key.is_string()) {
                return Err(Error::invalid_param(format!(
                    "One-time key '{full_id}' must be an object or a string."
                )));
            }
            match existing.get(&full_id) {
                Some(stored) if *stored == key => {}
                Some(_) => {
                    return Err(Error::invalid_param(format!(
                        "One-time key '{full_id}' already exists with different content."
                    )));
                }
                None => new_one_time.push((algorithm.to_owned(), id.to_owned(), key)),
            }
        }
        if !new_one_time.is_empty()
            && existing.len() + new_one_time.len() > limits::MAX_ONE_TIME_KEYS
        {
            return Err(Error::user_limit(format!(
                "A device can have at most {} unclaimed one-time keys on the server; it has {}.",
                limits::MAX_ONE_TIME_KEYS,
                existing.len()
            )));
        }

        let mut fallback_algorithms = std::collections::BTreeSet::new();
        let mut stored_algorithms = std::collections::BTreeSet::new();
        if !fallback_keys.is_empty() {
            FALLBACK_KEYS_TABLE.scan_keys(
                engine,
                &Prefix::of2(&user, device),
                None,
                Direction::Forward,
                |(_, _, algorithm)| {
                    stored_algorithms.insert(algorithm);
                    ControlFlow::Continue(())
                },
            )?;
        }
        for (full_id, key) in fallback_keys {
            let (algorithm, id) = split_key_id(&full_id)?;
            if !fallback_algorithms.insert(algorithm.to_owned()) {
                return Err(Error::invalid_param(format!(
                    "More than one fallback key for '{algorithm}'."
                )));
            }
            if !key.is_object() {
                return Err(Error::invalid_param(format!(
                    "Fallback key '{full_id}' must be an object."
                )));
            }
            stored_algorithms.insert(algorithm.to_owned());
            if stored_algorithms.len() > limits::MAX_FALLBACK_KEYS {
                return Err(Error::user_limit(format!(
                    "A device can have fallback keys of at most {} algorithms.",
                    limits::MAX_FALLBACK_KEYS
                )));
            }
            let table_key = (user.clone(), device.to_owned(), algorithm.to_owned());
            let unchanged = FALLBACK_KEYS_TABLE
                .get(engine, &table_key)?
                .is_some_and(|Json(stored)| stored.key_id == id && stored.key == key);
            if !unchanged {
                FALLBACK_KEYS_TABLE.put(
                    &mut batch,
                    &table_key,
                    &Json(FallbackKeyRecord { key_id: id.to_owned(), key, used: false }),
                );
            }
        }

        // One-time keys are handed out in upload order: each upload's keys carry the stream
        // position of its commit.
        let has_new_one_time = !new_one_time.is_empty();
        let _writing = self
            .storage
            .coherent()
            .key_supply
            .begin(vec![(self.user.to_owned(), device.to_owned())]);
        let device_owned = device.to_owned();
        let user_owned = user.clone();
        let add_one_time = move |batch: &mut Batch, position: u64| {
            for (algorithm, id, key) in new_one_time {
                ONE_TIME_KEYS_TABLE.put(
                    batch,
                    &(user_owned.clone(), device_owned.clone(), algorithm, position, id),
                    &Json(key),
                );
            }
        };
        if keys_changed {
            device_lists::commit_change_with(
                self.storage,
                self.hub,
                self.outbox,
                self.user,
                batch,
                Change::Devices(vec![device.to_owned()]),
                add_one_time,
            )
            .await?;
        } else if has_new_one_time {
            self.storage
                .writer()
                .commit_with_positions(1, batch, move |batch, positions| {
                    add_one_time(batch, positions.start)
                })
                .await?;
        } else if !batch.is_empty() {
            self.storage.writer().commit(batch).await?;
        }
        query::one_time_key_counts(engine, self.user, device)
    }

    async fn claim(
        &self,
        wanted: Vec<(OwnedDeviceId, String)>,
    ) -> Result<Vec<(OwnedDeviceId, String, JsonValue)>> {
        let engine = self.storage.engine();
        let user = self.user.to_owned();
        let mut batch = Batch::new();
        let mut claimed = Vec::new();
        for (device, algorithm) in wanted {
            let mut oldest = None;
            ONE_TIME_KEYS_TABLE.scan(
                engine,
                &Prefix::of3(&user, &device, algorithm.as_str()),
                None,
                Direction::Forward,
                |key, Json(value)| {
                    oldest = Some((key, value));
                    ControlFlow::Break(())
                },
            )?;
            if let Some((key, value)) = oldest {
                ONE_TIME_KEYS_TABLE.delete(&mut batch, &key);
                claimed.push((device, format!("{algorithm}:{}", key.4), value));
                continue;
            }
            let fallback_key = (user.clone(), device.clone(), algorithm.clone());
            if let Some(Json(mut fallback)) = FALLBACK_KEYS_TABLE.get(engine, &fallback_key)? {
                claimed.push((
                    device,
                    format!("{algorithm}:{}", fallback.key_id),
                    fallback.key.clone(),
                ));
                if !fallback.used {
                    fallback.used = true;
                    FALLBACK_KEYS_TABLE.put(&mut batch, &fallback_key, &Json(fallback));
                }
            }
        }
        if !batch.is_empty() {
            let devices =
                claimed.iter().map(|(device, ..)| (self.user.to_owned(), device.clone())).collect();
            let _writing = self.storage.coherent().key_supply.begin(devices);
            self.storage.writer().commit(batch).await?;
        }
        Ok(claimed)
    }

    async fn upload_cross_signing(
        &self,
        master: Option<JsonValue>,
        self_signing: Option<JsonValue>,
        user_signing: Option<JsonValue>,
        authenticated: bool,
    ) -> Result<()> {
        let engine = self.storage.engine();
        let uploads = [
            (MASTER, master.as_ref()),
            (SELF_SIGNING, self_signing.as_ref()),
            (USER_SIGNING, user_signing.as_ref()),
        ];
        if !authenticated && cross_signing_needs_auth(self.storage, self.user, uploads)? {
            // The keys changed between the handler's check and now; the client must retry.
            return Err(Error::forbidden(
                "The cross-signing keys changed meanwhile; authenticate and retry.",
            ));
        }
        let mut device_ids = Vec::new();
        DEVICES_TABLE.scan_keys(
            engine,
            &Prefix::of(self.user),
            None,
            Direction::Forward,
            |(_, device)| {
                device_ids.push(device.to_string());
                ControlFlow::Continue(())
            },
        )?;
        for (usage, key) in uploads {
            let Some(key) = key else { continue };
            check_size("A cross-signing key", key, limits::MAX_DEVICE_KEYS_BYTES)?;
            if key.get("user_id").and_then(JsonValue::as_str) != Some(self.user.as_str()) {
                return Err(Error::invalid_param(format!(
                    "The {usage} key must belong to the uploading user."
                )));
            }
            let usages = key.get("usage").and_then(JsonValue::as_array);
            if !usages
                .is_some_and(|usages| usages.iter().any(|value| value.as_str() == Some(usage)))
            {
                return Err(Error::invalid_param(format!(
                    "The {usage} key must list '{usage}' in its usage."
                )));
            }
            let (_, public) = single_ed25519_key(key).ok_or_else(|| {
                Error::invalid_param(format!("The {usage} key must hold exactly one ed25519 key."))
            })?;
            if device_ids.contains(&public) {
                return Err(Error::forbidden(
                    "A cross-signing public key may not equal a device id.",
                ));
            }
        }
        let master_key = match &master {
            Some(master) => Some(master.clone()),
            None => query::stored_cross_signing_key(engine, self.user, MASTER)?,
        };
        if (self_signing.is_some() || user_signing.is_some() || master.is_none())
            && master_key.is_none()
        {
            return Err(Error::missing_param("No master signing key is available."));
        }
        if let Some(master_key) = &master_key {
            let (master_id, master_public) = single_ed25519_key(master_key).ok_or_else(|| {
                Error::invalid_param("The master key must hold exactly one ed25519 key.")
            })?;
            for (usage, key) in [(SELF_SIGNING, &self_signing), (USER_SIGNING, &user_signing)] {
                if let Some(key) = key {
                    verify(key, self.user.as_str(), &master_id, &master_public).map_err(
                        |failure| {
                            invalid_signature(format!(
                                "The {usage} key is not signed by the master key: {failure}"
                            ))
                        },
                    )?;
                }
            }
        }
        let mut batch = Batch::new();
        for (usage, key) in
            [(MASTER, master), (SELF_SIGNING, self_signing), (USER_SIGNING, user_signing)]
        {
            let Some(key) = key else { continue };
            let table_key = (self.user.to_owned(), usage.to_owned());
            if CROSS_SIGNING_KEYS_TABLE
                .get(engine, &table_key)?
                .is_none_or(|Json(stored)| stored != key)
            {
                CROSS_SIGNING_KEYS_TABLE.put(&mut batch, &table_key, &Json(key));
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let change = Change::SigningKeys;
        device_lists::commit_change(self.storage, self.hub, self.outbox, self.user, batch, change)
            .await
    }

    async fn add_signatures(&self, signatures: Vec<CheckedSignature>) -> Result<()> {
        let mut batch = Batch::new();
        // Other servers hear of new signatures on this user's own devices (and keys); a
        // signature on someone else's key is this user's private business.
        let mut own_devices = Vec::new();
        let mut own_keys = false;
        for (target, target_key, _, _) in &signatures {
            if target == self.user {
                let device = OwnedDeviceId::from(target_key.as_str());
                if DEVICES_TABLE
                    .contains(self.storage.engine(), &(target.clone(), device.clone()))?
                {
                    own_devices.push(device);
                } else {
                    own_keys = true;
                }
            }
        }
        own_devices.sort_unstable();
        own_devices.dedup();
        let change = if !own_devices.is_empty() {
            Change::Devices(own_devices)
        } else if own_keys {
            Change::SigningKeys
        } else {
            Change::Unshared
        };
        for (target, target_key, signer_key, signature) in signatures {
            KEY_SIGNATURES_TABLE.put(
                &mut batch,
                &(target, target_key, self.user.to_owned(), signer_key),
                &signature,
            );
        }
        if batch.is_empty() {
            return Ok(());
        }
        // The signer's devices learn of their own new signatures through their device list.
        device_lists::commit_change(self.storage, self.hub, self.outbox, self.user, batch, change)
            .await
    }
}

/// Adds to `batch` the removal of everything keyed to `device`: its identity keys, one-time
/// and fallback keys and the signatures on it.
pub fn remove_device_keys(
    storage: &Storage,
    user: &UserId,
    device: &DeviceId,
    batch: &mut Batch,
) -> Result<bool> {
    let engine = storage.engine();
    let key = (user.to_owned(), device.to_owned());
    let had_keys = DEVICE_KEYS_TABLE.contains(engine, &key)?;
    DEVICE_KEYS_TABLE.delete(batch, &key);
    ONE_TIME_KEYS_TABLE.scan_keys(
        engine,
        &Prefix::of2(user, device),
        None,
        Direction::Forward,
        |key| {
            ONE_TIME_KEYS_TABLE.delete(batch, &key);
            ControlFlow::Continue(())
        },
    )?;
    FALLBACK_KEYS_TABLE.scan_keys(
        engine,
        &Prefix::of2(user, device),
        None,
        Direction::Forward,
        |key| {
            FALLBACK_KEYS_TABLE.delete(batch, &key);
            ControlFlow::Continue(())
        },
    )?;
    KEY_SIGNATURES_TABLE.scan_keys(
        engine,
        &Prefix::of2(user, device.as_str()),
        None,
        Direction::Forward,
        |key| {
            KEY_SIGNATURES_TABLE.delete(batch, &key);
            ControlFlow::Continue(())
        },
    )?;
    Ok(had_keys)
}
