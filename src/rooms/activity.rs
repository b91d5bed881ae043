//! How recently each room was active: the stream positions of its newest event (`last`) and
//! of its newest event of a type that moves it up a client's room list (`bump`).
//!
//! Sliding sync orders a user's rooms by `last` and reports `bump` as `bump_stamp` on every
//! computation, so both are kept per room in `room_activity` instead of being found in the
//! timeline each time. The room actor writes the row in the same commit as the events
//! ([`Stamp`]), and readers get it through a coherent cache, so a reader that saw a commit's
//! position sees its activity. Rooms from before the table (no row yet) are worked out from
//! their timeline by a bounded scan, cached but not written; their next commit writes the row.

use std::{ops::ControlFlow, ops::Range, sync::Arc};

use ruma::events::TimelineEventType;

use crate::{
    Result, rooms,
    storage::{
        Batch, Direction, Storage,
        codec::Prefix,
        coherent_cache::Writing,
        rooms::{ROOM_ACTIVITY_TABLE, RoomActivity, TIMELINE_TABLE},
    },
};

/// The event types whose arrival moves a room's `bump`: what a person would call new in a
/// room. Synapse's set, plus the unstable poll and live-location types Element clients send.
pub const BUMP_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
    "org.matrix.msc3381.poll.start",
    "org.matrix.msc3672.beacon_info",
];

/// How many of a room's newest events the scan for a room without a row looks at for its
/// `bump`: past that the room has been quiet for long, and 0 (no bump) is close enough.
const FALLBACK_SCAN: usize = 1000;

/// How many events before a reader's bound are looked at when the room's `bump` lies past it.
const BOUNDED_SCAN: usize = 100;

/// Whether an event of `kind` bumps its room.
pub fn bumps(kind: &TimelineEventType) -> bool {
    BUMP_TYPES.contains(&kind.to_string().as_str())
}

/// The room's activity as last committed.
pub fn current(storage: &Storage, room: u64) -> Result<Arc<RoomActivity>> {
    storage.coherent().room_activity.get(&room, || {
        match ROOM_ACTIVITY_TABLE.get(storage.engine(), &room)? {
            Some(activity) => Ok(activity),
            None => Ok(RoomActivity {
                last: last_at(storage, room, u64::MAX)?,
                bump: bump_at(storage, room, u64::MAX, FALLBACK_SCAN)?,
            }),
        }
    })
}

/// The room's activity as a reader bound to `upto` sees it: a commit after `upto` (the
/// reader's committed position, or a sender's hold) is not shown, so a response never
/// names a position it does not cover.
pub fn at(storage: &Storage, room: u64, upto: u64) -> Result<RoomActivity> {
    let current = *current(storage, room)?;
    if current.last <= upto {
        return Ok(current);
    }
    let last = last_at(storage, room, upto)?;
    // A bump at or before `upto` is still the newest one there.
    let bump = if current.bump <= upto {
        current.bump
    } else {
        bump_at(storage, room, upto, BOUNDED_SCAN)?
    };
    Ok(RoomActivity { last, bump })
}

/// The position of the room's newest event at or before `upto` (0 for none).
fn last_at(storage: &Storage, room: u64, upto: u64) -> Result<u64> {
    let mut last = 0;
    TIMELINE_TABLE.scan_keys(
        storage.engine(),
        &Prefix::of(&room),
        Some(&(room, upto)),
        Direction::Reverse,
        |(_, position)| {
            last = position;
            ControlFlow::Break(())
        },
    )?;
    Ok(last)
}

/// The position of the newest bumping event among the room's `scan` newest at or before
/// `upto` (0 for none).
fn bump_at(storage: &Storage, room: u64, upto: u64, scan: usize) -> Result<u64> {
    let mut newest = Vec::with_capacity(scan.min(BOUNDED_SCAN));
    TIMELINE_TABLE.scan(
        storage.engine(),
        &Prefix::of(&room),
        Some(&(room, upto)),
        Direction::Reverse,
        |(_, position), short| {
            newest.push((position, short));
            if newest.len() == scan { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        },
    )?;
    for (position, short) in newest {
        if let Some(pdu) = rooms::shared_pdu(storage, short)?
            && bumps(&pdu.kind)
        {
            return Ok(position);
        }
    }
    Ok(0)
}

/// The activity row one commit of a room's actor writes: which of the commit's events bumps
/// last, known before the commit has its positions.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    room: u64,
    /// The index in the commit of its last bumping event.
    last_bump: Option<u64>,
    /// The room's `bump` before the commit.
    previous_bump: u64,
}

