//! One room's result in a sliding sync response: its timeline since what the connection has
//! of it, its name, avatar and heroes, member and unread counts, `bump_stamp`, whether it is
//! a DM, and for invites and knocks the stripped state that came with them.
//!
//! A room new to the connection gets everything (`initial`); a room the connection has gets
//! what changed since it was last sent: the events after that, and the metadata whose state
//! changed. A bigger `timeline_limit` than last sent sends the latest events again
//! (`limited`), so the client can fill its timeline.

use std::collections::HashSet;

use ruma::{
    OwnedMxcUri, OwnedRoomId, OwnedUserId, RoomId, UInt,
    api::client::{filter::RoomEventFilter, sync::sync_events::v5},
    events::room::member::MembershipState,
};

use super::{
    lists::Entry,
    request::RoomConfig,
    state::{RoomEntry, RoomStatus},
};
use crate::{
    Result,
    rooms::{
        self, state,
        timeline::{Token, Viewer},
    },
    storage::{account_data::ACCOUNT_DATA_TABLE, codec::Json, rooms::MembershipRecord},
    sync::response::{
        SyncView, invites, render,
        summary::summary,
        timeline::{snapshot_at, timeline_part},
    },
};

/// The rooms of the user's `m.direct` account data: their DMs.
pub fn direct_rooms(view: &SyncView<'_>) -> Result<HashSet<OwnedRoomId>> {
    let key = (view.user.to_owned(), String::new(), "m.direct".to_owned());
    let Some(Json(record)) = ACCOUNT_DATA_TABLE.get(view.storage().engine(), &key)? else {
        return Ok(HashSet::new());
    };
    Ok(record
        .content
        .as_object()
        .into_iter()
        .flat_map(|by_user| by_user.values())
        .filter_map(|rooms| rooms.as_array())
        .flatten()
        .filter_map(|room| room.as_str().and_then(|room| RoomId::parse(room).ok()))
        .collect())
}

/// What a room's result is built from.
pub struct Input<'a> {
    pub entry: &'a Entry,
    /// The user's membership record of the room.
    pub record: &'a MembershipRecord,
    /// What the connection sent of the room (`None`: never).
    pub sent: Option<&'a RoomEntry>,
    pub config: &'a RoomConfig,
    pub is_dm: bool,
}

/// A room's result, the entry to record for it, and how many events it carries.
pub struct Built {
    pub room: v5::response::Room,
    pub entry: RoomEntry,
    pub events: usize,
}

/// Whether a room the connection has must be sent again, apart from new events.
pub fn has_changes(view: &SyncView<'_>, input: &Input<'_>) -> Result<bool> {
    let Some(sent) = input.sent else {
        return Ok(true);
    };
    if matches!(sent.status, RoomStatus::Previously(_))
        || input.entry.activity > view.since
        || sent.is_dm != input.is_dm
        || input.config.timeline_limit > sent.timeline_limit
    {
        return Ok(true);
    }
    if input.entry.membership != MembershipState::Join {
        return Ok(false);
    }
    // A receipt lowers the counts without an event.
    let Some(known) = rooms::room(view.storage(), &input.entry.room)? else {
        return Ok(false);
    };
    Ok(crate::sync::response::joined::counts(view, known.short)?.1)
}

