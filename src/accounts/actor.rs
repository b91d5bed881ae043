//! The user actor: one per local user, the only writer of that user's account, devices,
//! tokens (OpenID tokens too), profile, account data and filters, and of the to-device
//! messages the user sends (queued for their recipients in the same batch as the transaction
//! that sent them).
//! Serialising a user's changes here is what makes "exactly one of two concurrent
//! registrations wins", "a deleted device's token is dead at once" and "a retried to-device
//! transaction is delivered once" true without locks.

use std::{sync::Arc, time::Duration};

use ruma::{DeviceId, OwnedDeviceId, OwnedServerName, OwnedUserId};
use serde_json::Value as JsonValue;

use crate::{
    Error, Result,
    accounts::{
        openid,
        to_device::{self, Delivery},
        tokens::{self, TokenCache},
    },
    actors::{Behaviour, Context, Reply},
    federation::outbox::{self, Outbox},
    keys::{
        backup::{BackupCommand, Backups},
        device_lists::{self, Change},
        store::{KeyCommand, KeyStore, remove_device_keys},
    },
    limits,
    push::rules as push_rules,
    rooms::timeline::IGNORED_USER_LIST,
    storage::ephemeral::{TO_DEVICE_TABLE, TO_DEVICE_TRANSACTIONS_TABLE},
    storage::federation::Recipients,
    storage::{
        Batch, Storage,
        account_data::{ACCOUNT_DATA_STREAM_TABLE, ACCOUNT_DATA_TABLE, AccountDataRecord},
        codec::{Json, Key, Prefix},
        users::{
            ACCESS_TOKENS_TABLE, AccessTokenRecord, DEVICES_TABLE, DeviceRecord, FILTERS_TABLE,
            LAST_SEEN_TABLE, LastSeen, PROFILES_TABLE, REFRESH_TOKENS_TABLE, RefreshTokenRecord,
            USERS_TABLE, UserRecord,
        },
    },
    sync::hub::SyncHub,
    time::Time,
};

/// The spec's limit on a whole profile, as JSON.
pub const PROFILE_LIMIT: usize = 64 * 1024;

/// What an account data record stores besides its content: `{"position":N,"content":}`.
const ACCOUNT_DATA_RECORD_OVERHEAD: usize = 36;

/// Tokens handed to a client after login, registration or refresh.
#[derive(Debug, Clone)]
pub struct IssuedSession {
    pub device_id: OwnedDeviceId,
    pub access_token: String,
    pub refresh_token: Option<String>,
    /// Lifetime of the access token (only when a refresh token was issued).
    pub expires_in: Option<Duration>,
}

/// How to open a session.
#[derive(Debug, Clone)]
pub struct SessionRequest {
    pub device_id: Option<OwnedDeviceId>,
    pub display_name: Option<String>,
    /// Issue a refresh token (the client said it supports them).
    pub refresh: bool,
    /// Access token lifetime when refreshing is used.
    pub access_ttl: Duration,
    /// Refresh token lifetime (`None`: until used or the device is removed).
    pub refresh_ttl: Option<Duration>,
    /// The account is a guest account.
    pub guest: bool,
}

/// Which devices to remove.
#[derive(Debug, Clone)]
pub enum Devices {
    One(OwnedDeviceId),
    Many(Vec<OwnedDeviceId>),
    All,
    AllExcept(Option<OwnedDeviceId>),
}

