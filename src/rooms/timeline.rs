//! Reading rooms as a user may see them: history visibility, timeline pagination tokens,
//! which state a user may read, and events rendered for clients.
//!
//! A pagination token `t<N>` names the gap after stream position N: paging backwards from
//! it yields events at N and before, paging forwards yields events after N.

use std::{
    collections::{HashMap, HashSet},
    ops::ControlFlow,
    sync::Arc,
};

use ruma::{
    RoomId, UserId,
    events::room::{history_visibility::HistoryVisibility, member::MembershipState},
};
use serde_json::{Map, Value as JsonValue};

use super::{Pdu, state};
use crate::{
    Error, Result,
    storage::{
        Direction, Storage,
        account_data::ACCOUNT_DATA_TABLE,
        codec::{Json, prefix, prefix2},
        rooms::{EventMeta, RELATIONS_TABLE, ROOM_MEMBERS_TABLE, RoomRecord, TIMELINE_TABLE},
    },
};

/// A position in a room's timeline, as clients see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(pub u64);

impl Token {
    pub fn parse(text: &str) -> Result<Self> {
        // Sync tokens carry the timeline position first ("s12_..."); plain "t12" and "12"
        // are accepted too.
        let digits =
            text.trim_start_matches(['t', 's']).split(['_', '.', '~']).next().unwrap_or_default();
        digits
            .parse()
            .map(Self)
            .map_err(|_| Error::invalid_param(format!("Invalid pagination token '{text}'.")))
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "t{}", self.0)
    }
}

/// What a user may see of a room: memoises visibility facts per state snapshot.
pub struct Viewer<'a> {
    storage: &'a Storage,
    user: &'a UserId,
    /// The user's current membership in the room.
    current_membership: Option<MembershipState>,
    facts: HashMap<u64, (HistoryVisibility, Option<MembershipState>)>,
    /// Users whose events the viewer ignores (`m.ignored_user_list`).
    ignored: Arc<HashSet<String>>,
}

/// The account data type whose `ignored_users` hides those users' events.
pub const IGNORED_USER_LIST: &str = "m.ignored_user_list";

/// The users `user` ignores (read by every /sync, so cached).
pub fn ignored_users(storage: &Storage, user: &UserId) -> Result<Arc<HashSet<String>>> {
    storage.coherent().ignored_users.get(&user.to_owned(), || {
        Ok(ACCOUNT_DATA_TABLE
            .get_readable(
                storage.engine(),
                &(user.to_owned(), String::new(), IGNORED_USER_LIST.to_owned()),
            )?
            .and_then(|Json(record)| {
                record
                    .content
                    .get("ignored_users")
                    .and_then(JsonValue::as_object)
                    .map(|users| users.keys().cloned().collect::<HashSet<String>>())
            })
            .unwrap_or_default())
    })
}

impl<'a> Viewer<'a> {
    pub fn new(storage: &'a Storage, room_id: &RoomId, user: &'a UserId) -> Result<Self> {
        let current_membership =
            super::membership(storage.engine(), room_id, user)?.map(|record| record.membership);
        let ignored = ignored_users(storage, user)?;
        Ok(Self::known(storage, user, current_membership, ignored))
    }

    /// A viewer whose current membership and ignored users the caller has read already
    /// (a /sync reads them once for all its rooms).
    pub fn known(
        storage: &'a Storage,
        user: &'a UserId,
        current_membership: Option<MembershipState>,
        ignored: Arc<HashSet<String>>,
    ) -> Self {
        Self { storage, user, current_membership, facts: HashMap::new(), ignored }
    }

    /// Whether the viewer ignores `sender`.
    pub fn ignores(&self, sender: &str) -> bool {
        self.ignored.contains(sender)
    }

    pub fn user(&self) -> &UserId {
        self.user
    }

    pub fn current_membership(&self) -> Option<&MembershipState> {
        self.current_membership.as_ref()
    }

