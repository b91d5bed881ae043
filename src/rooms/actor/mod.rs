//! The room actor: one per room, the only writer of that room's events, state and
//! memberships. It holds the current state, the forward extremities and the depth; it builds
//! each local event on them, authorises it with the room version's rules against the state
//! before it, and commits the event with all its indexes in one batch before answering.
//! Work per event does not depend on the number of members.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use ruma::{
    CanonicalJsonValue, EventId, Int, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId,
    RoomVersionId, UserId,
    events::{StateEventType, TimelineEventType},
    power_levels::NotificationPowerLevels,
    push::PushConditionPowerLevelsCtx,
    room_version_rules::{RoomPowerLevelsRules, RoomVersionRules},
};
use serde_json::Value as JsonValue;

use crate::{
    Error, Result,
    accounts::now_ms,
    actors::{Behaviour, Context, Reply, contain::contained},
    federation::SigningKey,
    limits,
    push::{
        counts as push_counts,
        evaluate::{Evaluated, Outcome, RoomContext, evaluate, write_notifications},
        pushers::Push,
    },
    rooms::{
        self, Pdu,
        builder::{self, Position, Template},
        pdu::state_key_bytes,
        relations::relation_of,
        search::search_words,
        state::{self, StateMap},
        timeline,
        typing::Typing,
    },
    storage::{
        Batch, Namespace, Storage,
        codec::Json,
        push::UnreadCounts,
        rooms::{
            EVENT_META_TABLE, EVENT_TIMES_TABLE, EventMeta, MembershipRecord, PDUS_TABLE,
            RECEIPT_STREAM_TABLE, RECEIPTS_TABLE, RELATIONS_TABLE, ROOM_HEADS_TABLE,
            ROOM_MEMBERS_TABLE, ROOMS_TABLE, ReceiptRecord, RoomHeads, RoomRecord, SEARCH_TABLE,
            THREADS_TABLE, TIMELINE_TABLE, TRANSACTIONS_TABLE, UNREDACTED_TABLE, USER_ROOMS_TABLE,
            UnredactedRecord,
        },
        shortid::Interner,
    },
    sync::hub::SyncHub,
};

/// Most forward extremities a new event references.
const MAX_PREV_EVENTS: usize = 20;
/// State events kept parsed in memory per room.
const STATE_CACHE: usize = 64;

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
    /// Records a read receipt (`m.read`, `m.read.private`) up to an event.
    Receipt {
        user: OwnedUserId,
        kind: String,
        event_id: OwnedEventId,
        thread: Option<String>,
        reply: Reply<Result<()>>,
    },
}

/// Everything a room actor needs from the rest of the server.
pub struct RoomActor {
    storage: Arc<Storage>,
    key: Arc<SigningKey>,
    server_name: ruma::OwnedServerName,
    save_unredacted: bool,
    hub: Arc<SyncHub>,
    typing: Arc<Typing>,
    typing_timeouts: (Duration, Duration),
    push: Arc<Push>,
}

/// What room actors are built from.
pub struct RoomDeps {
    pub storage: Arc<Storage>,
    pub key: Arc<SigningKey>,
    pub server_name: ruma::OwnedServerName,
    pub save_unredacted: bool,
    pub hub: Arc<SyncHub>,
    pub typing: Arc<Typing>,
    /// Shortest and longest typing notification a client may ask for.
    pub typing_timeouts: (Duration, Duration),
    pub push: Arc<Push>,
}

impl RoomActor {
    pub fn new(deps: RoomDeps) -> Self {
        let RoomDeps {
            storage,
            key,
            server_name,
            save_unredacted,
            hub,
            typing,
            typing_timeouts,
            push,
        } = deps;
        Self { storage, key, server_name, save_unredacted, hub, typing, typing_timeouts, push }
    }
}

/// A room's in-memory state.
pub struct RoomState {
    room: Option<Loaded>,
}

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
    extremities: Vec<OwnedEventId>,
    depth: u64,
    cache: HashMap<u64, Arc<Pdu>>,
    /// Members' display names as push rules match them, read on first need; a member event
    /// or its redaction drops its user's entry. (A lock only because after-commit work reads
    /// it through a shared reference across awaits; the actor is its only user.)
    display_names: std::sync::Mutex<HashMap<OwnedUserId, String>>,
    /// The joined members as of the last commit, read on first need; a commit that changes a
    /// membership drops it (this actor is the only writer of the room's members).
    joined: std::sync::Mutex<Option<Arc<Vec<OwnedUserId>>>>,
}

/// An event accepted but not yet committed, with the rows that need its stream position.
struct Prepared {
    pdu: Arc<Pdu>,
    short: u64,
    meta_before: u64,
    meta_after: u64,
    membership: Option<(OwnedUserId, MembershipRecord)>,
    relation: Option<(u64, String)>,
    thread_root_previous: Option<u64>,
    words: Vec<String>,
    transaction: Option<(String, String, String)>,
}

