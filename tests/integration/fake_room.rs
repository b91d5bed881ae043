//! The fake-room kit: rooms that live on a [`FakeServer`], as a signed event DAG the test
//! grows (and forges), and the federation endpoints a resident server answers from that
//! DAG: `make_join`, `send_join` (v2), `state_ids`, `state`, `event`, `event_auth`,
//! `get_missing_events` and `backfill`. Every request they get is recorded.
//!
//! The kit builds its events with ruma's signing and hashing only, not with the server's
//! builder, so that what it sends is an independent opinion of the event format; and it
//! trusts what it is given (a `send_join` event is added as it is). Where prev events fork,
//! the state before an event is the union of its prevs' states, later prevs winning: the
//! kit does not resolve state, tests that need a resolved state give it explicitly.
//!
//! ```ignore
//! let kit = FakeRooms::new();
//! let fake = FakeServer::serving(&ca, kit.routes()).await;
//! let room = kit.create_room(&fake, RoomVersionId::V11, "alice");
//! let hello = room.send(EventSpec::message(&fake.user_id("alice"), "hello"));
//! fake.send_transaction(&server, "t1", &fake.transaction(vec![hello.pdu()], vec![])).await;
//! ```

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Json, Router,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedServerName,
    RoomId, RoomVersionId, ServerName,
    room_version_rules::{EventIdFormatVersion, EventsReferenceFormatVersion, RoomVersionRules},
    serde::Base64,
    signatures::Ed25519KeyPair,
};
use serde_json::{Value, json, value::RawValue};

use crate::testbed::FakeServer;

/// An event of a fake room: its id and its federation JSON (with `event_id` only in room
/// versions 1 and 2).
#[derive(Debug, Clone)]
pub struct FakeEvent {
    pub id: OwnedEventId,
    pub json: CanonicalJsonObject,
}

impl FakeEvent {
    /// The event as a PDU of a transaction or an answer.
    pub fn pdu(&self) -> Value {
        serde_json::to_value(&self.json).expect("event JSON")
    }

    pub fn raw(&self) -> Box<RawValue> {
        serde_json::value::to_raw_value(&self.json).expect("event JSON")
    }

    pub fn kind(&self) -> &str {
        string(&self.json, "type").unwrap_or_default()
    }

    pub fn state_key(&self) -> Option<&str> {
        string(&self.json, "state_key")
    }

