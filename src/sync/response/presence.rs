//! Presence of the users who share a room with the syncing user.

use std::collections::HashSet;

use ruma::events::room::member::MembershipState;
use ruma::{OwnedRoomId, OwnedUserId, api::client::sync::sync_events::v3::Response};
use serde_json::json;

use super::{
    SyncContext,
    render::{allows_kind, raw},
};
use crate::{
    Result, rooms,
    rooms::timeline,
    storage::{
        codec::Json,
        ephemeral::{PRESENCE_STREAM_TABLE, PRESENCE_TABLE},
        rooms::ROOM_MEMBERS_TABLE,
    },
};

/// Presence updates (or, initially, the presence) of users sharing a room with the user.
pub(super) fn presence(
    ctx: &SyncContext<'_>,
    joined_rooms: &[OwnedRoomId],
    response: &mut Response,
) -> Result<()> {
    if !ctx.reader.presence_enabled {
        return Ok(());
    }
    let storage = ctx.storage();
    let mut changed = Vec::new();
    if !ctx.initial {
        changed = storage.stream_values(PRESENCE_STREAM_TABLE, ctx.since, ctx.upto)?;
        if changed.is_empty() {
            return Ok(());
        }
        changed.sort_unstable();
        changed.dedup();
    }
    let mut shorts = Vec::with_capacity(joined_rooms.len());
    for room_id in joined_rooms {
        if let Some(record) = rooms::room(storage, room_id)? {
            shorts.push(record.short);
        }
    }
    let candidates: Vec<OwnedUserId> = if !ctx.initial {
        // Few users change presence between two syncs; looking each of them up in the
        // user's rooms keeps a sync in a big room from reading its whole member list.
        let engine = storage.engine();
        let mut shared = Vec::new();
        for user in changed {
            for short in &shorts {
                if ROOM_MEMBERS_TABLE
                    .get(engine, &(*short, user.to_string()))?
                    .is_some_and(|Json(record)| record.membership == MembershipState::Join)
                {
                    shared.push(user);
                    break;
                }
            }
        }
        shared
    } else {
        let mut sharing: HashSet<String> = HashSet::new();
        for short in shorts {
            sharing.extend(timeline::joined_members(storage, short)?);
        }
        // Member rows are keyed by the user's string until the room tables are typed.
        sharing.into_iter().filter_map(|user| OwnedUserId::try_from(user).ok()).collect()
    };
    let now = ctx.reader.time.now_ms();
    for user in candidates {
        if !allows_kind(&ctx.params.filter.presence, "m.presence") {
            break;
        }
        let Some(Json(record)) = PRESENCE_TABLE.get_readable(storage.engine(), &user)? else {
            continue;
        };
        if record.position > ctx.upto {
            continue;
        }
        let mut content = json!({
            "presence": record.state,
            "last_active_ago": now.saturating_sub(record.last_active_ms),
            "currently_active": record.state == "online",
        });
        if let Some(message) = &record.status_msg {
            content["status_msg"] = json!(message);
        }
        response
            .presence
            .events
            .push(raw(&json!({ "type": "m.presence", "sender": user, "content": content }))?);
    }
    Ok(())
}
