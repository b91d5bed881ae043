//! Event relationships: the children of an event (`/relations`, optionally following
//! relations of relations) and the thread roots of a room (`/threads`).
//!
//! Children are found through the relations index `(parent, rel_type, position)`, so pages
//! are ordered by stream position and use the timeline's tokens: paging backwards from `tN`
//! yields children at N and before, paging forwards yields children after N.

use std::{collections::HashSet, ops::ControlFlow, sync::Arc};

use ruma::{
    OwnedEventId, OwnedRoomId, UInt,
    api::{
        Direction as ClientDirection,
        client::{
            relations::{
                get_relating_events, get_relating_events_with_rel_type,
                get_relating_events_with_rel_type_and_event_type,
            },
            threads::get_threads::{self, v1::IncludeThreads},
        },
    },
    serde::Raw,
};
use serde_json::Value as JsonValue;

use super::require_room;
use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    accounts::Sender,
    http::ruma::{Ruma, route},
    rooms::{
        self,
        timeline::{self, Token, Viewer},
    },
    storage::{
        Direction, Storage,
        codec::{prefix, prefix2},
        rooms::{RELATIONS_TABLE, THREADS_TABLE},
    },
};

/// Children (or thread roots) one page returns when the client names no limit.
const DEFAULT_LIMIT: usize = 20;
/// Most children (or thread roots) one page returns; each carries its own bundle.
const MAX_LIMIT: usize = 100;
/// How many levels of relations `recurse=true` follows (the spec asks for at least 3).
const RECURSION_DEPTH: u32 = 3;
/// Most descendants one recursive walk collects.
const MAX_DESCENDANTS: usize = 10_000;
/// Most relation types of one parent that are looked at.
const MAX_RELATION_TYPES: usize = 64;

pub(super) fn routes(router: Routes) -> Routes {
    let router = route(router, relating_events);
    let router = route(router, relating_events_with_rel_type);
    let router = route(router, relating_events_with_rel_type_and_event_type);
    route(router, threads)
}

fn raw<T>(value: &JsonValue) -> Result<Raw<T>> {
    Ok(Raw::from_json(serde_json::value::to_raw_value(value)?))
}

/// What a `/relations` request asks for, whichever of its three paths it came through.
struct Query {
    room_id: OwnedRoomId,
    event_id: OwnedEventId,
    rel_type: Option<String>,
    event_type: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<UInt>,
    dir: ClientDirection,
    recurse: bool,
}

/// A page of children, ready for any of the three response types.
struct Children {
    chunk: Vec<JsonValue>,
    next_batch: Option<String>,
    prev_batch: Option<String>,
    recursion_depth: Option<UInt>,
}

async fn relating_events(
    services: Arc<Services>,
    request: Ruma<get_relating_events::v1::Request>,
) -> Result<get_relating_events::v1::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let children = children(
        &services,
        &sender,
        Query {
            room_id: body.room_id,
            event_id: body.event_id,
            rel_type: None,
            event_type: None,
            from: body.from,
            to: body.to,
            limit: body.limit,
            dir: body.dir,
            recurse: body.recurse,
        },
    )?;
    let mut response = get_relating_events::v1::Response::new(
        children.chunk.iter().map(raw).collect::<Result<_>>()?,
    );
    response.next_batch = children.next_batch;
    response.prev_batch = children.prev_batch;
    response.recursion_depth = children.recursion_depth;
    Ok(response)
}

async fn relating_events_with_rel_type(
    services: Arc<Services>,
    request: Ruma<get_relating_events_with_rel_type::v1::Request>,
) -> Result<get_relating_events_with_rel_type::v1::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let children = children(
        &services,
        &sender,
        Query {
            room_id: body.room_id,
            event_id: body.event_id,
            rel_type: Some(body.rel_type.to_string()),
            event_type: None,
            from: body.from,
            to: body.to,
            limit: body.limit,
            dir: body.dir,
            recurse: body.recurse,
        },
    )?;
    let mut response = get_relating_events_with_rel_type::v1::Response::new(
        children.chunk.iter().map(raw).collect::<Result<_>>()?,
    );
    response.next_batch = children.next_batch;
    response.prev_batch = children.prev_batch;
    response.recursion_depth = children.recursion_depth;
    Ok(response)
}

