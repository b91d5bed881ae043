//! Spaces: a space's children (its current `m.space.child` events), who may see which room
//! of a space, the walk of a space tree our clients' `/hierarchy` makes, and the answer to
//! other servers' `/hierarchy` requests.
//!
//! The walk is depth-first and deterministic for a given state. Rooms this server is not in
//! are asked of other servers (`GET /_matrix/federation/v1/hierarchy/{roomId}`) through the
//! `via` servers of the child event that names them (the root through the server of its
//! id). One answer describes a space and its direct children, so only spaces cost a request;
//! answers are cached for a few minutes ([`RemoteSpaces`]), so the pages of one walk do not
//! ask again.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ruma::events::room::member::MembershipState;
use ruma::{
    OwnedRoomId, OwnedServerName, RoomId, ServerName, UserId,
    api::{
        client::space::SpaceHierarchyRoomsChunk,
        federation::space::{SpaceHierarchyParentSummary, get_hierarchy},
    },
    events::space::child::HierarchySpaceChildEvent,
    room::{JoinRuleSummary, RoomSummary, RoomType},
    serde::Raw,
};
use serde_json::{Value as JsonValue, json};

use super::{Pdu, state, summary::RoomInfo};
use crate::{
    Error, Result,
    federation::{acl, client::FederationClient, flight::SingleFlight},
    storage::Storage,
};

/// How long an answer of another server is reused.
const REMOTE_TTL: Duration = Duration::from_secs(300);
/// How long a room no `via` server could describe is not asked about again.
const REMOTE_FAILURE_TTL: Duration = Duration::from_secs(30);
/// Remote answers kept; beyond this, expired ones are dropped, then all.
const REMOTE_CACHE_LIMIT: usize = 1_000;
/// `via` servers tried for one room.
const MAX_VIA: usize = 3;
/// How long one server may take to describe a space.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Requests to other servers one walk may make: a hostile space with a child on every
/// server of the federation costs a page this many requests, not thousands.
const MAX_REMOTE_PER_WALK: usize = 20;
/// How long one walk may wait for other servers in all; after that, rooms it has no
/// answer for are left out (or shown from their parent's answer).
const REMOTE_BUDGET: Duration = Duration::from_secs(30);

/// A child named by a space's `m.space.child` event.
#[derive(Debug, Clone)]
pub struct Child {
    pub room_id: OwnedRoomId,
    /// The servers to ask about the child.
    pub via: Vec<OwnedServerName>,
    order: Option<String>,
    origin_server_ts: u64,
    /// The event as hierarchies show it: stripped, with its timestamp.
    state: JsonValue,
}

/// A valid `order`: at most 50 characters, all printable ASCII.
fn valid_order(content: &JsonValue) -> Option<String> {
    content
        .get("order")
        .and_then(JsonValue::as_str)
        .filter(|order| order.len() <= 50 && order.chars().all(|c| (' '..='~').contains(&c)))
        .map(str::to_owned)
}

impl Child {
    /// A child from its event's parts; `None` unless its `via` is a non-empty list (and, with
    /// `suggested_only`, it is marked `suggested`).
    fn new(
        state_key: &str,
        content: &JsonValue,
        sender: &str,
        origin_server_ts: u64,
        suggested_only: bool,
    ) -> Option<Self> {
        let room_id = RoomId::parse(state_key).ok()?;
        let via = content.get("via").and_then(JsonValue::as_array).filter(|via| !via.is_empty())?;
        if suggested_only && content.get("suggested").and_then(JsonValue::as_bool) != Some(true) {
            return None;
        }
        let via = via
            .iter()
            .filter_map(JsonValue::as_str)
            .filter_map(|server| ServerName::parse(server).ok())
            .collect();
        Some(Self {
            order: valid_order(content),
            state: json!({
                "type": "m.space.child",
                "state_key": room_id,
                "content": content,
                "sender": sender,
                "origin_server_ts": origin_server_ts,
            }),
            room_id,
            via,
            origin_server_ts,
        })
    }

