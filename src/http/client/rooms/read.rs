//! Reading rooms: `/messages` pagination, `/context`, single events, members, and finding
//! an event by timestamp — always through the history visibility rules.

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::ControlFlow,
    sync::Arc,
};

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedUserId, RoomId, UInt, UserId,
    api::{
        Direction as ClientDirection,
        client::{
            context::get_context,
            filter::{LazyLoadOptions, RoomEventFilter},
            membership::{get_member_events, joined_members},
            message::get_message_events,
            room::{get_event_by_timestamp, get_room_event},
        },
    },
    events::room::member::MembershipState,
    serde::Raw,
};
use serde_json::Value as JsonValue;

use super::require_room;
use crate::http::routes::Routes;
use crate::{
    Error, Result, Services,
    accounts::Sender,
    http::{
        ruma::{Ruma, route},
        validate,
    },
    rooms::{
        self, Pdu, filter, state,
        timeline::{self, Token, Viewer},
    },
    storage::{
        Direction,
        rooms::{EVENT_TIMES_TABLE, EventMeta, RoomRecord, TIMELINE_TABLE},
    },
};

/// Most events one page returns.
const MAX_LIMIT: usize = 1000;

pub(super) fn routes(router: Routes) -> Routes {
    let router = route(router, messages);
    let router = route(router, context);
    let router = route(router, event);
    let router = route(router, members);
    let router = route(router, joined);
    route(router, by_timestamp)
}

fn raw<T>(value: &JsonValue) -> Result<Raw<T>> {
    Ok(Raw::from_json(serde_json::value::to_raw_value(value)?))
}

/// The room record, if the caller has ever been in the room or it is world-readable.
fn readable_room(services: &Services, room_id: &RoomId, user: &UserId) -> Result<RoomRecord> {
    let record = require_room(services, room_id)
        .map_err(|_| Error::forbidden("You are not a member of this room."))?;
    timeline::readable_snapshot(&services.storage, &record, room_id, user)?;
    Ok(record)
}

fn render_all(
    services: &Services,
    sender: &Sender,
    events: &[(u64, Pdu, EventMeta)],
) -> Result<Vec<JsonValue>> {
    events
        .iter()
        .map(|(_, pdu, meta)| {
            timeline::render(
                &services.storage,
                pdu,
                meta,
                Some((&sender.user_id, Some(sender.device_id.as_str()))),
            )
        })
        .collect()
}

/// Member events of `senders` in the state `snapshot` (lazy-loaded members).
fn lazy_members(
    services: &Services,
    snapshot: u64,
    senders: &BTreeSet<OwnedUserId>,
) -> Result<Vec<JsonValue>> {
    let mut members = Vec::new();
    for user in senders {
        if let Some(pdu) =
            rooms::state_event(&services.storage, snapshot, "m.room.member", user.as_str())?
            && let Some(short) = rooms::event_short(&services.storage, &pdu.event_id)?
            && let Some(meta) = rooms::event_meta(services.storage.engine(), short)?
        {
            members.push(timeline::render(&services.storage, &pdu, &meta, None)?);
        }
    }
    Ok(members)
}

fn lazy_loading(filter: &RoomEventFilter) -> bool {
    matches!(filter.lazy_load_options, LazyLoadOptions::Enabled { .. })
}

async fn messages(
    services: Arc<Services>,
    request: Ruma<get_message_events::v3::Request>,
) -> Result<get_message_events::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let record = readable_room(&services, &body.room_id, &sender.user_id)?;
    let direction = match body.dir {
        ClientDirection::Backward => Direction::Reverse,
        ClientDirection::Forward => Direction::Forward,
    };
    let from = body.from.as_deref().map(Token::parse).transpose()?;
    let to = body.to.as_deref().map(Token::parse).transpose()?;
    let limit = usize::try_from(body.limit).unwrap_or(MAX_LIMIT).clamp(1, MAX_LIMIT);
    let mut viewer = Viewer::new(&services.storage, &body.room_id, &sender.user_id)?;
    let page = timeline::paginate(
        &services.storage,
        record.short,
        from,
        direction,
        limit,
        &mut viewer,
        |pdu| filter::allows(&body.filter, pdu),
    )?;
    let mut events = page.events;
    let mut end = page.next;
    if let Some(Token(to)) = to {
        let before = events.len();
        events.retain(|(_, _, meta)| match direction {
            Direction::Reverse => meta.position > to,
            Direction::Forward => meta.position <= to,
        });
        if events.len() < before {
            end = None;
        }
    }
    let start = from.unwrap_or_else(|| match direction {
        Direction::Reverse => Token(services.storage.writer().committed_position()),
        Direction::Forward => Token(0),
    });
    let mut response = get_message_events::v3::Response::new();
    response.start = start.to_string();
    response.end = end.map(|token| token.to_string());
    if lazy_loading(&body.filter) {
        let senders: BTreeSet<OwnedUserId> =
            events.iter().map(|(_, pdu, _)| pdu.sender.clone()).collect();
        let snapshot = timeline::readable_snapshot(
            &services.storage,
            &record,
            &body.room_id,
            &sender.user_id,
        )?;
        response.state =
            lazy_members(&services, snapshot, &senders)?.iter().map(raw).collect::<Result<_>>()?;
    }
    response.chunk =
        render_all(&services, &sender, &events)?.iter().map(raw).collect::<Result<_>>()?;
    Ok(response)
}