async fn relating_events_with_rel_type_and_event_type(
    services: Arc<Services>,
    request: Ruma<get_relating_events_with_rel_type_and_event_type::v1::Request>,
) -> Result<get_relating_events_with_rel_type_and_event_type::v1::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let children = children(
        &services,
        &sender,
        Query {
            room_id: body.room_id,
            event_id: body.event_id,
            rel_type: Some(body.rel_type.to_string()),
            event_type: Some(body.event_type.to_string()),
            from: body.from,
            to: body.to,
            limit: body.limit,
            dir: body.dir,
            recurse: body.recurse,
        },
    )?;
    let mut response = get_relating_events_with_rel_type_and_event_type::v1::Response::new(
        children.chunk.iter().map(raw).collect::<Result<_>>()?,
    );
    response.next_batch = children.next_batch;
    response.prev_batch = children.prev_batch;
    response.recursion_depth = children.recursion_depth;
    Ok(response)
}

/// A child in the relations index: `(stream position, short event id)`.
type Row = (u64, u64);

/// The stretch of stream positions a page may come from, and the order it is read in.
struct Window {
    direction: Direction,
    /// Backwards: positions at or before; forwards: positions after.
    from: Option<u64>,
    /// Backwards: positions after; forwards: positions at or before.
    to: Option<u64>,
}

impl Window {
    fn contains(&self, position: u64) -> bool {
        match self.direction {
            Direction::Reverse => {
                self.from.is_none_or(|from| position <= from)
                    && self.to.is_none_or(|to| position > to)
            }
            Direction::Forward => {
                self.from.is_none_or(|from| position > from)
                    && self.to.is_none_or(|to| position <= to)
            }
        }
    }

    /// Whether `position` lies beyond the far end (`to`) of the window.
    fn past_end(&self, position: u64) -> bool {
        match self.direction {
            Direction::Reverse => self.to.is_some_and(|to| position <= to),
            Direction::Forward => self.to.is_some_and(|to| position > to),
        }
    }

    /// The token that continues after `position`.
    fn token_after(&self, position: u64) -> Token {
        match self.direction {
            Direction::Reverse => Token(position.saturating_sub(1)),
            Direction::Forward => Token(position),
        }
    }

    /// Sorts `(position, short)` rows in reading order.
    fn sort(&self, rows: &mut [(u64, u64)]) {
        match self.direction {
            Direction::Reverse => rows.sort_unstable_by(|a, b| b.cmp(a)),
            Direction::Forward => rows.sort_unstable(),
        }
    }
}

/// The children of the requested event, as the requester may see them.
fn children(services: &Services, sender: &Sender, query: Query) -> Result<Children> {
    let storage = &services.storage;
    let not_found = || Error::not_found("Event not found.");
    let record = rooms::room(storage, &query.room_id)?.ok_or_else(not_found)?;
    let (parent_short, parent) =
        rooms::pdu_by_id(storage, &query.event_id)?.ok_or_else(not_found)?;
    let parent_meta = rooms::event_meta(storage.engine(), parent_short)?.ok_or_else(not_found)?;
    if parent_meta.room != record.short {
        return Err(not_found());
    }
    let mut viewer = Viewer::new(storage, &query.room_id, &sender.user_id)?;
    if !viewer.can_see(&parent, &parent_meta)? {
        return Err(not_found());
    }
    let window = Window {
        direction: match query.dir {
            ClientDirection::Backward => Direction::Reverse,
            ClientDirection::Forward => Direction::Forward,
        },
        from: query.from.as_deref().map(Token::parse).transpose()?.map(|Token(position)| position),
        to: query.to.as_deref().map(Token::parse).transpose()?.map(|Token(position)| position),
    };
    let limit = query
        .limit
        .map_or(DEFAULT_LIMIT, |limit| usize::try_from(limit).unwrap_or(MAX_LIMIT))
        .clamp(1, MAX_LIMIT);
    let rel_type = query.rel_type.as_deref();
    let event_type = query.event_type.as_deref();
    let (candidates, cut) = if query.recurse {
        (descendants(storage, parent_short, rel_type, event_type, &window)?, None)
    } else {
        direct_children(
            storage,
            parent_short,
            rel_type,
            &window,
            limit.saturating_mul(20).max(200),
        )?
    };

    let mut chunk = Vec::new();
    let mut next_batch = None;
    for (index, (position, short)) in candidates.iter().enumerate() {
        let Some(meta) = rooms::readable_event_meta(storage.engine(), *short)? else { continue };
        // A redacted child no longer relates to anything.
        if meta.redacted || meta.room != record.short {
            continue;
        }
        let Some(pdu) = rooms::readable_pdu(storage.engine(), *short)? else { continue };
        if event_type.is_some_and(|kind| pdu.kind.to_string() != kind)
            || !viewer.can_see(&pdu, &meta)?
        {
            continue;
        }
        chunk.push(timeline::render(
            storage,
            &pdu,
            &meta,
            Some((&sender.user_id, Some(sender.device_id.as_str()))),
        )?);
        if chunk.len() >= limit {
            if index + 1 < candidates.len() || cut.is_some() {
                next_batch = Some(window.token_after(*position));
            }
            break;
        }
    }
    // The scan stopped early: continue from where it stopped.
    if chunk.len() < limit
        && let Some(position) = cut
    {
        next_batch = Some(window.token_after(position));
    }
    Ok(Children {
        chunk,
        next_batch: next_batch.map(|token| token.to_string()),
        prev_batch: query.from,
        recursion_depth: query.recurse.then(|| UInt::from(RECURSION_DEPTH)),
    })
}

