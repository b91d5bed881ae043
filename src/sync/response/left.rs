//! A room the user left (or was banned from): its timeline up to the leave.

use ruma::{
    RoomId,
    api::client::sync::sync_events::v3::{LeftRoom, Timeline},
};

use super::{
    SyncContext,
    render::{raw, sync_event},
    timeline::{limit, timeline_part},
};
use crate::{
    Result,
    rooms::{self, timeline::Token, timeline::Viewer},
    storage::rooms::MembershipRecord,
};

/// A room the user left: the timeline up to and including their leave.
pub(super) fn left_room(
    ctx: &SyncContext<'_>,
    room_id: &RoomId,
    record: &MembershipRecord,
) -> Result<LeftRoom> {
    let mut left = LeftRoom::new();
    let Some(room) = rooms::room(ctx.storage(), room_id)? else {
        return Ok(left);
    };
    let mut viewer = Viewer::new(ctx.storage(), room_id, ctx.user)?;
    let part = timeline_part(
        ctx,
        room.short,
        (ctx.since, record.position),
        limit(ctx.params.filter),
        &ctx.params.filter.room.timeline,
        &mut viewer,
    )?;
    let mut timeline = Timeline::new();
    timeline.limited = part.limited;
    timeline.prev_batch =
        part.events.first().map(|(_, meta)| Token(meta.position.saturating_sub(1)).to_string());
    for (pdu, meta) in &part.events {
        timeline.events.push(raw(&sync_event(ctx, pdu, meta)?)?);
    }
    left.timeline = timeline;
    Ok(left)
}
