//! Server-side search (`POST /search`), category `room_events`: message bodies through the
//! word index the room actors keep, in the rooms the user is in or has left, and only events
//! the user may see.
//!
//! The index holds the lower-case alphanumeric words of `m.room.message` bodies, so the search
//! term is cut into words the same way and an event matches when its body has all of them.
//! Its rank is how often the words occur in the body. Results are read in full order
//! (rank then newest, or newest) and a `next_batch` token names the last result returned,
//! optionally scoped to one group, so the next page starts strictly after it.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    ops::ControlFlow,
    sync::Arc,
};

use ruma::events::room::member::MembershipState;
use ruma::{
    OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    api::client::search::search_events::v3::{
        self as search_events, Criteria, EventContextResult, GroupingKey, OrderBy,
        ResultCategories, ResultGroup, ResultGroupMap, ResultRoomEvents, SearchKeys, SearchResult,
        UserProfile,
    },
    serde::Raw,
};
use serde_json::Value as JsonValue;

use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    accounts::Sender,
    http::ruma::{Ruma, route_raw},
    rooms::search::tokenize,
    rooms::{
        self, Pdu, filter, state,
        timeline::{self, Token, Viewer},
    },
    storage::{
        Direction, Storage,
        codec::{Json, Prefix},
        rooms::{EventMeta, SEARCH_TABLE, USER_ROOMS_TABLE},
    },
};

/// Results one page returns when the filter names no limit.
const DEFAULT_LIMIT: usize = 10;
/// Most results one page returns.
const MAX_LIMIT: usize = 100;
/// Most context events on either side of one result.
const MAX_CONTEXT: usize = 50;
/// Most matching events one search examines (the newest); `count` is approximate beyond.
const MAX_CANDIDATES: usize = 5000;
/// Most index rows read for one word in one room.
const MAX_POSTINGS: usize = 100_000;

pub(super) fn routes(router: Routes) -> Routes {
    route_raw(router, search)
}

fn raw<T>(value: &JsonValue) -> Result<Raw<T>> {
    Ok(Raw::from_json(serde_json::value::to_raw_value(value)?))
}

/// `POST /search`. The body is ruma's, except that a searched category always lists
/// `results` and `highlights`, empty or not: ruma leaves empty lists out and clients index
/// them directly.
async fn search(
    services: Arc<Services>,
    request: Ruma<search_events::Request>,
) -> Result<axum::Json<JsonValue>> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let mut categories = ResultCategories::new();
    let room_events_asked = body.search_categories.room_events.is_some();
    if let Some(criteria) = body.search_categories.room_events {
        let next_batch = body.next_batch;
        // Many index and event reads: off the async runtime.
        categories.room_events = tokio::task::spawn_blocking(move || {
            room_events(&services, &sender, &criteria, next_batch.as_deref())
        })
        .await
        .map_err(|error| Error::internal(format!("search task failed: {error}")))??;
    }
    let mut categories = serde_json::to_value(categories)?;
    if room_events_asked
        && let Some(categories) = categories.as_object_mut()
        && let Some(room_events) =
            categories.entry("room_events").or_insert_with(|| serde_json::json!({})).as_object_mut()
    {
        for list in ["results", "highlights"] {
            room_events.entry(list).or_insert_with(|| JsonValue::Array(Vec::new()));
        }
    }
    Ok(axum::Json(serde_json::json!({ "search_categories": categories })))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Rank,
    Recent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum GroupBy {
    Room,
    Sender,
}

impl GroupBy {
    fn code(self) -> &'static str {
        match self {
            Self::Room => "room",
            Self::Sender => "sender",
        }
    }

    fn value(self, pdu: &Pdu) -> String {
        match self {
            Self::Room => pdu.room_id.to_string(),
            Self::Sender => pdu.sender.to_string(),
        }
    }
}

/// Where a page ended: the last result returned, within a group or not.
/// Written `k.<rank>.<position>` (rank order) or `r.0.<position>` (recent order), followed by
/// `.room.<hex room id>` or `.sender.<hex user id>` for a group's token.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    order: Order,
    rank: u64,
    position: u64,
    scope: Option<(GroupBy, String)>,
}