pub enum UserMessage {
    /// Creates the account; `M_USER_IN_USE` if it exists (deactivated accounts included).
    /// `also` is committed in the same batch (server-wide records that go with the account).
    Create {
        record: UserRecord,
        profile: Vec<(String, JsonValue)>,
        also: Batch,
        reply: Reply<Result<()>>,
    },
    OpenSession {
        request: SessionRequest,
        reply: Reply<Result<IssuedSession>>,
    },
    Refresh {
        refresh_hash: String,
        request: SessionRequest,
        reply: Reply<Result<IssuedSession>>,
    },
    /// The access token `access_hash`, minted from `refresh_hash`, was used: that refresh
    /// token is done.
    RetireRefresh {
        access_hash: String,
        refresh_hash: String,
    },
    RemoveDevices {
        devices: Devices,
        reply: Reply<Result<Vec<OwnedDeviceId>>>,
    },
    RenameDevice {
        device_id: OwnedDeviceId,
        display_name: Option<String>,
        reply: Reply<Result<()>>,
    },
    SetPassword {
        hash: Option<String>,
        reply: Reply<Result<()>>,
    },
    SetAdmin {
        admin: bool,
        reply: Reply<Result<()>>,
    },
    Deactivate {
        reply: Reply<Result<()>>,
    },
    /// Sets (`Some`) or removes (`None`) a profile field.
    SetProfileField {
        field: String,
        value: Option<JsonValue>,
        reply: Reply<Result<()>>,
    },
    /// Sets account data for a room (`""`: global); returns the stream position.
    SetAccountData {
        room: String,
        kind: String,
        content: JsonValue,
        reply: Reply<Result<u64>>,
    },
    /// Changes one account data value from what is stored (`None`: nothing yet) here, so
    /// concurrent changes (two tags added at once) never lose each other.
    UpdateAccountData {
        room: String,
        kind: String,
        update: AccountDataUpdate,
        reply: Reply<Result<u64>>,
    },
    /// Persists the latest activity of devices; removed devices are skipped.
    SaveLastSeen {
        seen: Vec<(OwnedDeviceId, LastSeen)>,
        reply: Reply<Result<()>>,
    },
    PutFilter {
        filter_id: String,
        definition: Vec<u8>,
        reply: Reply<Result<()>>,
    },
    /// Sends to-device messages from one of this user's devices, once per transaction:
    /// `transaction` is the `(sender device, transaction key)` the client's retries share,
    /// `deliveries` the messages per recipient, `(recipient, device id, message)`.
    SendToDevice {
        transaction: (OwnedDeviceId, String),
        deliveries: Vec<Delivery>,
        /// `m.direct_to_device` EDUs for other servers' users, one per server.
        remote: Vec<(OwnedServerName, JsonValue)>,
        reply: Reply<Result<()>>,
    },
    /// A device synced past `upto`: its messages up to there can go.
    AckToDevice {
        device: OwnedDeviceId,
        upto: u64,
        reply: Reply<Result<()>>,
    },
    /// End-to-end encryption keys owned by this user.
    Keys(KeyCommand),
    /// Room key backups owned by this user.
    Backup(BackupCommand),
    /// Changes the user's push rules (read, changed and written back here, so concurrent
    /// changes never lose each other).
    UpdatePushRules {
        update: PushRulesUpdate,
        /// The actions as the client wrote them, for the rule the update sets them on.
        written: Option<WrittenActions>,
        reply: Reply<Result<()>>,
    },
    /// Mints an OpenID token valid for `ttl`; replies with the token.
    IssueOpenIdToken {
        ttl: Duration,
        reply: Reply<Result<String>>,
    },
}

/// A rule's actions exactly as a client sent them (ruma's types would drop a highlight
/// tweak's `"value": true`), so they are served back unchanged.
pub struct WrittenActions {
    pub kind: ruma::push::RuleKind,
    pub rule_id: String,
    pub actions: JsonValue,
}

/// A change to a ruleset; fails without writing anything.
pub type PushRulesUpdate = Box<dyn FnOnce(&mut ruma::push::Ruleset) -> Result<()> + Send>;

/// The new content of an account data value, from the stored one; fails without writing.
pub type AccountDataUpdate = Box<dyn FnOnce(Option<JsonValue>) -> Result<JsonValue> + Send>;

/// In-memory state.
pub struct UserState {
    /// The account record (None before registration).
    record: Option<UserRecord>,
    /// The bytes the user's account data takes as stored, measured at the first write after
    /// the actor started and kept up to date by each write (this actor is the only writer).
    account_data_bytes: Option<u64>,
}

pub struct UserActor {
    storage: Arc<Storage>,
    tokens: Arc<TokenCache>,
    hub: Arc<SyncHub>,
    time: Time,
    outbox: Outbox,
}

impl UserActor {
    pub fn new(
        storage: Arc<Storage>,
        tokens: Arc<TokenCache>,
        hub: Arc<SyncHub>,
        time: Time,
        outbox: Outbox,
    ) -> Self {
        Self { storage, tokens, hub, time, outbox }
    }
}

impl Behaviour for UserActor {
    type Key = OwnedUserId;
    type Message = UserMessage;
    type State = UserState;

    const KIND: &'static str = "user";

    async fn start(&self, key: &OwnedUserId) -> Result<UserState> {
        let record = USERS_TABLE.get(self.storage.engine(), key)?.map(|Json(record)| record);
        Ok(UserState { record, account_data_bytes: None })
    }