    pub fn depth(&self) -> u64 {
        match self.json.get("depth") {
            Some(CanonicalJsonValue::Integer(depth)) => {
                u64::try_from(i64::from(*depth)).unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// The ids of the events a field (`prev_events`, `auth_events`) names, in either format.
    pub fn references(&self, field: &str) -> Vec<OwnedEventId> {
        let Some(CanonicalJsonValue::Array(items)) = self.json.get(field) else {
            return Vec::new();
        };
        items
            .iter()
            .filter_map(|item| match item {
                CanonicalJsonValue::String(id) => EventId::parse(id.as_str()).ok(),
                CanonicalJsonValue::Array(pair) => match pair.first() {
                    Some(CanonicalJsonValue::String(id)) => EventId::parse(id.as_str()).ok(),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }
}

fn string<'a>(object: &'a CanonicalJsonObject, field: &str) -> Option<&'a str> {
    match object.get(field) {
        Some(CanonicalJsonValue::String(text)) => Some(text),
        _ => None,
    }
}

/// What an event to build is: by default it goes on the room's forward extremities, with the
/// auth events the spec's selection picks from the state there, one deeper than its deepest
/// prev, and signed by the fake server.
#[derive(Debug, Clone)]
pub struct EventSpec {
    pub sender: String,
    pub kind: String,
    pub state_key: Option<String>,
    pub content: Value,
    pub prevs: Option<Vec<OwnedEventId>>,
    pub auth: Option<Vec<OwnedEventId>>,
    pub depth: Option<u64>,
    pub origin_server_ts: Option<u64>,
}

impl EventSpec {
    pub fn new(sender: &str, kind: &str, content: Value) -> Self {
        Self {
            sender: sender.to_owned(),
            kind: kind.to_owned(),
            state_key: None,
            content,
            prevs: None,
            auth: None,
            depth: None,
            origin_server_ts: None,
        }
    }

    pub fn state(sender: &str, kind: &str, state_key: &str, content: Value) -> Self {
        Self { state_key: Some(state_key.to_owned()), ..Self::new(sender, kind, content) }
    }

    pub fn message(sender: &str, body: &str) -> Self {
        Self::new(sender, "m.room.message", json!({"msgtype": "m.text", "body": body}))
    }

    /// `user`'s own membership change.
    pub fn member(user: &str, membership: &str) -> Self {
        Self::state(user, "m.room.member", user, json!({"membership": membership}))
    }

    pub fn prevs(mut self, prevs: &[&OwnedEventId]) -> Self {
        self.prevs = Some(prevs.iter().map(|id| (*id).clone()).collect());
        self
    }

    pub fn auth(mut self, auth: &[&OwnedEventId]) -> Self {
        self.auth = Some(auth.iter().map(|id| (*id).clone()).collect());
        self
    }

    pub fn depth(mut self, depth: u64) -> Self {
        self.depth = Some(depth);
        self
    }

    pub fn at(mut self, origin_server_ts: u64) -> Self {
        self.origin_server_ts = Some(origin_server_ts);
        self
    }
}

/// `(type, state_key) -> event id`.
type StateMap = BTreeMap<(String, String), OwnedEventId>;

/// One event in the DAG with the state around it.
struct Node {
    event: FakeEvent,
    state_before: StateMap,
}

#[derive(Default)]
struct Dag {
    nodes: HashMap<OwnedEventId, Node>,
    /// Ids in the order they were added.
    order: Vec<OwnedEventId>,
    heads: Vec<OwnedEventId>,
    withheld: HashSet<OwnedEventId>,
}

impl Dag {
    fn state_after(&self, id: &EventId) -> StateMap {
        let Some(node) = self.nodes.get(id) else { return StateMap::new() };
        let mut state = node.state_before.clone();
        if let Some(key) = node.event.state_key() {
            state.insert((node.event.kind().to_owned(), key.to_owned()), node.event.id.clone());
        }
        state
    }

    /// The union of the prevs' states, later prevs winning.
    fn state_at(&self, prevs: &[OwnedEventId]) -> StateMap {
        let mut state = StateMap::new();
        for prev in prevs {
            state.extend(self.state_after(prev));
        }
        state
    }

    /// `id`'s auth chain (not `id` itself), as far as the DAG knows it.
    fn auth_chain(&self, ids: impl IntoIterator<Item = OwnedEventId>) -> BTreeSet<OwnedEventId> {
        let mut chain = BTreeSet::new();
        let mut queue: VecDeque<OwnedEventId> = ids
            .into_iter()
            .filter_map(|id| self.nodes.get(&id))
            .flat_map(|node| node.event.references("auth_events"))
            .collect();
        while let Some(id) = queue.pop_front() {
            if let Some(node) = self.nodes.get(&id)
                && chain.insert(id)
            {
                queue.extend(node.event.references("auth_events"));
            }
        }
        chain
    }

    fn event(&self, id: &EventId) -> Option<&FakeEvent> {
        self.nodes.get(id).map(|node| &node.event)
    }

    fn visible(&self, id: &EventId) -> Option<&FakeEvent> {
        (!self.withheld.contains(id)).then(|| self.event(id)).flatten()
    }
}

/// A room on a fake server.
pub struct FakeRoom {
    pub version: RoomVersionId,
    pub rules: RoomVersionRules,
    pub room_id: OwnedRoomId,
    /// The fake server the room lives on and signs with.
    pub origin: OwnedServerName,
    key: Arc<Mutex<Ed25519KeyPair>>,
    dag: Mutex<Dag>,
    clock: AtomicU64,
}

impl FakeRoom {
    /// Builds an event (signed by the fake server) without adding it to the room.
    pub fn build(&self, spec: EventSpec) -> FakeEvent {
        let key = Arc::clone(&self.key);
        let key = key.lock().expect("key");
        self.build_signed(spec, &[(self.origin.as_str(), &key)])
    }

    /// Builds an event hashed and signed by `signers` in order (the first one hashes it): to
    /// forge, sign as a server that is not the sender's, or add an authoriser's signature.
    pub fn build_signed(&self, spec: EventSpec, signers: &[(&str, &Ed25519KeyPair)]) -> FakeEvent {
        let dag = self.dag.lock().expect("dag");
        let is_create = spec.kind == "m.room.create";
        let prevs = spec.prevs.clone().unwrap_or_else(|| dag.heads.clone());
        let state = dag.state_at(&prevs);
        let auth = spec.auth.clone().unwrap_or_else(|| self.select_auth(&state, &spec));
        let depth = spec.depth.unwrap_or_else(|| {
            prevs.iter().filter_map(|id| dag.event(id)).map(FakeEvent::depth).max().unwrap_or(0) + 1
        });
        let ts = spec.origin_server_ts.unwrap_or_else(|| self.tick());
        let mut object = CanonicalJsonObject::new();
        let mut insert = |field: &str, value: Value| {
            object.insert(
                field.to_owned(),
                CanonicalJsonValue::try_from(value).expect("canonical value"),
            );
        };
        insert("type", json!(spec.kind));
        insert("sender", json!(spec.sender));
        insert("content", spec.content.clone());
        insert("origin_server_ts", json!(ts));
        insert("depth", json!(depth));
        insert("origin", json!(self.origin));
        if let Some(key) = &spec.state_key {
            insert("state_key", json!(key));
        }
        if !is_create || self.rules.event_format.require_room_create_room_id {
            insert("room_id", json!(self.room_id));
        }
        if !self.rules.redaction.content_field_redacts
            && spec.kind == "m.room.redaction"
            && let Some(redacts) = spec.content.get("redacts")
        {
            insert("redacts", redacts.clone());
        }
        insert("prev_events", self.references(&dag, &prevs));
        insert("auth_events", self.references(&dag, &auth));
        drop(dag);
        if matches!(self.rules.event_id_format, EventIdFormatVersion::V1) {
            let id = format!("${}:{}", random_string(18), self.origin);
            object.insert("event_id".to_owned(), CanonicalJsonValue::String(id));
        }
        let mut signers = signers.iter();
        if let Some((server, key)) = signers.next() {
            ruma::signatures::hash_and_sign_event(server, *key, &mut object, &self.rules.redaction)
                .expect("sign");
        }
        for (server, key) in signers {
            ruma::signatures::sign_event(server, *key, &mut object, &self.rules.redaction)
                .expect("countersign");
        }
        self.wrap(object)
    }

    /// An event from its JSON, with the id the room version gives it.
    pub fn wrap(&self, json: CanonicalJsonObject) -> FakeEvent {
        FakeEvent { id: event_id(&json, &self.rules), json }
    }

    /// Builds an event and adds it to the room.
    pub fn send(&self, spec: EventSpec) -> FakeEvent {
        let event = self.build(spec);
        self.add(event.clone());
        event
    }

    /// Adds an event (built here, forged, or from another server) to the DAG: it replaces its
    /// prevs among the forward extremities.
    pub fn add(&self, event: FakeEvent) {
        let mut dag = self.dag.lock().expect("dag");
        let prevs = event.references("prev_events");
        let state_before = dag.state_at(&prevs);
        dag.heads.retain(|head| !prevs.contains(head));
        dag.heads.push(event.id.clone());
        dag.order.push(event.id.clone());
        dag.nodes.insert(event.id.clone(), Node { event, state_before });
    }

    /// Stops serving `id` (`event`, `get_missing_events`, `backfill` leave it out), as a
    /// server that will not tell.
    pub fn withhold(&self, id: &EventId) {
        self.dag.lock().expect("dag").withheld.insert(id.to_owned());
    }

    pub fn release(&self, id: &EventId) {
        self.dag.lock().expect("dag").withheld.remove(id);
    }

    pub fn event(&self, id: &EventId) -> Option<FakeEvent> {
        self.dag.lock().expect("dag").event(id).cloned()
    }

    /// Every event, in the order it was added.
    pub fn events(&self) -> Vec<FakeEvent> {
        let dag = self.dag.lock().expect("dag");
        dag.order.iter().filter_map(|id| dag.event(id).cloned()).collect()
    }

    pub fn heads(&self) -> Vec<OwnedEventId> {
        self.dag.lock().expect("dag").heads.clone()
    }

    /// The state after the forward extremities.
    pub fn current_state(&self) -> BTreeMap<(String, String), OwnedEventId> {
        let dag = self.dag.lock().expect("dag");
        dag.state_at(&dag.heads)
    }

    /// The state before `id`.
    pub fn state_before(&self, id: &EventId) -> BTreeMap<(String, String), OwnedEventId> {
        let dag = self.dag.lock().expect("dag");
        dag.nodes.get(id).map(|node| node.state_before.clone()).unwrap_or_default()
    }

    /// The auth chain of `ids` (without them).
    pub fn auth_chain(&self, ids: &[OwnedEventId]) -> BTreeSet<OwnedEventId> {
        self.dag.lock().expect("dag").auth_chain(ids.iter().cloned())
    }

    /// The spec's auth events selection over `state`.
    fn select_auth(&self, state: &StateMap, spec: &EventSpec) -> Vec<OwnedEventId> {
        if spec.kind == "m.room.create" {
            return Vec::new();
        }
        let lookup = |kind: &str, key: &str| state.get(&(kind.to_owned(), key.to_owned())).cloned();
        let mut auth = Vec::new();
        if self.rules.event_format.allow_room_create_in_auth_events {
            auth.extend(lookup("m.room.create", ""));
        }
        auth.extend(lookup("m.room.power_levels", ""));
        auth.extend(lookup("m.room.member", &spec.sender));
        if spec.kind == "m.room.member"
            && let Some(target) = &spec.state_key
        {
            if target != &spec.sender {
                auth.extend(lookup("m.room.member", target));
            }
            let membership = spec.content["membership"].as_str().unwrap_or_default();
            if ["join", "invite", "knock"].contains(&membership) {
                auth.extend(lookup("m.room.join_rules", ""));
            }
            if membership == "join"
                && let Some(authoriser) = spec.content["join_authorised_via_users_server"].as_str()
            {
                auth.extend(lookup("m.room.member", authoriser));
            }
        }
        auth.dedup();
        auth
    }

    /// `ids` as `prev_events`/`auth_events` in the room version's format.
    fn references(&self, dag: &Dag, ids: &[OwnedEventId]) -> Value {
        match self.rules.events_reference_format {
            EventsReferenceFormatVersion::V1 => Value::Array(
                ids.iter()
                    .map(|id| {
                        let hash = dag
                            .event(id)
                            .map(|event| {
                                ruma::signatures::reference_hash(&event.json, &self.rules)
                                    .expect("reference hash")
                            })
                            .unwrap_or_default();
                        json!([id, {"sha256": hash}])
                    })
                    .collect(),
            ),
            _ => json!(ids),
        }
    }

    /// A timestamp later than every one before: now, or a millisecond after the last.
    fn tick(&self) -> u64 {
        let now = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_millis(),
        )
        .expect("milliseconds");
        let previous = self.clock.fetch_max(now, Ordering::SeqCst);
        if previous >= now { self.clock.fetch_add(1, Ordering::SeqCst) + 1 } else { now }
    }
}

/// The id of an event in a room with `rules`: the `event_id` field in versions 1 and 2, the
/// reference hash from 3 on.
pub fn event_id(json: &CanonicalJsonObject, rules: &RoomVersionRules) -> OwnedEventId {
    if matches!(rules.event_id_format, EventIdFormatVersion::V1) {
        return EventId::parse(string(json, "event_id").expect("a v1/v2 event has an id"))
            .expect("event id");
    }
    let hash = ruma::signatures::reference_hash(json, rules).expect("reference hash");
    EventId::new_v2_or_v3(&hash).expect("event id")
}

fn random_string(length: usize) -> String {
    use rand::Rng;
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(length)
        .map(char::from)
        .collect()
}

/// Forging helpers: events as a hostile or broken server would send them.
pub mod forge {
    use super::*;

    /// `event` with its content replaced after signing: the signatures still hold (content
    /// is redacted away before signing), the content hash does not.
    pub fn changed_content(event: &FakeEvent, content: Value) -> FakeEvent {
        let mut json = event.json.clone();
        json.insert("content".to_owned(), CanonicalJsonValue::try_from(content).expect("content"));
        FakeEvent { id: event.id.clone(), json }
    }

    /// `event` with a field changed after signing: every signature is now wrong.
    pub fn changed_field(event: &FakeEvent, field: &str, value: Value) -> FakeEvent {
        let mut json = event.json.clone();
        json.insert(field.to_owned(), CanonicalJsonValue::try_from(value).expect("value"));
        FakeEvent { id: event.id.clone(), json }
    }

    /// `event` with `server`'s signatures taken off.
    pub fn unsigned_by(event: &FakeEvent, server: &str) -> FakeEvent {
        let mut json = event.json.clone();
        if let Some(CanonicalJsonValue::Object(signatures)) = json.get_mut("signatures") {
            signatures.remove(server);
        }
        FakeEvent { id: event.id.clone(), json }
    }

    /// A new key pair, to sign with a key the server does not publish.
    pub fn stranger_key() -> Ed25519KeyPair {
        crate::testbed::new_pair("fake1")
    }
}

/// A request a fake room answered (or refused).
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `make_join`, `send_join`, `state_ids`, `state`, `event`, `event_auth`,
    /// `get_missing_events`, `backfill`.
    pub endpoint: &'static str,
    /// The path and query.
    pub path: String,
    /// The origin named in the `X-Matrix` header, if any.
    pub origin: Option<String>,
    pub body: Option<Value>,
}

/// The rooms a fake server holds, and the routes that answer for them.
#[derive(Default)]
pub struct FakeRooms {
    rooms: Mutex<HashMap<OwnedRoomId, Arc<FakeRoom>>>,
    requests: Mutex<Vec<Recorded>>,
}

impl FakeRooms {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A room of `version` on `server`, created by its user `creator` (a localpart) with a
    /// public join rule and `shared` history: create, the creator's join, power levels,
    /// join rules, history visibility.
    pub fn create_room(
        self: &Arc<Self>,
        server: &FakeServer,
        version: RoomVersionId,
        creator: &str,
    ) -> Arc<FakeRoom> {
        let rules = version.rules().expect("a known room version");
        let creator = server.user_id(creator);
        let placeholder =
            RoomId::parse(format!("!{}:{}", random_string(18), server.name)).expect("room id");
        let mut room = FakeRoom {
            version: version.clone(),
            rules: rules.clone(),
            room_id: placeholder,
            origin: server.name.clone(),
            key: Arc::clone(&server.key),
            dag: Mutex::new(Dag::default()),
            clock: AtomicU64::new(0),
        };
        let mut content = json!({"room_version": version.as_str()});
        if !rules.authorization.use_room_create_sender {
            content["creator"] = json!(creator);
        }
        let create = room.build(EventSpec::state(&creator, "m.room.create", "", content));
        if !rules.event_format.require_room_create_room_id {
            room.room_id =
                RoomId::new_v2(create.id.as_str().trim_start_matches('$')).expect("v12 room id");
        }
        room.add(create);
        room.send(EventSpec::member(&creator, "join"));
        // Version 12's creators have infinite power and may not be listed.
        let mut users = serde_json::Map::new();
        if !rules.authorization.explicitly_privilege_room_creators {
            users.insert(creator.clone(), json!(100));
        }
        room.send(EventSpec::state(
            &creator,
            "m.room.power_levels",
            "",
            json!({"users": users, "users_default": 0, "events_default": 0, "state_default": 50}),
        ));
        room.send(EventSpec::state(
            &creator,
            "m.room.join_rules",
            "",
            json!({"join_rule": "public"}),
        ));
        room.send(EventSpec::state(
            &creator,
            "m.room.history_visibility",
            "",
            json!({"history_visibility": "shared"}),
        ));
        let room = Arc::new(room);
        self.rooms.lock().expect("rooms").insert(room.room_id.clone(), Arc::clone(&room));
        room
    }

    /// A room that lives on another server (the one under test), known to the fake from
    /// its events (federation JSON, each after its prevs): the fake's users build on it,
    /// signed by `server`. [`FakeRoom::add`] keeps it up to date with later events.
    pub fn adopt(
        self: &Arc<Self>,
        server: &FakeServer,
        version: RoomVersionId,
        room_id: OwnedRoomId,
        events: Vec<CanonicalJsonObject>,
    ) -> Arc<FakeRoom> {
        let room = FakeRoom {
            rules: version.rules().expect("a known room version"),
            version,
            room_id,
            origin: server.name.clone(),
            key: Arc::clone(&server.key),
            dag: Mutex::new(Dag::default()),
            clock: AtomicU64::new(0),
        };
        for json in events {
            room.add(room.wrap(json));
        }
        let room = Arc::new(room);
        self.rooms.lock().expect("rooms").insert(room.room_id.clone(), Arc::clone(&room));
        room
    }

    pub fn room(&self, room_id: &RoomId) -> Option<Arc<FakeRoom>> {
        self.rooms.lock().expect("rooms").get(room_id).cloned()
    }

    /// The requests answered so far, in order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("requests").clone()
    }

    /// The requests to `endpoint` so far.
    pub fn requests_to(&self, endpoint: &str) -> Vec<Recorded> {
        self.requests().into_iter().filter(|request| request.endpoint == endpoint).collect()
    }

    fn record(
        &self,
        endpoint: &'static str,
        path: String,
        headers: &HeaderMap,
        body: Option<Value>,
    ) {
        let origin = headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|header| {
                header.parse::<ruma::api::federation::authentication::XMatrix>().ok()
            })
            .map(|x_matrix| x_matrix.origin.to_string());
        self.requests.lock().expect("requests").push(Recorded { endpoint, path, origin, body });
    }