impl Cursor {
    fn encode(&self) -> String {
        let order = match self.order {
            Order::Rank => "k",
            Order::Recent => "r",
        };
        let mut token = format!("{order}.{}.{}", self.rank, self.position);
        if let Some((group, value)) = &self.scope {
            let hex: String = value.bytes().map(|byte| format!("{byte:02x}")).collect();
            token.push_str(&format!(".{}.{hex}", group.code()));
        }
        token
    }

    fn parse(text: &str) -> Result<Self> {
        let invalid = || Error::invalid_param(format!("Invalid search pagination token '{text}'."));
        let parts: Vec<&str> = text.split('.').collect();
        let (order, rank, position, scope) = match parts.as_slice() {
            [order, rank, position] => (*order, *rank, *position, None),
            [order, rank, position, group, value] => {
                (*order, *rank, *position, Some((*group, *value)))
            }
            _ => return Err(invalid()),
        };
        let order = match order {
            "k" => Order::Rank,
            "r" => Order::Recent,
            _ => return Err(invalid()),
        };
        let rank = rank.parse().map_err(|_| invalid())?;
        let position = position.parse().map_err(|_| invalid())?;
        let scope = match scope {
            None => None,
            Some((group, value)) => {
                let group = match group {
                    "room" => GroupBy::Room,
                    "sender" => GroupBy::Sender,
                    _ => return Err(invalid()),
                };
                if !value.len().is_multiple_of(2) || !value.is_ascii() {
                    return Err(invalid());
                }
                let bytes = (0..value.len())
                    .step_by(2)
                    .map(|at| u8::from_str_radix(&value[at..at + 2], 16))
                    .collect::<Result<Vec<u8>, _>>()
                    .map_err(|_| invalid())?;
                Some((group, String::from_utf8(bytes).map_err(|_| invalid())?))
            }
        };
        Ok(Self { order, rank, position, scope })
    }
}

/// A matching event the user may see.
struct Hit {
    rank: u64,
    position: u64,
    /// Index into the searched rooms.
    room: usize,
    pdu: Pdu,
    meta: EventMeta,
}

impl Hit {
    /// The sort key: results are read from the largest key down.
    fn key(&self, order: Order) -> (u64, u64) {
        match order {
            Order::Rank => (self.rank, self.position),
            Order::Recent => (0, self.position),
        }
    }

    fn cursor(&self, order: Order, scope: Option<(GroupBy, String)>) -> Cursor {
        let (rank, position) = self.key(order);
        Cursor { order, rank, position, scope }
    }
}

/// The request's options, checked.
struct Plan {
    order: Order,
    terms: Vec<String>,
    groupings: Vec<GroupBy>,
    cursor: Option<Cursor>,
    limit: usize,
    before_limit: usize,
    after_limit: usize,
}

fn plan(criteria: &Criteria, next_batch: Option<&str>) -> Result<Plan> {
    let order = match &criteria.order_by {
        None | Some(OrderBy::Rank) => Order::Rank,
        Some(OrderBy::Recent) => Order::Recent,
        Some(other) => {
            return Err(Error::invalid_param(format!(
                "Unknown order_by '{}': use 'rank' or 'recent'.",
                other.as_str()
            )));
        }
    };
    let mut searches_body = true;
    if let Some(keys) = &criteria.keys {
        for key in keys {
            match key {
                SearchKeys::ContentBody | SearchKeys::ContentName | SearchKeys::ContentTopic => {}
                other => {
                    return Err(Error::invalid_param(format!(
                        "Unknown search key '{}': use content.body, content.name or content.topic.",
                        other.as_str()
                    )));
                }
            }
        }
        // Only message bodies are indexed: names and topics alone find nothing.
        searches_body = keys.iter().any(|key| matches!(key, SearchKeys::ContentBody));
    }
    let mut terms = Vec::new();
    if searches_body {
        for word in tokenize(&criteria.search_term) {
            if !terms.contains(&word) {
                terms.push(word);
            }
        }
    }
    let mut groupings = Vec::new();
    for grouping in &criteria.groupings.group_by {
        let group = match &grouping.key {
            None => continue,
            Some(GroupingKey::RoomId) => GroupBy::Room,
            Some(GroupingKey::Sender) => GroupBy::Sender,
            Some(other) => {
                return Err(Error::invalid_param(format!(
                    "Unknown grouping key '{}': use 'room_id' or 'sender'.",
                    other.as_str()
                )));
            }
        };
        if !groupings.contains(&group) {
            groupings.push(group);
        }
    }
    let cursor = next_batch.map(Cursor::parse).transpose()?;
    if cursor.as_ref().is_some_and(|cursor| cursor.order != order) {
        return Err(Error::invalid_param("The next_batch token belongs to another ordering."));
    }
    let limit = criteria
        .filter
        .limit
        .map_or(DEFAULT_LIMIT, |limit| usize::try_from(limit).unwrap_or(MAX_LIMIT))
        .clamp(1, MAX_LIMIT);
    let context = |limit: UInt| usize::try_from(limit).unwrap_or(MAX_CONTEXT).min(MAX_CONTEXT);
    Ok(Plan {
        order,
        terms,
        groupings,
        cursor,
        limit,
        before_limit: context(criteria.event_context.before_limit),
        after_limit: context(criteria.event_context.after_limit),
    })
}