async fn context(
    services: Arc<Services>,
    request: Ruma<get_context::v3::Request>,
) -> Result<get_context::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let record = readable_room(&services, &body.room_id, &sender.user_id)?;
    let not_found = || Error::not_found("Event not found.");
    let (short, pdu) =
        rooms::pdu_by_id(&services.storage, &body.event_id)?.ok_or_else(not_found)?;
    let meta = rooms::event_meta(services.storage.engine(), short)?.ok_or_else(not_found)?;
    if meta.room != record.short {
        return Err(not_found());
    }
    let mut viewer = Viewer::new(&services.storage, &body.room_id, &sender.user_id)?;
    if !viewer.can_see(&pdu, &meta)? {
        return Err(not_found());
    }
    let limit = usize::try_from(body.limit).unwrap_or(MAX_LIMIT).min(MAX_LIMIT);
    let before_limit = limit / 2;
    let after_limit = limit - before_limit;
    let keep = |candidate: &Pdu| filter::allows(&body.filter, candidate);
    let before = if before_limit == 0 {
        timeline::Page { events: Vec::new(), next: Some(Token(meta.position.saturating_sub(1))) }
    } else {
        timeline::paginate(
            &services.storage,
            record.short,
            Some(Token(meta.position.saturating_sub(1))),
            Direction::Reverse,
            before_limit,
            &mut viewer,
            keep,
        )?
    };
    let after = if after_limit == 0 {
        timeline::Page { events: Vec::new(), next: Some(Token(meta.position)) }
    } else {
        timeline::paginate(
            &services.storage,
            record.short,
            Some(Token(meta.position)),
            Direction::Forward,
            after_limit,
            &mut viewer,
            keep,
        )?
    };
    let mut response = get_context::v3::Response::new();
    response.start = Some(before.next.unwrap_or(Token(0)).to_string());
    response.end = Some(
        after.next.unwrap_or(Token(services.storage.writer().committed_position())).to_string(),
    );
    response.event = Some(raw(&timeline::render(
        &services.storage,
        &pdu,
        &meta,
        Some((&sender.user_id, Some(sender.device_id.as_str()))),
    )?)?);
    response.events_before =
        render_all(&services, &sender, &before.events)?.iter().map(raw).collect::<Result<_>>()?;
    response.events_after =
        render_all(&services, &sender, &after.events)?.iter().map(raw).collect::<Result<_>>()?;
    let last_meta = after.events.last().map_or(&meta, |(_, _, meta)| meta);
    let state_snapshot = last_meta.state_after;
    response.state = if lazy_loading(&body.filter) {
        let senders: BTreeSet<OwnedUserId> = before
            .events
            .iter()
            .chain(after.events.iter())
            .map(|(_, pdu, _)| pdu.sender.clone())
            .chain(std::iter::once(pdu.sender.clone()))
            .collect();
        lazy_members(&services, state_snapshot, &senders)?.iter().map(raw).collect::<Result<_>>()?
    } else {
        let mut state_events = Vec::new();
        for short in state::load(&services.storage, state_snapshot)?.into_values() {
            if let (Some(pdu), Some(meta)) = (
                rooms::readable_pdu(services.storage.engine(), short)?,
                rooms::readable_event_meta(services.storage.engine(), short)?,
            ) {
                state_events.push(raw(&timeline::render(&services.storage, &pdu, &meta, None)?)?);
            }
        }
        state_events
    };
    Ok(response)
}

async fn event(
    services: Arc<Services>,
    request: Ruma<get_room_event::v3::Request>,
) -> Result<get_room_event::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let record = readable_room(&services, &body.room_id, &sender.user_id)?;
    let not_found = || Error::not_found("Event not found.");
    let (short, pdu) =
        rooms::pdu_by_id(&services.storage, &body.event_id)?.ok_or_else(not_found)?;
    let meta = rooms::event_meta(services.storage.engine(), short)?.ok_or_else(not_found)?;
    let mut viewer = Viewer::new(&services.storage, &body.room_id, &sender.user_id)?;
    if meta.room != record.short || !viewer.can_see(&pdu, &meta)? {
        return Err(not_found());
    }
    let rendered = timeline::render(
        &services.storage,
        &pdu,
        &meta,
        Some((&sender.user_id, Some(sender.device_id.as_str()))),
    )?;
    Ok(get_room_event::v3::Response::new(raw(&rendered)?))
}

/// The state snapshot at a timeline token: after the last event at or before it.
fn snapshot_at(services: &Services, room: u64, token: Token) -> Result<Option<u64>> {
    let mut found = None;
    TIMELINE_TABLE.scan(
        services.storage.engine(),
        &room.to_be_bytes(),
        Some(&(room, token.0)),
        Direction::Reverse,
        |_, short| {
            found = Some(short);
            ControlFlow::Break(())
        },
    )?;
    match found {
        Some(short) => {
            Ok(rooms::event_meta(services.storage.engine(), short)?.map(|meta| meta.state_after))
        }
        None => Ok(None),
    }
}

