//! Computing one /sync response for a user's device from a token.
//!
//! Everything is read up to the committed position taken at the start (`upto`), which
//! becomes `next_batch`: events committed while the response is built wait for the next
//! sync, so nothing is sent twice and nothing is skipped.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    ops::ControlFlow,
    sync::Arc,
};

use ruma::{
    OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    api::client::{
        filter::{FilterDefinition, LazyLoadOptions, RoomEventFilter},
        sync::sync_events::{
            UnreadNotificationsCount,
            v3::{
                Ephemeral, InvitedRoom, JoinedRoom, KnockState, KnockedRoom, LeftRoom, Response,
                RoomSummary, State, StateEvents, Timeline,
            },
        },
    },
    events::TimelineEventType,
    serde::Raw,
};
use serde_json::{Value as JsonValue, json};

use super::token::SyncToken;
use crate::{
    Result, Services,
    accounts::Sender,
    keys::{device_lists, query as keys_query},
    push::{counts as push_counts, rules as push_rules},
    rooms::{
        self, Pdu, filter,
        state::{self, StateMap},
        timeline::{self, Token, Viewer},
    },
    storage::{
        Direction,
        account_data::{ACCOUNT_DATA_STREAM_TABLE, ACCOUNT_DATA_TABLE},
        codec::{Json, prefix, prefix2},
        ephemeral::{PRESENCE_STREAM_TABLE, PRESENCE_TABLE, TO_DEVICE_TABLE},
        rooms::{
            EventMeta, MembershipRecord, RECEIPT_STREAM_TABLE, RECEIPTS_TABLE, ROOM_MEMBERS_TABLE,
            TIMELINE_TABLE,
        },
    },
};

/// Default number of timeline events per room.
const DEFAULT_TIMELINE_LIMIT: usize = 10;
/// Most timeline events per room whatever the filter asks.
const MAX_TIMELINE_LIMIT: usize = 100;
/// To-device messages handed out per sync.
const TO_DEVICE_LIMIT: usize = 100;
/// Heroes listed in a room summary.
const HEROES: usize = 5;

/// What the client asked for.
pub struct SyncParams<'a> {
    pub sender: &'a Sender,
    pub since: Option<SyncToken>,
    pub full_state: bool,
    pub filter: &'a FilterDefinition,
}

/// A computed response and whether it carries anything new.
pub struct Computed {
    pub response: Response,
    pub has_news: bool,
}

fn raw<T>(value: &JsonValue) -> Result<Raw<T>> {
    Ok(Raw::from_json(serde_json::value::to_raw_value(value)?))
}

/// An event in the sync format: the client format without `room_id`.
fn sync_event(
    services: &Services,
    pdu: &Pdu,
    meta: &EventMeta,
    sender: &Sender,
) -> Result<JsonValue> {
    let mut rendered = timeline::render(
        &services.storage,
        pdu,
        meta,
        Some((&sender.user_id, Some(sender.device_id.as_str()))),
    )?;
    if let Some(object) = rendered.as_object_mut() {
        object.remove("room_id");
    }
    Ok(rendered)
}

fn room_allowed(filter: &FilterDefinition, room: &RoomId) -> bool {
    !filter.room.not_rooms.iter().any(|excluded| excluded == room)
        && filter
            .room
            .rooms
            .as_ref()
            .is_none_or(|rooms| rooms.iter().any(|included| included == room))
}

fn lazy(filter: &RoomEventFilter) -> bool {
    matches!(filter.lazy_load_options, LazyLoadOptions::Enabled { .. })
}

/// The state after the last event at or before `position` in a room.
fn snapshot_at(services: &Services, room: u64, position: u64) -> Result<u64> {
    let mut found = None;
    TIMELINE_TABLE.scan(
        services.storage.engine(),
        &room.to_be_bytes(),
        Some(&(room, position)),
        Direction::Reverse,
        |_, short| {
            found = Some(short);
            ControlFlow::Break(())
        },
    )?;
    match found {
        Some(short) => Ok(rooms::event_meta(services.storage.engine(), short)?
            .map_or(state::EMPTY, |meta| meta.state_after)),
        None => Ok(state::EMPTY),
    }
}

