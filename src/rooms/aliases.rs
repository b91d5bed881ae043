//! Local room aliases and the published room directory's rows: the only writer of the
//! `aliases`, `room_aliases` and `published_rooms` tables, and every reader of them.
//!
//! These rows are global (no room's actor owns them), so changes happen under one lock,
//! [`Aliases::lock`], whose guard every write takes: two requests cannot both take an alias,
//! nor both fill a room's last alias place. The rules that need a room's state (who may
//! add, remove or publish) are [`Rooms`] methods at the end of this file.

use std::{collections::BTreeSet, ops::ControlFlow, sync::Arc};

use axum::http::StatusCode;
use regex::Regex;
use ruma::events::room::member::MembershipState;
use ruma::{
    OwnedRoomAliasId, OwnedRoomId, OwnedServerName, RoomAliasId, RoomId, RoomOrAliasId, UserId,
    api::error::ErrorKind,
    events::{StateEventType, room::canonical_alias::RoomCanonicalAliasEventContent},
};
use serde_json::Value as JsonValue;

use super::{Rooms, builder::Template, power_levels::Powers};
use crate::{
    Config, Error, Result, limits,
    storage::{
        Batch, Direction, Storage,
        codec::{Json, Prefix},
        rooms::{
            ALIASES_TABLE, AliasRecord, PUBLISHED_ROOMS_TABLE, ROOM_ALIASES_TABLE,
            ROOM_MEMBERS_TABLE,
        },
    },
};

/// The server's aliases and directory listing.
pub struct Aliases {
    storage: Arc<Storage>,
    server_name: OwnedServerName,
    /// `forbidden_alias_names`, compiled once (a pattern that does not compile forbids nothing).
    forbidden: Vec<Regex>,
    lock: tokio::sync::Mutex<()>,
}

/// Proof that the caller holds the alias lock: every write takes one.
pub struct AliasLock<'a> {
    _guard: tokio::sync::MutexGuard<'a, ()>,
}

