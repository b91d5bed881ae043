//! The fan-out: turns each committed outbox row into entries of the receiving servers'
//! queues, and wakes their destination actors.
//!
//! It runs as one task that wakes when the Writer publishes a commit and reads the outbox
//! only when a commit put a row there (the Writer's per-table mark), so a server that sends
//! nothing to other servers pays one comparison per commit. Each round takes the rows in
//! stream order, puts each item in the queue of every server it is for (keyed by the row's
//! position, so every queue keeps commit order) and deletes the rows, in one commit: a
//! crash before it leaves the rows for the next start, a crash after it leaves the queues.
//! A room with a thousand other servers costs its actor one row and the fan-out a thousand
//! queue entries.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use ruma::{OwnedServerName, RoomId, ServerName, UserId};
use serde_json::{Value as JsonValue, json};

use super::{Sender, destination::DestinationMessage};
use crate::{
    Result,
    federation::disabled_rooms,
    keys::query::{self, MASTER, SELF_SIGNING},
    rooms,
    storage::{
        Batch, Direction,
        codec::Json,
        federation::{OUTBOX_TABLE, OutboxItem, QUEUE_TABLE, QueuedItem, Recipients},
        users::DEVICES_TABLE,
    },
};

/// Outbox rows handled per commit.
const ROUND: usize = 256;

/// Runs the fan-out until the server stops.
pub(super) async fn run(sender: Arc<Sender>) {
    let writer = sender.storage.writer().clone();
    let mut committed = writer.subscribe();
    // Whatever a previous run left is handled first.
    let mut seen = None;
    loop {
        let now = writer.committed_position();
        if seen.is_none_or(|seen| writer.written_since(OUTBOX_TABLE.id(), seen)) {
            seen = Some(now);
            if let Err(error) = drain(&sender).await {
                tracing::error!(%error, "handing queued events to other servers failed; retrying on the next commit");
                seen = None;
            }
        }
        tokio::select! {
            changed = committed.changed() => if changed.is_err() { return },
            () = sender.shutdown.clone().wait() => return,
        }
    }
}

/// Fans out every outbox row, a round at a time.
async fn drain(sender: &Sender) -> Result<()> {
    loop {
        let rows = OUTBOX_TABLE.collect(sender.storage.engine(), b"", Direction::Forward, ROUND)?;
        if rows.is_empty() {
            return Ok(());
        }
        let full = rows.len() == ROUND;
        let mut batch = Batch::new();
        let mut queued: BTreeMap<OwnedServerName, u64> = BTreeMap::new();
        for (position, Json(item)) in rows {
            OUTBOX_TABLE.delete(&mut batch, &position);
            // One bad row must not hold up the rest: it is logged and dropped.
            match route(sender, &item) {
                Ok(None) => {}
                Ok(Some((servers, entry))) => {
                    for server in servers {
                        QUEUE_TABLE.put(
                            &mut batch,
                            &(server.to_string(), position),
                            &Json(entry.clone()),
                        );
                        *queued.entry(server).or_default() += 1;
                    }
                }
                Err(error) => tracing::warn!(%error, position, "dropping an outbox entry"),
            }
        }
        sender.storage.writer().commit(batch).await?;
        for (server, count) in queued {
            sender.statuses.update(&server, |status| status.queued += count);
            // A full mailbox means the actor has wake-ups queued already.
            let _ = sender.destinations.send(&server, DestinationMessage::Work).await;
        }
        if !full {
            return Ok(());
        }
    }
}

/// The servers an outbox item goes to, and what their queues get (`None`: nothing goes out).
fn route(
    sender: &Sender,
    item: &OutboxItem,
) -> Result<Option<(BTreeSet<OwnedServerName>, QueuedItem)>> {
    let storage = &sender.storage;
    let queued_ms = sender.time.now_ms();
    let (servers, entry) = match item {
        OutboxItem::Pdu { room, event, relay_except } => {
            let room =
                RoomId::parse(room).map_err(|error| crate::Error::internal(error.to_string()))?;
            let Some(pdu) = rooms::readable_pdu(storage.engine(), *event)? else {
                return Ok(None);
            };
            let mut servers = BTreeSet::new();
            if pdu.kind == ruma::events::TimelineEventType::RoomMember {
                // Who is in the room changed: read it again, after this event.
                sender.servers.forget(&room);
                if let Some(target) =
                    pdu.state_key.as_deref().and_then(|key| UserId::parse(key).ok())
                {
                    servers.insert(target.server_name().to_owned());
                }
            }
            // Only this server's events and those it relays are in the outbox (the room
            // actor's rule); a foreign row left by an older version is not sent.
            let ours = pdu.sender.server_name() == sender.server_name;
            if (ours || relay_except.is_some()) && !is_disabled(sender, &room)? {
                servers.extend(sender.servers.of_room(storage, &room)?.iter().cloned());
            } else {
                servers.clear();
            }
            if let Some(origin) = relay_except {
                servers.retain(|server| server.as_str() != origin);
            }
            (servers, QueuedItem::Pdu { event: *event })
        }
        OutboxItem::Edu { to, edu } => {
            (recipients(sender, to)?, QueuedItem::Edu { edu: edu.clone(), queued_ms })
        }
        OutboxItem::DeviceListUpdate { user, device, stream_id, prev_id } => {
            let user = parse_user(user)?;
            let edu = device_list_update(sender, &user, device, *stream_id, prev_id)?;
            (sender.servers.of_user(storage, &user)?, QueuedItem::Edu { edu, queued_ms })
        }
        OutboxItem::MembersChanged { room } => {
            if let Ok(room) = RoomId::parse(room) {
                sender.servers.forget(&room);
            }
            return Ok(None);
        }
        OutboxItem::SigningKeyUpdate { user } => {
            let user = parse_user(user)?;
            let edu = signing_key_update(sender, &user)?;
            (sender.servers.of_user(storage, &user)?, QueuedItem::Edu { edu, queued_ms })
        }
    };
    let servers = servers
        .into_iter()
        .filter(|server| *server != sender.server_name && sender.policy.allows(server))
        .collect();
    Ok(Some((servers, entry)))
}