/// The latest account data of `user` in `room` (`""`: global) as events.
fn all_account_data(services: &Services, user: &UserId, room: &str) -> Result<Vec<JsonValue>> {
    Ok(ACCOUNT_DATA_TABLE
        .collect(
            services.storage.engine(),
            &prefix2(&user.as_str(), &room),
            Direction::Forward,
            usize::MAX,
        )?
        .into_iter()
        .map(|((_, _, kind), Json(record))| json!({ "type": kind, "content": record.content }))
        .collect())
}

/// Account data that changed in `(since, upto]`, by room (`""`: global).
fn changed_account_data(
    services: &Services,
    user: &UserId,
    since: u64,
    upto: u64,
) -> Result<HashMap<String, Vec<JsonValue>>> {
    let mut changed: HashMap<String, Vec<JsonValue>> = HashMap::new();
    if !services.storage.writer().written_since(ACCOUNT_DATA_STREAM_TABLE.id(), since) {
        return Ok(changed);
    }
    let start = (user.to_string(), since.saturating_add(1));
    let mut entries = Vec::new();
    ACCOUNT_DATA_STREAM_TABLE.scan(
        services.storage.engine(),
        &prefix(&user.as_str()),
        Some(&start),
        Direction::Forward,
        |(_, position), Json((room, kind))| {
            if position > upto {
                return ControlFlow::Break(());
            }
            entries.push((room, kind));
            ControlFlow::Continue(())
        },
    )?;
    for (room, kind) in entries {
        let key = (user.to_string(), room.clone(), kind.clone());
        if let Some(Json(record)) =
            ACCOUNT_DATA_TABLE.get_readable(services.storage.engine(), &key)?
        {
            changed
                .entry(room)
                .or_default()
                .push(json!({ "type": kind, "content": record.content }));
        }
    }
    Ok(changed)
}

fn allows_kind(filter: &ruma::api::client::filter::Filter, kind: &str) -> bool {
    filter::allows_type(filter.types.as_deref(), &filter.not_types, kind)
}

/// Whether an invite came from someone the user ignores (such invites are not shown).
fn invited_by_ignored(
    services: &Services,
    ignored: &HashSet<String>,
    record: &MembershipRecord,
) -> Result<bool> {
    if ignored.is_empty() {
        return Ok(false);
    }
    Ok(rooms::pdu_by_id(&services.storage, &record.event_id)?
        .is_some_and(|(_, pdu)| ignored.contains(pdu.sender.as_str())))
}