    /// The room holding event `id`.
    fn room_of_event(&self, id: &EventId) -> Option<Arc<FakeRoom>> {
        self.rooms.lock().expect("rooms").values().find(|room| room.event(id).is_some()).cloned()
    }

    /// The federation routes answering for these rooms, for [`FakeServer::serving`].
    pub fn routes(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/_matrix/federation/v1/make_join/{room}/{user}", get(make_join))
            .route("/_matrix/federation/v2/send_join/{room}/{event}", put(send_join))
            .route("/_matrix/federation/v1/state_ids/{room}", get(state_ids))
            .route("/_matrix/federation/v1/state/{room}", get(state))
            .route("/_matrix/federation/v1/event/{event}", get(event))
            .route("/_matrix/federation/v1/event_auth/{room}/{event}", get(event_auth))
            .route("/_matrix/federation/v1/get_missing_events/{room}", post(get_missing_events))
            .route("/_matrix/federation/v1/backfill/{room}", get(backfill))
            .with_state(Arc::clone(self))
    }
}

type Kit = State<Arc<FakeRooms>>;

fn error(status: StatusCode, errcode: &str, message: &str) -> Response {
    (status, Json(json!({"errcode": errcode, "error": message}))).into_response()
}

fn not_found(message: &str) -> Response {
    error(StatusCode::NOT_FOUND, "M_NOT_FOUND", message)
}

