//! Simplified sliding sync (MSC4186), the sync Element X speaks: the domain side.
//!
//! A client keeps a connection ([`connections`]) and sends, with each request, the lists it
//! wants (ranges of the user's rooms ordered by activity, [`lists`]), the rooms it subscribes
//! to and the extensions it enables; [`request`] checks all of it, and [`required_state`]
//! says which state events a room's config asks for. What a connection has sent is its
//! [`state`]; [`room`] builds one room's result against it.
//!
//! [`compute`] answers with what changed since what the connection has sent, and the delta to
//! record if the client confirms the response. It reads through the same [`SyncReader`] as
//! `/sync`, up to the position the user may see (`SyncHub::visible_to`), so a sender sees
//! their own event only after their send was answered.

pub mod connections;
pub mod lists;
pub mod request;
pub mod required_state;
pub mod room;
pub mod state;

use std::collections::{BTreeMap, HashMap, HashSet};

use ruma::{OwnedRoomId, UInt, api::client::sync::sync_events::v5};

use self::{
    request::{Request, RoomConfig},
    state::{ConnState, Delta, RoomEntry, RoomStatus},
};
use super::response::{SyncReader, SyncView};
use crate::{Result, accounts::Sender, rooms, storage::rooms::MembershipRecord};

/// A computed response, what to record once the client confirms it, and whether it carries
/// anything new.
pub struct Computed {
    pub response: v5::Response,
    pub delta: Delta,
    pub has_news: bool,
}

/// At most this many rooms per response: the rest follow at once in the next one.
const MAX_ROOMS: usize = 500;
/// At most about this many timeline events per response (a room is never cut).
const MAX_EVENTS: usize = 10_000;

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
    let view = SyncView::new(reader, sender, state.since, upto)?;
    let list = lists::server_list(storage, user, state, upto, &view.ignored)?;

    let mut response = v5::Response::new(String::new());
    let mut has_news = state.is_new();
    let mut list_counts = BTreeMap::new();
    // The rooms in a window or subscribed, in list order, with their combined config.
    let mut shown: Vec<(&lists::Entry, RoomConfig)> = Vec::new();
    let mut shown_at: HashMap<&OwnedRoomId, usize> = HashMap::new();
    for (name, wanted) in &request.lists {
        let count = list.len();
        let mut counted = v5::response::List::default();
        counted.count = UInt::new_saturating(count as u64);
        response.lists.insert(name.clone(), counted);
        has_news |= state.list_counts.get(name) != Some(&(count as u64));
        list_counts.insert(name.clone(), count as u64);
        for index in lists::window(&wanted.ranges, count) {
            shown_in(&mut shown, &mut shown_at, &list[index], &wanted.config);
        }
    }
    let by_room: HashMap<&OwnedRoomId, &lists::Entry> =
        list.iter().map(|entry| (&entry.room, entry)).collect();
    // A subscription to a room without a membership record is ignored: whether such a room
    // exists is not the user's to learn.
    for (room, config) in &request.subscriptions {
        if let Some(entry) = by_room.get(room) {
            shown_in(&mut shown, &mut shown_at, entry, config);
        }
    }

    let memberships = rooms::cached_memberships(storage, user)?;
    let records: HashMap<&OwnedRoomId, &MembershipRecord> =
        memberships.iter().map(|(room, record)| (room, record)).collect();
    let direct = room::direct_rooms(&view)?;
    let mut delta = Delta { since: upto, rooms: Vec::new(), list_counts: Some(list_counts) };
    let mut sent_now: HashSet<&OwnedRoomId> = HashSet::new();
    let (mut rooms_sent, mut events_sent) = (0usize, 0usize);
    for (entry, config) in &shown {
        let Some(record) = records.get(&entry.room) else {
            continue;
        };
        let input = room::Input {
            entry,
            record,
            sent: state.rooms.get(&entry.room),
            config,
            is_dm: direct.contains(&entry.room),
        };
        if !room::has_changes(&view, &input)? {
            continue;
        }
        // The budget: the rooms left over follow in the next response, which answers at
        // once because they still have changes.
        if rooms_sent >= MAX_ROOMS || events_sent >= MAX_EVENTS {
            break;
        }
        let built = room::build(&view, &input)?;
        rooms_sent += 1;
        events_sent += built.events;
        response.rooms.insert(entry.room.clone(), built.room);
        delta.rooms.push((entry.room.clone(), built.entry));
        sent_now.insert(&entry.room);
        has_news = true;
    }
    // A room the connection has that was not sent now while it had updates (it left every
    // window, or the budget ran out) owes the client those updates when it is next sent.
    for (room, sent) in state.rooms.iter() {
        if sent.status == RoomStatus::Live
            && !sent_now.contains(room)
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

/// Adds a room to the shown ones, or widens its config if it is there already.
fn shown_in<'a>(
    shown: &mut Vec<(&'a lists::Entry, RoomConfig)>,
    shown_at: &mut HashMap<&'a OwnedRoomId, usize>,
    entry: &'a lists::Entry,
    config: &RoomConfig,
) {
    match shown_at.get(&entry.room) {
        Some(&index) => shown[index].1 = shown[index].1.combine(config),
        None => {
            shown_at.insert(&entry.room, shown.len());
            shown.push((entry, config.clone()));
        }
    }
}