/// Computes the response for `params`.
pub fn compute(services: &Services, params: &SyncParams<'_>) -> Result<Computed> {
    let user = &params.sender.user_id;
    let initial = params.since.is_none();
    let since = params.since.map_or(0, |token| token.position);
    // Not past the user's own unanswered sends (see `SyncHub::hold`).
    let upto =
        services.hub.visible_to(user, services.storage.writer().committed_position()).max(since);
    let typing_now = services.rooms.typing.counter();
    let mut next = SyncToken { position: upto, typing: typing_now, to_device: None };
    let mut response = Response::new(String::new());
    let mut has_news = false;

    let account_changes =
        if initial { HashMap::new() } else { changed_account_data(services, user, since, upto)? };

    let memberships = rooms::cached_memberships(&services.storage, user)?;
    let ignored = timeline::ignored_users(&services.storage, user)?;
    let mut joined_rooms = Vec::new();
    let mut membership_changes = HashMap::new();
    for (room_id, record) in memberships.iter() {
        let room_id = room_id.clone();
        // Changes committed after `upto` belong to the next sync.
        if record.position > upto || !room_allowed(params.filter, &room_id) {
            continue;
        }
        let changed = record.position > since;
        match record.membership.as_str() {
            "join" => {
                joined_rooms.push(room_id.clone());
                let room_account = account_changes.get(room_id.as_str());
                if let Some(joined) = joined_room(
                    services,
                    params,
                    &room_id,
                    since,
                    upto,
                    typing_now,
                    initial || changed,
                    room_account,
                    &mut membership_changes,
                    &ignored,
                )? {
                    response.rooms.join.insert(room_id, joined);
                    has_news = true;
                }
            }
            "invite"
                if (initial || changed) && !invited_by_ignored(services, &ignored, record)? =>
            {
                let mut invite = InvitedRoom::new();
                invite.invite_state.events = stripped_with_event(services, record)?;
                response.rooms.invite.insert(room_id, invite);
                has_news = true;
            }
            "knock" if initial || changed => {
                let mut knock = KnockedRoom::new();
                let mut state = KnockState::new();
                state.events = stripped_with_event(services, record)?;
                knock.knock_state = state;
                response.rooms.knock.insert(room_id, knock);
                has_news = true;
            }
            "leave" | "ban"
                if !record.forgotten
                    && ((changed && !initial) || (initial && params.filter.room.include_leave)) =>
            {
                response
                    .rooms
                    .leave
                    .insert(room_id.clone(), left_room(services, params, &room_id, record, since)?);
                has_news = true;
            }
            _ => {}
        }
    }

    // Global account data.
    let global = if initial {
        let mut global = all_account_data(services, user, "")?;
        // Push rules exist from the start: the defaults until the user changes one.
        if !global.iter().any(|event| event["type"] == push_rules::PUSH_RULES) {
            let ruleset = push_rules::load(&services.storage, user)?;
            global.push(json!({ "type": push_rules::PUSH_RULES, "content": push_rules::content(&ruleset, None)? }));
        }
        global
    } else {
        account_changes.get("").cloned().unwrap_or_default()
    };
    for event in global {
        if allows_kind(&params.filter.account_data, event["type"].as_str().unwrap_or_default()) {
            response.account_data.events.push(raw(&event)?);
            has_news = true;
        }
    }

    // To-device messages for this device, a page at a time: when the page fills, the token
    // records how far delivery got so the rest is neither skipped nor acknowledged unseen.
    let device = params.sender.device_id.to_string();
    let delivered_through = params.since.map_or(0, |token| token.to_device_position());
    let start = (user.to_string(), device.clone(), delivered_through.saturating_add(1));
    let mut last_delivered = None;
    if services.storage.writer().written_since(TO_DEVICE_TABLE.id(), delivered_through) {
        TO_DEVICE_TABLE.scan(
            services.storage.engine(),
            &prefix2(&user.as_str(), &device.as_str()),
            Some(&start),
            Direction::Forward,
            |(_, _, position), Json(message)| {
                if position > upto {
                    return ControlFlow::Break(());
                }
                if response.to_device.events.len() >= TO_DEVICE_LIMIT {
                    next.to_device = last_delivered;
                    return ControlFlow::Break(());
                }
                let event = json!({
                    "sender": message.sender,
                    "type": message.kind,
                    "content": message.content,
                });
                if let Ok(event) = raw(&event) {
                    response.to_device.events.push(event);
                }
                last_delivered = Some(position);
                ControlFlow::Continue(())
            },
        )?;
    }
    if !response.to_device.events.is_empty() {
        has_news = true;
    }

    // Presence of users sharing a room.
    presence(services, params, &joined_rooms, since, upto, &mut response)?;
    if !response.presence.events.is_empty() {
        has_news = true;
    }

    // End-to-end encryption: whose devices to re-fetch, and this device's key supply.
    if !initial {
        let (changed, left) = device_lists::changes_in(
            &services.storage,
            user,
            &memberships,
            since,
            upto,
            &membership_changes,
        )?;
        if !changed.is_empty() || !left.is_empty() {
            has_news = true;
        }
        response.device_lists.changed = changed;
        response.device_lists.left = left;
    }
    let supply = keys_query::cached_key_supply(&services.storage, user, &device)?;
    let (one_time, unused_fallback) = &*supply;
    response.device_one_time_keys_count = one_time
        .iter()
        .map(|(algorithm, count)| (algorithm.as_str().into(), UInt::new_saturating(*count)))
        .collect();
    response.device_unused_fallback_key_types =
        Some(unused_fallback.iter().map(|algorithm| algorithm.as_str().into()).collect());

    response.next_batch = next.to_string();
    Ok(Computed { response, has_news })
}