/// The rooms searched: those the user is joined to or has left (and not forgotten), that
/// the filter allows, and only the cursor's room when it is scoped to one.
fn searched_rooms(
    storage: &Storage,
    user: &UserId,
    criteria: &Criteria,
    cursor: Option<&Cursor>,
) -> Result<Vec<(OwnedRoomId, u64)>> {
    let mut names = Vec::new();
    USER_ROOMS_TABLE.scan(
        storage.engine(),
        &Prefix::of(user.as_str()),
        None,
        Direction::Forward,
        |(_, room_id), Json(record)| {
            if matches!(
                record.membership,
                MembershipState::Join | MembershipState::Leave | MembershipState::Ban
            ) && !record.forgotten
            {
                names.push(room_id);
            }
            ControlFlow::Continue(())
        },
    )?;
    let mut rooms = Vec::new();
    for name in names {
        let Ok(room_id) = RoomId::parse(name) else { continue };
        let filter = &criteria.filter;
        if filter.not_rooms.contains(&room_id)
            || filter.rooms.as_ref().is_some_and(|allowed| !allowed.contains(&room_id))
        {
            continue;
        }
        if let Some(Cursor { scope: Some((GroupBy::Room, scoped)), .. }) = cursor
            && room_id.as_str() != scoped
        {
            continue;
        }
        if let Some(record) = rooms::room(storage, &room_id)? {
            rooms.push((room_id, record.short));
        }
    }
    Ok(rooms)
}