    /// `(history_visibility, user's membership)` in the state `snapshot`.
    fn facts(&mut self, snapshot: u64) -> Result<(HistoryVisibility, Option<MembershipState>)> {
        if let Some(facts) = self.facts.get(&snapshot) {
            return Ok(facts.clone());
        }
        let visibility = super::history_visibility_at(self.storage, snapshot)?;
        let membership = super::membership_at(self.storage, snapshot, self.user)?;
        if self.facts.len() > 1024 {
            self.facts.clear();
        }
        self.facts.insert(snapshot, (visibility.clone(), membership.clone()));
        Ok((visibility, membership))
    }

    /// Whether the user may see `pdu`, whose metadata is `meta`.
    pub fn can_see(&mut self, pdu: &Pdu, meta: &EventMeta) -> Result<bool> {
        // Ignoring someone hides their messages, never the room's state.
        if pdu.state_key.is_none() && self.ignores(pdu.sender.as_str()) {
            return Ok(false);
        }
        // Users always see their own membership changes.
        if pdu.state_key.as_deref() == Some(self.user.as_str())
            && pdu.kind.to_string() == "m.room.member"
        {
            return Ok(true);
        }
        let (visibility, membership) = self.facts(meta.state_before)?;
        Ok(match visibility {
            HistoryVisibility::WorldReadable => true,
            _ if membership == Some(MembershipState::Join) => true,
            HistoryVisibility::Shared => self.current_membership == Some(MembershipState::Join),
            HistoryVisibility::Invited => membership == Some(MembershipState::Invite),
            // `joined`, and settings this server does not know: members only.
            _ => false,
        })
    }
}

/// The state snapshot `user` may read for a room: the current state while joined (or when
/// the room is world-readable), the state when they left otherwise. A user who forgot the
/// room reads it as someone who was never in it.
pub fn readable_snapshot(
    storage: &Storage,
    record: &RoomRecord,
    room_id: &RoomId,
    user: &UserId,
) -> Result<u64> {
    let heads = super::heads(storage.engine(), record.short)?
        .ok_or_else(|| Error::not_found("Unknown room."))?;
    let membership = super::membership(storage.engine(), room_id, user)?;
    match membership.as_ref().filter(|record| !record.forgotten).map(|record| &record.membership) {
        Some(MembershipState::Join) => return Ok(heads.snapshot),
        Some(MembershipState::Leave | MembershipState::Ban) => {
            let record =
                membership.as_ref().ok_or_else(|| Error::internal("membership vanished"))?;
            if let Some(short) = super::event_short(storage, &record.event_id)?
                && let Some(meta) = super::event_meta(storage.engine(), short)?
            {
                // The state at their departure, unless the room is world-readable now.
                let world_readable = super::world_readable(storage, heads.snapshot)?;
                return Ok(if world_readable { heads.snapshot } else { meta.state_after });
            }
        }
        _ => {}
    }
    if super::world_readable(storage, heads.snapshot)? {
        Ok(heads.snapshot)
    } else {
        Err(Error::forbidden("You are not a member of this room."))
    }
}

/// Renders an event for `viewer`: age, the sender device's transaction id, and for state
/// events the previous content.
pub fn render(
    storage: &Storage,
    pdu: &Pdu,
    meta: &EventMeta,
    viewer: Option<(&UserId, Option<&str>)>,
) -> Result<JsonValue> {
    let mut unsigned = Map::new();
    if let (Some((user, Some(device))), Some((sent_device, txn))) = (viewer, &meta.transaction)
        && pdu.sender == user
        && device == sent_device
    {
        unsigned.insert("transaction_id".to_owned(), JsonValue::String(txn.clone()));
    }
    if let Some(state_key) = &pdu.state_key
        && let Some(key) = state::short_key(storage, &pdu.kind.to_string(), state_key)?
        && let Some(previous) = state::lookup(storage, meta.state_before, key)?
        && let Some(previous) = super::pdu(storage.engine(), previous)?
    {
        unsigned.insert("prev_content".to_owned(), previous.content_value());
        unsigned
            .insert("replaces_state".to_owned(), JsonValue::String(previous.event_id.to_string()));
    }
    let mut rendered = pdu.client_json(unsigned);
    // Most events never get a child; their meta says so and saves the relation lookups.
    if meta.has_children != Some(false)
        && let Some(bundle) = bundled_relations(storage, pdu, viewer.map(|(user, _)| user))?
        && let Some(unsigned) = rendered.get_mut("unsigned").and_then(JsonValue::as_object_mut)
    {
        unsigned.insert("m.relations".to_owned(), bundle);
    }
    Ok(rendered)
}

