//! Server-side room key backups (`/room_keys`): versions with their algorithm and auth data,
//! and the encrypted session keys stored in the current version. Writes run in the owning
//! user's actor, which keeps each version's `count` and `etag` exact.

use std::ops::ControlFlow;

use axum::http::StatusCode;
use ruma::{
    OwnedRoomId, UserId,
    api::error::{ErrorKind, WrongRoomKeysVersionErrorData},
};
use serde_json::Value as JsonValue;

use crate::{
    Error, Result,
    actors::Reply,
    limits,
    storage::{
        Batch, Direction, Read, Storage,
        codec::{Json, Prefix},
        keys::{BACKUP_KEYS_TABLE, BACKUP_VERSIONS_TABLE, BackupVersionRecord},
    },
};

/// `(room id, session id, key data)`.
pub type SessionKey = (OwnedRoomId, String, JsonValue);

/// Which stored keys a deletion removes.
pub enum KeySelection {
    All,
    Room(OwnedRoomId),
    Session(OwnedRoomId, String),
}

pub enum BackupCommand {
    Create {
        algorithm: JsonValue,
        auth_data: JsonValue,
        reply: Reply<Result<String>>,
    },
    Update {
        version: String,
        algorithm: JsonValue,
        auth_data: JsonValue,
        reply: Reply<Result<()>>,
    },
    DeleteVersion {
        version: String,
        reply: Reply<Result<()>>,
    },
    /// Answers `(count, etag)` after the change.
    PutKeys {
        version: String,
        keys: Vec<SessionKey>,
        reply: Reply<Result<(u64, String)>>,
    },
    DeleteKeys {
        version: String,
        selection: KeySelection,
        reply: Reply<Result<(u64, String)>>,
    },
}

fn no_such_version() -> Error {
    Error::not_found("No such backup version.")
}

/// Parses a version id; ids are decimal numbers, anything else names no backup.
pub fn parse_version(version: &str) -> Result<u64> {
    version.parse().map_err(|_| no_such_version())
}

/// The latest version that is not deleted.
pub fn current_version(
    reader: &(impl Read + ?Sized),
    user: &UserId,
) -> Result<Option<(u64, BackupVersionRecord)>> {
    let mut current = None;
    BACKUP_VERSIONS_TABLE.scan(
        reader,
        &Prefix::of(user),
        None,
        Direction::Reverse,
        |(_, version), Json(record)| {
            if record.deleted {
                return ControlFlow::Continue(());
            }
            current = Some((version, record));
            ControlFlow::Break(())
        },
    )?;
    Ok(current)
}

/// A version that exists and is not deleted.
pub fn live_version(
    reader: &(impl Read + ?Sized),
    user: &UserId,
    version: &str,
) -> Result<BackupVersionRecord> {
    let version = parse_version(version)?;
    match BACKUP_VERSIONS_TABLE.get(reader, &(user.to_owned(), version))? {
        Some(Json(record)) if !record.deleted => Ok(record),
        _ => Err(no_such_version()),
    }
}

/// The spec's rule for two keys of the same session: keep the verified one, then the one
/// with the lower first message index, then the one forwarded fewer times; ties keep the
/// stored key.
fn replaces(new: &JsonValue, stored: &JsonValue) -> bool {
    let rank = |key: &JsonValue| {
        (
            key.get("is_verified").and_then(JsonValue::as_bool).unwrap_or(false),
            std::cmp::Reverse(
                key.get("first_message_index").and_then(JsonValue::as_u64).unwrap_or(u64::MAX),
            ),
            std::cmp::Reverse(
                key.get("forwarded_count").and_then(JsonValue::as_u64).unwrap_or(u64::MAX),
            ),
        )
    };
    rank(new) > rank(stored)
}

/// Checks one session's key data has the spec's shape. `session_data` belongs to the
/// backup's algorithm, so only its being an object is checked.
pub fn check_key_data(key: &JsonValue) -> Result<()> {
    let well_formed = key.get("first_message_index").is_some_and(JsonValue::is_u64)
        && key.get("forwarded_count").is_some_and(JsonValue::is_u64)
        && key.get("is_verified").is_some_and(JsonValue::is_boolean)
        && key.get("session_data").is_some_and(JsonValue::is_object);
    if well_formed {
        Ok(())
    } else {
        Err(Error::bad_json(
            "Key data needs first_message_index and forwarded_count (integers), is_verified (a boolean) and session_data (an object).",
        ))
    }
}