async fn members(
    services: Arc<Services>,
    request: Ruma<get_member_events::v3::Request>,
) -> Result<get_member_events::v3::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let record = require_room(&services, &body.room_id)
        .map_err(|_| Error::forbidden("You are not a member of this room."))?;
    let readable =
        timeline::readable_snapshot(&services.storage, &record, &body.room_id, &sender.user_id)?;
    let snapshot = match body.at.as_deref().map(Token::parse).transpose()? {
        // Never later than what the caller may read (snapshot ids grow with time).
        Some(token) => {
            snapshot_at(&services, record.short, token)?.map_or(readable, |at| at.min(readable))
        }
        None => readable,
    };
    let membership = body.membership.as_ref().map(ToString::to_string);
    let not_membership = body.not_membership.as_ref().map(ToString::to_string);
    for (param, value) in [("membership", &membership), ("not_membership", &not_membership)] {
        if let Some(value) = value {
            validate::known_param(param, value, &["join", "invite", "knock", "leave", "ban"])?;
        }
    }
    let wanted = membership.as_deref().map(MembershipState::from);
    let unwanted = not_membership.as_deref().map(MembershipState::from);
    let mut chunk = Vec::new();
    for pdu in timeline::members_at(&services.storage, snapshot)? {
        let value = rooms::content::membership(&pdu);
        if wanted.as_ref().is_some_and(|wanted| Some(wanted) != value.as_ref())
            || unwanted.as_ref().is_some_and(|unwanted| Some(unwanted) == value.as_ref())
        {
            continue;
        }
        let Some(short) = rooms::event_short(&services.storage, &pdu.event_id)? else { continue };
        let Some(meta) = rooms::readable_event_meta(services.storage.engine(), short)? else {
            continue;
        };
        chunk.push(raw(&timeline::render(&services.storage, &pdu, &meta, None)?)?);
    }
    Ok(get_member_events::v3::Response::new(chunk))
}

async fn joined(
    services: Arc<Services>,
    request: Ruma<joined_members::v3::Request>,
) -> Result<joined_members::v3::Response> {
    let sender = request.sender()?.clone();
    let room_id = request.body.room_id;
    let record = require_room(&services, &room_id)
        .map_err(|_| Error::forbidden("You are not a member of this room."))?;
    if !rooms::is_joined(services.storage.engine(), &room_id, &sender.user_id)? {
        return Err(Error::forbidden("You are not a member of this room."));
    }
    let heads = rooms::heads(services.storage.engine(), record.short)?
        .ok_or_else(|| Error::internal("room without head"))?;
    let mut joined = BTreeMap::new();
    for user in timeline::joined_members(&services.storage, record.short)? {
        let Ok(user) = UserId::parse(user) else { continue };
        let mut member = joined_members::v3::RoomMember::new();
        if let Some(pdu) =
            rooms::state_event(&services.storage, heads.snapshot, "m.room.member", user.as_str())?
        {
            member.display_name = pdu.content_str("displayname");
            member.avatar_url = pdu.content_str("avatar_url").map(Into::into);
        }
        joined.insert(user, member);
    }
    Ok(joined_members::v3::Response::new(joined))
}

async fn by_timestamp(
    services: Arc<Services>,
    request: Ruma<get_event_by_timestamp::v1::Request>,
) -> Result<get_event_by_timestamp::v1::Response> {
    let sender = request.sender()?.clone();
    let body = request.body;
    let record = readable_room(&services, &body.room_id, &sender.user_id)?;
    let target = u64::from(body.ts.get());
    let prefix = record.short.to_be_bytes();
    let mut viewer = Viewer::new(&services.storage, &body.room_id, &sender.user_id)?;
    let (direction, start) = match body.dir {
        ClientDirection::Forward => (Direction::Forward, (record.short, target, 0)),
        ClientDirection::Backward => (Direction::Reverse, (record.short, target, u64::MAX)),
    };
    let mut candidates = Vec::new();
    EVENT_TIMES_TABLE.scan(
        services.storage.engine(),
        &prefix,
        Some(&start),
        direction,
        |_, short| {
            candidates.push(short);
            if candidates.len() >= 200 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        },
    )?;
    for short in candidates {
        let (Some(pdu), Some(meta)) = (
            rooms::readable_pdu(services.storage.engine(), short)?,
            rooms::readable_event_meta(services.storage.engine(), short)?,
        ) else {
            continue;
        };
        if viewer.can_see(&pdu, &meta)? {
            let ts = MilliSecondsSinceUnixEpoch(
                UInt::try_from(u64::from(pdu.origin_server_ts.get())).unwrap_or_default(),
            );
            return Ok(get_event_by_timestamp::v1::Response::new(pdu.event_id, ts));
        }
    }
    Err(Error::not_found("No event found in that direction from that time."))
}
