//! Rooms: events, state, membership and the read paths over them. A room's own data is
//! written by its actor ([`actor`]); the global alias and directory rows by [`aliases`].
//! What users do to rooms (create, upgrade, change memberships) are [`Rooms`] operations in
//! [`create`], [`upgrade`] and [`membership`], which the client API and the admin commands
//! both call. The rest reads (and, for the space hierarchy, asks other servers about rooms
//! this server is not in).

pub mod activity;
pub mod actor;
pub mod admin_room;
pub mod aliases;
pub mod auth_chain;
pub mod builder;
pub mod commits;
pub mod content;
pub mod create;
pub mod directory;
pub mod federation;
pub mod filter;
pub mod initial_state;
pub mod membership;
pub mod pdu;
pub mod power_levels;
pub mod relations;
pub mod search;
pub mod spaces;
pub mod state;
pub mod state_res;
pub mod summary;
pub mod timeline;
pub mod typing;
pub mod upgrade;

use std::sync::Arc;

use ruma::events::room::{history_visibility::HistoryVisibility, member::MembershipState};
use ruma::{
    EventId, OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, RoomVersionId, UserId,
    api::error::ErrorKind,
};

pub use self::pdu::Pdu;
use self::{
    actor::{RoomActor, RoomMessage, SendRequest, Sent, Transaction},
    builder::{Position, Template},
};
use crate::{
    Config, Error, Result,
    actors::{ActorSystem, Limits, Registry},
    federation::SigningKey,
    storage::{
        Namespace, Read, Storage,
        codec::Json,
        rooms::{
            EVENT_META_TABLE, EventMeta, MembershipRecord, PDUS_TABLE, ROOM_HEADS_TABLE, RoomHeads,
            RoomRecord, USER_ROOMS_TABLE,
        },
    },
    sync::hub::SyncHub,
    time::Time,
};

/// The record of a room this server knows.
pub fn room(storage: &Storage, room_id: &RoomId) -> Result<Option<RoomRecord>> {
    storage.caches().room(storage.engine(), room_id.as_str())
}

/// The record of a room this server knows; `M_NOT_FOUND` for any other.
pub fn require_room(storage: &Storage, room_id: &RoomId) -> Result<RoomRecord> {
    room(storage, room_id)?.ok_or_else(|| Error::not_found("Unknown room."))
}

/// The state snapshot a room is at now.
pub fn current_snapshot(storage: &Storage, record: &RoomRecord) -> Result<u64> {
    Ok(heads(storage.engine(), record.short)?
        .ok_or_else(|| Error::not_found("Unknown room."))?
        .snapshot)
}

/// The head (current snapshot, extremities) of a room.
pub fn heads(reader: &(impl Read + ?Sized), short: u64) -> Result<Option<RoomHeads>> {
    Ok(ROOM_HEADS_TABLE.get(reader, &short)?.map(|Json(heads)| heads))
}

/// The short id of an event, if this server has it.
pub fn event_short(storage: &Storage, event_id: &EventId) -> Result<Option<u64>> {
    storage.interner().lookup(storage.engine(), Namespace::EventId, event_id.as_bytes())
}

/// The event id of a short event id.
pub fn event_id(storage: &Storage, short: u64) -> Result<Option<OwnedEventId>> {
    Ok(storage
        .interner()
        .resolve(storage.engine(), Namespace::EventId, short)?
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|id| EventId::parse(id).ok()))
}

/// An event by short id.
pub fn pdu(reader: &(impl Read + ?Sized), short: u64) -> Result<Option<Pdu>> {
    match PDUS_TABLE.get(reader, &short)? {
        Some(bytes) => Ok(Some(Pdu::from_bytes(&bytes)?)),
        None => Ok(None),
    }
}

/// An event by short id, shared: through the event cache, which hot readers (/sync) use so
/// that a message read by every member is parsed once. An event that cannot be parsed is
/// reported and reads as absent, so it cannot fail every /sync of the room.
pub fn shared_pdu(storage: &Storage, short: u64) -> Result<Option<Arc<Pdu>>> {
    storage.events().get(short, || {
        Ok(readable_pdu(storage.engine(), short)?.map(|pdu| {
            let size = pdu.memory_size();
            (pdu, size)
        }))
    })
}

/// Like [`pdu`] for readers that list events for a client: an event that cannot be parsed
/// is reported and reads as absent.
pub fn readable_pdu(reader: &(impl Read + ?Sized), short: u64) -> Result<Option<Pdu>> {
    let Some(bytes) = PDUS_TABLE.get(reader, &short)? else {
        return Ok(None);
    };
    match Pdu::from_bytes(&bytes) {
        Ok(pdu) => Ok(Some(pdu)),
        Err(error) => {
            crate::storage::table::report_undecodable(
                PDUS_TABLE.id(),
                &short.to_be_bytes(),
                &error,
            );
            Ok(None)
        }
    }
}