/// Refuses a version whose `algorithm` and `auth_data` are larger than
/// [`limits::MAX_BACKUP_VERSION_BYTES`] together.
fn check_version_size(algorithm: &JsonValue, auth_data: &JsonValue) -> Result<()> {
    let size = serde_json::to_vec(algorithm)?.len() + serde_json::to_vec(auth_data)?.len();
    if size > limits::MAX_BACKUP_VERSION_BYTES {
        return Err(Error::too_large(format!(
            "A backup version's algorithm and auth_data are limited to {} bytes.",
            limits::MAX_BACKUP_VERSION_BYTES
        )));
    }
    Ok(())
}

pub struct Backups<'a> {
    pub storage: &'a Storage,
    pub user: &'a UserId,
}

impl Backups<'_> {
    pub async fn handle(&self, command: BackupCommand) {
        match command {
            BackupCommand::Create { algorithm, auth_data, reply } => {
                let _ = reply.send(self.create(algorithm, auth_data).await);
            }
            BackupCommand::Update { version, algorithm, auth_data, reply } => {
                let _ = reply.send(self.update(&version, algorithm, auth_data).await);
            }
            BackupCommand::DeleteVersion { version, reply } => {
                let _ = reply.send(self.delete_version(&version).await);
            }
            BackupCommand::PutKeys { version, keys, reply } => {
                let _ = reply.send(self.put_keys(&version, keys).await);
            }
            BackupCommand::DeleteKeys { version, selection, reply } => {
                let _ = reply.send(self.delete_keys(&version, selection).await);
            }
        }
    }

    async fn create(&self, algorithm: JsonValue, auth_data: JsonValue) -> Result<String> {
        check_version_size(&algorithm, &auth_data)?;
        let engine = self.storage.engine();
        let mut latest = 0;
        BACKUP_VERSIONS_TABLE.scan_keys(
            engine,
            &Prefix::of(self.user),
            None,
            Direction::Reverse,
            |(_, version)| {
                latest = version;
                ControlFlow::Break(())
            },
        )?;
        let mut live = 0;
        let mut deleted = Vec::new();
        BACKUP_VERSIONS_TABLE.scan(
            engine,
            &Prefix::of(self.user),
            None,
            Direction::Forward,
            |key, Json(record)| {
                if record.deleted {
                    deleted.push(key);
                } else {
                    live += 1;
                }
                ControlFlow::Continue(())
            },
        )?;
        if live >= limits::MAX_BACKUP_VERSIONS {
            return Err(Error::user_limit(format!(
                "You can have at most {} key backup versions; delete old ones first.",
                limits::MAX_BACKUP_VERSIONS
            )));
        }
        let version = latest + 1;
        let mut batch = Batch::new();
        // A deleted version's record only kept its number from being used again; the new
        // version's number is higher than all of them.
        for key in &deleted {
            BACKUP_VERSIONS_TABLE.delete(&mut batch, key);
        }
        let record =
            BackupVersionRecord { algorithm, auth_data, count: 0, etag: 0, deleted: false };
        BACKUP_VERSIONS_TABLE.put(&mut batch, &(self.user.to_owned(), version), &Json(record));
        self.storage.writer().commit(batch).await?;
        Ok(version.to_string())
    }

    async fn update(
        &self,
        version: &str,
        algorithm: JsonValue,
        auth_data: JsonValue,
    ) -> Result<()> {
        check_version_size(&algorithm, &auth_data)?;
        let mut record = live_version(self.storage.engine(), self.user, version)?;
        if record.algorithm != algorithm {
            return Err(Error::invalid_param("The algorithm of a backup version cannot change."));
        }
        record.auth_data = auth_data;
        let mut batch = Batch::new();
        BACKUP_VERSIONS_TABLE.put(
            &mut batch,
            &(self.user.to_owned(), parse_version(version)?),
            &Json(record),
        );
        self.storage.writer().commit(batch).await
    }

    async fn delete_version(&self, version: &str) -> Result<()> {
        let number = parse_version(version)?;
        let key = (self.user.to_owned(), number);
        let Some(Json(mut record)) = BACKUP_VERSIONS_TABLE.get(self.storage.engine(), &key)? else {
            return Err(no_such_version());
        };
        if record.deleted {
            return Ok(());
        }
        let mut batch = Batch::new();
        self.remove_keys(number, &KeySelection::All, &mut batch)?;
        record.deleted = true;
        record.count = 0;
        BACKUP_VERSIONS_TABLE.put(&mut batch, &key, &Json(record));
        self.storage.writer().commit(batch).await
    }

    /// Keys may only be added to the current version.
    fn writable_version(&self, version: &str) -> Result<(u64, BackupVersionRecord)> {
        let record = live_version(self.storage.engine(), self.user, version)?;
        let number = parse_version(version)?;
        match current_version(self.storage.engine(), self.user)? {
            Some((current, _)) if current == number => Ok((number, record)),
            current => Err(Error::matrix(
                StatusCode::FORBIDDEN,
                ErrorKind::WrongRoomKeysVersion(WrongRoomKeysVersionErrorData::new(
                    current.map(|(current, _)| current.to_string()).unwrap_or_default(),
                )),
                "That is not the current backup version.",
            )),
        }
    }

    async fn put_keys(&self, version: &str, keys: Vec<SessionKey>) -> Result<(u64, String)> {
        let (number, mut record) = self.writable_version(version)?;
        let engine = self.storage.engine();
        let mut batch = Batch::new();
        let mut changed = false;
        for (room, session, key) in keys {
            check_key_data(&key)?;
            if serde_json::to_vec(&key)?.len() > limits::MAX_BACKUP_SESSION_BYTES {
                return Err(Error::field_too_large(format!(
                    "The key data of one session is limited to {} bytes.",
                    limits::MAX_BACKUP_SESSION_BYTES
                )));
            }
            let table_key = (self.user.to_owned(), number, room, session);
            match BACKUP_KEYS_TABLE.get(engine, &table_key)? {
                Some(Json(stored)) if !replaces(&key, &stored) => continue,
                Some(_) => {}
                None if record.count >= limits::MAX_BACKUP_SESSIONS => {
                    return Err(Error::user_limit(format!(
                        "A key backup version can hold at most {} sessions.",
                        limits::MAX_BACKUP_SESSIONS
                    )));
                }
                None => record.count += 1,
            }
            BACKUP_KEYS_TABLE.put(&mut batch, &table_key, &Json(key));
            changed = true;
        }
        if changed {
            record.etag += 1;
            let answer = (record.count, record.etag.to_string());
            BACKUP_VERSIONS_TABLE.put(&mut batch, &(self.user.to_owned(), number), &Json(record));
            self.storage.writer().commit(batch).await?;
            return Ok(answer);
        }
        Ok((record.count, record.etag.to_string()))
    }

    async fn delete_keys(&self, version: &str, selection: KeySelection) -> Result<(u64, String)> {
        let mut record = live_version(self.storage.engine(), self.user, version)?;
        let number = parse_version(version)?;
        let mut batch = Batch::new();
        let removed = self.remove_keys(number, &selection, &mut batch)?;
        if removed > 0 {
            record.count = record.count.saturating_sub(removed);
            record.etag += 1;
            BACKUP_VERSIONS_TABLE.put(
                &mut batch,
                &(self.user.to_owned(), number),
                &Json(record.clone()),
            );
            self.storage.writer().commit(batch).await?;
        }
        Ok((record.count, record.etag.to_string()))
    }

    /// Adds the deletion of the selected keys to `batch`; answers how many there were.
    fn remove_keys(
        &self,
        version: u64,
        selection: &KeySelection,
        batch: &mut Batch,
    ) -> Result<u64> {
        let user = self.user.to_owned();
        let prefix_key = match selection {
            KeySelection::All => Prefix::of2(&user, &version),
            KeySelection::Room(room) => Prefix::of3(&user, &version, room),
            KeySelection::Session(room, session) => {
                let key = (user.clone(), version, room.clone(), session.clone());
                if !BACKUP_KEYS_TABLE.contains(self.storage.engine(), &key)? {
                    return Ok(0);
                }
                BACKUP_KEYS_TABLE.delete(batch, &key);
                return Ok(1);
            }
        };
        let mut removed = 0;
        BACKUP_KEYS_TABLE.scan_keys(
            self.storage.engine(),
            &prefix_key,
            None,
            Direction::Forward,
            |key| {
                BACKUP_KEYS_TABLE.delete(batch, &key);
                removed += 1;
                ControlFlow::Continue(())
            },
        )?;
        Ok(removed)
    }
}
