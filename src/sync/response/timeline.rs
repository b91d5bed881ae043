//! The timeline of one room in a range of stream positions, as a sync shows it.

use std::{ops::ControlFlow, sync::Arc};

use ruma::{
    api::client::filter::{FilterDefinition, RoomEventFilter},
    events::TimelineEventType,
};

use super::SyncView;
use crate::{
    Result,
    rooms::{self, Pdu, filter, state, timeline::Viewer},
    storage::{
        Direction,
        codec::Prefix,
        rooms::{EventMeta, TIMELINE_TABLE},
    },
};

/// Default number of timeline events per room.
const DEFAULT_TIMELINE_LIMIT: usize = 10;
/// Most timeline events per room whatever the client asks.
pub(crate) const MAX_TIMELINE_LIMIT: usize = 100;

/// The timeline events per room the filter asks for, within our bounds.
pub(super) fn limit(filter: &FilterDefinition) -> usize {
    filter
        .room
        .timeline
        .limit
        .and_then(|limit| usize::try_from(limit).ok())
        .unwrap_or(DEFAULT_TIMELINE_LIMIT)
        .clamp(1, MAX_TIMELINE_LIMIT)
}

/// The state after the last event at or before `position` in a room.
pub(crate) fn snapshot_at(view: &SyncView<'_>, room: u64, position: u64) -> Result<u64> {
    let mut found = None;
    TIMELINE_TABLE.scan(
        view.storage().engine(),
        &Prefix::of(&room),
        Some(&(room, position)),
        Direction::Reverse,
        |_, short| {
            found = Some(short);
            ControlFlow::Break(())
        },
    )?;
    match found {
        Some(short) => Ok(rooms::event_meta(view.storage().engine(), short)?
            .map_or(state::EMPTY, |meta| meta.state_after)),
        None => Ok(state::EMPTY),
    }
}

/// Timeline events of a room in `(lower, upto]` visible to the viewer, newest `limit`.
pub(crate) struct TimelinePart {
    pub(crate) events: Vec<(Arc<Pdu>, EventMeta)>,
    pub(crate) limited: bool,
    /// Every membership change in `(lower, upto]` as `(user, membership)`, when the part
    /// examined every event of that range (device list tracking needs them all).
    pub(crate) membership_changes: Option<Vec<(String, String)>>,
}

/// The short ids of a room's events in `(lower, upto]`, newest first, at most `scan_limit`
/// of them; true when older ones in the range were left out.
fn timeline_candidates(
    view: &SyncView<'_>,
    room: u64,
    lower: u64,
    upto: u64,
    scan_limit: usize,
) -> Result<(Vec<u64>, bool)> {
    let storage = view.storage();
    let scan = |from: (u64, u64), direction, in_range: &dyn Fn(u64) -> bool| {
        let mut candidates = Vec::new();
        let mut more = false;
        TIMELINE_TABLE
            .scan(
                storage.engine(),
                &Prefix::of(&room),
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
            storage.writer().recent_timeline().between(room, lower, upto, scan_limit)
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

/// The newest `limit` events of a room in `(lower, upto]` that the filter lets through and
/// the viewer may see; `limited` when older ones in the range were left out.
pub(crate) fn timeline_part(
    view: &SyncView<'_>,
    room: u64,
    (lower, upto): (u64, u64),
    limit: usize,
    filter: &RoomEventFilter,
    viewer: &mut Viewer<'_>,
) -> Result<TimelinePart> {
    let scan_limit = limit.saturating_mul(20).saturating_add(100);
    let (candidates, more) = timeline_candidates(view, room, lower, upto, scan_limit)?;
    let mut events = Vec::new();
    let mut limited = more;
    let mut membership_changes = (!more).then(Vec::new);
    for short in candidates {
        let (Some(pdu), Some(meta)) = (
            rooms::shared_pdu(view.storage(), short)?,
            rooms::readable_event_meta(view.storage().engine(), short)?,
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
