//! A joined room's summary: member counts and heroes.

use std::ops::ControlFlow;

use ruma::events::room::member::MembershipState;
use ruma::{UInt, UserId, api::client::sync::sync_events::v3::RoomSummary};

use super::SyncView;
use crate::{
    Result,
    storage::{
        Direction,
        codec::{Json, Prefix},
        rooms::ROOM_MEMBERS_TABLE,
    },
};

/// Heroes listed in a room summary.
const HEROES: usize = 5;

/// Member counts and up to five heroes (other members, for rooms without a name).
pub(crate) fn summary(view: &SyncView<'_>, room: u64) -> Result<RoomSummary> {
    let mut joined = 0u64;
    let mut invited = 0u64;
    let mut heroes = Vec::new();
    ROOM_MEMBERS_TABLE.scan(
        view.storage().engine(),
        &Prefix::of(&room),
        None,
        Direction::Forward,
        |(_, member), Json(record)| {
            match record.membership {
                MembershipState::Join => joined += 1,
                MembershipState::Invite => invited += 1,
                _ => return ControlFlow::Continue(()),
            }
            if heroes.len() < HEROES
                && member != view.user.as_str()
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
