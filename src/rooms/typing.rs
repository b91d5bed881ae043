//! Who is typing in which room. Held in memory (typing is ephemeral), changed only by the
//! room's actor, read by /sync. Each change takes a number from one counter, which sync
//! tokens carry to know what a client has seen.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering},
    time::Instant,
};

use dashmap::DashMap;
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

#[derive(Default)]
pub struct Typing {
    rooms: DashMap<OwnedRoomId, RoomTyping>,
    counter: AtomicU64,
}

#[derive(Default, Clone)]
struct RoomTyping {
    users: BTreeMap<OwnedUserId, Instant>,
    version: u64,
}

impl Typing {
    /// The latest change number.
    pub fn counter(&self) -> u64 {
        self.counter.load(Ordering::Acquire)
    }

    /// Starts (`Some(until)`) or stops typing; returns whether anything changed.
    pub fn set(&self, room: &RoomId, user: &UserId, until: Option<Instant>) -> bool {
        let mut entry = self.rooms.entry(room.to_owned()).or_default();
        let changed = match until {
            Some(until) => entry.users.insert(user.to_owned(), until).is_none(),
            None => entry.users.remove(user).is_some(),
        };
        // Extending a notification changes nothing clients see.
        if changed {
            entry.version = self.counter.fetch_add(1, Ordering::AcqRel) + 1;
        }
        changed
    }

    /// Stops `user` if their notification has run out; returns whether it did.
    pub fn expire(&self, room: &RoomId, user: &UserId, now: Instant) -> bool {
        let expired = self
            .rooms
            .get(room)
            .and_then(|entry| entry.users.get(user).copied())
            .is_some_and(|until| until <= now);
        expired && self.set(room, user, None)
    }

    /// Stops everyone typing in `room` (its actor failed, and with it the timers that would
    /// have expired them); returns whether anyone was.
    pub fn clear(&self, room: &RoomId) -> bool {
        let Some(mut entry) = self.rooms.get_mut(room) else {
            return false;
        };
        if entry.users.is_empty() {
            return false;
        }
        entry.users.clear();
        entry.version = self.counter.fetch_add(1, Ordering::AcqRel) + 1;
        true
    }

    /// Whether anyone is typing in `room` (its actor must stay alive to expire them).
    pub fn anyone(&self, room: &RoomId) -> bool {
        self.rooms.get(room).is_some_and(|entry| !entry.users.is_empty())
    }

    /// The users typing in `room` and the change number of that list, if it ever changed.
    pub fn get(&self, room: &RoomId) -> Option<(Vec<OwnedUserId>, u64)> {
        self.rooms.get(room).map(|entry| (entry.users.keys().cloned().collect(), entry.version))
    }
}