fn stripped_with_event(
    services: &Services,
    record: &MembershipRecord,
) -> Result<Vec<Raw<ruma::events::AnyStrippedStateEvent>>> {
    let mut events = record.stripped_state.iter().map(raw).collect::<Result<Vec<_>>>()?;
    if let Some((_, pdu)) = rooms::pdu_by_id(&services.storage, &record.event_id)? {
        events.push(raw(&pdu.stripped_json())?);
    }
    Ok(events)
}

/// Timeline events of a room in `(lower, upto]` visible to the viewer, newest `limit`.
struct TimelinePart {
    events: Vec<(Arc<Pdu>, EventMeta)>,
    limited: bool,
    /// Every membership change in `(lower, upto]` as `(user, membership)`, when the part
    /// examined every event of that range (device list tracking needs them all).
    membership_changes: Option<Vec<(String, String)>>,
}

/// The short ids of a room's events in `(lower, upto]`, newest first, at most `scan_limit`
/// of them; true when older ones in the range were left out.
fn timeline_candidates(
    services: &Services,
    room: u64,
    lower: u64,
    upto: u64,
    scan_limit: usize,
) -> Result<(Vec<u64>, bool)> {
    let scan = |from: (u64, u64), direction, in_range: &dyn Fn(u64) -> bool| {
        let mut candidates = Vec::new();
        let mut more = false;
        TIMELINE_TABLE
            .scan(
                services.storage.engine(),
                &room.to_be_bytes(),
                Some(&from),
                direction,
                |(_, position), short| {
                    if !in_range(position) {
                        return ControlFlow::Break(());
                    }
                    if candidates.len() == scan_limit {
                        more = true;
                        return ControlFlow::Break(());
                    }
                    candidates.push(short);
                    ControlFlow::Continue(())
                },
            )
            .map(|()| (candidates, more))
    };
    if lower > 0 {
        // Rooms written recently have their newest entries in memory.
        if let Some(found) =
            services.storage.writer().recent_timeline().between(room, lower, upto, scan_limit)
        {
            return Ok(found);
        }
        // An incremental sync usually finds a handful of events: reading them forwards from
        // the token is one cheap seek, where the reverse seek below is several times dearer.
        let (mut candidates, more) =
            scan((room, lower.saturating_add(1)), Direction::Forward, &|position| {
                position <= upto
            })?;
        if !more {
            candidates.reverse();
            return Ok((candidates, false));
        }
    }
    scan((room, upto), Direction::Reverse, &|position| position > lower)
}

fn timeline_part(
    services: &Services,
    room: u64,
    lower: u64,
    upto: u64,
    limit: usize,
    filter: &RoomEventFilter,
    viewer: &mut Viewer<'_>,
) -> Result<TimelinePart> {
    let scan_limit = limit.saturating_mul(20).saturating_add(100);
    let (candidates, more) = timeline_candidates(services, room, lower, upto, scan_limit)?;
    let mut events = Vec::new();
    let mut limited = more;
    let mut membership_changes = (!more).then(Vec::new);
    for short in candidates {
        let (Some(pdu), Some(meta)) = (
            rooms::shared_pdu(&services.storage, short)?,
            rooms::readable_event_meta(services.storage.engine(), short)?,
        ) else {
            continue;
        };
        if let Some(changes) = &mut membership_changes
            && meta.state_after != meta.state_before
            && pdu.kind == TimelineEventType::RoomMember
            && let (Some(user), Some(membership)) =
                (pdu.state_key.clone(), pdu.content_str("membership"))
        {
            changes.push((user, membership));
        }
        if !filter::allows(filter, &pdu) || !viewer.can_see(&pdu, &meta)? {
            continue;
        }
        if events.len() == limit {
            limited = true;
            // The older events go unexamined, so the membership changes are incomplete.
            membership_changes = None;
            break;
        }
        events.push((pdu, meta));
    }
    events.reverse();
    if let Some(changes) = &mut membership_changes {
        changes.reverse();
    }
    Ok(TimelinePart { events, limited, membership_changes })
}

