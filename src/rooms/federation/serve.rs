//! Answers to other servers asking about a room's history: one event, the state and auth
//! chain at an event, an event's auth chain, `backfill`, `get_missing_events` and
//! `timestamp_to_event`. Everything here reads storage; nothing writes.
//!
//! Every answer first checks the room: unknown is `404`, disabled for federation or denying
//! the asking server by its server ACL is `403`. All but `event` also need the asking
//! server to have a user joined to the room now (as Synapse asks), and the events asked
//! about must belong to the room. Events a server may not see by the room's history
//! visibility are served redacted ([`super::visibility`]); the state at an event it may
//! not see is refused. Rejected events are never served, soft-failed ones only when a walk
//! from the requested events reaches them.

use std::{
    collections::{BTreeSet, BinaryHeap, HashSet, VecDeque},
    sync::Arc,
};

use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, RoomVersionId, ServerName, UInt,
    api::Direction as Dir, events::room::member::MembershipState,
};
use serde_json::value::RawValue as RawJsonValue;

use super::visibility::{Seen, ServerView};
use crate::{
    Error, Result,
    federation::{acl, disabled_rooms},
    rooms::{self, Pdu, auth_chain::AuthChains, state},
    storage::{
        Direction, Storage,
        codec::{Json, prefix},
        rooms::{EVENT_TIMES_TABLE, EventMeta, EventStatus, ROOM_MEMBERS_TABLE, RoomRecord},
    },
};

/// The most events one `backfill` answers (the spec leaves it to the server; Synapse's).
pub const MAX_BACKFILL: usize = 100;
/// The most events one `get_missing_events` answers (Synapse's).
pub const MAX_MISSING_EVENTS: usize = 20;
/// The most event ids one request may list (`backfill`'s `v`, each of `get_missing_events`'
/// `earliest_events` and `latest_events`); each is looked up, so the request size alone
/// must not bound the work. The spec sets no number: `backfill` answers at most
/// [`MAX_BACKFILL`] events *including* the listed ones, so more starting points cannot be
/// served; a `get_missing_events` lists the asker's forward extremities and the events it
/// received, which servers keep far below this.
pub const MAX_LISTED_EVENTS: usize = 100;
/// How many events a timestamp lookup considers before giving up.
const TIMESTAMP_CANDIDATES: usize = 200;

/// The state before an event: the ids of its state events and of their whole auth chain.
pub struct StateIds {
    pub pdu_ids: Vec<OwnedEventId>,
    pub auth_chain_ids: Vec<OwnedEventId>,
}

/// The state before an event, as events.
pub struct StateEvents {
    pub pdus: Vec<Box<RawJsonValue>>,
    pub auth_chain: Vec<Box<RawJsonValue>>,
}

/// Event `event_id` as `origin` may see it.
pub fn event(
    storage: &Storage,
    origin: &ServerName,
    event_id: &EventId,
) -> Result<Box<RawJsonValue>> {
    let (_, pdu, meta) = stored_event(storage, event_id)?;
    let record = room_for(storage, &pdu.room_id, origin)?;
    ServerView::new(storage, origin).render(&record.version, &meta, &pdu)
}

/// The state before `event_id` in `room_id`, as ids.
pub fn state_ids(
    storage: &Storage,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
) -> Result<StateIds> {
    let (_, state) = state_before(storage, origin, room_id, event_id)?;
    let chain = auth_chain(storage, state.iter().map(|(short, _)| *short))?;
    Ok(StateIds {
        pdu_ids: state.into_iter().map(|(_, pdu)| pdu.event_id).collect(),
        auth_chain_ids: chain.iter().map(|pdu| pdu.event_id.clone()).collect(),
    })
}

/// The state before `event_id` in `room_id`, as events.
pub fn state_events(
    storage: &Storage,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
) -> Result<StateEvents> {
    let (record, state) = state_before(storage, origin, room_id, event_id)?;
    let chain = auth_chain(storage, state.iter().map(|(short, _)| *short))?;
    let pdus =
        state.iter().map(|(_, pdu)| federation_raw(pdu, &record.version)).collect::<Result<_>>()?;
    let auth_chain =
        chain.iter().map(|pdu| federation_raw(pdu, &record.version)).collect::<Result<_>>()?;
    Ok(StateEvents { pdus, auth_chain })
}