/// Builds the room's result.
pub fn build(view: &SyncView<'_>, input: &Input<'_>) -> Result<Built> {
    let Input { entry, record, sent, config, is_dm } = *input;
    let mut room = v5::response::Room::new();
    let bump_stamp = entry.bump_stamp();
    let mut recorded = RoomEntry {
        status: RoomStatus::Live,
        bump_stamp,
        timeline_limit: config.timeline_limit,
        is_dm,
        avatar: sent.is_some_and(|sent| sent.avatar),
        joined: entry.membership == MembershipState::Join,
    };
    // A room joined since it was sent (an invite accepted) is new to the client as a room
    // it is in: sent afresh.
    let sent = sent.filter(|sent| sent.joined || entry.membership != MembershipState::Join);
    if sent.is_none() {
        room.initial = Some(true);
    }
    if sent.is_none_or(|sent| sent.bump_stamp != bump_stamp) {
        room.bump_stamp = Some(UInt::new_saturating(bump_stamp));
    }
    if sent.is_none_or(|sent| sent.is_dm != is_dm) {
        room.is_dm = Some(is_dm);
    }
    let storage = view.storage();
    match entry.membership {
        MembershipState::Invite | MembershipState::Knock => {
            if sent.is_none() || entry.membership_position > view.since {
                room.invite_state = Some(invites::stripped_with_event(view, record)?);
            }
            return Ok(Built { room, entry: recorded, events: 0 });
        }
        _ => {}
    }
    let Some(known) = rooms::room(storage, &entry.room)? else {
        return Ok(Built { room, entry: recorded, events: 0 });
    };
    // Rooms the user is no longer in stop at the membership.
    let upto = match entry.membership {
        MembershipState::Join => view.upto,
        _ => view.upto.min(entry.membership_position),
    };
    let expanded = sent.is_some_and(|sent| config.timeline_limit > sent.timeline_limit);
    let lower = match sent.map(|sent| sent.status) {
        None => 0,
        Some(_) if expanded => 0,
        Some(RoomStatus::Live) => view.since,
        Some(RoomStatus::Previously(through)) => through,
    };
    let fresh = sent.is_none() || expanded || lower == 0;
    let mut viewer = match entry.membership {
        MembershipState::Join => Viewer::known(
            storage,
            view.user,
            Some(MembershipState::Join),
            std::sync::Arc::clone(&view.ignored),
        ),
        _ => Viewer::new(storage, &entry.room, view.user)?,
    };
    let limit = usize::try_from(config.timeline_limit).unwrap_or(usize::MAX);
    let part = timeline_part(
        view,
        known.short,
        (lower, upto),
        limit,
        &RoomEventFilter::default(),
        &mut viewer,
    )?;
    room.limited = part.limited || expanded;
    if let Some((_, first)) = part.events.first() {
        room.prev_batch = Some(Token(first.position.saturating_sub(1)).to_string());
    }
    if view.since > 0 {
        let live = part.events.iter().filter(|(_, meta)| meta.position > view.since).count();
        room.num_live = Some(UInt::new_saturating(live as u64));
    }
    for (pdu, meta) in &part.events {
        room.timeline.push(render::raw(&render::sync_event(view, pdu, meta)?)?);
    }

    // Metadata from the state at the bound, sent when it changed since `lower`.
    let now = snapshot_at(view, known.short, upto)?;
    let before = if fresh { state::EMPTY } else { snapshot_at(view, known.short, lower)? };
    let changed = |kind: &str, key: &str| -> Result<bool> {
        if fresh {
            return Ok(true);
        }
        let Some(short_key) = state::short_key(storage, kind, key)? else {
            return Ok(false);
        };
        Ok(state::lookup(storage, now, short_key)? != state::lookup(storage, before, short_key)?)
    };
    let name = rooms::state_event(storage, now, "m.room.name", "")?
        .and_then(|event| event.content_str("name"))
        .filter(|name| !name.is_empty());
    if changed("m.room.name", "")? {
        room.name.clone_from(&name);
    }
    if changed("m.room.avatar", "")? {
        let avatar = rooms::state_event(storage, now, "m.room.avatar", "")?
            .and_then(|event| event.content_str("url"))
            .map(OwnedMxcUri::from)
            .filter(|url| url.is_valid());
        match avatar {
            Some(avatar) => {
                room.avatar = ruma::JsOption::Some(avatar);
                recorded.avatar = true;
            }
            None if recorded.avatar => {
                room.avatar = ruma::JsOption::Null;
                recorded.avatar = false;
            }
            None => {}
        }
    }
    let members_changed = fresh
        || part.limited
        || part.events.iter().any(|(pdu, _)| pdu.kind.to_string() == "m.room.member");
    if members_changed && entry.membership == MembershipState::Join {
        let summary = summary(view, known.short)?;
        room.joined_count = summary.joined_member_count;
        room.invited_count = summary.invited_member_count;
        if name.is_none() {
            room.heroes = Some(heroes(view, now, &summary.heroes)?);
        }
    }
    if entry.membership == MembershipState::Join {
        let (counts, counts_changed) = crate::sync::response::joined::counts(view, known.short)?;
        if fresh
            || counts_changed
            || matches!(sent.map(|sent| sent.status), Some(RoomStatus::Previously(_)))
        {
            // Sliding sync reports the main timeline; threads are the client's to count.
            let main = counts.get("").cloned().unwrap_or_default();
            room.unread_notifications.notification_count =
                Some(UInt::new_saturating(main.notifications));
            room.unread_notifications.highlight_count = Some(UInt::new_saturating(main.highlights));
        }
    }
    let events = part.events.len();
    Ok(Built { room, entry: recorded, events })
}

/// The heroes with their display names and avatars from their member events at `snapshot`.
fn heroes(
    view: &SyncView<'_>,
    snapshot: u64,
    heroes: &[OwnedUserId],
) -> Result<Vec<v5::response::Hero>> {
    let mut result = Vec::with_capacity(heroes.len());
    for user in heroes {
        let member = rooms::state_event(view.storage(), snapshot, "m.room.member", user.as_str())?;
        let mut hero = v5::response::Hero::new(user.clone());
        hero.name = member.as_ref().and_then(|member| member.content_str("displayname"));
        hero.avatar = member
            .as_ref()
            .and_then(|member| member.content_str("avatar_url"))
            .map(OwnedMxcUri::from)
            .filter(|url| url.is_valid());
        result.push(hero);
    }
    Ok(result)
}