/// An event by id, with its short id.
pub fn pdu_by_id(storage: &Storage, event_id: &EventId) -> Result<Option<(u64, Pdu)>> {
    let Some(short) = event_short(storage, event_id)? else {
        return Ok(None);
    };
    Ok(pdu(storage.engine(), short)?.map(|pdu| (short, pdu)))
}

/// Where an event sits in its room, for readers that answer clients: timeline events (live
/// or backfilled) and outliers, the room's state and auth events known without their place
/// in the DAG (the state a remote join brings is all outliers, and clients must see it;
/// outliers never have a timeline row). Rejected and soft-failed events read as absent, so
/// every client path keeps "not found" for them.
pub fn event_meta(reader: &(impl Read + ?Sized), short: u64) -> Result<Option<EventMeta>> {
    Ok(any_event_meta(reader, short)?.filter(|meta| meta.status.is_client_visible()))
}

/// Like [`event_meta`] for readers that list events for a client: a record that cannot be
/// decoded is reported and reads as absent, so one bad row does not fail the whole list.
pub fn readable_event_meta(reader: &(impl Read + ?Sized), short: u64) -> Result<Option<EventMeta>> {
    Ok(EVENT_META_TABLE
        .get_readable(reader, &short)?
        .map(|Json(meta)| meta)
        .filter(|meta| meta.status.is_client_visible()))
}

/// Where an event sits, whatever its status: for the room's actor and for serving other
/// servers, which deal with the whole DAG.
pub fn any_event_meta(reader: &(impl Read + ?Sized), short: u64) -> Result<Option<EventMeta>> {
    Ok(EVENT_META_TABLE.get(reader, &short)?.map(|Json(meta)| meta))
}

/// `user`'s membership in `room_id`, as recorded for the user.
pub fn membership(
    reader: &(impl Read + ?Sized),
    room_id: &RoomId,
    user: &UserId,
) -> Result<Option<MembershipRecord>> {
    Ok(USER_ROOMS_TABLE
        .get(reader, &(user.to_string(), room_id.to_string()))?
        .map(|Json(record)| record))
}

/// Every room membership `user` has (joined, invited, knocking, left...), by room.
pub fn memberships(
    reader: &(impl Read + ?Sized),
    user: &UserId,
) -> Result<Vec<(OwnedRoomId, MembershipRecord)>> {
    let mut memberships = Vec::new();
    USER_ROOMS_TABLE.scan(
        reader,
        &crate::storage::codec::prefix(&user.as_str()),
        None,
        crate::storage::Direction::Forward,
        |(_, room), Json(record)| {
            if let Ok(room) = RoomId::parse(room) {
                memberships.push((room, record));
            }
            std::ops::ControlFlow::Continue(())
        },
    )?;
    Ok(memberships)
}

/// [`memberships`] through the coherent cache, for readers that run on every /sync.
pub fn cached_memberships(
    storage: &Storage,
    user: &UserId,
) -> Result<Arc<Vec<(OwnedRoomId, MembershipRecord)>>> {
    storage.coherent().memberships.get(&user.to_owned(), || memberships(storage.engine(), user))
}

/// Rooms `user` is currently joined to.
pub fn joined_rooms(reader: &(impl Read + ?Sized), user: &UserId) -> Result<Vec<OwnedRoomId>> {
    Ok(memberships(reader, user)?
        .into_iter()
        .filter(|(_, record)| record.membership == MembershipState::Join)
        .map(|(room, _)| room)
        .collect())
}

/// Whether `user` is currently joined to `room_id`.
pub fn is_joined(reader: &(impl Read + ?Sized), room_id: &RoomId, user: &UserId) -> Result<bool> {
    Ok(membership(reader, room_id, user)?
        .is_some_and(|record| record.membership == MembershipState::Join))
}

/// The state event `(kind, state_key)` at `snapshot`.
pub fn state_event(
    storage: &Storage,
    snapshot: u64,
    kind: &str,
    state_key: &str,
) -> Result<Option<Pdu>> {
    let Some(key) = state::short_key(storage, kind, state_key)? else {
        return Ok(None);
    };
    match state::lookup(storage, snapshot, key)? {
        Some(short) => pdu(storage.engine(), short),
        None => Ok(None),
    }
}

