//! The newest timeline entries of the rooms written since the server started, kept by the
//! Writer so an incremental /sync finds a room's new events without opening an iterator.
//!
//! Opening a RocksDB iterator for one seek cost about a third of an incremental sync's
//! instructions (measured on the 100-member fanout). The Writer records every timeline row
//! of a group that committed *before* it publishes the group's position, so a reader that
//! took `committed_position` as its bound finds here every row up to that bound, for the
//! span each room's entries cover. Outside that span (older entries, a room not written
//! since the start or since the last clearing) the answer is "unknown" and the reader scans.

use std::{
    collections::{HashMap, VecDeque},
    sync::RwLock,
};

/// Entries kept per room: syncs further behind than this in one room scan instead.
const PER_ROOM: usize = 16;

/// Rooms kept (times the cache modifier); past this many all are forgotten at once (and
/// reads fall back to scans).
const ROOMS_LIMIT: usize = 16 * 1024;

struct Tail {
    /// Every entry of the room above this position is in `entries`.
    complete_after: u64,
    /// `(position, event short id)`, oldest first.
    entries: VecDeque<(u64, u64)>,
}

struct Inner {
    rooms: HashMap<u64, Tail>,
    /// Rooms not in `rooms` gained no entry above this position.
    floor: u64,
}

/// Per-room tails of the timeline table, exact within the span each covers.
pub struct RecentTimeline {
    inner: RwLock<Inner>,
    rooms_limit: usize,
}

impl RecentTimeline {
    /// Starts empty at `committed`: no room is known to have gained anything after it.
    pub(super) fn new(committed: u64, cache_modifier: f64) -> Self {
        Self {
            inner: RwLock::new(Inner { rooms: HashMap::new(), floor: committed }),
            rooms_limit: super::scaled(ROOMS_LIMIT, cache_modifier),
        }
    }

    /// Records the timeline rows `(room, position, short)` of a group that committed on top
    /// of position `before`; called by the Writer before it publishes the group.
    pub(super) fn record(&self, before: u64, rows: &mut [(u64, u64, u64)]) {
        if rows.is_empty() {
            return;
        }
        rows.sort_unstable_by_key(|&(_, position, _)| position);
        let mut inner = self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if inner.rooms.len() >= self.rooms_limit {
            inner.rooms.clear();
            inner.floor = before;
        }
        let floor = inner.floor;
        for &(room, position, short) in rows.iter() {
            let tail = inner
                .rooms
                .entry(room)
                .or_insert_with(|| Tail { complete_after: floor, entries: VecDeque::new() });
            tail.entries.push_back((position, short));
            if tail.entries.len() > PER_ROOM
                && let Some((dropped, _)) = tail.entries.pop_front()
            {
                tail.complete_after = dropped;
            }
        }
    }

    /// The short ids of `room`'s entries in `(lower, upto]`, newest first and at most `limit`
    /// of them, with whether older ones in the range were left out; `None` when the range
    /// reaches back past what is kept.
    pub fn between(
        &self,
        room: u64,
        lower: u64,
        upto: u64,
        limit: usize,
    ) -> Option<(Vec<u64>, bool)> {
        let inner = self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(tail) = inner.rooms.get(&room) else {
            return (lower >= inner.floor).then(|| (Vec::new(), false));
        };
        if lower < tail.complete_after {
            return None;
        }
        let mut found = Vec::new();
        for &(position, short) in tail.entries.iter().rev() {
            if position > upto {
                continue;
            }
            if position <= lower {
                break;
            }
            if found.len() == limit {
                return Some((found, true));
            }
            found.push(short);
        }
        Some((found, false))
    }

    /// Rooms with kept entries.
    pub fn rooms(&self) -> usize {
        self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner).rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_only_within_the_span_it_covers() {
        let recent = RecentTimeline::new(10, 1.0);
        // Nothing was written since position 10: a room's range above it is empty.
        assert_eq!(recent.between(1, 10, 20, 5), Some((vec![], false)));
        assert_eq!(recent.between(1, 9, 20, 5), None, "before the start is unknown");

        recent.record(10, &mut [(1, 12, 112), (1, 11, 111), (2, 13, 213)]);
        assert_eq!(recent.between(1, 10, 13, 5), Some((vec![112, 111], false)));
        assert_eq!(recent.between(1, 11, 13, 5), Some((vec![112], false)));
        assert_eq!(recent.between(1, 10, 11, 5), Some((vec![111], false)), "bounded by upto");
        assert_eq!(recent.between(1, 10, 13, 1), Some((vec![112], true)), "limited");
        assert_eq!(recent.between(2, 12, 13, 5), Some((vec![213], false)));
        assert_eq!(recent.between(1, 9, 13, 5), None);
    }

    #[test]
    fn a_full_tail_forgets_its_oldest_entries() {
        let recent = RecentTimeline::new(0, 1.0);
        let mut rows: Vec<_> = (1..=PER_ROOM as u64 + 2).map(|p| (7, p, 100 + p)).collect();
        recent.record(0, &mut rows);
        assert_eq!(recent.between(7, 1, 100, 100), None, "entry 2 was dropped");
        let (newest, more) = recent.between(7, 2, 100, 100).expect("covered");
        assert_eq!(newest.len(), PER_ROOM);
        assert!(!more);
    }

    #[test]
    fn clearing_moves_the_floor() {
        let recent = RecentTimeline::new(0, 1.0);
        for room in 0..ROOMS_LIMIT as u64 {
            recent.record(room, &mut [(room, room + 1, room)]);
        }
        let last = ROOMS_LIMIT as u64;
        recent.record(last, &mut [(last, last + 1, 0)]);
        assert_eq!(recent.rooms(), 1);
        // Room 3's entry at 4 was forgotten: it is unknown below the new floor.
        assert_eq!(recent.between(3, 0, last + 1, 5), None);
        assert_eq!(recent.between(3, last, last + 1, 5), Some((vec![], false)));
    }
}