fn parse_user(user: &str) -> Result<ruma::OwnedUserId> {
    UserId::parse(user)
        .map_err(|error| crate::Error::internal(format!("outbox user {user}: {error}")))
}

fn is_disabled(sender: &Sender, room: &RoomId) -> Result<bool> {
    disabled_rooms::is_disabled(&sender.storage, room)
}

/// The servers behind `to`, leaving out rooms disabled for federation.
fn recipients(sender: &Sender, to: &Recipients) -> Result<BTreeSet<OwnedServerName>> {
    let storage = &sender.storage;
    Ok(match to {
        Recipients::Server { server } => {
            ServerName::parse(server).map(|server| BTreeSet::from([server])).unwrap_or_default()
        }
        Recipients::Room { room } => {
            let room =
                RoomId::parse(room).map_err(|error| crate::Error::internal(error.to_string()))?;
            if is_disabled(sender, &room)? {
                BTreeSet::new()
            } else {
                sender.servers.of_room(storage, &room)?.as_ref().clone()
            }
        }
        Recipients::User { user } => {
            let user = parse_user(user)?;
            let mut servers = BTreeSet::new();
            for room in rooms::joined_rooms(storage.engine(), &user)? {
                if !is_disabled(sender, &room)? {
                    servers.extend(sender.servers.of_room(storage, &room)?.iter().cloned());
                }
            }
            servers
        }
    })
}

/// `m.device_list_update` for `device` as it is now: its keys and (with
/// `allow_device_name_federation`) its name, or `deleted` when it is gone.
fn device_list_update(
    sender: &Sender,
    user: &UserId,
    device: &str,
    stream_id: u64,
    prev_id: &[u64],
) -> Result<JsonValue> {
    let engine = sender.storage.engine();
    let mut content = json!({
        "user_id": user,
        "device_id": device,
        "stream_id": stream_id,
        "prev_id": prev_id,
    });
    match DEVICES_TABLE.get_readable(engine, &(user.to_owned(), device.into()))? {
        None => content["deleted"] = json!(true),
        Some(Json(record)) => {
            let device = ruma::OwnedDeviceId::from(device);
            let mut keys = query::device_keys(engine, user, std::slice::from_ref(&device))?;
            if let Some(mut keys) = keys.remove(&device) {
                if let Some(unsigned) =
                    keys.as_object_mut().and_then(|keys| keys.get_mut("unsigned"))
                    && let Some(unsigned) = unsigned.as_object_mut()
                {
                    unsigned.remove("device_display_name");
                }
                if keys
                    .get("unsigned")
                    .and_then(JsonValue::as_object)
                    .is_some_and(|unsigned| unsigned.is_empty())
                    && let Some(keys) = keys.as_object_mut()
                {
                    keys.remove("unsigned");
                }
                content["keys"] = keys;
            }
            if sender.device_names
                && let Some(name) = record.display_name
            {
                content["device_display_name"] = json!(name);
            }
        }
    }
    Ok(json!({ "edu_type": "m.device_list_update", "content": content }))
}

/// `m.signing_key_update` with `user`'s master and self-signing keys as they are now.
fn signing_key_update(sender: &Sender, user: &UserId) -> Result<JsonValue> {
    let engine = sender.storage.engine();
    let mut content = json!({ "user_id": user });
    if let Some(master) = query::cross_signing_key(engine, user, MASTER, user)? {
        content["master_key"] = master;
    }
    if let Some(self_signing) = query::cross_signing_key(engine, user, SELF_SIGNING, user)? {
        content["self_signing_key"] = self_signing;
    }
    Ok(json!({ "edu_type": "m.signing_key_update", "content": content }))
}
