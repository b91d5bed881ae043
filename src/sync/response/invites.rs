//! Invited and knocked rooms: the stripped state the invite or knock carries.

use ruma::{
    api::client::sync::sync_events::v3::{InvitedRoom, KnockState, KnockedRoom},
    events::AnyStrippedStateEvent,
    serde::Raw,
};

use super::{SyncContext, SyncView, render::raw};
use crate::{Result, rooms, storage::rooms::MembershipRecord};

/// Whether an invite came from someone the user ignores (such invites are not shown).
pub(crate) fn invited_by_ignored(view: &SyncView<'_>, record: &MembershipRecord) -> Result<bool> {
    if view.ignored.is_empty() {
        return Ok(false);
    }
    Ok(rooms::pdu_by_id(view.storage(), &record.event_id)?
        .is_some_and(|(_, pdu)| view.ignored.contains(pdu.sender.as_str())))
}

pub(super) fn invited(ctx: &SyncContext<'_>, record: &MembershipRecord) -> Result<InvitedRoom> {
    let mut invite = InvitedRoom::new();
    invite.invite_state.events = stripped_with_event(ctx, record)?;
    Ok(invite)
}

pub(super) fn knocked(ctx: &SyncContext<'_>, record: &MembershipRecord) -> Result<KnockedRoom> {
    let mut knock = KnockedRoom::new();
    let mut state = KnockState::new();
    state.events = stripped_with_event(ctx, record)?;
    knock.knock_state = state;
    Ok(knock)
}

/// The stripped state kept with the membership, then the membership event itself.
pub(crate) fn stripped_with_event(
    view: &SyncView<'_>,
    record: &MembershipRecord,
) -> Result<Vec<Raw<AnyStrippedStateEvent>>> {
    let mut events = record.stripped_state.iter().map(raw).collect::<Result<Vec<_>>>()?;
    if let Some((_, pdu)) = rooms::pdu_by_id(view.storage(), &record.event_id)? {
        events.push(raw(&pdu.stripped_json())?);
    }
    Ok(events)
}