/// Events of one room whose bodies hold every term, as `(position, short event id)`.
fn room_matches(storage: &Storage, room: u64, terms: &[String]) -> Result<Vec<(u64, u64)>> {
    let mut common: Option<HashMap<u64, u64>> = None;
    for term in terms {
        let mut postings = HashMap::new();
        SEARCH_TABLE.scan(
            storage.engine(),
            &Prefix::of2(&room, term.as_str()),
            None,
            Direction::Reverse,
            |(_, _, position), short| {
                if common.as_ref().is_none_or(|common| common.contains_key(&position)) {
                    postings.insert(position, short);
                }
                if postings.len() >= MAX_POSTINGS {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )?;
        if postings.is_empty() {
            return Ok(Vec::new());
        }
        common = Some(postings);
    }
    Ok(common.unwrap_or_default().into_iter().collect())
}

/// How often the terms occur in the event's body.
fn rank(pdu: &Pdu, terms: &[String]) -> u64 {
    let body = pdu.content_str("body").unwrap_or_default();
    tokenize(&body).iter().filter(|word| terms.contains(word)).count() as u64
}

fn room_events(
    services: &Services,
    sender: &Sender,
    criteria: &Criteria,
    next_batch: Option<&str>,
) -> Result<ResultRoomEvents> {
    let storage = &services.storage;
    let plan = plan(criteria, next_batch)?;
    let user = sender.user_id.as_ref();
    let mut found = ResultRoomEvents::new();
    found.highlights = plan.terms.clone();
    if plan.terms.is_empty() {
        found.count = Some(UInt::MIN);
        return Ok(found);
    }

    // Every matching event, newest first, up to the examination limit.
    let rooms = searched_rooms(storage, user, criteria, plan.cursor.as_ref())?;
    let mut candidates = Vec::new();
    for (index, (_, short)) in rooms.iter().enumerate() {
        for (position, event) in room_matches(storage, *short, &plan.terms)? {
            candidates.push((position, event, index));
        }
    }
    candidates.sort_unstable_by(|a, b| b.cmp(a));
    candidates.truncate(MAX_CANDIDATES);

    let scope = plan.cursor.as_ref().and_then(|cursor| cursor.scope.clone());
    let mut viewers: HashMap<usize, Viewer<'_>> = HashMap::new();
    let mut hits = Vec::new();
    for (position, short, room) in candidates {
        let Some(meta) = rooms::readable_event_meta(storage.engine(), short)? else { continue };
        if meta.redacted {
            continue;
        }
        let Some(pdu) = rooms::readable_pdu(storage.engine(), short)? else { continue };
        if !filter::allows(&criteria.filter, &pdu)
            || scope.as_ref().is_some_and(|(group, value)| group.value(&pdu) != *value)
        {
            continue;
        }
        let viewer = match viewers.entry(room) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(Viewer::new(storage, &rooms[room].0, user)?)
            }
        };
        if !viewer.can_see(&pdu, &meta)? {
            continue;
        }
        hits.push(Hit { rank: rank(&pdu, &plan.terms), position, room, pdu, meta });
    }
    hits.sort_unstable_by_key(|hit| std::cmp::Reverse(hit.key(plan.order)));
    found.count = Some(UInt::new_saturating(hits.len() as u64));

    // Groups are ordered by their best result over the whole result set.
    let mut group_order: HashMap<(GroupBy, String), u64> = HashMap::new();
    for group in &plan.groupings {
        let mut next = 1u64;
        for hit in &hits {
            group_order.entry((*group, group.value(&hit.pdu))).or_insert_with(|| {
                next += 1;
                next - 1
            });
        }
    }

    let remaining: Vec<&Hit> = match &plan.cursor {
        Some(cursor) => {
            hits.iter().filter(|hit| hit.key(plan.order) < (cursor.rank, cursor.position)).collect()
        }
        None => hits.iter().collect(),
    };
    let page = &remaining[..remaining.len().min(plan.limit)];
    let rest = &remaining[page.len()..];
    if let Some(last) = page.last()
        && !rest.is_empty()
    {
        found.next_batch = Some(last.cursor(plan.order, scope.clone()).encode());
    }

    let device = Some(sender.device_id.as_str());
    let mut rooms_returned = BTreeSet::new();
    for hit in page {
        let room = hit.room;
        let viewer = match viewers.entry(room) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(Viewer::new(storage, &rooms[room].0, user)?)
            }
        };
        let mut result = SearchResult::new();
        result.rank = Some(hit.rank as f64);
        result.result =
            Some(raw(&timeline::render(storage, &hit.pdu, &hit.meta, Some((user, device)))?)?);
        result.context = context(services, sender, criteria, &plan, rooms[room].1, hit, viewer)?;
        found.results.push(result);
        rooms_returned.insert(room);
    }

    for group in &plan.groupings {
        let mut results: BTreeMap<String, ResultGroup> = BTreeMap::new();
        for hit in page {
            let value = group.value(&hit.pdu);
            let entry = results.entry(value.clone()).or_default();
            entry.results.push(hit.pdu.event_id.clone());
            entry.order =
                group_order.get(&(*group, value.clone())).map(|order| UInt::new_saturating(*order));
            // More of this group after this page: a token that stays within the group.
            entry.next_batch = rest
                .iter()
                .any(|later| group.value(&later.pdu) == value)
                .then(|| hit.cursor(plan.order, Some((*group, value.clone()))).encode());
        }
        let map = match group {
            GroupBy::Room => ResultGroupMap::RoomId(
                results
                    .into_iter()
                    .filter_map(|(value, group)| {
                        RoomId::parse(value).ok().map(|room_id: OwnedRoomId| (room_id, group))
                    })
                    .collect(),
            ),
            GroupBy::Sender => ResultGroupMap::Sender(
                results
                    .into_iter()
                    .filter_map(|(value, group)| {
                        UserId::parse(value).ok().map(|user_id: OwnedUserId| (user_id, group))
                    })
                    .collect(),
            ),
        };
        found.groups.insert(map);
    }

    if criteria.include_state == Some(true) {
        for room in rooms_returned {
            let (room_id, _) = &rooms[room];
            let Some(record) = rooms::room(storage, room_id)? else { continue };
            let snapshot = timeline::readable_snapshot(storage, &record, room_id, user)?;
            let mut events = Vec::new();
            for short in state::load(storage, snapshot)?.into_values() {
                if let (Some(pdu), Some(meta)) = (
                    rooms::readable_pdu(storage.engine(), short)?,
                    rooms::readable_event_meta(storage.engine(), short)?,
                ) {
                    events.push(raw(&timeline::render(storage, &pdu, &meta, None)?)?);
                }
            }
            found.state.insert(room_id.clone(), events);
        }
    }
    Ok(found)
}

