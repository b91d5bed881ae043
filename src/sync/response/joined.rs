//! A joined room's section: timeline, state, ephemeral events, account data, summary and
//! unread counts.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use ruma::events::room::member::MembershipState;
use ruma::{
    OwnedRoomId, OwnedUserId, RoomId, UInt, UserId,
    api::client::sync::sync_events::{
        UnreadNotificationsCount,
        v3::{Ephemeral, JoinedRoom, State, StateEvents, Timeline},
    },
    serde::Raw,
};
use serde_json::Value as JsonValue;

use super::{
    SyncContext, SyncView, account_data, ephemeral,
    render::{allowed_types, lazy, raw, sync_event},
    summary::summary,
    timeline::{TimelinePart, limit, snapshot_at, timeline_part},
};
use crate::{
    Result,
    push::counts as push_counts,
    rooms::{
        self, filter,
        state::{self, StateMap},
        timeline::{Token, Viewer},
    },
    storage::push::ThreadCounts,
};

/// The section of a joined room, or `None` when it has nothing to show. `full` asks for the
/// whole state (a new room, an initial or a full-state sync); the room's timeline adds its
/// membership changes to `membership_changes` (device lists need them).
pub(super) fn joined_room(
    ctx: &SyncContext<'_>,
    room_id: &RoomId,
    full: bool,
    account_changes: Option<&Vec<JsonValue>>,
    membership_changes: &mut HashMap<OwnedRoomId, Vec<(String, String)>>,
) -> Result<Option<JoinedRoom>> {
    let Some(record) = rooms::room(ctx.storage(), room_id)? else {
        return Ok(None);
    };
    let params = ctx.params;
    let full = full || params.full_state;
    let room_filter = &params.filter.room;
    let mut viewer = Viewer::known(
        ctx.storage(),
        ctx.user,
        Some(MembershipState::Join),
        Arc::clone(&ctx.ignored),
    );
    let part = timeline_part(
        ctx,
        record.short,
        (ctx.since, ctx.upto),
        limit(params.filter),
        &room_filter.timeline,
        &mut viewer,
    )?;
    if !ctx.initial
        && let Some(changes) = &part.membership_changes
    {
        membership_changes.insert(room_id.to_owned(), changes.clone());
    }

    let start_snapshot = match part.events.first() {
        Some((_, meta)) => meta.state_before,
        None => snapshot_at(ctx, record.short, ctx.upto)?,
    };
    let prev_batch = part
        .events
        .first()
        .map_or(Token(ctx.upto), |(_, meta)| Token(meta.position.saturating_sub(1)));

    let state_events = state_section(ctx, record.short, full, &part, start_snapshot)?;

    let mut timeline_events = Vec::with_capacity(part.events.len());
    for (pdu, meta) in &part.events {
        timeline_events.push(raw(&sync_event(ctx, pdu, meta)?)?);
    }

    let ephemeral = allowed_types(
        room_filter.ephemeral.types.as_deref(),
        &room_filter.ephemeral.not_types,
        ephemeral::events(ctx, room_id, record.short, full)?,
    );

    let room_account = if full {
        account_data::all(ctx, room_id.as_str())?
    } else {
        account_changes.cloned().unwrap_or_default()
    };
    let room_account = allowed_types(
        room_filter.account_data.types.as_deref(),
        &room_filter.account_data.not_types,
        room_account,
    );

    // Unread notification counts; a change on its own is news too.
    let (counts, changed) = counts(ctx, record.short)?;
    let counts_changed = !ctx.initial && changed;

    if !full
        && timeline_events.is_empty()
        && state_events.is_empty()
        && ephemeral.is_empty()
        && room_account.is_empty()
        && !counts_changed
    {
        return Ok(None);
    }

    let mut joined = JoinedRoom::new();
    let membership_changed = full
        || part.events.iter().any(|(pdu, _)| pdu.kind.to_string() == "m.room.member")
        || !state_events.is_empty();
    if membership_changed {
        joined.summary = summary(ctx, record.short)?;
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
    unread_counts(ctx, &counts, &mut joined);
    Ok(Some(joined))
}

/// State: everything at the timeline's start for new rooms and full syncs, the changes
/// since the token for gappy timelines, nothing otherwise (the timeline carries it).
fn state_section(
    ctx: &SyncContext<'_>,
    room: u64,
    full: bool,
    part: &TimelinePart,
    start_snapshot: u64,
) -> Result<Vec<Raw<ruma::events::AnySyncStateEvent>>> {
    let room_filter = &ctx.params.filter.room;
    let storage = ctx.storage();
    let mut state_events = Vec::new();
    if full || part.limited {
        let start = state::load(storage, start_snapshot)?;
        let before: StateMap = if full {
            StateMap::new()
        } else {
            state::load(storage, snapshot_at(ctx, room, ctx.since)?)?
        };
        let lazy_members: Option<BTreeSet<OwnedUserId>> = lazy(&room_filter.state).then(|| {
            let mut senders: BTreeSet<OwnedUserId> =
                part.events.iter().map(|(pdu, _)| pdu.sender.clone()).collect();
            senders.insert(ctx.user.to_owned());
            senders
        });
        let timeline_ids: HashSet<&ruma::EventId> =
            part.events.iter().map(|(pdu, _)| &*pdu.event_id).collect();
        for (key, short) in &start {
            if before.get(key) == Some(short) {
                continue;
            }
            let (Some(pdu), Some(meta)) = (
                rooms::readable_pdu(storage.engine(), *short)?,
                rooms::readable_event_meta(storage.engine(), *short)?,
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
            state_events.push(raw(&sync_event(ctx, &pdu, &meta)?)?);
        }
    }

    // Lazy loading without a gap: the timeline's senders still need their member events
    // (sent again if the client had them: harmless, and no per-device record is needed).
    if lazy(&room_filter.state) && !full && !part.limited && !part.events.is_empty() {
        let timeline_ids: HashSet<&ruma::EventId> =
            part.events.iter().map(|(pdu, _)| &*pdu.event_id).collect();
        let senders: BTreeSet<&UserId> = part.events.iter().map(|(pdu, _)| &*pdu.sender).collect();
        for sender in senders {
            let Some(member) =
                rooms::state_event(storage, start_snapshot, "m.room.member", sender.as_str())?
            else {
                continue;
            };
            if timeline_ids.contains(&*member.event_id) {
                continue;
            }
            let Some((short, _)) = rooms::pdu_by_id(storage, &member.event_id)? else {
                continue;
            };
            if let Some(meta) = rooms::readable_event_meta(storage.engine(), short)? {
                state_events.push(raw(&sync_event(ctx, &member, &meta)?)?);
            }
        }
    }
    Ok(state_events)
}

/// The user's unread counts in a room by thread, and whether any changed in the view's
/// range (a change on its own is news).
pub(crate) fn counts(view: &SyncView<'_>, room: u64) -> Result<(Arc<ThreadCounts>, bool)> {
    let counts = push_counts::cached_room_counts(view.storage(), view.user, room)?;
    let changed =
        counts.values().any(|counts| counts.position > view.since && counts.position <= view.upto);
    Ok((counts, changed))
}

/// The room's unread notification counts, per thread when the filter asks for that.
fn unread_counts(ctx: &SyncContext<'_>, counts: &ThreadCounts, joined: &mut JoinedRoom) {
    let count = |notifications: u64, highlights: u64| {
        let mut count = UnreadNotificationsCount::new();
        count.notification_count = Some(UInt::new_saturating(notifications));
        count.highlight_count = Some(UInt::new_saturating(highlights));
        count
    };
    if ctx.params.filter.room.timeline.unread_thread_notifications {
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
}