/// Whether the room's history is world-readable at `snapshot`.
pub fn world_readable(storage: &Storage, snapshot: u64) -> Result<bool> {
    let event = state_event(storage, snapshot, "m.room.history_visibility", "")?;
    Ok(content::history_visibility(event.as_ref()) == HistoryVisibility::WorldReadable)
}

/// A state fact that redaction keeps, so it can be cached by event for good.
#[derive(Debug, Clone, Copy)]
pub enum StateFact<'a> {
    /// `history_visibility` of `m.room.history_visibility`.
    HistoryVisibility,
    /// `membership` of the user's `m.room.member`.
    Membership(&'a UserId),
    /// `type` of `m.room.create` (absent for a plain room). Redaction keeps the create
    /// event's content from room version 11; in older rooms it would drop the type, which
    /// no server does to a room's create event.
    CreateType,
    /// `algorithm` of `m.room.encryption`. The room is encrypted if the fact is there at
    /// all: a redacted encryption event (its content removed) still counts, as the empty
    /// algorithm.
    Encryption,
}

/// The history visibility in force at `snapshot` (`shared` without an event, the spec's
/// default), through the state-fact cache.
pub fn history_visibility_at(storage: &Storage, snapshot: u64) -> Result<HistoryVisibility> {
    Ok(state_fact(storage, snapshot, StateFact::HistoryVisibility)?
        .map_or(HistoryVisibility::Shared, |value| HistoryVisibility::from(value.as_str())))
}

/// `user`'s membership at `snapshot` (`None` without a member event), through the
/// state-fact cache.
pub fn membership_at(
    storage: &Storage,
    snapshot: u64,
    user: &UserId,
) -> Result<Option<MembershipState>> {
    Ok(state_fact(storage, snapshot, StateFact::Membership(user))?
        .map(|value| MembershipState::from(value.as_str())))
}

/// The value of `fact` at `snapshot`, without parsing the event once it has been read. The
/// cache keeps the string; [`history_visibility_at`] and [`membership_at`] read it typed.
pub fn state_fact(storage: &Storage, snapshot: u64, fact: StateFact<'_>) -> Result<Option<String>> {
    let (kind, state_key, field) = match fact {
        StateFact::HistoryVisibility => ("m.room.history_visibility", "", "history_visibility"),
        StateFact::Membership(user) => ("m.room.member", user.as_str(), "membership"),
        StateFact::CreateType => ("m.room.create", "", "type"),
        StateFact::Encryption => ("m.room.encryption", "", "algorithm"),
    };
    let present = matches!(fact, StateFact::Encryption);
    let Some(key) = state::short_key(storage, kind, state_key)? else {
        return Ok(None);
    };
    let Some(short) = state::lookup(storage, snapshot, key)? else {
        return Ok(None);
    };
    storage.caches().fact(short, || {
        Ok(pdu(storage.engine(), short)?.and_then(|pdu| match pdu.content_str(field) {
            None if present => Some(String::new()),
            value => value,
        }))
    })
}

/// The last create-event timestamp handed out, in milliseconds.
static LAST_CREATE_TIMESTAMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The timestamp of a new create event: now, or one past the last one handed out if that is
/// not older. A version-12 room's id is the hash of its create event, so one user creating
/// rooms with the same content in the same millisecond got the same id, and all but the
/// first failed with `M_ROOM_IN_USE` (123 of 1,000 creations, 16 at a time, by the load test).
fn create_timestamp(time: &Time) -> ruma::MilliSecondsSinceUnixEpoch {
    use std::sync::atomic::Ordering;
    let now = time.now_ms();
    let previous = LAST_CREATE_TIMESTAMP
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| Some(now.max(last + 1)))
        .unwrap_or_else(|last| last);
    let timestamp = now.max(previous + 1);
    ruma::MilliSecondsSinceUnixEpoch(ruma::UInt::try_from(timestamp).unwrap_or(ruma::UInt::MAX))
}

/// The current state event `(kind, state_key)` of a room.
pub fn current_state_event(
    storage: &Storage,
    room_id: &RoomId,
    kind: &str,
    state_key: &str,
) -> Result<Option<Pdu>> {
    let Some(record) = room(storage, room_id)? else {
        return Ok(None);
    };
    let Some(heads) = heads(storage.engine(), record.short)? else {
        return Ok(None);
    };
    state_event(storage, heads.snapshot, kind, state_key)
}