/// The relation types `parent` has children of, found by skipping from one type to the next.
fn relation_types(storage: &Storage, parent: u64) -> Result<Vec<String>> {
    let mut types: Vec<String> = Vec::new();
    let scan = prefix(&parent);
    while types.len() < MAX_RELATION_TYPES {
        // Past every row of the last type found: its key with the largest position.
        let from = types.last().map(|last| (parent, last.clone(), u64::MAX));
        let mut found = None;
        RELATIONS_TABLE.scan_keys(
            storage.engine(),
            &scan,
            from.as_ref(),
            Direction::Forward,
            |(_, rel_type, _)| {
                if types.last() == Some(&rel_type) {
                    return ControlFlow::Continue(());
                }
                found = Some(rel_type);
                ControlFlow::Break(())
            },
        )?;
        match found {
            Some(rel_type) => types.push(rel_type),
            None => break,
        }
    }
    Ok(types)
}

/// Direct children of `parent` inside `window`, in reading order, reading at most `cap`
/// index rows per relation type. When a type's scan stops at the cap, rows past the point it
/// reached are dropped (other types may not be complete there) and that point is returned.
fn direct_children(
    storage: &Storage,
    parent: u64,
    rel_type: Option<&str>,
    window: &Window,
    cap: usize,
) -> Result<(Vec<Row>, Option<u64>)> {
    let types = match rel_type {
        Some(rel_type) => vec![rel_type.to_owned()],
        None => relation_types(storage, parent)?,
    };
    let mut rows = Vec::new();
    let mut cut: Option<u64> = None;
    for rel_type in types {
        let start = match (window.direction, window.from) {
            (Direction::Reverse, Some(from)) => Some((parent, rel_type.clone(), from)),
            (Direction::Forward, Some(from)) => {
                Some((parent, rel_type.clone(), from.saturating_add(1)))
            }
            (_, None) => None,
        };
        let mut read = 0usize;
        let mut stopped = None;
        RELATIONS_TABLE.scan(
            storage.engine(),
            &prefix2(&parent, &rel_type.as_str()),
            start.as_ref(),
            window.direction,
            |(_, _, position), child| {
                if window.past_end(position) {
                    return ControlFlow::Break(());
                }
                if window.contains(position) {
                    rows.push((position, child));
                }
                read += 1;
                if read >= cap {
                    stopped = Some(position);
                    return ControlFlow::Break(());
                }
                ControlFlow::Continue(())
            },
        )?;
        if let Some(position) = stopped {
            // The nearest stopping point bounds what is complete across all types.
            cut = Some(match (cut, window.direction) {
                (None, _) => position,
                (Some(cut), Direction::Reverse) => cut.max(position),
                (Some(cut), Direction::Forward) => cut.min(position),
            });
        }
    }
    if let Some(cut) = cut {
        rows.retain(|(position, _)| match window.direction {
            Direction::Reverse => *position >= cut,
            Direction::Forward => *position <= cut,
        });
    }
    window.sort(&mut rows);
    Ok((rows, cut))
}