/// Bundled aggregations for `pdu` (`m.replace`, `m.thread`, `m.reference`), if any, as
/// `viewer` may see them: children the viewer cannot see, children sent by users the viewer
/// ignores and redacted children (whose relation is broken) are left out. Without a viewer no
/// per-user filtering happens and `current_user_participated` is false.
///
/// State events get no bundle (the spec leaves them out), and a redacted event gets no
/// `m.replace` (its edits serve no purpose); its threads and references stay. The events a
/// bundle carries get one level of bundles of their own (the spec asks for the thread's
/// `latest_event` to carry its edits), but never more: nested bundles are built flat.
pub fn bundled_relations(
    storage: &Storage,
    pdu: &Pdu,
    viewer: Option<&UserId>,
) -> Result<Option<JsonValue>> {
    aggregate(storage, pdu, viewer, true)
}

/// How many children of one relation type an aggregation examines (newest first). Beyond
/// that a thread's `count` is completed from the index alone, as the spec allows an
/// approximate count.
const AGGREGATION_EXAMINED: usize = 1000;

/// The newest children of `parent` with `rel_type` as `(position, short event id)`, newest
/// first (at most [`AGGREGATION_EXAMINED`]), and how many children the index holds in all.
fn relation_rows(
    storage: &Storage,
    parent: u64,
    rel_type: &str,
) -> Result<(Vec<(u64, u64)>, usize)> {
    let mut rows = Vec::new();
    let mut total = 0usize;
    RELATIONS_TABLE.scan(
        storage.engine(),
        &prefix2(&parent, &rel_type),
        None,
        Direction::Reverse,
        |(_, _, position), child| {
            total += 1;
            if rows.len() < AGGREGATION_EXAMINED {
                rows.push((position, child));
            }
            ControlFlow::Continue(())
        },
    )?;
    Ok((rows, total))
}

/// Whether any event relates to `parent`, whatever the relation type.
fn has_children(storage: &Storage, parent: u64) -> Result<bool> {
    let mut found = false;
    RELATIONS_TABLE.scan_keys(
        storage.engine(),
        &prefix(&parent),
        None,
        Direction::Forward,
        |_| {
            found = true;
            ControlFlow::Break(())
        },
    )?;
    Ok(found)
}

/// Whether the stored event carries the redaction that stripped it.
fn is_redacted(pdu: &Pdu) -> bool {
    pdu.redacted_because.is_some()
}

/// Reads the children of one parent as one user may see them.
struct Children<'a> {
    storage: &'a Storage,
    parent: &'a Pdu,
    viewer: Option<Viewer<'a>>,
}

impl<'a> Children<'a> {
    fn new(storage: &'a Storage, parent: &'a Pdu, user: Option<&'a UserId>) -> Result<Self> {
        let viewer = match user {
            Some(user) => Some(Viewer::new(storage, &parent.room_id, user)?),
            None => None,
        };
        Ok(Self { storage, parent, viewer })
    }

    fn user(&self) -> Option<&UserId> {
        self.viewer.as_ref().map(Viewer::user)
    }

    /// The child event `short`, if its relation still stands (not redacted, same room) and
    /// the viewer may see it.
    fn load(&mut self, short: u64) -> Result<Option<Pdu>> {
        let Some(meta) = super::event_meta(self.storage.engine(), short)? else {
            return Ok(None);
        };
        if meta.redacted {
            return Ok(None);
        }
        let Some(child) = super::pdu(self.storage.engine(), short)? else {
            return Ok(None);
        };
        if child.room_id != self.parent.room_id
            || self.viewer.as_ref().is_some_and(|viewer| viewer.ignores(child.sender.as_str()))
        {
            return Ok(None);
        }
        if let Some(viewer) = &mut self.viewer
            && !viewer.can_see(&child, &meta)?
        {
            return Ok(None);
        }
        Ok(Some(child))
    }