#[allow(clippy::too_many_arguments)]
fn joined_room(
    services: &Services,
    params: &SyncParams<'_>,
    room_id: &RoomId,
    since: u64,
    upto: u64,
    typing_now: u64,
    full: bool,
    account_changes: Option<&Vec<JsonValue>>,
    membership_changes: &mut HashMap<OwnedRoomId, Vec<(String, String)>>,
    ignored: &Arc<HashSet<String>>,
) -> Result<Option<JoinedRoom>> {
    let Some(record) = rooms::room(&services.storage, room_id)? else {
        return Ok(None);
    };
    let user = &params.sender.user_id;
    let full = full || params.full_state;
    let room_filter = &params.filter.room;
    let limit = room_filter
        .timeline
        .limit
        .and_then(|limit| usize::try_from(limit).ok())
        .unwrap_or(DEFAULT_TIMELINE_LIMIT)
        .clamp(1, MAX_TIMELINE_LIMIT);
    let lower = if params.since.is_none() { 0 } else { since };
    let mut viewer =
        Viewer::known(&services.storage, user, Some("join".to_owned()), Arc::clone(ignored));
    let part = timeline_part(
        services,
        record.short,
        lower,
        upto,
        limit,
        &room_filter.timeline,
        &mut viewer,
    )?;
    if params.since.is_some()
        && let Some(changes) = &part.membership_changes
    {
        membership_changes.insert(room_id.to_owned(), changes.clone());
    }

    let mut joined = JoinedRoom::new();
    let start_snapshot = match part.events.first() {
        Some((_, meta)) => meta.state_before,
        None => snapshot_at(services, record.short, upto)?,
    };
    let prev_batch =
        part.events.first().map_or(Token(upto), |(_, meta)| Token(meta.position.saturating_sub(1)));

    // State: everything at the timeline's start for new rooms and full syncs, the changes
    // since the token for gappy timelines, nothing otherwise (the timeline carries it).
    let mut state_events = Vec::new();
    if full || part.limited {
        let start = state::load(&services.storage, start_snapshot)?;
        let before: StateMap = if full {
            StateMap::new()
        } else {
            state::load(&services.storage, snapshot_at(services, record.short, since)?)?
        };
        let lazy_members: Option<BTreeSet<OwnedUserId>> = lazy(&room_filter.state).then(|| {
            let mut senders: BTreeSet<OwnedUserId> =
                part.events.iter().map(|(pdu, _)| pdu.sender.clone()).collect();
            senders.insert(user.clone());
            senders
        });
        let timeline_ids: HashSet<&ruma::EventId> =
            part.events.iter().map(|(pdu, _)| &*pdu.event_id).collect();
        for (key, short) in &start {
            if before.get(key) == Some(short) {
                continue;
            }
            let (Some(pdu), Some(meta)) = (
                rooms::readable_pdu(services.storage.engine(), *short)?,
                rooms::readable_event_meta(services.storage.engine(), *short)?,
            ) else {
                continue;
            };
            if timeline_ids.contains(&*pdu.event_id) || !filter::allows(&room_filter.state, &pdu) {
                continue;
            }
            if let (Some(members), true) = (&lazy_members, pdu.kind.to_string() == "m.room.member")
            {
                let is_sender = pdu
                    .state_key
                    .as_deref()
                    .and_then(|key| UserId::parse(key).ok())
                    .is_some_and(|member| members.contains(&member));
                if !is_sender {
                    continue;
                }
            }
            state_events.push(raw(&sync_event(services, &pdu, &meta, params.sender)?)?);
        }
    }

    // Lazy loading without a gap: the timeline's senders still need their member events
    // (sent again if the client had them: harmless, and no per-device record is needed).
    if lazy(&room_filter.state) && !full && !part.limited && !part.events.is_empty() {
        let timeline_ids: HashSet<&ruma::EventId> =
            part.events.iter().map(|(pdu, _)| &*pdu.event_id).collect();
        let senders: BTreeSet<&UserId> = part.events.iter().map(|(pdu, _)| &*pdu.sender).collect();
        for sender in senders {
            let Some(member) = rooms::state_event(
                &services.storage,
                start_snapshot,
                "m.room.member",
                sender.as_str(),
            )?
            else {
                continue;
            };
            if timeline_ids.contains(&*member.event_id) {
                continue;
            }
            let Some((short, _)) = rooms::pdu_by_id(&services.storage, &member.event_id)? else {
                continue;
            };
            if let Some(meta) = rooms::readable_event_meta(services.storage.engine(), short)? {
                state_events.push(raw(&sync_event(services, &member, &meta, params.sender)?)?);
            }
        }
    }

    let mut timeline_events = Vec::with_capacity(part.events.len());
    for (pdu, meta) in &part.events {
        timeline_events.push(raw(&sync_event(services, pdu, meta, params.sender)?)?);
    }

    // Ephemeral: typing and receipts.
    let mut ephemeral = Vec::new();
    let since_typing = params.since.map_or(0, |token| token.typing);
    if let Some((typing_users, version)) = services.rooms.typing.get(room_id) {
        let restarted = since_typing > typing_now;
        if full || restarted || version > since_typing {
            ephemeral.push(json!({ "type": "m.typing", "content": { "user_ids": typing_users } }));
        }
    }
    if let Some(receipts) = receipts(services, record.short, user, lower, upto)? {
        ephemeral.push(receipts);
    }
    let ephemeral: Vec<JsonValue> = ephemeral
        .into_iter()
        .filter(|event| {
            filter::allows_type(
                room_filter.ephemeral.types.as_deref(),
                &room_filter.ephemeral.not_types,
                event["type"].as_str().unwrap_or_default(),
            )
        })
        .collect();

    let room_account: Vec<JsonValue> = if full {
        all_account_data(services, user, room_id.as_str())?
    } else {
        account_changes.cloned().unwrap_or_default()
    };
    let room_account: Vec<JsonValue> = room_account
        .into_iter()
        .filter(|event| {
            filter::allows_type(
                room_filter.account_data.types.as_deref(),
                &room_filter.account_data.not_types,
                event["type"].as_str().unwrap_or_default(),
            )
        })
        .collect();

    // Unread notification counts; a change on its own is news too.
    let counts = push_counts::cached_room_counts(&services.storage, user, record.short)?;
    let counts_changed = params.since.is_some()
        && counts.values().any(|counts| counts.position > since && counts.position <= upto);

    if !full
        && timeline_events.is_empty()
        && state_events.is_empty()
        && ephemeral.is_empty()
        && room_account.is_empty()
        && !counts_changed
    {
        return Ok(None);
    }

    let membership_changed = full
        || part.events.iter().any(|(pdu, _)| pdu.kind.to_string() == "m.room.member")
        || !state_events.is_empty();
    if membership_changed {
        joined.summary = summary(services, record.short, user)?;
    }
    joined.timeline = Timeline::new();
    joined.timeline.limited = part.limited;
    joined.timeline.prev_batch = Some(prev_batch.to_string());
    joined.timeline.events = timeline_events;
    let mut state = StateEvents::new();
    state.events = state_events;
    joined.state = State::Before(state);
    let mut ephemeral_section = Ephemeral::new();
    ephemeral_section.events = ephemeral.iter().map(raw).collect::<Result<_>>()?;
    joined.ephemeral = ephemeral_section;
    joined.account_data.events = room_account.iter().map(raw).collect::<Result<_>>()?;
    let count = |notifications: u64, highlights: u64| {
        let mut count = UnreadNotificationsCount::new();
        count.notification_count = Some(UInt::new_saturating(notifications));
        count.highlight_count = Some(UInt::new_saturating(highlights));
        count
    };
    if room_filter.timeline.unread_thread_notifications {
        let main = counts.get("").cloned().unwrap_or_default();
        joined.unread_notifications = count(main.notifications, main.highlights);
        for (thread, counts) in counts.iter() {
            if thread.is_empty() || counts.notifications == 0 && counts.highlights == 0 {
                continue;
            }
            if let Ok(root) = ruma::EventId::parse(thread) {
                joined
                    .unread_thread_notifications
                    .insert(root, count(counts.notifications, counts.highlights));
            }
        }
    } else {
        let notifications = counts.values().map(|counts| counts.notifications).sum();
        let highlights = counts.values().map(|counts| counts.highlights).sum();
        joined.unread_notifications = count(notifications, highlights);
    }
    Ok(Some(joined))
}