/// The whole auth chain of `event_id` in `room_id`.
pub fn event_auth(
    storage: &Storage,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
) -> Result<Vec<Box<RawJsonValue>>> {
    let record = member_room_for(storage, room_id, origin)?;
    let (short, _, _) = event_in_room(storage, room_id, event_id)?;
    auth_chain(storage, [short])?.iter().map(|pdu| federation_raw(pdu, &record.version)).collect()
}

/// Up to `limit` (at most [`MAX_BACKFILL`]) events from `from` (included) back along
/// `prev_events`, deepest first.
pub fn backfill(
    storage: &Storage,
    origin: &ServerName,
    room_id: &RoomId,
    from: &[OwnedEventId],
    limit: usize,
) -> Result<Vec<Box<RawJsonValue>>> {
    check_listed("v", from)?;
    let record = member_room_for(storage, room_id, origin)?;
    let limit = limit.min(MAX_BACKFILL);
    let mut view = ServerView::new(storage, origin);
    let mut seen: HashSet<OwnedEventId> = HashSet::new();
    // Deepest first; ties by id, so the answer does not depend on storage order.
    let mut frontier: BinaryHeap<(u64, OwnedEventId)> = BinaryHeap::new();
    for id in from {
        if let Some((_, pdu, _)) = dag_event(storage, room_id, id)? {
            frontier.push((pdu.depth, pdu.event_id));
        }
    }
    let mut answer = Vec::new();
    while answer.len() < limit
        && let Some((_, id)) = frontier.pop()
    {
        if !seen.insert(id.clone()) {
            continue;
        }
        let Some((_, pdu, meta)) = dag_event(storage, room_id, &id)? else { continue };
        for prev in &pdu.prev_events {
            if !seen.contains(prev)
                && let Some((_, prev_pdu, _)) = dag_event(storage, room_id, prev)?
            {
                frontier.push((prev_pdu.depth, prev_pdu.event_id));
            }
        }
        answer.push(view.render(&record.version, &meta, &pdu)?);
    }
    Ok(answer)
}

/// Up to `limit` (at most [`MAX_MISSING_EVENTS`]) events before `latest` (excluded) back to
/// `earliest` (excluded), none shallower than `min_depth`, oldest first.
pub fn missing_events(
    storage: &Storage,
    origin: &ServerName,
    room_id: &RoomId,
    earliest: &[OwnedEventId],
    latest: &[OwnedEventId],
    limit: usize,
    min_depth: u64,
) -> Result<Vec<Box<RawJsonValue>>> {
    check_listed("earliest_events", earliest)?;
    check_listed("latest_events", latest)?;
    let record = member_room_for(storage, room_id, origin)?;
    let limit = limit.min(MAX_MISSING_EVENTS);
    let mut view = ServerView::new(storage, origin);
    let mut seen: HashSet<OwnedEventId> = earliest.iter().cloned().collect();
    seen.extend(latest.iter().cloned());
    let mut queue: VecDeque<OwnedEventId> = VecDeque::new();
    for id in latest {
        if let Some((_, pdu, _)) = dag_event(storage, room_id, id)? {
            queue.extend(pdu.prev_events);
        }
    }
    let mut found: Vec<(Pdu, EventMeta)> = Vec::new();
    while found.len() < limit
        && let Some(id) = queue.pop_front()
    {
        if !seen.insert(id.clone()) {
            continue;
        }
        let Some((_, pdu, meta)) = dag_event(storage, room_id, &id)? else { continue };
        if pdu.depth < min_depth {
            continue;
        }
        queue.extend(pdu.prev_events.iter().cloned());
        found.push((pdu, meta));
    }
    found.sort_by(|(a, _), (b, _)| (a.depth, &a.event_id).cmp(&(b.depth, &b.event_id)));
    found.iter().map(|(pdu, meta)| view.render(&record.version, meta, pdu)).collect()
}