    /// A bundled child event in client format, with its own bundle when `nested` allows.
    fn render(&self, child: &Pdu, nested: bool) -> Result<JsonValue> {
        let mut unsigned = Map::new();
        if nested && let Some(bundle) = aggregate(self.storage, child, self.user(), false)? {
            unsigned.insert("m.relations".to_owned(), bundle);
        }
        Ok(child.client_json(unsigned))
    }
}

/// Builds the `m.relations` object of `pdu`; `nested` lets bundled events carry bundles.
fn aggregate(
    storage: &Storage,
    pdu: &Pdu,
    viewer: Option<&UserId>,
    nested: bool,
) -> Result<Option<JsonValue>> {
    if pdu.is_state() {
        return Ok(None);
    }
    let Some(short) = super::event_short(storage, &pdu.event_id)? else {
        return Ok(None);
    };
    // Most events have no children: one look settles that instead of a scan per relation type.
    if !has_children(storage, short)? {
        return Ok(None);
    }
    let redacted = is_redacted(pdu);
    // An edit of an edit is not valid, so an edit's own edits need no scan.
    let editable = !redacted
        && super::relations::relation_of(pdu).is_none_or(|(_, rel_type)| rel_type != "m.replace");
    let edits = if editable { relation_rows(storage, short, "m.replace")?.0 } else { Vec::new() };
    let (thread, thread_total) = relation_rows(storage, short, "m.thread")?;
    let (references, _) = relation_rows(storage, short, "m.reference")?;
    if edits.is_empty() && thread_total == 0 && references.is_empty() {
        return Ok(None);
    }
    let mut children = Children::new(storage, pdu, viewer)?;
    let mut relations = Map::new();
    if let Some(edit) = latest_edit(&mut children, &edits)? {
        relations.insert("m.replace".to_owned(), children.render(&edit, false)?);
    }
    if thread_total > 0
        && let Some(summary) = thread_summary(&mut children, &thread, thread_total, nested)?
    {
        relations.insert("m.thread".to_owned(), summary);
    }
    let mut chunk = Vec::new();
    // Oldest first, the order the references were made in.
    for (_, child) in references.iter().rev() {
        if let Some(reference) = children.load(*child)? {
            chunk.push(serde_json::json!({ "event_id": reference.event_id }));
        }
    }
    if !chunk.is_empty() {
        relations.insert("m.reference".to_owned(), serde_json::json!({ "chunk": chunk }));
    }
    Ok((!relations.is_empty()).then_some(JsonValue::Object(relations)))
}

/// The most recent valid replacement of the parent: same sender, same type, not a state
/// event, with `m.new_content`; the newest by `origin_server_ts`, then by event id.
fn latest_edit(children: &mut Children<'_>, rows: &[(u64, u64)]) -> Result<Option<Pdu>> {
    let mut latest: Option<Pdu> = None;
    for (_, short) in rows {
        let Some(edit) = children.load(*short)? else { continue };
        let parent = children.parent;
        if edit.sender != parent.sender
            || edit.kind != parent.kind
            || edit.state_key.is_some()
            || !edit.content_value().get("m.new_content").is_some_and(JsonValue::is_object)
        {
            continue;
        }
        let newer = latest.as_ref().is_none_or(|current| {
            (edit.origin_server_ts, &edit.event_id) > (current.origin_server_ts, &current.event_id)
        });
        if newer {
            latest = Some(edit);
        }
    }
    Ok(latest)
}