/// `m.receipt` with the receipts that changed in `(lower, upto]`; private receipts only for
/// their owner.
fn receipts(
    services: &Services,
    room: u64,
    user: &UserId,
    lower: u64,
    upto: u64,
) -> Result<Option<JsonValue>> {
    if !services.storage.writer().written_since(RECEIPT_STREAM_TABLE.id(), lower) {
        return Ok(None);
    }
    let mut entries = Vec::new();
    RECEIPT_STREAM_TABLE.scan(
        services.storage.engine(),
        &room.to_be_bytes(),
        Some(&(room, lower.saturating_add(1))),
        Direction::Forward,
        |(_, position), Json(entry)| {
            if position > upto {
                return ControlFlow::Break(());
            }
            entries.push(entry);
            ControlFlow::Continue(())
        },
    )?;
    let mut content: BTreeMap<String, BTreeMap<String, BTreeMap<String, JsonValue>>> =
        BTreeMap::new();
    for (reader, kind, thread) in entries {
        if kind == "m.read.private" && reader != user.as_str() {
            continue;
        }
        let Some(Json(receipt)) = RECEIPTS_TABLE.get_readable(
            services.storage.engine(),
            &(room, kind.clone(), reader.clone(), thread.clone()),
        )?
        else {
            continue;
        };
        let mut data = json!({ "ts": receipt.ts });
        if !thread.is_empty() {
            data["thread_id"] = json!(thread);
        }
        content
            .entry(receipt.event_id.to_string())
            .or_default()
            .entry(kind)
            .or_default()
            .insert(reader, data);
    }
    Ok((!content.is_empty()).then(|| json!({ "type": "m.receipt", "content": content })))
}