/// Children of `parent` and of its children, up to [`RECURSION_DEPTH`] levels, inside
/// `window` and in reading order. `rel_type` and `event_type` apply at every level: an event
/// reached only through a non-matching or redacted event is not included.
fn descendants(
    storage: &Storage,
    parent: u64,
    rel_type: Option<&str>,
    event_type: Option<&str>,
    window: &Window,
) -> Result<Vec<(u64, u64)>> {
    let mut seen = HashSet::from([parent]);
    let mut frontier = vec![parent];
    let mut found = Vec::new();
    for _ in 0..RECURSION_DEPTH {
        let mut next = Vec::new();
        for node in frontier {
            let types = match rel_type {
                Some(rel_type) => vec![rel_type.to_owned()],
                None => relation_types(storage, node)?,
            };
            let mut rows = Vec::new();
            for rel_type in types {
                RELATIONS_TABLE.scan(
                    storage.engine(),
                    &prefix2(&node, &rel_type.as_str()),
                    None,
                    Direction::Forward,
                    |(_, _, position), child| {
                        rows.push((position, child));
                        if rows.len() + found.len() >= MAX_DESCENDANTS {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    },
                )?;
            }
            for (position, child) in rows {
                if !seen.insert(child) {
                    continue;
                }
                let Some(meta) = rooms::readable_event_meta(storage.engine(), child)? else {
                    continue;
                };
                if meta.redacted {
                    continue;
                }
                if let Some(event_type) = event_type {
                    let Some(pdu) = rooms::readable_pdu(storage.engine(), child)? else { continue };
                    if pdu.kind.to_string() != event_type {
                        continue;
                    }
                }
                found.push((position, child));
                next.push(child);
            }
            if found.len() >= MAX_DESCENDANTS {
                break;
            }
        }
        frontier = next;
        if frontier.is_empty() || found.len() >= MAX_DESCENDANTS {
            break;
        }
    }
    found.retain(|(position, _)| window.contains(*position));
    window.sort(&mut found);
    Ok(found)
}

async fn threads(
    services: Arc<Services>,
    request: Ruma<get_threads::v1::Request>,
) -> Result<get_threads::v1::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let participated_only = match &body.include {
        IncludeThreads::All => false,
        IncludeThreads::Participated => true,
        other => {
            return Err(Error::invalid_param(format!(
                "Unknown value '{}' for include: use 'all' or 'participated'.",
                other.as_str()
            )));
        }
    };
    let limit = match body.limit {
        Some(limit) if limit == UInt::MIN => {
            return Err(Error::invalid_param("The limit must be greater than zero."));
        }
        Some(limit) => usize::try_from(limit).unwrap_or(MAX_LIMIT).min(MAX_LIMIT),
        None => DEFAULT_LIMIT,
    };
    let from = body.from.as_deref().map(Token::parse).transpose()?;
    let storage = &services.storage;
    let record = require_room(&services, &body.room_id)
        .map_err(|_| Error::forbidden("You are not allowed to view this room."))?;
    timeline::readable_snapshot(storage, &record, &body.room_id, &sender.user_id)?;
    let mut viewer = Viewer::new(storage, &body.room_id, &sender.user_id)?;

    // Threads by their latest activity, newest first.
    let scan_limit = limit.saturating_mul(20).max(200);
    let mut rows = Vec::new();
    let mut capped = false;
    THREADS_TABLE.scan(
        storage.engine(),
        &prefix(&record.short),
        from.map(|Token(position)| (record.short, position)).as_ref(),
        Direction::Reverse,
        |(_, position), root| {
            rows.push((position, root));
            if rows.len() >= scan_limit {
                capped = true;
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        },
    )?;

    let mut chunk = Vec::new();
    let mut next_batch = None;
    for (index, (position, root)) in rows.iter().enumerate() {
        let Some(meta) = rooms::readable_event_meta(storage.engine(), *root)? else { continue };
        let Some(pdu) = rooms::readable_pdu(storage.engine(), *root)? else { continue };
        if meta.room != record.short || !viewer.can_see(&pdu, &meta)? {
            continue;
        }
        let rendered = timeline::render(
            storage,
            &pdu,
            &meta,
            Some((&sender.user_id, Some(sender.device_id.as_str()))),
        )?;
        // A root counts while the requester can see at least one reply of its thread.
        let Some(thread) = rendered.pointer("/unsigned/m.relations/m.thread") else { continue };
        if participated_only
            && thread.get("current_user_participated") != Some(&JsonValue::Bool(true))
        {
            continue;
        }
        chunk.push(raw(&rendered)?);
        if chunk.len() >= limit {
            if index + 1 < rows.len() || capped {
                next_batch = Some(Token(position.saturating_sub(1)));
            }
            break;
        }
    }
    if chunk.len() < limit
        && capped
        && let Some((position, _)) = rows.last()
    {
        next_batch = Some(Token(position.saturating_sub(1)));
    }
    let mut response = get_threads::v1::Response::new(chunk);
    response.next_batch = next_batch.map(|token| token.to_string());
    Ok(response)
}
