//! The room actor: one per room, the only writer of that room's events, state and
//! memberships. It holds the current state, the forward extremities and the depth; it builds
//! each local event on them, authorises it with the room version's rules against the state
//! before it, and commits the event with all its indexes in one batch before answering.
//! Work per event does not depend on the number of members.
//!
//! One file per part of its work, each an `impl RoomActor` block: `build.rs` (building and
//! authorising an event), `accept.rs` (accepting, committing and what follows a commit),
//! `resolve.rs` (the heads, the state before and after an event, the current state),
//! `intake.rs` (checking and storing other servers' events), `join.rs` (a room joined
//! through another server),
//! `membership.rs` (restricted joins, forgetting, stripped state), `push.rs` (push rules at
//! commit), `receipts.rs` and `typing.rs`.

mod accept;
mod build;
mod federate;
mod intake;
mod join;
mod membership;
mod push;
mod receipts;
mod resolve;
mod typing;

use std::{collections::HashMap, sync::Arc, time::Duration};

pub use intake::{Arrival, Ingested};
pub use join::JoinedState;

use accept::Committed;

use ruma::{
    OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, RoomVersionId,
    room_version_rules::RoomVersionRules,
};

use crate::{
    Error, Result,
    actors::{Behaviour, Context, Reply, contain::contained},
    federation::{SigningKey, outbox::Outbox},
    push::pushers::Push,
    rooms::{
        self, Pdu,
        builder::Template,
        state::{self, StateMap},
        typing::Typing,
    },
    storage::Storage,
    sync::hub::SyncHub,
    time::Time,
};

/// A client's transaction, for idempotent sends.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub device: String,
    pub txn_id: String,
}

/// An event to send, with what the room must check beyond the auth rules.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub template: Template,
    pub transaction: Option<Transaction>,
}

/// A committed event.
#[derive(Debug, Clone)]
pub struct Sent {
    pub event_id: OwnedEventId,
    pub position: u64,
}

pub enum RoomMessage {
    /// Creates the room from its create event and the events that follow it, atomically.
    Create {
        create: Box<Pdu>,
        version: RoomVersionId,
        then: Vec<Template>,
        reply: Reply<Result<Vec<Sent>>>,
    },
    /// Sends one event.
    Send { request: Box<SendRequest>, reply: Reply<Result<Sent>> },
    /// Hides a room the user has left from their room list.
    Forget { user: OwnedUserId, reply: Reply<Result<()>> },
    /// Starts (`Some(timeout)`) or stops a user's typing notification.
    Typing { user: OwnedUserId, timeout: Option<Duration>, reply: Reply<Result<()>> },
    /// A typing notification may have run out (a timer the actor set itself).
    TypingExpired { user: OwnedUserId },
    /// Checks and stores an event another server sent (`origin`), verified already
    /// (format, signatures, hashes).
    Ingest {
        pdu: Box<Pdu>,
        origin: OwnedServerName,
        arrival: Arrival,
        reply: Reply<Result<Ingested>>,
    },
    /// Stores what a resident server answered to this server's join and makes the join
    /// the room's head (the room is created here if it was unknown).
    CompleteJoin { joined: Box<JoinedState>, reply: Reply<Result<Sent>> },
    /// Records a read receipt (`m.read`, `m.read.private`) up to an event.
    Receipt {
        user: OwnedUserId,
        kind: String,
        event_id: OwnedEventId,
        thread: Option<String>,
        reply: Reply<Result<()>>,
    },
}

/// A room's actor: everything it needs from the rest of the server. `Rooms::start` builds it.
pub struct RoomActor {
    pub(in crate::rooms) storage: Arc<Storage>,
    pub(in crate::rooms) key: Arc<SigningKey>,
    pub(in crate::rooms) server_name: OwnedServerName,
    pub(in crate::rooms) save_unredacted: bool,
    pub(in crate::rooms) hub: Arc<SyncHub>,
    pub(in crate::rooms) typing: Arc<Typing>,
    /// Shortest and longest typing notification a client may ask for.
    pub(in crate::rooms) typing_timeouts: (Duration, Duration),
    pub(in crate::rooms) push: Arc<Push>,
    /// Who acts on the room's commits once they are durable (`rooms::commits`).
    pub(in crate::rooms) listeners: Arc<rooms::commits::CommitListeners>,
    /// What the room dates its events, receipts and typing expiries by.
    pub(in crate::rooms) time: Time,
    /// Hands the room's events, typing and receipts to the other servers in it.
    pub(in crate::rooms) outbox: Outbox,
}

/// A room's in-memory state.
pub struct RoomState {
    room: Option<Loaded>,
}