/// Deletes originals of redacted events kept longer than `retention_seconds` before `now_ms`;
/// returns how many were deleted.
pub async fn purge_unredacted(
    storage: &Storage,
    retention_seconds: u64,
    now_ms: u64,
) -> Result<usize> {
    let cutoff = now_ms.saturating_sub(retention_seconds.saturating_mul(1000));
    let mut expired = Vec::new();
    crate::storage::rooms::UNREDACTED_TABLE.scan(
        storage.engine(),
        b"",
        None,
        crate::storage::Direction::Forward,
        |short, Json(record)| {
            if record.redacted_ms <= cutoff {
                expired.push(short);
            }
            std::ops::ControlFlow::Continue(())
        },
    )?;
    if expired.is_empty() {
        return Ok(0);
    }
    let mut batch = crate::storage::Batch::new();
    for short in &expired {
        crate::storage::rooms::UNREDACTED_TABLE.delete(&mut batch, short);
    }
    storage.writer().commit(batch).await?;
    Ok(expired.len())
}

/// How long a caller waits for a room actor.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long storing a joined room's state may take (a large room's is many thousand
/// events, each checked).
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// The rooms service: the registry of room actors and what creating a room needs.
pub struct Rooms {
    pub actors: Registry<RoomActor>,
    storage: Arc<Storage>,
    key: Arc<SigningKey>,
    server_name: OwnedServerName,
    /// Local aliases and the published room directory.
    pub aliases: Arc<aliases::Aliases>,
    /// Who is typing where (written by room actors).
    pub typing: Arc<typing::Typing>,
    pub hub: Arc<SyncHub>,
    /// Who acts on each commit of a room's events, after it (subscribe at startup).
    pub listeners: Arc<commits::CommitListeners>,
    /// Other servers' answers about their spaces, for the hierarchy walk.
    pub remote_spaces: spaces::RemoteSpaces,
    time: Time,
}

impl Rooms {
    pub async fn start(
        config: &Config,
        storage: Arc<Storage>,
        key: Arc<SigningKey>,
        actors: &ActorSystem,
        hub: Arc<SyncHub>,
        push: Arc<crate::push::pushers::Push>,
        time: Time,
    ) -> Result<Self> {
        let limits = Limits {
            idle_timeout: std::time::Duration::from_secs(config.actor_idle_timeout_s.max(1)),
            mailbox_limit: config.actor_mailbox_limit.max(1),
        };
        let typing = Arc::new(typing::Typing::default());
        // Syncs are woken before pushers deliver, as the room did before it had listeners.
        let listeners = Arc::new(commits::CommitListeners::default());
        listeners.subscribe(Arc::clone(&hub) as Arc<dyn commits::CommitListener>);
        listeners.subscribe(Arc::clone(&push) as Arc<dyn commits::CommitListener>);
        let behaviour = RoomActor {
            storage: Arc::clone(&storage),
            key: Arc::clone(&key),
            server_name: config.server_name.clone(),
            save_unredacted: config.save_unredacted_events,
            hub: Arc::clone(&hub),
            typing: Arc::clone(&typing),
            typing_timeouts: (
                std::time::Duration::from_secs(config.typing_client_timeout_min_s),
                std::time::Duration::from_secs(
                    config.typing_client_timeout_max_s.max(config.typing_client_timeout_min_s),
                ),
            ),
            push,
            listeners: Arc::clone(&listeners),
            time: time.clone(),
            outbox: crate::federation::outbox::Outbox::from_config(config),
        };
        let actors = actors.registry(behaviour, limits).await?;
        let aliases = Arc::new(aliases::Aliases::new(config, Arc::clone(&storage)));
        Ok(Self {
            actors,
            storage,
            key,
            server_name: config.server_name.clone(),
            aliases,
            typing,
            hub,
            listeners,
            remote_spaces: spaces::RemoteSpaces::default(),
            time,
        })
    }

    /// Sends one event to a room through its actor, failing fast for rooms this server does
    /// not know.
    pub async fn send(
        &self,
        room_id: &RoomId,
        template: Template,
        transaction: Option<Transaction>,
    ) -> Result<Sent> {
        room(&self.storage, room_id)?
            .ok_or_else(|| Error::forbidden("You are not a member of this room."))?;
        if let Some(transaction) = &transaction
            && transaction.txn_id.len() > crate::limits::MAX_OPAQUE_ID_BYTES
        {
            return Err(Error::field_too_large(format!(
                "A transaction ID is limited to {} bytes.",
                crate::limits::MAX_OPAQUE_ID_BYTES
            )));
        }
        let request = Box::new(SendRequest { template, transaction });
        self.actors
            .call(&room_id.to_owned(), |reply| RoomMessage::Send { request, reply }, CALL_TIMEOUT)
            .await?
    }