/// What a commit leaves for after the reply: waking syncs and pushers.
struct Committed {
    /// Users whose membership changed.
    members: Vec<OwnedUserId>,
    /// Local users the events notified (their pushers have work).
    notified: Vec<OwnedUserId>,
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
                let (answer, committed) = match result {
                    Ok((sent, committed)) => (Ok(sent), Some(committed)),
                    Err(error) => (Err(error), None),
                };
                let _ = reply.send(answer);
                if let (Some(committed), Some(room)) = (committed, state.room.as_ref()) {
                    self.after_commit(room, committed).await;
                }
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
                    && matches!(error, Error::Internal(_))
                {
                    // A failed commit (or a panic) may leave memory ahead of the database;
                    // rebuild.
                    state.room = self.load(&context.key)?;
                }
                let (answer, committed) = match result {
                    Ok((sent, committed)) => (Ok(sent), committed),
                    Err(error) => (Err(error), None),
                };
                // The sender has its answer; notifications and waking syncs come after.
                let _ = reply.send(answer);
                if let (Some(committed), Some(room)) = (committed, state.room.as_ref()) {
                    self.after_commit(room, committed).await;
                }
            }
            RoomMessage::Forget { user, reply } => {
                let _ = reply.send(self.forget(&context.key, &user).await);
            }
            RoomMessage::Typing { user, timeout, reply } => {
                let result = match state.room.as_ref() {
                    Some(room) => self.set_typing(context, room, &user, timeout),
                    None => Err(unknown_room()),
                };
                let _ = reply.send(result);
            }
            RoomMessage::TypingExpired { user } => {
                if self.typing.expire(&context.key, &user, Instant::now()) {
                    self.hub.room_changed(&context.key);
                }
            }
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
    /// Marks a left room as forgotten for `user`.
    async fn forget(&self, room_id: &RoomId, user: &UserId) -> Result<()> {
        let key = (user.to_string(), room_id.to_string());
        let Some(Json(mut record)) = USER_ROOMS_TABLE.get(self.storage.engine(), &key)? else {
            return Err(Error::not_found("You have never been in this room."));
        };
        if matches!(record.membership.as_str(), "join" | "invite" | "knock") {
            return Err(Error::matrix(
                axum::http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::Unknown,
                "Leave the room before forgetting it.",
            ));
        }
        record.forgotten = true;
        let mut batch = Batch::new();
        USER_ROOMS_TABLE.put(&mut batch, &key, &Json(record));
        let _writing = self.storage.coherent().memberships.begin(vec![user.to_owned()]);
        self.storage.writer().commit(batch).await
    }

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
            extremities: heads.extremities,
            depth: heads.depth,
            cache: HashMap::new(),
            display_names: std::sync::Mutex::default(),
            joined: std::sync::Mutex::default(),
        }))
    }

    async fn create(
        &self,
        room_id: &OwnedRoomId,
        state: &mut RoomState,
        create: Pdu,
        version: RoomVersionId,
        then: Vec<Template>,
    ) -> Result<(Vec<Sent>, Committed)> {
        if state.room.is_some() || rooms::room(&self.storage, room_id)?.is_some() {
            return Err(Error::matrix(
                axum::http::StatusCode::BAD_REQUEST,
                ruma::api::error::ErrorKind::RoomInUse,
                "A room with this id already exists.",
            ));
        }
        let rules = version.rules().ok_or_else(|| Error::internal("unsupported room version"))?;
        let short = self
            .storage
            .interner()
            .intern(&self.storage, Namespace::RoomId, room_id.as_bytes())
            .await?;
        let mut batch = Batch::new();
        ROOMS_TABLE.put(
            &mut batch,
            &room_id.to_string(),
            &Json(RoomRecord {
                short,
                version: version.clone(),
                creator: create.sender.clone(),
                created_ms: now_ms(),
            }),
        );
        let mut room = Loaded {
            room_id: room_id.clone(),
            short,
            rules,
            state: StateMap::new(),
            keys: HashMap::new(),
            event_ids: HashMap::new(),
            snapshot: state::EMPTY,
            chain: 0,
            extremities: Vec::new(),
            depth: 0,
            cache: HashMap::new(),
            display_names: std::sync::Mutex::default(),
            joined: std::sync::Mutex::default(),
        };
        let mut prepared = Vec::with_capacity(then.len() + 1);
        let mut pending: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
        let create = Arc::new(create);
        self.check(&room, &create, &pending)?;
        prepared.push(self.accept(&mut room, Arc::clone(&create), None, &mut batch).await?);
        pending.insert(create.event_id.clone(), create);
        for template in then {
            let pdu = Arc::new(self.build(&room, template)?);
            self.check(&room, &pdu, &pending)?;
            prepared.push(self.accept(&mut room, Arc::clone(&pdu), None, &mut batch).await?);
            pending.insert(pdu.event_id.clone(), pdu);
        }
        let committed = self.commit(&room, prepared, batch).await?;
        state.room = Some(room);
        Ok(committed)
    }

    async fn send(
        &self,
        room: &mut Loaded,
        request: SendRequest,
    ) -> Result<(Sent, Option<Committed>)> {
        let SendRequest { template, transaction } = request;
        if let Some(transaction) = &transaction {
            let key = (
                template.sender.to_string(),
                transaction.device.clone(),
                room.room_id.to_string(),
                transaction.txn_id.clone(),
            );
            if let Some(event_id) = TRANSACTIONS_TABLE.get(self.storage.engine(), &key)? {
                let event_id = EventId::parse(event_id)
                    .map_err(|_| Error::internal("stored transaction event id"))?;
                let position = rooms::event_short(&self.storage, &event_id)?
                    .and_then(|short| {
                        rooms::event_meta(self.storage.engine(), short).ok().flatten()
                    })
                    .map_or(0, |meta| meta.position);
                return Ok((Sent { event_id, position }, None));
            }
        }
        let template = self.complete_membership(room, template)?;
        let redaction_target = match (&template.kind, &template.redacts) {
            (TimelineEventType::RoomRedaction, Some(target)) => {
                self.check_redaction(room, &template.sender, target)?
            }
            _ => None,
        };
        let pdu = Arc::new(self.build(room, template)?);
        self.check(room, &pdu, &HashMap::new())?;
        let mut batch = Batch::new();
        let transaction = transaction
            .map(|transaction| (pdu.sender.to_string(), transaction.device, transaction.txn_id));
        let prepared = self.accept(room, Arc::clone(&pdu), transaction, &mut batch).await?;
        let mut rewritten = Vec::new();
        if let Some((target_short, target)) = redaction_target {
            self.apply_redaction(room, target_short, &target, &pdu, &mut batch)?;
            // A redacted current state event is read from storage from now on: auth checks
            // and push rules must see what the redaction left of it.
            room.cache.remove(&target_short);
            rewritten.push(target_short);
        }
        // Readers of the redacted event go to storage until the commit is done.
        let _rewriting = self.storage.events().rewriting(rewritten);
        let (mut sent, committed) = self.commit(room, vec![prepared], batch).await?;
        let sent = sent.pop().ok_or_else(|| Error::internal("commit returned no event"))?;
        Ok((sent, Some(committed)))
    }

    /// Builds an event on the current state of `room`.
    fn build(&self, room: &Loaded, template: Template) -> Result<Pdu> {
        let content = serde_json::value::to_raw_value(&template.content)?;
        let auth_types = ruma::state_res::auth_types_for_event(
            &template.kind,
            &template.sender,
            template.state_key.as_deref(),
            &content,
            &room.rules.authorization,
        )
        .map_err(|error| Error::bad_json(format!("Invalid event content: {error}")))?;
        let mut auth_events = Vec::new();
        for (kind, state_key) in auth_types {
            if let Some(short) =
                room.keys.get(&(kind.to_string(), state_key)).and_then(|key| room.state.get(key))
                && let Some(event_id) = room.event_ids.get(short)
                && !auth_events.contains(event_id)
            {
                auth_events.push(event_id.clone());
            }
        }
        let prev: Vec<OwnedEventId> =
            room.extremities.iter().rev().take(MAX_PREV_EVENTS).cloned().collect();
        let position = Position {
            room_id: Some(&room.room_id),
            prev_events: &prev,
            auth_events,
            depth: room.depth + 1,
        };
        builder::build(template, position, &room.rules, &self.key, &self.server_name)
    }

    /// Checks `pdu` against the auth rules with the room's current state.
    fn check(
        &self,
        room: &Loaded,
        pdu: &Pdu,
        pending: &HashMap<OwnedEventId, Arc<Pdu>>,
    ) -> Result<()> {
        let fetch_event = |event_id: &EventId| -> Option<Arc<Pdu>> {
            if let Some(pdu) = pending.get(event_id) {
                return Some(Arc::clone(pdu));
            }
            rooms::pdu_by_id(&self.storage, event_id).ok().flatten().map(|(_, pdu)| Arc::new(pdu))
        };
        let fetch_state = |kind: &StateEventType, state_key: &str| -> Option<Arc<Pdu>> {
            let key = room.keys.get(&(kind.to_string(), state_key.to_owned()))?;
            let short = room.state.get(key)?;
            if let Some(pdu) = room.cache.get(short) {
                return Some(Arc::clone(pdu));
            }
            if let Some(pdu) = room.event_ids.get(short).and_then(|id| pending.get(id)) {
                return Some(Arc::clone(pdu));
            }
            rooms::pdu(self.storage.engine(), *short).ok().flatten().map(Arc::new)
        };
        ruma::state_res::check_state_independent_auth_rules(
            &room.rules.authorization,
            pdu,
            fetch_event,
        )
        .and_then(|()| {
            ruma::state_res::check_state_dependent_auth_rules(
                &room.rules.authorization,
                pdu,
                fetch_state,
            )
        })
        .map_err(|reason| {
            Error::forbidden(format!("This event is not allowed in the room: {reason}."))
        })
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

    fn power_level(&self, room: &Loaded, user: &UserId) -> Result<i64> {
        let create = self.current(room, "m.room.create", "")?;
        if room.rules.authorization.explicitly_privilege_room_creators
            && let Some(create) = &create
        {
            let mut creators = vec![create.sender.to_string()];
            if let Some(JsonValue::Array(additional)) =
                create.content_value().get("additional_creators")
            {
                creators.extend(additional.iter().filter_map(JsonValue::as_str).map(str::to_owned));
            }
            if creators.iter().any(|creator| creator == user.as_str()) {
                return Ok(i64::MAX);
            }
        }
        let Some(levels) = self.current(room, "m.room.power_levels", "")? else {
            // Without power levels the creator has 100 and everyone else 0.
            return Ok(if create.is_some_and(|create| create.sender == user) { 100 } else { 0 });
        };
        let content = levels.content_value();
        Ok(content
            .get("users")
            .and_then(|users| users.get(user.as_str()))
            .and_then(json_int)
            .or_else(|| content.get("users_default").and_then(json_int))
            .unwrap_or(0))
    }

    fn required_level(&self, room: &Loaded, field: &str, default: i64) -> Result<i64> {
        Ok(self
            .current(room, "m.room.power_levels", "")?
            .and_then(|levels| levels.content_value().get(field).and_then(json_int))
            .unwrap_or(default))
    }

    /// Fills in what a membership event needs from the room: the authorising user of a
    /// restricted join.
    fn complete_membership(&self, room: &Loaded, mut template: Template) -> Result<Template> {
        if template.kind != TimelineEventType::RoomMember {
            return Ok(template);
        }
        let membership = template
            .content
            .get("membership")
            .and_then(CanonicalJsonValue::as_str)
            .unwrap_or_default();
        if membership != "join" || template.content.contains_key("join_authorised_via_users_server")
        {
            return Ok(template);
        }
        let user = &template.sender;
        let current = self
            .current(room, "m.room.member", user.as_str())?
            .map(|member| member.content_str("membership").unwrap_or_default());
        if template.only_while_joined && current.as_deref() != Some("join") {
            return Err(Error::forbidden("The sender is no longer joined to this room."));
        }
        if matches!(current.as_deref(), Some("join" | "invite")) {
            return Ok(template);
        }
        let Some(rules) = self.current(room, "m.room.join_rules", "")? else {
            return Ok(template);
        };
        let content = rules.content_value();
        let rule = content.get("join_rule").and_then(JsonValue::as_str).unwrap_or_default();
        if !matches!(rule, "restricted" | "knock_restricted") {
            return Ok(template);
        }
        let allowed = content
            .get("allow")
            .and_then(JsonValue::as_array)
            .into_iter()
            .flatten()
            .filter(|entry| {
                entry.get("type").and_then(JsonValue::as_str) == Some("m.room_membership")
            })
            .filter_map(|entry| entry.get("room_id").and_then(JsonValue::as_str))
            .filter_map(|room_id| RoomId::parse(room_id).ok())
            .any(|room_id| {
                rooms::is_joined(self.storage.engine(), &room_id, user).unwrap_or(false)
            });
        if !allowed {
            return Err(Error::forbidden(
                "You need to be a member of one of the rooms this room's join rules allow, or be invited.",
            ));
        }
        let invite_level = self.required_level(room, "invite", 0)?;
        let authoriser = room
            .keys
            .iter()
            .filter(|((kind, _), _)| kind == "m.room.member")
            .filter_map(|((_, member), key)| {
                Some((UserId::parse(member.as_str()).ok()?, room.state.get(key)?))
            })
            .filter(|(member, _)| member.server_name() == self.server_name)
            .find(|(member, short)| {
                rooms::pdu(self.storage.engine(), **short)
                    .ok()
                    .flatten()
                    .is_some_and(|pdu| pdu.content_str("membership").as_deref() == Some("join"))
                    && self.power_level(room, member).unwrap_or(0) >= invite_level
            })
            .map(|(member, _)| member)
            .ok_or_else(|| Error::forbidden("No member of this server can authorise your join."))?;
        template.content.insert(
            "join_authorised_via_users_server".to_owned(),
            CanonicalJsonValue::String(authoriser.to_string()),
        );
        Ok(template)
    }

    /// Checks that `sender` may redact `target` and returns the target.
    fn check_redaction(
        &self,
        room: &Loaded,
        sender: &UserId,
        target: &EventId,
    ) -> Result<Option<(u64, Pdu)>> {
        let (short, pdu) = rooms::pdu_by_id(&self.storage, target)?
            .filter(|(_, pdu)| pdu.room_id == room.room_id)
            .ok_or_else(|| Error::not_found("The event to redact is not in this room."))?;
        if pdu.sender != sender
            && self.power_level(room, sender)? < self.required_level(room, "redact", 50)?
        {
            return Err(Error::forbidden(
                "You may only redact your own events unless you have the power to redact.",
            ));
        }
        // A second redaction is recorded but changes nothing: the event stays as the first
        // redaction left it.
        let already =
            rooms::event_meta(self.storage.engine(), short)?.is_some_and(|meta| meta.redacted);
        Ok((!already).then_some((short, pdu)))
    }

    /// Replaces the stored target with its redacted form (keeping the original if configured).
    fn apply_redaction(
        &self,
        room: &Loaded,
        short: u64,
        target: &Pdu,
        redaction: &Pdu,
        batch: &mut Batch,
    ) -> Result<()> {
        let redacted = target.redacted(&room.rules, redaction)?;
        if target.kind == TimelineEventType::RoomMember
            && let Some(user) = target.state_key.as_deref().and_then(|key| UserId::parse(key).ok())
        {
            room.display_names
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&user);
        }
        if self.save_unredacted {
            let original = target.stored_text().to_owned();
            UNREDACTED_TABLE.put(
                batch,
                &short,
                &Json(UnredactedRecord { original, redacted_ms: now_ms() }),
            );
        }
        PDUS_TABLE.put(batch, &short, &redacted.to_bytes());
        if let Some(mut meta) = rooms::event_meta(self.storage.engine(), short)? {
            meta.redacted = true;
            // `accept` already marked the target in this batch if the redaction relates to
            // it; this later write of the same row must keep that mark.
            if relation_of(redaction).is_some_and(|(parent, _)| parent == target.event_id) {
                meta.has_children = Some(true);
            }
            let position = meta.position;
            EVENT_META_TABLE.put(batch, &short, &Json(meta));
            for word in search_words(target) {
                SEARCH_TABLE.delete(batch, &(room.short, word, position));
            }
        }
        Ok(())
    }

    /// Accepts a checked event: allocates its ids, advances the in-memory state and adds
    /// the rows that do not need its stream position to `batch`.
    async fn accept(
        &self,
        room: &mut Loaded,
        pdu: Arc<Pdu>,
        transaction: Option<(String, String, String)>,
        batch: &mut Batch,
    ) -> Result<Prepared> {
        let interner = self.storage.interner();
        let short = interner.allocate();
        Interner::record(batch, Namespace::EventId, pdu.event_id.as_bytes(), short);
        PDUS_TABLE.put(batch, &short, &pdu.to_bytes());

        let before = room.snapshot;
        let mut membership = None;
        if let Some(state_key) = &pdu.state_key {
            let kind = pdu.kind.to_string();
            let key = interner
                .intern(&self.storage, Namespace::StateKey, &state_key_bytes(&kind, state_key))
                .await?;
            if let Some(replaced) = room.state.insert(key, short) {
                room.event_ids.remove(&replaced);
            }
            room.event_ids.insert(short, pdu.event_id.clone());
            room.keys.insert((kind, state_key.clone()), key);
            let parent = (room.snapshot != state::EMPTY).then_some((room.snapshot, room.chain));
            let (snapshot, chain) =
                state::write(&self.storage, batch, parent, &room.state, &[(key, short)]);
            room.snapshot = snapshot;
            room.chain = chain;
            if room.cache.len() >= STATE_CACHE {
                room.cache.clear();
            }
            room.cache.insert(short, Arc::clone(&pdu));
            if pdu.kind == TimelineEventType::RoomMember
                && let Ok(user) = UserId::parse(state_key.as_str())
            {
                room.display_names
                    .get_mut()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .remove(&user);
                let value = pdu.content_str("membership").unwrap_or_default();
                let stripped_state = if matches!(value.as_str(), "invite" | "knock") {
                    self.stripped_state(room)?
                } else {
                    Vec::new()
                };
                membership = Some((
                    user,
                    MembershipRecord {
                        membership: value,
                        position: 0,
                        event_id: pdu.event_id.clone(),
                        stripped_state,
                        forgotten: false,
                    },
                ));
            }
        }
        room.extremities = vec![pdu.event_id.clone()];
        room.depth = room.depth.max(pdu.depth);

        let relation = relation_of(&pdu).and_then(|(parent, rel_type)| {
            rooms::event_short(&self.storage, &parent)
                .ok()
                .flatten()
                .map(|parent| (parent, rel_type))
        });
        // The parent now has a child. (A parent in this same commit has no meta stored yet;
        // `commit` marks it.)
        if let Some((parent, _)) = &relation
            && let Some(mut meta) = rooms::event_meta(self.storage.engine(), *parent)?
            && meta.has_children != Some(true)
        {
            meta.has_children = Some(true);
            EVENT_META_TABLE.put(batch, parent, &Json(meta));
        }
        let thread_root_previous = match &relation {
            Some((root, rel_type)) if rel_type == "m.thread" => {
                let mut previous = None;
                RELATIONS_TABLE.scan_keys(
                    self.storage.engine(),
                    &crate::storage::codec::prefix2(root, &"m.thread"),
                    None,
                    crate::storage::Direction::Reverse,
                    |(_, _, position)| {
                        previous = Some(position);
                        std::ops::ControlFlow::Break(())
                    },
                )?;
                // The root's own position stands for a thread without replies yet.
                Some(previous.unwrap_or_else(|| {
                    rooms::event_meta(self.storage.engine(), *root)
                        .ok()
                        .flatten()
                        .map_or(0, |m| m.position)
                }))
            }
            _ => None,
        };
        Ok(Prepared {
            words: search_words(&pdu),
            pdu,
            short,
            meta_before: before,
            meta_after: room.snapshot,
            membership,
            relation,
            thread_root_previous,
            transaction,
        })
    }

    /// The stripped state shown with invites and knocks.
    fn stripped_state(&self, room: &Loaded) -> Result<Vec<JsonValue>> {
        let mut stripped = Vec::new();
        for kind in [
            "m.room.create",
            "m.room.join_rules",
            "m.room.name",
            "m.room.avatar",
            "m.room.canonical_alias",
            "m.room.encryption",
            "m.room.topic",
        ] {
            if let Some(pdu) = self.current(room, kind, "")? {
                stripped.push(pdu.stripped_json());
            }
        }
        Ok(stripped)
    }

    /// Commits prepared events in order with consecutive stream positions, with what their
    /// push rules record (notifications and unread counts) in the same commit.
    async fn commit(
        &self,
        room: &Loaded,
        prepared: Vec<Prepared>,
        mut batch: Batch,
    ) -> Result<(Vec<Sent>, Committed)> {
        ROOM_HEADS_TABLE.put(
            &mut batch,
            &room.short,
            &Json(RoomHeads {
                snapshot: room.snapshot,
                snapshot_chain: room.chain,
                extremities: room.extremities.clone(),
                depth: room.depth,
            }),
        );
        let room_short = room.short;
        let room_id = room.room_id.to_string();
        let count = prepared.len() as u64;
        let members: Vec<OwnedUserId> = prepared
            .iter()
            .filter_map(|prepared| prepared.membership.as_ref().map(|(user, _)| user.clone()))
            .collect();
        let membership_changes: Vec<(OwnedUserId, String)> = prepared
            .iter()
            .filter_map(|prepared| prepared.membership.as_ref())
            .map(|(user, record)| (user.clone(), record.membership.clone()))
            .collect();
        let ids: Vec<OwnedEventId> =
            prepared.iter().map(|prepared| prepared.pdu.event_id.clone()).collect();
        let events: Vec<(Arc<Pdu>, u64, Option<String>)> = prepared
            .iter()
            .map(|prepared| {
                let thread = relation_of(&prepared.pdu)
                    .filter(|(_, rel_type)| rel_type == "m.thread")
                    .map(|(root, _)| root.to_string());
                (Arc::clone(&prepared.pdu), prepared.short, thread)
            })
            .collect();
        // A failed evaluation costs the events their notifications, never their commit.
        let push = match self.evaluate_push(room, &events, &membership_changes).await {
            Ok(push) => push,
            Err(error) => {
                tracing::warn!(room = %room.room_id, %error, "push rule evaluation failed");
                Outcome::default()
            }
        };
        let Outcome { batch: push_batch, notifications, counts, notified } = push;
        batch.append(push_batch);
        // Every member's counts change with each message: the cache takes the new values
        // rather than having each member's next /sync read them back.
        let mut changed_by_user: HashMap<OwnedUserId, BTreeMap<String, UnreadCounts>> =
            HashMap::new();
        for ((user, thread), counts) in &counts {
            changed_by_user.entry(user.clone()).or_default().insert(thread.clone(), counts.clone());
        }
        let counts_writing = self
            .storage
            .coherent()
            .unread_counts
            .begin(changed_by_user.keys().map(|user| (user.clone(), room_short)).collect());
        let _memberships_writing = self.storage.coherent().memberships.begin(members.clone());
        // Dropped before the commit, so even a commit whose outcome is unknown (the Writer
        // stopping) cannot leave a stale list behind.
        if !membership_changes.is_empty() {
            *room.joined.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
        let parents: HashSet<u64> = prepared
            .iter()
            .filter_map(|prepared| prepared.relation.as_ref())
            .map(|(parent, _)| *parent)
            .collect();
        let positions = self
            .storage
            .writer()
            .commit_with_positions(count, batch, move |batch, positions| {
                let assigned: Vec<u64> = positions.clone().collect();
                for (prepared, position) in prepared.into_iter().zip(positions.clone()) {
                    let has_children = parents.contains(&prepared.short);
                    write_positioned(batch, room_short, &room_id, prepared, position, has_children);
                }
                write_notifications(batch, room_short, notifications, &assigned);
                // Counts are stamped with the last event's position: a sync that sees the
                // events sees their counts.
                let stamp = positions.end.saturating_sub(1);
                for ((user, thread), counts) in counts {
                    let changed = std::iter::once((thread, counts)).collect();
                    push_counts::write_counts(batch, &user, room_short, changed, stamp);
                }
            })
            .await?;
        let stamp = positions.end.saturating_sub(1);
        counts_writing.committed(|(user, _), before| match changed_by_user.get(user) {
            Some(changed) => push_counts::with_written(before, changed, stamp),
            None => before.clone(),
        });
        let committed = Committed { members, notified };
        let sent = ids
            .into_iter()
            .zip(positions)
            .map(|(event_id, position)| Sent { event_id, position })
            .collect();
        Ok((sent, committed))
    }

    /// After a commit (and the reply to the sender): wakes the syncs that can see the events
    /// and the pushers of those notified.
    async fn after_commit(&self, room: &Loaded, committed: Committed) {
        self.hub.room_changed(&room.room_id);
        for member in &committed.members {
            // Invites and joins reach users who are not yet waiting on the room.
            self.hub.user_changed(member);
        }
        for user in &committed.notified {
            self.push.wake(user).await;
        }
    }

    /// Evaluates push rules for events about to commit (`(event, short id, thread root)` in
    /// order, changing the memberships `membership_changes`), for their commit to record.
    async fn evaluate_push(
        &self,
        room: &Loaded,
        events: &[(Arc<Pdu>, u64, Option<String>)],
        membership_changes: &[(OwnedUserId, String)],
    ) -> Result<Outcome> {
        // The members as they will be once the events commit.
        let mut joined: Vec<OwnedUserId> = self.joined_members(room)?.as_ref().clone();
        for (user, membership) in membership_changes {
            joined.retain(|member| member != user);
            if membership == "join" {
                joined.push(user.clone());
            }
        }
        let member_count = joined.len() as u64;
        let mut local: Vec<OwnedUserId> =
            joined.into_iter().filter(|user| user.server_name() == self.server_name).collect();
        // An invited local user hears of the invite through their push rules too.
        for (pdu, ..) in events {
            if pdu.kind == TimelineEventType::RoomMember
                && pdu.content_str("membership").as_deref() == Some("invite")
                && let Some(target) =
                    pdu.state_key.as_deref().and_then(|key| UserId::parse(key).ok())
                && target.server_name() == self.server_name
                && !local.contains(&target)
            {
                local.push(target);
            }
        }
        // Sending an event reads everything before it (in its thread, or the main timeline):
        // every unread row there is, since the event is newer than all of them.
        let mut outcome = Outcome::default();
        for (pdu, _, thread) in events {
            if pdu.sender.server_name() != self.server_name {
                continue;
            }
            let scope = thread.as_deref().unwrap_or("main");
            let changed = push_counts::read_up_to(
                self.storage.engine(),
                &pdu.sender,
                room.short,
                u64::MAX,
                Some(scope),
                &mut outcome.batch,
            )?;
            for (thread, counts) in changed {
                outcome.counts.insert((pdu.sender.clone(), thread), counts);
            }
        }
        let senders: Vec<&UserId> = events.iter().map(|(pdu, ..)| pdu.sender.as_ref()).collect();
        let has_recipients = local.iter().any(|user| !senders.contains(&user.as_ref()));
        if !has_recipients {
            return Ok(outcome);
        }
        // Display names only match a `content.body`; events without one (joins, state) skip
        // reading every member's event.
        let any_body = events.iter().any(|(pdu, ..)| pdu.content_str("body").is_some());
        let mut recipients = Vec::with_capacity(local.len());
        for user in local {
            let name = if any_body {
                self.display_name(room, &user)?
            } else {
                user.localpart().to_owned()
            };
            recipients.push((user, name));
        }
        let context = RoomContext {
            room_id: room.room_id.clone(),
            room_short: room.short,
            member_count,
            power_levels: self.push_power_levels(room)?,
            recipients,
        };
        let evaluated: Vec<Evaluated<'_>> = events
            .iter()
            .enumerate()
            .map(|(index, (pdu, short, thread))| Evaluated {
                pdu,
                short: *short,
                index,
                thread: thread.clone(),
            })
            .collect();
        evaluate(&self.storage, &self.push.rules, &context, &evaluated, &mut outcome).await?;
        Ok(outcome)
    }

    /// The room's joined members as of the last commit.
    fn joined_members(&self, room: &Loaded) -> Result<Arc<Vec<OwnedUserId>>> {
        let cached = || room.joined.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(joined) = cached().as_ref() {
            return Ok(Arc::clone(joined));
        }
        let joined: Arc<Vec<OwnedUserId>> = Arc::new(
            timeline::joined_members(&self.storage, room.short)?
                .into_iter()
                .filter_map(|user| UserId::parse(user).ok())
                .collect(),
        );
        *cached() = Some(Arc::clone(&joined));
        Ok(joined)
    }

    /// `user`'s display name in the room (their localpart without one), as push rules see it.
    fn display_name(&self, room: &Loaded, user: &UserId) -> Result<String> {
        let names = || room.display_names.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(name) = names().get(user) {
            return Ok(name.clone());
        }
        // ruma turns a display name with wildcards into a regular expression, and panics
        // when it grows too large: a name longer than clients may set stands for nobody's.
        let name = self
            .current(room, "m.room.member", user.as_str())?
            .and_then(|member| member.content_str("displayname"))
            .filter(|name| name.chars().count() <= limits::MAX_DISPLAYNAME_CHARS)
            .unwrap_or_else(|| user.localpart().to_owned());
        names().insert(user.to_owned(), name.clone());
        Ok(name)
    }

    /// The room's power levels as push conditions need them.
    fn push_power_levels(&self, room: &Loaded) -> Result<Option<PushConditionPowerLevelsCtx>> {
        let content = self
            .current(room, "m.room.power_levels", "")?
            .map(|event| event.content_value())
            .unwrap_or_default();
        let users = content["users"]
            .as_object()
            .map(|users| {
                users
                    .iter()
                    .filter_map(|(user, level)| {
                        Some((UserId::parse(user).ok()?, Int::new(json_int(level)?)?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let users_default =
            Int::new(json_int(&content["users_default"]).unwrap_or(0)).unwrap_or_default();
        let mut notifications = NotificationPowerLevels::new();
        if let Some(level) = json_int(&content["notifications"]["room"]).and_then(Int::new) {
            notifications.room = level;
        }
        let creators = self
            .current(room, "m.room.create", "")?
            .map(|create| {
                let mut creators = vec![create.sender.clone()];
                if let Some(extra) = create.content_value()["additional_creators"].as_array() {
                    creators.extend(extra.iter().filter_map(|user| {
                        user.as_str().and_then(|user| UserId::parse(user).ok())
                    }));
                }
                creators
            })
            .unwrap_or_default();
        let rules = RoomPowerLevelsRules::new(&room.rules.authorization, creators);
        Ok(Some(PushConditionPowerLevelsCtx::new(users, users_default, notifications, rules)))
    }

    fn is_member(&self, room: &Loaded, user: &UserId) -> Result<bool> {
        Ok(self
            .current(room, "m.room.member", user.as_str())?
            .is_some_and(|member| member.content_str("membership").as_deref() == Some("join")))
    }

    fn set_typing(
        &self,
        context: &Context<Self>,
        room: &Loaded,
        user: &UserId,
        timeout: Option<Duration>,
    ) -> Result<()> {
        if !self.is_member(room, user)? {
            return Err(Error::forbidden("You are not in this room."));
        }
        let changed = match timeout {
            Some(timeout) => {
                let (shortest, longest) = self.typing_timeouts;
                let timeout = timeout.clamp(shortest, longest);
                context.send_after(timeout, RoomMessage::TypingExpired { user: user.to_owned() });
                self.typing.set(&room.room_id, user, Some(Instant::now() + timeout))
            }
            None => self.typing.set(&room.room_id, user, None),
        };
        if changed {
            self.hub.room_changed(&room.room_id);
        }
        Ok(())
    }

    async fn receipt(
        &self,
        room: &Loaded,
        user: &UserId,
        kind: String,
        event_id: &EventId,
        thread: Option<String>,
    ) -> Result<()> {
        if !self.is_member(room, user)? {
            return Err(Error::forbidden("You are not in this room."));
        }
        let short = rooms::event_short(&self.storage, event_id)?;
        let meta = match short {
            Some(short) => rooms::event_meta(self.storage.engine(), short)?
                .filter(|meta| meta.room == room.short),
            None => None,
        };
        let Some(meta) = meta else {
            return Err(Error::not_found("That event is not in this room."));
        };
        let thread_key = thread.unwrap_or_default();
        let key = (room.short, kind.clone(), user.to_string(), thread_key.clone());
        let mut batch = Batch::new();
        if let Some(Json(previous)) = RECEIPTS_TABLE.get(self.storage.engine(), &key)? {
            if previous.event_id == event_id {
                return Ok(());
            }
            RECEIPT_STREAM_TABLE.delete(&mut batch, &(room.short, previous.position));
        }
        // Reading up to an event clears the notifications it covers (a threaded receipt only
        // its thread's).
        let threaded = (!thread_key.is_empty()).then_some(thread_key.as_str());
        let counts = push_counts::read_up_to(
            self.storage.engine(),
            user,
            room.short,
            meta.position,
            threaded,
            &mut batch,
        )?;
        let event_id = event_id.to_owned();
        let room_short = room.short;
        let reader = user.to_owned();
        let stream_entry = (user.to_string(), kind.clone(), thread_key);
        let _writing =
            self.storage.coherent().unread_counts.begin(vec![(user.to_owned(), room_short)]);
        self.storage
            .writer()
            .commit_with_positions(1, batch, move |batch, positions| {
                let position = positions.start;
                push_counts::write_counts(batch, &reader, room_short, counts, position);
                RECEIPTS_TABLE.put(
                    batch,
                    &key,
                    &Json(ReceiptRecord { event_id, ts: now_ms(), position }),
                );
                RECEIPT_STREAM_TABLE.put(batch, &(room_short, position), &Json(stream_entry));
            })
            .await?;
        if kind == "m.read.private" {
            self.hub.user_changed(user);
        } else {
            self.hub.room_changed(&room.room_id);
        }
        Ok(())
    }
}

/// The rows of an event that carry its stream position.
fn write_positioned(
    batch: &mut Batch,
    room: u64,
    room_id: &str,
    prepared: Prepared,
    position: u64,
    has_children: bool,
) {
    let Prepared {
        pdu,
        short,
        meta_before,
        meta_after,
        membership,
        relation,
        thread_root_previous,
        words,
        transaction,
    } = prepared;
    let sent_by = transaction.as_ref().map(|(_, device, txn)| (device.clone(), txn.clone()));
    EVENT_META_TABLE.put(
        batch,
        &short,
        &Json(EventMeta {
            room,
            position,
            state_before: meta_before,
            state_after: meta_after,
            redacted: false,
            transaction: sent_by,
            has_children: Some(has_children),
        }),
    );
    TIMELINE_TABLE.put(batch, &(room, position), &short);
    EVENT_TIMES_TABLE.put(batch, &(room, u64::from(pdu.origin_server_ts.get()), position), &short);
    if let Some((user, mut record)) = membership {
        record.position = position;
        ROOM_MEMBERS_TABLE.put(batch, &(room, user.to_string()), &Json(record.clone()));
        USER_ROOMS_TABLE.put(batch, &(user.to_string(), room_id.to_owned()), &Json(record));
    }
    if let Some((parent, rel_type)) = relation {
        if rel_type == "m.thread" {
            if let Some(previous) = thread_root_previous {
                THREADS_TABLE.delete(batch, &(room, previous));
            }
            THREADS_TABLE.put(batch, &(room, position), &parent);
        }
        RELATIONS_TABLE.put(batch, &(parent, rel_type, position), &short);
    }
    for word in words {
        SEARCH_TABLE.put(batch, &(room, word, position), &short);
    }
    if let Some((user, device, txn)) = transaction {
        TRANSACTIONS_TABLE.put(
            batch,
            &(user, device, room_id.to_owned(), txn),
            &pdu.event_id.to_string(),
        );
    }
}

fn json_int(value: &JsonValue) -> Option<i64> {
    value.as_i64().or_else(|| value.as_str().and_then(|text| text.parse().ok()))
}