/// A room as its actor holds it: the current state and where the next event goes.
struct Loaded {
    room_id: OwnedRoomId,
    short: u64,
    rules: RoomVersionRules,
    state: StateMap,
    keys: HashMap<(String, String), u64>,
    /// Event ids of the current state events, by short id.
    event_ids: HashMap<u64, OwnedEventId>,
    snapshot: u64,
    chain: u32,
    /// The forward extremities, each with the state after it. Local events build on them.
    heads: Vec<resolve::Head>,
    depth: u64,
    /// Kept from the stored heads so that writing them back does not reset it.
    backfill_seq: u64,
    cache: HashMap<u64, Arc<Pdu>>,
    /// Members' display names as push rules match them, read on first need; a member event
    /// or its redaction drops its user's entry. (A lock only because after-commit work reads
    /// it through a shared reference across awaits; the actor is its only user.)
    display_names: std::sync::Mutex<HashMap<OwnedUserId, String>>,
    /// The joined members as of the last commit, read on first need; a commit that changes a
    /// membership drops it (this actor is the only writer of the room's members).
    joined: std::sync::Mutex<Option<Arc<Vec<OwnedUserId>>>>,
    /// The position of the room's newest bumping event (`rooms::activity`), so a commit
    /// without one writes the room's activity without reading it. (Atomic for the same
    /// reason as the locks above.)
    bump: std::sync::atomic::AtomicU64,
}

impl Loaded {
    /// A room with nothing in it yet, for its creation or a join to fill.
    fn empty(room_id: OwnedRoomId, short: u64, rules: RoomVersionRules) -> Self {
        Self {
            room_id,
            short,
            rules,
            state: StateMap::new(),
            keys: HashMap::new(),
            event_ids: HashMap::new(),
            snapshot: state::EMPTY,
            chain: 0,
            heads: Vec::new(),
            depth: 0,
            backfill_seq: 0,
            cache: HashMap::new(),
            display_names: std::sync::Mutex::default(),
            joined: std::sync::Mutex::default(),
            bump: 0.into(),
        }
    }
}

impl RoomActor {
    /// Answers the caller, then hands what was committed to the listeners (waking syncs,
    /// pushers, the admin hook), so the sender's answer never waits for them.
    async fn answer_then_notify<T>(
        &self,
        room: Option<&Loaded>,
        reply: Reply<Result<T>>,
        result: Result<(T, Option<Committed>)>,
    ) {
        let (answer, committed) = match result {
            Ok((value, committed)) => (Ok(value), committed),
            Err(error) => (Err(error), None),
        };
        let _ = reply.send(answer);
        if let (Some(committed), Some(room)) = (committed, room) {
            self.after_commit(room, committed).await;
        }
    }
}

/// A panic contained while handling a message: the request fails as an internal error.
fn panicked(panic: &str) -> Error {
    Error::internal(format!("the room actor contained a panic: {panic}"))
}

fn unknown_room() -> Error {
    Error::not_found("Unknown room.")
}

impl Behaviour for RoomActor {
    type Key = OwnedRoomId;
    type Message = RoomMessage;
    type State = RoomState;

    const KIND: &'static str = "room";

    async fn start(&self, key: &OwnedRoomId) -> Result<RoomState> {
        Ok(RoomState { room: self.load(key)? })
    }

    fn can_passivate(&self, state: &RoomState) -> bool {
        // Typing notices expire on this actor's timers; a passivated actor would drop them.
        state.room.as_ref().is_none_or(|room| !self.typing.anyone(&room.room_id))
    }

    fn failed(&self, room: &OwnedRoomId) {
        // The timers that would have expired the room's typing notices died with the actor:
        // left alone, those users would show as typing forever, and the room's next actor
        // could never passivate.
        if self.typing.clear(room) {
            self.hub.room_changed(room);
        }
    }