    /// Checks and stores an event another server (`origin`) sent, verified already (format,
    /// signatures, hashes: `federation::events`). Events of rooms this server does not know
    /// are dropped.
    pub async fn ingest(
        &self,
        pdu: Pdu,
        origin: OwnedServerName,
        arrival: actor::Arrival,
    ) -> Result<actor::Ingested> {
        let room_id = pdu.room_id.clone();
        if room(&self.storage, &room_id)?.is_none() {
            return Ok(actor::Ingested::Dropped("Unknown room.".to_owned()));
        }
        let pdu = Box::new(pdu);
        self.actors
            .call(
                &room_id,
                |reply| RoomMessage::Ingest { pdu, origin, arrival, reply },
                CALL_TIMEOUT,
            )
            .await?
    }

    /// Creates a room: builds its create event (which defines the id of a version-12 room),
    /// then has the new room's actor commit it with the events that follow, atomically.
    pub async fn create(
        &self,
        version: RoomVersionId,
        mut create: Template,
        then: Vec<Template>,
    ) -> Result<(OwnedRoomId, Vec<Sent>)> {
        if create.timestamp.is_none() {
            create.timestamp = Some(create_timestamp(&self.time));
        }
        let rules = version.rules().ok_or_else(|| {
            Error::matrix(
                axum::http::StatusCode::BAD_REQUEST,
                ErrorKind::UnsupportedRoomVersion,
                "Unsupported room version.",
            )
        })?;
        let room_id = (!rules.authorization.room_create_event_id_as_room_id)
            .then(|| RoomId::new_v1(&self.server_name));
        let position = Position {
            room_id: room_id.as_deref(),
            prev_events: &[],
            auth_events: Vec::new(),
            depth: 1,
            reference_hash: None,
        };
        let create = builder::build(
            create,
            position,
            &rules,
            &self.key,
            &self.server_name,
            self.time.timestamp(),
        )?;
        let room_id = create.room_id.clone();
        let create = Box::new(create);
        let sent = self
            .actors
            .call(
                &room_id,
                |reply| RoomMessage::Create { create, version, then, reply },
                CALL_TIMEOUT,
            )
            .await??;
        Ok((room_id, sent))
    }

    /// Has the room's actor store what a resident server answered to this server's join
    /// (`federation::join`) and make the join the room's head.
    pub async fn complete_join(&self, joined: actor::JoinedState) -> Result<Sent> {
        let room_id = joined.join.room_id.clone();
        let joined = Box::new(joined);
        self.actors
            .call(&room_id, |reply| RoomMessage::CompleteJoin { joined, reply }, JOIN_TIMEOUT)
            .await?
    }

    /// Marks a left room as forgotten for `user`.
    pub async fn forget(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        let user = user.to_owned();
        self.actors
            .call(&room_id.to_owned(), |reply| RoomMessage::Forget { user, reply }, CALL_TIMEOUT)
            .await?
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn create_timestamps_never_repeat() {
        // A clock that stands still: only the counter keeps them apart.
        let time = crate::time::ManualClock::new().time();
        let stamps: Vec<u64> =
            (0..1000).map(|_| u64::from(super::create_timestamp(&time).get())).collect();
        assert!(stamps.windows(2).all(|pair| pair[0] < pair[1]), "{stamps:?}");
    }

    #[tokio::test]
    async fn client_readers_see_timeline_events_and_outliers_only() {
        use crate::storage::{
            Batch, EngineOptions, Storage,
            codec::Json,
            rooms::{EVENT_META_TABLE, EventMeta, EventStatus},
        };

        let dir = tempfile::tempdir().expect("tempdir");
        let (storage, _) = Storage::open(&EngineOptions::for_path(dir.path())).expect("open");
        let statuses = [
            EventStatus::Timeline,
            EventStatus::SoftFailed,
            EventStatus::Rejected,
            EventStatus::Outlier,
        ];
        let meta = |status| EventMeta {
            room: 1,
            position: 0,
            state_before: 2,
            state_after: 2,
            redacted: false,
            transaction: None,
            has_children: None,
            status,
            backfill: None,
        };
        let mut batch = Batch::new();
        for (short, status) in (1..).zip(statuses) {
            EVENT_META_TABLE.put(&mut batch, &short, &Json(meta(status)));
        }
        storage.writer().commit(batch).await.expect("commit");

        let engine = storage.engine();
        for (short, status) in (1..).zip(statuses) {
            let visible = matches!(status, EventStatus::Timeline | EventStatus::Outlier);
            assert_eq!(super::event_meta(engine, short).expect("read").is_some(), visible);
            assert_eq!(super::readable_event_meta(engine, short).expect("read").is_some(), visible);
            assert_eq!(super::any_event_meta(engine, short).expect("read"), Some(meta(status)));
        }
        storage.close().await;
    }
}