/// The event of `room_id` closest to `ts` in direction `dir` that `origin` may see.
pub fn event_by_timestamp(
    storage: &Storage,
    origin: &ServerName,
    room_id: &RoomId,
    ts: MilliSecondsSinceUnixEpoch,
    dir: Dir,
) -> Result<(OwnedEventId, MilliSecondsSinceUnixEpoch)> {
    let record = member_room_for(storage, room_id, origin)?;
    let target = u64::from(ts.get());
    let (direction, start) = match dir {
        Dir::Forward => (Direction::Forward, (record.short, target, 0)),
        Dir::Backward => (Direction::Reverse, (record.short, target, u64::MAX)),
    };
    let mut candidates = Vec::new();
    EVENT_TIMES_TABLE.scan(
        storage.engine(),
        &prefix(&record.short),
        Some(&start),
        direction,
        |_, short| {
            candidates.push(short);
            if candidates.len() >= TIMESTAMP_CANDIDATES {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        },
    )?;
    let mut view = ServerView::new(storage, origin);
    for short in candidates {
        let (Some(pdu), Some(meta)) = (
            rooms::readable_pdu(storage.engine(), short)?,
            rooms::event_meta(storage.engine(), short)?,
        ) else {
            continue;
        };
        if view.check(&meta, &pdu)? == Seen::Visible {
            let ts = MilliSecondsSinceUnixEpoch(
                UInt::try_from(u64::from(pdu.origin_server_ts.get())).unwrap_or_default(),
            );
            return Ok((pdu.event_id, ts));
        }
    }
    Err(Error::not_found("No event found in that direction from that time."))
}

impl ServerView<'_> {
    /// `pdu` in federation form, redacted if the server may not see it.
    fn render(
        &mut self,
        version: &RoomVersionId,
        meta: &EventMeta,
        pdu: &Pdu,
    ) -> Result<Box<RawJsonValue>> {
        let json = pdu.federation_json(version)?;
        let json = match self.check(meta, pdu)? {
            Seen::Visible => json,
            Seen::Redacted => {
                let rules = version.rules().ok_or_else(|| {
                    Error::internal(format!("room version {version} has no rules"))
                })?;
                ruma::canonical_json::redact(json, &rules.redaction, None).map_err(|error| {
                    Error::internal(format!("redacting {}: {error}", pdu.event_id))
                })?
            }
        };
        Ok(serde_json::value::to_raw_value(&json)?)
    }
}

/// `400 M_INVALID_PARAM` for a list of more than [`MAX_LISTED_EVENTS`] event ids.
fn check_listed(name: &str, ids: &[OwnedEventId]) -> Result<()> {
    if ids.len() > MAX_LISTED_EVENTS {
        return Err(Error::invalid_param(format!(
            "`{name}` lists {} events; at most {MAX_LISTED_EVENTS} are accepted.",
            ids.len()
        )));
    }
    Ok(())
}

pub(super) fn federation_raw(pdu: &Pdu, version: &RoomVersionId) -> Result<Box<RawJsonValue>> {
    Ok(serde_json::value::to_raw_value(&pdu.federation_json(version)?)?)
}

/// The room, if `origin` may ask about it at all.
pub(super) fn room_for(
    storage: &Storage,
    room_id: &RoomId,
    origin: &ServerName,
) -> Result<RoomRecord> {
    let record = rooms::room(storage, room_id)?.ok_or_else(|| Error::not_found("Unknown room."))?;
    if disabled_rooms::is_disabled(storage, room_id)? {
        return Err(Error::forbidden("This room is not available over federation."));
    }
    let heads = rooms::heads(storage.engine(), record.short)?
        .ok_or_else(|| Error::not_found("Unknown room."))?;
    acl::check(storage, heads.snapshot, origin)?;
    Ok(record)
}

/// [`room_for`], for a server with a user joined now.
fn member_room_for(storage: &Storage, room_id: &RoomId, origin: &ServerName) -> Result<RoomRecord> {
    let record = room_for(storage, room_id, origin)?;
    if !server_joined(storage, record.short, origin)? {
        return Err(Error::forbidden(format!("Server {origin} has no user in this room.")));
    }
    Ok(record)
}

