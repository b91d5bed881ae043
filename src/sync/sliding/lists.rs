//! The server's room list of one user, as sliding sync orders it, and the windows the
//! request's ranges cut from it.
//!
//! The list holds the rooms a user is in, is invited to or knocks on, rooms they were kicked
//! from, rooms they were banned from after being in them, and (once, to carry the leave) a
//! room they left themselves since the connection's last response if it had been sent. It is
//! ordered by activity, newest first: a joined room by its newest event, any other by the
//! membership event, read from the room activity index (`rooms::activity`). Ties go by room
//! id, so responses are stable.

use std::ops::RangeInclusive;

use ruma::{OwnedRoomId, UserId, events::room::member::MembershipState};

use super::state::ConnState;
use crate::{
    Result, rooms,
    storage::{Storage, rooms::MembershipRecord},
};

/// A room of the list.
#[derive(Clone, Debug)]
pub struct Entry {
    pub room: OwnedRoomId,
    pub membership: MembershipState,
    /// The position of the user's membership event.
    pub membership_position: u64,
    /// What the list is ordered by.
    pub activity: u64,
    /// The position of the room's newest bumping event at the response's bound (joined
    /// rooms; 0 otherwise).
    pub bump: u64,
}

impl Entry {
    /// The room's `bump_stamp`: for a joined room the position of its newest bumping event
    /// (`rooms::activity`; the join for a room without one), for any other room its
    /// membership event.
    pub fn bump_stamp(&self) -> u64 {
        match self.membership {
            MembershipState::Join if self.bump > 0 => self.bump,
            _ => self.membership_position,
        }
    }
}

/// Whether the user's own membership record puts the room in their list.
fn listed(
    storage: &Storage,
    user: &UserId,
    room: &OwnedRoomId,
    record: &MembershipRecord,
    state: &ConnState,
    ignored: &std::collections::HashSet<String>,
) -> Result<bool> {
    Ok(match record.membership {
        MembershipState::Join | MembershipState::Knock => true,
        MembershipState::Invite => !invited_by_ignored(storage, record, ignored)?,
        MembershipState::Leave if record.forgotten => false,
        MembershipState::Leave => {
            let by_self =
                membership_sender(storage, record)?.is_none_or(|sender| sender == user.as_str());
            // A kick stays listed; a room left by the user only carries its leave, once.
            !by_self || (record.position > state.since && state.rooms.contains_key(room))
        }
        MembershipState::Ban if record.forgotten => false,
        MembershipState::Ban => was_member_before(storage, user, record)?,
        _ => false,
    })
}

fn membership_sender(storage: &Storage, record: &MembershipRecord) -> Result<Option<String>> {
    Ok(rooms::pdu_by_id(storage, &record.event_id)?.map(|(_, pdu)| pdu.sender.to_string()))
}

fn invited_by_ignored(
    storage: &Storage,
    record: &MembershipRecord,
    ignored: &std::collections::HashSet<String>,
) -> Result<bool> {
    if ignored.is_empty() {
        return Ok(false);
    }
    Ok(membership_sender(storage, record)?.is_some_and(|sender| ignored.contains(&sender)))
}

/// Whether the user had joined the room when the ban came.
fn was_member_before(storage: &Storage, user: &UserId, record: &MembershipRecord) -> Result<bool> {
    let Some((short, _)) = rooms::pdu_by_id(storage, &record.event_id)? else {
        return Ok(false);
    };
    let Some(meta) = rooms::any_event_meta(storage.engine(), short)? else {
        return Ok(false);
    };
    Ok(rooms::state_fact(storage, meta.state_before, rooms::StateFact::Membership(user))?
        .is_some_and(|membership| membership == "join"))
}

/// The user's list at `upto`, newest first.
pub fn server_list(
    storage: &Storage,
    user: &UserId,
    state: &ConnState,
    upto: u64,
    ignored: &std::collections::HashSet<String>,
) -> Result<Vec<Entry>> {
    let memberships = rooms::cached_memberships(storage, user)?;
    let mut entries = Vec::with_capacity(memberships.len());
    for (room, record) in memberships.iter() {
        // A membership committed after `upto` belongs to the next response.
        if record.position > upto || !listed(storage, user, room, record, state, ignored)? {
            continue;
        }
        let (activity, bump) = match record.membership {
            MembershipState::Join => match rooms::room(storage, room)? {
                Some(known) => {
                    let activity = rooms::activity::at(storage, known.short, upto)?;
                    (activity.last.max(record.position), activity.bump)
                }
                None => continue,
            },
            _ => (record.position, 0),
        };
        entries.push(Entry {
            room: room.clone(),
            membership: record.membership.clone(),
            membership_position: record.position,
            activity,
            bump,
        });
    }
    entries.sort_by(|a, b| b.activity.cmp(&a.activity).then_with(|| a.room.cmp(&b.room)));
    Ok(entries)
}

/// The indices of a list of `count` entries that `ranges` (inclusive, merged) cover.
pub fn window(ranges: &[RangeInclusive<u64>], count: usize) -> impl Iterator<Item = usize> + '_ {
    let count = count as u64;
    ranges.iter().flat_map(move |range| {
        let end = range.end().saturating_add(1).min(count);
        (*range.start()..end).map(|index| index as usize)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_the_ranges_within_the_list() {
        let window =
            |ranges: &[RangeInclusive<u64>], count| window(ranges, count).collect::<Vec<_>>();
        assert_eq!(window(&[0..=2], 5), vec![0, 1, 2]);
        assert_eq!(window(&[0..=9], 3), vec![0, 1, 2]);
        assert_eq!(window(&[1..=1, 3..=u64::MAX], 5), vec![1, 3, 4]);
        assert_eq!(window(&[5..=9], 5), Vec::<usize>::new());
        assert_eq!(window(&[0..=0], 0), Vec::<usize>::new());
    }
}