/// The values of `name` in a query string, in order.
fn query_values(query: Option<&str>, name: &str) -> Vec<String> {
    let Some(query) = query else { return Vec::new() };
    let url = reqwest::Url::parse(&format!("http://query.invalid/?{query}")).expect("query");
    url.query_pairs().filter(|(key, _)| key == name).map(|(_, value)| value.into_owned()).collect()
}

fn path_with(path: String, query: Option<&str>) -> String {
    match query {
        Some(query) => format!("{path}?{query}"),
        None => path,
    }
}

fn pdus(events: impl IntoIterator<Item = FakeEvent>) -> Vec<Value> {
    events.into_iter().map(|event| event.pdu()).collect()
}

async fn make_join(
    State(kit): Kit,
    Path((room_id, user)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let path = path_with(format!("/make_join/{room_id}/{user}"), query.as_deref());
    kit.record("make_join", path, &headers, None);
    let Some(room) = RoomId::parse(&room_id).ok().and_then(|id| kit.room(&id)) else {
        return not_found("unknown room");
    };
    let versions = query_values(query.as_deref(), "ver");
    let version = room.version.as_str().to_owned();
    if !versions.contains(&version) && version != "1" {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({
                "errcode": "M_INCOMPATIBLE_ROOM_VERSION",
                "error": "your server does not support this room's version",
                "room_version": version,
            })),
        )
            .into_response();
    }
    let template = room.build(EventSpec::member(&user, "join"));
    let mut event = template.json;
    // A template is unsigned and unhashed; the joining server does that.
    for field in ["signatures", "hashes", "event_id"] {
        event.remove(field);
    }
    Json(json!({"event": event, "room_version": version})).into_response()
}

