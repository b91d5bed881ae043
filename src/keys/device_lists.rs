//! Device list tracking: which users' devices or keys changed between two stream positions,
//! as seen by one user (`device_lists` in /sync, `GET /keys/changes`).
//!
//! A change is one row on the device list stream, written in the same commit as the change
//! by the owner's user actor; only a user's latest row is kept, which is all a token needs.
//! Sharing a room also counts: someone who newly shares a room appears as changed (the
//! client must learn their devices), someone who no longer shares any room as left.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    ops::ControlFlow,
};

use ruma::events::room::member::MembershipState;
use ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId, UserId, events::TimelineEventType};

use crate::{
    Result,
    federation::outbox::{self, Outbox},
    rooms::{self, timeline},
    storage::{
        Batch, Direction, Storage,
        codec::{Json, Prefix},
        keys::{DEVICE_LIST_LATEST_TABLE, DEVICE_LIST_STREAM_TABLE},
        rooms::{MembershipRecord, ROOM_MEMBERS_TABLE, TIMELINE_TABLE},
    },
    sync::hub::SyncHub,
};

/// Past this many events in a room since the token, reading the membership index beats
/// reading the events.
const EVENT_SCAN_LIMIT: usize = 200;

/// What a device list change tells the other servers sharing a room with the user.
#[derive(Debug, Clone)]
pub enum Change {
    /// These devices of a local user were added, changed or removed: one
    /// `m.device_list_update` each.
    Devices(Vec<OwnedDeviceId>),
    /// A local user's cross-signing keys changed: an `m.signing_key_update`.
    SigningKeys,
    /// Nothing to tell: a change other servers need not hear of, or a change to another
    /// server's user learnt from that server.
    Unshared,
}

/// Commits `batch` together with a device list change for `user`, then wakes everyone
/// sharing a room with them. Only `user`'s own actor calls this (or, for another server's
/// user, the handling of that server's updates), so the latest-row read cannot race
/// another change.
pub async fn commit_change(
    storage: &Storage,
    hub: &SyncHub,
    outbox: &Outbox,
    user: &UserId,
    batch: Batch,
    change: Change,
) -> Result<()> {
    commit_change_with(storage, hub, outbox, user, batch, change, |_, _| {}).await
}

/// Like [`commit_change`], letting `extra` add rows that need the change's stream position.
///
/// Each changed device takes a stream position of its own: it is the `stream_id` of the
/// device's `m.device_list_update`, whose `prev_id` is the position before it (the user's
/// previous change, for the first), as the spec's chain of updates per user asks.
pub async fn commit_change_with(
    storage: &Storage,
    hub: &SyncHub,
    outbox: &Outbox,
    user: &UserId,
    mut batch: Batch,
    change: Change,
    extra: impl FnOnce(&mut Batch, u64) + Send + 'static,
) -> Result<()> {
    let key = user.to_owned();
    let previous = DEVICE_LIST_LATEST_TABLE.get(storage.engine(), &key)?;
    if let Some(previous) = previous {
        DEVICE_LIST_STREAM_TABLE.delete(&mut batch, &previous);
    }
    let federated = outbox.enabled() && !outbox.is_remote(user.server_name());
    let count = match &change {
        Change::Devices(devices) if federated => devices.len().max(1) as u64,
        _ => 1,
    };
    let outbox = outbox.clone();
    storage
        .writer()
        .commit_with_positions(count, batch, move |batch, positions| {
            let latest = positions.end - 1;
            DEVICE_LIST_STREAM_TABLE.put(batch, &latest, &key);
            DEVICE_LIST_LATEST_TABLE.put(batch, &key, &latest);
            if federated {
                match change {
                    Change::Devices(devices) => {
                        let mut prev: Vec<u64> = previous.into_iter().collect();
                        for (device, position) in devices.iter().zip(positions.clone()) {
                            let item =
                                outbox::device_list_update(&key, device.as_str(), position, prev);
                            outbox.put(batch, position, &item);
                            prev = vec![position];
                        }
                    }
                    Change::SigningKeys => {
                        outbox.put(batch, latest, &outbox::signing_key_update(&key));
                    }
                    Change::Unshared => {}
                }
            }
            extra(batch, latest);
        })
        .await?;
    for room in rooms::joined_rooms(storage.engine(), user)? {
        hub.room_changed(&room);
    }
    hub.user_changed(user);
    Ok(())
}

/// Users whose device lists `viewer` should re-fetch (`changed`) or stop tracking (`left`)
/// between `since` (exclusive) and `upto` (inclusive).
pub fn changes(
    storage: &Storage,
    viewer: &UserId,
    since: u64,
    upto: u64,
) -> Result<(Vec<OwnedUserId>, Vec<OwnedUserId>)> {
    let memberships = rooms::memberships(storage.engine(), viewer)?;
    changes_in(storage, viewer, &memberships, since, upto, &HashMap::new())
}