/// The events around one result and, when asked, the profiles of their senders as the
/// member events at the result had them.
fn context(
    services: &Services,
    sender: &Sender,
    criteria: &Criteria,
    plan: &Plan,
    room: u64,
    hit: &Hit,
    viewer: &mut Viewer<'_>,
) -> Result<EventContextResult> {
    let storage = &services.storage;
    let keep = |candidate: &Pdu| filter::allows(&criteria.filter, candidate);
    let before = if plan.before_limit == 0 {
        timeline::Page { events: Vec::new(), next: Some(Token(hit.position.saturating_sub(1))) }
    } else {
        timeline::paginate(
            storage,
            room,
            Some(Token(hit.position.saturating_sub(1))),
            Direction::Reverse,
            plan.before_limit,
            viewer,
            keep,
        )?
    };
    let after = if plan.after_limit == 0 {
        timeline::Page { events: Vec::new(), next: Some(Token(hit.position)) }
    } else {
        timeline::paginate(
            storage,
            room,
            Some(Token(hit.position)),
            Direction::Forward,
            plan.after_limit,
            viewer,
            keep,
        )?
    };
    let viewing = Some((sender.user_id.as_ref(), Some(sender.device_id.as_str())));
    let mut context = EventContextResult::new();
    context.start = Some(before.next.unwrap_or(Token(0)).to_string());
    context.end =
        Some(after.next.unwrap_or(Token(storage.writer().committed_position())).to_string());
    for (_, pdu, meta) in &before.events {
        context.events_before.push(raw(&timeline::render(storage, pdu, meta, viewing)?)?);
    }
    for (_, pdu, meta) in &after.events {
        context.events_after.push(raw(&timeline::render(storage, pdu, meta, viewing)?)?);
    }
    if criteria.event_context.include_profile {
        let senders: HashSet<&UserId> = std::iter::once(&hit.pdu)
            .chain(before.events.iter().map(|(_, pdu, _)| pdu))
            .chain(after.events.iter().map(|(_, pdu, _)| pdu))
            .map(|pdu| pdu.sender.as_ref())
            .collect();
        for user in senders {
            let Some(member) =
                rooms::state_event(storage, hit.meta.state_after, "m.room.member", user.as_str())?
            else {
                continue;
            };
            let mut profile = UserProfile::new();
            profile.displayname = member.content_str("displayname");
            profile.avatar_url = member.content_str("avatar_url").map(Into::into);
            context.profile_info.insert(user.to_owned(), profile);
        }
    }
    Ok(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let plain = Cursor { order: Order::Rank, rank: 3, position: 42, scope: None };
        assert_eq!(Cursor::parse(&plain.encode()).ok(), Some(plain));
        let scoped = Cursor {
            order: Order::Recent,
            rank: 0,
            position: 7,
            scope: Some((GroupBy::Room, "!room:example.org".to_owned())),
        };
        assert_eq!(Cursor::parse(&scoped.encode()).ok(), Some(scoped));
        for bad in ["", "x.1.2", "k.a.2", "k.1.2.room.zz", "k.1.2.nope.00", "k.1.2.room.abc"] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
    }
}