impl Aliases {
    pub fn new(config: &Config, storage: Arc<Storage>) -> Self {
        let forbidden = config
            .forbidden_alias_names
            .iter()
            .filter_map(|pattern| Regex::new(pattern).ok())
            .collect();
        Self {
            storage,
            server_name: config.server_name.clone(),
            forbidden,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Serialises changes to the alias namespace and the directory listing. Held across a
    /// room creation or upgrade, so that its alias check and its alias writes are one step.
    pub async fn lock(&self) -> AliasLock<'_> {
        AliasLock { _guard: self.lock.lock().await }
    }

    /// The answer for an alias this server does not have.
    pub fn unknown(alias: &RoomAliasId) -> Error {
        Error::not_found(format!("Room alias {alias} not found."))
    }

    /// Validates the localpart of a new alias of this server and builds the alias.
    pub fn validate_local(&self, name: &str) -> Result<OwnedRoomAliasId> {
        if name.is_empty() || name.contains(':') || name.contains(char::is_whitespace) {
            return Err(Error::invalid_param(
                "The alias name must be a localpart without ':' or spaces.",
            ));
        }
        let alias = RoomAliasId::parse(format!("#{name}:{}", self.server_name))
            .map_err(|error| Error::invalid_param(format!("Invalid alias: {error}")))?;
        if self.forbidden.iter().any(|pattern| pattern.is_match(name)) {
            return Err(Error::matrix(
                StatusCode::BAD_REQUEST,
                ErrorKind::Exclusive,
                "This alias is reserved on this server.",
            ));
        }
        Ok(alias)
    }

    /// Whether `alias` is one of this server's.
    pub fn is_local(&self, alias: &RoomAliasId) -> bool {
        alias.server_name() == self.server_name
    }

    /// The record of a local alias; `None` for an unknown alias or another server's.
    pub fn resolve(&self, alias: &RoomAliasId) -> Result<Option<AliasRecord>> {
        if !self.is_local(alias) {
            return Ok(None);
        }
        Ok(ALIASES_TABLE.get(self.storage.engine(), &alias.to_string())?.map(|Json(record)| record))
    }

    /// A room id as given, or the room a local alias points to.
    pub fn resolve_room(&self, target: &RoomOrAliasId) -> Result<OwnedRoomId> {
        let alias = match <&RoomId>::try_from(target) {
            Ok(room_id) => return Ok(room_id.to_owned()),
            Err(alias) => alias,
        };
        if !self.is_local(alias) {
            return Err(Error::not_found(
                "Aliases of other servers cannot be resolved without federation.",
            ));
        }
        self.resolve(alias)?
            .map(|record| record.room_id)
            .ok_or_else(|| Error::not_found("No room has this alias."))
    }

    /// The room a local alias points to, with the servers of its joined members (ours
    /// first): what a client's or another server's alias lookup answers. `None` for an
    /// unknown alias.
    pub fn resolve_with_servers(
        &self,
        alias: &RoomAliasId,
    ) -> Result<Option<(OwnedRoomId, Vec<OwnedServerName>)>> {
        let Some(record) = self.resolve(alias)? else {
            return Ok(None);
        };
        let own = self.server_name.clone();
        let mut servers = vec![own.clone()];
        if let Some(room) = super::room(&self.storage, &record.room_id)? {
            let mut others = BTreeSet::new();
            ROOM_MEMBERS_TABLE.scan(
                self.storage.engine(),
                &Prefix::of(&room.short),
                None,
                Direction::Forward,
                |(_, user), Json(member)| {
                    if member.membership == MembershipState::Join
                        && let Ok(user) = UserId::parse(&user)
                        && user.server_name() != own
                    {
                        others.insert(user.server_name().to_owned());
                    }
                    ControlFlow::Continue(())
                },
            )?;
            servers.extend(others);
        }
        Ok(Some((record.room_id, servers)))
    }

    /// Whether a local alias exists.
    pub fn is_taken(&self, alias: &RoomAliasId) -> Result<bool> {
        ALIASES_TABLE.contains(self.storage.engine(), &alias.to_string())
    }

    /// The local aliases of a room, in alias order.
    pub fn room_aliases(&self, room_id: &RoomId) -> Result<Vec<OwnedRoomAliasId>> {
        let mut aliases = Vec::new();
        ROOM_ALIASES_TABLE.scan(
            self.storage.engine(),
            &Prefix::of(room_id.as_str()),
            None,
            Direction::Forward,
            |(_, alias), ()| {
                if let Ok(alias) = RoomAliasId::parse(alias) {
                    aliases.push(alias);
                }
                ControlFlow::Continue(())
            },
        )?;
        Ok(aliases)
    }

    /// How many local aliases a room has, counting no further than `up_to`.
    fn count_room_aliases(&self, room_id: &RoomId, up_to: usize) -> Result<usize> {
        ROOM_ALIASES_TABLE.count(self.storage.engine(), &Prefix::of(room_id.as_str()), up_to)
    }

    /// Adds `alias` for `room_id` to `batch`: the alias row and the room's index row.
    pub fn put(
        &self,
        _: &AliasLock<'_>,
        batch: &mut Batch,
        alias: &RoomAliasId,
        room_id: &RoomId,
        creator: &UserId,
    ) {
        ALIASES_TABLE.put(
            batch,
            &alias.to_string(),
            &Json(AliasRecord { room_id: room_id.to_owned(), creator: creator.to_owned() }),
        );
        ROOM_ALIASES_TABLE.put(batch, &(room_id.to_string(), alias.to_string()), &());
    }

    /// Removes `alias` of `room_id` in `batch`.
    pub fn delete(
        &self,
        _: &AliasLock<'_>,
        batch: &mut Batch,
        alias: &RoomAliasId,
        room_id: &RoomId,
    ) {
        ALIASES_TABLE.delete(batch, &alias.to_string());
        ROOM_ALIASES_TABLE.delete(batch, &(room_id.to_string(), alias.to_string()));
    }

    /// Re-points the local aliases of `old` and its directory listing to `new` (a room
    /// upgrade).
    pub fn move_all(
        &self,
        lock: &AliasLock<'_>,
        batch: &mut Batch,
        old: &RoomId,
        new: &RoomId,
    ) -> Result<()> {
        let engine = self.storage.engine();
        for alias in self.room_aliases(old)? {
            let key = alias.to_string();
            ROOM_ALIASES_TABLE.delete(batch, &(old.to_string(), key.clone()));
            match ALIASES_TABLE.get(engine, &key)? {
                Some(Json(record)) if record.room_id == old => {
                    self.put(lock, batch, &alias, new, &record.creator);
                }
                // A stale index row: the alias went elsewhere (or away) already.
                _ => {}
            }
        }
        if self.is_published(old)? {
            self.publish(lock, batch, old, false);
            self.publish(lock, batch, new, true);
        }
        Ok(())
    }

    /// Whether a room is listed in the published room directory.
    pub fn is_published(&self, room_id: &RoomId) -> Result<bool> {
        PUBLISHED_ROOMS_TABLE.contains(self.storage.engine(), &room_id.to_string())
    }

    /// Lists (or unlists) a room in the published room directory, in `batch`.
    pub fn publish(&self, _: &AliasLock<'_>, batch: &mut Batch, room_id: &RoomId, published: bool) {
        let key = room_id.to_string();
        if published {
            PUBLISHED_ROOMS_TABLE.put(batch, &key, &());
        } else {
            PUBLISHED_ROOMS_TABLE.delete(batch, &key);
        }
    }

    /// Every room in the published room directory, in id order.
    pub fn published(&self) -> Result<Vec<OwnedRoomId>> {
        let mut rooms = Vec::new();
        PUBLISHED_ROOMS_TABLE.scan(
            self.storage.engine(),
            &Prefix::all(),
            None,
            Direction::Forward,
            |room_id, ()| {
                if let Ok(room_id) = RoomId::parse(room_id) {
                    rooms.push(room_id);
                }
                ControlFlow::Continue(())
            },
        )?;
        Ok(rooms)
    }

    /// Checks a client's new `m.room.canonical_alias` content: each alias must be valid, and
    /// a local one must exist and point to the room (other servers' aliases cannot be checked
    /// without asking them: accepted). The error names the field (`alias`, `alt_aliases[1]`).
    /// Values that are not strings are not aliases and are left alone, as they always were.
    pub fn check_canonical_alias(&self, room_id: &RoomId, content: &JsonValue) -> Result<()> {
        let alias = content.get("alias").map(|value| ("alias".to_owned(), value));
        let alt_aliases = content
            .get("alt_aliases")
            .and_then(JsonValue::as_array)
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(index, value)| (format!("alt_aliases[{index}]"), value));
        for (field, value) in alias.into_iter().chain(alt_aliases) {
            let Some(alias) = value.as_str() else { continue };
            let bad = |reason: &str| {
                Error::matrix(
                    StatusCode::BAD_REQUEST,
                    ErrorKind::BadAlias,
                    format!("{field}: {alias:?} {reason}"),
                )
            };
            let parsed = RoomAliasId::parse(alias).map_err(|_| bad("is not a valid alias"))?;
            if !self.is_local(&parsed) {
                continue;
            }
            match self.resolve(&parsed)? {
                Some(record) if record.room_id == room_id => {}
                Some(_) => return Err(bad("is not an alias of this room")),
                None => return Err(bad("does not exist")),
            }
        }
        Ok(())
    }