impl Stamp {
    /// The stamp of a commit of events of `kinds`, in commit order, to a room whose `bump`
    /// was `previous_bump`.
    pub fn new<'a>(
        room: u64,
        kinds: impl Iterator<Item = &'a TimelineEventType>,
        previous_bump: u64,
    ) -> Self {
        let last_bump =
            kinds.zip(0u64..).filter(|(kind, _)| bumps(kind)).map(|(_, index)| index).last();
        Self { room, last_bump, previous_bump }
    }

    /// The room's activity once the commit has `positions`.
    pub fn activity(&self, positions: &Range<u64>) -> RoomActivity {
        RoomActivity {
            last: positions.end.saturating_sub(1),
            bump: self.last_bump.map_or(self.previous_bump, |index| positions.start + index),
        }
    }

    /// Adds the row to the commit, inside the Writer's positioned closure.
    pub fn write(&self, batch: &mut Batch, positions: &Range<u64>) {
        ROOM_ACTIVITY_TABLE.put(batch, &self.room, &self.activity(positions));
    }
}

/// A room actor's commit under way: readers of the room's activity go to storage until it
/// ends, and [`Committing::committed`] leaves the new activity in the cache.
pub struct Committing<'a> {
    stamp: Stamp,
    writing: Writing<'a, u64, RoomActivity>,
}

impl Committing<'_> {
    /// The commit got `positions`: the room's activity now.
    pub fn committed(self, positions: &Range<u64>) -> RoomActivity {
        let activity = self.stamp.activity(positions);
        self.writing.committed(|_, _| activity);
        activity
    }
}

/// Begins a room actor's commit of events of `kinds` to `room`, whose `bump` was
/// `previous_bump`: the [`Stamp`] goes into the Writer's positioned closure, the
/// [`Committing`] is ended with the positions the commit got (or dropped if it failed).
pub fn begin<'a, 'k>(
    storage: &'a Storage,
    room: u64,
    kinds: impl Iterator<Item = &'k TimelineEventType>,
    previous_bump: u64,
) -> (Stamp, Committing<'a>) {
    let stamp = Stamp::new(room, kinds, previous_bump);
    let writing = storage.coherent().room_activity.begin(vec![room]);
    (stamp, Committing { stamp, writing })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_takes_the_last_bumping_event_of_the_commit() {
        let message = TimelineEventType::RoomMessage;
        let member = TimelineEventType::RoomMember;
        let reaction = TimelineEventType::Reaction;
        let poll = TimelineEventType::from("org.matrix.msc3381.poll.start");
        let stamp = Stamp::new(7, [&message, &member, &message, &reaction].into_iter(), 3);
        assert_eq!(stamp.activity(&(10..14)), RoomActivity { last: 13, bump: 12 });
        // Only a member change and a reaction: `last` moves, `bump` stays.
        let stamp = Stamp::new(7, [&member, &reaction].into_iter(), 3);
        assert_eq!(stamp.activity(&(20..22)), RoomActivity { last: 21, bump: 3 });
        // The unstable poll type Element sends bumps.
        let stamp = Stamp::new(7, [&poll].into_iter(), 3);
        assert_eq!(stamp.activity(&(30..31)), RoomActivity { last: 30, bump: 30 });
    }

    #[test]
    fn activity_rows_round_trip_in_sixteen_bytes() {
        use crate::storage::codec::Value;
        let activity = RoomActivity { last: 1 << 40, bump: 5 };
        let bytes = activity.encode_value();
        assert_eq!(bytes.len(), 16);
        assert_eq!(RoomActivity::decode_value(&bytes), Ok(activity));
        assert!(RoomActivity::decode_value(&bytes[..15]).is_err());
        assert!(RoomActivity::decode_value(&[0; 17]).is_err());
    }
}
