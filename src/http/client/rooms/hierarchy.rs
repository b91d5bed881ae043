//! `GET /rooms/{roomId}/hierarchy`: the tree of a space, walked depth-first over the current
//! `m.space.child` events of the rooms this server knows.
//!
//! The walk is deterministic for a given state, so a page token only needs to say how many
//! rooms were already returned (plus the walk's parameters, which may not change between
//! pages): each page walks again and skips that many.

use std::{collections::HashSet, sync::Arc};

use ruma::{
    OwnedRoomId, RoomId, UserId,
    api::client::space::{SpaceHierarchyRoomsChunk, get_hierarchy},
    serde::Raw,
};
use serde_json::{Value as JsonValue, json};

use super::directory::RoomInfo;
use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    http::ruma::{Ruma, route},
    rooms::{self, Pdu, state},
};

/// Rooms per page when the client does not say.
const DEFAULT_LIMIT: usize = 50;
/// Most rooms per page.
const MAX_LIMIT: usize = 100;
/// How deep the walk goes when the client does not say, and at most.
const MAX_DEPTH: usize = 20;

pub(super) fn routes(router: Routes) -> Routes {
    route(router, hierarchy)
}

/// The position in a walk: rooms already returned, and the walk's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    skip: usize,
    max_depth: Option<u64>,
    suggested_only: bool,
}