    async fn handle(
        &self,
        context: &Context<Self>,
        message: RoomMessage,
        state: &mut RoomState,
    ) -> Result<()> {
        match message {
            RoomMessage::Create { create, version, then, reply } => {
                let result = contained(self.create(&context.key, state, *create, version, then))
                    .await
                    .unwrap_or_else(|panic| Err(panicked(&panic)));
                if result.is_err() {
                    // Nothing was committed: forget whatever was built in memory.
                    state.room = self.load(&context.key)?;
                }
                let result = result.map(|(answer, committed)| (answer, Some(committed)));
                self.answer_then_notify(state.room.as_ref(), reply, result).await;
            }
            RoomMessage::Send { request, reply } => {
                let result = match state.room.as_mut() {
                    // An event's content reaches ruma (auth rules, push rules): a panic there
                    // fails this request, not the room.
                    Some(room) => contained(self.send(room, *request))
                        .await
                        .unwrap_or_else(|panic| Err(panicked(&panic))),
                    None => Err(unknown_room()),
                };
                if let Err(error) = &result
                    && error.is_internal()
                {
                    // A failed commit (or a panic) may leave memory ahead of the database;
                    // rebuild.
                    state.room = self.load(&context.key)?;
                }
                self.answer_then_notify(state.room.as_ref(), reply, result).await;
            }
            RoomMessage::Ingest { pdu, origin, arrival, reply } => {
                let result = match state.room.as_mut() {
                    Some(room) => contained(self.ingest(room, *pdu, &origin, arrival))
                        .await
                        .unwrap_or_else(|panic| Err(panicked(&panic))),
                    None => Ok((Ingested::Dropped("Unknown room.".to_owned()), None)),
                };
                if result.is_err() {
                    // Memory may be ahead of the database (heads, current state): rebuild.
                    state.room = self.load(&context.key)?;
                }
                self.answer_then_notify(state.room.as_ref(), reply, result).await;
            }
            RoomMessage::CompleteJoin { joined, reply } => {
                let result = contained(self.complete_join(&context.key, state, *joined))
                    .await
                    .unwrap_or_else(|panic| Err(panicked(&panic)));
                if result.is_err() {
                    // The room in memory may be half replaced: rebuild it from what was
                    // committed.
                    state.room = self.load(&context.key)?;
                }
                let result = result.map(|(answer, committed)| (answer, Some(committed)));
                self.answer_then_notify(state.room.as_ref(), reply, result).await;
            }
            RoomMessage::Forget { user, reply } => {
                let _ = reply.send(self.forget(&context.key, &user).await);
            }
            RoomMessage::Typing { user, timeout, reply } => {
                let result = match state.room.as_ref() {
                    Some(room) => self.set_typing(context, room, &user, timeout).await,
                    None => Err(unknown_room()),
                };
                let _ = reply.send(result);
            }
            RoomMessage::TypingExpired { user } => self.typing_expired(&context.key, &user),
            RoomMessage::Receipt { user, kind, event_id, thread, reply } => {
                let result = match state.room.as_ref() {
                    Some(room) => self.receipt(room, &user, kind, &event_id, thread).await,
                    None => Err(unknown_room()),
                };
                let _ = reply.send(result);
            }
        }
        Ok(())
    }
}

impl RoomActor {
    /// Rebuilds a room's state from the database (`None` if the room does not exist).
    fn load(&self, room_id: &RoomId) -> Result<Option<Loaded>> {
        let Some(record) = rooms::room(&self.storage, room_id)? else {
            return Ok(None);
        };
        let heads = rooms::heads(self.storage.engine(), record.short)?
            .ok_or_else(|| Error::internal(format!("room {room_id} has no head")))?;
        let state = state::load(&self.storage, heads.snapshot)?;
        let mut keys = HashMap::with_capacity(state.len());
        let mut event_ids = HashMap::with_capacity(state.len());
        for (short_key, short_event) in &state {
            let pair = state::resolve_key(&self.storage, *short_key)?.ok_or_else(|| {
                Error::internal(format!("state key {short_key} cannot be resolved"))
            })?;
            keys.insert(pair, *short_key);
            let event_id = rooms::event_id(&self.storage, *short_event)?
                .ok_or_else(|| Error::internal(format!("state event {short_event} has no id")))?;
            event_ids.insert(*short_event, event_id);
        }
        let rules = record.version.rules().ok_or_else(|| {
            Error::internal(format!("room {room_id} has unsupported version {}", record.version))
        })?;
        Ok(Some(Loaded {
            room_id: room_id.to_owned(),
            short: record.short,
            rules,
            state,
            keys,
            event_ids,
            snapshot: heads.snapshot,
            chain: heads.snapshot_chain,
            heads: self.load_heads(&heads.extremities)?,
            depth: heads.depth,
            backfill_seq: heads.backfill_seq,
            cache: HashMap::new(),
            display_names: std::sync::Mutex::default(),
            joined: std::sync::Mutex::default(),
            bump: rooms::activity::current(&self.storage, record.short)?.bump.into(),
        }))
    }

    /// Current state event of `room`.
    fn current(&self, room: &Loaded, kind: &str, state_key: &str) -> Result<Option<Arc<Pdu>>> {
        let Some(short) = room
            .keys
            .get(&(kind.to_owned(), state_key.to_owned()))
            .and_then(|key| room.state.get(key))
        else {
            return Ok(None);
        };
        if let Some(pdu) = room.cache.get(short) {
            return Ok(Some(Arc::clone(pdu)));
        }
        Ok(rooms::pdu(self.storage.engine(), *short)?.map(Arc::new))
    }
}
