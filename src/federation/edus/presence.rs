//! `m.presence`: presence of another server's users, kept (with `allow_incoming_presence`)
//! for users who share a room with one of this server's, on the same presence stream as
//! local users' so that /sync shows it. At most `limits::MAX_EDU_ENTRIES` updates are read
//! from one EDU. Another server's user keeps the state their server last sent; their
//! server tells when it changes.

use std::collections::BTreeMap;

use ruma::{
    OwnedUserId, ServerName, api::federation::transactions::edu::PresenceContent,
    presence::PresenceState,
};

use super::from_origin;
use crate::{
    Result,
    federation::intake::Intake,
    limits, rooms,
    storage::{
        Batch,
        codec::Json,
        ephemeral::{PRESENCE_STREAM_TABLE, PRESENCE_TABLE, PresenceRecord},
    },
};

pub async fn receive(intake: &Intake, origin: &ServerName, content: PresenceContent) -> Result<()> {
    if !intake.settings.presence {
        return Ok(());
    }
    let storage = &intake.storage;
    let now = intake.time.now_ms();
    // The last update of each user wins.
    let mut updates: BTreeMap<OwnedUserId, PresenceRecord> = BTreeMap::new();
    for update in content.push.into_iter().take(limits::MAX_EDU_ENTRIES) {
        if from_origin(&update.user_id, origin).is_err() {
            continue;
        }
        let state = match update.presence {
            PresenceState::Online => "online",
            PresenceState::Unavailable => "unavailable",
            _ => "offline",
        };
        let status_msg = update
            .status_msg
            .map(|message| message.chars().take(limits::MAX_STATUS_MSG_CHARS).collect());
        let last_active_ago = u64::from(update.last_active_ago);
        updates.insert(
            update.user_id,
            PresenceRecord {
                state: state.to_owned(),
                status_msg,
                last_active_ms: now.saturating_sub(last_active_ago),
                position: 0,
            },
        );
    }
    let mut batch = Batch::new();
    let mut changed = Vec::new();
    for (user, record) in updates {
        // Kept only for someone a local user shares a room with.
        let joined = rooms::joined_rooms(storage.engine(), &user)?;
        if joined.is_empty() {
            continue;
        }
        let previous = PRESENCE_TABLE.get_readable(storage.engine(), &user)?;
        if let Some(Json(previous)) = &previous {
            if previous.state == record.state && previous.status_msg == record.status_msg {
                continue;
            }
            if previous.position != 0 {
                PRESENCE_STREAM_TABLE.delete(&mut batch, &previous.position);
            }
        }
        changed.push((user, record, joined));
    }
    if changed.is_empty() {
        return Ok(());
    }
    let rows: Vec<(OwnedUserId, PresenceRecord)> =
        changed.iter().map(|(user, record, _)| (user.clone(), record.clone())).collect();
    storage
        .writer()
        .commit_with_positions(rows.len() as u64, batch, move |batch, positions| {
            for ((user, mut record), position) in rows.into_iter().zip(positions) {
                record.position = position;
                PRESENCE_TABLE.put(batch, &user, &Json(record));
                PRESENCE_STREAM_TABLE.put(batch, &position, &user);
            }
        })
        .await?;
    for (_, _, joined) in changed {
        for room in joined {
            intake.hub.room_changed(&room);
        }
    }
    Ok(())
}