impl Token {
    fn parse(text: &str) -> Result<Self> {
        let invalid = || Error::invalid_param(format!("Unknown pagination token '{text}'."));
        let mut parts = text.split('_');
        let (Some(skip), Some(depth), Some(suggested), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let skip = skip.strip_prefix('h').ok_or_else(invalid)?.parse().map_err(|_| invalid())?;
        let max_depth = match depth {
            "-" => None,
            depth => Some(depth.parse().map_err(|_| invalid())?),
        };
        let suggested_only = match suggested {
            "s" => true,
            "a" => false,
            _ => return Err(invalid()),
        };
        Ok(Self { skip, max_depth, suggested_only })
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let depth = self.max_depth.map_or_else(|| "-".to_owned(), |depth| depth.to_string());
        let suggested = if self.suggested_only { "s" } else { "a" };
        write!(f, "h{}_{depth}_{suggested}", self.skip)
    }
}

/// A child named by a space's `m.space.child` event.
struct Child {
    room_id: OwnedRoomId,
    order: Option<String>,
    pdu: Pdu,
}

/// A valid `order`: at most 50 characters, all printable ASCII.
fn valid_order(content: &JsonValue) -> Option<String> {
    content
        .get("order")
        .and_then(JsonValue::as_str)
        .filter(|order| order.len() <= 50 && order.chars().all(|c| (' '..='~').contains(&c)))
        .map(str::to_owned)
}

/// The children of a space at `snapshot`, in the spec's order: valid `order` first (by
/// code point), then by the event's timestamp, then by room id. Only events whose `via` is a
/// non-empty list count; with `suggested_only`, only those marked `suggested`.
fn children(services: &Services, snapshot: u64, suggested_only: bool) -> Result<Vec<Child>> {
    let storage = &services.storage;
    let mut children = Vec::new();
    for (key, short) in state::load(storage, snapshot)? {
        let Some((kind, state_key)) = state::resolve_key(storage, key)? else { continue };
        if kind != "m.space.child" {
            continue;
        }
        let Ok(room_id) = RoomId::parse(state_key.as_str()) else { continue };
        let Some(pdu) = rooms::readable_pdu(storage.engine(), short)? else { continue };
        let content = pdu.content_value();
        let has_via =
            content.get("via").and_then(JsonValue::as_array).is_some_and(|via| !via.is_empty());
        if !has_via {
            continue;
        }
        if suggested_only && content.get("suggested").and_then(JsonValue::as_bool) != Some(true) {
            continue;
        }
        children.push(Child { room_id, order: valid_order(&content), pdu });
    }
    children.sort_by(|a, b| {
        let by_order = match (&a.order, &b.order) {
            (Some(a), Some(b)) => a.cmp(b),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        by_order
            .then_with(|| a.pdu.origin_server_ts.cmp(&b.pdu.origin_server_ts))
            .then_with(|| a.room_id.cmp(&b.room_id))
    });
    Ok(children)
}

/// The stripped form of a child event, with its timestamp.
fn child_state(child: &Child) -> Result<Raw<ruma::events::space::child::HierarchySpaceChildEvent>> {
    let event = json!({
        "type": "m.space.child",
        "state_key": child.room_id,
        "content": child.pdu.content_value(),
        "sender": child.pdu.sender,
        "origin_server_ts": child.pdu.origin_server_ts,
    });
    Ok(Raw::from_json(serde_json::value::to_raw_value(&event)?))
}

/// Whether `user` may see the room in a hierarchy: joined or invited, able to join or knock,
/// or the room is world-readable. Banned users see nothing of it.
fn accessible(services: &Services, info: &RoomInfo, user: &UserId) -> Result<bool> {
    let engine = services.storage.engine();
    match rooms::membership(engine, &info.room_id, user)?.as_ref().map(|m| m.membership.as_str()) {
        Some("join" | "invite") => return Ok(true),
        Some("ban") => return Ok(false),
        _ => {}
    }
    if info.world_readable {
        return Ok(true);
    }
    Ok(match info.join_rule.as_str() {
        "public" | "knock" | "knock_restricted" => true,
        "restricted" => {
            let mut allowed = false;
            for room in &info.allowed_room_ids {
                if rooms::is_joined(engine, room, user)? {
                    allowed = true;
                    break;
                }
            }
            allowed
        }
        _ => false,
    })
}

async fn hierarchy(
    services: Arc<Services>,
    request: Ruma<get_hierarchy::v1::Request>,
) -> Result<get_hierarchy::v1::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let user = &sender.user_id;

    let limit = match body.limit.map(u64::from) {
        None => DEFAULT_LIMIT,
        Some(0) => return Err(Error::invalid_param("limit must be greater than zero.")),
        Some(limit) => usize::try_from(limit).unwrap_or(MAX_LIMIT).min(MAX_LIMIT),
    };
    let requested_depth = body.max_depth.map(u64::from);
    let max_depth = requested_depth
        .map_or(MAX_DEPTH, |depth| usize::try_from(depth).unwrap_or(MAX_DEPTH).min(MAX_DEPTH));
    let skip = match body.from.as_deref().map(Token::parse).transpose()? {
        None => 0,
        Some(token) => {
            if token.max_depth != requested_depth || token.suggested_only != body.suggested_only {
                return Err(Error::invalid_param(
                    "suggested_only and max_depth cannot change on paginated requests.",
                ));
            }
            token.skip
        }
    };

    let forbidden = || Error::forbidden("You are not allowed to view this room.");
    let root = RoomInfo::load(&services, &body.room_id)?.ok_or_else(forbidden)?;
    if !accessible(&services, &root, user)? {
        return Err(forbidden());
    }

    let mut response = get_hierarchy::v1::Response::new();
    let mut seen = HashSet::new();
    let mut stack: Vec<(OwnedRoomId, usize, Option<RoomInfo>)> =
        vec![(body.room_id.clone(), 0, Some(root))];
    let mut visible = 0usize;
    while let Some((room_id, depth, known)) = stack.pop() {
        if !seen.insert(room_id.clone()) {
            continue;
        }
        let info = match known {
            Some(info) => info,
            // A room this server does not know would need federation: left out.
            None => match RoomInfo::load(&services, &room_id)? {
                Some(info) => info,
                None => continue,
            },
        };
        if !accessible(&services, &info, user)? {
            continue;
        }
        if visible >= skip && response.rooms.len() == limit {
            let next = Token {
                skip: visible,
                max_depth: requested_depth,
                suggested_only: body.suggested_only,
            };
            response.next_batch = Some(next.to_string());
            break;
        }
        let children = if info.room_type.as_deref() == Some("m.space") {
            children(&services, info.snapshot, body.suggested_only)?
        } else {
            Vec::new()
        };
        if visible >= skip {
            let children_state = children.iter().map(child_state).collect::<Result<_>>()?;
            response.rooms.push(SpaceHierarchyRoomsChunk::new(info.summary(), children_state));
        }
        visible += 1;
        if depth < max_depth {
            // Reversed onto the stack, so the first child is walked next.
            stack.extend(
                children
                    .into_iter()
                    .rev()
                    .filter(|child| !seen.contains(&child.room_id))
                    .map(|child| (child.room_id, depth + 1, None)),
            );
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tokens_round_trip() {
        let token = Token { skip: 7, max_depth: Some(2), suggested_only: true };
        assert_eq!(Token::parse(&token.to_string()).ok(), Some(token));
        let token = Token { skip: 0, max_depth: None, suggested_only: false };
        assert_eq!(Token::parse(&token.to_string()).ok(), Some(token));
        for bad in ["", "h1", "x1_-_a", "h1_-_q", "h1_-_a_x", "h-1_-_a"] {
            assert!(Token::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn orders_must_be_short_printable_ascii() {
        assert_eq!(valid_order(&json!({"order": " "})).as_deref(), Some(" "));
        assert_eq!(valid_order(&json!({"order": "~abc"})).as_deref(), Some("~abc"));
        assert_eq!(valid_order(&json!({"order": "é"})), None);
        assert_eq!(valid_order(&json!({"order": "x".repeat(51)})), None);
        assert_eq!(valid_order(&json!({"order": 3})), None);
    }
}