    fn from_pdu(state_key: &str, pdu: &Pdu, suggested_only: bool) -> Option<Self> {
        let ts = u64::from(pdu.origin_server_ts.get());
        Self::new(state_key, &pdu.content_value(), pdu.sender.as_str(), ts, suggested_only)
    }

    /// A child from the stripped event another server sent.
    fn from_stripped(event: &Raw<HierarchySpaceChildEvent>, suggested_only: bool) -> Option<Self> {
        let event: JsonValue = event.deserialize_as_unchecked().ok()?;
        if event.get("type").and_then(JsonValue::as_str) != Some("m.space.child") {
            return None;
        }
        Self::new(
            event.get("state_key")?.as_str()?,
            event.get("content")?,
            event.get("sender").and_then(JsonValue::as_str).unwrap_or_default(),
            event.get("origin_server_ts").and_then(JsonValue::as_u64).unwrap_or(0),
            suggested_only,
        )
    }

    fn state(&self) -> Result<Raw<HierarchySpaceChildEvent>> {
        Ok(Raw::from_json(serde_json::value::to_raw_value(&self.state)?))
    }
}

/// Sorts children in the spec's order: valid `order` first (by code point), then by the
/// event's timestamp, then by room id.
fn sort(children: &mut [Child]) {
    children.sort_by(|a, b| {
        let by_order = match (&a.order, &b.order) {
            (Some(a), Some(b)) => a.cmp(b),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        by_order
            .then_with(|| a.origin_server_ts.cmp(&b.origin_server_ts))
            .then_with(|| a.room_id.cmp(&b.room_id))
    });
}

/// The children of a space at `snapshot`, in the spec's order.
pub fn children(storage: &Storage, snapshot: u64, suggested_only: bool) -> Result<Vec<Child>> {
    let mut children = Vec::new();
    for (key, short) in state::load(storage, snapshot)? {
        let Some((kind, state_key)) = state::resolve_key(storage, key)? else { continue };
        if kind != "m.space.child" {
            continue;
        }
        let Some(pdu) = super::readable_pdu(storage.engine(), short)? else { continue };
        children.extend(Child::from_pdu(&state_key, &pdu, suggested_only));
    }
    sort(&mut children);
    Ok(children)
}

/// The stripped child events of a space, as hierarchies show them.
pub fn children_state(children: &[Child]) -> Result<Vec<Raw<HierarchySpaceChildEvent>>> {
    children.iter().map(Child::state).collect()
}

// ---------------------------------------------------------------------------------------------
// Who may see a room

/// Whether a room's join rule or history visibility lets anyone see it.
pub fn open_to_all(join_rule: &JoinRuleSummary, world_readable: bool) -> bool {
    world_readable
        || matches!(
            join_rule,
            JoinRuleSummary::Public | JoinRuleSummary::Knock | JoinRuleSummary::KnockRestricted(_)
        )
}

/// The rooms whose members may join a restricted room.
fn allowed_rooms(join_rule: &JoinRuleSummary) -> &[OwnedRoomId] {
    match join_rule {
        JoinRuleSummary::Restricted(restricted) | JoinRuleSummary::KnockRestricted(restricted) => {
            &restricted.allowed_room_ids
        }
        _ => &[],
    }
}

/// Whether `user` may see a room in a hierarchy: joined or invited, able to join or knock,
/// or the room is world-readable. Banned users see nothing of it. Works for rooms this
/// server is not in too (from another server's summary), with what this server knows of
/// the user.
pub fn user_may_see(storage: &Storage, summary: &RoomSummary, user: &UserId) -> Result<bool> {
    let engine = storage.engine();
    match super::membership(engine, &summary.room_id, user)?.map(|record| record.membership) {
        Some(MembershipState::Join | MembershipState::Invite) => return Ok(true),
        Some(MembershipState::Ban) => return Ok(false),
        _ => {}
    }
    if open_to_all(&summary.join_rule, summary.world_readable) {
        return Ok(true);
    }
    for room in allowed_rooms(&summary.join_rule) {
        if super::is_joined(engine, room, user)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether `server` may see a room of this server in a hierarchy: the room's server ACL lets
/// it in, and it could peek or join: the room is public, knockable or world-readable, a user
/// of `server` is in it, or (restricted rooms) in one of the rooms whose members may join.
pub fn server_may_see(storage: &Storage, info: &RoomInfo, server: &ServerName) -> Result<bool> {
    if !acl::room_allows(storage, info.snapshot, server)? {
        return Ok(false);
    }
    let summary = info.summary();
    if open_to_all(&summary.join_rule, summary.world_readable) {
        return Ok(true);
    }
    if super::summary::server_is_joined(storage, info.short, server)? {
        return Ok(true);
    }
    for room in allowed_rooms(&summary.join_rule) {
        if let Some(record) = super::room(storage, room)?
            && super::summary::server_is_joined(storage, record.short, server)?
        {
            return Ok(true);
        }
    }
    Ok(false)
}

// ---------------------------------------------------------------------------------------------
// Other servers asking

/// The answer to `server`'s `/hierarchy` request for one of this server's rooms: the room
/// and its children as `server` may see them.
pub fn for_server(
    storage: &Storage,
    room_id: &RoomId,
    server: &ServerName,
    suggested_only: bool,
) -> Result<get_hierarchy::v1::Response> {
    let unknown = || Error::not_found("Room not found, or not visible to your server.");
    let info = RoomInfo::load(storage, room_id)?.ok_or_else(unknown)?;
    acl::check(storage, info.snapshot, server)?;
    if !server_may_see(storage, &info, server)? {
        return Err(unknown());
    }
    let children = if info.is_space() {
        children(storage, info.snapshot, suggested_only)?
    } else {
        Vec::new()
    };
    let room = SpaceHierarchyParentSummary::new(info.summary(), children_state(&children)?);
    let mut response = get_hierarchy::v1::Response::new(room);
    let mut seen = HashSet::new();
    for child in children {
        if !seen.insert(child.room_id.clone()) {
            continue;
        }
        // Rooms this server does not know are left out: others can describe them better.
        let Some(child_info) = RoomInfo::load(storage, &child.room_id)? else { continue };
        if server_may_see(storage, &child_info, server)? {
            response.children.push(child_info.summary());
        } else {
            response.inaccessible_children.push(child.room_id);
        }
    }
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// Asking other servers

/// What another server said about one of its spaces.
#[derive(Debug)]
pub struct RemoteSpace {
    pub room: RoomSummary,
    pub children_state: Vec<Raw<HierarchySpaceChildEvent>>,
    /// Summaries of the space's children the server let us see.
    pub children: Vec<RoomSummary>,
    /// Children the server says we cannot see.
    pub inaccessible: Vec<OwnedRoomId>,
}

type Cached = (Instant, Option<Arc<RemoteSpace>>);

/// Other servers' answers about their spaces, kept for a few minutes.
#[derive(Default)]
pub struct RemoteSpaces {
    cache: Mutex<HashMap<(OwnedRoomId, bool), Cached>>,
    flight: SingleFlight<(OwnedRoomId, bool), Option<Arc<RemoteSpace>>>,
}

impl RemoteSpaces {
    fn cached(&self, key: &(OwnedRoomId, bool)) -> Option<Option<Arc<RemoteSpace>>> {
        let cache = self.cache.lock().unwrap_or_else(|poison| poison.into_inner());
        let (fetched, space) = cache.get(key)?;
        let ttl = if space.is_some() { REMOTE_TTL } else { REMOTE_FAILURE_TTL };
        (fetched.elapsed() < ttl).then(|| space.clone())
    }

    fn keep(&self, key: (OwnedRoomId, bool), space: Option<Arc<RemoteSpace>>) {
        let mut cache = self.cache.lock().unwrap_or_else(|poison| poison.into_inner());
        if cache.len() >= REMOTE_CACHE_LIMIT {
            cache.retain(|_, (fetched, _)| fetched.elapsed() < REMOTE_TTL);
            if cache.len() >= REMOTE_CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(key, (Instant::now(), space));
    }

    /// What the first of `via` that answers within `timeout` (in all) says about
    /// `room_id`; `None` when none could describe it (unknown there, unreachable, refused,
    /// or an answer about another room).
    pub async fn fetch(
        &self,
        client: &FederationClient,
        room_id: &RoomId,
        via: &[OwnedServerName],
        suggested_only: bool,
        timeout: Duration,
    ) -> Option<Arc<RemoteSpace>> {
        let key = (room_id.to_owned(), suggested_only);
        if let Some(cached) = self.cached(&key) {
            return cached;
        }
        let space = self
            .flight
            .run(&key, || async {
                let deadline = Instant::now() + timeout;
                let mut tried = HashSet::new();
                for server in via {
                    if server == client.origin() || !tried.insert(server.clone()) {
                        continue;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if tried.len() > MAX_VIA || left.is_zero() {
                        break;
                    }
                    let mut request = get_hierarchy::v1::Request::new(room_id.to_owned());
                    request.suggested_only = suggested_only;
                    match client.send_with_timeout(server, request, left.min(REMOTE_TIMEOUT)).await
                    {
                        Ok(response) if response.room.summary.room_id == room_id => {
                            return Some(Arc::new(RemoteSpace {
                                room: response.room.summary,
                                children_state: response.room.children_state,
                                children: response.children,
                                inaccessible: response.inaccessible_children,
                            }));
                        }
                        Ok(response) => tracing::debug!(
                            %server, room = %room_id, answered = %response.room.summary.room_id,
                            "a server described another room than asked"
                        ),
                        Err(error) => tracing::debug!(
                            %server, room = %room_id, %error, "cannot get a space's hierarchy"
                        ),
                    }
                }
                None
            })
            .await;
        self.keep(key, space.clone());
        space
    }
}

// ---------------------------------------------------------------------------------------------
// Our clients' walk

/// What a client asked to walk.
#[derive(Debug, Clone)]
pub struct WalkRequest {
    pub room_id: OwnedRoomId,
    /// Rooms per page.
    pub limit: usize,
    pub max_depth: usize,
    /// Visible rooms already returned by earlier pages.
    pub skip: usize,
    pub suggested_only: bool,
}

/// One page of a walk.
#[derive(Debug, Default)]
pub struct WalkPage {
    pub rooms: Vec<SpaceHierarchyRoomsChunk>,
    /// Where the next page starts (visible rooms before it), if there is one.
    pub next: Option<usize>,
}

/// What the walk needs besides the request.
pub struct Walker<'a> {
    pub storage: &'a Storage,
    pub client: &'a FederationClient,
    pub remote: &'a RemoteSpaces,
}

/// A room of the tree, described by this server or another.
enum Node {
    Local(RoomInfo),
    Remote { summary: RoomSummary, children: Vec<Child> },
}

/// What one walk learnt from other servers' answers.
struct Learnt {
    /// Summaries of rooms some answer listed as a child.
    summaries: HashMap<OwnedRoomId, RoomSummary>,
    /// Rooms some answer said we may not see.
    inaccessible: HashSet<OwnedRoomId>,
    requests: usize,
    /// When the walk stops asking other servers.
    deadline: Instant,
}

impl Learnt {
    fn new() -> Self {
        Self {
            summaries: HashMap::new(),
            inaccessible: HashSet::new(),
            requests: 0,
            deadline: Instant::now() + REMOTE_BUDGET,
        }
    }
}

impl Walker<'_> {
    /// A page of the tree under `request.room_id` as `user` may see it. `403 M_FORBIDDEN`
    /// when the root is unknown or not visible to the user.
    pub async fn walk(&self, user: &UserId, request: &WalkRequest) -> Result<WalkPage> {
        let forbidden = || Error::forbidden("You are not allowed to view this room.");
        let mut learnt = Learnt::new();
        let root_via: Vec<OwnedServerName> =
            request.room_id.server_name().map(ToOwned::to_owned).into_iter().collect();
        let root = self
            .resolve(&request.room_id, &root_via, request.suggested_only, &mut learnt)
            .await?
            .ok_or_else(forbidden)?;
        if !self.visible(&root, user)? {
            return Err(forbidden());
        }

        let mut page = WalkPage::default();
        let mut seen = HashSet::new();
        let mut stack: Vec<(OwnedRoomId, usize, Vec<OwnedServerName>, Option<Node>)> =
            vec![(request.room_id.clone(), 0, Vec::new(), Some(root))];
        let mut visible = 0usize;
        while let Some((room_id, depth, via, known)) = stack.pop() {
            if !seen.insert(room_id.clone()) {
                continue;
            }
            let node = match known {
                Some(node) => node,
                None => {
                    match self.resolve(&room_id, &via, request.suggested_only, &mut learnt).await? {
                        Some(node) => node,
                        // Nobody could describe it: left out.
                        None => continue,
                    }
                }
            };
            if !self.visible(&node, user)? {
                continue;
            }
            if visible >= request.skip && page.rooms.len() == request.limit {
                page.next = Some(visible);
                break;
            }
            let (summary, children) = match node {
                Node::Local(info) => {
                    let children = if info.is_space() {
                        children(self.storage, info.snapshot, request.suggested_only)?
                    } else {
                        Vec::new()
                    };
                    (info.summary(), children)
                }
                Node::Remote { summary, children } => (summary, children),
            };
            if visible >= request.skip {
                page.rooms.push(SpaceHierarchyRoomsChunk::new(summary, children_state(&children)?));
            }
            visible += 1;
            if depth < request.max_depth {
                // Reversed onto the stack, so the first child is walked next.
                stack.extend(
                    children
                        .into_iter()
                        .rev()
                        .filter(|child| !seen.contains(&child.room_id))
                        .map(|child| (child.room_id, depth + 1, child.via, None)),
                );
            }
        }
        Ok(page)
    }

    fn visible(&self, node: &Node, user: &UserId) -> Result<bool> {
        match node {
            Node::Local(info) => user_may_see(self.storage, &info.summary(), user),
            Node::Remote { summary, .. } => user_may_see(self.storage, summary, user),
        }
    }

    /// Describes a room: from this server's state if it knows the room, else from what
    /// another server said (a child's summary in its parent's answer, or the room's own
    /// answer for spaces, whose children only that answer lists).
    async fn resolve(
        &self,
        room_id: &RoomId,
        via: &[OwnedServerName],
        suggested_only: bool,
        learnt: &mut Learnt,
    ) -> Result<Option<Node>> {
        if let Some(info) = RoomInfo::load(self.storage, room_id)? {
            return Ok(Some(Node::Local(info)));
        }
        // The server hosting the parent said we may not see it: do not ask again.
        if learnt.inaccessible.contains(room_id) {
            return Ok(None);
        }
        let listed = learnt.summaries.remove(room_id);
        if let Some(summary) = &listed
            && summary.room_type != Some(RoomType::Space)
        {
            return Ok(listed.map(|summary| Node::Remote { summary, children: Vec::new() }));
        }
        let key = (room_id.to_owned(), suggested_only);
        let fetched = match self.remote.cached(&key) {
            // Answers (and failures) kept from earlier walks cost no request.
            Some(cached) => cached,
            None => {
                let left = learnt.deadline.saturating_duration_since(Instant::now());
                if learnt.requests >= MAX_REMOTE_PER_WALK || left.is_zero() {
                    return Ok(listed.map(|summary| Node::Remote { summary, children: Vec::new() }));
                }
                learnt.requests += 1;
                self.remote.fetch(self.client, room_id, via, suggested_only, left).await
            }
        };
        let Some(space) = fetched else {
            // A space its parent's server described, whose own servers do not answer:
            // shown without children.
            return Ok(listed.map(|summary| Node::Remote { summary, children: Vec::new() }));
        };
        for summary in &space.children {
            learnt.summaries.entry(summary.room_id.clone()).or_insert_with(|| summary.clone());
        }
        learnt.inaccessible.extend(space.inaccessible.iter().cloned());
        let mut children: Vec<Child> = if space.room.room_type == Some(RoomType::Space) {
            space
                .children_state
                .iter()
                .filter_map(|event| Child::from_stripped(event, suggested_only))
                .collect()
        } else {
            Vec::new()
        };
        sort(&mut children);
        Ok(Some(Node::Remote { summary: space.room.clone(), children }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_must_be_short_printable_ascii() {
        assert_eq!(valid_order(&json!({"order": " "})).as_deref(), Some(" "));
        assert_eq!(valid_order(&json!({"order": "~abc"})).as_deref(), Some("~abc"));
        assert_eq!(valid_order(&json!({"order": "é"})), None);
        assert_eq!(valid_order(&json!({"order": "x".repeat(51)})), None);
        assert_eq!(valid_order(&json!({"order": 3})), None);
    }

    #[test]
    fn children_need_a_via_and_sort_by_order_then_time() {
        let child =
            |id: &str, content: JsonValue, ts: u64| Child::new(id, &content, "@a:x", ts, false);
        assert!(child("!a:x", json!({}), 1).is_none(), "no via");
        assert!(child("!a:x", json!({"via": []}), 1).is_none(), "empty via");
        assert!(child("not-a-room", json!({"via": ["x"]}), 1).is_none());
        assert!(
            Child::new("!a:x", &json!({"via": ["x"]}), "@a:x", 1, true).is_none(),
            "not suggested"
        );
        let mut children = vec![
            child("!c:x", json!({"via": ["x"]}), 1).expect("child"),
            child("!b:x", json!({"via": ["x"]}), 2).expect("child"),
            child("!a:x", json!({"via": ["x", "not a server!"]}), 3).expect("child"),
            child("!d:x", json!({"via": ["x"], "order": "a"}), 9).expect("child"),
        ];
        sort(&mut children);
        let order: Vec<&str> = children.iter().map(|child| child.room_id.as_str()).collect();
        assert_eq!(order, vec!["!d:x", "!c:x", "!b:x", "!a:x"]);
        assert_eq!(children[3].via.len(), 1, "an invalid server name is dropped");
    }

    #[test]
    fn stripped_children_from_other_servers_are_checked() {
        let raw = |value: JsonValue| {
            Raw::<HierarchySpaceChildEvent>::from_json(
                serde_json::value::to_raw_value(&value).expect("raw"),
            )
        };
        let good = raw(json!({"type": "m.space.child", "state_key": "!a:x",
            "content": {"via": ["x"], "suggested": true}, "sender": "@a:x",
            "origin_server_ts": 5}));
        let child = Child::from_stripped(&good, true).expect("child");
        assert_eq!((child.room_id.as_str(), child.origin_server_ts), ("!a:x", 5));
        let other_type =
            raw(json!({"type": "m.space.parent", "state_key": "!a:x", "content": {"via": ["x"]}}));
        assert!(Child::from_stripped(&other_type, false).is_none());
        assert!(Child::from_stripped(&raw(json!({"type": "m.space.child"})), false).is_none());
        assert!(Child::from_stripped(&raw(json!("text")), false).is_none());
    }
}