async fn send_join(
    State(kit): Kit,
    Path((room_id, event_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let path = path_with(format!("/send_join/{room_id}/{event_id}"), query.as_deref());
    kit.record("send_join", path, &headers, Some(body.clone()));
    let Some(room) = RoomId::parse(&room_id).ok().and_then(|id| kit.room(&id)) else {
        return not_found("unknown room");
    };
    let Ok(json) = serde_json::from_value::<CanonicalJsonObject>(body) else {
        return error(StatusCode::BAD_REQUEST, "M_BAD_JSON", "not an event");
    };
    let join = room.wrap(json);
    if join.id.as_str() != event_id {
        return error(StatusCode::BAD_REQUEST, "M_BAD_JSON", "the event id does not match");
    }
    let prevs = join.references("prev_events");
    let (state, chain) = {
        let dag = room.dag.lock().expect("dag");
        let state: Vec<OwnedEventId> = dag.state_at(&prevs).into_values().collect();
        let chain = dag.auth_chain(state.iter().cloned().chain(prevs.iter().cloned()));
        let mut chain: BTreeSet<OwnedEventId> = chain;
        chain.extend(join.references("auth_events"));
        chain.extend(dag.auth_chain(join.references("auth_events")));
        let state: Vec<FakeEvent> = state.iter().filter_map(|id| dag.event(id).cloned()).collect();
        let chain: Vec<FakeEvent> = chain.iter().filter_map(|id| dag.event(id).cloned()).collect();
        (state, chain)
    };
    room.add(join.clone());
    let servers: BTreeSet<String> = room
        .current_state()
        .iter()
        .filter(|((kind, _), _)| kind == "m.room.member")
        .filter_map(|((_, user), _)| user.split_once(':').map(|(_, server)| server.to_owned()))
        .collect();
    Json(json!({
        "origin": room.origin,
        "state": pdus(state),
        "auth_chain": pdus(chain),
        "event": join.pdu(),
        "members_omitted": false,
        "servers_in_room": servers,
    }))
    .into_response()
}

/// The room and event a `state`/`state_ids` request is about.
fn state_request(
    kit: &FakeRooms,
    room_id: &str,
    query: Option<&str>,
) -> Result<(Arc<FakeRoom>, OwnedEventId), &'static str> {
    let room = RoomId::parse(room_id).ok().and_then(|id| kit.room(&id)).ok_or("unknown room")?;
    let event = query_values(query, "event_id")
        .first()
        .and_then(|id| EventId::parse(id).ok())
        .filter(|id| room.event(id).is_some())
        .ok_or("unknown event")?;
    Ok((room, event))
}

async fn state_ids(
    State(kit): Kit,
    Path(room_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    kit.record(
        "state_ids",
        path_with(format!("/state_ids/{room_id}"), query.as_deref()),
        &headers,
        None,
    );
    let (room, event) = match state_request(&kit, &room_id, query.as_deref()) {
        Ok(found) => found,
        Err(message) => return not_found(message),
    };
    let state: Vec<OwnedEventId> = room.state_before(&event).into_values().collect();
    let chain = room.auth_chain(&state);
    Json(json!({"pdu_ids": state, "auth_chain_ids": chain})).into_response()
}

async fn state(
    State(kit): Kit,
    Path(room_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    kit.record("state", path_with(format!("/state/{room_id}"), query.as_deref()), &headers, None);
    let (room, event) = match state_request(&kit, &room_id, query.as_deref()) {
        Ok(found) => found,
        Err(message) => return not_found(message),
    };
    let state: Vec<OwnedEventId> = room.state_before(&event).into_values().collect();
    let chain = room.auth_chain(&state);
    let events = |ids: Vec<OwnedEventId>| pdus(ids.iter().filter_map(|id| room.event(id)));
    Json(json!({"pdus": events(state), "auth_chain": events(chain.into_iter().collect())}))
        .into_response()
}

async fn event(State(kit): Kit, Path(event_id): Path<String>, headers: HeaderMap) -> Response {
    kit.record("event", format!("/event/{event_id}"), &headers, None);
    let Ok(id) = EventId::parse(&event_id) else { return not_found("unknown event") };
    let Some(room) = kit.room_of_event(&id) else { return not_found("unknown event") };
    let Some(event) = room.dag.lock().expect("dag").visible(&id).cloned() else {
        return not_found("unknown event");
    };
    Json(json!({"origin": room.origin, "origin_server_ts": room.tick(), "pdus": [event.pdu()]}))
        .into_response()
}

async fn event_auth(
    State(kit): Kit,
    Path((room_id, event_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    kit.record("event_auth", format!("/event_auth/{room_id}/{event_id}"), &headers, None);
    let Some(room) = RoomId::parse(&room_id).ok().and_then(|id| kit.room(&id)) else {
        return not_found("unknown room");
    };
    let Some(id) = EventId::parse(&event_id).ok().filter(|id| room.event(id).is_some()) else {
        return not_found("unknown event");
    };
    let chain = room.auth_chain(&[id]);
    Json(json!({"auth_chain": pdus(chain.iter().filter_map(|id| room.event(id)))})).into_response()
}

async fn get_missing_events(
    State(kit): Kit,
    Path(room_id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    kit.record(
        "get_missing_events",
        format!("/get_missing_events/{room_id}"),
        &headers,
        Some(body.clone()),
    );
    let Some(room) = RoomId::parse(&room_id).ok().and_then(|id| kit.room(&id)) else {
        return not_found("unknown room");
    };
    let ids = |field: &str| -> Vec<OwnedEventId> {
        body[field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|id| id.as_str().and_then(|id| EventId::parse(id).ok()))
            .collect()
    };
    let (earliest, latest) = (ids("earliest_events"), ids("latest_events"));
    let limit = body["limit"].as_u64().unwrap_or(10);
    let min_depth = body["min_depth"].as_u64().unwrap_or(0);
    let dag = room.dag.lock().expect("dag");
    // Breadth first from the latest events' prevs, stopping at the earliest ones.
    let mut found: Vec<FakeEvent> = Vec::new();
    let mut seen: HashSet<OwnedEventId> = earliest.iter().cloned().collect();
    let mut queue: VecDeque<OwnedEventId> = latest
        .iter()
        .filter_map(|id| dag.event(id))
        .flat_map(|event| event.references("prev_events"))
        .collect();
    while let Some(id) = queue.pop_front() {
        if found.len() as u64 >= limit {
            break;
        }
        if !seen.insert(id.clone()) {
            continue;
        }
        let Some(event) = dag.visible(&id) else { continue };
        if event.depth() < min_depth {
            continue;
        }
        queue.extend(event.references("prev_events"));
        found.push(event.clone());
    }
    found.sort_by_key(FakeEvent::depth);
    Json(json!({"events": pdus(found)})).into_response()
}

async fn backfill(
    State(kit): Kit,
    Path(room_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    kit.record(
        "backfill",
        path_with(format!("/backfill/{room_id}"), query.as_deref()),
        &headers,
        None,
    );
    let Some(room) = RoomId::parse(&room_id).ok().and_then(|id| kit.room(&id)) else {
        return not_found("unknown room");
    };
    let from: Vec<OwnedEventId> = query_values(query.as_deref(), "v")
        .iter()
        .filter_map(|id| EventId::parse(id).ok())
        .collect();
    let limit = query_values(query.as_deref(), "limit")
        .first()
        .and_then(|limit| limit.parse::<usize>().ok())
        .unwrap_or(10);
    let dag = room.dag.lock().expect("dag");
    // The given events and their ancestors, deepest first.
    let mut found: Vec<FakeEvent> = Vec::new();
    let mut seen: HashSet<OwnedEventId> = HashSet::new();
    let mut frontier: Vec<OwnedEventId> = from;
    while found.len() < limit && !frontier.is_empty() {
        frontier.sort_by_key(|id| std::cmp::Reverse(dag.event(id).map_or(0, FakeEvent::depth)));
        let id = frontier.remove(0);
        if !seen.insert(id.clone()) {
            continue;
        }
        let Some(event) = dag.visible(&id) else { continue };
        frontier.extend(event.references("prev_events"));
        found.push(event.clone());
    }
    Json(json!({"origin": room.origin, "origin_server_ts": room.tick(), "pdus": pdus(found)}))
        .into_response()
}

/// Keys the kit's self-tests verify with: the fake server's own.
pub struct FakeKeys(pub BTreeMap<String, BTreeMap<String, Base64>>);

impl FakeKeys {
    pub fn of(server: &FakeServer) -> Self {
        let pair = server.key.lock().expect("key");
        let key = Base64::new(pair.public_key().to_vec());
        Self(BTreeMap::from([(
            server.name.to_string(),
            BTreeMap::from([(format!("ed25519:{}", pair.version()), key)]),
        )]))
    }
}

impl tuwunel::federation::events::EventKeys for FakeKeys {
    async fn event_keys(
        &self,
        server: &ServerName,
        _at_ms: u64,
        _enforce_validity: bool,
        _key_ids: &[String],
    ) -> Result<BTreeMap<String, Base64>, tuwunel::federation::keys::KeyError> {
        self.0
            .get(server.as_str())
            .cloned()
            .ok_or_else(|| tuwunel::federation::keys::KeyError(format!("no keys for {server}")))
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tuwunel::federation::events::{Refusal, verify_batch};

    use super::*;
    use crate::testbed::{Ca, FedServer};

    /// Every version the kit builds rooms of: the event id and reference formats of 1-2, 3,
    /// 4+, and version 12's room ids.
    const VERSIONS: [RoomVersionId; 7] = [
        RoomVersionId::V1,
        RoomVersionId::V2,
        RoomVersionId::V3,
        RoomVersionId::V5,
        RoomVersionId::V8,
        RoomVersionId::V11,
        RoomVersionId::V12,
    ];

    /// A client that reaches a fake server's TLS front.
    fn client(ca: &Ca, fake: &FakeServer) -> (reqwest::Client, String) {
        let port = fake.name.port().expect("port");
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(
                &std::fs::read(&ca.pem_path).expect("CA"),
            )
            .expect("CA certificate")])
            .resolve("localhost", SocketAddr::from(([127, 0, 0, 1], port)))
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .expect("client");
        (client, format!("https://{}/_matrix/federation", fake.name))
    }

    async fn get(client: &reqwest::Client, url: String) -> (u16, Value) {
        crate::common::status_and_json(client.get(url).send().await.expect("request")).await
    }

    fn encode(id: &impl AsRef<str>) -> String {
        // Version 3 event ids are standard base64, with `/` and `+`.
        id.as_ref()
            .replace('$', "%24")
            .replace(':', "%3A")
            .replace('!', "%21")
            .replace('@', "%40")
            .replace('/', "%2F")
            .replace('+', "%2B")
    }

    #[tokio::test]
    async fn the_kits_events_pass_the_servers_verifier_in_every_version() {
        tuwunel::net::outbound::install_tls_provider();
        let ca = Ca::new();
        let kit = FakeRooms::new();
        let fake = FakeServer::serving(&ca, kit.routes()).await;
        let ours = FedServer::start(&ca, &[]).await;
        let keys = &ours.services().federation.keys;
        for version in VERSIONS {
            let room = kit.create_room(&fake, version.clone(), "alice");
            let alice = fake.user_id("alice");
            let bob = fake.user_id("bob");
            room.send(EventSpec::member(&bob, "join"));
            let root = room.send(EventSpec::message(&alice, "root"));
            // A fork: two events on the same prev, then one merging them.
            let left = room.send(EventSpec::message(&alice, "left").prevs(&[&root.id]));
            let right = room.send(EventSpec::message(&bob, "right").prevs(&[&root.id]));
            assert_eq!(room.heads(), [left.id.clone(), right.id.clone()], "{version}");
            room.send(EventSpec::message(&alice, "merge"));
            assert_eq!(room.heads().len(), 1);

            let events = room.events();
            let raw: Vec<_> = events.iter().map(FakeEvent::raw).collect();
            // Through the server's key store, which fetches the fake's key document.
            let verified = verify_batch(keys, &version, raw.clone()).await;
            for (event, result) in events.iter().zip(&verified) {
                let verified = result
                    .as_ref()
                    .unwrap_or_else(|refusal| panic!("{version}: {} refused: {refusal}", event.id));
                assert!(!verified.redacted, "{version}");
                assert_eq!(verified.pdu.event_id, event.id, "{version}: the same id both ways");
                assert_eq!(verified.pdu.room_id, room.room_id, "{version}");
            }
            let again = verify_batch(&FakeKeys::of(&fake), &version, raw).await;
            assert!(again.iter().all(Result::is_ok), "{version}");
            if version == RoomVersionId::V12 {
                let create = &events[0];
                assert_eq!(room.room_id.as_str(), create.id.as_str().replace('$', "!"));
                assert!(!create.json.contains_key("room_id"));
            }
        }
    }

    #[tokio::test]
    async fn forged_events_fail_the_verifier_as_they_should() {
        let ca = Ca::new();
        let kit = FakeRooms::new();
        let fake = FakeServer::serving(&ca, kit.routes()).await;
        let keys = FakeKeys::of(&fake);
        let version = RoomVersionId::V11;
        let room = kit.create_room(&fake, version.clone(), "alice");
        let alice = fake.user_id("alice");
        let message = room.build(EventSpec::message(&alice, "original"));

        let changed =
            forge::changed_content(&message, json!({"msgtype": "m.text", "body": "evil"}));
        let tampered = forge::changed_field(&message, "origin_server_ts", json!(1));
        let unsigned = forge::unsigned_by(&message, fake.name.as_str());
        let stranger = forge::stranger_key();
        let resigned = room.build_signed(
            EventSpec::message(&alice, "stranger"),
            &[(fake.name.as_str(), &stranger)],
        );
        // Explicit auth events, depth and date go in as given (and still verify: the
        // verifier does not check auth).
        let create = room.events()[0].id.clone();
        let odd = room.build(EventSpec::message(&alice, "odd").auth(&[&create]).depth(1_000).at(5));
        assert_eq!((odd.references("auth_events"), odd.depth()), (vec![create], 1_000));
        assert_eq!(odd.json["origin_server_ts"], CanonicalJsonValue::Integer(5u32.into()));
        let batch = [&message, &changed, &tampered, &unsigned, &resigned, &odd].map(FakeEvent::raw);
        let results = verify_batch(&keys, &version, batch.to_vec()).await;
        assert!(results[5].is_ok(), "{:?}", results[5]);
        assert!(!results[0].as_ref().expect("genuine").redacted);
        let redacted = results[1].as_ref().expect("signatures still hold");
        assert!(redacted.redacted);
        assert_eq!(redacted.pdu.content_value(), json!({}));
        for refused in &results[2..5] {
            assert!(matches!(refused, Err(Refusal::Signature(_))), "{refused:?}");
        }
    }

    #[tokio::test]
    async fn the_kit_answers_the_federation_endpoints_from_its_dag() {
        tuwunel::net::outbound::install_tls_provider();
        let ca = Ca::new();
        let kit = FakeRooms::new();
        let fake = FakeServer::serving(&ca, kit.routes()).await;
        let keys = FakeKeys::of(&fake);
        let (client, base) = client(&ca, &fake);
        let version = RoomVersionId::V11;
        let room = kit.create_room(&fake, version.clone(), "alice");
        let alice = fake.user_id("alice");
        let room_id = encode(&room.room_id);
        let mut messages = Vec::new();
        for index in 0..6 {
            messages.push(room.send(EventSpec::message(&alice, &format!("m{index}"))));
        }

        // make_join: a template on the current extremities, for a supported version only.
        let joiner = "@joiner:elsewhere.example";
        let (status, body) = get(
            &client,
            format!("{base}/v1/make_join/{room_id}/{}?ver=10&ver=11", encode(&joiner)),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["room_version"], "11");
        assert_eq!(body["event"]["prev_events"], json!([messages[5].id]));
        assert_eq!(body["event"]["content"]["membership"], "join");
        assert!(body["event"].get("signatures").is_none());
        let path = format!("/_matrix/federation/v1/make_join/{room_id}/{}?ver=10", encode(&joiner));
        let signed = fake.authorization("GET", &path, "destination.example", None, None);
        let response = client
            .get(format!("https://{}{path}", fake.name))
            .header("authorization", signed)
            .send()
            .await
            .expect("request");
        let (status, body) = crate::common::status_and_json(response).await;
        assert_eq!((status, body["errcode"].as_str()), (400, Some("M_INCOMPATIBLE_ROOM_VERSION")));

        // state_ids / state: the state before the event, with its auth chain.
        let at = &messages[3];
        let url = |kind: &str| format!("{base}/v1/{kind}/{room_id}?event_id={}", encode(&at.id));
        let (status, body) = get(&client, url("state_ids")).await;
        assert_eq!(status, 200, "{body}");
        let mut ids: Vec<String> = body["pdu_ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|id| id.as_str().expect("id").to_owned())
            .collect();
        ids.sort();
        let mut expected: Vec<String> =
            room.current_state().values().map(ToString::to_string).collect();
        expected.sort();
        assert_eq!(ids, expected, "no message is state");
        let (status, body) = get(&client, url("state")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["pdus"].as_array().expect("pdus").len(), 5);

        // event, event_auth.
        let (status, body) = get(&client, format!("{base}/v1/event/{}", encode(&at.id))).await;
        assert_eq!((status, body["pdus"][0]["content"]["body"].as_str()), (200, Some("m3")));
        let (status, body) =
            get(&client, format!("{base}/v1/event_auth/{room_id}/{}", encode(&at.id))).await;
        assert_eq!(status, 200, "{body}");
        let kinds: BTreeSet<&str> = body["auth_chain"]
            .as_array()
            .expect("chain")
            .iter()
            .filter_map(|event| event["type"].as_str())
            .collect();
        assert_eq!(
            kinds,
            BTreeSet::from(["m.room.create", "m.room.member", "m.room.power_levels"])
        );

        // get_missing_events: between the earliest and the latest, oldest first, limited.
        let gme = json!({
            "earliest_events": [messages[0].id],
            "latest_events": [messages[5].id],
            "limit": 3,
            "min_depth": 0,
        });
        let response = client
            .post(format!("{base}/v1/get_missing_events/{room_id}"))
            .json(&gme)
            .send()
            .await
            .expect("request");
        let (status, body) = crate::common::status_and_json(response).await;
        assert_eq!(status, 200, "{body}");
        let bodies: Vec<&str> = body["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter_map(|event| event["content"]["body"].as_str())
            .collect();
        assert_eq!(bodies, ["m2", "m3", "m4"]);

        // backfill: from the given events back, deepest first; a withheld event is left out.
        room.withhold(&messages[4].id);
        let (status, body) = get(
            &client,
            format!("{base}/v1/backfill/{room_id}?v={}&limit=4", encode(&messages[5].id)),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let pdus = body["pdus"].as_array().expect("pdus");
        assert_eq!(pdus.len(), 1, "the chain stops at the withheld event: {body}");
        let (status, _) =
            get(&client, format!("{base}/v1/event/{}", encode(&messages[4].id))).await;
        assert_eq!(status, 404);
        room.release(&messages[4].id);
        let (_, body) = get(
            &client,
            format!("{base}/v1/backfill/{room_id}?v={}&limit=4", encode(&messages[5].id)),
        )
        .await;
        let bodies: Vec<&str> = body["pdus"]
            .as_array()
            .expect("pdus")
            .iter()
            .filter_map(|event| event["content"]["body"].as_str())
            .collect();
        assert_eq!(bodies, ["m5", "m4", "m3", "m2"]);

        // send_join: a join signed by its own server joins; the answer holds the state before
        // it and an auth chain, all of which verify.
        let (other, other_key) = ("elsewhere.example", crate::testbed::new_pair("e1"));
        let template = room.build_signed(EventSpec::member(joiner, "join"), &[(other, &other_key)]);
        let response = client
            .put(format!("{base}/v2/send_join/{room_id}/{}", encode(&template.id)))
            .json(&template.pdu())
            .send()
            .await
            .expect("request");
        let (status, body) = crate::common::status_and_json(response).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["members_omitted"], false);
        assert_eq!(body["servers_in_room"], json!([other, fake.name]), "sorted");
        let state: Vec<Box<RawValue>> = body["state"]
            .as_array()
            .expect("state")
            .iter()
            .map(|pdu| serde_json::value::to_raw_value(pdu).expect("raw"))
            .collect();
        assert_eq!(state.len(), 5);
        let chain: Vec<Box<RawValue>> = body["auth_chain"]
            .as_array()
            .expect("chain")
            .iter()
            .map(|pdu| serde_json::value::to_raw_value(pdu).expect("raw"))
            .collect();
        assert!(!chain.is_empty());
        for result in verify_batch(&keys, &version, state.into_iter().chain(chain).collect()).await
        {
            result.expect("the join's state and auth chain verify");
        }
        assert_eq!(room.heads(), vec![template.id.clone()], "the join is part of the room");

        // Everything was recorded, in order.
        let endpoints: Vec<&str> = kit.requests().iter().map(|request| request.endpoint).collect();
        assert_eq!(
            endpoints,
            [
                "make_join",
                "make_join",
                "state_ids",
                "state",
                "event",
                "event_auth",
                "get_missing_events",
                "backfill",
                "event",
                "backfill",
                "send_join"
            ]
        );
        assert_eq!(kit.requests_to("get_missing_events")[0].body.as_ref(), Some(&gme));
        let joins = kit.requests_to("make_join");
        assert_eq!(joins[0].origin, None, "unsigned");
        assert_eq!(joins[1].origin.as_deref(), Some(fake.name.as_str()), "the signer");
        assert!(joins[1].path.ends_with("?ver=10"), "{}", joins[1].path);
    }

    #[tokio::test]
    async fn a_make_join_template_completes_to_a_join_the_room_takes_in_every_version() {
        use tuwunel::{
            federation::SigningKey,
            rooms::builder::{Expected, from_template},
        };

        tuwunel::net::outbound::install_tls_provider();
        let ca = Ca::new();
        let kit = FakeRooms::new();
        let fake = FakeServer::serving(&ca, kit.routes()).await;
        let (client, base) = client(&ca, &fake);
        let joiner_server = ruma::server_name!("joiner.example");
        let key =
            SigningKey::new(joiner_server.to_owned(), crate::testbed::new_pair("j1")).expect("key");
        let mut keys = FakeKeys::of(&fake);
        keys.0.insert(
            joiner_server.to_string(),
            BTreeMap::from([(key.key_id().to_string(), key.public_key())]),
        );
        let joiner: ruma::OwnedUserId = "@j:joiner.example".try_into().expect("user id");
        let ver: Vec<String> = VERSIONS.iter().map(|version| format!("ver={version}")).collect();
        for version in VERSIONS {
            let room = kit.create_room(&fake, version.clone(), "alice");
            let before = room.send(EventSpec::message(&fake.user_id("alice"), "before"));
            let (status, body) = get(
                &client,
                format!(
                    "{base}/v1/make_join/{}/{}?{}",
                    encode(&room.room_id),
                    encode(&joiner),
                    ver.join("&")
                ),
            )
            .await;
            assert_eq!(status, 200, "{version}: {body}");
            let template: CanonicalJsonObject =
                serde_json::from_value(body["event"].clone()).expect("an object");
            let join = from_template(
                template,
                Expected {
                    room_id: &room.room_id,
                    user: &joiner,
                    membership: ruma::events::room::member::MembershipState::Join,
                },
                CanonicalJsonObject::new(),
                &room.rules,
                &key,
                joiner_server,
                ruma::MilliSecondsSinceUnixEpoch::now(),
            )
            .unwrap_or_else(|error| panic!("{version}: {error}"));
            assert_eq!(
                join.prev_events,
                std::slice::from_ref(&before.id),
                "{version}: on the head"
            );

            let sent = join.federation_json(&version).expect("federation form");
            let raw = serde_json::value::to_raw_value(&sent).expect("raw");
            let verified = verify_batch(&keys, &version, vec![raw]).await.pop().expect("one");
            let verified = verified.unwrap_or_else(|refusal| panic!("{version}: {refusal}"));
            assert_eq!(verified.pdu.event_id, join.event_id, "{version}");

            // The kit takes the join only under the id the room version gives it.
            let response = client
                .put(format!(
                    "{base}/v2/send_join/{}/{}",
                    encode(&room.room_id),
                    encode(&join.event_id)
                ))
                .json(&sent)
                .send()
                .await
                .expect("request");
            let (status, body) = crate::common::status_and_json(response).await;
            assert_eq!(status, 200, "{version}: {body}");
            assert_eq!(room.heads(), std::slice::from_ref(&join.event_id), "{version}");
            assert_eq!(body["state"].as_array().map(Vec::len), Some(5), "{version}");
        }
    }
}