/// Whether a user of `server` is joined to the room with short id `room`.
pub(super) fn server_joined(storage: &Storage, room: u64, server: &ServerName) -> Result<bool> {
    let mut joined = false;
    ROOM_MEMBERS_TABLE.scan(
        storage.engine(),
        &prefix(&room),
        None,
        Direction::Forward,
        |(_, user), Json(member)| {
            if member.membership == MembershipState::Join
                && ruma::UserId::parse(&user).is_ok_and(|user| user.server_name() == server)
            {
                joined = true;
                return std::ops::ControlFlow::Break(());
            }
            std::ops::ControlFlow::Continue(())
        },
    )?;
    Ok(joined)
}

/// An event this server holds and may serve (not rejected), with its place.
fn stored_event(storage: &Storage, event_id: &EventId) -> Result<(u64, Pdu, EventMeta)> {
    let unknown = || Error::not_found("Unknown event.");
    let (short, pdu) = rooms::pdu_by_id(storage, event_id)?.ok_or_else(unknown)?;
    let meta = rooms::any_event_meta(storage.engine(), short)?.ok_or_else(unknown)?;
    if meta.status == EventStatus::Rejected {
        return Err(unknown());
    }
    Ok((short, pdu, meta))
}

/// [`stored_event`], which must belong to `room_id`.
fn event_in_room(
    storage: &Storage,
    room_id: &RoomId,
    event_id: &EventId,
) -> Result<(u64, Pdu, EventMeta)> {
    let found = stored_event(storage, event_id)?;
    if found.1.room_id != room_id {
        return Err(Error::not_found("Unknown event."));
    }
    Ok(found)
}

/// An event of `room_id` with its place in the DAG (not an outlier, not rejected), if held.
fn dag_event(
    storage: &Storage,
    room_id: &RoomId,
    event_id: &EventId,
) -> Result<Option<(u64, Pdu, EventMeta)>> {
    match event_in_room(storage, room_id, event_id) {
        Ok(found) if found.2.status != EventStatus::Outlier => Ok(Some(found)),
        Ok(_) => Ok(None),
        Err(error) if error.is_internal() => Err(error),
        Err(_) => Ok(None),
    }
}

/// The state before `event_id` (which `origin` must be allowed to see), with the room.
fn state_before(
    storage: &Storage,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
) -> Result<(RoomRecord, Vec<(u64, Pdu)>)> {
    let record = member_room_for(storage, room_id, origin)?;
    let (_, pdu, meta) = event_in_room(storage, room_id, event_id)?;
    if meta.status == EventStatus::Outlier {
        return Err(Error::not_found("No state is known at that event."));
    }
    if ServerView::new(storage, origin).check(&meta, &pdu)? == Seen::Redacted {
        return Err(Error::forbidden("You may not see the state at that event."));
    }
    let mut events = Vec::new();
    for short in state::load(storage, meta.state_before)?.into_values() {
        let pdu = rooms::pdu(storage.engine(), short)?
            .ok_or_else(|| Error::internal(format!("state event {short} is missing")))?;
        events.push((short, pdu));
    }
    Ok((record, events))
}

/// The auth chain of `events` (without them unless another's chain holds them), by depth:
/// their chains through [`AuthChains`], from the `auth_chains` rows or its bounded walk.
/// What it walks is not stored (serving writes nothing); the room's actor stores chains.
pub(super) fn auth_chain(
    storage: &Storage,
    events: impl IntoIterator<Item = u64>,
) -> Result<Vec<Arc<Pdu>>> {
    let mut chains = AuthChains::new(storage);
    let mut union = BTreeSet::new();
    for event in events {
        union.extend(chains.of(event)?.events().iter().copied());
    }
    let mut chain = Vec::with_capacity(union.len());
    for short in union {
        let pdu = rooms::shared_pdu(storage, short)?
            .ok_or_else(|| Error::internal(format!("auth event {short} is missing")))?;
        chain.push(pdu);
    }
    chain.sort_by(|a, b| (a.depth, &a.event_id).cmp(&(b.depth, &b.event_id)));
    Ok(chain)
}