/// [`changes`] for a viewer whose room memberships (every `user_rooms` row) the caller
/// has read already, as have they the `(user, membership)` changes in `(since, upto]` of
/// some rooms (`known_changes`, oldest first).
pub fn changes_in(
    storage: &Storage,
    viewer: &UserId,
    memberships: &[(OwnedRoomId, MembershipRecord)],
    since: u64,
    upto: u64,
    known_changes: &HashMap<OwnedRoomId, Vec<(String, String)>>,
) -> Result<(Vec<OwnedUserId>, Vec<OwnedUserId>)> {
    let engine = storage.engine();
    let my_rooms: HashSet<OwnedRoomId> = memberships
        .iter()
        .filter(|(_, record)| record.membership == MembershipState::Join)
        .map(|(room, _)| room.clone())
        .collect();
    let shares = |other: &UserId| -> Result<bool> {
        Ok(other == viewer
            || rooms::joined_rooms(engine, other)?.iter().any(|room| my_rooms.contains(room)))
    };
    let mut changed = BTreeSet::new();
    let mut maybe_left = BTreeSet::new();

    // Keys and devices that changed (none when the stream gained no row since the token).
    for user in storage.stream_values(DEVICE_LIST_STREAM_TABLE, since, upto)? {
        if shares(&user)? {
            changed.insert(user);
        }
    }

    // The viewer's own joins and leaves: everyone in those rooms is new to them, or maybe gone.
    let own_changes =
        memberships.iter().filter(|(_, record)| record.position > since && record.position <= upto);
    let mut settled_rooms = my_rooms.clone();
    for (room_id, own) in own_changes {
        settled_rooms.remove(room_id);
        let Some(record) = rooms::room(storage, room_id)? else { continue };
        let members = timeline::joined_members(storage, record.short)?;
        if own.membership == MembershipState::Join {
            changed.extend(members.into_iter().filter_map(|member| UserId::parse(member).ok()));
        } else {
            maybe_left.extend(members.into_iter().filter_map(|member| UserId::parse(member).ok()));
        }
    }

    // Others joining or leaving rooms the viewer was already in.
    for room_id in settled_rooms {
        let changes = match known_changes.get(&room_id) {
            Some(changes) => changes.clone(),
            None => {
                let Some(record) = rooms::room(storage, &room_id)? else { continue };
                membership_changes(storage, record.short, since, upto)?
            }
        };
        for (member, membership) in changes {
            let Ok(member) = UserId::parse(member) else { continue };
            if membership == "join" {
                changed.insert(member);
            } else {
                maybe_left.insert(member);
            }
        }
    }

    let mut left = Vec::new();
    for user in maybe_left {
        if !changed.contains(&user) && !shares(&user)? {
            left.push(user);
        }
    }
    changed.remove(viewer);
    let mut changed: Vec<OwnedUserId> = changed.into_iter().collect();
    // The viewer's own device changes matter to their other devices.
    if storage.writer().written_since(DEVICE_LIST_LATEST_TABLE.id(), since)
        && DEVICE_LIST_LATEST_TABLE
            .get(engine, &viewer.to_owned())?
            .is_some_and(|position| position > since && position <= upto)
    {
        changed.push(viewer.to_owned());
    }
    Ok((changed, left))
}

/// `(user, membership)` of the membership changes in room `short` within `(since, upto]`.
fn membership_changes(
    storage: &Storage,
    short: u64,
    since: u64,
    upto: u64,
) -> Result<Vec<(String, String)>> {
    let engine = storage.engine();
    let mut events = Vec::new();
    let mut too_many = false;
    TIMELINE_TABLE.scan(
        engine,
        &Prefix::of(&short),
        Some(&(short, since.saturating_add(1))),
        Direction::Forward,
        |(_, position), event| {
            if position > upto {
                return ControlFlow::Break(());
            }
            if events.len() >= EVENT_SCAN_LIMIT {
                too_many = true;
                return ControlFlow::Break(());
            }
            events.push(event);
            ControlFlow::Continue(())
        },
    )?;
    let mut changes = Vec::new();
    if too_many {
        ROOM_MEMBERS_TABLE.scan(
            engine,
            &Prefix::of(&short),
            None,
            Direction::Forward,
            |(_, user), Json(record)| {
                if record.position > since && record.position <= upto {
                    changes.push((user, record.membership.to_string()));
                }
                ControlFlow::Continue(())
            },
        )?;
        return Ok(changes);
    }
    for event in events {
        let Some(meta) = rooms::readable_event_meta(engine, event)? else { continue };
        if meta.state_after == meta.state_before {
            continue;
        }
        let Some(pdu) = rooms::readable_pdu(engine, event)? else { continue };
        if pdu.kind != TimelineEventType::RoomMember {
            continue;
        }
        if let (Some(user), Some(membership)) =
            (pdu.state_key.clone(), pdu.content_str("membership"))
        {
            changes.push((user, membership));
        }
    }
    Ok(changes)
}