/// Member counts and up to five heroes (other members, for rooms without a name).
fn summary(services: &Services, room: u64, user: &UserId) -> Result<RoomSummary> {
    let mut joined = 0u64;
    let mut invited = 0u64;
    let mut heroes = Vec::new();
    ROOM_MEMBERS_TABLE.scan(
        services.storage.engine(),
        &room.to_be_bytes(),
        None,
        Direction::Forward,
        |(_, member), Json(record)| {
            match record.membership.as_str() {
                "join" => joined += 1,
                "invite" => invited += 1,
                _ => return ControlFlow::Continue(()),
            }
            if heroes.len() < HEROES
                && member != user.as_str()
                && let Ok(member) = UserId::parse(member)
            {
                heroes.push(member);
            }
            ControlFlow::Continue(())
        },
    )?;
    let mut summary = RoomSummary::new();
    summary.heroes = heroes;
    summary.joined_member_count = Some(UInt::try_from(joined).unwrap_or_default());
    summary.invited_member_count = Some(UInt::try_from(invited).unwrap_or_default());
    Ok(summary)
}

/// A room the user left: the timeline up to and including their leave.
fn left_room(
    services: &Services,
    params: &SyncParams<'_>,
    room_id: &RoomId,
    record: &MembershipRecord,
    since: u64,
) -> Result<LeftRoom> {
    let mut left = LeftRoom::new();
    let Some(room) = rooms::room(&services.storage, room_id)? else {
        return Ok(left);
    };
    let limit = params
        .filter
        .room
        .timeline
        .limit
        .and_then(|limit| usize::try_from(limit).ok())
        .unwrap_or(DEFAULT_TIMELINE_LIMIT)
        .clamp(1, MAX_TIMELINE_LIMIT);
    let mut viewer = Viewer::new(&services.storage, room_id, &params.sender.user_id)?;
    let lower = if params.since.is_none() { 0 } else { since };
    let part = timeline_part(
        services,
        room.short,
        lower,
        record.position,
        limit,
        &params.filter.room.timeline,
        &mut viewer,
    )?;
    let mut timeline = Timeline::new();
    timeline.limited = part.limited;
    timeline.prev_batch =
        part.events.first().map(|(_, meta)| Token(meta.position.saturating_sub(1)).to_string());
    for (pdu, meta) in &part.events {
        timeline.events.push(raw(&sync_event(services, pdu, meta, params.sender)?)?);
    }
    left.timeline = timeline;
    Ok(left)
}