    async fn handle(
        &self,
        context: &Context<Self>,
        message: UserMessage,
        state: &mut UserState,
    ) -> Result<()> {
        let user = &context.key;
        match message {
            UserMessage::Create { record, profile, also, reply } => {
                let _ = reply.send(self.create(user, state, record, profile, also).await);
            }
            UserMessage::OpenSession { request, reply } => {
                let _ = reply.send(self.open_session(user, state, request, None).await);
            }
            UserMessage::Refresh { refresh_hash, request, reply } => {
                let _ = reply.send(self.refresh(user, state, refresh_hash, request).await);
            }
            UserMessage::RetireRefresh { access_hash, refresh_hash } => {
                self.retire_refresh(user, access_hash, refresh_hash).await?;
            }
            UserMessage::RemoveDevices { devices, reply } => {
                let _ = reply.send(self.remove_devices(user, devices).await);
            }
            UserMessage::RenameDevice { device_id, display_name, reply } => {
                let _ = reply.send(self.rename_device(user, device_id, display_name).await);
            }
            UserMessage::SetPassword { hash, reply } => {
                let result =
                    self.update_record(user, state, |record| record.password_hash = hash).await;
                let _ = reply.send(result);
            }
            UserMessage::SetAdmin { admin, reply } => {
                let result = self.update_record(user, state, |record| record.admin = admin).await;
                let _ = reply.send(result);
            }
            UserMessage::Deactivate { reply } => {
                let _ = reply.send(self.deactivate(user, state).await);
            }
            UserMessage::SetProfileField { field, value, reply } => {
                let _ = reply.send(self.set_profile_field(user, state, field, value).await);
            }
            UserMessage::SetAccountData { room, kind, content, reply } => {
                let _ = reply.send(self.set_account_data(user, state, room, kind, content).await);
            }
            UserMessage::UpdateAccountData { room, kind, update, reply } => {
                let _ = reply.send(self.update_account_data(user, state, room, kind, update).await);
            }
            UserMessage::SaveLastSeen { seen, reply } => {
                let _ = reply.send(self.save_last_seen(user, seen).await);
            }
            UserMessage::PutFilter { filter_id, definition, reply } => {
                let _ = reply.send(self.put_filter(user, filter_id, definition).await);
            }
            UserMessage::SendToDevice { transaction, deliveries, remote, reply } => {
                let _ =
                    reply.send(self.send_to_device(user, transaction, deliveries, remote).await);
            }
            UserMessage::AckToDevice { device, upto, reply } => {
                let _ = reply.send(self.ack_to_device(user, &device, upto).await);
            }
            UserMessage::Keys(command) => {
                let store =
                    KeyStore { storage: &self.storage, hub: &self.hub, outbox: &self.outbox, user };
                store.handle(command).await;
            }
            UserMessage::Backup(command) => {
                Backups { storage: &self.storage, user }.handle(command).await;
            }
            UserMessage::UpdatePushRules { update, written, reply } => {
                let _ = reply.send(self.update_push_rules(user, state, update, written).await);
            }
            UserMessage::IssueOpenIdToken { ttl, reply } => {
                let result = match require_account(state) {
                    Ok(_) => openid::issue(&self.storage, user, ttl, self.time.now_ms()).await,
                    Err(error) => Err(error),
                };
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}

fn require_account(state: &UserState) -> Result<&UserRecord> {
    match &state.record {
        Some(record) if !record.deactivated => Ok(record),
        Some(_) => Err(Error::matrix(
            axum::http::StatusCode::FORBIDDEN,
            ruma::api::error::ErrorKind::UserDeactivated,
            "This account has been deactivated.",
        )),
        None => Err(Error::not_found("No such user.")),
    }
}

impl UserActor {
    async fn create(
        &self,
        user: &OwnedUserId,
        state: &mut UserState,
        record: UserRecord,
        profile: Vec<(String, JsonValue)>,
        also: Batch,
    ) -> Result<()> {
        if state.record.is_some() {
            return Err(Error::matrix(
                axum::http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::UserInUse,
                "That user ID is already taken.",
            ));
        }
        let mut batch = also;
        USERS_TABLE.put(&mut batch, user, &Json(record.clone()));
        for (field, value) in profile {
            PROFILES_TABLE.put(&mut batch, &(user.clone(), field), &serde_json::to_vec(&value)?);
        }
        self.storage.writer().commit(batch).await?;
        state.record = Some(record);
        Ok(())
    }

    async fn update_record(
        &self,
        user: &OwnedUserId,
        state: &mut UserState,
        change: impl FnOnce(&mut UserRecord),
    ) -> Result<()> {
        let mut record = require_account(state)?.clone();
        change(&mut record);
        let mut batch = Batch::new();
        USERS_TABLE.put(&mut batch, user, &Json(record.clone()));
        self.storage.writer().commit(batch).await?;
        state.record = Some(record);
        Ok(())
    }

    /// Writes a new token pair for a device into `batch`; returns what to hand the client
    /// and the hashes it replaces.
    fn mint(
        &self,
        user: &OwnedUserId,
        device_id: &OwnedDeviceId,
        device: &mut DeviceRecord,
        request: &SessionRequest,
        minted_from: Option<String>,
        batch: &mut Batch,
    ) -> (IssuedSession, Vec<String>) {
        let access_token = tokens::generate("at");
        let access_hash = tokens::hash(&access_token);
        let now = self.time.now_ms();
        let (refresh_token, expires_in) = if request.refresh {
            let refresh = tokens::generate("rt");
            let expires_ms =
                request.refresh_ttl.map(|ttl| now.saturating_add(ttl.as_millis() as u64));
            REFRESH_TOKENS_TABLE.put(
                batch,
                &tokens::hash(&refresh),
                &Json(RefreshTokenRecord {
                    user_id: user.clone(),
                    device_id: device_id.clone(),
                    expires_ms,
                }),
            );
            (Some(refresh), Some(request.access_ttl))
        } else {
            (None, None)
        };
        let exchanged = minted_from.clone();
        let record = AccessTokenRecord {
            user_id: user.clone(),
            device_id: device_id.clone(),
            expires_ms: expires_in.map(|ttl| now.saturating_add(ttl.as_millis() as u64)),
            minted_from,
            guest: request.guest,
        };
        ACCESS_TOKENS_TABLE.put(batch, &access_hash, &Json(record));
        let mut replaced = Vec::new();
        if let Some(old) = device.access_token.replace(access_hash) {
            ACCESS_TOKENS_TABLE.delete(batch, &old);
            replaced.push(old);
        }
        let new_refresh_hash = refresh_token.as_deref().map(tokens::hash);
        if let Some(old) = std::mem::replace(&mut device.refresh_token, new_refresh_hash) {
            // A refresh token being exchanged stays valid until the new access token is used.
            if exchanged.as_deref() != Some(old.as_str()) {
                REFRESH_TOKENS_TABLE.delete(batch, &old);
            }
        }
        let session =
            IssuedSession { device_id: device_id.clone(), access_token, refresh_token, expires_in };
        (session, replaced)
    }

    async fn open_session(
        &self,
        user: &OwnedUserId,
        state: &UserState,
        request: SessionRequest,
        minted_from: Option<String>,
    ) -> Result<IssuedSession> {
        require_account(state)?;
        let device_id = match &request.device_id {
            Some(device_id) => device_id.clone(),
            None => loop {
                let candidate: OwnedDeviceId = tokens::generate_device_id().into();
                if !DEVICES_TABLE
                    .contains(self.storage.engine(), &(user.clone(), candidate.clone()))?
                {
                    break candidate;
                }
            },
        };
        let key = (user.clone(), device_id.clone());
        let existing = DEVICES_TABLE.get(self.storage.engine(), &key)?.map(|Json(device)| device);
        let new_device = existing.is_none();
        if new_device
            && DEVICES_TABLE.count(self.storage.engine(), &Prefix::of(user), limits::MAX_DEVICES)?
                >= limits::MAX_DEVICES
        {
            return Err(Error::user_limit(format!(
                "You can have at most {} devices; log out of (or delete) some you no longer use.",
                limits::MAX_DEVICES
            )));
        }
        let mut device = existing.unwrap_or_else(|| DeviceRecord {
            created_ms: self.time.now_ms(),
            ..DeviceRecord::default()
        });
        if request.display_name.is_some() {
            device.display_name.clone_from(&request.display_name);
        }
        let mut batch = Batch::new();
        let (session, replaced) =
            self.mint(user, &device_id, &mut device, &request, minted_from, &mut batch);
        DEVICES_TABLE.put(&mut batch, &key, &Json(device));
        if new_device {
            let change = Change::Devices(vec![device_id.clone()]);
            device_lists::commit_change(
                &self.storage,
                &self.hub,
                &self.outbox,
                user,
                batch,
                change,
            )
            .await?;
        } else {
            self.storage.writer().commit(batch).await?;
        }
        self.tokens.revoke(&replaced);
        Ok(session)
    }

    async fn refresh(
        &self,
        user: &OwnedUserId,
        state: &UserState,
        refresh_hash: String,
        request: SessionRequest,
    ) -> Result<IssuedSession> {
        let unknown = || Error::unknown_token(false, "Unknown or revoked refresh token.");
        let Json(record) =
            REFRESH_TOKENS_TABLE.get(self.storage.engine(), &refresh_hash)?.ok_or_else(unknown)?;
        if &record.user_id != user {
            return Err(unknown());
        }
        if record.expires_ms.is_some_and(|expiry| expiry <= self.time.now_ms()) {
            return Err(Error::unknown_token(true, "The refresh token has expired; log in again."));
        }
        let key = (user.clone(), record.device_id.clone());
        if !DEVICES_TABLE.contains(self.storage.engine(), &key)? {
            return Err(unknown());
        }
        let request = SessionRequest {
            device_id: Some(record.device_id),
            display_name: None,
            refresh: true,
            ..request
        };
        self.open_session(user, state, request, Some(refresh_hash)).await
    }

    async fn retire_refresh(
        &self,
        user: &OwnedUserId,
        access_hash: String,
        refresh_hash: String,
    ) -> Result<()> {
        let Some(Json(mut access)) =
            ACCESS_TOKENS_TABLE.get(self.storage.engine(), &access_hash)?
        else {
            return Ok(());
        };
        if &access.user_id != user || access.minted_from.as_deref() != Some(refresh_hash.as_str()) {
            return Ok(());
        }
        let mut batch = Batch::new();
        let key = (user.clone(), access.device_id.clone());
        let current = DEVICES_TABLE
            .get(self.storage.engine(), &key)?
            .and_then(|Json(device)| device.refresh_token);
        if current.as_deref() != Some(refresh_hash.as_str()) {
            REFRESH_TOKENS_TABLE.delete(&mut batch, &refresh_hash);
        }
        access.minted_from = None;
        ACCESS_TOKENS_TABLE.put(&mut batch, &access_hash, &Json(access));
        self.storage.writer().commit(batch).await?;
        self.tokens.revoke([&access_hash]);
        Ok(())
    }

    async fn remove_devices(
        &self,
        user: &OwnedUserId,
        devices: Devices,
    ) -> Result<Vec<OwnedDeviceId>> {
        let all = || -> Result<Vec<(OwnedDeviceId, DeviceRecord)>> {
            Ok(DEVICES_TABLE
                .collect(
                    self.storage.engine(),
                    &Prefix::of(user),
                    crate::storage::Direction::Forward,
                    usize::MAX,
                )?
                .into_iter()
                .map(|((_, device), Json(record))| (device, record))
                .collect())
        };
        let targets: Vec<(OwnedDeviceId, DeviceRecord)> = match devices {
            Devices::One(device_id) => {
                let record = DEVICES_TABLE
                    .get(self.storage.engine(), &(user.clone(), device_id.clone()))?
                    .ok_or_else(|| Error::not_found("No such device."))?;
                vec![(device_id, record.0)]
            }
            Devices::Many(ids) => {
                let mut found = Vec::new();
                for device_id in ids {
                    if let Some(Json(record)) = DEVICES_TABLE
                        .get(self.storage.engine(), &(user.clone(), device_id.clone()))?
                    {
                        found.push((device_id, record));
                    }
                }
                found
            }
            Devices::All => all()?,
            Devices::AllExcept(keep) => {
                all()?.into_iter().filter(|(id, _)| Some(id) != keep.as_ref()).collect()
            }
        };
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = Batch::new();
        let mut revoked = Vec::new();
        for (device_id, record) in &targets {
            let key = (user.clone(), device_id.clone());
            DEVICES_TABLE.delete(&mut batch, &key);
            LAST_SEEN_TABLE.delete(&mut batch, &key);
            if let Some(access) = &record.access_token {
                ACCESS_TOKENS_TABLE.delete(&mut batch, access);
                revoked.push(access.clone());
            }
            if let Some(refresh) = &record.refresh_token {
                REFRESH_TOKENS_TABLE.delete(&mut batch, refresh);
            }
            remove_device_keys(&self.storage, user, device_id, &mut batch)?;
            self.drop_to_device_queue(user, device_id, &mut batch)?;
        }
        // A device id can come back with a later login: its cached key supply and queue
        // state must not.
        let devices: Vec<_> =
            targets.iter().map(|(device_id, _)| (user.clone(), device_id.clone())).collect();
        let _queued_writing = self.storage.coherent().to_device_queued.begin(devices.clone());
        let _writing = self.storage.coherent().key_supply.begin(devices);
        let change =
            Change::Devices(targets.iter().map(|(device_id, _)| device_id.clone()).collect());
        device_lists::commit_change(&self.storage, &self.hub, &self.outbox, user, batch, change)
            .await?;
        self.tokens.revoke(&revoked);
        Ok(targets.into_iter().map(|(device_id, _)| device_id).collect())
    }

    /// Writes device activity noted in memory. Only for devices that still exist: a device
    /// removed after a request noted its activity must not get its row back, and since this
    /// actor is the one that removes devices, the check cannot race with a removal.
    async fn save_last_seen(
        &self,
        user: &OwnedUserId,
        seen: Vec<(OwnedDeviceId, LastSeen)>,
    ) -> Result<()> {
        let mut batch = Batch::new();
        for (device_id, seen) in seen {
            let key = (user.clone(), device_id);
            if DEVICES_TABLE.contains(self.storage.engine(), &key)? {
                LAST_SEEN_TABLE.put(&mut batch, &key, &Json(seen));
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        self.storage.writer().commit(batch).await
    }

    async fn rename_device(
        &self,
        user: &OwnedUserId,
        device_id: OwnedDeviceId,
        display_name: Option<String>,
    ) -> Result<()> {
        let key = (user.clone(), device_id.clone());
        let Json(mut record) = DEVICES_TABLE
            .get(self.storage.engine(), &key)?
            .ok_or_else(|| Error::not_found("No such device."))?;
        record.display_name = display_name;
        let mut batch = Batch::new();
        DEVICES_TABLE.put(&mut batch, &key, &Json(record));
        // The name travels with the device keys (`unsigned.device_display_name`).
        let change = Change::Devices(vec![device_id.clone()]);
        device_lists::commit_change(&self.storage, &self.hub, &self.outbox, user, batch, change)
            .await
    }

    async fn deactivate(&self, user: &OwnedUserId, state: &mut UserState) -> Result<()> {
        require_account(state)?;
        self.remove_devices(user, Devices::All).await?;
        let mut batch = Batch::new();
        for field in ["displayname", "avatar_url"] {
            PROFILES_TABLE.delete(&mut batch, &(user.clone(), field.to_owned()));
        }
        openid::revoke_all(&self.storage, user, &mut batch)?;
        self.storage.writer().commit(batch).await?;
        self.update_record(user, state, |record| {
            record.deactivated = true;
            record.password_hash = None;
            record.admin = false;
        })
        .await
    }

    /// Sets or removes one profile field, refusing a change that would take the whole
    /// profile over [`PROFILE_LIMIT`]: checked here, where profile writes are serialised, so
    /// two concurrent updates cannot each pass the check against the profile before the other.
    async fn set_profile_field(
        &self,
        user: &OwnedUserId,
        state: &UserState,
        field: String,
        value: Option<JsonValue>,
    ) -> Result<()> {
        require_account(state)?;
        if let Some(value) = &value {
            let mut fields = serde_json::Map::new();
            for ((_, name), bytes) in PROFILES_TABLE.collect(
                self.storage.engine(),
                &Prefix::of(user),
                crate::storage::Direction::Forward,
                usize::MAX,
            )? {
                // A stored field that does not parse counts with its raw size.
                let stored = serde_json::from_slice(&bytes)
                    .unwrap_or_else(|_| JsonValue::String(String::from_utf8_lossy(&bytes).into()));
                fields.insert(name, stored);
            }
            fields.insert(field.clone(), value.clone());
            if serde_json::to_vec(&fields)?.len() > PROFILE_LIMIT {
                return Err(Error::matrix(
                    axum::http::StatusCode::BAD_REQUEST,
                    ruma::api::error::ErrorKind::ProfileTooLarge,
                    "The profile would exceed the 64 KiB limit.",
                ));
            }
        }
        let mut batch = Batch::new();
        let key = (user.clone(), field);
        match value {
            Some(value) => PROFILES_TABLE.put(&mut batch, &key, &serde_json::to_vec(&value)?),
            None => PROFILES_TABLE.delete(&mut batch, &key),
        }
        self.storage.writer().commit(batch).await
    }

    /// Writes one account data value, within the bounds of [`limits`]: its size, the number
    /// of types in its scope (global, or its room) and the user's total. A write that does not
    /// grow the total is always allowed, so a user at a bound can still shrink or tidy up.
    async fn set_account_data(
        &self,
        user: &OwnedUserId,
        state: &mut UserState,
        room: String,
        kind: String,
        content: JsonValue,
    ) -> Result<u64> {
        require_account(state)?;
        let engine = self.storage.engine();
        let content_bytes = serde_json::to_vec(&content)?.len();
        if content_bytes > limits::MAX_ACCOUNT_DATA_BYTES {
            return Err(Error::too_large(format!(
                "An account data value is limited to {} bytes.",
                limits::MAX_ACCOUNT_DATA_BYTES
            )));
        }
        let key = (user.clone(), room.clone(), kind.clone());
        let stored = ACCOUNT_DATA_TABLE.stored_size(engine, &key)?;
        if stored.is_none() {
            let (most, scope) = if room.is_empty() {
                (limits::MAX_GLOBAL_ACCOUNT_DATA_KEYS, "global account data types")
            } else {
                (limits::MAX_ROOM_ACCOUNT_DATA_KEYS, "account data types per room")
            };
            let present =
                ACCOUNT_DATA_TABLE.count(engine, &Prefix::of2(user, room.as_str()), most)?;
            if present >= most {
                return Err(Error::user_limit(format!("You can have at most {most} {scope}.")));
            }
        }
        let total = match state.account_data_bytes {
            Some(total) => total,
            None => ACCOUNT_DATA_TABLE.stored_bytes(engine, &Prefix::of(user))?,
        };
        let previous = stored.unwrap_or(0);
        // The record as stored: the key, the content and the position around it.
        let size = (key.encode().len() + content_bytes + ACCOUNT_DATA_RECORD_OVERHEAD) as u64;
        let after = total.saturating_sub(previous).saturating_add(size);
        if size > previous && after > limits::MAX_ACCOUNT_DATA_TOTAL_BYTES {
            return Err(Error::user_limit(format!(
                "Your account data is limited to {} bytes in all.",
                limits::MAX_ACCOUNT_DATA_TOTAL_BYTES
            )));
        }
        // An unreadable previous record is overwritten; its stream entry stays behind, and
        // readers look up the current record through it.
        let previous =
            ACCOUNT_DATA_TABLE.get_readable(engine, &key)?.map(|Json(record)| record.position);
        let mut batch = Batch::new();
        if let Some(previous) = previous {
            ACCOUNT_DATA_STREAM_TABLE.delete(&mut batch, &(user.clone(), previous));
        }
        let _ignored_writing = (room.is_empty() && kind == IGNORED_USER_LIST)
            .then(|| self.storage.coherent().ignored_users.begin(vec![user.clone()]));
        let user_key = user.clone();
        let positions = self
            .storage
            .writer()
            .commit_with_positions(1, batch, move |batch, positions| {
                let position = positions.start;
                ACCOUNT_DATA_TABLE.put(batch, &key, &Json(AccountDataRecord { position, content }));
                ACCOUNT_DATA_STREAM_TABLE.put(batch, &(user_key, position), &Json((room, kind)));
            })
            .await?;
        state.account_data_bytes = Some(after);
        self.hub.user_changed(user);
        Ok(positions.start)
    }

    /// Stores a filter, unless it is a new one and the user has [`limits::MAX_FILTERS`].
    async fn put_filter(
        &self,
        user: &OwnedUserId,
        filter_id: String,
        definition: Vec<u8>,
    ) -> Result<()> {
        let engine = self.storage.engine();
        let key = (user.clone(), filter_id);
        if !FILTERS_TABLE.contains(engine, &key)?
            && FILTERS_TABLE.count(engine, &Prefix::of(user), limits::MAX_FILTERS)?
                >= limits::MAX_FILTERS
        {
            return Err(Error::user_limit(format!(
                "You can have at most {} filters; reuse one, or give /sync its filter inline.",
                limits::MAX_FILTERS
            )));
        }
        let mut batch = Batch::new();
        FILTERS_TABLE.put(&mut batch, &key, &definition);
        self.storage.writer().commit(batch).await
    }

    /// Reads one account data value, changes it with `update` and writes it back.
    async fn update_account_data(
        &self,
        user: &OwnedUserId,
        state: &mut UserState,
        room: String,
        kind: String,
        update: AccountDataUpdate,
    ) -> Result<u64> {
        require_account(state)?;
        let key = (user.clone(), room.clone(), kind.clone());
        let current = ACCOUNT_DATA_TABLE
            .get_readable(self.storage.engine(), &key)?
            .map(|Json(record)| record.content);
        let content = update(current)?;
        self.set_account_data(user, state, room, kind, content).await
    }

    /// Queues `deliveries` (and hands `remote` to federation) and records `transaction` in
    /// one batch, unless the transaction was recorded before: the check and the write are
    /// both here, in the sender's actor, so two concurrent retries of a transaction deliver
    /// once, and a crash leaves either both or neither.
    async fn send_to_device(
        &self,
        user: &OwnedUserId,
        (device, transaction): (OwnedDeviceId, String),
        deliveries: Vec<Delivery>,
        remote: Vec<(OwnedServerName, JsonValue)>,
    ) -> Result<()> {
        let transaction = (user.clone(), device, transaction);
        if TO_DEVICE_TRANSACTIONS_TABLE.contains(self.storage.engine(), &transaction)? {
            return Ok(());
        }
        let mut batch = Batch::new();
        TO_DEVICE_TRANSACTIONS_TABLE.put(&mut batch, &transaction, &());
        let outbox = self.outbox.clone();
        let extra = remote.len() as u64;
        to_device::deliver(
            &self.storage,
            &self.hub,
            batch,
            deliveries,
            extra,
            move |batch, positions| {
                for ((server, content), position) in remote.into_iter().zip(positions) {
                    let to = Recipients::Server { server: server.to_string() };
                    outbox.put(batch, position, &outbox::edu(to, "m.direct_to_device", content));
                }
            },
        )
        .await
    }

    async fn update_push_rules(
        &self,
        user: &OwnedUserId,
        state: &mut UserState,
        update: PushRulesUpdate,
        written: Option<WrittenActions>,
    ) -> Result<()> {
        let stored = push_rules::stored(&self.storage, user)?;
        let mut ruleset = push_rules::parse(stored.clone(), user);
        update(&mut ruleset)?;
        crate::push::bounds::check(&ruleset)?;
        let mut as_written = stored.unwrap_or_default();
        if let Some(WrittenActions { kind, rule_id, actions }) = written {
            push_rules::remember_actions(&mut as_written, &kind, &rule_id, actions);
        }
        let content = push_rules::content(&ruleset, Some(&as_written))?;
        self.set_account_data(
            user,
            state,
            String::new(),
            push_rules::PUSH_RULES.to_owned(),
            content,
        )
        .await
        .map(drop)
    }

    /// Adds the deletion of a removed device's undelivered to-device messages to `batch`.
    fn drop_to_device_queue(
        &self,
        user: &OwnedUserId,
        device: &DeviceId,
        batch: &mut Batch,
    ) -> Result<()> {
        TO_DEVICE_TABLE.scan_keys(
            self.storage.engine(),
            &Prefix::of2(user, device),
            None,
            crate::storage::Direction::Forward,
            |key| {
                TO_DEVICE_TABLE.delete(batch, &key);
                std::ops::ControlFlow::Continue(())
            },
        )?;
        Ok(())
    }

    /// Deletes the messages a device confirmed by syncing past them.
    async fn ack_to_device(&self, user: &OwnedUserId, device: &DeviceId, upto: u64) -> Result<()> {
        let mut batch = Batch::new();
        TO_DEVICE_TABLE.scan_keys(
            self.storage.engine(),
            &Prefix::of2(user, device),
            None,
            crate::storage::Direction::Forward,
            |key| {
                if key.2 > upto {
                    return std::ops::ControlFlow::Break(());
                }
                TO_DEVICE_TABLE.delete(&mut batch, &key);
                std::ops::ControlFlow::Continue(())
            },
        )?;
        if batch.is_empty() {
            return Ok(());
        }
        // Whether anything is left is found by the next reader.
        let _writing =
            self.storage.coherent().to_device_queued.begin(vec![(user.clone(), device.to_owned())]);
        self.storage.writer().commit(batch).await
    }
}