    /// Writes `batch` (built under `lock`).
    pub async fn commit(&self, _: &AliasLock<'_>, batch: Batch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        self.storage.writer().commit(batch).await?;
        Ok(())
    }
}

/// The rules that need a room's state.
impl Rooms {
    /// Whether `user` is joined to the room and may send `m.room.canonical_alias` there: who
    /// may curate a room's aliases and its place in the directory.
    pub fn may_manage_listing(&self, room_id: &RoomId, user: &UserId) -> Result<bool> {
        let storage = self.storage();
        let Some(record) = super::room(storage, room_id)? else {
            return Ok(false);
        };
        Ok(super::is_joined(storage.engine(), room_id, user)?
            && Powers::load(storage, &record.version, super::current_snapshot(storage, &record)?)?
                .may_send_state(user, &StateEventType::RoomCanonicalAlias))
    }

    /// The local aliases of a room, as `user` may list them: a member, a server admin
    /// (`is_admin`), or anyone when the room is world-readable.
    pub fn visible_aliases(
        &self,
        room_id: &RoomId,
        user: &UserId,
        is_admin: bool,
    ) -> Result<Vec<OwnedRoomAliasId>> {
        let storage = self.storage();
        let not_a_member = || Error::forbidden("You are not a member of this room.");
        let record = super::room(storage, room_id)?.ok_or_else(not_a_member)?;
        let allowed = super::is_joined(storage.engine(), room_id, user)?
            || is_admin
            || super::world_readable(storage, super::current_snapshot(storage, &record)?)?;
        if !allowed {
            return Err(not_a_member());
        }
        self.aliases.room_aliases(room_id)
    }

    /// Gives `room_id` the local alias `alias` (validated by [`Aliases::validate_local`]) on
    /// behalf of `by`, who must be joined to it.
    pub async fn create_alias(
        &self,
        alias: &RoomAliasId,
        room_id: &RoomId,
        by: &UserId,
    ) -> Result<()> {
        let storage = self.storage();
        super::require_room(storage, room_id)?;
        if !super::is_joined(storage.engine(), room_id, by)? {
            return Err(Error::forbidden("You must be joined to a room to give it an alias."));
        }
        let lock = self.aliases.lock().await;
        if self.aliases.is_taken(alias)? {
            return Err(Error::matrix(
                StatusCode::CONFLICT,
                ErrorKind::RoomInUse,
                format!("Room alias {alias} already exists."),
            ));
        }
        // Under the alias lock, so two new aliases cannot both take the last place.
        if self.aliases.count_room_aliases(room_id, limits::MAX_ROOM_ALIASES)?
            >= limits::MAX_ROOM_ALIASES
        {
            return Err(Error::field_too_large(format!(
                "A room can have at most {} aliases on this server; remove one first.",
                limits::MAX_ROOM_ALIASES
            )));
        }
        let mut batch = Batch::new();
        self.aliases.put(&lock, &mut batch, alias, room_id, by);
        self.aliases.commit(&lock, batch).await?;
        tracing::info!(%alias, room = %room_id, user = %by, "created a room alias");
        Ok(())
    }