/// Presence updates (or, initially, the presence) of users sharing a room with the user.
fn presence(
    services: &Services,
    params: &SyncParams<'_>,
    joined_rooms: &[OwnedRoomId],
    since: u64,
    upto: u64,
    response: &mut Response,
) -> Result<()> {
    if !services.config.allow_local_presence {
        return Ok(());
    }
    let mut changed = Vec::new();
    if params.since.is_some() {
        changed = services.storage.stream_values(PRESENCE_STREAM_TABLE, since, upto)?;
        if changed.is_empty() {
            return Ok(());
        }
        changed.sort_unstable();
        changed.dedup();
    }
    let mut shorts = Vec::with_capacity(joined_rooms.len());
    for room_id in joined_rooms {
        if let Some(record) = rooms::room(&services.storage, room_id)? {
            shorts.push(record.short);
        }
    }
    let candidates: Vec<String> = if params.since.is_some() {
        // Few users change presence between two syncs; looking each of them up in the
        // user's rooms keeps a sync in a big room from reading its whole member list.
        let engine = services.storage.engine();
        let mut shared = Vec::new();
        for user in changed {
            for short in &shorts {
                if ROOM_MEMBERS_TABLE
                    .get(engine, &(*short, user.clone()))?
                    .is_some_and(|Json(record)| record.membership == "join")
                {
                    shared.push(user);
                    break;
                }
            }
        }
        shared
    } else {
        let mut sharing: HashSet<String> = HashSet::new();
        for short in shorts {
            sharing.extend(timeline::joined_members(&services.storage, short)?);
        }
        sharing.into_iter().collect()
    };
    let now = services.time.now_ms();
    for user in candidates {
        if !allows_kind(&params.filter.presence, "m.presence") {
            break;
        }
        let Some(Json(record)) = PRESENCE_TABLE.get_readable(services.storage.engine(), &user)?
        else {
            continue;
        };
        if record.position > upto {
            continue;
        }
        let mut content = json!({
            "presence": record.state,
            "last_active_ago": now.saturating_sub(record.last_active_ms),
            "currently_active": record.state == "online",
        });
        if let Some(message) = &record.status_msg {
            content["status_msg"] = json!(message);
        }
        response
            .presence
            .events
            .push(raw(&json!({ "type": "m.presence", "sender": user, "content": content }))?);
    }
    Ok(())
}
