//! Simplified sliding sync (MSC4186), the sync Element X speaks: the domain side.
//!
//! A client keeps a connection ([`connections`]) and sends, with each request, the lists it
//! wants (ranges of the user's rooms ordered by activity), the rooms it subscribes to and the
//! extensions it enables; [`request`] checks all of it, and [`required_state`] says which
//! state events a room's config asks for. What a connection has sent is its [`state`].
//!
//! [`compute`] answers with what changed since what the connection has sent, and the delta to
//! record if the client confirms the response. It reads through the same [`SyncReader`] as
//! `/sync`, up to the position the user may see (`SyncHub::visible_to`), so a sender sees
//! their own event only after their send was answered.

pub mod connections;
pub mod lists;
pub mod request;
pub mod required_state;
pub mod state;

use std::collections::{BTreeMap, HashMap};

use ruma::{OwnedRoomId, UInt, api::client::sync::sync_events::v5};

use self::{
    request::Request,
    state::{ConnState, Delta, RoomEntry, RoomStatus},
};
use super::response::SyncReader;
use crate::{Result, accounts::Sender, rooms};

/// A computed response, what to record once the client confirms it, and whether it carries
/// anything new.
pub struct Computed {
    pub response: v5::Response,
    pub delta: Delta,
    pub has_news: bool,
}

/// Computes the response to `request` on a connection that has sent `state`.
pub fn compute(
    reader: &SyncReader<'_>,
    request: &Request,
    state: &ConnState,
    sender: &Sender,
) -> Result<Computed> {
    let user = &sender.user_id;
    let storage = reader.storage;
    // Not past the user's own unanswered sends (see `SyncHub::hold`).
    let upto = reader.hub.visible_to(user, storage.writer().committed_position()).max(state.since);
    let ignored = rooms::timeline::ignored_users(storage, user)?;
    let list = lists::server_list(storage, user, state, upto, &ignored)?;

    let mut response = v5::Response::new(String::new());
    let mut has_news = state.is_new();
    let mut list_counts = BTreeMap::new();
    // The rooms in a window or subscribed, with their list entry.
    let mut shown: BTreeMap<OwnedRoomId, &lists::Entry> = BTreeMap::new();
    for (name, wanted) in &request.lists {
        let count = list.len();
        let mut counted = v5::response::List::default();
        counted.count = UInt::new_saturating(count as u64);
        response.lists.insert(name.clone(), counted);
        has_news |= state.list_counts.get(name) != Some(&(count as u64));
        list_counts.insert(name.clone(), count as u64);
        for index in lists::window(&wanted.ranges, count) {
            shown.insert(list[index].room.clone(), &list[index]);
        }
    }
    let by_room: HashMap<&OwnedRoomId, &lists::Entry> =
        list.iter().map(|entry| (&entry.room, entry)).collect();
    // A subscription to a room without a membership record is ignored: whether such a room
    // exists is not the user's to learn.
    for room in request.subscriptions.keys() {
        if let Some(entry) = by_room.get(room) {
            shown.insert(room.clone(), *entry);
        }
    }

    let mut delta = Delta { since: upto, rooms: Vec::new(), list_counts: Some(list_counts) };
    for (room, entry) in &shown {
        let sent = state.rooms.get(room);
        let send = match sent {
            None | Some(RoomEntry { status: RoomStatus::Previously(_), .. }) => true,
            Some(RoomEntry { status: RoomStatus::Live, .. }) => entry.activity > state.since,
        };
        if !send {
            continue;
        }
        let bump_stamp = entry.bump_stamp();
        let mut result = v5::response::Room::default();
        if sent.is_none() {
            result.initial = Some(true);
        }
        if sent.is_none_or(|sent| sent.bump_stamp != bump_stamp) {
            result.bump_stamp = Some(UInt::new_saturating(bump_stamp));
        }
        response.rooms.insert(room.clone(), result);
        delta.rooms.push((room.clone(), RoomEntry { status: RoomStatus::Live, bump_stamp }));
        has_news = true;
    }
    // A room that left every window while it had updates owes the client those updates when
    // it comes back.
    for (room, sent) in state.rooms.iter() {
        if sent.status == RoomStatus::Live
            && !shown.contains_key(room)
            && by_room.get(room).is_some_and(|entry| entry.activity > state.since)
        {
            delta.rooms.push((
                room.clone(),
                RoomEntry { status: RoomStatus::Previously(state.since), ..sent.clone() },
            ));
        }
    }
    Ok(Computed { response, delta, has_news })
}
