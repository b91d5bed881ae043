//! Which servers receive what: the other servers of a room (those with a member joined), and
//! the other servers sharing a room with a user.
//!
//! Every fanned-out event and EDU asks this, so each room's set is kept in memory once read
//! from the membership index. Only a membership event can change it, and every membership
//! event of a room with another server's member (or of another server's user) leaves a
//! row in the outbox (the event itself when it is this server's or relayed, else
//! `MembersChanged`), where the fan-out drops the room's entry ([`RoomServers::forget`]).
//! A room with no other server caches an empty set, so a local-only room costs one lookup.

use std::{
    collections::{BTreeSet, HashMap},
    ops::ControlFlow,
    sync::{Arc, Mutex},
};

use ruma::{OwnedRoomId, OwnedServerName, RoomId, UserId};

use crate::{
    Result, rooms,
    storage::{
        Direction, Storage,
        codec::{Json, prefix},
        rooms::ROOM_MEMBERS_TABLE,
    },
};

/// Rooms whose server sets are kept; past this the map starts over.
const MAX_ROOMS: usize = 50_000;

/// The other servers of rooms, cached.
pub struct RoomServers {
    own: OwnedServerName,
    rooms: Mutex<HashMap<OwnedRoomId, Arc<BTreeSet<OwnedServerName>>>>,
}

impl RoomServers {
    pub fn new(own: OwnedServerName) -> Self {
        Self { own, rooms: Mutex::new(HashMap::new()) }
    }

    /// The other servers with a member joined to `room` (empty for an unknown room).
    pub fn of_room(
        &self,
        storage: &Storage,
        room: &RoomId,
    ) -> Result<Arc<BTreeSet<OwnedServerName>>> {
        if let Some(servers) = self.lock().get(room) {
            return Ok(Arc::clone(servers));
        }
        let servers = Arc::new(remote_servers(storage, room, &self.own)?);
        let mut cached = self.lock();
        if cached.len() >= MAX_ROOMS {
            cached.clear();
        }
        cached.insert(room.to_owned(), Arc::clone(&servers));
        Ok(servers)
    }

    /// The other servers sharing a joined room with `user`.
    pub fn of_user(&self, storage: &Storage, user: &UserId) -> Result<BTreeSet<OwnedServerName>> {
        let mut servers = BTreeSet::new();
        for room in rooms::joined_rooms(storage.engine(), user)? {
            servers.extend(self.of_room(storage, &room)?.iter().cloned());
        }
        Ok(servers)
    }

    /// Drops what is known of `room` (a membership in it changed).
    pub fn forget(&self, room: &RoomId) {
        self.lock().remove(room);
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<OwnedRoomId, Arc<BTreeSet<OwnedServerName>>>> {
        self.rooms.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The servers other than `own` with a member joined to `room`, read from the membership
/// index.
pub fn remote_servers(
    storage: &Storage,
    room: &RoomId,
    own: &ruma::ServerName,
) -> Result<BTreeSet<OwnedServerName>> {
    let mut servers = BTreeSet::new();
    let Some(record) = rooms::room(storage, room)? else {
        return Ok(servers);
    };
    ROOM_MEMBERS_TABLE.scan(
        storage.engine(),
        &prefix(&record.short),
        None,
        Direction::Forward,
        |(_, user), Json(member)| {
            if member.membership == ruma::events::room::member::MembershipState::Join
                && let Ok(user) = UserId::parse(&user)
                && user.server_name() != own
            {
                servers.insert(user.server_name().to_owned());
            }
            ControlFlow::Continue(())
        },
    )?;
    Ok(servers)
}