/// The `m.thread` summary: the newest reply, how many replies, and whether the viewer took
/// part (sent the root or a reply).
fn thread_summary(
    children: &mut Children<'_>,
    rows: &[(u64, u64)],
    total: usize,
    nested: bool,
) -> Result<Option<JsonValue>> {
    let user = children.user().map(ToOwned::to_owned);
    let mut participated = user.as_deref().is_some_and(|user| children.parent.sender == user);
    let mut count = 0usize;
    let mut latest = None;
    for (_, short) in rows {
        let Some(reply) = children.load(*short)? else { continue };
        count += 1;
        if user.as_deref().is_some_and(|user| reply.sender == user) {
            participated = true;
        }
        if latest.is_none() {
            latest = Some(reply);
        }
    }
    let Some(latest) = latest else {
        return Ok(None);
    };
    // Replies beyond the examined ones are counted as the index has them.
    count += total.saturating_sub(rows.len());
    Ok(Some(serde_json::json!({
        "latest_event": children.render(&latest, nested)?,
        "count": count,
        "current_user_participated": participated,
    })))
}

/// A page of a room's timeline in `direction` from `from`, as events the viewer may see.
pub struct Page {
    pub events: Vec<(u64, Pdu, EventMeta)>,
    /// Token to continue from, absent when the start (or end) was reached.
    pub next: Option<Token>,
}

/// Walks the timeline of `room` and keeps the visible events that `keep` accepts, up to
/// `limit`; at most `scan_limit` events are examined.
pub fn paginate(
    storage: &Storage,
    room: u64,
    from: Option<Token>,
    direction: Direction,
    limit: usize,
    viewer: &mut Viewer<'_>,
    mut keep: impl FnMut(&Pdu) -> bool,
) -> Result<Page> {
    let scan_limit = limit.saturating_mul(50).max(500);
    let prefix = room.to_be_bytes();
    let start = match (from, direction) {
        (Some(Token(position)), Direction::Reverse) => Some((room, position)),
        (Some(Token(position)), Direction::Forward) => Some((room, position.saturating_add(1))),
        (None, _) => None,
    };
    let mut candidates = Vec::new();
    let mut scanned = 0usize;
    let mut last = None;
    let mut exhausted = true;
    TIMELINE_TABLE.scan(
        storage.engine(),
        &prefix,
        start.as_ref(),
        direction,
        |(_, position), short| {
            scanned += 1;
            last = Some(position);
            candidates.push((position, short));
            if scanned >= scan_limit {
                exhausted = false;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        },
    )?;
    let mut events = Vec::new();
    let mut finished_at = None;
    for (position, short) in &candidates {
        let Some(pdu) = super::readable_pdu(storage.engine(), *short)? else { continue };
        let Some(meta) = super::readable_event_meta(storage.engine(), *short)? else { continue };
        if !keep(&pdu) || !viewer.can_see(&pdu, &meta)? {
            continue;
        }
        events.push((*short, pdu, meta));
        if events.len() >= limit {
            finished_at = Some(*position);
            break;
        }
    }
    let next = match (finished_at, direction) {
        (Some(position), Direction::Reverse) => Some(Token(position.saturating_sub(1))),
        (Some(position), Direction::Forward) => Some(Token(position)),
        (None, Direction::Reverse) if !exhausted => {
            last.map(|position| Token(position.saturating_sub(1)))
        }
        (None, Direction::Forward) if !exhausted => last.map(Token),
        (None, _) => None,
    };
    Ok(Page { events, next })
}

/// Members of a room in the state `snapshot`, optionally filtered by membership.
pub fn members_at(storage: &Storage, snapshot: u64) -> Result<Vec<Pdu>> {
    let state = state::load(storage, snapshot)?;
    let mut members = Vec::new();
    for (key, short) in state {
        let Some((kind, _)) = state::resolve_key(storage, key)? else { continue };
        if kind != "m.room.member" {
            continue;
        }
        if let Some(pdu) = super::readable_pdu(storage.engine(), short)? {
            members.push(pdu);
        }
    }
    Ok(members)
}

/// Currently joined members (user id, member event content) from the membership index.
pub fn joined_members(storage: &Storage, room: u64) -> Result<Vec<String>> {
    let mut joined = Vec::new();
    ROOM_MEMBERS_TABLE.scan(
        storage.engine(),
        &room.to_be_bytes(),
        None,
        Direction::Forward,
        |(_, user), Json(record)| {
            if record.membership == MembershipState::Join {
                joined.push(user);
            }
            ControlFlow::Continue(())
        },
    )?;
    Ok(joined)
}