    /// Removes a local alias on behalf of `by`: its creator, a server admin (`is_admin`) or
    /// a member who may curate the room's listing. The room's canonical alias event forgets
    /// it too, when `by` may change that event.
    pub async fn remove_alias(
        &self,
        alias: &RoomAliasId,
        by: &UserId,
        is_admin: bool,
    ) -> Result<()> {
        let lock = self.aliases.lock().await;
        let Some(record) = self.aliases.resolve(alias)? else {
            return Err(Aliases::unknown(alias));
        };
        let allowed =
            record.creator == by || is_admin || self.may_manage_listing(&record.room_id, by)?;
        if !allowed {
            return Err(Error::forbidden(
                "Only the alias's creator, a server admin or a room moderator may remove it.",
            ));
        }
        let mut batch = Batch::new();
        self.aliases.delete(&lock, &mut batch, alias, &record.room_id);
        self.aliases.commit(&lock, batch).await?;
        tracing::info!(%alias, room = %record.room_id, user = %by, "removed a room alias");
        self.forget_canonical_alias(&record.room_id, alias, by).await?;
        Ok(())
    }

    /// Drops `alias` from the room's `m.room.canonical_alias`, as the user removing the
    /// alias. The alias is gone either way; lacking the power to update the event is not an
    /// error.
    async fn forget_canonical_alias(
        &self,
        room_id: &RoomId,
        alias: &RoomAliasId,
        user: &UserId,
    ) -> Result<()> {
        let Some(event) =
            super::current_state_event(self.storage(), room_id, "m.room.canonical_alias", "")?
        else {
            return Ok(());
        };
        // A content that does not parse names no alias this server could have removed.
        let Ok(content) = event.content_as::<RoomCanonicalAliasEventContent>() else {
            return Ok(());
        };
        let Some(content) = without_alias(content, alias) else {
            return Ok(());
        };
        let template = Template::typed(&user.to_owned(), "", &content)?;
        if let Err(error) = self.send(room_id, template, None).await {
            tracing::debug!(%alias, room = %room_id, %error, "could not update the canonical alias");
        }
        Ok(())
    }

    /// Lists or unlists a room in the published room directory on behalf of `by`: a server
    /// admin (`is_admin`) or a member who may curate the room's listing.
    pub async fn set_published(
        &self,
        room_id: &RoomId,
        by: &UserId,
        is_admin: bool,
        published: bool,
    ) -> Result<()> {
        if !is_admin && !self.may_manage_listing(room_id, by)? {
            return Err(Error::forbidden(
                "Only room members allowed to change the room's canonical alias may list it.",
            ));
        }
        let lock = self.aliases.lock().await;
        let mut batch = Batch::new();
        self.aliases.publish(&lock, &mut batch, room_id, published);
        self.aliases.commit(&lock, batch).await?;
        tracing::info!(room = %room_id, user = %by, publish = published, "changed the room's directory visibility");
        Ok(())
    }
}

/// `content` without `alias` (as its `alias` or among its `alt_aliases`); `None` when it
/// does not name it.
fn without_alias(
    mut content: RoomCanonicalAliasEventContent,
    alias: &RoomAliasId,
) -> Option<RoomCanonicalAliasEventContent> {
    let named = content.alias.as_deref() == Some(alias);
    if named {
        content.alias = None;
    }
    let before = content.alt_aliases.len();
    content.alt_aliases.retain(|other| other != alias);
    (named || content.alt_aliases.len() != before).then_some(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_an_alias_takes_it_out_of_either_field_only_when_named() {
        let content = |value: serde_json::Value| -> RoomCanonicalAliasEventContent {
            serde_json::from_value(value).expect("canonical alias content")
        };
        let json = |content: &RoomCanonicalAliasEventContent| {
            serde_json::to_value(content).expect("serializes")
        };
        let gone = ruma::room_alias_id!("#gone:x");
        let both =
            content(serde_json::json!({"alias": "#gone:x", "alt_aliases": ["#b:x", "#gone:x"]}));
        let edited = without_alias(both, gone).expect("named");
        assert_eq!(json(&edited), serde_json::json!({"alt_aliases": ["#b:x"]}));
        let alt_only = content(serde_json::json!({"alias": "#a:x", "alt_aliases": ["#gone:x"]}));
        let edited = without_alias(alt_only, gone).expect("named");
        assert_eq!(json(&edited), serde_json::json!({"alias": "#a:x"}));
        let other = content(serde_json::json!({"alias": "#a:x", "alt_aliases": ["#b:x"]}));
        assert!(without_alias(other, gone).is_none());
    }
}
